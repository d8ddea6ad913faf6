"""Run under `torchrun --nproc_per_node 2` (CPU, gloo) by tests/test_generation_task_metrics.py.

usage: generation_truncated_ddp.py TOKENIZER_DIR OUT_DIR

A tiny GPT-2 learns JSON records (see `json_trainer`) with GenerationScorer(metrics=("truncated",
"json_valid")): each rank generates half of the 8 prompts, and the truncated flags are gathered with the
texts. Each rank writes OUT_DIR/rank{R}.json with the flags, the scores and (rank 0) a hand count of
truncation on the final weights, one prompt at a time in this process.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch.distributed as dist
from transformers import PreTrainedTokenizerFast

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS.parent))

from ft_callbacks.generation_scorer import GenerationScorer  # noqa: E402
from ft_callbacks.records import write_record  # noqa: E402
from tests.test_generation_task_metrics import NEW_TOKENS, PROMPTS, hand_truncated, json_trainer  # noqa: E402


def main() -> None:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(sys.argv[1])
    out_dir = Path(sys.argv[2])
    scorer = GenerationScorer(PROMPTS, ["-"] * len(PROMPTS), metrics=("truncated", "json_valid"),
                              max_new_tokens=NEW_TOKENS, batch_size=2, background=False)  # fmt: skip
    trainer = json_trainer(tokenizer, out_dir / "trainer", [scorer], ddp_backend="gloo", report_to="none",
                           per_device_train_batch_size=4)  # fmt: skip
    assert dist.is_initialized() and dist.get_world_size() == 2
    trainer.train()
    rank = trainer.args.process_index
    record = {
        "rank": rank,
        "flags": scorer.last_truncated,
        "rounds": [{k: v for k, v in e.items() if k in ("step", "eval_truncated_rate", "eval_json_valid_rate")}
                   for e in trainer.state.log_history if "eval_truncated_rate" in e],
        "table": scorer.table_rows if rank == 0 else None,
        "columns": getattr(scorer, "_table_columns", None),
    }
    if rank == 0:
        record["hand"] = hand_truncated(trainer.model.module if hasattr(trainer.model, "module") else trainer.model,
                                        tokenizer, PROMPTS, NEW_TOKENS)  # fmt: skip
    write_record(out_dir / f"rank{rank}.json", record)  # atomic
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
