"""A plain single-process run for tests/test_kill_resume.py (SIGKILL at random moments, then resume).

usage: kill_resume_run.py OUT_DIR TOKENIZER_DIR [resume|resume-restore]

A tiny GPT-2 trains for MAX_STEPS steps with OverfitGuard, BestCheckpointSaver(monitor="eval_perplexity")
and GenerationScorer (synchronous, ROUGE), evaluating and writing a Trainer checkpoint every EVERY steps.
With `resume` (or `resume-restore`: the same with the Trainer's
`restore_callback_states_from_checkpoint=True`) it continues from the newest complete `checkpoint-*` in
OUT_DIR (one whose trainer_state.json parses: the Trainer writes its checkpoints in place and
trainer_state.json last), or starts afresh when there is none. At the end it writes OUT_DIR/result.json.

Phase markers go to stdout, one line each, flushed, so that a test can kill the process in a chosen phase:
`PHASE train STEP` (a training step begins), `PHASE eval STEP` (first evaluation batch), `PHASE generate
STEP` (GenerationScorer starts generating), `PHASE best_save STEP` (BestCheckpointSaver starts writing),
`PHASE ckpt STEP` (our callbacks are done with the evaluation; the Trainer's checkpoint is written next),
`PHASE saved STEP` (the Trainer's checkpoint is complete), `PHASE done STEP`.
"""

from __future__ import annotations

import json
import os
import sys
import zlib
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers import PreTrainedTokenizerFast, TrainerCallback

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent))

from helpers import lm_trainer  # noqa: E402

from ft_callbacks import toy  # noqa: E402
from ft_callbacks.best_checkpoint import BestCheckpointSaver  # noqa: E402
from ft_callbacks.generation_scorer import GenerationScorer  # noqa: E402
from ft_callbacks.overfit_guard import OverfitGuard  # noqa: E402

MAX_STEPS = 80
EVERY = 10
TRAIN_SIZE = 96  # large enough that validation improves for a while, then overfits
CURRENT_STEP = [0]  # the global step, for markers printed where no TrainerState is at hand


def phase(name: str, step: int) -> None:
    print(f"PHASE {name} {step}", flush=True)


class First(TrainerCallback):
    """Listed before our callbacks: its on_evaluate runs before theirs."""

    def __init__(self) -> None:
        self._eval_step: int | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        phase("train", state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        CURRENT_STEP[0] = state.global_step

    def on_prediction_step(self, args, state, control, **kwargs):
        if self._eval_step != state.global_step:
            self._eval_step = state.global_step
            phase("eval", state.global_step)

    def on_save(self, args, state, control, **kwargs):
        phase("saved", state.global_step)


class Last(TrainerCallback):
    """Listed after our callbacks: its on_evaluate runs just before the Trainer writes its checkpoint."""

    def on_evaluate(self, args, state, control, **kwargs):
        phase("ckpt", state.global_step)


def generation_checksum(predictions: list[str], references: list[str]) -> dict[str, float]:
    """A number that changes with the generated text: tells one round's generations from another's."""
    return {"text_crc": float(zlib.crc32("\n".join(predictions).encode()))}


def newest_complete_checkpoint(out_dir: Path) -> Path | None:
    """The newest checkpoint-* with a trainer_state.json that parses and training left to do. (The Trainer
    resumed from the checkpoint of its last step trains one step past max_steps, and evaluates there.)"""
    found = []
    for folder in out_dir.glob("checkpoint-*"):
        try:
            step = int(folder.name.split("-", 1)[1])
            json.loads((folder / "trainer_state.json").read_text())
        except (ValueError, OSError):
            continue
        if step >= MAX_STEPS:
            continue
        found.append((step, folder))
    return max(found)[1] if found else None


def main() -> None:
    out_dir, tokenizer_dir = Path(sys.argv[1]), sys.argv[2]
    resume = len(sys.argv) > 3 and sys.argv[3].startswith("resume")
    # resume-restore: the Trainer's restore_callback_states_from_checkpoint=True (it would rebuild callbacks).
    restore_flag = len(sys.argv) > 3 and sys.argv[3] == "resume-restore"
    torch.set_num_threads(1)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    corpus = toy.stdlib_corpus()
    texts = corpus[300:304]
    prompts = [" ".join(t.split()[:6]) for t in texts]
    references = [" ".join(t.split()[6:10]) for t in texts]

    # The plateau count rises and resets during the run (min_delta=0.1 on eval_loss) but never reaches
    # its patience: the guard keeps counting and never stops this run.
    guard = OverfitGuard(patience=None, plateau_patience=MAX_STEPS // EVERY + 1, min_delta=0.1)
    saver = BestCheckpointSaver(monitor="eval_perplexity")
    scorer = GenerationScorer(
        prompts, references, metrics=("rouge", generation_checksum), max_new_tokens=4, background=False
    )
    generate, write_checkpoint = scorer.generate, saver._write_checkpoint

    def marked_generate(model, *args, **kwargs):
        phase("generate", CURRENT_STEP[0])
        return generate(model, *args, **kwargs)

    def marked_write_checkpoint(ctx, step, value, *weights):
        phase("best_save", step)
        return write_checkpoint(ctx, step, value, *weights)

    scorer.generate = marked_generate  # instance attributes: the classes (and their state names) are untouched
    saver._write_checkpoint = marked_write_checkpoint

    trainer = lm_trainer(
        tokenizer, corpus, out_dir, callbacks=[First(), guard, saver, scorer, Last()],
        train_size=TRAIN_SIZE, max_steps=MAX_STEPS, eval_steps=EVERY, logging_steps=EVERY,
        save_strategy="steps", save_steps=EVERY, restore_callback_states_from_checkpoint=restore_flag,
    )  # fmt: skip
    checkpoint = newest_complete_checkpoint(out_dir) if resume else None
    print(f"RESUME_FROM {checkpoint.name if checkpoint else '-'}", flush=True)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    state = trainer.state
    result = {
        "resumed_from": checkpoint.name if checkpoint else None,
        # The objects this script holds are the ones that ran, whatever the flag.
        "live_handles": all(any(cb is mine for cb in trainer.callback_handler.callbacks)
                            for mine in (guard, saver, scorer)),
        "global_step": state.global_step,
        "guard": {
            "evaluations": guard.policy.evaluations,
            "plateau": guard.policy.plateau.state_dict() if guard.policy.plateau else None,
            "stop_step": guard.policy.stop_step,
            "best_step": guard.best_step,
            "best_token_loss": guard.best_token_loss,
            "history_steps": [h["step"] for h in guard.history],
        },
        "saver": {**saver.ranking.state_dict(), "saves": [s["step"] for s in saver.saves]},
        "scorer": {
            "baseline_scores": scorer.baseline_scores,
            "history_steps": [h["step"] for h in scorer.history],
            "history": scorer.history,
            "evals_seen": scorer._evals_seen,
        },
        "log_history": state.log_history,
    }
    (out_dir / "result.json").write_text(json.dumps(result, indent=2))
    phase("done", state.global_step)


if __name__ == "__main__":
    main()
