"""Forgetting, framework-free: is a benchmark score's drop against the base model real, and what to do.

Two means from the same questions are not independent samples: the question that the base model got
right and the fine-tune gets wrong is what forgetting is. So the drop is judged on paired per-question
scores (the same questions, base vs now):

- binary scores (accuracy: 0/1 per question): McNemar's exact test on the discordant pairs (SciPy's
  `binomtest`), with the paired-difference (Wald) interval of the drop;
- other scores in [0, 1] (F1 per question, partial credit): a seeded paired bootstrap of the mean
  difference (percentile interval, two-sided p-value).

No library offers this for lm-eval's per-question outputs, so it is written here; the statistics
come from SciPy and NumPy.

Example:
    >>> c = compare_paired([1, 1, 1, 0] * 50, [0, 1, 1, 0] * 50, task="mc", metric="acc")
    >>> round(c.drop, 1), c.beyond_noise(0.95)
    (25.0, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from .errors import ConfigurationError

Action = Literal["warn", "stop"]
Method = Literal["auto", "mcnemar", "bootstrap"]

__all__ = [
    "ForgettingDecision", "ForgettingRule", "PairedComparison", "compare_paired", "compare_unpaired", "largest_drop",
]


@dataclass
class PairedComparison:
    """One metric of one task, base vs now, on the same questions.

    `drop` and its interval `[low, high]` are in points (percentage points for a 0-1 score): positive
    means the fine-tune is worse. `worse`/`better`: questions right before and wrong now / the other
    way round (binary scores; for others, questions whose score went down / up)."""

    task: str
    metric: str
    n: int
    base: float
    current: float
    drop: float
    low: float
    high: float
    p_value: float
    method: str
    worse: int
    better: int

    def beyond_noise(self, confidence: float) -> bool:
        """Whether the drop is real at this confidence: a drop (not a gain) with p < 1 - confidence."""
        return self.drop > 0 and self.p_value < 1.0 - confidence

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_scores(values: Sequence[float], what: str) -> np.ndarray:
    array = np.asarray(values, dtype=float).reshape(-1)
    if not np.all(np.isfinite(array)) or np.any(array < 0) or np.any(array > 1):
        raise ValueError(f"{what}: per-question scores must lie in [0, 1]")
    return array


def compare_paired(
    base: Sequence[float],
    current: Sequence[float],
    confidence: float = 0.95,
    method: Method = "auto",
    n_boot: int = 2000,
    seed: int = 0,
    task: str = "",
    metric: str = "",
) -> PairedComparison:
    """Compare per-question scores of the base model and the current one (same questions, same order).

    Args:
        base: the base model's score per question, each in [0, 1].
        current: the current model's score on the same questions.
        confidence: of the interval (and 1 - confidence is the test's level).
        method: "mcnemar" (0/1 scores only), "bootstrap", or "auto" (McNemar for 0/1 scores).
        n_boot: bootstrap resamples.
        seed: bootstrap seed (the same inputs give the same interval).
        task, metric: names carried into the result.

    Raises:
        ValueError: lengths differ, no questions, a score outside [0, 1], or McNemar on non-binary scores.

    Example:
        >>> compare_paired([1, 0, 1], [1, 0, 0]).worse
        1
    """
    b = _as_scores(base, "base")
    c = _as_scores(current, "current")
    if b.shape != c.shape:
        raise ValueError(f"base has {b.size} questions and current {c.size}: compare the same questions")
    n = int(b.size)
    if n == 0:
        raise ValueError("no questions to compare")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} must be between 0 and 1")
    binary = bool(np.all((b == 0) | (b == 1)) and np.all((c == 0) | (c == 1)))
    if method == "mcnemar" and not binary:
        raise ValueError("McNemar's test needs 0/1 scores; use method='bootstrap'")
    diff = b - c  # > 0: worse now
    drop = float(diff.mean()) * 100
    worse, better = int((diff > 0).sum()), int((diff < 0).sum())
    from scipy import stats

    if binary and method != "bootstrap":
        discordant = worse + better
        p_value = float(stats.binomtest(worse, discordant, 0.5).pvalue) if discordant else 1.0
        # Paired-difference interval: var of the per-question difference / n (Wald, as for McNemar's difference).
        se = math.sqrt(max(float(diff.var()), 0.0) / n) * 100
        z = float(stats.norm.ppf(0.5 + confidence / 2))
        low, high, used = drop - z * se, drop + z * se, "mcnemar"
    else:
        rng = np.random.default_rng(seed)
        means = np.empty(n_boot)
        chunk = max(1, 2_000_000 // n)  # bounded memory for large benchmarks
        for start in range(0, n_boot, chunk):
            stop = min(n_boot, start + chunk)
            means[start:stop] = diff[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
        alpha = 1 - confidence
        low, high = (float(v) * 100 for v in np.quantile(means, [alpha / 2, 1 - alpha / 2]))
        p_value = min(1.0, 2 * min(float((means <= 0).mean()), float((means >= 0).mean())))
        if not np.any(diff):
            p_value = 1.0
        used = "bootstrap"
    return PairedComparison(
        task=task, metric=metric, n=n, base=float(b.mean()), current=float(c.mean()), drop=drop, low=low,
        high=high, p_value=p_value, method=used, worse=worse, better=better,
    )  # fmt: skip


def compare_unpaired(
    base: float,
    base_stderr: float | None,
    current: float,
    current_stderr: float | None,
    n: int,
    confidence: float = 0.95,
    task: str = "",
    metric: str = "",
) -> PairedComparison:
    """Base vs now from two means only (the base's per-question scores are unknown, e.g. given as
    numbers): a two-sided z-test on the difference with the standard errors that are known. Weaker
    than the paired test; used only when no pairing exists.

    Args:
        base, current: the two scores (0-1).
        base_stderr, current_stderr: their standard errors (None: unknown, counted as 0).
        n: questions behind `current`.
        confidence: of the interval and the test.
        task, metric: names carried into the result.

    Example:
        >>> round(compare_unpaired(0.6, 0.01, 0.5, 0.01, n=1000).drop, 1)
        10.0
    """
    from scipy import stats

    drop = (float(base) - float(current)) * 100
    se = math.sqrt(float(base_stderr or 0.0) ** 2 + float(current_stderr or 0.0) ** 2) * 100
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p_value = float(2 * stats.norm.sf(abs(drop) / se)) if se > 0 else (0.0 if drop else 1.0)
    return PairedComparison(
        task=task, metric=metric, n=int(n), base=float(base), current=float(current), drop=drop,
        low=drop - z * se, high=drop + z * se, p_value=p_value, method="unpaired", worse=0, better=0,
    )  # fmt: skip


def largest_drop(comparisons: Sequence[PairedComparison]) -> PairedComparison | None:
    """The comparison with the largest drop (the one `eval_forgetting` reports), or None."""
    return max(comparisons, key=lambda c: c.drop, default=None)


@dataclass
class ForgettingDecision:
    """What the rule decided at one round: `action` "warn" or "stop", on `comparison`, said in `reason`."""

    action: Action
    comparison: PairedComparison
    reason: str


def describe(c: PairedComparison, confidence: float) -> str:
    """'arc_easy acc dropped 4.5 points (95% interval 1.2 to 7.8; 61 -> 56.5%, McNemar p=0.004, n=200)'."""
    test = {"mcnemar": "McNemar", "bootstrap": "paired bootstrap"}.get(c.method, "unpaired z-test")
    return (
        f"{c.task} {c.metric} dropped {c.drop:.3g} points ({confidence:.0%} interval {c.low:.3g} to {c.high:.3g}; "
        f"{c.base * 100:.4g} -> {c.current * 100:.4g}, {test} p={c.p_value:.2g}, n={c.n}, "
        f"{c.worse} questions lost, {c.better} gained)"
    )


class ForgettingRule:
    """Warn once, or stop, when a benchmark score drops by more than `max_drop` points and the drop is
    beyond noise (the paired test at `confidence`).

    Args:
        max_drop: the largest drop in points tolerated (e.g. 2.0 = two percentage points of accuracy).
        action: "warn" (once per task and metric) or "stop" (training stops at the first such round).
        confidence: the paired test's confidence (a drop counts when p < 1 - confidence).

    Raises:
        ConfigurationError: a setting out of range.

    Example:
        >>> rule = ForgettingRule(max_drop=2.0, action="stop")
        >>> rule.on_round(10, [compare_paired([1] * 60, [0] * 20 + [1] * 40, task="t", metric="acc")]).action
        'stop'
    """

    def __init__(self, max_drop: float = 2.0, action: Action = "warn", confidence: float = 0.95) -> None:
        if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not max_drop >= 0:
            raise ConfigurationError(f"max_drop={max_drop!r} is not valid: use points of score, e.g. 2.0.")
        if action not in ("warn", "stop"):
            raise ConfigurationError(f"action={action!r} is not valid: use 'warn' or 'stop'.")
        if isinstance(confidence, bool) or not isinstance(confidence, float) or not 0.5 <= confidence < 1:
            raise ConfigurationError(f"confidence={confidence!r} is not valid: use e.g. 0.95.")
        self.max_drop = float(max_drop)
        self.action: Action = action
        self.confidence = confidence
        self.warned: list[str] = []
        self.stop_step: int | None = None
        self.stop_reason = ""

    def on_round(self, step: int, comparisons: Sequence[PairedComparison]) -> ForgettingDecision | None:
        """The decision at a benchmark round (None: nothing to say)."""
        if self.stop_step is not None:
            return None
        real = [c for c in comparisons if c.drop > self.max_drop and c.beyond_noise(self.confidence)]
        if self.action == "warn":
            real = [c for c in real if f"{c.task}/{c.metric}" not in self.warned]
        worst = largest_drop(real)
        if worst is None:
            return None
        reason = f"{describe(worst, self.confidence)}, more than max_drop={self.max_drop:g}"
        if self.action == "warn":
            self.warned.extend(f"{c.task}/{c.metric}" for c in real)
        else:
            self.stop_step, self.stop_reason = int(step), reason
        return ForgettingDecision(self.action, worst, reason)

    def state_dict(self) -> dict[str, Any]:
        return {"warned": list(self.warned), "stop_step": self.stop_step, "stop_reason": self.stop_reason}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warned = list(state.get("warned") or [])
        self.stop_step = state.get("stop_step")
        self.stop_reason = state.get("stop_reason") or ""
