"""The run overview at train end: curves that belong together in one wandb chart each, and a table
of every evaluation, read back from the offline run files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import wandb

from ft_callbacks import GenerationScorer, OverfitGuard
from ft_callbacks.publish import overview_series

from .helpers import lm_trainer, wandb_history


def test_overview_charts_and_evaluation_table(tokenizer, corpus, tmp_path, wandb_offline):
    prompts = [" ".join(t.split()[:5]) for t in corpus[:6]]
    references = [" ".join(t.split()[5:12]) or "x" for t in corpus[:6]]
    scorer = GenerationScorer(prompts, references, metrics=("rouge",), max_new_tokens=6)
    callbacks = [OverfitGuard(patience=None), scorer]
    trainer = lm_trainer(tokenizer, corpus, tmp_path, callbacks, max_steps=30, eval_steps=10, report_to="wandb")
    trainer.train()
    run_dir = Path(wandb.run.dir)
    wandb.finish()
    last = wandb_history(wandb_offline)[-1]
    assert last["train/global_step"] == 30
    for chart in ("overview/loss", "overview/gap", "overview/perplexity", "overview/generation"):
        assert last[f"{chart}_table._type"] == "table-file", chart  # wandb.plot charts store their data so
    table = json.loads((run_dir / last["overview/evaluations.path"]).read_text())
    columns = table["columns"]
    by_step = {row[0]: dict(zip(columns, row, strict=True)) for row in table["data"]}
    assert sorted(by_step) == [0, 10, 20, 30]  # the step-0 baseline and three evaluations
    for entry in trainer.state.log_history:
        if "eval_token_loss" in entry:
            assert by_step[entry["step"]]["eval_token_loss"] == pytest.approx(entry["eval_token_loss"])
            assert by_step[entry["step"]]["eval_rougeL"] == pytest.approx(entry["eval_rougeL"])
    # The loss chart's data: train and validation per-token loss at the same steps.
    loss = json.loads((run_dir / last["overview/loss_table.path"]).read_text())
    series = overview_series(trainer.state.log_history)["overview/loss"]
    assert series[0] == [10, 20, 30] and series[2] == ["train", "validation"]
    assert len(loss["data"]) == 2 * 3


def test_overview_series_scales_bleu_and_skips_incomplete_steps():
    history = [
        {"step": 0, "eval_bleu": 20.0, "eval_rougeL": 0.1},
        {"step": 10, "eval_loss": 1.0, "eval_bleu": 40.0, "eval_rougeL": 0.3},
        {"step": 20, "eval_rougeL": 0.4},
    ]
    steps, values, names = overview_series(history)["overview/generation"]
    assert names == ["rougeL", "bleu/100"] and steps == [0, 10]
    assert values == [[0.1, 0.3], [0.2, 0.4]]
