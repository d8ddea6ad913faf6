"""The noise test for early stopping: paired per-sample differences, with plain numbers, then live in a Trainer."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from transformers import TrainerCallback

from ft_callbacks import ConfigurationError, FtCallback
from ft_callbacks.core.stopping import NoiseTest, OverfitPolicy, paired_difference
from ft_callbacks.overfit_guard import OverfitGuard

from .helpers import lm_trainer


# -- the paired difference ---------------------------------------------------------------------------
def test_unweighted_paired_difference_is_scipys_paired_t_test():
    rng = np.random.default_rng(0)
    ref = rng.normal(3.0, 0.5, size=40)
    cur = ref + rng.normal(0.05, 0.1, size=40)
    d = paired_difference(cur, ref)
    t = stats.ttest_rel(cur, ref)
    assert d.diff == pytest.approx(float(np.mean(cur - ref)), rel=1e-12)
    assert d.z == pytest.approx(float(t.statistic), rel=1e-10)  # same standard error as the paired t-test
    assert d.n == 40


def test_token_weighted_difference_is_the_ratio_difference_and_its_se_matches_a_paired_bootstrap():
    rng = np.random.default_rng(1)
    tokens = rng.integers(3, 60, size=200).astype(float)  # very unequal lengths: weighting matters
    per_token_ref = rng.lognormal(1.0, 0.3, size=200)
    ref = per_token_ref * tokens
    cur = (per_token_ref + rng.normal(0.02, 0.2, size=200)) * tokens
    d = paired_difference(cur, ref, tokens)
    assert d.diff == pytest.approx(cur.sum() / tokens.sum() - ref.sum() / tokens.sum(), rel=1e-12)
    # A paired bootstrap (resampling samples, both evaluations together) of the same ratio difference.
    idx = rng.integers(0, 200, size=(4000, 200))
    boot = cur[idx].sum(1) / tokens[idx].sum(1) - ref[idx].sum(1) / tokens[idx].sum(1)
    assert d.se == pytest.approx(float(boot.std(ddof=1)), rel=0.08)
    # Unweighted, the same numbers would give another answer: the weights are used.
    assert paired_difference(cur / tokens, ref / tokens).diff != pytest.approx(d.diff, rel=1e-3)


def test_paired_difference_refuses_what_cannot_be_paired():
    with pytest.raises(ValueError, match="differ in number"):
        paired_difference([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2"):
        paired_difference([1.0], [2.0])
    with pytest.raises(ValueError, match="no target tokens"):
        paired_difference([0, 0], [0, 0], [0, 0])
    assert paired_difference([1.0, 2.0], [1.0, 2.0]).z == 0.0
    assert paired_difference([2.0, 3.0], [1.0, 2.0]).z == math.inf  # every sample worse by the same: no spread


# -- NoiseTest -------------------------------------------------------------------------------------
def _evaluation(rng, mean, n=100, noise=0.2, base=None):
    base = np.linspace(2.0, 4.0, n) if base is None else base
    return base - base.mean() + mean + rng.normal(0, noise, size=n)


def test_a_rise_within_noise_does_not_count_and_a_real_one_does():
    rng = np.random.default_rng(2)
    test = NoiseTest(confidence=0.95)
    first = test.update(_evaluation(rng, 3.0))
    assert first.improved and first.vs_best is None
    small = test.update(_evaluation(rng, 3.0 + 0.005))  # SE of the difference ~0.028
    assert not small.rise and test.rises == 0 and test.wait == 1
    assert "within noise" in small.describe()
    big = test.update(_evaluation(rng, 3.2))
    assert big.rise and test.rises == 1
    text = big.describe()
    assert text.startswith("val +0.") and "above best (z = " in text and "\u00b1" in text
    assert big.vs_best.z > 5


def test_a_new_low_within_noise_is_not_a_new_best():
    rng = np.random.default_rng(3)
    test = NoiseTest()
    test.update(_evaluation(rng, 3.0, noise=0.0))
    zigzag = 0.3 * (-1.0) ** np.arange(100)  # sums to 0: the mean is exactly 0.01 lower, the spread large
    lucky = test.update(_evaluation(rng, 2.99, noise=0.0) + zigzag)  # lower, but well within noise
    assert lucky.mean < 3.0 and not lucky.improved
    assert test.best == pytest.approx(3.0) and test.wait == 1
    real = test.update(_evaluation(rng, 2.7, noise=0.0))
    assert real.improved and test.best == pytest.approx(2.7) and test.wait == 0


def test_min_delta_is_the_floor_when_the_noise_is_smaller():
    test = NoiseTest(min_delta=0.05)
    base = np.linspace(1, 2, 50)
    test.update(base)
    obs = test.update(base - 0.03)  # no noise at all (z = -inf), but smaller than min_delta
    assert not obs.improved
    assert test.update(base - 0.06).improved


def test_max_mode_for_scores():
    test = NoiseTest(mode="max", metric="eval_rougeL")
    base = np.linspace(0.2, 0.6, 50)
    test.update(base)
    assert test.update(base + 0.1).improved
    assert test.update(base - 0.1).rise


def test_state_round_trip_and_a_changed_eval_set_restarts():
    test = NoiseTest()
    test.update([1.0, 2.0, 3.0], [1, 2, 3])
    test.update([1.5, 2.5, 3.5], [1, 2, 3])
    other = NoiseTest()
    other.load_state_dict(test.state_dict())
    assert other.state_dict() == test.state_dict()
    assert other.update([2.0, 3.0, 4.0], [1, 2, 3]).rise == test.update([2.0, 3.0, 4.0], [1, 2, 3]).rise
    changed = test.update([1.0, 1.0], [1, 1])  # other samples: nothing to pair with
    assert changed.vs_best is None and changed.restarted and test.rises == 0


# -- the policy: gap rule with the noise test, plateau rule with it, fall-back -----------------------
def _rows(rng, mean, n=64):
    tokens = rng.integers(5, 40, size=n).astype(float)
    return tokens, lambda m: ((np.linspace(-0.3, 0.3, n) + m + rng.normal(0, 0.05, size=n)) * tokens, tokens)


def test_gap_rule_stops_at_the_first_real_rise_while_training_loss_falls():
    rng = np.random.default_rng(4)
    _, make = _rows(rng, 3.0)
    policy = OverfitPolicy(noise_test=True, confirm=1, plateau_patience=None)
    curve = [(3.5, 3.4), (3.2, 3.0), (3.0, 2.8), (3.05, 2.6)]  # (validation, training) means
    decisions = []
    for step, (val, train) in enumerate(curve, start=1):
        samples = make(val)
        decisions.append(policy.on_evaluation(step * 10, val, train, val, samples, samples))
    assert not any(decisions[:3])
    assert decisions[3].stop and decisions[3].rule == "gap"
    assert "above best (z = " in decisions[3].reason and "training loss kept falling" in decisions[3].reason
    assert policy.stop_step == 40


def test_confirm_waits_for_rises_in_a_row():
    rng = np.random.default_rng(5)
    _, make = _rows(rng, 3.0)
    policy = OverfitPolicy(noise_test=True, confirm=2, plateau_patience=None)
    decisions = []
    for step, (val, train) in enumerate([(3.0, 2.8), (3.1, 2.7), (3.12, 2.6)], start=1):
        samples = make(val)
        decisions.append(policy.on_evaluation(step, val, train, val, samples, samples))
    assert [bool(d) for d in decisions] == [False, False, True]
    assert "for 2 evaluation(s) in a row" in decisions[2].reason


def test_a_rise_with_training_loss_rising_too_is_not_memorising():
    rng = np.random.default_rng(5)
    _, make = _rows(rng, 3.0)
    policy = OverfitPolicy(noise_test=True, confirm=1, plateau_patience=None)
    for step, (val, train) in enumerate([(3.0, 2.8), (3.1, 3.0), (3.2, 3.1)], start=1):
        samples = make(val)
        assert not policy.on_evaluation(step, val, train, val, samples, samples)  # the gap narrowed
    assert policy.loss_obs.rises == 2 and policy.noise_gap.wait == 0
    samples = make(3.25)
    assert policy.on_evaluation(4, 3.25, 2.7, 3.25, samples, samples).rule == "gap"  # now training loss fell


def test_plateau_counts_only_improvements_beyond_noise():
    rng = np.random.default_rng(6)
    _, make = _rows(rng, 3.0)
    policy = OverfitPolicy(noise_test=True, patience=None, plateau_patience=3)
    values = [3.0, 2.999, 3.001, 2.998]  # lower each other time, never beyond noise
    decisions = []
    for step, val in enumerate(values, start=1):
        samples = make(val)
        decisions.append(policy.on_evaluation(step, val, None, val, samples, samples))
    assert decisions[-1].stop and decisions[-1].rule == "plateau"
    assert "not improved beyond noise" in decisions[-1].reason
    # The counting plateau rule would have reset at each new low.
    counting = OverfitPolicy(patience=None, plateau_patience=3)
    assert not any(counting.on_evaluation(step, v, None, v) for step, v in enumerate(values, start=1))


def test_without_per_sample_values_the_rules_count_as_before():
    noisy = OverfitPolicy(noise_test=True, patience=2, plateau_patience=None)
    plain = OverfitPolicy(patience=2, plateau_patience=None)
    curve = [(3.0, 2.9), (3.1, 2.8), (3.2, 2.6)]
    for step, (val, train) in enumerate(curve, start=1):
        a = noisy.on_evaluation(step, val, train, val)
        b = plain.on_evaluation(step, val, train, val)
        assert bool(a) == bool(b)
        assert noisy.noise_fallback == ["gap"]
    assert noisy.stop_rule == plain.stop_rule == "gap"


def test_policy_state_round_trip_keeps_the_best_samples():
    rng = np.random.default_rng(7)
    _, make = _rows(rng, 3.0)
    policy = OverfitPolicy(noise_test=True)
    for step, val in enumerate([3.0, 2.9, 2.95], start=1):
        s = make(val)
        policy.on_evaluation(step, val, 2.5, val, s, s)
    again = OverfitPolicy(noise_test=True)
    again.load_state_dict(policy.state_dict())
    assert again.state_dict() == policy.state_dict()
    assert again.noise_loss.best == pytest.approx(policy.noise_loss.best)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_test": "yes"}, "noise_test='yes' is not valid: use True or False"),
        ({"noise_test": True, "confidence": 1.0}, r"confidence=1.0 is not valid: use a probability in \[0.5, 1\)"),
        ({"noise_test": True, "confidence": "0.9"}, "without quotes"),
        ({"noise_test": True, "confirm": 0}, "confirm=0 is not valid: use a whole number of evaluations >= 1"),
    ],
)
def test_bad_noise_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        OverfitGuard(**kwargs)


# -- live: a real Trainer ------------------------------------------------------------------------------
class _Samples(TrainerCallback):
    """Listed after the guard: the per-sample rows of every evaluation, and the metrics."""

    def __init__(self, guard):
        self.guard, self.rows = guard, []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        nll, tokens = self.guard.last_samples
        self.rows.append((state.global_step, dict(metrics), nll.copy(), tokens.copy()))


def test_live_noise_rule_stops_an_overfitting_run_and_says_why(tokenizer, corpus, tmp_path, capsys):
    guard = OverfitGuard(noise_test=True, confirm=2, restore_best_weights=False)
    seen = _Samples(guard)
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [guard, seen], max_steps=300, report_to="none")
    trainer.train()
    out = capsys.readouterr().out
    assert guard.stopped and guard.stop_rule == "gap"
    assert trainer.state.global_step == guard.policy.stop_step < 300
    # The per-sample sums are the eval set's, in order: they add up to eval_token_loss exactly.
    step, metrics, nll, tokens = seen.rows[-1]
    assert len(nll) == 64 and nll.sum() / tokens.sum() == pytest.approx(metrics["eval_token_loss"], rel=1e-9)
    assert all(np.array_equal(r[3], tokens) for r in seen.rows)  # same samples, same targets each time
    # Replaying the plain policy on the recorded numbers stops at the same evaluation, for the same reason.
    replay = OverfitPolicy(noise_test=True, confirm=2)
    fired = next(
        s
        for s, m, n, t in seen.rows
        if replay.on_evaluation(s, m["eval_token_loss"], m["eval_train_loss"], m["eval_loss"], (n, t), (n, t))
    )
    assert fired == guard.policy.stop_step and replay.stop_reason == guard.stop_reason
    # The evaluation's console block says why it waited and why it stopped.
    assert "rise beyond noise 0/2" in out or "rise beyond noise 1/2" in out
    assert "above best (z = " in guard.stop_reason and "\u00b1" in guard.stop_reason
    assert f"OverfitGuard stops training at step {step} (gap rule): val +" in out


class _ScorePerSample(FtCallback):
    """A score with per-sample values (as a scorer that keeps them would offer): flat after the first
    evaluations, with per-sample spread, so only the noise test sees it as a plateau."""

    exclusive_metrics = ("sample_score",)

    def __init__(self, offer: bool = True) -> None:
        self.offer, self.values, self.step = offer, None, None
        self.rng = np.random.default_rng(0)

    def produces(self) -> set[str]:
        return {"sample_score"}

    def compute(self, ctx) -> None:
        # 0.5 on average, each evaluation a fresh draw around it: changes within noise, new highs by chance.
        self.values = np.clip(0.5 + self.rng.normal(0, 0.2, size=40), 0, 1)
        self.step = ctx.step
        ctx.add("sample_score", float(self.values.mean()))

    def per_sample_values(self, metric: str, step: int):
        if self.offer and metric == "eval_sample_score" and step == self.step:
            return self.values, None
        return None


def test_a_score_with_per_sample_values_gets_the_noise_test_and_one_without_falls_back(
    tokenizer, corpus, tmp_path, capsys
):
    guard = OverfitGuard(noise_test=True, patience=None, plateau_patience=3, monitor="eval_sample_score",
                         restore_best_weights=False)  # fmt: skip
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "a", [guard, _ScorePerSample()], max_steps=100,
                         train_size=200, report_to="none")  # fmt: skip
    trainer.train()
    assert guard.stop_rule == "plateau" and guard.policy.stop_step == 40  # 3 evaluations after the first
    assert "eval_sample_score has not improved beyond noise" in guard.stop_reason
    assert guard.policy.noise_monitor.mode == "max"  # a score: higher is better
    # Without per-sample values the plateau rule counts as before (new highs by chance reset it), said once.
    capsys.readouterr()
    counting = OverfitGuard(noise_test=True, patience=None, plateau_patience=3, monitor="eval_sample_score",
                            restore_best_weights=False)  # fmt: skip
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "b", [counting, _ScorePerSample(offer=False)], max_steps=100,
                         train_size=200, report_to="none")  # fmt: skip
    trainer.train()
    out = capsys.readouterr().out
    assert out.count("OverfitGuard's noise test: eval_sample_score has no per-sample values") == 1
    # The score's means: 0.488, 0.560 (a new high, within noise: z = 1.6), 0.501, 0.466, 0.500: counting
    # resets at the second evaluation and stops one evaluation later than the noise test.
    assert counting.stop_rule == "plateau" and counting.policy.stop_step == 50


def test_resume_keeps_the_best_evaluations_samples_and_stops_where_the_run_did(tokenizer, corpus, tmp_path):
    settings = {"max_steps": 300, "save_strategy": "steps", "save_steps": 10, "report_to": "none"}
    first = OverfitGuard(noise_test=True, confirm=2, restore_best_weights=False)
    lm_trainer(tokenizer, corpus, tmp_path / "a", [first], **settings).train()
    stop = first.policy.stop_step
    assert first.stop_rule == "gap" and stop >= 30
    # A new output directory (no record of the stop there), resumed from the checkpoint before the stop,
    # without the Trainer's restore_callback_states_from_checkpoint: the paired state comes back with it.
    resumed = OverfitGuard(noise_test=True, confirm=2, restore_best_weights=False)
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "b", [resumed], **settings)
    trainer.train(resume_from_checkpoint=str(tmp_path / "a" / f"checkpoint-{stop - 10}"))
    assert resumed.policy.stop_step == stop and resumed.stop_rule == "gap"
    assert resumed.policy.noise_loss.best == pytest.approx(first.policy.noise_loss.best, rel=1e-6)
    assert resumed.policy.loss_obs.rises == first.policy.loss_obs.rises == 2
