"""Resuming with either value of `restore_callback_states_from_checkpoint` (issues #13 and #14): the Trainer
rebuilds callbacks from their saved arguments when the flag is True. Ours are restored in place, so the
objects the user holds are the ones that ran, GenerationScorer keeps its prompts, and the resumed run
decides exactly like an uninterrupted one."""

from __future__ import annotations

import pytest

from ft_callbacks import BestCheckpointSaver, GenerationScorer, OverfitGuard
from ft_callbacks.base import FtCallback

from .helpers import lm_trainer

SMALL = {"eval_size": 16, "train_size": 24}
SETTINGS = {"max_steps": 300, "eval_steps": 5, "logging_steps": 5, "save_strategy": "steps", "save_steps": 5,
            "lr_scheduler_type": "constant"}  # fmt: skip
INTERRUPTED_AT = 10


def _prompts(corpus):
    texts = corpus[:4]
    return [" ".join(t.split()[:5]) for t in texts], [" ".join(t.split()[5:15]) for t in texts]


def _kit(corpus):
    prompts, references = _prompts(corpus)
    guard = OverfitGuard(patience=2, plateau_patience=None)
    saver = BestCheckpointSaver("eval_perplexity", output_dir=None)
    # A dataset-free scorer built from lists: exactly what the Trainer's rebuild from arguments lost.
    scorer = GenerationScorer(prompts, references, metrics=("rouge",), max_new_tokens=4, background=False)
    return guard, saver, scorer


def _rouge_by_step(trainer) -> dict[int, float]:
    return {e["step"]: e["eval_rougeL"] for e in trainer.state.log_history if e.get("eval_rougeL") is not None}


@pytest.mark.slow
@pytest.mark.parametrize("restore_flag", [False, True])
def test_a_resumed_run_decides_like_an_uninterrupted_one_and_handles_stay_live(
    tokenizer, corpus, tmp_path, restore_flag
):
    reference = _kit(corpus)
    whole = lm_trainer(tokenizer, corpus, tmp_path / "whole", list(reference), **SMALL, **SETTINGS)
    whole.train()
    guard_ref, saver_ref, scorer_ref = reference
    assert guard_ref.stopped and guard_ref.policy.stop_step > INTERRUPTED_AT + 5

    out = tmp_path / "resumed"
    first = _kit(corpus)
    lm_trainer(tokenizer, corpus, out, list(first), **SMALL, **{**SETTINGS, "max_steps": INTERRUPTED_AT}).train()

    guard, saver, scorer = _kit(corpus)  # a new process would build them anew, the same way
    trainer = lm_trainer(tokenizer, corpus, out, [guard, saver, scorer], **SMALL, **SETTINGS,
                         restore_callback_states_from_checkpoint=restore_flag)  # fmt: skip
    trainer.train(resume_from_checkpoint=str(out / f"checkpoint-{INTERRUPTED_AT}"))

    # The objects the user holds are the ones that ran, whatever the flag.
    running = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, FtCallback)]
    assert running == [guard, saver, scorer]
    # Same decisions as the uninterrupted run: stop step and rule, best checkpoint, baseline.
    assert guard.stopped and guard.policy.stop_step == guard_ref.policy.stop_step == trainer.state.global_step
    assert guard.stop_reason == guard_ref.stop_reason
    assert guard.best_step == guard_ref.best_step
    assert (saver.best_step, saver.best_value) == (saver_ref.best_step, pytest.approx(saver_ref.best_value))
    assert saver.best_path is not None and saver.best_path.is_dir()
    assert scorer.baseline_scores == pytest.approx(scorer_ref.baseline_scores)
    assert _rouge_by_step(trainer) == pytest.approx(_rouge_by_step(whole))
