"""`build_report` (the `ft-callbacks report RUN_DIR` backend) on a real overfitting run and on written states."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from ft_callbacks import BestCheckpointSaver, ConfigurationError, OverfitGuard
from ft_callbacks.report import build_report

from .helpers import lm_trainer

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def overfit_run(tokenizer, corpus, tmp_path_factory):
    """One real tiny GPT-2 run that overfits (24 training rows) and is stopped by the gap rule.
    With save_strategy="no" the Trainer writes no trainer_state.json: it is saved by hand."""
    out = tmp_path_factory.mktemp("report") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        guard = OverfitGuard(patience=2)
        saver = BestCheckpointSaver(monitor="eval_token_loss")
        trainer = lm_trainer(tokenizer, corpus, out, [guard, saver], max_steps=150, eval_steps=10, save_strategy="no")
        trainer.train()
    trainer.state.save_to_json(str(out / "trainer_state.json"))
    assert guard.stopped, "the fixture run should overfit and stop early"
    return out, trainer.state, guard, saver


def _summary_value(log_history: list[dict], key: str):
    return next(e[key] for e in reversed(log_history) if key in e)


def _image(path: Path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return imread(path)


def test_report_of_a_real_overfitting_run(overfit_run):
    run_dir, state, guard, saver = overfit_run
    result = build_report(run_dir)

    assert result.png == run_dir / "report" / "report.png" and result.png.is_file()
    assert result.html == run_dir / "report" / "report.html" and result.html.is_file()
    assert result.steps == state.global_step < 150
    image = _image(result.png)
    height, width = image.shape[:2]
    assert 800 <= width <= 1400 and 600 <= height <= 1600  # loss + perplexity panels
    assert image.std() > 0.05  # something is drawn, not a blank canvas
    # The series the picture holds, by legend label.
    assert list(result.plotted) == ["loss", "perplexity"]
    assert any(label.startswith("train loss") for label in result.plotted["loss"])
    assert any(label.startswith("validation") for label in result.plotted["loss"])
    assert any("perplexity" in label for label in result.plotted["perplexity"])

    # What the trainer state says, found again in the page.
    stop_step = _summary_value(state.log_history, "ft_callbacks/early_stop_step")
    best_step = _summary_value(state.log_history, "best/step")
    evals = [e for e in state.log_history if "eval_token_loss" in e]
    assert stop_step == guard.policy.stop_step == state.global_step
    assert best_step == saver.best_step == min(evals, key=lambda e: e["eval_token_loss"])["step"] < stop_step
    page = result.html.read_text(encoding="utf-8")
    assert f'data-key="early_stop_step">{stop_step}<' in page
    assert 'data-key="early_stop_rule">gap<' in page
    assert f'data-key="best_step">{best_step}<' in page
    assert f'data-key="best_checkpoint_step">{best_step}<' in page
    assert f'<tr class="best"><td>{best_step}</td>' in page
    assert f'<tr class="stop"><td>{stop_step}</td>' in page
    assert page.count("<tr") >= len(evals) + 1
    assert "data:image/png;base64," in page and "http://" not in page and "https://" not in page
    assert saver.best_path is not None and saver.best_path.name in page

    assert result.best_step == best_step and result.stop_step == stop_step
    assert "gap rule" in result.summary
    assert f"Stopped early at step {stop_step}" in result.summary
    assert f"at step {best_step}" in result.summary
    assert str(saver.best_path) in result.summary


def test_out_dir_and_formats(overfit_run, tmp_path):
    run_dir, *_ = overfit_run
    only_png = build_report(run_dir, out_dir=tmp_path / "a", formats=("png",))
    assert only_png.png is not None and only_png.png.parent == tmp_path / "a" and only_png.html is None
    assert not (tmp_path / "a" / "report.html").exists()
    only_html = build_report(run_dir, out_dir=tmp_path / "b", formats="html")
    assert only_html.png is None and only_html.html is not None and not (tmp_path / "b" / "report.png").exists()
    text_only = build_report(run_dir, out_dir=tmp_path / "c", formats=())
    assert text_only.png is None and text_only.html is None and not (tmp_path / "c").exists()
    assert "gap rule" in text_only.summary
    with pytest.raises(ConfigurationError, match="'svg' is not known"):
        build_report(run_dir, out_dir=tmp_path / "d", formats=("png", "svg"))


def test_newest_checkpoint_is_used_when_the_run_dir_has_no_state(overfit_run, tmp_path):
    source, state, *_ = overfit_run
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("best_checkpoints.json", "ft_callbacks"):
        src = source / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, run_dir / name)
    full = json.loads((source / "trainer_state.json").read_text())
    steps = full["global_step"]
    early = {**full, "global_step": 8, "log_history": [e for e in full["log_history"] if e["step"] <= 8]}
    # checkpoint-8 sorts after checkpoint-40 as text: the step decides, not the name.
    for name, payload in ((f"checkpoint-{steps}", full), ("checkpoint-8", early)):
        (run_dir / name).mkdir()
        (run_dir / name / "trainer_state.json").write_text(json.dumps(payload))
    (run_dir / "best-step000010-eval_token_loss=5.0000").mkdir()  # BestCheckpointSaver's: no trainer state

    result = build_report(run_dir)
    assert result.state_file == run_dir / f"checkpoint-{steps}" / "trainer_state.json"
    assert result.steps == steps == state.global_step
    assert f"checkpoint-{steps}/" in result.summary and "gap rule" in result.summary
    assert result.png is not None and result.png.is_file()

    # A state in the run folder itself wins over the checkpoints.
    (run_dir / "trainer_state.json").write_text(json.dumps(early))
    assert build_report(run_dir, formats=()).state_file == run_dir / "trainer_state.json"


def test_missing_run_dir_or_state_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigurationError, match="does not exist"):
        build_report(tmp_path / "nowhere")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigurationError, match="not a directory"):
        build_report(tmp_path / "a_file")
    empty = tmp_path / "empty"
    (empty / "checkpoint-5").mkdir(parents=True)
    with pytest.raises(ConfigurationError, match=r"trainer_state\.json.*checkpoint-\*.*save_state"):
        build_report(empty)
    (empty / "trainer_state.json").write_text("{not json")
    with pytest.raises(ConfigurationError, match="could not read"):
        build_report(empty)


def _write_state(run_dir: Path, log_history: list[dict], global_step: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {"global_step": global_step, "max_steps": 100, "epoch": 1.0, "log_history": log_history}
    (run_dir / "trainer_state.json").write_text(json.dumps(state))


def test_a_run_without_evaluations_still_gets_its_loss_panel(tmp_path):
    run_dir = tmp_path / "run"
    _write_state(run_dir, [{"loss": 5.0 - 0.1 * i, "step": 10 * i, "epoch": i / 10} for i in range(1, 11)], 100)
    result = build_report(run_dir)
    assert "No validation loss was logged" in result.summary
    assert result.best_step is None and result.stop_step is None and result.steps == 100
    assert _image(result.png).shape[0] > 300
    assert "No evaluations were logged" in result.html.read_text(encoding="utf-8")


def test_generation_and_label_panels_with_baseline_and_non_finite_values(tmp_path):
    history: list[dict] = [
        {"eval_rouge1": 0.1, "eval_rougeL": 0.08, "eval_bleu": 2.0, "baseline/rougeL": 0.08, "step": 0},
        {"eval_accuracy": 0.5, "eval_f1": 0.4, "step": 0, "eval_runtime": 1.0},
    ]
    for step in range(10, 60, 10):
        history.append({"loss": 3.0 - step / 50, "step": step})
        history.append({
            "eval_loss": float("nan") if step == 30 else 3.0 + abs(step - 20) / 40,
            "eval_rouge1": 0.1 + step / 200, "eval_rougeL": 0.08 + step / 250, "eval_rougeL_delta": step / 250,
            "eval_bleu": 2.0 + step / 5, "eval_accuracy": 0.5 + step / 200, "eval_f1": 0.4 + step / 150,
            "step": step, "epoch": step / 10,
        })  # fmt: skip
    history.append({"ft_callbacks/early_stop_step": 50, "ft_callbacks/early_stop_rule": "plateau", "step": 50})
    run_dir = tmp_path / "run"
    _write_state(run_dir, history, 50)
    result = build_report(run_dir)

    assert result.best_step == 20 and result.stop_step == 50
    assert "plateau rule" in result.summary
    assert "rougeL 0.28 (+0.2 vs step 0)" in result.summary
    assert "Label metrics at step 50: accuracy 0.75, f1 0.7333" in result.summary
    # Loss, generation and label panels: taller than the two-panel picture of a plain run.
    assert _image(result.png).shape[0] > 1100
    page = result.html.read_text(encoding="utf-8")
    assert "<th>rougeL</th>" in page and "<th>bleu</th>" in page and "<th>accuracy</th>" in page
    assert "baseline (untrained)" in page and ">nan<" in page


def test_missing_matplotlib_names_the_install(overfit_run, monkeypatch, tmp_path):
    run_dir, *_ = overfit_run
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    with pytest.raises(ConfigurationError, match="pip install matplotlib"):
        build_report(run_dir, out_dir=tmp_path / "r")
    assert "gap rule" in build_report(run_dir, formats=()).summary  # text needs no matplotlib


def test_cli_report_exit_codes(tmp_path, capsys):
    from ft_callbacks.cli import EXIT_BAD_INPUT, main

    assert main(["report", str(tmp_path / "missing")]) == EXIT_BAD_INPUT
    assert "missing" in capsys.readouterr().err
