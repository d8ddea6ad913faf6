"""Users' scripts run to their end (issue #13): the model card, metrics nobody overwrites, the trackers
`report_to` names (and only those), with every callback of ours in a real early-stopped run."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from transformers.modelcard import _maybe_round

from ft_callbacks import BestCheckpointSaver, GenerationScorer, OverfitGuard

from .helpers import lm_trainer, wandb_history

SMALL = {"eval_size": 16, "train_size": 24}


def _prompts(corpus):
    texts = corpus[:4]
    return [" ".join(t.split()[:5]) for t in texts], [" ".join(t.split()[5:15]) for t in texts]


def _accuracy(eval_pred):
    """run_clm.py's compute_metrics: next-token accuracy from argmax predictions."""
    preds, labels = eval_pred
    preds, labels = preds[:, :-1].reshape(-1), labels[:, 1:].reshape(-1)
    mask = labels != -100
    return {"accuracy": float((preds[mask] == labels[mask]).mean())}


def _argmax(logits, labels):
    return logits.argmax(dim=-1)


def run_to_the_end(trainer, out: Path) -> str:
    """What the transformers example scripts do after building the Trainer; returns the model card."""
    result = trainer.train()
    trainer.save_model()
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    trainer.create_model_card(model_name="tiny")
    return (out / "README.md").read_text()


def card_table(card: str) -> tuple[list[str], list[list[str]]]:
    """The 'Training results' table of a model card: header and rows, as cell strings."""
    section = card.split("### Training results", 1)[1].split("###", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    return cells[0], [row for row in cells[2:]]


def test_an_early_stopped_run_with_every_callback_ends_with_a_clean_model_card(
    tokenizer, corpus, tmp_path, wandb_offline
):
    out = tmp_path / "out"
    prompts, references = _prompts(corpus)
    guard = OverfitGuard(patience=2, plateau_patience=None)
    saver = BestCheckpointSaver("eval_perplexity", keep=2)
    scorer = GenerationScorer(prompts, references, metrics=("rouge",), max_new_tokens=4, every_n_evals=2)
    trainer = lm_trainer(
        tokenizer, corpus, out, [saver, scorer, guard], **SMALL, max_steps=300, eval_steps=5, logging_steps=5,
        report_to="wandb",
    )  # fmt: skip
    trainer.compute_metrics = _accuracy
    trainer.preprocess_logits_for_metrics = _argmax
    card = run_to_the_end(trainer, out)

    assert guard.stopped and trainer.state.global_step == guard.policy.stop_step < 300
    header, rows = card_table(card)
    evaluations = [e for e in trainer.state.log_history if "eval_loss" in e and e["step"] <= guard.policy.stop_step]
    evaluations = evaluations[: len(evaluations) - 1]  # the standalone evaluate() after training is not a row
    assert len(rows) == len(evaluations) >= 3
    assert all(len(row) == len(header) for row in rows)  # one complete row per evaluation
    ours = {"Token Loss", "Perplexity", "Bits Per Token", "Bits Per Byte", "Train Loss", "Loss Gap", "Loss Ratio",
            "Rouge1", "Rouge2", "Rougel", "Rougelsum", "Rouge1 Delta", "Rouge2 Delta", "Rougel Delta",
            "Rougelsum Delta"}  # fmt: skip
    assert set(header) == {"Training Loss", "Epoch", "Step", "Validation Loss", "Accuracy"} | ours
    # Run-level facts live in entries of their own, never in an evaluation entry.
    run_level = re.compile(r"^(ft_callbacks/|best/)")
    assert not [k for e in trainer.state.log_history if "eval_loss" in e for k in e if run_level.match(k)]
    stop = [e for e in trainer.state.log_history if "ft_callbacks/early_stop_step" in e]
    assert stop and stop[-1]["ft_callbacks/early_stop_step"] == guard.policy.stop_step
    best = [e for e in trainer.state.log_history if "best/checkpoint" in e]
    assert best and best[-1]["best/step"] == saver.best_step
    # The rows carry the same numbers as log_history: unscored generation rounds are "None", not shifted.
    for row, entry in zip(rows, evaluations, strict=True):
        assert row[header.index("Step")] == str(entry["step"])
        assert row[header.index("Rougel")] == _maybe_round(entry["eval_rougeL"])  # the card's own formatting
    saved = json.loads((out / "trainer_state.json").read_text())
    in_memory = json.loads(json.dumps(trainer.state.log_history))
    assert saved["log_history"] == in_memory[: len(saved["log_history"])]  # save_state() ran before evaluate()
    assert (out / "eval_results.json").exists() and (out / "model.safetensors").exists()


def _collide(eval_pred):
    """A compute_metrics that returns every name our callbacks produce, with its own values."""
    names = ["perplexity", "token_loss", "loss_gap", "train_loss", "rouge1", "rouge2", "rougeL", "rougeLsum"]
    return {name: 14.66 + i for i, name in enumerate(names)}


def test_our_metrics_never_overwrite_the_scripts_own(tokenizer, corpus, tmp_path, wandb_offline, capsys):
    out = tmp_path / "out"
    prompts, references = _prompts(corpus)
    guard = OverfitGuard(plateau_patience=None)
    saver = BestCheckpointSaver("eval_rougeL")  # the script's rougeL: the saver must say which it follows
    scorer = GenerationScorer(prompts, references, metrics=("rouge",), max_new_tokens=4)
    trainer = lm_trainer(tokenizer, corpus, out, [guard, saver, scorer], **SMALL, max_steps=10, eval_steps=5,
                         report_to="wandb")  # fmt: skip
    trainer.compute_metrics = _collide
    trainer.preprocess_logits_for_metrics = _argmax
    card = run_to_the_end(trainer, out)

    theirs = _collide(None)
    entries = [e for e in trainer.state.log_history if "eval_loss" in e]
    for entry in entries:
        for name, value in theirs.items():
            assert entry[f"eval_{name}"] == value  # theirs, untouched
        assert 1.0 < entry["eval_ft_perplexity"] < 1e6 and entry["eval_ft_perplexity"] != theirs["perplexity"]
        assert math.isclose(entry["eval_ft_perplexity"], math.exp(entry["eval_ft_token_loss"]), rel_tol=1e-9)
        assert 0.0 <= entry["eval_ft_rougeL"] <= 1.0
    eval_results = json.loads((out / "eval_results.json").read_text())
    assert eval_results["eval_rougeL"] == theirs["rougeL"] and "eval_ft_rougeL" in eval_results
    header, rows = card_table(card)
    assert "Rougel" in header and "Ft Rougel" in header and all(len(r) == len(header) for r in rows)
    printed = capsys.readouterr().out
    assert printed.count("the evaluation already has eval_rougeL (") == 1 and "eval_ft_rougeL" in printed
    assert "BestCheckpointSaver monitors 'eval_rougeL': it follows the value from compute_metrics" in printed
    import wandb

    wandb.finish()
    rows_logged = [r for r in wandb_history(wandb_offline) if "eval/ft_rougeL" in r]
    assert [r["train/global_step"] for r in rows_logged] == [5, 10, 10]  # two evaluations, then evaluate()
    assert all(r["eval/rougeL"] == theirs["rougeL"] for r in rows_logged if "eval/rougeL" in r)


def test_report_to_none_means_no_wandb_at_all(tokenizer, corpus, tmp_path, wandb_offline, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    prompts, references = _prompts(corpus)
    callbacks = [OverfitGuard(), BestCheckpointSaver("eval_perplexity", upload_to_wandb=True),
                 GenerationScorer(prompts, references, metrics=("rouge",), max_new_tokens=4)]  # fmt: skip
    trainer = lm_trainer(tokenizer, corpus, out, callbacks, **SMALL, max_steps=10, eval_steps=5, report_to="none")
    run_to_the_end(trainer, out)

    assert not list(Path(wandb_offline).rglob("offline-run-*")) and not (tmp_path / "wandb").exists()
    printed = capsys.readouterr().out
    assert printed.count("report_to does not name wandb") == 1
    assert any("eval_perplexity" in e for e in trainer.state.log_history)  # results still in log_history


def test_our_scalars_reach_tensorboard_at_the_evaluation_step(tokenizer, corpus, tmp_path, wandb_offline, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    guard = OverfitGuard()
    trainer = lm_trainer(tokenizer, corpus, out, [guard], **SMALL, max_steps=10, eval_steps=5,
                         report_to=["tensorboard"])  # fmt: skip
    trainer.train()

    assert not list(Path(wandb_offline).rglob("offline-run-*"))
    events = sorted((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    logged = {(e.step, round(e.value, 5)) for e in acc.Scalars("eval/perplexity")}
    history = trainer.state.log_history
    expected = {(e["step"], round(e["eval_perplexity"], 5)) for e in history if "eval_perplexity" in e}
    assert logged == expected and len(expected) == 2
    gaps = [e.value for e in acc.Scalars("eval/loss_gap")]
    assert np.allclose(gaps, [e["eval_loss_gap"] for e in trainer.state.log_history if "eval_loss_gap" in e])


def test_offline_notice_says_why(tokenizer, corpus, tmp_path, wandb_offline, capsys):
    """conftest sets WANDB_MODE=offline, as a user would: the notice says so, not "no API key or network"."""
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [OverfitGuard()], **SMALL, max_steps=5, eval_steps=5,
                         report_to="wandb")  # fmt: skip
    trainer.train()
    printed = capsys.readouterr().out
    assert "(WANDB_MODE=offline)" in printed and "no API key or network" not in printed


def test_no_network_never_stalls_a_step_when_wandb_is_not_chosen(tokenizer, corpus, tmp_path, monkeypatch, capsys):
    """With an API key and wandb online but no network, a report_to without wandb makes no wandb call
    at all (ft_callbacks used to start its own run mid-training and stall ~90 s)."""
    import time

    from .helpers import free_port

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    prompts, references = _prompts(corpus)
    callbacks = [OverfitGuard(), BestCheckpointSaver("eval_perplexity", upload_to_wandb="every_best"),
                 GenerationScorer(prompts, references, metrics=("rouge",), max_new_tokens=4)]  # fmt: skip
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", callbacks, **SMALL, max_steps=10, eval_steps=5,
                         report_to="none")  # fmt: skip
    start = time.monotonic()
    trainer.train()
    assert time.monotonic() - start < 60
    import wandb

    assert wandb.run is None
    assert "report_to does not name wandb" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("monitor", "producer"),
    [("eval_perplexity", "add OverfitGuard() to callbacks"), ("eval_loss_gap", "add OverfitGuard() to callbacks"),
     ("eval_bertscore_f1", "add GenerationScorer(prompts=..., references=...) to callbacks"),
     ("eval_rougeL_delta", "add GenerationScorer(prompts=..., references=...) to callbacks")],
)  # fmt: skip
def test_a_monitor_only_our_absent_callback_produces_fails_before_step_1(tokenizer, corpus, tmp_path, monitor,
                                                                         producer):  # fmt: skip
    from ft_callbacks import ConfigurationError

    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [BestCheckpointSaver(monitor)], **SMALL, max_steps=10,
                         eval_steps=5, report_to="none")  # fmt: skip
    trainer.compute_metrics = _accuracy  # run_clm.py has one: it still cannot produce these
    trainer.preprocess_logits_for_metrics = _argmax
    with pytest.raises(ConfigurationError, match=re.escape(producer)):
        trainer.train()
    assert trainer.state.global_step == 0


def test_a_monitor_nothing_produces_without_compute_metrics_fails_before_step_1(tokenizer, corpus, tmp_path):
    from ft_callbacks import ConfigurationError

    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [OverfitGuard(monitor="eval_accuracy")], **SMALL,
                         max_steps=10, eval_steps=5, report_to="none")  # fmt: skip
    with pytest.raises(ConfigurationError, match=r"no compute_metrics .* or add LabelScorer\(\) to callbacks"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_a_dict_eval_dataset_decides_on_the_named_dataset(tokenizer, corpus, tmp_path, capsys):
    from ft_callbacks import ConfigurationError, toy

    def trainer_with(callbacks, out):
        trainer = lm_trainer(tokenizer, corpus, out, callbacks, **SMALL, max_steps=300, eval_steps=5,
                             report_to="none")  # fmt: skip
        held_out = toy.causal_lm_dataset(corpus[300:316], tokenizer, 48)
        trainer.eval_dataset = {"seen": trainer.train_dataset, "held_out": held_out}
        return trainer

    guard = OverfitGuard(patience=2, plateau_patience=None, eval_dataset_name="held_out")
    saver = BestCheckpointSaver("eval_perplexity")  # no dataset named: the first, said once
    trainer = trainer_with([guard, saver], tmp_path / "out")
    trainer.train()
    assert guard.monitor == "eval_held_out_loss" and saver.monitor == "eval_seen_perplexity"
    assert guard.stopped and guard.stop_rule == "gap"  # memorising shows on held-out data, not on the seen one
    seen = [e["eval_seen_perplexity"] for e in trainer.state.log_history if e.get("eval_seen_perplexity")]
    assert saver.best_value == min(seen)
    assert "decides on 'eval_seen_perplexity' (the first dataset)" in capsys.readouterr().out

    with pytest.raises(ConfigurationError, match=r"names no eval dataset; the Trainer's are \['seen', 'held_out'\]"):
        trainer_with([OverfitGuard(eval_dataset_name="unseen")], tmp_path / "bad").train()


def test_eval_batches_without_labels_say_what_is_missing(tokenizer, corpus, tmp_path):
    from transformers import default_data_collator

    from ft_callbacks import ConfigurationError

    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [OverfitGuard(patience=None)], **SMALL, max_steps=10,
                         eval_steps=5, report_to="none", eval_on_start=True)  # fmt: skip
    trainer.eval_dataset = trainer.eval_dataset.remove_columns([c for c in trainer.eval_dataset.column_names
                                                                if c != "input_ids"]).select(range(8))  # fmt: skip
    trainer.data_collator = lambda rows: default_data_collator([{"input_ids": r["input_ids"][:8]} for r in rows])
    with pytest.raises(ConfigurationError, match=r"its batches carry no labels.*'labels' column"):
        trainer.train()
    assert trainer.state.global_step == 0


@pytest.mark.slow
def test_the_next_wave_runs_to_the_end_of_a_script_with_a_clean_model_card(tokenizer, corpus, tmp_path, wandb_offline):
    """The judge, task metrics and slices in GenerationScorer, ForgettingGuard and a MetricThreshold, every
    one of them scoring only some evaluations, then the example scripts' ending: one complete card row per
    evaluation, and the standalone evaluate() afterwards still works."""
    import sys

    from ft_callbacks import ForgettingGuard, MetricThreshold

    from .test_judge_scorer import WordOverlap, prompt_pairs

    sys.path.insert(0, str(Path(__file__).parent / "dist_scripts"))
    from forgetting_tasks import write_tasks

    out = tmp_path / "out"
    prompts, references = prompt_pairs(corpus)
    scorer = GenerationScorer(prompts, references, metrics=("rouge", "json_valid", "distinct"), num_samples=6,
                              max_new_tokens=8, every_n_evals=2, judge=WordOverlap(), win_rate=True,
                              slice_by=lambda example: "short" if len(example["prompt"]) < 30 else "long",
                              min_slice_size=1)  # fmt: skip
    forgetting = ForgettingGuard(tasks=["fg_dirs"], include_path=str(write_tasks(tmp_path / "tasks", corpus)),
                                 limit=12, every_n_evals=3, batch_size=4)  # fmt: skip
    threshold = MetricThreshold("eval_win_rate", below=-1.0)  # never fires; watches an every-other metric
    guard = OverfitGuard(patience=2, plateau_patience=None)
    trainer = lm_trainer(
        tokenizer, corpus, out, [scorer, forgetting, threshold, guard], **SMALL, max_steps=300, eval_steps=5,
        logging_steps=5, report_to="wandb",
    )  # fmt: skip
    card = run_to_the_end(trainer, out)

    assert guard.stopped and not threshold.stopped
    header, rows = card_table(card)
    evaluations = [e for e in trainer.state.log_history if "eval_loss" in e][:-1]  # not the standalone evaluate()
    assert len(rows) == len(evaluations) >= 3 and all(len(row) == len(header) for row in rows)
    for name in ("Win Rate", "Judge Score", "Json Valid Rate", "Distinct 1", "Forgetting", "Bench Fg Dirs Acc"):
        assert name in header, (name, header)
    # Each row holds the numbers of its own evaluation: rounds that did not run are "None", never shifted.
    for row, entry in zip(rows, evaluations, strict=True):
        assert row[header.index("Step")] == str(entry["step"])
        assert row[header.index("Win Rate")] == _maybe_round(entry["eval_win_rate"])
        assert row[header.index("Forgetting")] == _maybe_round(entry["eval_forgetting"])
    assert any(e["eval_win_rate"] is None for e in evaluations) and any(e["eval_win_rate"] is not None
                                                                       for e in evaluations)  # fmt: skip
    assert any(e["eval_forgetting"] is not None for e in evaluations)
    assert any(k.startswith("eval_slice_") for e in evaluations for k in e)
