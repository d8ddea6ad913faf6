"""ForgettingGuard under torchrun with 2 processes: each scores its share, results combined once."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from ft_callbacks import toy
from ft_callbacks.bench_engine import BenchEngine
from ft_callbacks.forgetting_guard import general_text_totals

from .helpers import REPO, run_torchrun

sys.path.insert(0, str(Path(__file__).parent / "dist_scripts"))
from forgetting_tasks import write_tasks

SCRIPT = REPO / "tests" / "dist_scripts" / "forgetting_ddp.py"


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_score_each_question_once_with_the_numbers_of_one(tmp_path, tokenizer, corpus):
    tasks = write_tasks(tmp_path / "tasks", corpus)
    tokenizer.save_pretrained(tmp_path / "tok")
    code, output, _ = run_torchrun(SCRIPT, tmp_path / "ddp", tasks, tmp_path / "tok", timeout=400)
    assert code == 0, output[-5000:]
    ranks = [json.loads((tmp_path / "ddp" / f"result_{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # One process, on the untrained model and on the step-10 weights the two processes trained.
    engine = BenchEngine(["fg_dirs", "fg_text"], [str(tasks)])
    engine.check()
    untrained = toy.tiny_gpt2(tokenizer).eval()
    trained = AutoModelForCausalLM.from_pretrained(tmp_path / "ddp" / "final").eval()
    with torch.no_grad():
        base = engine.run(untrained, tokenizer)
        now = engine.run(trained, tokenizer)
    general = corpus[400:430]
    base_general = general_text_totals(untrained, tokenizer, general).mean_nll
    now_general = general_text_totals(trained, tokenizer, general).perplexity
    # 60 four-choice questions + 30 continuations = 270 log-likelihood requests: 135 on each rank, none twice.
    assert engine.requests_here == 270
    assert [r["requests"] for r in ranks] == [135, 135]
    for r in ranks:  # every rank holds the combined numbers, equal to one process's
        for task, scores in base.scores.items():
            assert r["base"][task] == pytest.approx(scores, rel=1e-6), task
        assert r["base_general"] == pytest.approx(base_general, rel=1e-6)
        for task, scores in now.scores.items():
            for label, value in scores.items():
                assert r["eval"][f"eval_bench_{task}_{label}"] == pytest.approx(value, rel=1e-5, abs=1e-7), label
        assert r["eval"]["eval_general_perplexity"] == pytest.approx(now_general, rel=1e-6)
