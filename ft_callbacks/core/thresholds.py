"""The threshold rule: a metric outside its allowed range for `patience` evaluations in a row.

Plain numbers in, a `StopDecision` out (`MetricThreshold` in ft_callbacks/thresholds.py is the Trainer
adapter). A value counts as a breach when it is above `above` or below `below` (strictly: a value equal
to the bound is allowed), or when it is NaN/inf (a metric that broke is no reassurance). A value inside
the range resets the count; a missing value (the producer skipped the round) leaves it as it was.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError
from .modes import normalize_metric_name
from .stopping import CONTINUE, StopDecision, format_number

ACTIONS = ("stop", "warn")


@dataclass
class ThresholdRule:
    """A bound on one metric, with patience.

    Args:
        metric: the metric's name as the evaluation reports it ("eval_json_valid_rate"; "json_valid_rate"
            gets the "eval_" prefix).
        above: breach when the value is greater than this.
        below: breach when the value is less than this.
        patience: breaches in a row before the rule fires.

    Raises:
        ConfigurationError: no bound, a bound that is not a finite number, above < below... (see `check`).

    Example:
        >>> rule = ThresholdRule("eval_json_valid_rate", below=0.9, patience=2)
        >>> bool(rule.on_value(10, 0.8)), bool(rule.on_value(20, 0.85))
        (False, True)
    """

    metric: str
    above: float | None = None
    below: float | None = None
    patience: int = 1
    wait: int = 0
    fired_step: int | None = None
    last_value: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric.strip():
            raise ConfigurationError(
                f"metric={self.metric!r} is not valid: name an eval metric, e.g. 'eval_json_valid_rate'."
            )
        self.metric = normalize_metric_name(self.metric)
        for name in ("above", "below"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ConfigurationError(f"{name}={value!r} is not valid: use a finite number or None.")
            setattr(self, name, float(value))
        if self.above is None and self.below is None:
            raise ConfigurationError(
                f"a threshold on {self.metric!r} needs above= (act when it rises above) and/or below= (act when it "
                "falls below)."
            )
        if self.above is not None and self.below is not None and self.above < self.below:
            raise ConfigurationError(
                f"above={self.above} < below={self.below}: every value would breach one of them. The allowed range "
                "is below <= value <= above."
            )
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 1:
            raise ConfigurationError(f"patience={self.patience!r} is not valid: use a whole number >= 1.")

    def breach(self, value: float) -> str:
        """'' when `value` is allowed, else why not ("0.82 < 0.9")."""
        if not math.isfinite(value):
            return f"{format_number(value)} is not a finite number"
        if self.below is not None and value < self.below:
            return f"{format_number(value)} < {format_number(self.below)}"
        if self.above is not None and value > self.above:
            return f"{format_number(value)} > {format_number(self.above)}"
        return ""

    def on_value(self, step: int, value: Any) -> StopDecision:
        """Count one evaluation's value (None: not measured, the count is kept); fires once per breach streak
        reaching `patience` (and again after `patience` more)."""
        if value is None:
            return CONTINUE
        value = float(value)
        self.last_value = value
        why = self.breach(value)
        if not why:
            self.wait = 0
            return CONTINUE
        self.wait += 1
        if self.wait < self.patience:
            return CONTINUE
        self.wait = 0
        self.fired_step = step
        streak = f" for {self.patience} evaluations in a row" if self.patience > 1 else ""
        return StopDecision(True, "threshold", f"{self.metric} {why}{streak}")

    def state_dict(self) -> dict[str, Any]:
        return {"wait": self.wait, "fired_step": self.fired_step, "last_value": self.last_value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wait = int(state.get("wait", 0) or 0)
        self.fired_step = state.get("fired_step")
        self.last_value = state.get("last_value")


__all__ = ["ACTIONS", "ThresholdRule"]
