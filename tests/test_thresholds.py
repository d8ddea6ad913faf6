"""MetricThreshold: the pure rule with plain numbers, then real tiny-model Trainer runs: a stop on a task
metric of GenerationScorer (reason in log_history, the wandb summary, the console and a wandb alert read
back from the offline run), a warning that lets training go on, and a metric nothing produces failing
before the first step."""

from __future__ import annotations

import math

import pytest

from ft_callbacks import GenerationScorer
from ft_callbacks.core.errors import ConfigurationError
from ft_callbacks.core.structured import Regex
from ft_callbacks.core.thresholds import ThresholdRule
from ft_callbacks.thresholds import MetricThreshold

from .helpers import lm_trainer, wandb_alerts, wandb_records, wandb_summary


def test_rule_counts_breaches_in_a_row():
    rule = ThresholdRule("json_valid_rate", below=0.9, patience=2)
    assert rule.metric == "eval_json_valid_rate"
    assert not rule.on_value(1, 0.8)  # 1/2
    assert not rule.on_value(2, 0.95)  # back in range: reset
    assert not rule.on_value(3, 0.5)
    assert not rule.on_value(4, None)  # not measured: neither counted nor reset
    decision = rule.on_value(5, 0.85)
    assert decision and decision.rule == "threshold"
    assert decision.reason == "eval_json_valid_rate 0.85 < 0.9 for 2 evaluations in a row"
    assert rule.fired_step == 5 and rule.wait == 0


def test_rule_bounds_and_non_finite_values():
    rule = ThresholdRule("eval_toxicity_rate", above=0.05)
    assert not rule.on_value(1, 0.05)  # the bound itself is allowed
    assert rule.on_value(2, 0.0500001).reason == "eval_toxicity_rate 0.05 > 0.05"
    assert rule.on_value(3, math.nan).reason == "eval_toxicity_rate nan is not a finite number"
    both = ThresholdRule("eval_mean_length", above=100, below=5)
    assert [bool(both.on_value(i, v)) for i, v in enumerate([50, 4, 101, 5, 100])] == [False, True, True, False, False]
    restored = ThresholdRule("eval_mean_length", above=100, patience=3)
    restored.on_value(1, 200)
    copy = ThresholdRule("eval_mean_length", above=100, patience=3)
    copy.load_state_dict(restored.state_dict())
    assert copy.wait == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "above= .* below="),
        ({"above": 0.1, "below": 0.5}, "above=0.1 < below=0.5"),
        ({"above": math.inf}, "finite"),
        ({"below": "0.5"}, "finite number"),
        ({"below": 0.5, "patience": 0}, "patience"),
        ({"below": 0.5, "action": "halt"}, "'stop' or 'warn'"),
    ],
)
def test_bad_settings_fail_at_construction(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        MetricThreshold("eval_json_valid_rate", **kwargs)


def prompts_of(corpus: list[str], count: int = 8) -> list[str]:
    return [" ".join(text.split()[:6]) for text in corpus[:count]]


def test_a_threshold_on_a_task_metric_stops_a_real_run(tokenizer, corpus, tmp_path, wandb_offline, capsys, caplog):
    prompts = prompts_of(corpus)
    # A plain run: GenerationScorer declares the task metric keys, so the threshold passes the check before
    # step 1, and scores synchronously because a threshold watches one of them.
    scorer = GenerationScorer(prompts, ["-"] * len(prompts), metrics=("json_valid", "distinct", Regex(r"\S+.*")),
                              max_new_tokens=12)  # fmt: skip
    # Untrained and barely trained tiny models write no JSON: json_valid_rate stays 0 < 0.9.
    threshold = MetricThreshold("eval_json_valid_rate", below=0.9, patience=2)
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [scorer, threshold], max_steps=100, eval_steps=10,
                         report_to="wandb")  # fmt: skip
    trainer.train()
    # Evaluations at steps 10 and 20 breach: the second one stops training.
    assert scorer._sync
    assert trainer.state.global_step == 20
    assert threshold.stopped and threshold.stop_step == 20
    reason = "eval_json_valid_rate 0 < 0.9 for 2 evaluations in a row"
    assert threshold.stop_reason == reason
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert [e["eval_json_valid_rate"] for e in evals] == [0.0, 0.0]
    assert all("eval_distinct_1_delta" in e for e in evals)  # deltas against the step-0 baseline
    facts = next(e for e in trainer.state.log_history if "ft_callbacks/early_stop_reason" in e)
    assert facts["ft_callbacks/early_stop_step"] == 20 and facts["ft_callbacks/early_stop_rule"] == "threshold"
    assert facts["ft_callbacks/early_stop_reason"] == reason
    out = capsys.readouterr().out + caplog.text
    assert "STOP: threshold rule" in out
    assert f"MetricThreshold stops training at step 20 (threshold rule): {reason}" in out
    import wandb

    wandb.finish()
    records = wandb_records(wandb_offline)
    summary = wandb_summary(records)
    assert summary.get("ft_callbacks/early_stop_reason") == reason, summary
    alerts = wandb_alerts(records)
    assert any(a["title"] == "MetricThreshold stopped training" and reason in a["text"] for a in alerts), alerts


def test_a_warning_lets_training_go_on(tokenizer, corpus, tmp_path, wandb_offline, capsys, caplog):
    # eval_loss of an untrained tiny model is far above 1.0: warn at every evaluation, stop never.
    threshold = MetricThreshold("eval_loss", above=1.0, action="warn")
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [threshold], max_steps=20, eval_steps=10, eval_size=16,
                         report_to="wandb")  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 20 and not threshold.stopped
    assert [w["step"] for w in threshold.warnings] == [10, 20]
    assert "WARNING MetricThreshold: step 10: eval_loss" in capsys.readouterr().out + caplog.text
    import wandb

    wandb.finish()
    alerts = wandb_alerts(wandb_records(wandb_offline))
    assert sum(a["title"] == "MetricThreshold warning" for a in alerts) >= 1, alerts


def test_a_metric_no_evaluation_produces_fails_before_step_one(tokenizer, corpus, tmp_path):
    threshold = MetricThreshold("eval_toxicity_rate", above=0.05)
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [threshold], max_steps=20, eval_steps=10, eval_size=16,
                         report_to="none")  # fmt: skip
    with pytest.raises(ConfigurationError, match="eval_toxicity_rate"):
        trainer.train()
    assert trainer.state.global_step == 0
    no_evals = lm_trainer(tokenizer, corpus, tmp_path, [MetricThreshold("eval_loss", above=9.0)], max_steps=5,
                          eval_strategy="no", report_to="none")  # fmt: skip
    with pytest.raises(ConfigurationError, match="eval_strategy='no'"):
        no_evals.train()
