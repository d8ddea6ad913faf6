"""ForgettingGuard's base scores across a SIGKILL and resume, and from a PEFT model's disabled adapter."""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ft_callbacks import toy
from ft_callbacks.bench_engine import BenchEngine
from ft_callbacks.forgetting_guard import ForgettingGuard

from .helpers import REPO, lm_trainer

sys.path.insert(0, str(Path(__file__).parent / "dist_scripts"))
from forgetting_tasks import write_tasks


def _evals(trainer):
    return [e for e in trainer.state.log_history if "eval_loss" in e]


def _bench(entry):
    return {k: v for k, v in entry.items() if k.startswith("eval_bench_") or k == "eval_forgetting"}


@pytest.mark.slow
def test_base_scores_are_reused_after_sigkill_and_resume(tmp_path, tokenizer, corpus, capsys):
    tasks = write_tasks(tmp_path / "tasks", corpus)
    tokenizer.save_pretrained(tmp_path / "tok")
    # The reference: the same run, never interrupted.
    whole = ForgettingGuard(tasks=["fg_dirs", "fg_text"], include_path=str(tasks), limit=20)
    reference = lm_trainer(tokenizer, corpus, tmp_path / "whole", [whole], max_steps=30, eval_steps=10,
                           save_strategy="steps", save_steps=10, report_to="none")  # fmt: skip
    reference.train()
    # The same run in a process killed with SIGKILL right after checkpoint-20 is written.
    out = tmp_path / "killed"
    script = REPO / "tests" / "dist_scripts" / "forgetting_kill.py"
    done = subprocess.run([sys.executable, str(script), str(out), str(tasks), str(tmp_path / "tok")],
                          capture_output=True, text=True, timeout=300, cwd=REPO)  # fmt: skip
    assert done.returncode == -9 and "KILLED 20" in done.stdout, done.stderr[-3000:]
    base_file = out / "ft_callbacks" / "base" / "forgetting_scores.json"
    saved = base_file.read_bytes()
    capsys.readouterr()
    guard = ForgettingGuard(tasks=["fg_dirs", "fg_text"], include_path=str(tasks), limit=20)
    resumed = lm_trainer(tokenizer, corpus, out, [guard], max_steps=30, eval_steps=10, save_strategy="steps",
                         save_steps=10, report_to="none")  # fmt: skip
    resumed.train(resume_from_checkpoint=True)
    console = capsys.readouterr().out
    assert guard.base_source == "reused" and guard.rounds == 1  # the step-30 round only: no base round
    assert "scored in" not in console and "reuses the base model's scores" in console
    assert base_file.read_bytes() == saved
    assert guard.evals_seen == 3 and [h["step"] for h in guard.history] == [10, 20, 30]
    ours, theirs = _bench(_evals(resumed)[-1]), _bench(_evals(reference)[-1])
    assert ours and ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


@pytest.mark.slow
def test_peft_base_scores_come_from_the_disabled_adapter(tmp_path, tokenizer, corpus):
    from peft import LoraConfig, get_peft_model

    tasks = write_tasks(tmp_path / "tasks", corpus)
    untrained = toy.tiny_gpt2(tokenizer)
    engine = BenchEngine(["fg_dirs", "fg_text"], [str(tasks)], limit=20)
    engine.check()
    with torch.no_grad():
        expected = engine.run(copy.deepcopy(untrained).eval(), tokenizer).scores

    def peft_model():
        config = LoraConfig(r=4, lora_alpha=16, target_modules=["c_attn"], fan_in_fan_out=True, task_type="CAUSAL_LM")
        return get_peft_model(copy.deepcopy(untrained), config)

    guard = ForgettingGuard(tasks=["fg_dirs", "fg_text"], include_path=str(tasks), limit=20)
    first = lm_trainer(tokenizer, corpus, tmp_path / "out", [guard], model=peft_model(), max_steps=10,
                       eval_steps=10, save_strategy="steps", save_steps=10, learning_rate=2e-2,
                       report_to="none")  # fmt: skip
    first.train()
    assert guard.base.scores == expected
    trained = _evals(first)[-1]
    assert trained["eval_bench_fg_text_perplexity"] != pytest.approx(expected["fg_text"]["perplexity"], rel=1e-3)
    # No saved base scores, resumed at step 10 with a trained adapter: measured now, adapter disabled.
    shutil.rmtree(tmp_path / "out" / "ft_callbacks" / "base")
    again = ForgettingGuard(tasks=["fg_dirs", "fg_text"], include_path=str(tasks), limit=20)
    second = lm_trainer(tokenizer, corpus, tmp_path / "out", [again], model=peft_model(), max_steps=20,
                        eval_steps=10, save_strategy="steps", save_steps=10, learning_rate=2e-2,
                        report_to="none")  # fmt: skip
    second.train(resume_from_checkpoint=True)
    assert again.base_source == "measured" and again.base.scores == expected
    last = _evals(second)[-1]
    assert last["step"] == 20
    assert last["eval_bench_fg_dirs_acc_delta"] == pytest.approx(
        (last["eval_bench_fg_dirs_acc"] - expected["fg_dirs"]["acc"]) * 100
    )
    # A full fine-tune resumed without saved base scores has no base: it says so and reports no deltas.
