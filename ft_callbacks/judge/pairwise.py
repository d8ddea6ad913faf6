"""Win-rate arithmetic for pairwise judging: plain numbers in, plain numbers out (no framework).

Each pair (a prompt, the current model's output, the base model's output) is judged in both orders:
order 1 shows the current output as A, order 2 shows it as B. Per order a verdict says which side
won: "current", "base", "tie", or None (invalid: unparseable, refused, an error). A pair

- is **invalid** when either order is invalid: it leaves the denominator (never a loss, never a tie);
- is a **win/loss** when both orders agree on the same side;
- is a **tie** otherwise (both say tie, or the orders disagree: a flip; FastChat's rule).

`win_rate = (wins + 0.5 * ties) / valid`; the 95% interval is Wilson's score interval on that rate
with n = valid pairs (ties count as half a win); `flip_rate` is the share of valid pairs whose verdict
changed with the order; `length_ratio` is the mean length of the current outputs over the mean
length of the base outputs; `win_rate_lc` is AlpacaEval's length control: a logistic regression
(scikit-learn, unpenalised) of the pair's outcome (1 win, 0 loss, a tie as half of each) on the
standardised length difference, read at zero difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

Side = Literal["current", "base", "tie"]

__all__ = ["PairOutcome", "WinRate", "combine_orders", "length_controlled", "wilson_interval", "win_rate"]

Z95 = 1.959963984540054  # scipy.stats.norm.ppf(0.975)


@dataclass(frozen=True)
class PairOutcome:
    """One pair after both orders: `outcome` is "current", "base", "tie" or None (invalid); `flipped`:
    the two orders disagreed (only meaningful for valid pairs)."""

    outcome: Side | None
    flipped: bool


def side_of(letter: str | None, current_is_a: bool) -> Side | None:
    """A verdict letter ("A", "B", "tie"/"C" or None) as the side that won, given which side was A."""
    if letter is None:
        return None
    if letter in ("tie", "C"):
        return "tie"
    if letter not in ("A", "B"):
        return None
    return "current" if (letter == "A") == current_is_a else "base"


def combine_orders(first: Side | None, second: Side | None) -> PairOutcome:
    """Combine the two orders' verdicts (each already as a side): invalid if either is invalid; the
    verdict when they agree; a tie (flipped) when they do not."""
    if first is None or second is None:
        return PairOutcome(None, False)
    if first == second:
        return PairOutcome(first, False)
    return PairOutcome("tie", True)


def wilson_interval(rate: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion `rate` observed over `n` trials (written out because it
    is four lines and must accept the half-wins ties make; it equals scipy's `binomtest(k, n)
    .proportion_ci(method="wilson")` for whole counts)."""
    if n <= 0:
        return (math.nan, math.nan)
    denominator = 1 + z * z / n
    centre = (rate + z * z / (2 * n)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def length_controlled(outcomes: Sequence[float], length_differences: Sequence[float]) -> float:
    """The win rate at equal length: P(win | length difference 0) from an unpenalised logistic
    regression of the outcome (1, 0, or 0.5 for a tie, fitted as half a win and half a loss) on the
    length difference divided by its standard deviation (scikit-learn's LogisticRegression). With no
    spread in the lengths or a single outcome class the raw win rate is returned (nothing to control
    for, or no finite fit).

    Args:
        outcomes: per valid pair, 1.0 (current won), 0.0 (base won) or 0.5 (tie).
        length_differences: per valid pair, len(current) - len(base).
    """
    import numpy as np

    y = np.asarray(outcomes, dtype=float)
    d = np.asarray(length_differences, dtype=float)
    if len(y) == 0:
        return math.nan
    raw = float(y.mean())
    spread = float(d.std())
    wins, losses = y > 0, y < 1  # a tie is both, with weight 0.5 each
    if spread == 0 or not wins.any() or not losses.any() or raw in (0.0, 1.0):
        return raw
    from sklearn.linear_model import LogisticRegression

    x = (d / spread).reshape(-1, 1)
    features = np.concatenate([x[wins], x[losses]])
    labels = np.concatenate([np.ones(int(wins.sum())), np.zeros(int(losses.sum()))])
    weights = np.concatenate([y[wins], 1 - y[losses]])
    model = LogisticRegression(C=np.inf, solver="lbfgs", max_iter=1000, tol=1e-10)
    model.fit(features, labels, sample_weight=weights)
    return float(1 / (1 + math.exp(-float(model.intercept_[0]))))


@dataclass
class WinRate:
    """The numbers of one judged round (see the module docstring for each definition)."""

    pairs: int
    valid: int
    wins: int
    losses: int
    ties: int
    flips: int
    win_rate: float
    tie_rate: float
    ci_low: float
    ci_high: float
    flip_rate: float
    invalid_rate: float
    length_ratio: float
    win_rate_lc: float
    outcomes: list[PairOutcome] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """As the metric names GenerationScorer reports (without the `eval_` prefix)."""
        return {
            "win_rate": self.win_rate, "tie_rate": self.tie_rate, "win_rate_ci_low": self.ci_low,
            "win_rate_ci_high": self.ci_high, "judge_flip_rate": self.flip_rate,
            "judge_invalid_rate": self.invalid_rate, "length_ratio": self.length_ratio,
            "win_rate_lc": self.win_rate_lc,
        }  # fmt: skip


def win_rate(
    first: Sequence[Side | None], second: Sequence[Side | None], current_lengths: Sequence[float],
    base_lengths: Sequence[float],
) -> WinRate:
    """Win rate of the current model against the base over pairs judged in both orders.

    Args:
        first, second: per pair, the side that won in each order ("current", "base", "tie", None).
        current_lengths, base_lengths: per pair, the outputs' lengths (characters or tokens).

    Example:
        >>> w = win_rate(["current", "base"], ["base", "base"], [10, 12], [10, 10])
        >>> (w.wins, w.losses, w.ties, w.win_rate)
        (0, 1, 1, 0.25)
    """
    if not (len(first) == len(second) == len(current_lengths) == len(base_lengths)):
        raise ValueError("first, second, current_lengths and base_lengths must have one entry per pair")
    outcomes = [combine_orders(a, b) for a, b in zip(first, second, strict=True)]
    valid = [i for i, o in enumerate(outcomes) if o.outcome is not None]
    wins = sum(outcomes[i].outcome == "current" for i in valid)
    losses = sum(outcomes[i].outcome == "base" for i in valid)
    ties = len(valid) - wins - losses
    flips = sum(outcomes[i].flipped for i in valid)
    n = len(valid)
    rate = (wins + 0.5 * ties) / n if n else math.nan
    low, high = wilson_interval(rate, n) if n else (math.nan, math.nan)
    mean_base = sum(base_lengths) / len(base_lengths) if base_lengths else 0.0
    mean_current = sum(current_lengths) / len(current_lengths) if current_lengths else 0.0
    ratio = mean_current / mean_base if mean_base else math.nan
    score = {"current": 1.0, "base": 0.0, "tie": 0.5}
    lc = length_controlled(
        [score[outcomes[i].outcome] for i in valid], [current_lengths[i] - base_lengths[i] for i in valid]
    ) if n else math.nan  # fmt: skip
    return WinRate(
        pairs=len(outcomes), valid=n, wins=wins, losses=losses, ties=ties, flips=flips, win_rate=rate,
        tie_rate=ties / n if n else math.nan, ci_low=low, ci_high=high, flip_rate=flips / n if n else math.nan,
        invalid_rate=(len(outcomes) - n) / len(outcomes) if outcomes else math.nan, length_ratio=ratio,
        win_rate_lc=lc, outcomes=outcomes,
    )  # fmt: skip
