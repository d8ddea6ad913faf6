"""Judge benchmark (#15): what judging costs a training run, and how many calls it makes.

    python benchmarks/bench_judge.py [--full]

1. Training-thread stall per judged evaluation: the same tiny GPT-2 run with GenerationScorer scoring in
   the background, with and without a judge whose every answer takes `latency_s` (an API's network wait,
   simulated by sleeping: the judge's own time). Training time = from train() to the end of the last step
   (the wait for the last rounds at train end is not training); stall = (with judge - without) / judged
   rounds; target: at most 10% of the judge's wall time per round (the judge stays off the training loop).
2. Calls per pair against a real `transformers serve` on loopback (a tiny model trained to answer in the
   judge's format), counted by the server's access log: exactly 2 per pair, 0 when the cache has them.
3. Wall time of a 64-pair round (128 calls) with max_concurrency=8 vs 1 against the same server.

Results are printed and written to benchmarks/results_judge.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import ROOT, environment, pass_fail, print_rows, quiet, write_json

RESULTS_PATH = ROOT / "benchmarks" / "results_judge.json"
QUICK = {"steps": 80, "eval_steps": 20, "prompts": 6, "latency_s": 0.05, "pairs": 16, "round_pairs": 64}
FULL = {"steps": 160, "eval_steps": 20, "prompts": 8, "latency_s": 0.05, "pairs": 32, "round_pairs": 64}


def _sleepy_judge(latency: float):
    from ft_callbacks.judge import Judge, Verdict

    class Sleepy(Judge):
        """Answers after `latency` seconds (a remote judge's wait), preferring the shorter answer."""

        def __init__(self) -> None:
            self.seconds = 0.0

        def compare_one(self, request):
            started = time.perf_counter()
            time.sleep(latency)
            self.seconds += time.perf_counter() - started
            a, b = len(request.output_a), len(request.output_b)
            return Verdict("A" if a < b else "B" if b < a else "tie")

    return Sleepy()


def bench_stall(cfg: dict[str, Any], tokenizer, corpus, verbose: bool) -> dict[str, Any]:
    from ft_callbacks import GenerationScorer
    from tests.helpers import lm_trainer

    prompts = [" ".join(t.split()[:6]) for t in corpus[: cfg["prompts"]]]
    references = [" ".join(t.split()[6:16]) or "x" for t in corpus[: cfg["prompts"]]]
    from transformers import TrainerCallback

    class LastStep(TrainerCallback):
        def __init__(self) -> None:
            self.at = 0.0

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == state.max_steps:
                self.at = time.perf_counter()

    walls: dict[str, list[float]] = {"with": [], "without": []}
    judge_seconds = 0.0
    rounds = cfg["steps"] // cfg["eval_steps"]
    for mode in ("without", "with", "without", "with"):  # interleaved
        judge = _sleepy_judge(cfg["latency_s"]) if mode == "with" else None
        options = {"judge": judge, "win_rate": True} if judge is not None else {}
        scorer = GenerationScorer(prompts, references, metrics=("rouge",), max_new_tokens=8, background=True,
                                  baseline=True, **options)  # fmt: skip
        with tempfile.TemporaryDirectory() as folder, quiet(verbose):
            last = LastStep()
            trainer = lm_trainer(tokenizer, corpus, folder, [scorer, last], max_steps=cfg["steps"],
                                 eval_steps=cfg["eval_steps"], report_to="none")  # fmt: skip
            started = time.perf_counter()
            trainer.train()
            walls[mode].append(last.at - started)
        if judge is not None:
            judge_seconds += judge.seconds
    with_judge, without = min(walls["with"]), min(walls["without"])  # the least disturbed of each
    judge_per_round = judge_seconds / 2 / rounds
    stall_per_round = max(0.0, with_judge - without) / rounds
    return {"walls_s": walls, "judge_s_per_round": judge_per_round, "stall_s_per_round": stall_per_round,
            "stall_share": stall_per_round / judge_per_round if judge_per_round else float("nan"),
            "rounds": rounds}  # fmt: skip


def bench_server(cfg: dict[str, Any], tokenizer, corpus, verbose: bool) -> dict[str, Any]:
    from ft_callbacks.judge import Judge
    from ft_callbacks.judge.cache import VerdictCache
    from ft_callbacks.judge.rounds import JudgeRound
    from tests.helpers import free_port
    from tests.judge_server import Server, train_judge_model

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        with quiet(verbose):
            model_dir = train_judge_model(tokenizer, corpus, folder / "model")
        server = Server(model_dir, free_port(), folder / "server.log")
        try:
            server.wait_ready()

            def judge(concurrency: int):
                return Judge.openai(model=str(model_dir), base_url=server.url, max_tokens=16, pointwise=False,
                                    max_concurrency=concurrency)  # fmt: skip

            n = cfg["pairs"]
            prompts = [f"question {i}" for i in range(n)]
            outputs, bases = [f"answer {i}" for i in range(n)], [f"base answer {i}" for i in range(n)]
            before = server.requests()
            JudgeRound(judge(4), win_rate=True, cache=VerdictCache(folder / "c.sqlite")).run(0, prompts, outputs,
                                                                                             None, bases)  # fmt: skip
            first = server.requests() - before
            JudgeRound(judge(4), win_rate=True, cache=VerdictCache(folder / "c.sqlite")).run(0, prompts, outputs,
                                                                                             None, bases)  # fmt: skip
            cached = server.requests() - before - first
            m = cfg["round_pairs"]
            walls = {}
            for concurrency in (1, 8, 1, 8):
                prompts = [f"q{concurrency}-{time.perf_counter_ns()}-{i}" for i in range(m)]  # never cached
                started = time.perf_counter()
                JudgeRound(judge(concurrency), win_rate=True).run(0, prompts, ["a"] * m, None, ["b"] * m)
                walls.setdefault(concurrency, []).append(time.perf_counter() - started)
        finally:
            server.stop()
    return {"pairs": n, "calls_per_pair": first / n, "calls_cached": cached,
            "round_s": {str(k): min(v) for k, v in walls.items()},
            "speedup_8_vs_1": min(walls[1]) / min(walls[8])}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(RESULTS_PATH))
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from ft_callbacks import toy

    torch.set_num_threads(args.threads)
    cfg = FULL if args.full else QUICK
    started = time.perf_counter()
    corpus = toy.stdlib_corpus()
    tokenizer = toy.train_tokenizer(corpus)
    print(f"Judge benchmark ({'full' if args.full else 'quick'}), {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    print("\n[1/2] training stall per judged evaluation (background scoring, judge latency "
          f"{cfg['latency_s']} s per call)", flush=True)  # fmt: skip
    stall = bench_stall(cfg, tokenizer, corpus, args.verbose)
    print("\n[2/2] calls per pair and concurrency against transformers serve on loopback", flush=True)
    server = bench_server(cfg, tokenizer, corpus, args.verbose)
    checks = {
        "stall": stall["stall_share"] <= 0.10,
        "calls": server["calls_per_pair"] == 2 and server["calls_cached"] == 0,
        "concurrency": server["speedup_8_vs_1"] > 1.0,
    }
    table = [
        ("what", "ours", "baseline", "ratio", "target", "result"),
        ("stall per judged round (s)", f"{stall['stall_s_per_round']:.3f}", f"judge {stall['judge_s_per_round']:.2f}",
         f"{stall['stall_share']:.1%}", "<= 10% of the judge's time", pass_fail(checks["stall"])),
        ("calls per pair (fresh / cached)", f"{server['calls_per_pair']:g} / {server['calls_cached']}", "-", "-",
         "2 / 0", pass_fail(checks["calls"])),
        (f"{cfg['round_pairs']}-pair round, concurrency 8 vs 1 (s)", f"{server['round_s']['8']:.2f}",
         f"{server['round_s']['1']:.2f}", f"{server['speedup_8_vs_1']:.2f}x", "> 1x", pass_fail(checks["concurrency"])),
    ]  # fmt: skip
    print_rows(table)
    results = {"mode": "full" if args.full else "quick", "config": cfg, "stall": stall, "server": server,
               "environment": environment(args.threads), "elapsed_s": time.perf_counter() - started,
               "all_pass": all(checks.values()), "table": [list(r) for r in table]}  # fmt: skip
    write_json(results, args.output)
    print(f"\nall targets {'PASS' if results['all_pass'] else 'NOT MET'}; {results['elapsed_s']:.0f} s; results "
          f"written to {args.output}")  # fmt: skip
    return results


if __name__ == "__main__":
    main()
