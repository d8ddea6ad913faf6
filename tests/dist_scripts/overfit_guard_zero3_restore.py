"""Run under `torchrun --nproc_per_node 2` (CPU, gloo) by tests/test_overfit_guard_best_weights.py:
OverfitGuard(restore_best_weights=True) with a tiny GPT-2 under DeepSpeed ZeRO-3, where no process
holds the whole weights, must fail before the first training step.

usage: overfit_guard_zero3_restore.py TOKENIZER_DIR OUT_DIR

A callback writes OUT_DIR/steps.json at every optimizer step, so the test sees whether training started.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast, TrainerCallback

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS.parent))

from ft_callbacks import OverfitGuard, toy  # noqa: E402
from ft_callbacks.records import write_record  # noqa: E402
from tests.dist_scripts.kit_ddp import ZERO3  # noqa: E402
from tests.helpers import lm_trainer  # noqa: E402


class StepWitness(TrainerCallback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_step_end(self, args, state, control, **kwargs):
        write_record(self.path, {"step": state.global_step})


def main() -> None:
    tokenizer_dir, out_dir = sys.argv[1], Path(sys.argv[2])
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    trainer = lm_trainer(
        tokenizer, toy.stdlib_corpus(), out_dir / "trainer",
        [OverfitGuard(restore_best_weights=True), StepWitness(out_dir / "steps.json")],
        max_steps=4, eval_steps=2, ddp_backend="gloo", deepspeed=ZERO3,
    )  # fmt: skip
    trainer.train()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
