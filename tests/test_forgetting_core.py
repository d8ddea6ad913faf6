"""core/forgetting.py with plain numbers: the paired test, the drop in points, the rule and its state."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ft_callbacks.core.errors import ConfigurationError
from ft_callbacks.core.forgetting import ForgettingRule, compare_paired, compare_unpaired, largest_drop


def exact_mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value written out from the binomial distribution (the reference)."""
    n = b + c
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize("lost,gained,same", [(9, 2, 40), (3, 3, 50), (12, 0, 10), (0, 5, 30), (1, 0, 0)])
def test_mcnemar_matches_the_exact_binomial(lost, gained, same):
    base = [1] * lost + [0] * gained + [1] * same
    now = [0] * lost + [1] * gained + [1] * same
    c = compare_paired(base, now, task="t", metric="acc")
    assert c.method == "mcnemar"
    assert (c.worse, c.better, c.n) == (lost, gained, lost + gained + same)
    assert c.p_value == pytest.approx(exact_mcnemar(lost, gained), rel=1e-9)
    assert c.drop == pytest.approx((lost - gained) / c.n * 100)
    # The interval is the paired-difference one: mean difference +- z * sd(diff) / sqrt(n).
    diff = np.array(base, float) - np.array(now, float)
    half = 1.959963984540054 * diff.std() / math.sqrt(len(diff)) * 100
    assert (c.low, c.high) == pytest.approx((c.drop - half, c.drop + half))


def test_same_mean_different_questions_is_not_the_same_as_no_change():
    # Two means equal: an unpaired comparison sees nothing; the paired test sees 20 discordant questions, balanced.
    base = [1] * 10 + [0] * 10 + [1] * 30
    now = [0] * 10 + [1] * 10 + [1] * 30
    c = compare_paired(base, now)
    assert c.drop == 0 and c.worse == 10 and c.better == 10 and c.p_value == pytest.approx(1.0)
    assert not c.beyond_noise(0.95)


def test_noise_check_small_drop_large_n_vs_large_drop_small_n():
    # 3 points over 1000 questions, all in one direction: real.
    big = compare_paired([1] * 1000, [0] * 30 + [1] * 970)
    assert big.drop == pytest.approx(3.0) and big.beyond_noise(0.95)
    # 10 points over 10 questions (1 question): noise.
    small = compare_paired([1] * 10, [0] + [1] * 9)
    assert small.drop == pytest.approx(10.0) and not small.beyond_noise(0.95)
    assert not compare_paired([0] * 30 + [1] * 970, [1] * 1000).beyond_noise(0.95)  # a gain is never forgetting


def test_bootstrap_for_partial_credit_scores():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.4, 1.0, 400)
    now = np.clip(base - 0.05 + rng.normal(0, 0.02, 400), 0, 1)
    c = compare_paired(base, now, seed=3)
    assert c.method == "bootstrap"
    assert c.drop == pytest.approx((base - now).mean() * 100)
    assert c.low < c.drop < c.high and c.low > 0 and c.beyond_noise(0.95)
    assert compare_paired(base, now, seed=3) == c  # seeded: the same interval every time
    same = compare_paired(base, base)
    assert same.drop == 0 and same.p_value == 1.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="same questions"):
        compare_paired([1, 0], [1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        compare_paired([2.0], [1.0])
    with pytest.raises(ValueError, match="no questions"):
        compare_paired([], [])
    with pytest.raises(ValueError, match="0/1"):
        compare_paired([0.5], [1.0], method="mcnemar")
    for kwargs in ({"max_drop": -1}, {"action": "halt"}, {"confidence": 1.5}, {"max_drop": True}):
        with pytest.raises(ConfigurationError):
            ForgettingRule(**kwargs)


def test_unpaired_from_two_means():
    c = compare_unpaired(0.60, 0.01, 0.55, 0.01, n=2000)
    assert c.drop == pytest.approx(5.0) and c.method == "unpaired"
    z = 5.0 / (math.sqrt(2) * 1.0)
    assert c.p_value == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert c.beyond_noise(0.95)


def test_rule_warns_once_per_metric_and_stops_once():
    real = compare_paired([1] * 100, [0] * 20 + [1] * 80, task="a", metric="acc")
    noise = compare_paired([1] * 10, [0] + [1] * 9, task="b", metric="acc")
    small = compare_paired([1] * 1000, [0] * 15 + [1] * 985, task="c", metric="acc")  # real but 1.5 < 2 points
    rule = ForgettingRule(max_drop=2.0, action="warn")
    assert rule.on_round(5, [noise, small]) is None
    first = rule.on_round(10, [noise, small, real])
    assert first.action == "warn" and first.comparison is real and "a acc dropped 20 points" in first.reason
    assert rule.on_round(15, [real]) is None  # said once
    restored = ForgettingRule(max_drop=2.0, action="warn")
    restored.load_state_dict(rule.state_dict())
    assert restored.on_round(20, [real]) is None  # and not again after a resume
    stop = ForgettingRule(max_drop=2.0, action="stop")
    assert stop.on_round(5, [noise]) is None
    decision = stop.on_round(10, [noise, real])
    assert decision.action == "stop" and stop.stop_step == 10
    assert stop.on_round(15, [real]) is None
    assert largest_drop([noise, small, real]) is real and largest_drop([]) is None
