"""Each example runs end to end offline on tiny models."""

from __future__ import annotations

import json

import pytest

from .helpers import load_example


@pytest.mark.slow
def test_causal_lm_example_stops_early(tmp_path):
    example = load_example("causal_lm_overfit_guard")
    trainer = example.main(["--output-dir", str(tmp_path / "run"), "--max-steps", "300"])
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    stops = [e for e in state["log_history"] if "ft_callbacks/early_stop_step" in e]
    assert stops, "the demo should end with an early stop"
    assert trainer.state.global_step == stops[-1]["ft_callbacks/early_stop_step"] < 300
    assert any("eval_perplexity" in e for e in state["log_history"])


@pytest.mark.slow
def test_demo_stops_early_keeps_the_best_and_scores_rise(tmp_path, capsys, monkeypatch):
    from ft_callbacks.best_checkpoint import read_manifest
    from ft_callbacks.demo import run_demo

    # A fresh machine: no WANDB_MODE and no wandb login (a HOME without credentials). The Trainer's
    # own WandbCallback would stop with "No API key configured"; the demo logs offline instead.
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    result = run_demo(tmp_path / "demo", show_progress=False)
    assert result.wandb_dir and "offline-run-" in str(result.wandb_dir)
    assert result.stop_step is not None and result.stop_step == result.global_step < 400
    assert "gap" in result.stop_reason
    manifest = read_manifest(tmp_path / "demo")
    assert manifest and result.best_checkpoint.endswith(manifest["best"])
    assert (tmp_path / "demo" / manifest["best"] / "model.safetensors").is_file()
    # During training (the demo evaluates the best weights once more after it, as scripts do).
    scored = [e for e in result.evaluations if e.get("eval_rougeL") is not None and e["step"] <= result.stop_step]
    scored = scored[:-1] if scored[-1] is result.evaluations[-1] else scored
    assert scored[0]["step"] == 0 and scored[-1]["eval_rougeL"] > scored[0]["eval_rougeL"]
    assert scored[-1]["eval_bertscore_f1_delta"] > 0
    out = capsys.readouterr().out
    assert "[demo] early stop at step" in out and "wandb leet" in out
