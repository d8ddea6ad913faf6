"""Benchmark the task metrics for generated text, on CPU and offline.

    python benchmarks/bench_task_metrics.py           # quick: under a minute on 2 idle cores
    python benchmarks/bench_task_metrics.py --full    # larger rounds and more repeats

1. Time per 1,000 outputs of each task metric (`TextScorer(metric).score(outputs)`, median of repeats):
   json_valid, json_schema (a schema with a `$ref`), regex, distinct, self_bleu, repetition,
   mean_length, empty, truncated, toxicity (a tiny BERT text-classification pipeline built from a
   config: the cost of the plumbing, not of a real classifier, which is the user's choice) and pass@1
   (each program a fresh `python -I` subprocess; measured on fewer programs, scaled to 1,000). Outputs
   are windows of standard-library docstrings, a third of them wrapped as JSON objects in a fence.
   Target, for the cheap ones: <= 1 s per 1,000 outputs.
2. self_bleu's growth with the round size: time at n = 500 .. 8,000 (16,000 full) outputs, and the
   log-log slope of time against n (fastest of the repeats). Target: slope <= 1.2 (linear is 1, with the
   noise of a shared machine and hash tables outgrowing the CPU caches). Baseline, for
   information: sacrebleu's `sentence_score(text, others)` looped, which is quadratic (measured at
   small n only), with our numbers equal to it.

Results are printed and written to benchmarks/results_task_metrics.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/<script>` finds the package

from benchmarks._common import ROOT, environment, print_rows, print_verdict, write_json

RESULTS_PATH = ROOT / "benchmarks" / "results_task_metrics.json"
SEED = 0
CHEAP_TARGET_S = 1.0  # seconds per 1,000 outputs
SLOPE_TARGET = 1.2  # linear is 1, the sentence_score loop 2; the margin is a shared machine's noise

QUICK = {
    "outputs": 1000,
    "repeats": 3,
    "programs": 40,
    "growth": [500, 1000, 2000, 4000, 8000],
    "loop_sizes": [50, 100],
}
FULL = {
    "outputs": 2000,
    "repeats": 5,
    "programs": 100,
    "growth": [500, 1000, 2000, 4000, 8000, 16000],
    "loop_sizes": [50, 100, 200],
}

SCHEMA = {
    "$defs": {"item": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
    "$ref": "#/$defs/item",
}


def _outputs(n: int, rng: random.Random, vocabulary: list[str]) -> list[str]:
    out = []
    for i in range(n):
        k = rng.randint(5, 40)
        start = rng.randrange(len(vocabulary) - k)
        text = " ".join(vocabulary[start : start + k])
        if i % 3 == 0:
            text = f"Here it is:\n```json\n{json.dumps({'text': text})}\n```"
        elif i % 17 == 0:
            text = ""
        out.append(text)
    return out


def _tiny_classifier() -> Any:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, pipeline

    from ft_callbacks import toy

    tokenizer = toy.train_tokenizer(toy.stdlib_corpus()[:200])
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=2,
                        id2label={0: "non-toxic", 1: "toxic"}, label2id={"non-toxic": 0, "toxic": 1},
                        pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    model = BertForSequenceClassification(config).eval()
    return pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")


def _time(fn: Any, repeats: int, best: bool = False) -> float:
    """The median (or, `best`, the fastest) of `repeats` timed calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(min(times) if best else statistics.median(times))


def bench_per_metric(cfg: dict[str, Any], outputs: list[str]) -> dict[str, Any]:
    from ft_callbacks.core.code_exec import ALLOW_ENV, PassAtK
    from ft_callbacks.core.safety import Toxicity
    from ft_callbacks.core.structured import JsonSchema, Regex
    from ft_callbacks.core.text_scores import TextScorer

    n = len(outputs)
    truncated = [i % 5 == 0 for i in range(n)]
    metrics: dict[str, Any] = {
        "json_valid": "json_valid",
        "json_schema": JsonSchema(SCHEMA),
        "regex": Regex([r"^[A-Z][^\n]*\.$", r"\S+( \S+)*"]),
        "distinct": "distinct",
        "self_bleu": "self_bleu",
        "repetition": "repetition",
        "mean_length": "mean_length",
        "empty": "empty",
        "truncated": "truncated",
        "toxicity": Toxicity(_tiny_classifier(), batch_size=64),
    }
    rows: dict[str, Any] = {}
    for name, metric in metrics.items():
        scorer = TextScorer((metric,))
        seconds = _time(lambda scorer=scorer: scorer.score(outputs, truncated=truncated), cfg["repeats"])
        per_1000 = seconds * 1000 / n
        cheap = name != "toxicity"
        rows[name] = {"seconds": seconds, "per_1000_s": per_1000, "target_s": CHEAP_TARGET_S if cheap else None,
                      "pass": per_1000 <= CHEAP_TARGET_S if cheap else None}  # fmt: skip
        print(f"  {name:<12} {per_1000 * 1000:9.1f} ms per 1,000 outputs", flush=True)
    # pass@1: programs that pass, fail and raise, each run in its own subprocess.
    os.environ[ALLOW_ENV] = "1"
    count = cfg["programs"]
    programs = [("def f(x):\n    return x + 1", "def f(x):\n    return x", "def f(x):\n    raise ValueError")[i % 3]
                for i in range(count)]  # fmt: skip
    tests = ["assert f(1) == 2"] * count
    metric = PassAtK(k=1, timeout=10, workers=max(1, os.cpu_count() or 1))
    scorer = TextScorer((metric,), references=tests)
    seconds = _time(lambda: scorer.score(programs), 1)
    rows["pass_at_k"] = {"seconds": seconds, "programs": count, "per_1000_s": seconds * 1000 / count,
                         "workers": metric.workers, "target_s": None, "pass": None}  # fmt: skip
    print(f"  {'pass@1':<12} {seconds * 1000 / count:9.2f} s per 1,000 programs ({metric.workers} workers)", flush=True)
    return rows


def bench_self_bleu_growth(cfg: dict[str, Any], rng: random.Random, vocabulary: list[str]) -> dict[str, Any]:
    import sacrebleu

    from ft_callbacks.core.diversity import SelfBleu

    biggest = max(cfg["growth"])
    texts = [" ".join(vocabulary[s : s + 30]) for s in (rng.randrange(len(vocabulary) - 30) for _ in range(biggest))]
    # Interleaved repeats (every size once per pass), the fastest of each size kept: the growth is a property
    # of the code, the rest is the noise of a shared machine, spread evenly over the sizes this way.
    times = {n: math.inf for n in cfg["growth"]}
    metric = SelfBleu(max_samples=None)
    for _ in range(cfg["repeats"]):
        for n in cfg["growth"]:
            times[n] = min(times[n], _time(lambda n=n: metric(texts[:n]), 1))
    for n, seconds in times.items():
        print(f"  self_bleu n={n:<6} {seconds:.3f} s ({seconds * 1e6 / n:.0f} us per output)", flush=True)
    xs = [math.log(n) for n in times]
    ys = [math.log(t) for t in times.values()]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    loop = {}
    bleu = sacrebleu.BLEU(effective_order=True)
    for n in cfg["loop_sizes"]:
        sub = texts[:n]
        start = time.perf_counter()
        values = [bleu.sentence_score(sub[i], sub[:i] + sub[i + 1 :]).score for i in range(n)]
        loop[n] = time.perf_counter() - start
        ours = SelfBleu(max_samples=None)(sub)["self_bleu"]
        assert abs(ours - statistics.fmean(values)) < 1e-9, (ours, statistics.fmean(values))
        print(f"  sentence_score loop n={n:<4} {loop[n]:.3f} s (same value)", flush=True)
    largest_loop = max(loop)
    return {
        "times_s": times,
        "slope": slope,
        "target_slope": SLOPE_TARGET,
        "pass": slope <= SLOPE_TARGET,
        "loop_times_s": loop,
        "speedup_at": largest_loop,
        "ours_at_loop_size_s": _time(lambda: SelfBleu(max_samples=None)(texts[:largest_loop]), cfg["repeats"]),
    }


def print_table(results: dict[str, Any]) -> list[list[str]]:
    rows = [["what", "ours", "baseline", "ratio", "target", "result"]]
    for name, row in results["per_metric"].items():
        what = f"{name}, per 1,000 outputs"
        if name == "pass_at_k":
            what = f"pass@1, per 1,000 programs ({row['workers']} workers)"
        target = f"<= {row['target_s']:.0f} s" if row["target_s"] else "-"
        result = "-" if row["pass"] is None else ("PASS" if row["pass"] else "NOT MET")
        ours = f"{row['per_1000_s'] * 1000:.1f} ms" if row["per_1000_s"] < 1 else f"{row['per_1000_s']:.2f} s"
        rows.append([what, ours, "-", "-", target, result])
    growth = results["self_bleu_growth"]
    sizes = list(growth["times_s"])
    rows.append([f"self_bleu growth, n = {sizes[0]}..{sizes[-1]} (log-log slope)", f"{growth['slope']:.2f}", "-", "-",
                 f"<= {SLOPE_TARGET}", "PASS" if growth["pass"] else "NOT MET"])  # fmt: skip
    n = growth["speedup_at"]
    loop = growth["loop_times_s"][n]
    ours = growth["ours_at_loop_size_s"]
    rows.append([f"self_bleu at n = {n} vs sacrebleu sentence_score loop", f"{ours * 1000:.1f} ms", f"{loop:.2f} s",
                 f"{loop / ours:.0f}x", "-", "-"])  # fmt: skip
    print_rows(rows)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="larger rounds and more repeats")
    parser.add_argument("--output", default=str(RESULTS_PATH))
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    cfg = FULL if args.full else QUICK
    started = time.perf_counter()
    import torch

    torch.set_num_threads(1)
    from ft_callbacks import toy

    vocabulary = " ".join(toy.stdlib_corpus()).split()
    rng = random.Random(SEED)
    print(f"task metrics benchmark ({'full' if args.full else 'quick'})", flush=True)
    print(f"\n[1/2] time per 1,000 outputs ({cfg['outputs']} outputs)", flush=True)
    per_metric = bench_per_metric(cfg, _outputs(cfg["outputs"], rng, vocabulary))
    print("\n[2/2] self_bleu growth with the round size", flush=True)
    growth = bench_self_bleu_growth(cfg, rng, vocabulary)
    results: dict[str, Any] = {
        "mode": "full" if args.full else "quick",
        "config": cfg,
        "environment": environment(torch.get_num_threads()),
        "per_metric": per_metric,
        "self_bleu_growth": growth,
    }
    results["elapsed_s"] = time.perf_counter() - started
    results["all_pass"] = growth["pass"] and all(r["pass"] is not False for r in per_metric.values())
    results["table"] = print_table(results)
    output = write_json(results, args.output)
    print_verdict(results, output)
    if args.strict and not results["all_pass"]:
        sys.exit(1)
    return results


if __name__ == "__main__":
    main()
