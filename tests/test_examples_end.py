"""Each example script and `ft-callbacks demo`, run as a user runs them (a fresh process, its own working
directory), to their end: exit code 0, a model card whose results table is whole, and no file written
anywhere but the output directory and the wandb directory (issue #13)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import REPO

# Small settings: each example still trains, evaluates, scores and saves, and ends like a real script.
EXAMPLES = {
    "causal_lm_overfit_guard": ["--max-steps", "300"],  # long enough for the gap rule to stop it
    "seq2seq_summarization": ["--max-steps", "20", "--eval-steps", "10", "--num-samples", "4"],
    "sequence_classification": ["--max-steps", "20", "--eval-steps", "10"],
    "sft_lora_chat": ["--max-steps", "20", "--eval-steps", "10", "--pretrain-steps", "20", "--num-samples", "4"],
}


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({
        "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb_runs"), "WANDB_SILENT": "true",
        "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HOME": str(tmp_path / "home"),
        "PYTHONPATH": str(REPO),
    })  # fmt: skip
    (tmp_path / "wandb_runs").mkdir()
    (tmp_path / "home").mkdir()
    return env


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _check_card(out: Path) -> list[list[str]]:
    card = (out / "README.md").read_text()
    section = card.split("### Training results", 1)[1].split("###", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in section.splitlines() if "|" in line]
    header, body = rows[0], rows[2:]
    assert body and all(len(row) == len(header) for row in body), section
    assert all(name and "/" not in name for name in header), header  # no run-level keys as columns
    return rows


def _run(command: list[str], tmp_path: Path, timeout: float) -> subprocess.CompletedProcess:
    work = tmp_path / "work"
    work.mkdir()
    return subprocess.run(command, cwd=work, env=_env(tmp_path), capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(EXAMPLES))
def test_example_script_runs_to_its_end(name, tmp_path):
    out = tmp_path / "work" / "run"
    script = REPO / "examples" / f"{name}.py"
    result = _run([sys.executable, str(script), "--output-dir", "run", "--report-to", "wandb", *EXAMPLES[name]],
                  tmp_path, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    if name == "sft_lora_chat":  # TRL writes its own model card, without a results table
        assert "This model was trained with SFT" in (out / "README.md").read_text()
    else:
        _check_card(out)
    assert (out / "eval_results.json").is_file() and (out / "trainer_state.json").is_file()
    assert _files(tmp_path / "work") == {f"run/{f}" for f in _files(out)}  # nothing beside the output dir
    assert list((tmp_path / "wandb_runs").glob("wandb/offline-run-*"))
    if name == "causal_lm_overfit_guard":
        state = json.loads((out / "trainer_state.json").read_text())
        stops = [e for e in state["log_history"] if "ft_callbacks/early_stop_step" in e]
        assert stops and stops[-1]["ft_callbacks/early_stop_step"] == state["global_step"] < 300


@pytest.mark.slow
def test_demo_command_runs_to_its_end_with_an_early_stop(tmp_path):
    from ft_callbacks.best_checkpoint import read_manifest

    exe = Path(sys.executable).with_name("ft-callbacks")
    result = _run([str(exe), "demo", "--output-dir", "demo"], tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = tmp_path / "work" / "demo"
    rows = _check_card(out)
    state = json.loads((out / "trainer_state.json").read_text())
    stops = [e for e in state["log_history"] if "ft_callbacks/early_stop_step" in e]
    assert stops and stops[-1]["ft_callbacks/early_stop_step"] == state["global_step"] < 400
    assert len(rows) - 2 == len([e for e in state["log_history"] if "eval_loss" in e]) - 1  # minus evaluate()
    manifest = read_manifest(out)
    assert manifest and (out / manifest["best"] / "model.safetensors").is_file()
    assert _files(tmp_path / "work") == {f"demo/{f}" for f in _files(out)}
    assert "[demo] early stop at step" in result.stdout and "README.md" in result.stdout
