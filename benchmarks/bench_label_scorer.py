"""Benchmark LabelScorer against baselines measured in the same run, on CPU and offline.

    python benchmarks/bench_label_scorer.py           # quick: about 3 minutes on 2 cores
    python benchmarks/bench_label_scorer.py --full    # more repeats; memory at a 4x larger eval set too

The model is a tiny BERT sequence classifier (`toy.tiny_bert_classifier`: 2 layers, hidden 64, BPE
vocabulary 512) with 5 classes (quintiles of the text length), briefly fine-tuned on half of the
standard-library docstrings; the eval set reuses the other half cyclically (4,000 examples, at most
48 tokens, eval batch 16), so one plain `evaluate()` takes about 0.9 s on an idle core (1-2 s when
the shared machine is busy; 2,000 examples took only 0.45 s idle). wandb is disabled
(WANDB_MODE=disabled): LabelScorer's wandb media (confusion-matrix chart and table) are built
lazily only when wandb is on, so their cost is NOT in these timings; its console confusion matrix is
(printed into a swallowed buffer).

1. Eval time. One Trainer, one model; before each `trainer.evaluate()` it is switched to one of:
     - plain:         no metrics at all, the floor (the Trainer keeps no logits, prediction_loss_only);
     - plain (A/A):   the same again, to show what the harness itself reads as a difference;
     - ours:          `LabelScorer(log_confusion_matrix=True)` (added to the callbacks, its forward
                      hook registered; removed again for the other variants);
     - label_metrics: `compute_metrics=label_metrics(...)`: the Trainer accumulates the logits and
                      labels of the whole eval set, then the same metrics are computed.
   Every round runs each variant once, in a seeded random order, after one warm-up round. Reported:
   the median over rounds of the per-round ratio ours / plain (both measured within seconds of
   each other) with a bootstrap 95% interval over rounds, the ratio of pooled medians, the same
   ratio in process CPU time (`time.process_time()`: less sensitive to other processes on a shared
   machine; evaluation runs on one torch thread, no dataloader workers), and
   LabelScorer's own time (its forward hook and its `compute` at the evaluation, timed directly;
   on CPU that is nearly all its direct cost, the rest being its per-batch `on_prediction_step` and
   the console flush, which only the end-to-end times see), over the same round's plain evaluate():
   much less noisy than end-to-end times, though still inflated when the machine is busy. Target:
   ours adds <= 5% to the plain evaluate (judged on the end-to-end median ratio). A cProfile of
   one evaluation with LabelScorer shows where its time goes (printed in full when the target is
   missed), and `compute_label_metrics` alone on 500 to 16,000 rows splits its cost into a fixed
   part and a per-row part. Both methods' metrics must agree (accuracy and F1 exactly, every other
   shared metric to 1e-9).
2. Eval peak memory. Each variant runs in a fresh subprocess: the peak is the kernel's RSS
   high-water mark (VmHWM, reset just before `trainer.evaluate()` via /proc/self/clear_refs),
   cross-checked by a thread sampling RSS every 2 ms, minus RSS just before `evaluate()`. Baseline:
   `compute_metrics=label_metrics(...)` with the Trainer accumulating the full model output. Two
   models: the plain classifier (its output is only N x C logits, so no difference is expected),
   and the same classifier with `output_hidden_states=True`, where the Trainer accumulates every
   layer's hidden states for compute_metrics (N x layers x seq x hidden) while LabelScorer still
   keeps only N x C probabilities. Accuracy and F1 of both methods must agree exactly.

3. Token classification (NER) eval peak memory, each variant in a fresh subprocess as in 2: a
   randomly initialised tiny BERT token classifier with 64 tags (the 5 of a capitalised-run /
   code-word tagging plus unused ones, about the size of OntoNotes' tag set) on 4,000 examples of at
   most 48 tokens (first-subword labels, the other subwords -100). Variants: plain; LabelScorer (keeps
   only the label and arg-max tag of each labelled token: two int32); `compute_metrics=
   label_metrics(task="token_classification")` with the Trainer accumulating the N x seq x 64 logits
   (what `run_ner.py` does); and the same with an arg-max `preprocess_logits_for_metrics` (N x seq
   int64 ids, what a careful user writes). Entity F1 of every method must agree exactly. Run this
   section alone with `--only tokens` (it updates `token_memory` in the results file, leaving the
   other sections as they were).

Results are printed and written to benchmarks/results_label_scorer.json.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import math
import os
import pstats
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/<script>` finds the package

from benchmarks._common import (
    ROOT,
    CostMeter,
    bootstrap_median_ci,
    environment,
    median,
    pass_fail,
    print_rows,
    print_verdict,
    quiet,
    training_args,
    write_json,
)
from benchmarks._memory import RssSampler, print_worker_result, read_status_kib, reset_peak_rss, run_worker

RESULTS_PATH = ROOT / "benchmarks" / "results_label_scorer.json"
SEED = 0
EVAL_TIME_TARGET = 1.05  # LabelScorer evaluate() / plain evaluate(), medians
LABEL_NAMES = ["xs", "s", "m", "l", "xl"]  # quintiles of the docstring length
MIB = 1024 * 1024
NOISE_BYTES = 4 * MIB  # RSS differences below this are allocator / page noise

# 4,000 examples: one plain evaluate() takes about 0.9 s on an idle core (2,000 took 0.45 s) and
# 1-2 s when the shared machine is busy.
QUICK = {
    "eval_examples": 4000,
    "timing_rounds": 18,  # each round: every variant once, seeded random order
    "timing_warmup_rounds": 1,
    "memory_examples": [4000],
    "memory_repeats": 1,
    "metrics_cost_sizes": [500, 2000, 4000, 16000],
}
FULL = {
    "eval_examples": 4000,
    "timing_rounds": 40,
    "timing_warmup_rounds": 2,
    "memory_examples": [4000, 16000],
    "memory_repeats": 2,
    "metrics_cost_sizes": [500, 2000, 4000, 16000, 64000],
}
SHAPE = {
    "max_length": 48,
    "eval_batch_size": 16,
    "train_batch_size": 16,
    "train_steps": 150,
    "learning_rate": 1e-3,
}
TIMING_VARIANTS = ("plain", "plain_aa", "ours", "label_metrics")
MEMORY_VARIANTS = ("plain", "ours", "baseline")
MEMORY_CASES = ("logits", "hidden_states")


# ---------------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------------
def _training_args(output_dir: str, **overrides: Any):
    settings: dict[str, Any] = {
        "per_device_train_batch_size": SHAPE["train_batch_size"],
        "per_device_eval_batch_size": SHAPE["eval_batch_size"],
        "learning_rate": SHAPE["learning_rate"],
    }
    return training_args(output_dir, SEED, **{**settings, **overrides})


def _fmt_mib(n_bytes: float | None) -> str:
    if n_bytes is None:
        return "-"
    return f"{n_bytes / MIB:,.1f} MiB" if abs(n_bytes) < 10 * MIB else f"{n_bytes / MIB:,.0f} MiB"


# ---------------------------------------------------------------------------------------------------
# data and model
# ---------------------------------------------------------------------------------------------------
def _label_of(corpus: list[str]):
    """Class = quintile of the text's character length (learnable from the tokens, all 5 present)."""
    import numpy as np

    thresholds = np.quantile(np.asarray([len(t) for t in corpus]), [0.2, 0.4, 0.6, 0.8])

    def label(text: str) -> int:
        return int(np.searchsorted(thresholds, len(text), side="right"))

    return label


def _classification_dataset(tokenizer, texts: list[str], label_of):
    from datasets import Dataset

    enc = tokenizer(list(texts), truncation=True, max_length=SHAPE["max_length"])
    return Dataset.from_dict(
        {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            "labels": [label_of(t) for t in texts],
        }
    )


def _eval_texts(corpus: list[str], n: int) -> list[str]:
    held_out = corpus[1::2]  # training used corpus[::2]
    return [held_out[i % len(held_out)] for i in range(n)]


def _prepare(state_dir: str, verbose: bool) -> dict[str, Any]:
    """Tokenizer and a briefly fine-tuned 5-class tiny BERT, saved to `state_dir` for the memory workers."""
    import torch
    from transformers import DataCollatorWithPadding, Trainer

    from ft_callbacks import toy

    corpus = toy.stdlib_corpus()
    tokenizer = toy.train_tokenizer(corpus)
    label_of = _label_of(corpus)
    train = _classification_dataset(tokenizer, corpus[::2], label_of)
    model = toy.tiny_bert_classifier(tokenizer, num_labels=len(LABEL_NAMES), seed=SEED)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            model=model,
            args=_training_args(out, max_steps=SHAPE["train_steps"], logging_steps=SHAPE["train_steps"]),
            train_dataset=train,
            data_collator=DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer,
        )
        with quiet(verbose):
            trainer.train()
    train_s = time.perf_counter() - started
    model.eval()
    tokenizer.save_pretrained(state_dir)
    torch.save(model.state_dict(), os.path.join(state_dir, "model.pt"))
    return {
        "corpus": corpus,
        "tokenizer": tokenizer,
        "label_of": label_of,
        "model": model,
        "train_examples": len(train),
        "train_s": train_s,
    }


def _load_model(state_dir: str, hidden_states: bool):
    import torch
    from transformers import PreTrainedTokenizerFast

    from ft_callbacks import toy

    tokenizer = PreTrainedTokenizerFast.from_pretrained(state_dir)
    model = toy.tiny_bert_classifier(tokenizer, num_labels=len(LABEL_NAMES), seed=SEED)
    model.load_state_dict(torch.load(os.path.join(state_dir, "model.pt"), weights_only=True))
    model.config.output_hidden_states = hidden_states
    model.eval()
    return tokenizer, model


# ---------------------------------------------------------------------------------------------------
# 1. eval time
# ---------------------------------------------------------------------------------------------------
class VariantSwitch:
    """One Trainer switched between the variants before each evaluate(): LabelScorer in the callback
    list with its forward hook registered (ours) or neither (the others, as in a Trainer built
    without it); `compute_metrics` set to label_metrics' function (label_metrics) or None."""

    def __init__(self, trainer: Any, scorer: Any, metrics_fn: Any) -> None:
        self.trainer = trainer
        self.scorer = scorer
        self.metrics_fn = metrics_fn

    def _scorer_on(self) -> bool:
        return any(cb is self.scorer for cb in self.trainer.callback_handler.callbacks)

    def set(self, variant: str) -> None:
        ours = variant == "ours"
        if ours and not self._scorer_on():
            self.trainer.add_callback(self.scorer)
            self.scorer._attach(self.trainer.model)  # registers its forward hook again
        elif not ours and self._scorer_on():
            self.trainer.remove_callback(self.scorer)
            if self.scorer._handle is not None:
                self.scorer._handle.remove()
            self.scorer._handle = None
            self.scorer._model = None
        self.trainer.compute_metrics = self.metrics_fn if variant == "label_metrics" else None
        hooks = len(self.trainer.model._forward_hooks)
        assert hooks == (1 if ours else 0), f"{variant}: {hooks} forward hooks on the model"


def _profile_summary(prof: cProfile.Profile, top: int = 15) -> dict[str, Any]:
    stats = pstats.Stats(prof)
    entries = stats.stats  # type: ignore[attr-defined]
    total = max((ct for (_cc, _nc, _tt, ct, _callers) in entries.values()), default=0.0)

    def cumulative(file_part: str, name: str) -> float:
        return sum(v[3] for k, v in entries.items() if file_part in k[0] and k[2] == name)

    def short(key: tuple[str, int, str]) -> str:
        path, line, name = key
        for marker in ("site-packages/", "/work/main/"):
            if marker in path:
                path = path.split(marker, 1)[1]
        return f"{path}:{line}({name})"

    ours = [(short(k), v[0], v[3]) for k, v in entries.items() if "ft_callbacks" in k[0] or "sklearn" in k[0]]
    ours.sort(key=lambda r: -r[2])
    hook = cumulative("ft_callbacks/label_scorer.py", "_hook")
    compute = cumulative("ft_callbacks/label_scorer.py", "compute")
    metrics = cumulative("ft_callbacks/core/label_metrics.py", "compute_label_metrics")
    return {
        "evaluate_profiled_s": total,
        "hook_s": hook,
        "compute_s": compute,
        "compute_label_metrics_s": metrics,
        "sklearn_param_validation_s": cumulative("sklearn/utils/_param_validation.py", "wrapper"),
        "label_scorer_share": (hook + compute) / total if total else math.nan,
        "top_ft_callbacks_and_sklearn_by_cumulative": [
            {"function": name, "calls": calls, "cumulative_s": ct} for name, calls, ct in ours[:top]
        ],
    }


def bench_eval_time(cfg: dict[str, Any], prep: dict[str, Any], verbose: bool) -> dict[str, Any]:
    from transformers import DataCollatorWithPadding, Trainer

    from ft_callbacks import LabelScorer, label_metrics

    tokenizer, corpus = prep["tokenizer"], prep["corpus"]
    evaluation = _classification_dataset(tokenizer, _eval_texts(corpus, cfg["eval_examples"]), prep["label_of"])
    scorer = LabelScorer(label_names=LABEL_NAMES, log_confusion_matrix=True)
    hook_meter, compute_meter, metrics_meter = CostMeter(), CostMeter(), CostMeter()
    # Wrapped before the Trainer exists: the hook is registered from this attribute.
    scorer._hook = hook_meter.timed(scorer._hook)
    scorer.compute = compute_meter.timed(scorer.compute)
    metrics_fn = metrics_meter.timed(label_metrics(LABEL_NAMES))
    times: dict[str, list[float]] = {v: [] for v in TIMING_VARIANTS}
    cpu_times: dict[str, list[float]] = {v: [] for v in TIMING_VARIANTS}  # process CPU time, all threads
    direct: dict[str, list[float]] = {"ours": [], "ours_hook": [], "ours_compute": [], "label_metrics": []}
    last: dict[str, dict[str, Any]] = {}
    rng = random.Random(SEED)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            model=prep["model"],
            args=_training_args(out),
            eval_dataset=evaluation,
            data_collator=DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer,
            callbacks=[scorer],
        )
        switch = VariantSwitch(trainer, scorer, metrics_fn)
        rounds = cfg["timing_warmup_rounds"] + cfg["timing_rounds"]
        for round_index in range(rounds):
            order = list(TIMING_VARIANTS)
            rng.shuffle(order)
            warm = round_index < cfg["timing_warmup_rounds"]
            for variant in order:
                switch.set(variant)
                gc.collect()
                metered = hook_meter.seconds, compute_meter.seconds, metrics_meter.seconds
                with quiet(verbose):
                    started, cpu_started = time.perf_counter(), time.process_time()
                    metrics = trainer.evaluate()
                    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
                if warm:
                    continue
                times[variant].append(elapsed)
                cpu_times[variant].append(cpu)
                if variant == "ours":
                    direct["ours_hook"].append(hook_meter.seconds - metered[0])
                    direct["ours_compute"].append(compute_meter.seconds - metered[1])
                    direct["ours"].append(direct["ours_hook"][-1] + direct["ours_compute"][-1])
                elif variant == "label_metrics":
                    direct["label_metrics"].append(metrics_meter.seconds - metered[2])
                last[variant] = metrics
            if not warm:
                done = round_index - cfg["timing_warmup_rounds"] + 1
                print(
                    f"  round {done}/{cfg['timing_rounds']}: "
                    + ", ".join(f"{v} {times[v][-1]:.3f} s" for v in TIMING_VARIANTS),
                    flush=True,
                )

        # Where LabelScorer's time goes: one profiled evaluation with it (and one without, for scale).
        profiles = {}
        for variant in ("plain", "ours"):
            switch.set(variant)
            gc.collect()
            prof = cProfile.Profile()
            with quiet(verbose):
                prof.enable()
                trainer.evaluate()
                prof.disable()
            profiles[variant] = _profile_summary(prof)
        switch.set("ours")

    # Both methods must agree: accuracy and F1 exactly, every other shared metric to rounding.
    ours_m, base_m = last["ours"], last["label_metrics"]
    for key in ("eval_accuracy", "eval_f1"):
        assert ours_m[key] == base_m[key], f"{key}: LabelScorer {ours_m[key]!r} vs label_metrics {base_m[key]!r}"
    shared = sorted(
        k for k in ours_m if k in base_m and k.startswith("eval_") and not k.endswith(("_runtime", "_second"))
    )
    shared = [k for k in shared if k not in ("eval_loss", "eval_model_preparation_time")]
    max_diff = max(abs(ours_m[k] - base_m[k]) for k in shared)
    assert max_diff <= 1e-9, f"metrics disagree by {max_diff}"

    per_round = {v: [t / p for t, p in zip(times[v], times["plain"], strict=True)] for v in TIMING_VARIANTS}
    medians = {v: median(times[v]) for v in TIMING_VARIANTS}
    cpu_per_round = {v: [t / p for t, p in zip(cpu_times[v], cpu_times["plain"], strict=True)] for v in TIMING_VARIANTS}
    ratio = median(per_round["ours"])
    ci = bootstrap_median_ci(per_round["ours"], seed=SEED)
    ours_direct = median(direct["ours"])
    # LabelScorer's own time over the plain evaluate() of the same round (both see the same load).
    direct_ratio = median([1 + d / t for d, t in zip(direct["ours"], times["plain"], strict=True)])
    return {
        "model": "toy.tiny_bert_classifier (2 layers, hidden 64, BPE vocab 512), 5 classes, fine-tuned "
        f"{SHAPE['train_steps']} steps",
        "eval_examples": cfg["eval_examples"],
        "eval_batch_size": SHAPE["eval_batch_size"],
        "max_length": SHAPE["max_length"],
        "wandb": "disabled: wandb media (confusion-matrix chart/table) are not built, so not timed",
        "method": "one Trainer and model, switched between variants before each evaluate(); every round runs "
        "each variant once in a seeded random order; ratios per round, then the median",
        "rounds": cfg["timing_rounds"],
        "warmup_rounds": cfg["timing_warmup_rounds"],
        "times_s": times,
        "median_s": medians,
        "ratio_per_round_median": {v: median(per_round[v]) for v in TIMING_VARIANTS if v != "plain"},
        "ratio_of_pooled_medians": {v: medians[v] / medians["plain"] for v in TIMING_VARIANTS if v != "plain"},
        "ours_ratio": ratio,
        "ours_ratio_ci95": list(ci),
        "cpu_times_s": cpu_times,
        "cpu_median_s": {v: median(cpu_times[v]) for v in TIMING_VARIANTS},
        "cpu_ratio_per_round_median": {v: median(cpu_per_round[v]) for v in TIMING_VARIANTS if v != "plain"},
        "cpu_ratio_ci95": {
            v: bootstrap_median_ci(cpu_per_round[v], seed=SEED) for v in TIMING_VARIANTS if v != "plain"
        },
        "aa_ratio_ci95": bootstrap_median_ci(per_round["plain_aa"], seed=SEED),
        "label_metrics_ratio_ci95": bootstrap_median_ci(per_round["label_metrics"], seed=SEED),
        "ours_vs_label_metrics_per_round_median": median(
            [o / b for o, b in zip(times["ours"], times["label_metrics"], strict=True)]
        ),
        "ours_direct_cost_s": direct["ours"],
        "ours_hook_s": direct["ours_hook"],
        "ours_compute_s": direct["ours_compute"],
        "ours_direct_cost_median_s": ours_direct,
        "ours_hook_median_s": median(direct["ours_hook"]),
        "ours_hook_per_batch_median_s": median(direct["ours_hook"])
        / math.ceil(cfg["eval_examples"] / SHAPE["eval_batch_size"]),
        "ours_compute_median_s": median(direct["ours_compute"]),
        "ours_direct_ratio": direct_ratio,
        "ours_direct_ratio_of_medians": (medians["plain"] + ours_direct) / medians["plain"],
        "label_metrics_compute_metrics_median_s": median(direct["label_metrics"]),
        "profile": profiles,
        "target_max_ratio": EVAL_TIME_TARGET,
        "pass": ratio <= EVAL_TIME_TARGET,
        "ci_spans_target": ci[0] <= EVAL_TIME_TARGET < ci[1],
        "direct_cost_pass": direct_ratio <= EVAL_TIME_TARGET,
        "agreement": {
            "accuracy": ours_m["eval_accuracy"],
            "f1": ours_m["eval_f1"],
            "shared_metrics": len(shared),
            "max_abs_diff": max_diff,
        },
    }


def bench_metrics_cost(cfg: dict[str, Any]) -> dict[str, Any]:
    """compute_label_metrics alone (what LabelScorer.compute and label_metrics both call) on random
    5-class probabilities of N rows: a fixed part (sklearn's input validation, ~11 sklearn calls)
    plus a part growing with N (sorting for the ROC/PR curves)."""
    import numpy as np

    from ft_callbacks.core.label_metrics import compute_label_metrics

    rng = np.random.default_rng(SEED)
    out = {}
    for n in cfg["metrics_cost_sizes"]:
        y = rng.integers(0, len(LABEL_NAMES), size=n)
        probs = rng.dirichlet(np.ones(len(LABEL_NAMES)), size=n)
        times = []
        for _ in range(7):
            started = time.perf_counter()
            compute_label_metrics(y, probabilities=probs, label_names=LABEL_NAMES)
            times.append(time.perf_counter() - started)
        out[str(n)] = median(times[1:])
    sizes = [int(n) for n in out]
    slope = (out[str(sizes[-1])] - out[str(sizes[0])]) / (sizes[-1] - sizes[0])
    return {
        "median_s_by_rows": out,
        "per_row_s": slope,
        "fixed_s": out[str(sizes[0])] - slope * sizes[0],
    }


# ---------------------------------------------------------------------------------------------------
# 2. eval peak memory (each measurement in a fresh subprocess)
# ---------------------------------------------------------------------------------------------------
def memory_worker(variant: str, case: str, n_examples: int, state_dir: str) -> dict[str, Any]:
    """Runs in its own process: peak RSS growth of one trainer.evaluate()."""
    import psutil
    from transformers import DataCollatorWithPadding, Trainer

    from ft_callbacks import LabelScorer, label_metrics, toy

    corpus = toy.stdlib_corpus()
    label_of = _label_of(corpus)
    tokenizer, model = _load_model(state_dir, hidden_states=case == "hidden_states")
    evaluation = _classification_dataset(tokenizer, _eval_texts(corpus, n_examples), label_of)
    warmup = _classification_dataset(tokenizer, _eval_texts(corpus, 32), label_of)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            model=model,
            args=_training_args(out),
            eval_dataset=evaluation,
            data_collator=DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer,
            compute_metrics=label_metrics(LABEL_NAMES) if variant == "baseline" else None,
            callbacks=[LabelScorer(label_names=LABEL_NAMES, log_confusion_matrix=True)] if variant == "ours" else [],
        )
        with quiet(False):
            trainer.evaluate(eval_dataset=warmup)  # lazy one-time set-up is not what we measure
        gc.collect()
        process = psutil.Process()
        before = process.memory_info().rss
        hwm_ok = reset_peak_rss()
        sampler = RssSampler()
        sampler.start()
        started = time.perf_counter()
        with quiet(False):
            metrics = trainer.evaluate()
        elapsed = time.perf_counter() - started
        sampler.stop()
        hwm_kib = read_status_kib("VmHWM") if hwm_ok else None
    peak = max(sampler.peak, hwm_kib * 1024 if hwm_kib is not None else 0)
    lengths = [len(ids) for ids in evaluation["input_ids"]]
    return {
        "variant": variant,
        "case": case,
        "n_examples": n_examples,
        "rss_before": before,
        "peak_rss": peak,
        "extra_peak": peak - before,
        "sampler_extra_peak": sampler.peak - before,
        "hwm_extra_peak": hwm_kib * 1024 - before if hwm_kib is not None else None,
        "hwm_reset": hwm_ok,
        "sampler_samples": sampler.samples,
        "evaluate_s": elapsed,
        "max_tokens": max(lengths),
        "num_hidden_layers": model.config.num_hidden_layers,
        "hidden_size": model.config.hidden_size,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
    }


def bench_memory(cfg: dict[str, Any], state_dir: str, threads: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {}
    plan = [
        (case, n, variant)
        for _ in range(cfg["memory_repeats"])
        for n in cfg["memory_examples"]
        for case in MEMORY_CASES
        for variant in MEMORY_VARIANTS
    ]
    for case, n, variant in plan:
        worker_args = ["--threads", str(threads), "--_memory-worker", variant, case, str(n), state_dir]
        result = run_worker(__file__, worker_args, f"{variant}/{case}@{n}", cwd=ROOT)
        runs.setdefault(f"{case}/{n}/{variant}", []).append(result)
        acc = result["metrics"].get("eval_accuracy")
        print(
            f"  {case:13s} {n:5d} ex  {variant:8s}: extra peak {_fmt_mib(result['extra_peak'])} "
            f"(sampler {_fmt_mib(result['sampler_extra_peak'])}), evaluate {result['evaluate_s']:.2f} s"
            + (f", accuracy {acc:.4f}" if acc is not None else ""),
            flush=True,
        )

    def extra(case: str, n: int, variant: str) -> float:
        return median([r["extra_peak"] for r in runs[f"{case}/{n}/{variant}"]])

    comparisons = []
    for n in cfg["memory_examples"]:
        for case in MEMORY_CASES:
            ours_run = runs[f"{case}/{n}/ours"][0]
            base_run = runs[f"{case}/{n}/baseline"][0]
            om, bm = ours_run["metrics"], base_run["metrics"]
            for key in ("eval_accuracy", "eval_f1"):
                assert om[key] == bm[key], f"{case}@{n}: {key} LabelScorer {om[key]!r} vs baseline {bm[key]!r}"
            shared = [k for k in om if k in bm and k.startswith("eval_") and k not in ("eval_loss",)]
            shared = [k for k in shared if not k.endswith(("_runtime", "_second", "_time"))]
            max_diff = max(abs(om[k] - bm[k]) for k in shared)
            assert max_diff <= 1e-9, f"{case}@{n}: metrics disagree by {max_diff}"
            ours, base, plain = extra(case, n, "ours"), extra(case, n, "baseline"), extra(case, n, "plain")
            c = len(LABEL_NAMES)
            layers, hidden, seq = ours_run["num_hidden_layers"], ours_run["hidden_size"], ours_run["max_tokens"]
            accumulated = n * c * 4 + n * 8  # logits (float32) and labels (int64)
            if case == "hidden_states":  # embeddings + every layer, padded to the longest batch
                accumulated += n * (layers + 1) * seq * hidden * 4
            ours_over = ours - plain
            base_over = base - plain
            comparisons.append(
                {
                    "case": case,
                    "n_examples": n,
                    "ours_extra_peak": ours,
                    "baseline_extra_peak": base,
                    "plain_evaluate_extra_peak": plain,
                    "ratio": base / max(ours, 1),
                    "ours_over_plain": ours_over,
                    "baseline_over_plain": base_over,
                    "ratio_over_plain": base_over / ours_over if ours_over >= NOISE_BYTES else None,
                    "ours_kept_bytes": n * (c + 1) * 8,  # [label, p_0 .. p_C-1] float64 rows
                    "baseline_accumulated_bytes": accumulated,
                    "ours_evaluate_s": median([r["evaluate_s"] for r in runs[f"{case}/{n}/ours"]]),
                    "baseline_evaluate_s": median([r["evaluate_s"] for r in runs[f"{case}/{n}/baseline"]]),
                    "plain_evaluate_s": median([r["evaluate_s"] for r in runs[f"{case}/{n}/plain"]]),
                    "accuracy": om["eval_accuracy"],
                    "f1": om["eval_f1"],
                    "shared_metrics": len(shared),
                    "max_abs_diff": max_diff,
                }
            )
    return {
        "measure": "peak RSS during trainer.evaluate() minus RSS just before it (VmHWM reset + 2 ms sampler), "
        "each run in a fresh subprocess after a warm-up evaluate() on 32 examples",
        "baseline": "compute_metrics=label_metrics(...): the Trainer accumulates the full model output",
        "runs": runs,
        "comparisons": comparisons,
    }


# ---------------------------------------------------------------------------------------------------
# 3. token classification eval peak memory (each measurement in a fresh subprocess)
# ---------------------------------------------------------------------------------------------------
TOKEN_CFG = {"eval_examples": 4000, "num_tags": 64, "max_words": 10, "repeats": 1}
TOKEN_VARIANTS = ("plain", "ours", "baseline_logits", "baseline_argmax")
_BASE_TAGS = ["O", "B-CAP", "I-CAP", "B-CODE", "I-CODE"]


def _token_tags(num_tags: int) -> list[str]:
    extra = [f"{bio}-X{i}" for i in range((num_tags - len(_BASE_TAGS) + 1) // 2) for bio in ("B", "I")]
    return (_BASE_TAGS + extra)[:num_tags]


def _word_tags(words: list[str]) -> list[int]:
    """Runs of capitalised words are CAP entities, words with code punctuation CODE entities."""
    tags, previous = [], None
    for word in words:
        kind = "CODE" if any(c in word for c in "()_.`") else "CAP" if word[:1].isupper() else None
        tags.append(0 if kind is None else _BASE_TAGS.index(f"{'I' if previous == kind else 'B'}-{kind}"))
        previous = kind
    return tags


def _token_dataset(tokenizer, texts: list[str], max_words: int):
    """First-subword alignment as run_ner.py does: the other subwords of a word get -100."""
    from datasets import Dataset

    rows: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    for text in texts:
        words = text.split()[:max_words] or ["empty"]
        tags = _word_tags(words)
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=SHAPE["max_length"])
        labels, previous = [], None
        for word_id in enc.word_ids():
            labels.append(-100 if word_id is None or word_id == previous else tags[word_id])
            previous = word_id
        rows["input_ids"].append(enc["input_ids"])
        rows["attention_mask"].append(enc["attention_mask"])
        rows["labels"].append(labels)
    return Dataset.from_dict(rows)


def token_memory_worker(variant: str, n_examples: int, num_tags: int) -> dict[str, Any]:
    """Runs in its own process: peak RSS growth of one trainer.evaluate() of a token classifier."""
    import psutil
    import torch
    from transformers import BertConfig, BertForTokenClassification, DataCollatorForTokenClassification, Trainer

    from ft_callbacks import toy
    from ft_callbacks.label_scorer import LabelScorer, label_metrics

    corpus = toy.stdlib_corpus()
    tokenizer = toy.train_tokenizer(corpus)
    tags = _token_tags(num_tags)
    torch.manual_seed(SEED)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        max_position_embeddings=tokenizer.model_max_length, pad_token_id=tokenizer.pad_token_id, num_labels=num_tags,
        id2label=dict(enumerate(tags)), label2id={t: i for i, t in enumerate(tags)},
    )  # fmt: skip
    model = BertForTokenClassification(config).eval()
    evaluation = _token_dataset(tokenizer, _eval_texts(corpus, n_examples), TOKEN_CFG["max_words"])
    warmup = _token_dataset(tokenizer, _eval_texts(corpus, 32), TOKEN_CFG["max_words"])
    compute_metrics = label_metrics(tags, task="token_classification") if variant.startswith("baseline") else None
    scorer = LabelScorer() if variant == "ours" else None
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            model=model,
            args=_training_args(out),
            eval_dataset=evaluation,
            data_collator=DataCollatorForTokenClassification(tokenizer),
            processing_class=tokenizer,
            compute_metrics=compute_metrics,
            preprocess_logits_for_metrics=(lambda logits, labels: logits.argmax(-1))
            if variant == "baseline_argmax" else None,
            callbacks=[scorer] if scorer is not None else [],
        )  # fmt: skip
        with quiet(False):
            trainer.evaluate(eval_dataset=warmup)  # lazy one-time set-up is not what we measure
        gc.collect()
        process = psutil.Process()
        before = process.memory_info().rss
        hwm_ok = reset_peak_rss()
        sampler = RssSampler()
        sampler.start()
        started = time.perf_counter()
        with quiet(False):
            metrics = trainer.evaluate()
        elapsed = time.perf_counter() - started
        sampler.stop()
        hwm_kib = read_status_kib("VmHWM") if hwm_ok else None
    peak = max(sampler.peak, hwm_kib * 1024 if hwm_kib is not None else 0)
    labels = evaluation["labels"]
    labelled = sum(sum(1 for v in row if v != -100) for row in labels)
    lengths = [len(row) for row in labels]
    return {
        "variant": variant,
        "n_examples": n_examples,
        "num_tags": num_tags,
        "labelled_tokens": labelled,
        "tokens": sum(lengths),
        "max_tokens": max(lengths),
        "rss_before": before,
        "extra_peak": peak - before,
        "sampler_extra_peak": sampler.peak - before,
        "hwm_reset": hwm_ok,
        "evaluate_s": elapsed,
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
    }


def bench_token_memory(threads: int) -> dict[str, Any]:
    cfg = TOKEN_CFG
    n, num_tags = cfg["eval_examples"], cfg["num_tags"]
    runs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(cfg["repeats"]):
        for variant in TOKEN_VARIANTS:
            worker_args = ["--threads", str(threads), "--_token-worker", variant, str(n), str(num_tags)]
            result = run_worker(__file__, worker_args, f"tokens/{variant}", cwd=ROOT)
            runs.setdefault(variant, []).append(result)
            f1 = result["metrics"].get("eval_entity_f1")
            print(
                f"  tokens {n:5d} ex, {num_tags} tags  {variant:15s}: extra peak {_fmt_mib(result['extra_peak'])}, "
                f"evaluate {result['evaluate_s']:.2f} s" + (f", entity_f1 {f1:.4f}" if f1 is not None else ""),
                flush=True,
            )
    first = runs["ours"][0]
    extra = {v: median([r["extra_peak"] for r in runs[v]]) for v in TOKEN_VARIANTS}
    f1s = {v: runs[v][0]["metrics"].get("eval_entity_f1") for v in TOKEN_VARIANTS if v != "plain"}
    # The Trainer pads every batch's logits to the longest sequence seen so far when it concatenates.
    padded_tokens = n * first["max_tokens"]
    return {
        "config": cfg,
        "measure": "peak RSS during trainer.evaluate() minus RSS just before it (VmHWM reset + 2 ms sampler), "
        "each run in a fresh subprocess after a warm-up evaluate() on 32 examples",
        "runs": runs,
        "extra_peak": extra,
        "ours_kept_bytes": first["labelled_tokens"] * 2 * 4,  # [label, arg-max] int32 per labelled token
        "baseline_logits_accumulated_bytes": padded_tokens * num_tags * 4 + padded_tokens * 8,  # fp32 + labels
        "baseline_argmax_accumulated_bytes": padded_tokens * 8 * 2,  # int64 ids + labels
        "labelled_tokens": first["labelled_tokens"],
        "tokens": first["tokens"],
        "entity_f1": f1s,
        "agree": len({round(v, 12) for v in f1s.values() if v is not None}) == 1 and None not in f1s.values(),
    }


# ---------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------
def table_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    rows: list[tuple[str, str, str, str, str, str]] = [("what", "ours", "baseline", "ratio", "target", "result")]
    et = results["eval_time"]
    med = et["median_s"]
    n = et["eval_examples"]
    rows.append(
        (
            f"evaluate() {n} ex, LabelScorer vs plain (median)",
            f"{med['ours']:.3f} s",
            f"{med['plain']:.3f} s",
            f"{et['ours_ratio']:.4f}",
            f"<= {EVAL_TIME_TARGET}",
            pass_fail(et["pass"]),
        )
    )
    low, high = et["ours_ratio_ci95"]
    noisy = "noisy: spans target" if et["ci_spans_target"] else "info"
    rows.append(("  95% interval of that ratio (bootstrap)", "", "", f"{low:.3f}-{high:.3f}", "(info)", noisy))
    cpu_low, cpu_high = et["cpu_ratio_ci95"]["ours"]
    aa_low, aa_high = et["cpu_ratio_ci95"]["plain_aa"]
    rows.append(
        (
            "  same in process CPU time (median)",
            f"{et['cpu_median_s']['ours']:.3f} s",
            f"{et['cpu_median_s']['plain']:.3f} s",
            f"{et['cpu_ratio_per_round_median']['ours']:.4f}",
            "(info)",
            f"CI {cpu_low:.3f}-{cpu_high:.3f}",
        )
    )
    rows.append(
        (
            "    CPU-time A/A: plain vs plain",
            f"{et['cpu_median_s']['plain_aa']:.3f} s",
            f"{et['cpu_median_s']['plain']:.3f} s",
            f"{et['cpu_ratio_per_round_median']['plain_aa']:.4f}",
            "~1 (info)",
            f"CI {aa_low:.3f}-{aa_high:.3f}",
        )
    )
    rows.append(
        (
            "  LabelScorer's own time (hook + compute)",
            f"{et['ours_direct_cost_median_s'] * 1e3:.1f} ms",
            f"{med['plain']:.3f} s",
            f"{et['ours_direct_ratio']:.4f}",
            f"<= {EVAL_TIME_TARGET}",
            pass_fail(et["direct_cost_pass"]),
        )
    )
    rows.append(
        (
            "    of which forward hook / compute at eval",
            f"{et['ours_hook_median_s'] * 1e3:.1f} ms",
            f"{et['ours_compute_median_s'] * 1e3:.1f} ms",
            "",
            "(info)",
            "info",
        )
    )
    low, high = et["label_metrics_ratio_ci95"]
    rows.append(
        (
            "evaluate(), compute_metrics=label_metrics vs plain",
            f"{med['label_metrics']:.3f} s",
            f"{med['plain']:.3f} s",
            f"{et['ratio_per_round_median']['label_metrics']:.4f}",
            "(info)",
            f"CI {low:.3f}-{high:.3f}",
        )
    )
    rows.append(
        (
            "  its compute_metrics call alone",
            f"{et['label_metrics_compute_metrics_median_s'] * 1e3:.1f} ms",
            "",
            "",
            "(info)",
            "info",
        )
    )
    rows.append(
        (
            "evaluate(), LabelScorer vs label_metrics",
            f"{med['ours']:.3f} s",
            f"{med['label_metrics']:.3f} s",
            f"{et['ours_vs_label_metrics_per_round_median']:.4f}",
            "(info)",
            "info",
        )
    )
    low, high = et["aa_ratio_ci95"]
    rows.append(
        (
            "  harness A/A: plain vs plain",
            f"{med['plain_aa']:.3f} s",
            f"{med['plain']:.3f} s",
            f"{et['ratio_per_round_median']['plain_aa']:.4f}",
            "~1 (info)",
            f"CI {low:.3f}-{high:.3f}",
        )
    )
    for comp in results["memory"]["comparisons"]:
        what = "logits only" if comp["case"] == "logits" else "output_hidden_states"
        ours, base = comp["ours_extra_peak"], comp["baseline_extra_peak"]
        if base < NOISE_BYTES:
            shown = "both ~0"
        elif ours < NOISE_BYTES:  # ours is below the noise floor: only a lower bound is meaningful
            shown = f">{base / NOISE_BYTES:.0f}x less"
        else:
            shown = f"{comp['ratio']:.1f}x less"
        rows.append(
            (
                f"eval extra peak RSS, {comp['n_examples']} ex, {what}",
                _fmt_mib(ours),
                _fmt_mib(base),
                shown,
                "(info)",
                "info",
            )
        )
        ratio = comp["ratio_over_plain"]
        rows.append(
            (
                f"  same, minus plain evaluate() ({_fmt_mib(comp['plain_evaluate_extra_peak'])})",
                _fmt_mib(comp["ours_over_plain"]),
                _fmt_mib(comp["baseline_over_plain"]),
                f"{ratio:.1f}x less" if ratio else f"ours ~0 (<{NOISE_BYTES // MIB} MiB)",
                "(info)",
                "info",
            )
        )
    tokens = results.get("token_memory")
    if tokens:
        extra = tokens["extra_peak"]
        for variant, label in (("baseline_logits", "logits accumulated"), ("baseline_argmax", "arg-max accumulated")):
            ours, base = extra["ours"], extra[variant]
            shown = f"{base / max(ours, NOISE_BYTES):.1f}x less" if base >= NOISE_BYTES else "both ~0"
            rows.append(
                (
                    f"NER eval extra peak RSS, {tokens['config']['eval_examples']} ex, {label}",
                    _fmt_mib(ours),
                    _fmt_mib(base),
                    shown,
                    "(info)",
                    "entity F1 agrees" if tokens["agree"] else "F1 DIFFERS",
                )
            )
    return rows


def print_table(results: dict[str, Any]) -> None:
    rows = table_rows(results)
    print_rows(rows)
    et = results["eval_time"]
    print(
        "eval-time ratio: median over rounds of (variant time / plain time in the same round); wandb disabled, "
        "so wandb media building is not timed"
    )
    ag = et["agreement"]
    print(
        f"agreement: LabelScorer and label_metrics give accuracy {ag['accuracy']:.4f}, F1 {ag['f1']:.4f} (identical); "
        f"{ag['shared_metrics']} shared metrics, max |diff| {ag['max_abs_diff']:.1e}"
    )
    for comp in results["memory"]["comparisons"]:
        print(
            f"  memory {comp['case']}@{comp['n_examples']}: accuracy {comp['accuracy']:.4f}, F1 {comp['f1']:.4f} "
            f"identical; ours keeps {_fmt_mib(comp['ours_kept_bytes'])}, the Trainer accumulates "
            f"{_fmt_mib(comp['baseline_accumulated_bytes'])} for compute_metrics; evaluate "
            f"{comp['ours_evaluate_s']:.2f} s (ours) vs {comp['baseline_evaluate_s']:.2f} s (baseline)"
        )
    prof = et["profile"]["ours"]
    print(
        f"profile (one evaluate() with LabelScorer under cProfile, {prof['evaluate_profiled_s']:.2f} s): hook "
        f"{prof['hook_s'] * 1e3:.1f} ms, compute {prof['compute_s'] * 1e3:.1f} ms (compute_label_metrics "
        f"{prof['compute_label_metrics_s'] * 1e3:.1f} ms, of which sklearn's parameter-validated calls "
        f"{prof['sklearn_param_validation_s'] * 1e3:.1f} ms): {prof['label_scorer_share'] * 100:.1f}% of it"
    )
    mc = results["metrics_cost"]
    print(
        "compute_label_metrics alone, 5 classes: "
        + ", ".join(f"{int(n):,} rows {t * 1e3:.1f} ms" for n, t in mc["median_s_by_rows"].items())
        + f" (about {mc['fixed_s'] * 1e3:.0f} ms fixed + {mc['per_row_s'] * 1e6:.1f} us per row)"
    )
    if not et["pass"] or not et["direct_cost_pass"]:
        print("eval-time target missed; where LabelScorer's time goes (cumulative, under cProfile):")
        for entry in prof["top_ft_callbacks_and_sklearn_by_cumulative"]:
            print(f"    {entry['cumulative_s'] * 1e3:8.1f} ms  {entry['calls']:6d} calls  {entry['function']}")


def _only_tokens(args: Any) -> dict[str, Any]:
    """`--only tokens`: the NER memory section alone, written into the existing results file."""
    import json

    import torch
    import transformers

    started = time.perf_counter()
    print(
        f"LabelScorer benchmark, token classification memory only, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, {os.cpu_count()} CPUs, torch threads {args.threads}",
        flush=True,
    )
    token_memory = bench_token_memory(args.threads)
    token_memory["environment"] = environment(args.threads)
    token_memory["elapsed_s"] = time.perf_counter() - started
    path = Path(args.output)
    results = json.loads(path.read_text()) if path.exists() else {}
    results["token_memory"] = token_memory
    extra = token_memory["extra_peak"]
    print(
        f"  ours keeps {_fmt_mib(token_memory['ours_kept_bytes'])} ({token_memory['labelled_tokens']:,} labelled "
        f"tokens x 2 int32); the Trainer accumulates {_fmt_mib(token_memory['baseline_logits_accumulated_bytes'])} "
        f"of logits, {_fmt_mib(token_memory['baseline_argmax_accumulated_bytes'])} of arg-max ids\n"
        f"  extra peak RSS: plain {_fmt_mib(extra['plain'])}, ours {_fmt_mib(extra['ours'])}, logits baseline "
        f"{_fmt_mib(extra['baseline_logits'])}, arg-max baseline {_fmt_mib(extra['baseline_argmax'])}; entity F1 "
        f"{'agrees' if token_memory['agree'] else 'DIFFERS'}: {token_memory['entity_f1']}"
    )
    if "table" in results and "eval_time" in results:
        results["table"] = [list(r) for r in table_rows(results)]
    write_json(results, path)
    print(f"results written to {path}")
    return {"token_memory": token_memory, "exit_code": 0 if token_memory["agree"] else 1}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="more repeats; memory at 8,000 examples too")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier timings)")
    parser.add_argument("--output", default=str(RESULTS_PATH), help="where to write the JSON results")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed (command line)")
    parser.add_argument("--verbose", action="store_true", help="show the Trainer's own console output")
    parser.add_argument(
        "--_memory-worker", nargs=4, metavar=("VARIANT", "CASE", "N", "STATE_DIR"), help=argparse.SUPPRESS
    )
    parser.add_argument("--_token-worker", nargs=3, metavar=("VARIANT", "N", "NUM_TAGS"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--only", choices=["tokens"], help="run one section only and update it in the results file (tokens: NER memory)"
    )
    args = parser.parse_args(argv)

    import datasets
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    if args._memory_worker:
        variant, case, n, state_dir = args._memory_worker
        result = memory_worker(variant, case, int(n), state_dir)
        print_worker_result(result)
        return {"memory_worker": result, "exit_code": 0}
    if args._token_worker:
        variant, n, num_tags = args._token_worker
        result = token_memory_worker(variant, int(n), int(num_tags))
        print_worker_result(result)
        return {"memory_worker": result, "exit_code": 0}
    if args.only == "tokens":
        return _only_tokens(args)

    cfg = FULL if args.full else QUICK
    started = time.perf_counter()
    print(
        f"LabelScorer benchmark ({'full' if args.full else 'quick'}), torch {torch.__version__}, "
        f"transformers {transformers.__version__}, {os.cpu_count()} CPUs, torch threads {args.threads}; "
        "wandb disabled (media not built, not timed)"
    )
    with tempfile.TemporaryDirectory() as state_dir:
        prep = _prepare(state_dir, args.verbose)
        print(
            f"  tiny BERT classifier, {len(LABEL_NAMES)} classes, fine-tuned {SHAPE['train_steps']} steps on "
            f"{prep['train_examples']} docstrings in {prep['train_s']:.1f} s",
            flush=True,
        )
        print(
            f"\n[1/2] evaluate() time on {cfg['eval_examples']} examples: {', '.join(TIMING_VARIANTS)} "
            f"({cfg['timing_rounds']} interleaved rounds)",
            flush=True,
        )
        eval_time = bench_eval_time(cfg, prep, args.verbose)
        metrics_cost = bench_metrics_cost(cfg)
        print("\n[2/3] peak memory of one evaluation, one fresh subprocess each", flush=True)
        memory = bench_memory(cfg, state_dir, args.threads)
    print("\n[3/3] token classification: peak memory of one evaluation, one fresh subprocess each", flush=True)
    token_memory = bench_token_memory(args.threads)

    results: dict[str, Any] = {
        "mode": "full" if args.full else "quick",
        "config": cfg,
        "shape": SHAPE,
        "label_names": LABEL_NAMES,
        "environment": {
            **environment(args.threads),
            "wandb_mode": os.environ.get("WANDB_MODE"),
        },
        "eval_time": eval_time,
        "metrics_cost": metrics_cost,
        "memory": memory,
        "token_memory": token_memory,
    }
    results["elapsed_s"] = time.perf_counter() - started
    print_table(results)
    results["all_pass"] = bool(eval_time["pass"]) and bool(token_memory["agree"])
    results["table"] = [list(r) for r in table_rows(results)]
    output = write_json(results, args.output)
    print_verdict(results, output)
    results["exit_code"] = 1 if args.strict and not results["all_pass"] else 0
    return results


if __name__ == "__main__":
    sys.exit(main()["exit_code"])
