"""Run under `torchrun --nproc_per_node 2` (CPU, gloo) by tests/test_best_checkpoint.py.

usage: best_checkpoint_ddp.py TOKENIZER_DIR OUT_DIR

Both ranks train the same tiny GPT-2 with BestCheckpointSaver(keep=2, load_best_at_end=True) and
write OUT_DIR/rank{R}.json with the evaluations they saw, the saves they reported and a checksum of
the weights they hold at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import PreTrainedTokenizerFast

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent))

from helpers import lm_trainer  # noqa: E402

from ft_callbacks import toy  # noqa: E402
from ft_callbacks.best_checkpoint import BestCheckpointSaver  # noqa: E402
from ft_callbacks.records import write_record  # noqa: E402


def main() -> None:
    tokenizer_dir, out_dir = sys.argv[1], Path(sys.argv[2])
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    corpus = toy.stdlib_corpus()
    saver = BestCheckpointSaver(keep=2, load_best_at_end=True)
    trainer = lm_trainer(
        tokenizer,
        corpus,
        out_dir / "trainer",
        callbacks=[saver],
        train_size=24,
        eval_size=40,
        max_steps=30,
        eval_steps=5,
        logging_steps=5,
        ddp_backend="gloo",
    )
    rank = trainer.args.process_index
    assert dist.is_initialized() and dist.get_world_size() == 2
    trainer.train()
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    weights = sum(float(p.detach().double().sum()) for p in trainer.model.parameters())
    record = {
        "rank": rank,
        "eval_steps": [e["step"] for e in evals],
        "eval_loss": [e["eval_loss"] for e in evals],
        "saves": saver.saves,
        "ranking": saver.ranking.state_dict(),
        "weights_checksum": weights,
    }
    write_record(out_dir / f"rank{rank}.json", record)  # atomic
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
