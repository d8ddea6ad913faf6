"""A single-process run for tests/test_forgetting_resume.py: trains with ForgettingGuard, writes a
checkpoint every 10 steps, and SIGKILLs itself right after checkpoint-20 is complete.

usage: forgetting_kill.py OUT_DIR TASKS_DIR TOKENIZER_DIR
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")

from transformers import PreTrainedTokenizerFast, TrainerCallback

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent))

from helpers import lm_trainer  # noqa: E402

from ft_callbacks import toy  # noqa: E402
from ft_callbacks.forgetting_guard import ForgettingGuard  # noqa: E402


class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 20:
            print("KILLED 20", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    out, tasks, tokenizer_dir = sys.argv[1:4]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    corpus = toy.stdlib_corpus()
    guard = ForgettingGuard(tasks=["fg_dirs", "fg_text"], include_path=tasks, limit=20)
    trainer = lm_trainer(tokenizer, corpus, out, [guard, KillAfterSave()], max_steps=30, eval_steps=10,
                         save_strategy="steps", save_steps=10, report_to="none")  # fmt: skip
    trainer.train()


if __name__ == "__main__":
    main()
