"""Stopping rules as plain, framework-free classes.

Each rule takes numbers and returns a `StopDecision`; none of them knows about the Trainer. State
round-trips through `state_dict()` / `load_state_dict()` so that a resumed run continues counting
where it stopped.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from .modes import Mode, is_finite, is_improvement


@dataclass(frozen=True)
class StopDecision:
    """Whether to stop, which rule said so, and a sentence a person can read."""

    stop: bool
    rule: str = ""
    reason: str = ""

    def __bool__(self) -> bool:
        return self.stop


CONTINUE = StopDecision(False)


def format_number(value: float | int | None) -> str:
    """A number for a message a person reads: about 4 significant digits (full precision stays in
    the records and the log history). None reads "-", NaN/inf as themselves."""
    if value is None:
        return "-"
    if isinstance(value, (bool, numbers.Integral)) or not isinstance(value, numbers.Real):
        return str(value)
    value = float(value)  # numpy scalars too
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _type_hint(name: str, value: Any, example: str) -> str:
    """The part of a message for a value of the wrong type: what it is and how to write it."""
    if isinstance(value, str):
        return f" ({value!r} is a string: write {name}={example}, a number, without quotes)"
    if isinstance(value, bool):
        return f" (a bool is not a number here: write e.g. {name}={example})"
    return ""


def _check_patience(name: str, value: int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        fix = " or None to turn the rule off" if allow_none else ""
        raise ValueError(
            f"{name}={value!r} is not valid: use a whole number of evaluations >= 1{fix}"
            f"{_type_hint(name, value, '3')}."
        )


def _check_non_negative(name: str, value: float) -> None:
    # inf would make every improvement impossible; NaN fails `>= 0`.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"{name}={value!r} is not valid: use a finite number >= 0{_type_hint(name, value, '0.01')}.")


def _check_flag(name: str, value: bool) -> None:
    # A string such as "no" is truthy: accepting it would silently mean the opposite.
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not valid: use True or False.")


@dataclass
class PlateauRule:
    """Classic patience: stop after `patience` evaluations in a row without an improvement of more
    than `min_delta` over the best value seen. NaN counts as no improvement; an evaluation without the
    metric at all (None: e.g. a scorer that runs only every few evaluations) is not counted."""

    patience: int
    mode: Mode = "min"
    min_delta: float = 0.0
    metric: str = "eval_loss"
    best: float | None = None
    wait: int = 0
    counted: bool = False  # whether the last update had a value (and so could count)

    def __post_init__(self) -> None:
        _check_patience("plateau_patience", self.patience)
        _check_non_negative("min_delta", self.min_delta)

    def update(self, value: float | None) -> StopDecision:
        self.counted = value is not None
        if value is None:
            # The metric was not produced this time: no evidence either way, so the count stands.
            return CONTINUE
        if is_improvement(value, self.best, self.mode, self.min_delta):
            self.best = value
            self.wait = 0
            return CONTINUE
        self.wait += 1
        if self.wait >= self.patience:
            return StopDecision(
                True,
                "plateau",
                f"{self.metric} has not improved by more than {format_number(self.min_delta)} for {self.wait} "
                f"evaluations that reported it (best {format_number(self.best)})",
            )
        return CONTINUE

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state.get("best")
        self.wait = int(state.get("wait", 0))


@dataclass
class GapRule:
    """The generalisation-gap rule: stop when `gap = eval_loss - train_loss` has widened for
    `patience` evaluations in a row while the validation loss has not reached a new best (by more
    than `min_delta`). That is the signature of memorising: train loss falls, validation loss turns up.

    A widening needs the gap to grow by more than `gap_min_delta` over the previous evaluation's gap.
    An evaluation with a new best validation loss, or whose gap did not widen, resets the count."""

    patience: int
    min_delta: float = 0.0
    gap_min_delta: float = 0.0
    best_eval_loss: float | None = None
    last_gap: float | None = None
    wait: int = 0
    gaps: list[float] = field(default_factory=list)
    measured: bool = False  # whether the last update measured a gap (and so could count)

    def __post_init__(self) -> None:
        _check_patience("patience", self.patience)
        _check_non_negative("min_delta", self.min_delta)
        _check_non_negative("gap_min_delta", self.gap_min_delta)

    def update(self, eval_loss: float | None, train_loss: float | None) -> StopDecision:
        new_best = is_improvement(eval_loss, self.best_eval_loss, "min", self.min_delta)
        if new_best:
            self.best_eval_loss = eval_loss
        self.measured = is_finite(eval_loss) and is_finite(train_loss)
        if not self.measured:
            # No gap can be measured; the non-finite rule deals with NaN/inf losses.
            return CONTINUE
        gap = eval_loss - train_loss  # type: ignore[operator]
        widened = self.last_gap is not None and gap > self.last_gap + self.gap_min_delta
        self.wait = self.wait + 1 if widened and not new_best else 0
        self.last_gap = gap
        self.gaps.append(gap)
        if self.wait >= self.patience:
            return StopDecision(
                True,
                "gap",
                f"the train/validation gap widened for {self.wait} evaluations in a row "
                f"(now {format_number(gap)}) while validation loss stayed above its best "
                f"{format_number(self.best_eval_loss)}",
            )
        return CONTINUE

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_eval_loss": self.best_eval_loss,
            "last_gap": self.last_gap,
            "wait": self.wait,
            "gaps": list(self.gaps),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_eval_loss = state.get("best_eval_loss")
        self.last_gap = state.get("last_gap")
        self.wait = int(state.get("wait", 0))
        self.gaps = [float(g) for g in state.get("gaps", [])]


@dataclass
class DivergenceRule:
    """Stop at once on a NaN/inf loss, or on a loss above `threshold` (None: no threshold)."""

    threshold: float | None = None
    stop_on_nonfinite: bool = True

    def __post_init__(self) -> None:
        value = self.threshold
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf
        ):
            # The losses it is compared with are negative log-likelihoods, never below 0: a threshold
            # <= 0 would stop at the first step, NaN would never stop, inf is "no threshold" (None).
            why = (
                " it is compared with the training and validation loss (a negative log-likelihood, never below "
                "0), so it would stop training at the first step;"
                if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0
                else ""
            )
            raise ValueError(
                f"divergence_threshold={value!r} is not valid:{why} use a positive, finite loss value above the "
                "loss you expect (e.g. twice the loss at the start, or ln(vocabulary size), the loss of a uniform "
                f"guess), or None for no threshold{_type_hint('divergence_threshold', value, '10.0')}."
            )
        _check_flag("stop_on_nonfinite", self.stop_on_nonfinite)

    def check(self, name: str, value: float | None) -> StopDecision:
        if value is None:
            return CONTINUE
        if not math.isfinite(value):
            if self.stop_on_nonfinite:
                return StopDecision(True, "non_finite", f"{name} is {value}")
            return CONTINUE
        if self.threshold is not None and value > self.threshold:
            return StopDecision(
                True,
                "divergence",
                f"{name} = {format_number(value)} is above divergence_threshold={format_number(self.threshold)}",
            )
        return CONTINUE


@dataclass
class OverfitPolicy:
    """All of OverfitGuard's rules, with warm-up, as one pure decision object.

    - `on_step(step, train_loss)`: non-finite / divergence check of one optimizer step's raw loss.
    - `on_evaluation(step, eval_loss, train_loss, monitored)`: every rule, in order non-finite /
      divergence, gap, plateau. The first that fires is the reason.

    Gap and plateau rules keep counting during warm-up (`min_steps`, `min_evals`) but cannot stop
    training before it ends; non-finite and divergence stops are never delayed, since a NaN model
    will not recover."""

    patience: int | None = 3
    min_delta: float = 0.0
    gap_min_delta: float = 0.0
    plateau_patience: int | None = 5
    monitor: str = "eval_loss"
    mode: Mode = "min"
    divergence_threshold: float | None = None
    stop_on_nonfinite: bool = True
    min_steps: int = 0
    min_evals: int = 0
    evaluations: int = 0
    stop_step: int | None = None
    stop_rule: str = ""
    stop_reason: str = ""

    def __post_init__(self) -> None:
        _check_patience("patience", self.patience, allow_none=True)
        for name in ("min_steps", "min_evals"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                hint = _type_hint(name, value, "0")
                raise ValueError(f"{name}={value!r} is not valid: use a whole number >= 0{hint}.")
        self.gap = (
            GapRule(self.patience, self.min_delta, self.gap_min_delta) if self.patience is not None else None
        )
        self.plateau = (
            PlateauRule(self.plateau_patience, self.mode, self.min_delta, self.monitor)
            if self.plateau_patience is not None
            else None
        )
        self.divergence = DivergenceRule(self.divergence_threshold, self.stop_on_nonfinite)

    @property
    def stopped(self) -> bool:
        return self.stop_step is not None

    def in_warmup(self, step: int) -> bool:
        return step < self.min_steps or self.evaluations < self.min_evals

    def _stop(self, step: int, decision: StopDecision) -> StopDecision:
        if self.stop_step is not None:
            # Already stopped (e.g. a NaN step that is also an evaluation step): the first reason stands.
            return CONTINUE
        self.stop_step, self.stop_rule, self.stop_reason = step, decision.rule, decision.reason
        return decision

    def on_step(self, step: int, train_loss: float | None) -> StopDecision:
        decision = self.divergence.check("train loss", train_loss)
        return self._stop(step, decision) if decision else CONTINUE

    def on_evaluation(
        self,
        step: int,
        eval_loss: float | None,
        train_loss: float | None = None,
        monitored: float | None = None,
    ) -> StopDecision:
        self.evaluations += 1
        decisions = [
            self.divergence.check("validation loss", eval_loss),
            self.gap.update(eval_loss, train_loss) if self.gap else CONTINUE,
            self.plateau.update(monitored) if self.plateau else CONTINUE,
        ]
        if decisions[0]:
            return self._stop(step, decisions[0])
        if self.in_warmup(step):
            return CONTINUE
        for decision in decisions[1:]:
            if decision:
                return self._stop(step, decision)
        return CONTINUE

    def state_dict(self) -> dict[str, Any]:
        return {
            "evaluations": self.evaluations,
            "stop_step": self.stop_step,
            "stop_rule": self.stop_rule,
            "stop_reason": self.stop_reason,
            "gap": self.gap.state_dict() if self.gap else None,
            "plateau": self.plateau.state_dict() if self.plateau else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.evaluations = int(state.get("evaluations", 0))
        self.stop_step = state.get("stop_step")
        self.stop_rule = state.get("stop_rule", "")
        self.stop_reason = state.get("stop_reason", "")
        if self.gap and state.get("gap"):
            self.gap.load_state_dict(state["gap"])
        if self.plateau and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])


__all__ = ["CONTINUE", "DivergenceRule", "GapRule", "OverfitPolicy", "PlateauRule", "StopDecision", "format_number"]
