"""Run under `torchrun --nproc_per_node 2` (CPU, gloo) by tests/test_judge_distributed.py.

usage: judge_ddp.py TOKENIZER_DIR OUT_DIR

A tiny GPT-2 trains 20 steps with GenerationScorer(judge=..., win_rate=True) on 6 prompts (evaluations
at 10 and 20, plus the step-0 baseline). The judge appends one line per question to OUT_DIR/calls.txt
naming the process that asked; each rank writes its judge numbers to OUT_DIR/rank{R}.json.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch.distributed as dist
from transformers import PreTrainedTokenizerFast

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS.parent))

from ft_callbacks import GenerationScorer, toy  # noqa: E402
from ft_callbacks.judge import Judge, Score, Verdict  # noqa: E402
from ft_callbacks.records import write_record  # noqa: E402
from tests.helpers import lm_trainer  # noqa: E402


class Logged(Judge):
    """Prefers the shorter answer; writes every question it gets to a file shared by the processes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _log(self, kind: str) -> None:
        with open(self.path, "a") as handle:
            handle.write(f"{kind} {os.environ.get('RANK')}\n")

    def preflight(self) -> None:
        self._log("preflight")

    def compare_one(self, request):
        self._log("pair")
        a, b = len(request.output_a), len(request.output_b)
        return Verdict("A" if a < b else "B" if b < a else "tie")

    def score_one(self, request):
        self._log("score")
        return Score(1 + min(9, len(request.output) / 10))


def main() -> None:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(sys.argv[1])
    out_dir = Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = toy.stdlib_corpus()
    prompts = [" ".join(t.split()[:6]) for t in corpus[:6]]
    references = [" ".join(t.split()[6:16]) or "x" for t in corpus[:6]]
    scorer = GenerationScorer(prompts, references, metrics=("rouge",), max_new_tokens=8, batch_size=2,
                              background=False, judge=Logged(out_dir / "calls.txt"), win_rate=True)  # fmt: skip
    trainer = lm_trainer(tokenizer, corpus, out_dir / "trainer", [scorer], max_steps=20, eval_steps=10,
                         ddp_backend="gloo", report_to="none", learning_rate=1e-2)  # fmt: skip
    assert dist.is_initialized() and dist.get_world_size() == 2
    trainer.train()
    rank = trainer.args.process_index
    rounds = [{k: v for k, v in e.items() if k.startswith(("eval_win", "eval_judge", "eval_tie")) or k == "step"}
              for e in trainer.state.log_history if "eval_rougeL" in e]  # fmt: skip
    write_record(out_dir / f"rank{rank}.json", {"rank": rank, "rounds": rounds})
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
