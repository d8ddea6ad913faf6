"""The judge under torchrun with 2 processes: every question asked once, by rank 0 only; both ranks hold
the same judge numbers (broadcast)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from .helpers import run_torchrun


@pytest.mark.distributed
@pytest.mark.slow
def test_one_call_per_question_from_rank_zero(tokenizer, tmp_path):
    from pathlib import Path

    tok_dir = tmp_path / "tokenizer"
    tokenizer.save_pretrained(str(tok_dir))
    script = Path(__file__).resolve().parent / "dist_scripts" / "judge_ddp.py"
    rc, output, _ = run_torchrun(script, tok_dir, tmp_path / "out")
    assert rc == 0, output[-6000:]
    calls = Counter((tmp_path / "out" / "calls.txt").read_text().split("\n")[:-1])
    r0, r1 = (json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in range(2))
    asked = Counter(line.split()[0] for line in calls.elements())
    assert {line.split()[1] for line in calls.elements()} == {"0"}  # rank 0 only
    assert asked["preflight"] == 1
    # 6 prompts: a score each at 3 rounds (baseline, 10, 20), both orders of 6 pairs at 2 rounds; the cache
    # answers a question asked before (the same texts again), so at most that many.
    pairs = [json.loads(line) for line in (tmp_path / "out" / "trainer" / "ft_callbacks" / "judge" / "pairs.jsonl")
             .read_text().splitlines()]  # fmt: skip
    assert [p["step"] for p in pairs] == [10] * 6 + [20] * 6
    distinct = {(p["prompt"], p["current_output"], p["base_output"]) for p in pairs}
    assert asked["pair"] == 2 * len(distinct)  # exactly both orders of each distinct pair, once across ranks
    assert r0["rounds"] == r1["rounds"]
    assert [r["step"] for r in r0["rounds"] if "eval_win_rate" in r] == [10, 20]
