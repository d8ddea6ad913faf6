"""The stopping rules with plain numbers: no Trainer, no model."""

from __future__ import annotations

import math

import pytest

from ft_callbacks.core.modes import infer_mode, is_improvement, normalize_metric_name
from ft_callbacks.core.stopping import DivergenceRule, GapRule, OverfitPolicy, PlateauRule


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("eval_loss", "min"),
        ("eval_perplexity", "min"),
        ("eval_error_rate", "min"),
        ("eval_bits_per_byte", "min"),
        ("eval_accuracy", "max"),
        ("eval_rougeL", "max"),
        ("eval_bertscore_f1", "max"),
    ],
)
def test_infer_mode(name, mode):
    assert infer_mode(name) == mode


def test_improvement_with_min_delta_and_nan():
    assert is_improvement(1.0, None, "min")
    assert is_improvement(0.89, 1.0, "min", min_delta=0.1)
    assert not is_improvement(0.9, 1.0, "min", min_delta=0.1)  # by exactly min_delta is not more than it
    assert is_improvement(1.2, 1.0, "max", min_delta=0.1)
    assert not is_improvement(math.nan, 1.0, "min")
    assert not is_improvement(math.inf, None, "min")
    assert is_improvement(0.5, math.nan, "min")  # a NaN best never blocks a real value


def test_normalize_metric_name():
    assert normalize_metric_name("loss") == "eval_loss"
    assert normalize_metric_name("eval_perplexity") == "eval_perplexity"
    with pytest.raises(ValueError):
        normalize_metric_name("")


def test_plateau_rule_counts_and_resets():
    rule = PlateauRule(patience=2, mode="min", min_delta=0.01)
    assert not rule.update(1.0)
    assert not rule.update(0.995)  # within min_delta: no improvement, wait 1
    assert rule.wait == 1
    assert not rule.update(0.9)  # improvement resets
    assert rule.wait == 0 and rule.best == 0.9
    assert not rule.update(0.95)
    decision = rule.update(math.nan)  # NaN counts as no improvement
    assert decision.stop and decision.rule == "plateau"
    assert "2 evaluations" in decision.reason


def test_plateau_rule_max_mode():
    rule = PlateauRule(patience=1, mode="max", metric="eval_accuracy")
    assert not rule.update(0.5)
    assert not rule.update(0.6)
    assert rule.update(0.55).stop


def test_gap_rule_fires_only_when_gap_widens_without_new_best():
    rule = GapRule(patience=2)
    # eval falls while train falls: new bests, no count
    assert not rule.update(3.0, 2.9)
    assert not rule.update(2.8, 2.5)
    assert rule.wait == 0
    # validation turns up, train keeps falling: gap widens twice in a row -> stop
    assert not rule.update(2.9, 2.3)
    assert rule.wait == 1
    decision = rule.update(3.0, 2.0)
    assert decision.stop and decision.rule == "gap"
    assert rule.gaps == pytest.approx([0.1, 0.3, 0.6, 1.0])


def test_gap_rule_resets_when_gap_narrows_or_new_best():
    rule = GapRule(patience=2)
    rule.update(3.0, 2.9)
    rule.update(3.1, 2.5)  # widened, no new best: 1
    rule.update(3.1, 2.8)  # narrowed: reset
    assert rule.wait == 0
    rule.update(3.2, 2.6)  # widened: 1
    rule.update(2.9, 2.0)  # widened but a new best: reset
    assert rule.wait == 0


def test_gap_rule_min_deltas():
    rule = GapRule(patience=1, min_delta=0.0, gap_min_delta=0.5)
    rule.update(3.0, 2.9)
    assert not rule.update(3.1, 2.8)  # gap grows by 0.2 < gap_min_delta
    assert rule.update(3.2, 2.0).stop
    strict = GapRule(patience=1, min_delta=0.5)
    strict.update(3.0, 2.9)
    # 2.8 is lower, but not by more than min_delta: not a new best, and the gap widened
    assert strict.update(2.8, 2.0).stop


def test_gap_rule_skips_missing_train_loss():
    rule = GapRule(patience=1)
    assert not rule.update(3.0, None)
    assert not rule.update(3.1, math.nan)
    assert rule.gaps == []


def test_divergence_rule():
    rule = DivergenceRule(threshold=10.0)
    assert not rule.check("loss", 9.0)
    assert rule.check("loss", 11.0).rule == "divergence"
    assert rule.check("loss", math.nan).rule == "non_finite"
    assert rule.check("loss", math.inf).rule == "non_finite"
    assert not DivergenceRule(stop_on_nonfinite=False).check("loss", math.nan)
    with pytest.raises(ValueError, match="divergence_threshold"):
        DivergenceRule(threshold=math.inf)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patience": 0}, "patience=0"),
        ({"patience": -2}, "patience=-2"),
        ({"patience": 1.5}, "patience=1.5"),
        ({"plateau_patience": 0}, "plateau_patience=0"),
        ({"min_delta": -0.1}, "min_delta"),
        ({"min_steps": -1}, "min_steps"),
        ({"min_evals": 2.0}, "min_evals"),
    ],
)
def test_policy_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OverfitPolicy(**kwargs)


def test_policy_warmup_delays_gap_and_plateau_but_not_nan():
    policy = OverfitPolicy(patience=1, plateau_patience=None, min_evals=3)
    assert not policy.on_evaluation(10, 3.0, 2.9)
    assert not policy.on_evaluation(20, 3.1, 2.5)  # would fire, but warm-up (2 evals < 3)
    decision = policy.on_evaluation(30, 3.2, 2.0)  # still widening, warm-up over
    assert decision.stop and policy.stop_step == 30 and policy.stop_rule == "gap"

    nan_policy = OverfitPolicy(min_evals=100, min_steps=1000)
    decision = nan_policy.on_evaluation(5, math.nan, 2.0)
    assert decision.rule == "non_finite" and nan_policy.stop_step == 5
    step_policy = OverfitPolicy(min_steps=1000, divergence_threshold=8.0)
    assert step_policy.on_step(3, 9.5).rule == "divergence"


def test_policy_min_steps():
    policy = OverfitPolicy(patience=None, plateau_patience=1, min_steps=25)
    policy.on_evaluation(10, 3.0, monitored=3.0)
    assert not policy.on_evaluation(20, 3.1, monitored=3.1)
    assert policy.on_evaluation(30, 3.2, monitored=3.2).rule == "plateau"


def test_policy_gap_before_plateau_and_state_round_trip():
    policy = OverfitPolicy(patience=2, plateau_patience=2)
    policy.on_evaluation(1, 3.0, 2.9, monitored=3.0)
    policy.on_evaluation(2, 3.1, 2.5, monitored=3.1)
    saved = policy.state_dict()

    resumed = OverfitPolicy(patience=2, plateau_patience=2)
    resumed.load_state_dict(saved)
    assert resumed.gap.wait == 1 and resumed.plateau.wait == 1 and resumed.evaluations == 2
    decision = resumed.on_evaluation(3, 3.2, 2.0, monitored=3.2)
    assert decision.rule == "gap"  # both fire at once; the gap rule is reported
    assert resumed.stopped and resumed.state_dict()["stop_step"] == 3


def test_the_first_stop_reason_stands():
    policy = OverfitPolicy(patience=3, plateau_patience=None)
    first = policy.on_step(10, math.inf)
    assert first.stop and "train loss" in first.reason
    # The Trainer still evaluates at that step: a NaN validation loss must not replace the reason.
    again = policy.on_evaluation(10, math.nan, 1.0)
    assert not again
    assert policy.stop_step == 10 and "train loss" in policy.stop_reason
