"""ForgettingGuard with real lm-evaluation-harness runs on a real tiny GPT-2 in a real Trainer.

Tasks are local (tests/dist_scripts/forgetting_tasks.py writes them): nothing is downloaded."""

from __future__ import annotations

import copy
import glob
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from ft_callbacks.best_checkpoint import BestCheckpointSaver
from ft_callbacks.core.errors import ConfigurationError
from ft_callbacks.core.modes import infer_mode
from ft_callbacks.forgetting_guard import ForgettingGuard

from .helpers import REPO, lm_trainer, wandb_alerts, wandb_history, wandb_records, wandb_summary

sys.path.insert(0, str(Path(__file__).parent / "dist_scripts"))
from forgetting_tasks import pretrained_dirs_model, write_tasks


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory, corpus):
    return write_tasks(tmp_path_factory.mktemp("fg_tasks"), corpus)


@pytest.fixture(scope="module")
def dirs_model(tmp_path_factory, tokenizer, corpus):
    return pretrained_dirs_model(tokenizer, corpus, tmp_path_factory.mktemp("pre"))


def _evals(trainer):
    return [e for e in trainer.state.log_history if "eval_loss" in e]


@pytest.mark.slow
def test_numbers_equal_the_lm_eval_command_line_on_the_saved_checkpoint(tmp_path, tokenizer, corpus, tasks_dir,
                                                                          wandb_offline):  # fmt: skip
    guard = ForgettingGuard(tasks=["fg_dirs", "fg_text"], include_path=str(tasks_dir), limit=25)
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [guard], max_steps=10, eval_steps=10,
                         save_strategy="steps", save_steps=10)  # fmt: skip
    trainer.train()
    ours = _evals(trainer)[-1]
    samples = guard.engine.samples
    assert sorted(samples) == ["fg_dirs", "fg_text"] and all(len(v) == 25 for v in samples.values())
    command = [
        sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--device", "cpu", "--batch_size", "8",
        "--model_args", f"pretrained={tmp_path / 'out' / 'checkpoint-10'}", "--include_path", str(tasks_dir),
        "--tasks", "fg_dirs,fg_text", "--samples", json.dumps(samples), "--seed", "0,0,0,0",
        "--output_path", str(tmp_path / "cli"),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(Path(glob.glob(str(tmp_path / "cli" / "**" / "results*.json"), recursive=True)[0]).read_text())
    compared = 0
    for task in ("fg_dirs", "fg_text"):
        for key, value in results["results"][task].items():
            if "," not in key:
                continue
            metric = key.split(",")[0]
            assert ours[f"eval_bench_{task}_{metric}"] == pytest.approx(value, rel=1e-6, abs=1e-6), key
            compared += 1
    assert compared == 8  # acc, acc_norm, perplexity, acc of the two tasks, each with its stderr
    # Deltas against the step-0 base, in points for accuracies; eval_forgetting the largest drop of those.
    base = json.loads((tmp_path / "out" / "ft_callbacks" / "base" / "forgetting_scores.json").read_text())
    base_scores = base["results"]["bench"]["scores"]
    drops = []
    for task, metric in (("fg_dirs", "acc"), ("fg_dirs", "acc_norm"), ("fg_text", "acc")):
        delta = (ours[f"eval_bench_{task}_{metric}"] - base_scores[task][metric]) * 100
        assert ours[f"eval_bench_{task}_{metric}_delta"] == pytest.approx(delta)
        drops.append(-delta)
    assert ours["eval_forgetting"] == pytest.approx(max(drops))
    # The same numbers reached wandb, on the Trainer's step axis.
    rows = [r for r in wandb_history(wandb_offline) if "eval/bench_fg_dirs_acc" in r]
    assert rows and rows[-1]["eval/bench_fg_dirs_acc"] == pytest.approx(ours["eval_bench_fg_dirs_acc"])


@pytest.mark.slow
@pytest.mark.parametrize("action", ["stop", "warn"])
def test_real_forgetting_warns_or_stops_at_the_first_real_drop_not_before(tmp_path, tokenizer, corpus, tasks_dir,
                                                                            dirs_model, action, capsys,
                                                                            wandb_offline):  # fmt: skip
    # A model that answers fg_dirs (accuracy 1.0), fine-tuned on unrelated docstrings: its answers erode.
    guard = ForgettingGuard(tasks=["fg_dirs_acc"], include_path=str(tasks_dir), max_drop=2.0, action=action)
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [guard], model=copy.deepcopy(dirs_model),
                         max_steps=20, eval_steps=2, learning_rate=3e-3)  # fmt: skip
    trainer.train()
    out = capsys.readouterr().out
    assert guard.base.scores["fg_dirs_acc"]["acc"] == 1.0
    rounds = guard.history
    assert [r["step"] for r in rounds] == [e["step"] for e in _evals(trainer)][: len(rounds)]

    def real(r):
        return any(c["drop"] > 2.0 and c["p_value"] < 0.05 for c in r["comparisons"])

    first = next(i for i, r in enumerate(rounds) if real(r))
    fired_at = rounds[first]["step"]
    # Before it, a drop above max_drop that was still within noise: the paired test held the rule back.
    assert any(c["drop"] > 2.0 and c["p_value"] >= 0.05 for r in rounds[:first] for c in r["comparisons"])
    entry = next(e for e in _evals(trainer) if e["step"] == fired_at)
    assert entry["eval_forgetting"] > 2.0 and entry["eval_bench_fg_dirs_acc_acc_delta"] < -2.0
    if action == "stop":
        assert guard.rule.stop_step == fired_at and trainer.state.global_step == fired_at
        assert f"ForgettingGuard stops training at step {fired_at} (forgetting rule): fg_dirs_acc acc dropped" in out
        facts = [e for e in trainer.state.log_history if "ft_callbacks/early_stop_step" in e]
        assert facts and facts[-1]["ft_callbacks/early_stop_step"] == fired_at
        assert facts[-1]["ft_callbacks/early_stop_rule"] == "forgetting"
        reason = facts[-1]["ft_callbacks/early_stop_reason"]
        assert reason == guard.rule.stop_reason and "interval" in reason and "McNemar p=" in reason
        import wandb

        wandb.finish()
        records = wandb_records(wandb_offline)
        summary = wandb_summary(records)
        assert summary.get("ft_callbacks/early_stop_reason") == reason, summary
        alerts = wandb_alerts(records)
        assert any(a["title"] == "ForgettingGuard stopped training" and reason in a["text"] for a in alerts)
    else:
        assert trainer.state.global_step == 20 and guard.rule.stop_step is None
        assert out.count("WARNING ForgettingGuard: fg_dirs_acc acc dropped") == 1  # once, though later rounds drop too
        assert sum(real(r) for r in rounds) > 1
        assert guard.rule.warned == ["fg_dirs_acc/acc"]


def test_monitor_general_text_every_n_evals_and_a_round_that_fails(tmp_path, tokenizer, corpus, tasks_dir, capsys):
    assert infer_mode("eval_forgetting") == "min" and infer_mode("eval_general_perplexity_ratio") == "min"
    assert infer_mode("eval_bench_fg_dirs_acc_delta") == "max"
    data = tmp_path / "tasks"
    write_tasks(data, corpus)
    general = corpus[400:440]
    guard = ForgettingGuard(tasks=["fg_dirs"], include_path=str(data), limit=12, every_n_evals=2,
                            general_text=general, batch_size=4)  # fmt: skip
    saver = BestCheckpointSaver(monitor="eval_forgetting")

    class BreakData(TrainerCallback):  # the task's data file disappears mid-run
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 25:
                (data / "dirs.jsonl").rename(data / "gone.jsonl")

    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [saver, guard, BreakData()], max_steps=30,
                         eval_steps=5, report_to="none")  # fmt: skip
    trainer.train()
    out = capsys.readouterr().out
    evals = _evals(trainer)
    assert [e["step"] for e in evals] == [5, 10, 15, 20, 25, 30]
    scored = [e["step"] for e in evals if e.get("eval_bench_fg_dirs_acc") is not None]
    assert scored == [5, 15]  # every second evaluation; the one at 25 failed and was skipped
    assert "benchmark round skipped" in out and trainer.state.global_step == 30
    assert saver.best_step in (5, 15) and saver.best_value == min(e["eval_forgetting"] for e in evals
                                                                 if e.get("eval_forgetting") is not None)
    # general-text perplexity: exact and token-weighted; our function against a by-hand sum on the final model.
    model = trainer.model.eval()
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for text in general:
            ids = tokenizer(text, truncation=True, max_length=128, return_tensors="pt")["input_ids"]
            if ids.shape[1] < 2:
                continue
            logits = model(input_ids=ids).logits[0, :-1].double()
            nll -= torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None]).sum().item()
            tokens += ids.shape[1] - 1
    from ft_callbacks.forgetting_guard import general_text_totals

    totals = general_text_totals(model, tokenizer, general, batch_size=4, max_length=512)
    assert totals.tokens == tokens and totals.perplexity == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    first = next(e for e in evals if e.get("eval_general_perplexity") is not None)
    assert first["eval_general_perplexity_ratio"] == pytest.approx(
        first["eval_general_perplexity"] / math.exp(guard.base_general), rel=1e-9
    )


def test_base_scores_given_as_numbers(tmp_path, tokenizer, corpus, tasks_dir):
    # Measured elsewhere: no base round here; the comparison is unpaired (the base's answers are unknown).
    guard = ForgettingGuard(tasks=["fg_dirs"], include_path=str(tasks_dir), limit=12,
                            base_scores={"fg_dirs": {"acc": 0.9, "acc_stderr": 0.02, "acc_norm": 0.8}})  # fmt: skip
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [guard], max_steps=5, eval_steps=5, report_to="none")
    trainer.train()
    entry = _evals(trainer)[-1]
    assert guard.base_source == "given" and guard.rounds == 1
    acc, norm = entry["eval_bench_fg_dirs_acc"], entry["eval_bench_fg_dirs_acc_norm"]
    assert entry["eval_bench_fg_dirs_acc_delta"] == pytest.approx((acc - 0.9) * 100)
    assert entry["eval_bench_fg_dirs_acc_norm_delta"] == pytest.approx((norm - 0.8) * 100)
    assert entry["eval_forgetting"] == pytest.approx(max(0.9 - acc, 0.8 - norm) * 100)
    last = guard.history[-1]["comparisons"]
    assert {c["metric"] for c in last} == {"acc", "acc_norm"}
    assert all(c["n"] == 12 and c["method"] == "unpaired" for c in last)


def test_bad_settings_fail_at_construction(tasks_dir):
    with pytest.raises(ConfigurationError, match="limit=0 is not valid"):
        ForgettingGuard(tasks=["fg_dirs"], include_path=str(tasks_dir), limit=0)
    with pytest.raises(ConfigurationError, match="needs something to measure"):
        ForgettingGuard()
    with pytest.raises(ConfigurationError, match="every_n_evals"):
        ForgettingGuard(tasks=["fg_dirs"], every_n_evals=0)
    with pytest.raises(ConfigurationError, match="action"):
        ForgettingGuard(tasks=["fg_dirs"], action="halt")
    with pytest.raises(ConfigurationError, match="base_scores has no scores"):
        ForgettingGuard(tasks=["fg_dirs"], base_scores={"other": {"acc": 0.5}})
    with pytest.raises(ConfigurationError, match="'text' column"):
        ForgettingGuard(general_text="one long string")


@pytest.mark.slow  # an unknown name makes lm-eval index its few thousand own tasks (seconds)
def test_tasks_that_cannot_load_are_refused_before_step_one(tmp_path, tokenizer, corpus, tasks_dir):
    steps = []

    class Steps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    cases = [
        (ForgettingGuard(tasks=["fg_nope"], include_path=str(tasks_dir)), r"knows no task \['fg_nope'\]"),
        (ForgettingGuard(tasks=["fg_dirs"], include_path=str(tmp_path / "missing")), "no such folder"),
    ]
    broken = tmp_path / "broken"
    write_tasks(broken, corpus)
    (broken / "dirs.jsonl").unlink()  # the YAML names a data file that is not there
    cases.append((ForgettingGuard(tasks=["fg_dirs"], include_path=str(broken)), "could not load the tasks"))
    for guard, match in cases:
        trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [guard, Steps()], max_steps=5, report_to="none")
        with pytest.raises(ConfigurationError, match=match):
            trainer.train()
    assert steps == []


def test_without_lm_eval_the_message_names_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['lm_eval'] = None\n"  # as if lm-eval were not installed
        "from ft_callbacks.forgetting_guard import ForgettingGuard\n"
        "try:\n    ForgettingGuard(tasks=['arc_easy'])\nexcept Exception as exc:\n    print(type(exc).__name__, exc)\n"
        "ForgettingGuard(general_text=['some general text'])\nprint('general_text alone works')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "ConfigurationError" in done.stdout and "pip install 'ft-callbacks[bench]'" in done.stdout
    assert "general_text alone works" in done.stdout


def test_a_group_is_reported_by_its_name_with_its_questions_pooled(tmp_path, tokenizer, corpus):
    from ft_callbacks.bench_engine import BenchEngine

    folder = write_tasks(tmp_path / "tasks", corpus)
    (folder / "fg_group.yaml").write_text(
        "group: fg_group\ntask:\n  - fg_dirs\n  - fg_text\naggregate_metric_list:\n  - metric: acc\n"
        "    weight_by_size: true\n"
    )
    engine = BenchEngine(["fg_group"], [str(folder)], limit=10)
    engine.check()
    assert engine.groups == {"fg_group": ["fg_dirs", "fg_text"]}
    with torch.no_grad():
        result = engine.run(copy.deepcopy(dirs_free_model(tokenizer)), tokenizer)
    assert list(result.scores) == ["fg_group"] and result.proportions == {"fg_group": ["acc"]}
    pooled = result.per_question["fg_group"]["acc"]
    assert len(pooled) == 20 and {k.split("/")[0] for k in pooled} == {"fg_dirs", "fg_text"}
    assert result.scores["fg_group"]["acc"] == pytest.approx(sum(pooled.values()) / 20)  # weighted by size


def dirs_free_model(tokenizer):
    from ft_callbacks import toy

    return toy.tiny_gpt2(tokenizer).eval()


def test_the_users_tokenizer_is_left_as_it_was(tmp_path, tokenizer, corpus):
    from ft_callbacks.bench_engine import BenchEngine

    folder = write_tasks(tmp_path / "tasks", corpus)
    mine = copy.deepcopy(tokenizer)
    mine.pad_token = None  # lm-eval sets a pad token on a tokenizer without one
    engine = BenchEngine(["fg_dirs"], [str(folder)], limit=8)
    engine.check()
    with torch.no_grad():
        engine.run(dirs_free_model(mine), mine)
    assert mine.pad_token is None and mine.padding_side == tokenizer.padding_side
