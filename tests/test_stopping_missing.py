"""Rules count only the evaluations where their input exists (issue #20).

A metric that GenerationScorer produces every `every_n_evals` evaluations, or that compute_metrics
returns only sometimes, is missing from the other evaluations. Those are no evidence of a plateau:
the count must not move. NaN, a value that is there but bad, still counts as no improvement.
"""

from __future__ import annotations

import math

from ft_callbacks import OverfitGuard
from ft_callbacks.core.stopping import GapRule, OverfitPolicy, PlateauRule

from .helpers import lm_trainer


def test_a_missing_value_does_not_move_the_plateau_count():
    rule = PlateauRule(patience=2, mode="max", metric="eval_rougeL")
    assert not rule.update(0.10) and rule.counted
    assert not rule.update(None) and rule.wait == 0 and not rule.counted
    assert not rule.update(None) and rule.wait == 0
    assert not rule.update(0.09) and rule.wait == 1  # present and worse: counts
    assert not rule.update(None) and rule.wait == 1  # the count stands, neither reset nor advanced
    decision = rule.update(0.08)
    assert decision.stop and rule.wait == 2 and "2 evaluations that reported it" in decision.reason
    # NaN is a value that is there, and bad: it still counts as no improvement.
    nan_rule = PlateauRule(patience=1)
    nan_rule.update(1.0)
    assert not nan_rule.update(None) and nan_rule.update(math.nan).stop


def test_the_issue_20_sequence_never_stops_while_the_metric_rises():
    """Scored every third evaluation and rising; today's rule stopped at the third evaluation."""
    policy = OverfitPolicy(patience=None, plateau_patience=2, monitor="eval_rougeL", mode="max")
    scores = [0.10, None, None, 0.12, None, None, 0.15, None, None, 0.18, None, None]
    for step, score in enumerate(scores, start=1):
        assert not policy.on_evaluation(step * 2, 3.0, 2.5, monitored=score), step
    assert policy.plateau.wait == 0 and policy.plateau.best == 0.18 and policy.evaluations == len(scores)


def test_missing_values_around_a_real_plateau_still_stop_it():
    policy = OverfitPolicy(patience=None, plateau_patience=2, monitor="eval_rougeL", mode="max")
    for step, score in enumerate([0.2, None, 0.1, None, None], start=1):
        assert not policy.on_evaluation(step, 3.0, monitored=score)
    decision = policy.on_evaluation(6, 3.0, monitored=0.15)
    assert decision.rule == "plateau" and policy.stop_step == 6


def test_the_gap_rule_says_whether_it_measured():
    rule = GapRule(patience=1)
    rule.update(3.0, None)
    assert not rule.measured and rule.wait == 0
    rule.update(3.0, 2.9)
    assert rule.measured
    rule.update(3.1, math.nan)
    assert not rule.measured and rule.gaps == [rule.last_gap]


def test_a_real_run_with_a_metric_on_every_third_evaluation_trains_on(tokenizer, corpus, tmp_path, capsys):
    """compute_metrics returns eval_score (rising) on evaluations 1, 4, 7, ... only. Before the fix the
    two evaluations without it counted as a plateau and plateau_patience=2 stopped at step 15."""
    calls = {"n": 0}

    def compute_metrics(prediction):
        calls["n"] += 1
        return {"score": 0.1 * calls["n"]} if calls["n"] % 3 == 1 else {}

    guard = OverfitGuard(patience=None, plateau_patience=2, monitor="eval_score")
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [guard], max_steps=40, eval_steps=5, logging_steps=5)
    trainer.compute_metrics = compute_metrics
    trainer.preprocess_logits_for_metrics = lambda logits, labels: logits[..., :1]  # keep no vocabulary logits
    trainer.train()

    scored = [e["step"] for e in trainer.state.log_history if "eval_score" in e]
    assert scored == [5, 20, 35] and calls["n"] == 8
    assert not guard.stopped and trainer.state.global_step == 40
    assert guard.policy.plateau.wait == 0 and guard.policy.plateau.best == 0.1 * 7
    assert "plateau 0/2 (eval_score missing: not counted)" in capsys.readouterr().out
