"""OverfitGuard with a real tiny GPT-2, a real Trainer and a real (offline) wandb run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import wandb
from transformers import TrainerCallback

from ft_callbacks import ConfigurationError, FtCallback, OverfitGuard
from ft_callbacks._compat import TRANSFORMERS_VERSION
from ft_callbacks.core.stopping import GapRule

from .helpers import lm_trainer, wandb_alerts, wandb_history, wandb_records


def _eval_entries(trainer):
    return [e for e in trainer.state.log_history if "eval_loss" in e]


def _hand_perplexity(trainer, tokenizer):
    """sum NLL / predicted tokens over the eval set, from logits, in float64, batch by batch."""
    model = trainer.model.eval()
    nll, tokens, n_bytes = 0.0, 0, 0
    with torch.no_grad():
        for batch in trainer.get_eval_dataloader():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"][:, 1:]
            log_probs = torch.log_softmax(logits[:, :-1].double(), dim=-1)
            mask = labels != -100
            picked = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            nll -= picked[mask].sum().item()
            tokens += int(mask.sum())
            for row in labels:
                text = tokenizer.decode(row[row != -100].tolist(), skip_special_tokens=True)
                n_bytes += len(text.encode("utf-8"))
    return nll, tokens, n_bytes


def test_exact_perplexity_matches_hand_computation_and_differs_from_exp_eval_loss(tokenizer, corpus, tmp_path):
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [OverfitGuard()], eval_size=37)
    metrics = trainer.evaluate()
    nll, tokens, n_bytes = _hand_perplexity(trainer, tokenizer)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-6)
    assert metrics["eval_token_loss"] == pytest.approx(nll / tokens, rel=1e-6)
    assert metrics["eval_bits_per_token"] == pytest.approx(nll / tokens / math.log(2), rel=1e-6)
    assert metrics["eval_bits_per_byte"] == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-6)
    # The Trainer's own number is batch-weighted and, for GPT-2 on transformers 5.x, divides by the
    # unshifted label count: exp(eval_loss) is not the corpus perplexity.
    # (4.x has only the batch weighting, a smaller error on an untrained model.)
    expected_error = 0.01 if TRANSFORMERS_VERSION.major >= 5 else 1e-4
    assert abs(math.exp(metrics["eval_loss"]) / metrics["eval_perplexity"] - 1) > expected_error
    # Standalone evaluate() reports the same numbers into log_history, but no training-only values.
    entry = _eval_entries(trainer)[-1]
    assert entry["eval_perplexity"] == metrics["eval_perplexity"]
    assert "eval_loss_gap" not in metrics


def test_gap_rule_stops_an_overfitting_run_and_logs_to_the_trainers_wandb_run(
    tokenizer, corpus, tmp_path, wandb_offline
):
    guard = OverfitGuard(patience=3)
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [guard], max_steps=300, report_to="wandb")
    trainer.train()

    evals = _eval_entries(trainer)
    assert guard.stopped and guard.policy.stop_rule == "gap"
    assert trainer.state.global_step == guard.policy.stop_step < 300
    assert evals[-1]["step"] == guard.policy.stop_step
    # Replaying the logged numbers through the plain rule gives the same stop step.
    replay = GapRule(patience=3)
    fired_at = next(e["step"] for e in evals if replay.update(e["eval_token_loss"], e["eval_train_loss"]))
    assert fired_at == guard.policy.stop_step
    # Memorising: train loss fell while validation loss rose over the last evaluations.
    assert evals[-1]["eval_train_loss"] < evals[-4]["eval_train_loss"]
    assert evals[-1]["eval_token_loss"] > min(e["eval_token_loss"] for e in evals)
    # Run-level facts get an entry of their own at the stop step (never in the evaluation's entry).
    stop = [e for e in trainer.state.log_history if "ft_callbacks/early_stop_rule" in e][-1]
    assert stop["step"] == guard.policy.stop_step and "eval_loss" not in stop
    assert stop["ft_callbacks/early_stop_rule"] == "gap"
    assert "widened for 3 evaluations" in stop["ft_callbacks/early_stop_reason"]

    saved = json.loads((tmp_path / "out" / "ft_callbacks" / "overfit_guard.json").read_text())
    assert saved["stop_step"] == guard.policy.stop_step

    wandb.finish()
    assert len(list(Path(wandb_offline).glob("wandb/offline-run-*"))) == 1  # the Trainer's run, shared
    rows = wandb_history(wandb_offline)
    ppl_rows = [r for r in rows if "eval/perplexity" in r]
    assert [r["train/global_step"] for r in ppl_rows] == [e["step"] for e in evals]  # exactly once each
    assert [r["eval/perplexity"] for r in ppl_rows] == pytest.approx([e["eval_perplexity"] for e in evals])
    assert all("eval/loss_gap" in r for r in ppl_rows)
    assert any("eval/loss" in r for r in rows)  # the Trainer's own eval logging went to the same run
    # The stop also raised a wandb alert with its reason (offline: a record in the run's file).
    alerts = wandb_alerts(wandb_records(wandb_offline))
    assert [a["title"] for a in alerts] == ["OverfitGuard stopped training"]
    assert f"at step {guard.policy.stop_step} (gap rule)" in alerts[0]["text"]


class _Reads(FtCallback):
    """A consumer listed before OverfitGuard: it must still see eval_perplexity."""

    def __init__(self):
        self.seen = []

    def decide(self, ctx):
        self.seen.append(ctx.metrics.get("eval_perplexity"))


class _PlainReads(TrainerCallback):
    def __init__(self):
        self.seen = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.seen.append(metrics.get("eval_loss_gap"))


@pytest.mark.parametrize("guard_first", [True, False])
def test_results_reach_metrics_whatever_the_callback_order(tokenizer, corpus, tmp_path, guard_first, wandb_offline):
    reader, plain = _Reads(), _PlainReads()
    guard = OverfitGuard(patience=None, plateau_patience=None)
    callbacks = [guard, reader, plain] if guard_first else [reader, plain, guard]
    trainer = lm_trainer(
        tokenizer,
        corpus,
        tmp_path / "out",
        callbacks,
        max_steps=30,
        save_strategy="best",
        metric_for_best_model="eval_perplexity",
        greater_is_better=False,
        report_to="wandb",
    )
    trainer.train()
    evals = _eval_entries(trainer)
    assert reader.seen == [e["eval_perplexity"] for e in evals]
    # Even a plain TrainerCallback listed before the guard sees the gap: the first ft_callbacks
    # callback reached runs all of them.
    assert plain.seen == [e["eval_loss_gap"] for e in evals] if guard_first else all(plain.seen)
    # metric_for_best_model / save_strategy="best" were driven by our metric.
    assert trainer.state.best_metric == min(e["eval_perplexity"] for e in evals)
    wandb.finish()
    ppl_steps = [r["train/global_step"] for r in wandb_history(wandb_offline) if "eval/perplexity" in r]
    assert ppl_steps == [10, 20, 30]


def test_nan_training_loss_stops_at_once_with_the_raw_value(tokenizer, corpus, tmp_path):
    class Poison(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 7:
                with torch.no_grad():
                    model.transformer.wte.weight.fill_(float("nan"))

    guard = OverfitGuard()
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [Poison(), guard], max_steps=50, logging_steps=1)
    trainer.train()
    assert guard.policy.stop_rule == "non_finite"
    assert guard.policy.stop_step == trainer.state.global_step == 8
    # The Trainer's logging filter hid the NaN from the logs; the guard judged the raw loss.
    logged = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert all(math.isfinite(v) for v in logged)
    stop_entry = next(e for e in trainer.state.log_history if e.get("ft_callbacks/early_stop_rule"))
    assert stop_entry["step"] == 8


def test_train_sample_gap_compares_like_with_like(tokenizer, corpus, tmp_path):
    guard = OverfitGuard(train_sample_size=16, patience=None, plateau_patience=None)
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [guard], max_steps=20)
    trainer.train()
    for entry in _eval_entries(trainer):
        assert entry["eval_loss_gap"] == pytest.approx(entry["eval_token_loss"] - entry["eval_train_sample_loss"])
        assert math.isfinite(entry["eval_train_loss"])
    # Same fixed sample every time.
    assert guard._sample_indices == sorted(guard._sample_indices) and len(guard._sample_indices) == 16


def test_resume_restores_state_without_trainer_restore(tokenizer, corpus, tmp_path):
    out = tmp_path / "out"
    settings = {"max_steps": 40, "save_strategy": "steps", "save_steps": 20}
    first = OverfitGuard(patience=50, plateau_patience=50)
    lm_trainer(tokenizer, corpus, out, [first], **settings).train()
    assert first.policy.evaluations == 4

    resumed = OverfitGuard(patience=50, plateau_patience=50)
    trainer = lm_trainer(tokenizer, corpus, out, [resumed], **settings)
    assert trainer.args.restore_callback_states_from_checkpoint is False
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-20"))
    assert resumed.policy.evaluations == 4  # 2 restored + 2 after resuming
    assert resumed.policy.gap.gaps[:2] == pytest.approx(first.policy.gap.gaps[:2])
    assert len(resumed.policy.gap.gaps) == 4


def test_resuming_a_run_that_stopped_early_is_refused_unless_asked(tokenizer, corpus, tmp_path):
    out = tmp_path / "out"
    settings = {"max_steps": 300, "save_strategy": "steps", "save_steps": 10}
    guard = OverfitGuard(patience=2)
    lm_trainer(tokenizer, corpus, out, [guard], **settings).train()
    assert guard.stopped
    earlier = out / f"checkpoint-{guard.policy.stop_step - 10}"

    again = lm_trainer(tokenizer, corpus, out, [OverfitGuard(patience=2)], **settings)
    with pytest.raises(ConfigurationError, match="resume_after_stop='continue'"):
        again.train(resume_from_checkpoint=str(earlier))
    assert again.state.global_step == guard.policy.stop_step - 10  # not one step trained

    onward = OverfitGuard(patience=2, resume_after_stop="continue")
    trainer = lm_trainer(tokenizer, corpus, out, [onward], **settings)
    trainer.train(resume_from_checkpoint=str(earlier))
    assert trainer.state.global_step > guard.policy.stop_step


def test_standalone_evaluate_before_and_after_training(tokenizer, corpus, tmp_path):
    # report_to="none": the user's choice, so no wandb run appears (ft_callbacks never starts one).
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [OverfitGuard()], max_steps=10, report_to="none")
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert before["eval_perplexity"] > after["eval_perplexity"]
    assert "eval_bits_per_byte" in after and "eval_loss_gap" not in after  # no training window outside train()
    assert wandb.run is None


def test_label_smoothing_falls_back_without_crashing(tokenizer, corpus, tmp_path, capsys):
    guard = OverfitGuard(patience=None, plateau_patience=None)
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [guard], max_steps=20, label_smoothing_factor=0.1)
    trainer.train()
    entry = _eval_entries(trainer)[-1]
    assert entry["eval_perplexity"] == pytest.approx(math.exp(entry["eval_loss"]))
    assert math.isfinite(entry["eval_train_loss"])
    out = capsys.readouterr().out
    assert "exp(eval_loss)" in out and "logged training loss" in out


def test_wandb_disabled_still_reports_everywhere_else(tokenizer, corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [OverfitGuard()], max_steps=10)
    trainer.train()
    assert "eval_perplexity" in _eval_entries(trainer)[-1]
    assert "wandb is disabled" in capsys.readouterr().out


# -- bad input, before the first step ------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"patience": 0}, "patience=0"),
        ({"plateau_patience": -1}, "plateau_patience=-1"),
        ({"mode": "bigger"}, "mode='bigger'"),
        ({"min_delta": -1.0}, "min_delta"),
        ({"train_sample_size": -5}, "train_sample_size"),
        ({"divergence_threshold": float("nan")}, "divergence_threshold"),
        ({"resume_after_stop": "maybe"}, "resume_after_stop"),
        ({"patience": None, "plateau_patience": None, "mode": "min"}, "nothing uses it"),
        ({"monitor": 3}, "monitor=3"),
    ],
)
def test_bad_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        OverfitGuard(**kwargs)


def test_eval_strategy_no_fails_before_the_first_step(tokenizer, corpus, tmp_path):
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [OverfitGuard()], eval_strategy="no")
    with pytest.raises(ConfigurationError, match="eval_strategy='steps'"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_missing_monitor_names_the_available_keys(tokenizer, corpus, tmp_path):
    trainer = lm_trainer(
        tokenizer, corpus, tmp_path / "out", [OverfitGuard(monitor="rougeL")], max_steps=20, eval_on_start=True
    )
    with pytest.raises(ConfigurationError, match="eval_rougeL") as info:
        trainer.train()
    assert "eval_perplexity" in str(info.value) and "eval_loss" in str(info.value)
    assert trainer.state.global_step == 0  # eval_on_start caught it before any training step


def test_encoder_decoder_perplexity_is_unshifted(tokenizer, corpus, tmp_path):
    """T5: labels line up with the decoder's logits, so nothing is shifted."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments

    from ft_callbacks import toy

    def encode(batch):
        enc = tokenizer(batch["source"], truncation=True, max_length=32)
        enc["labels"] = tokenizer(batch["target"], truncation=True, max_length=16)["input_ids"]
        return enc

    pairs = {"source": corpus[300:333], "target": [" ".join(t.split()[:6]) for t in corpus[300:333]]}
    data = Dataset.from_dict(pairs).map(encode, batched=True, remove_columns=["source", "target"])
    model = toy.tiny_t5(tokenizer)
    trainer = Seq2SeqTrainer(
        model=model,
        args=Seq2SeqTrainingArguments(
            output_dir=str(tmp_path / "out"), per_device_eval_batch_size=8, report_to="none", use_cpu=True
        ),
        eval_dataset=data,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
        processing_class=tokenizer,
        callbacks=[OverfitGuard()],
    )
    metrics = trainer.evaluate()
    nll, tokens = 0.0, 0
    model.eval()
    with torch.no_grad():
        for batch in trainer.get_eval_dataloader():
            logits = model(**batch).logits
            mask = batch["labels"] != -100
            log_probs = torch.log_softmax(logits.double(), dim=-1)
            picked = log_probs.gather(-1, batch["labels"].clamp(min=0).unsqueeze(-1)).squeeze(-1)
            nll -= picked[mask].sum().item()
            tokens += int(mask.sum())
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-6)


def test_an_observing_guard_still_tracks_its_best(tokenizer, corpus, tmp_path):
    guard = OverfitGuard(patience=None, plateau_patience=None)
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [guard], max_steps=60)
    trainer.train()
    evals = [(e["step"], e["eval_token_loss"]) for e in trainer.state.log_history if "eval_token_loss" in e]
    best_step, best = min(evals, key=lambda sv: (sv[1], sv[0]))
    assert guard.best_token_loss == best and guard.best_step == best_step
    assert guard.stop_rule == "" and not guard.stopped
