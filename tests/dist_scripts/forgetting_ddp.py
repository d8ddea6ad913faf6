"""ForgettingGuard under torchrun (2 processes, gloo on CPU) or in one plain process, for
tests/test_forgetting_distributed.py.

usage: forgetting_ddp.py OUT_DIR TASKS_DIR TOKENIZER_DIR

Trains a tiny GPT-2 for 10 steps with an evaluation at step 10 and saves it to OUT_DIR/final; each
process writes OUT_DIR/result_<rank>.json: the base scores, the step-10 evaluation's numbers, and how
many log-likelihood requests this process scored in the last benchmark round.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch.distributed as dist
from transformers import PreTrainedTokenizerFast

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent))

from helpers import lm_trainer  # noqa: E402

from ft_callbacks import toy  # noqa: E402
from ft_callbacks.distributed import rank  # noqa: E402
from ft_callbacks.forgetting_guard import ForgettingGuard  # noqa: E402


def main() -> None:
    out, tasks, tokenizer_dir = sys.argv[1:4]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    corpus = toy.stdlib_corpus()
    guard = ForgettingGuard(tasks=["fg_dirs", "fg_text"], include_path=tasks, general_text=corpus[400:430])
    trainer = lm_trainer(tokenizer, corpus, out, [guard], max_steps=10, eval_steps=10, report_to="none")
    trainer.train()
    trainer.save_model(str(Path(out, "final")))  # the step-10 weights, for a one-process check
    entry = [e for e in trainer.state.log_history if "eval_loss" in e][-1]
    result = {
        "base": guard.base.scores, "base_general": guard.base_general, "requests": guard.engine.requests_here,
        "eval": {k: v for k, v in entry.items() if k.startswith("eval_") and k not in ("eval_runtime",)},
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
    }  # fmt: skip
    Path(out, f"result_{rank()}.json").write_text(json.dumps(result))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
