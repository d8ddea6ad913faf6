"""Stopping rules as plain, framework-free classes.

Each rule takes numbers and returns a `StopDecision`; none of them knows about the Trainer. State
round-trips through `state_dict()` / `load_state_dict()` so that a resumed run continues counting
where it stopped.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

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


# ---------------------------------------------------------------------------------------------------
# the noise test: paired per-sample differences between two evaluations on the same samples
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairedDifference:
    """`current - reference` of a (weighted) mean over the same samples, with its standard error.

    `diff` is in the metric's own units (positive: the current evaluation is higher); `n` samples."""

    diff: float
    se: float
    n: int

    @property
    def z(self) -> float:
        """diff / se; +-inf for a non-zero difference with no spread at all, 0 for none."""
        if self.se > 0:
            return self.diff / self.se
        return math.copysign(math.inf, self.diff) if self.diff else 0.0


def paired_difference(
    current: Any, reference: Any, weights: Any = None
) -> PairedDifference:
    """The paired difference of two evaluations' means over the same samples, and its standard error.

    `current[i]` and `reference[i]` are sample i's summed value (e.g. summed NLL of its target tokens)
    and `weights[i]` its weight (its target-token count; None: 1 each), the same in both evaluations.
    The mean is `sum(values) / sum(weights)` (token-weighted for a loss, plain for per-sample scores).

    Written by hand because no library we use has a paired test for a ratio (token-weighted) mean:
    scipy's `ttest_rel` is for plain means. The standard error is the delta-method (linearised)
    one of the difference of two ratio estimators on the same samples: residuals
    `(c_i - r_i) - diff * w_i`, divided by the mean weight; with equal weights it is exactly the
    paired t-test's `std(c - r, ddof=1) / sqrt(n)`.

    Args:
        current: per-sample sums of the current evaluation (length n >= 2).
        reference: per-sample sums of the evaluation compared with, same samples, same order.
        weights: per-sample weights (token counts), or None for 1 each.

    Raises:
        ValueError: lengths differ, fewer than 2 samples, or the weights sum to 0.

    Example:
        >>> d = paired_difference([2.2, 3.1, 1.9], [2.0, 3.0, 1.8])
        >>> round(d.diff, 3), round(d.se, 3)
        (0.133, 0.033)
    """
    c = np.asarray(current, dtype=np.float64).reshape(-1)
    r = np.asarray(reference, dtype=np.float64).reshape(-1)
    w = np.ones_like(c) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if not (len(c) == len(r) == len(w)):
        raise ValueError(f"paired samples differ in number: {len(c)} current, {len(r)} reference, {len(w)} weights")
    n = len(c)
    if n < 2:
        raise ValueError("a paired difference needs at least 2 samples")
    total = float(w.sum())
    if total <= 0:
        raise ValueError("the sample weights sum to 0: no target tokens")
    diff = float((c.sum() - r.sum()) / total)
    residual = (c - r) - diff * w
    se = float(math.sqrt(float((residual**2).sum()) / (n * (n - 1))) / (total / n))
    return PairedDifference(diff, se, n)


def _check_confidence(value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.5 <= value < 1:
        raise ValueError(
            f"confidence={value!r} is not valid: use a probability in [0.5, 1), e.g. 0.95 "
            f"(how sure a change must be to count as real){_type_hint('confidence', value, '0.95')}."
        )


@dataclass
class NoiseTest:
    """Whether a metric's change between evaluations is beyond the noise of its per-sample values.

    Keeps the per-sample values of the best evaluation: the last one that improved on the best before
    it beyond noise (the first evaluation to begin with). Each `update` compares the new evaluation
    with it, paired sample by sample (`paired_difference`), one-sided at `confidence`:

    - `improved`: better than the best by more than `max(z * se, min_delta)`: it becomes the best;
      `wait` counts evaluations in a row that did not improve;
    - `rise`: worse than the best by more than that margin; `rises` counts such evaluations in a row.

    A lower value within noise is not a new best. By default (`rise_from="best"`) the rise is measured
    from that best too: taking the lowest of several noisy values as the reference makes the next
    ordinary value look like a real rise (the winner's curse). `rise_from="lowest"` measures it from
    the lowest value seen (faster after a true minimum, more false alarms on a noisy plateau).

    Args:
        confidence: one-sided confidence a change must reach to count (0.95: z = 1.645).
        min_delta: the smallest change that counts, whatever the noise (metric units).
        mode: "min" (a loss) or "max" (a score).
        metric: the metric's name, for messages.
        rise_from: "best" (the last evaluation that improved beyond noise) or "lowest" (the best value seen).

    Raises:
        ValueError: a confidence outside [0.5, 1) or a negative min_delta.

    Example:
        >>> test = NoiseTest()
        >>> test.update([2.0, 3.0, 1.8]).improved   # the first evaluation is the best
        True
        >>> test.update([2.2, 3.1, 1.9]).rise       # +0.133 +- 0.033: beyond noise
        True
    """

    confidence: float = 0.95
    min_delta: float = 0.0
    mode: Mode = "min"
    metric: str = "eval_loss"
    rise_from: str = "best"
    best: float | None = None
    lowest: float | None = None
    rises: int = 0
    wait: int = 0
    _best_values: np.ndarray | None = field(default=None, repr=False)
    _lowest_values: np.ndarray | None = field(default=None, repr=False)
    _weights: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_confidence(self.confidence)
        _check_non_negative("min_delta", self.min_delta)
        if self.rise_from not in ("best", "lowest"):
            raise ValueError(f"rise_from={self.rise_from!r} is not valid: use 'best' or 'lowest'.")
        self.z_crit = NormalDist().inv_cdf(self.confidence)

    def worse_by(self, diff: float) -> float:
        """How much worse a difference (current - reference) is: positive = worse in this mode."""
        return diff if self.mode == "min" else -diff

    def update(self, values: Any, weights: Any = None) -> NoiseObservation:
        """Compare this evaluation's per-sample values (sums, with weights; None: 1 each) with the best's."""
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
        mean = float(v.sum() / w.sum()) if w.sum() > 0 else math.nan
        if not math.isfinite(mean):
            # NaN/inf: the divergence rule deals with it; no evidence of an improvement.
            self.rises = 0
            self.wait += 1
            return NoiseObservation(mean, None, False, False, self.rises, self.wait, self)
        same = self._weights is not None and len(self._weights) == len(w) and np.array_equal(self._weights, w)
        if not same or self._best_values is None:
            # First evaluation, or the eval set changed (other samples, other lengths): nothing to pair with.
            restarted = self._weights is not None
            self._weights, self._best_values, self.best = w, v.copy(), mean
            self._lowest_values, self.lowest = None, mean
            self.rises, self.wait = 0, 0
            return NoiseObservation(mean, None, True, False, 0, 0, self, restarted=restarted)
        d = paired_difference(v, self._best_values, w)
        margin = max(self.z_crit * d.se, self.min_delta)
        improved = -self.worse_by(d.diff) > margin
        rise = self.worse_by(d.diff) > margin
        if self.rise_from == "lowest" and self._lowest_values is not None:
            d = paired_difference(v, self._lowest_values, w)
            rise = self.worse_by(d.diff) > max(self.z_crit * d.se, self.min_delta)
        if improved:
            self._best_values, self.best, self.wait = v.copy(), mean, 0
        else:
            self.wait += 1
        if self.rise_from == "lowest" and (self.lowest is None or self.worse_by(mean - self.lowest) < 0):
            # The lowest seen differs from the best only while a lower value is within noise of the best.
            self.lowest, self._lowest_values = mean, (None if improved else v.copy())
        self.rises = self.rises + 1 if rise else 0
        return NoiseObservation(mean, d, improved, rise, self.rises, self.wait, self)

    def state_dict(self) -> dict[str, Any]:
        def listed(a: np.ndarray | None) -> list[float] | None:
            return None if a is None else a.tolist()

        return {"best": self.best, "lowest": self.lowest, "rises": self.rises, "wait": self.wait,
                "best_values": listed(self._best_values), "lowest_values": listed(self._lowest_values),
                "weights": listed(self._weights)}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def array(key: str) -> np.ndarray | None:
            value = state.get(key)
            return None if value is None else np.asarray(value, dtype=np.float64)

        self.best, self.lowest = state.get("best"), state.get("lowest")
        self.rises, self.wait = int(state.get("rises", 0)), int(state.get("wait", 0))
        self._best_values, self._weights = array("best_values"), array("weights")
        self._lowest_values = array("lowest_values")


@dataclass(frozen=True)
class NoiseObservation:
    """One evaluation as the noise test saw it: its mean, its paired difference with the best (None at
    the first evaluation), what it counted as, and the counts after it."""

    mean: float
    vs_best: PairedDifference | None
    improved: bool
    rise: bool
    rises: int
    wait: int
    test: NoiseTest = field(repr=False, compare=False)
    restarted: bool = False

    def describe(self, name: str = "val") -> str:
        """E.g. `val +0.042 ± 0.011 above best (z = 3.8)`, `val -0.021 ± 0.004: new best (z = -5.2)`."""
        d = self.vs_best
        if d is None:
            return f"{name} {format_number(self.mean)}: first paired evaluation" + (
                " (the eval set changed)" if self.restarted else ""
            )
        text = f"{name} {d.diff:+.3g} ± {d.se:.2g}"
        z = f"z = {d.z:.1f}"
        if self.improved:
            return f"{text} vs best: new best beyond noise ({z})"
        if self.rise:
            return f"{text} above best ({z})"
        if self.test.worse_by(d.diff) <= 0:
            return f"{text} vs best: within noise, not an improvement ({z})"
        return f"{text} above best: within noise ({z})"


@dataclass
class NoiseGapRule:
    """The gap rule with the noise test: stop once the validation loss has been above its best by more
    than the noise allows for `confirm` evaluations in a row while the train/validation gap is wider
    than at that best (training loss still falling: memorising, not a bad step for both).

    Args:
        confirm: evaluations in a row with a rise beyond noise before stopping.
        gap_min_delta: how much wider than at the best the gap must be.

    Raises:
        ValueError: confirm not a whole number >= 1, or a negative gap_min_delta.
    """

    confirm: int = 1
    gap_min_delta: float = 0.0
    gap_at_best: float | None = None
    best: float | None = None
    wait: int = 0
    measured: bool = False

    def __post_init__(self) -> None:
        _check_patience("confirm", self.confirm)
        _check_non_negative("gap_min_delta", self.gap_min_delta)

    def update(self, obs: NoiseObservation, train_loss: float | None) -> StopDecision:
        gap = obs.mean - train_loss if is_finite(train_loss) and math.isfinite(obs.mean) else None
        if obs.improved:  # this evaluation is the new best (or the first)
            self.best, self.gap_at_best = obs.mean, gap
        self.measured = gap is not None
        widened = gap is not None and (self.gap_at_best is None or gap > self.gap_at_best + self.gap_min_delta)
        self.wait = obs.rises if widened else 0
        if obs.rise and widened and obs.rises >= self.confirm:
            since = f" (gap {format_number(self.gap_at_best)} at the best, now {format_number(gap)})"
            return StopDecision(True, "gap", f"{obs.describe()} for {obs.rises} evaluation(s) in a row, while "
                                f"training loss kept falling{since}")  # fmt: skip
        return CONTINUE

    def state_dict(self) -> dict[str, Any]:
        return {"gap_at_best": self.gap_at_best, "best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gap_at_best, self.best = state.get("gap_at_best"), state.get("best")
        self.wait = int(state.get("wait", 0))


@dataclass
class OverfitPolicy:
    """All of OverfitGuard's rules, with warm-up, as one pure decision object.

    - `on_step(step, train_loss)`: non-finite / divergence check of one optimizer step's raw loss.
    - `on_evaluation(step, eval_loss, train_loss, monitored)`: every rule, in order non-finite /
      divergence, gap, plateau. The first that fires is the reason.

    Gap and plateau rules keep counting during warm-up (`min_steps`, `min_evals`) but cannot stop
    training before it ends; non-finite and divergence stops are never delayed, since a NaN model
    will not recover.

    With `noise_test=True`, an evaluation that passes per-sample values (`samples=(sums, weights)`
    for the validation loss, `monitored_samples` for `monitor`) is judged by the paired noise test
    (`NoiseTest`, `NoiseGapRule`): the gap rule stops after `confirm` evaluations in a row whose
    validation loss is above its best beyond noise while the gap is wider than at the best; the
    plateau rule counts evaluations without an improvement beyond noise (or `min_delta`, whichever is
    larger) against `plateau_patience`. An evaluation without per-sample values falls back to counting
    (`GapRule` with `patience`, `PlateauRule`); `noise_fallback` says which rule fell back last."""

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
    noise_test: bool = False
    confidence: float = 0.95
    confirm: int = 1
    rise_from: str = "best"
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
        _check_flag("noise_test", self.noise_test)
        _check_confidence(self.confidence)
        _check_patience("confirm", self.confirm)
        self.noise_loss = NoiseTest(self.confidence, self.min_delta, "min", "validation loss", self.rise_from)
        self.noise_monitor = NoiseTest(self.confidence, self.min_delta, self.mode, self.monitor, self.rise_from)
        self.noise_gap = NoiseGapRule(self.confirm, self.gap_min_delta) if self.patience is not None else None
        self.loss_obs: NoiseObservation | None = None  # the last evaluation as the noise test saw it
        self.monitor_obs: NoiseObservation | None = None
        self.noise_fallback: list[str] = []  # rules that counted without the noise test at the last evaluation

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
        samples: tuple[Any, Any] | None = None,
        monitored_samples: tuple[Any, Any] | None = None,
    ) -> StopDecision:
        """One evaluation: every rule, in order non-finite / divergence, gap, plateau.

        Args:
            samples: (per-sample summed validation NLL, per-sample target tokens), same samples in the
                same order at every evaluation; used by the noise test (`noise_test=True`).
            monitored_samples: the same for `monitor` (per-sample values, weights or None); pass
                `samples` itself when the monitor is the validation loss.
        """
        self.evaluations += 1
        decisions = [
            self.divergence.check("validation loss", eval_loss),
            self.gap.update(eval_loss, train_loss) if self.gap else CONTINUE,
            self.plateau.update(monitored) if self.plateau else CONTINUE,
        ]
        self.loss_obs = self.monitor_obs = None
        self.noise_fallback = []
        if self.noise_test:
            # The counting rules above keep their state in step, so that an evaluation without
            # per-sample values can fall back to them; with per-sample values the noise test decides.
            usable = samples is not None and len(samples[0]) >= 2
            if usable:
                self.loss_obs = self.noise_loss.update(*samples)
                if self.noise_gap is not None:
                    decisions[1] = self.noise_gap.update(self.loss_obs, train_loss)
            elif self.gap is not None:
                self.noise_fallback.append("gap")
            if self.plateau is not None:
                if monitored_samples is not None and monitored_samples is samples and self.loss_obs is not None:
                    self.monitor_obs = self.loss_obs  # the monitor is the validation loss itself
                elif monitored_samples is not None and len(monitored_samples[0]) >= 2:
                    self.monitor_obs = self.noise_monitor.update(*monitored_samples)
                elif monitored is not None:
                    self.noise_fallback.append("plateau")
                obs = self.monitor_obs
                if obs is not None:
                    decisions[2] = CONTINUE
                    if obs.wait >= self.plateau.patience:
                        decisions[2] = StopDecision(
                            True,
                            "plateau",
                            f"{self.monitor} has not improved beyond noise (confidence {self.confidence:g}, "
                            f"min_delta {format_number(self.min_delta)}) for {obs.wait} evaluations: "
                            f"{obs.describe(self.monitor)}",
                        )
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
            "noise": {
                "loss": self.noise_loss.state_dict(),
                "monitor": self.noise_monitor.state_dict(),
                "gap": self.noise_gap.state_dict() if self.noise_gap else None,
            }
            if self.noise_test
            else None,
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
        noise = state.get("noise") or {}
        if noise.get("loss"):
            self.noise_loss.load_state_dict(noise["loss"])
        if noise.get("monitor"):
            self.noise_monitor.load_state_dict(noise["monitor"])
        if self.noise_gap is not None and noise.get("gap"):
            self.noise_gap.load_state_dict(noise["gap"])


__all__ = [
    "CONTINUE",
    "DivergenceRule",
    "GapRule",
    "NoiseGapRule",
    "NoiseObservation",
    "NoiseTest",
    "OverfitPolicy",
    "PairedDifference",
    "PlateauRule",
    "StopDecision",
    "format_number",
    "paired_difference",
]
