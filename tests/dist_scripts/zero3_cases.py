"""Run under `torchrun --nproc_per_node 2` (CPU, gloo) by tests/test_engines.py: BestCheckpointSaver
with a tiny GPT-2 under DeepSpeed ZeRO-3.

usage: zero3_cases.py TOKENIZER_DIR OUT_DIR CASE

CASE is one of
- `no_gather` (a mistake): the DeepSpeed config lacks stage3_gather_16bit_weights_on_model_save, so
  DeepSpeed would refuse the full weights at the first save;
- `peft_load_best` (a mistake): load_best_at_end=True with a LoRA model;
- `guard_restore` (a mistake): OverfitGuard(restore_best_weights=True), whose host copy of the best
  weights no process can take when none holds the whole weights;
- `peft_save`: a LoRA model trains with OverfitGuard (for the exact eval token loss) and
  BestCheckpointSaver(monitor="eval_token_loss"); each rank writes OUT_DIR/rank{R}.json with the
  evaluations and the saves.

A callback writes OUT_DIR/steps.json at every optimizer step, so a test sees whether training started.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast, TrainerCallback

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS.parent))

from ft_callbacks import BestCheckpointSaver, OverfitGuard, toy  # noqa: E402
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
    callbacks: list = [BestCheckpointSaver()]
    max_steps = 4
    if case.startswith("peft_"):
        from peft import LoraConfig, get_peft_model

        config = ZERO3
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["c_attn"], task_type="CAUSAL_LM"))
        callbacks = [BestCheckpointSaver(load_best_at_end=True)]
    if case == "guard_restore":
        config = ZERO3
        callbacks = [OverfitGuard(restore_best_weights=True)]
    if case == "peft_save":
        callbacks = [OverfitGuard(patience=None), BestCheckpointSaver(monitor="eval_token_loss", keep=2)]
        max_steps = 12
    trainer = lm_trainer(
        tokenizer, corpus, out_dir / "trainer", [*callbacks, StepWitness(out_dir / "steps.json")], model=model,
        max_steps=max_steps, eval_steps=2, ddp_backend="gloo", deepspeed=config, learning_rate=3e-2,
    )  # fmt: skip
    trainer.train()
    evals = [{"step": e["step"], "eval_token_loss": e["eval_token_loss"]} for e in trainer.state.log_history
             if "eval_token_loss" in e]  # fmt: skip
    record = {"evals": evals, "saves": callbacks[-1].saves, "ranking": callbacks[-1].ranking.state_dict()}
    write_record(out_dir / f"rank{trainer.args.process_index}.json", record)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
