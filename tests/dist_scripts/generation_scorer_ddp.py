"""Run under `torchrun --nproc_per_node 2` (CPU, gloo) by tests/test_generation_scorer.py.

usage: generation_scorer_ddp.py TOKENIZER_DIR OUT_DIR

A tiny GPT-2 trains 20 steps with GenerationScorer on 9 prompts (evaluations at 10 and 20, plus the
step-0 baseline), scoring synchronously. Each rank records which prompts it generated and how often the scoring function
ran on it; rank 0 also generates every prompt alone in this process, for the test to compare.
Each rank writes OUT_DIR/rank{R}.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch.distributed as dist
from transformers import PreTrainedTokenizerFast

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS.parent))

from ft_callbacks import GenerationScorer, toy  # noqa: E402
from ft_callbacks.records import write_record  # noqa: E402
from tests.helpers import lm_trainer  # noqa: E402
from tests.test_generation_scorer import prompt_pairs  # noqa: E402


def main() -> None:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(sys.argv[1])
    out_dir = Path(sys.argv[2])
    corpus = toy.stdlib_corpus()
    prompts, references = prompt_pairs(corpus, 9)
    scored: list[int] = []

    def counted(predictions, refs):
        scored.append(len(predictions))
        return {}

    # Synchronous scoring: rank 0's scores are broadcast into every rank's metrics at each evaluation.
    scorer = GenerationScorer(prompts, references, metrics=("rouge", "bleu", counted), max_new_tokens=8,
                              batch_size=2, background=False)  # fmt: skip
    generated: list[list[int]] = []
    original = scorer._generate_indices

    def recording(model, tok, indices, keep, args, show_progress):
        generated.append(list(indices[:keep]))
        return original(model, tok, indices, keep, args, show_progress)

    scorer._generate_indices = recording
    trainer = lm_trainer(tokenizer, corpus, out_dir / "trainer", [scorer], max_steps=20, eval_steps=10,
                         ddp_backend="gloo", report_to="wandb")  # fmt: skip
    assert dist.is_initialized() and dist.get_world_size() == 2
    trainer.train()
    rank = trainer.args.process_index
    record = {
        "rank": rank,
        "generated": generated,
        "scored": scored,
        "rounds": [
            {k: v for k, v in e.items() if k.startswith(("eval_rouge", "eval_bleu")) or k == "step"}
            for e in trainer.state.log_history
            if e.get("eval_rouge1") is not None
        ],
        "table": scorer.table_rows if rank == 0 else None,
    }
    if rank == 0:
        alone = GenerationScorer(prompts, references, metrics=("exact_match",), max_new_tokens=8, batch_size=2)
        alone._prepare(trainer.model, tokenizer)
        record["alone"] = alone._generate_indices(trainer.model, tokenizer, list(range(9)), 9, None, False)
    write_record(out_dir / f"rank{rank}.json", record)  # atomic
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
