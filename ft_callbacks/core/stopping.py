"""Stopping rules as plain, framework-free classes.

Each rule takes numbers and returns a `StopDecision`; none of them knows about the Trainer. State
round-trips through `state_dict()` / `load_state_dict()` so that a resumed run continues counting
where it stopped.
"""

from __future__ import annotations

import math
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


def _check_patience(name: str, value: int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        fix = " or None to turn the rule off" if allow_none else ""
        raise ValueError(f"{name}={value!r} is not valid: use a whole number of evaluations >= 1{fix}.")


def _check_non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name}={value!r} is not valid: use a number >= 0.")


@dataclass
class PlateauRule:
    """Classic patience: stop after `patience` evaluations in a row without an improvement of more
    than `min_delta` over the best value seen. NaN counts as no improvement."""

    patience: int
    mode: Mode = "min"
    min_delta: float = 0.0
    metric: str = "eval_loss"
    best: float | None = None
    wait: int = 0

    def __post_init__(self) -> None:
        _check_patience("plateau_patience", self.patience)
        _check_non_negative("min_delta", self.min_delta)

    def update(self, value: float | None) -> StopDecision:
        if is_improvement(value, self.best, self.mode, self.min_delta):
            self.best = value
            self.wait = 0
            return CONTINUE
        self.wait += 1
        if self.wait >= self.patience:
            return StopDecision(
                True,
                "plateau",
                f"{self.metric} has not improved by more than {self.min_delta:g} for {self.wait} evaluations "
                f"(best {self.best!s:.8})",
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

    def __post_init__(self) -> None:
        _check_patience("patience", self.patience)
        _check_non_negative("min_delta", self.min_delta)
        _check_non_negative("gap_min_delta", self.gap_min_delta)

    def update(self, eval_loss: float | None, train_loss: float | None) -> StopDecision:
        new_best = is_improvement(eval_loss, self.best_eval_loss, "min", self.min_delta)
        if new_best:
            self.best_eval_loss = eval_loss
        if not (is_finite(eval_loss) and is_finite(train_loss)):
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
                f"(now {gap:.4f}) while validation loss stayed above its best {self.best_eval_loss:.4f}",
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
        if self.threshold is not None and (
            isinstance(self.threshold, bool)
            or not isinstance(self.threshold, (int, float))
            or not math.isfinite(self.threshold)
        ):
            raise ValueError(
                f"divergence_threshold={self.threshold!r} is not valid: use a finite loss value, or None."
            )

    def check(self, name: str, value: float | None) -> StopDecision:
        if value is None:
            return CONTINUE
        if not math.isfinite(value):
            if self.stop_on_nonfinite:
                return StopDecision(True, "non_finite", f"{name} is {value}")
            return CONTINUE
        if self.threshold is not None and value > self.threshold:
            return StopDecision(
                True, "divergence", f"{name} = {value:.4f} is above divergence_threshold={self.threshold:g}"
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
                raise ValueError(f"{name}={value!r} is not valid: use a whole number >= 0.")
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


__all__ = ["CONTINUE", "DivergenceRule", "GapRule", "OverfitPolicy", "PlateauRule", "StopDecision"]
