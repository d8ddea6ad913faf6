"""Run under `torchrun` (CPU, gloo) by tests/test_engines.py: a BestCheckpointSaver mistake under
DeepSpeed ZeRO-3 must fail before the first training step.

usage: zero3_bad_input.py TOKENIZER_DIR OUT_DIR CASE

CASE is one of
- `no_gather`: the DeepSpeed config lacks stage3_gather_16bit_weights_on_model_save, so DeepSpeed
  would refuse the full weights at the first save;
- `peft_load_best`: load_best_at_end=True with a LoRA model.

A callback that counts optimizer steps writes OUT_DIR/steps.json if training ever starts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast, TrainerCallback

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS.parent))

from ft_callbacks import BestCheckpointSaver, toy  # noqa: E402
from ft_callbacks.records import write_record  # noqa: E402
from tests.dist_scripts.kit_ddp import ZERO3  # noqa: E402
from tests.helpers import lm_trainer  # noqa: E402


class StepWitness(TrainerCallback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_step_end(self, args, state, control, **kwargs):
        write_record(self.path, {"step": state.global_step})


def main() -> None:
    tokenizer_dir, out_dir, case = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    corpus = toy.stdlib_corpus()
    config = {**ZERO3, "zero_optimization": {"stage": 3}}  # no 16-bit gather at save time
    model = toy.tiny_gpt2(tokenizer)
    saver = BestCheckpointSaver()
    if case == "peft_load_best":
        from peft import LoraConfig, get_peft_model

        config = ZERO3
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["c_attn"], task_type="CAUSAL_LM"))
        saver = BestCheckpointSaver(load_best_at_end=True)
    trainer = lm_trainer(
        tokenizer, corpus, out_dir / "trainer", [saver, StepWitness(out_dir / "steps.json")], model=model,
        max_steps=4, eval_steps=2, ddp_backend="gloo", deepspeed=config,
    )  # fmt: skip
    trainer.train()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
