"""The seq2seq, SFT + LoRA chat and sequence-classification examples run end to end offline on tiny
models, and the callbacks deliver what they promise: their metrics in `log_history`, a step-0
generation baseline, and a best checkpoint on disk that the manifest names and that matches the
best logged value."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from .helpers import load_example


def _during_training(trainer) -> list[dict]:
    """log_history up to the end of train(): the examples evaluate once more after it, as scripts do."""
    history = trainer.state.log_history
    end = next((i for i, e in enumerate(history) if "train_runtime" in e), len(history))
    return history[:end]


def _evaluations(trainer) -> list[dict]:
    return [e for e in _during_training(trainer) if "eval_loss" in e]


def _generation_rounds(trainer) -> list[dict]:
    """GenerationScorer's rounds by step (a round scored in the background is logged when it is ready,
    so its entry may come later in log_history than the step it belongs to)."""
    return sorted((e for e in _during_training(trainer) if e.get("eval_rougeL") is not None), key=lambda e: e["step"])


def _check_best(output_dir: Path, monitor: str, values: dict[int, float], mode: str, weights: str) -> dict:
    """The manifest names the best of `values` (step -> value of `monitor`), and its folder holds `weights`."""
    manifest = json.loads((output_dir / "best_checkpoints.json").read_text())
    assert manifest["monitor"] == monitor
    pick = min if mode == "min" else max
    best_value = pick(values.values())
    first_best_step = min(step for step, value in values.items() if value == best_value)
    assert manifest["best_step"] == first_best_step
    assert manifest["best_value"] == pytest.approx(best_value, rel=1e-9)
    best_dir = output_dir / manifest["best"]
    assert best_dir.is_dir() and (best_dir / weights).is_file()
    assert [e["path"] for e in manifest["checkpoints"] if e["best"]] == [manifest["best"]]
    return manifest


@pytest.mark.slow
def test_seq2seq_summarization_example(tmp_path, capsys):
    example = load_example("seq2seq_summarization")
    out = tmp_path / "run"
    trainer = example.main(["--output-dir", str(out), "--max-steps", "20", "--eval-steps", "10", "--num-samples", "6"])
    assert trainer.state.global_step == 20
    evals = _evaluations(trainer)
    assert [e["step"] for e in evals] == [10, 20]
    # OverfitGuard: exact perplexity of the summary tokens, and the train/validation gap.
    for entry in evals:
        assert math.isclose(entry["eval_perplexity"], math.exp(entry["eval_token_loss"]), rel_tol=1e-9)
        assert math.isfinite(entry["eval_loss_gap"])
    # GenerationScorer: a step-0 baseline of the untrained model, then ROUGE/BLEU at every evaluation,
    # with deltas against the baseline.
    rounds = _generation_rounds(trainer)
    assert [e["step"] for e in rounds] == [0, 10, 20]
    baseline = rounds[0]
    for entry in rounds[1:]:
        assert "eval_loss" in entry  # merged into the Trainer's own entry for that evaluation
        for name in ("rouge1", "rouge2", "rougeL", "bleu"):
            assert 0 <= entry[f"eval_{name}"] <= (100 if name == "bleu" else 1)
            assert entry[f"eval_{name}_delta"] == pytest.approx(entry[f"eval_{name}"] - baseline[f"eval_{name}"])
    # BestCheckpointSaver: the best ROUGE-L of the evaluations, on disk.
    manifest = _check_best(out, "eval_rougeL", {e["step"]: e["eval_rougeL"] for e in evals}, "max", "model.safetensors")
    assert (out / "trainer_state.json").is_file()
    printed = capsys.readouterr().out
    assert "ROUGE-L of generated summaries" in printed and manifest["best"] in printed


@pytest.mark.slow
def test_sft_lora_chat_example(tmp_path, capsys):
    from peft import PeftModel

    example = load_example("sft_lora_chat")
    out = tmp_path / "run"
    argv = ["--output-dir", str(out), "--max-steps", "10", "--eval-steps", "5", "--pretrain-steps", "20"]
    trainer = example.main([*argv, "--num-samples", "4"])
    assert isinstance(trainer.model, PeftModel)
    assert trainer.processing_class.chat_template == example.TINY_CHAT_TEMPLATE
    evals = _evaluations(trainer)
    assert [e["step"] for e in evals] == [5, 10]
    for entry in evals:
        assert math.isclose(entry["eval_perplexity"], math.exp(entry["eval_token_loss"]), rel_tol=1e-9)
        assert math.isfinite(entry["eval_train_loss"])
    # Only the assistant's answers are trained (and measured): the prompts are masked out.
    batch = next(iter(trainer.get_eval_dataloader()))
    assert 0 < int((batch["labels"] != -100).sum()) < int(batch["attention_mask"].sum())
    # Chat prompts through the template, with a step-0 baseline.
    rounds = _generation_rounds(trainer)
    assert [e["step"] for e in rounds] == [0, 5, 10]
    assert all("eval_bleu_delta" in e for e in rounds[1:])
    scorer = next(cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "GenerationScorer")
    prompt = scorer.table_rows[0][1]  # step, prompt, reference, generation, ...
    assert prompt.startswith("User:\nExplain: ") and prompt.endswith("Assistant:\n")
    # The best adapter (lowest token loss) is saved, adapter weights only.
    values = {e["step"]: e["eval_token_loss"] for e in evals}
    manifest = _check_best(out, "eval_token_loss", values, "min", "adapter_model.safetensors")
    assert not (out / manifest["best"] / "model.safetensors").exists()
    printed = capsys.readouterr().out
    assert "answer perplexity" in printed and manifest["best"] in printed


@pytest.mark.slow
def test_sequence_classification_example(tmp_path, capsys):
    example = load_example("sequence_classification")
    out = tmp_path / "run"
    trainer = example.main(["--output-dir", str(out), "--max-steps", "40", "--eval-steps", "20"])
    evals = _evaluations(trainer)
    assert [e["step"] for e in evals] == [20, 40]
    for entry in evals:
        for key in ("eval_accuracy", "eval_f1", "eval_precision", "eval_recall", "eval_roc_auc", "eval_ece"):
            assert 0 <= entry[key] <= 1, key
        assert all(f"eval_f1_{name}" in entry for name in example.LABELS)
        assert entry["eval_f1"] == pytest.approx(sum(entry[f"eval_f1_{n}"] for n in example.LABELS) / 4)
    # Above uniform chance (4 classes) after 40 steps.
    assert evals[-1]["eval_accuracy"] > 0.3
    manifest = _check_best(out, "eval_f1", {e["step"]: e["eval_f1"] for e in evals}, "max", "model.safetensors")
    config = json.loads((out / manifest["best"] / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(4)] == example.LABELS
    printed = capsys.readouterr().out
    assert "macro-F1" in printed and manifest["best"] in printed
