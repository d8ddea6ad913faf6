"""Benchmark OverfitGuard against baselines measured in the same run, on CPU and offline.

    python benchmarks/bench_overfit_guard.py           # quick: about 2-3 minutes on 2 cores
    python benchmarks/bench_overfit_guard.py --full    # larger eval sets and more repeats

Three measurements, each against a baseline of the same run (the machine may be noisy, so only
ratios of medians over interleaved repeats are reported):

1. Training step time with `OverfitGuard()` vs without it: a tiny GPT-2 trained on standard-library
   docstrings, no evaluation during the timed steps (eval_steps > max_steps). Within one Trainer,
   OverfitGuard is switched on for one step of every pair and off for the other (seeded random
   order; off = its forward hook unregistered and its per-step events skipped), and a timing
   callback records wall time between consecutive `on_step_begin` events (forward, backward,
   optimizer and every callback of the step). On and off steps thus share the model, memory layout,
   thread and background load; two separate Trainers (even stepping in turns in two threads) showed
   5-10% differences between identical set-ups on this kind of machine. Reported: the ratio of
   median step times (several fresh Trainers) with a block-bootstrap 95% interval; OverfitGuard's
   own time per step (its event handlers and forward hook, timed directly: on CPU that is its whole
   direct cost); and a harness check (A/A) with a no-op callback switched the same way.
2. Extra peak memory of an evaluation: OverfitGuard's exact perplexity (a forward hook, no logits
   kept) vs the classic `compute_metrics` that computes the same exact perplexity from the full
   `eval_pred.predictions` logits the Trainer accumulates. A GPT-2 with a 32k vocabulary but a tiny
   body, random token ids, some rows padded with -100 labels. Each variant runs in a fresh
   subprocess; the peak is the kernel's RSS high-water mark (VmHWM, reset just before
   `trainer.evaluate()` via /proc/self/clear_refs) cross-checked by a thread sampling RSS every
   2 ms, minus RSS just before `evaluate()`. A plain `evaluate()` (neither method) gives the floor
   that the forward passes alone cost. Both methods' perplexities must agree to 1e-4 (relative).
3. The gap between `exp(eval_loss)` and the exact token-weighted perplexity on the trained tiny GPT-2
   with variable-length padded batches.

Results are printed and written to benchmarks/results_overfit_guard.json.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/<script>` finds the package

from benchmarks._common import (
    ROOT,
    CostMeter,
    block_bootstrap_ci,
    environment,
    median,
    noop_callback,
    pass_fail,
    print_rows,
    print_verdict,
    quiet,
    training_args,
    write_json,
)
from benchmarks._memory import RssSampler, print_worker_result, read_status_kib, reset_peak_rss, run_worker

RESULTS_PATH = ROOT / "benchmarks" / "results_overfit_guard.json"
SEED = 0
STEP_TIME_TARGET = 1.02  # guard / baseline median step time
MEMORY_TARGET = 10.0  # baseline extra memory / ours, at the full-size eval set
MEMORY_TARGET_SEQS = 256
CONSTANCY_TARGET = 1.25  # ours' extra memory at the largest vs the smallest eval set
AGREEMENT_RTOL = 1e-4
MIB = 1024 * 1024
NOISE_BYTES = 16 * MIB

QUICK = {
    "timing_runs": 8,  # fresh Trainers, OverfitGuard switched on/off step by step
    "timing_pairs": 100,  # timed (on, off) step pairs per run, after the warm-up pairs
    "timing_warmup_pairs": 5,
    "aa_runs": 3,  # the same with a no-op callback in OverfitGuard's place: the harness's own bias
    "memory_ours_seqs": [64, 256],
    "memory_baseline_seqs": [64],
}
FULL = {
    "timing_runs": 16,
    "timing_pairs": 150,
    "timing_warmup_pairs": 5,
    "aa_runs": 6,
    "memory_ours_seqs": [64, 256],
    "memory_baseline_seqs": [64, 256],
}
MEMORY_SHAPE = {"seq_len": 128, "vocab": 32000, "n_embd": 32, "n_layer": 1, "n_head": 2, "eval_batch_size": 8}


# ---------------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------------
def _training_args(output_dir: str, **overrides: Any):
    settings: dict[str, Any] = {
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "learning_rate": 3e-3,
    }
    return training_args(output_dir, SEED, **{**settings, **overrides})


def _fmt_mib(n_bytes: float | None) -> str:
    return "-" if n_bytes is None else f"{n_bytes / MIB:,.0f} MiB"


# ---------------------------------------------------------------------------------------------------
# 1. step time
# ---------------------------------------------------------------------------------------------------
# OverfitGuard's events that run at every training step (the rest run once per training or evaluation).
STEP_EVENTS = ("on_step_begin", "on_substep_end", "on_pre_optimizer_step", "on_optimizer_step", "on_step_end", "on_log")


def _step_switch_class():
    from transformers import TrainerCallback

    class StepSwitch(TrainerCallback):
        """Turns a callback (OverfitGuard) on for one step of every pair of steps and off for the other,
        in a seeded random order, and times every step: one Trainer, one model, one thread, so the
        on and off steps share memory layout, caches and whatever else loads the machine.

        Off means: the callback's per-step events return at once and its forward hook is not
        registered, as in a Trainer without it. Goes first in the callback list, so that a step's
        time (from this on_step_begin to the next) holds all of that step's work, callbacks included;
        switching the hook happens before the clock starts."""

        def __init__(self, target: Any, seed: int) -> None:
            import random

            self.target = target
            self.meter = CostMeter()
            self.rng = random.Random(seed)
            self.active = True
            self._pending: list[bool] = []
            self.flags: list[bool] = []
            self.times: list[float] = []
            self.direct: list[float] = []  # the meter's seconds within each step
            self._begin: float | None = None
            self._metered = 0.0
            for event in STEP_EVENTS:
                setattr(target, event, self._gated(self.meter.timed(getattr(target, event))))
            probe = getattr(target, "probe", None)
            if probe is not None:  # registered from this attribute when the Trainer is built
                probe._hook = self.meter.timed(probe._hook)

        def _gated(self, fn):
            def wrapper(*args, **kwargs):
                return fn(*args, **kwargs) if self.active else None

            return wrapper

        def _set_hook(self, on: bool) -> None:
            probe = getattr(self.target, "probe", None)
            if probe is None or probe.model is None:
                return
            if on and probe._handle is None:
                probe._handle = probe.model.register_forward_hook(probe._hook, with_kwargs=True)
            elif not on and probe._handle is not None:
                probe._handle.remove()
                probe._handle = None

        def on_step_begin(self, args, state, control, **kwargs):
            now = time.perf_counter()
            if self._begin is not None:
                self.times.append(now - self._begin)
                self.direct.append(self.meter.seconds - self._metered)
            if not self._pending:
                self._pending = [True, False]
                self.rng.shuffle(self._pending)
            self.active = self._pending.pop()
            self.flags.append(self.active)
            self._set_hook(self.active)
            self._metered = self.meter.seconds
            self._begin = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.active = True  # evaluations after training see the callback whole again
            self._set_hook(True)

        def pairs(self, warmup_pairs: int) -> list[tuple[float, float, float]]:
            """(on time, off time, the callback's own time on the on step) for each complete pair."""
            out = []
            for i in range(2 * warmup_pairs, len(self.times) - 1, 2):
                (a, fa, da), (b, _fb, db) = (
                    (self.times[i], self.flags[i], self.direct[i]),
                    (self.times[i + 1], self.flags[i + 1], self.direct[i + 1]),
                )
                out.append((a, b, da) if fa else (b, a, db))
            return out

    return StepSwitch


def _lm_trainer(lm: dict[str, Any], output_dir: str, callbacks: list[Any], max_steps: int):
    from transformers import DataCollatorForLanguageModeling, Trainer

    from ft_callbacks import toy

    tokenizer = lm["tokenizer"]
    return Trainer(
        model=toy.tiny_gpt2(tokenizer, seed=SEED),
        args=_training_args(
            output_dir,
            max_steps=max_steps,
            eval_strategy="steps",
            eval_steps=max_steps + 1,  # OverfitGuard needs eval on; none runs during the timed steps
            logging_steps=max_steps + 1,
        ),
        train_dataset=lm["train"],
        eval_dataset=lm["eval"],
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def bench_step_time(
    cfg: dict[str, Any], lm: dict[str, Any], verbose: bool, noop: bool = False
) -> tuple[dict[str, Any], Any]:
    """Runs of one Trainer each, OverfitGuard switched on and off step by step (see StepSwitch)."""
    from ft_callbacks import OverfitGuard

    StepSwitch = _step_switch_class()
    warmup_pairs, timed_pairs = cfg["timing_warmup_pairs"], cfg["timing_pairs"]
    runs_n = cfg["aa_runs"] if noop else cfg["timing_runs"]
    max_steps = 2 * (warmup_pairs + timed_pairs) + 1  # begin-to-begin times: the last step has no successor
    label = "no-op" if noop else "guard"
    runs: list[list[tuple[float, float, float]]] = []
    trainer = None
    for run in range(runs_n):
        target = noop_callback() if noop else OverfitGuard()
        switch = StepSwitch(target, seed=SEED + run)
        trainer = None
        gc.collect()
        with tempfile.TemporaryDirectory() as out:
            trainer = _lm_trainer(lm, out, [switch, target], max_steps)
            with quiet(verbose):
                trainer.train()
        if not noop:
            passes = target.probe.train_passes
            assert passes >= timed_pairs, f"OverfitGuard's hook saw only {passes} training forwards"
        pairs = switch.pairs(warmup_pairs)
        assert len(pairs) == timed_pairs, f"expected {timed_pairs} timed pairs, got {len(pairs)}"
        runs.append(pairs)
        on = median([p[0] for p in pairs])
        off = median([p[1] for p in pairs])
        print(
            f"  run {run + 1}/{runs_n}: median step {label} on {on * 1e3:.2f} ms, off {off * 1e3:.2f} ms, "
            f"paired ratio {median([p[0] / p[1] for p in pairs]):.4f}",
            flush=True,
        )
    every = [p for run in runs for p in run]
    on_median = median([p[0] for p in every])
    off_median = median([p[1] for p in every])
    direct_median = median([p[2] for p in every])
    # Each pair's two steps ran back to back under the same conditions: the median of their ratios is
    # the estimate (pooled medians would mix runs whose overall speed differs).
    ratio = median([p[0] / p[1] for p in every])
    ci = block_bootstrap_ci(runs, seed=SEED)
    result = {
        "treatment": "a no-op TrainerCallback (harness check, A/A)" if noop else "OverfitGuard()",
        "model": "tiny GPT-2 (toy.tiny_gpt2: 2 layers, n_embd 64, BPE vocab 512), stdlib corpus",
        "method": "one Trainer per run; the callback on for one step of each pair, off for the other "
        "(seeded random order); begin-to-begin step time",
        "train_batch_size": 8,
        "max_length": lm["max_length"],
        "runs": runs_n,
        "timed_pairs_per_run": timed_pairs,
        "warmup_pairs_per_run": warmup_pairs,
        "guard_median_step_s": on_median,
        "baseline_median_step_s": off_median,
        "ratio": ratio,
        "ratio_ci95": list(ci),
        "ratio_of_pooled_medians": on_median / off_median,
        "run_ratios": [median([p[0] / p[1] for p in r]) for r in runs],
        "guard_direct_cost_median_s": direct_median,
        "guard_direct_cost_mean_s": statistics.fmean(p[2] for p in every),
        "direct_cost_ratio": (off_median + direct_median) / off_median,
        "target_max_ratio": STEP_TIME_TARGET,
        "pass": ratio <= STEP_TIME_TARGET,
        "ci_spans_target": ci[0] <= STEP_TIME_TARGET < ci[1],
        "direct_cost_pass": (off_median + direct_median) / off_median <= STEP_TIME_TARGET,
    }
    return result, trainer


# ---------------------------------------------------------------------------------------------------
# 2. eval peak memory (each measurement in a fresh subprocess)
# ---------------------------------------------------------------------------------------------------
def _random_lm_dataset(n_seqs: int, seq_len: int, vocab: int, seed: int):
    """Random token ids, labels = input_ids; every 4th row right-padded (labels -100) to a random length."""
    import numpy as np
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    input_ids = rng.integers(3, vocab, size=(n_seqs, seq_len), dtype=np.int64)
    attention = np.ones_like(input_ids)
    labels = input_ids.copy()
    for row in range(0, n_seqs, 4):
        length = int(rng.integers(seq_len // 8, seq_len))
        input_ids[row, length:] = 0
        attention[row, length:] = 0
        labels[row, length:] = -100
    return Dataset.from_dict(
        {"input_ids": input_ids.tolist(), "attention_mask": attention.tolist(), "labels": labels.tolist()}
    ).with_format("torch")


def exact_perplexity_from_logits(eval_pred) -> dict[str, float]:
    """The classic compute_metrics: exact token-weighted perplexity from the accumulated logits.

    Chunked over rows so that its own temporaries stay small: what it costs is the logits the Trainer
    kept for it (a fair, even favourable, baseline)."""
    import numpy as np
    import torch

    logits = eval_pred.predictions
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    labels = np.asarray(eval_pred.label_ids)
    vocab = logits.shape[-1]
    nll = 0.0
    tokens = 0
    for start in range(0, len(logits), 4):
        chunk = torch.from_numpy(np.ascontiguousarray(logits[start : start + 4, :-1])).float()
        target = torch.from_numpy(labels[start : start + 4, 1:]).long()
        losses = torch.nn.functional.cross_entropy(
            chunk.reshape(-1, vocab), target.reshape(-1), ignore_index=-100, reduction="none"
        )
        nll += float(losses.double().sum())
        tokens += int((target != -100).sum())
    token_loss = nll / tokens
    return {"token_loss": token_loss, "perplexity": math.exp(token_loss), "target_tokens": tokens}


def memory_worker(variant: str, n_seqs: int) -> dict[str, Any]:
    """Runs in its own process: peak RSS growth of one trainer.evaluate()."""
    import psutil
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, default_data_collator

    from ft_callbacks import OverfitGuard

    shape = MEMORY_SHAPE
    torch.manual_seed(SEED)
    config = GPT2Config(
        vocab_size=shape["vocab"],
        n_positions=shape["seq_len"],
        n_embd=shape["n_embd"],
        n_layer=shape["n_layer"],
        n_head=shape["n_head"],
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    evaluation = _random_lm_dataset(n_seqs, shape["seq_len"], shape["vocab"], SEED)
    warmup = _random_lm_dataset(2, shape["seq_len"], shape["vocab"], SEED + 1)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            model=model,
            args=_training_args(out, per_device_eval_batch_size=shape["eval_batch_size"]),
            eval_dataset=evaluation,
            data_collator=default_data_collator,
            compute_metrics=exact_perplexity_from_logits if variant == "baseline" else None,
            callbacks=[OverfitGuard()] if variant == "ours" else [],
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
        metrics = trainer.evaluate()
        elapsed = time.perf_counter() - started
        sampler.stop()
        hwm_kib = read_status_kib("VmHWM") if hwm_ok else None
    peak = max(sampler.peak, hwm_kib * 1024 if hwm_kib is not None else 0)
    return {
        "variant": variant,
        "n_seqs": n_seqs,
        "rss_before": before,
        "peak_rss": peak,
        "extra_peak": peak - before,
        "sampler_extra_peak": sampler.peak - before,
        "hwm_extra_peak": hwm_kib * 1024 - before if hwm_kib is not None else None,
        "sampler_samples": sampler.samples,
        "evaluate_s": elapsed,
        "eval_loss": metrics.get("eval_loss"),
        "perplexity": metrics.get("eval_perplexity"),
        "token_loss": metrics.get("eval_token_loss"),
    }


def bench_memory(cfg: dict[str, Any]) -> dict[str, Any]:
    sizes = sorted(set(cfg["memory_ours_seqs"]) | set(cfg["memory_baseline_seqs"]))
    runs: dict[str, dict[int, dict[str, Any]]] = {"plain": {}, "ours": {}, "baseline": {}}
    plan = [("plain", n) for n in sizes]
    plan += [("ours", n) for n in cfg["memory_ours_seqs"]]
    plan += [("baseline", n) for n in cfg["memory_baseline_seqs"]]
    for variant, n_seqs in plan:
        result = run_worker(__file__, ["--_memory-worker", variant, str(n_seqs)], f"{variant}@{n_seqs}", cwd=ROOT)
        runs[variant][n_seqs] = result
        ppl = result["perplexity"]
        print(
            f"  {variant:8s} {n_seqs:4d} seqs: extra peak {_fmt_mib(result['extra_peak'])} "
            f"(sampler {_fmt_mib(result['sampler_extra_peak'])}), evaluate {result['evaluate_s']:.1f} s, "
            f"perplexity {ppl if ppl is None else f'{ppl:.4f}'}",
            flush=True,
        )

    comparisons = []
    for n_seqs in cfg["memory_baseline_seqs"]:
        if n_seqs not in runs["ours"]:
            continue
        ours, base = runs["ours"][n_seqs], runs["baseline"][n_seqs]
        floor = runs["plain"][n_seqs]["extra_peak"]
        rel = abs(ours["perplexity"] - base["perplexity"]) / abs(base["perplexity"])
        assert rel <= AGREEMENT_RTOL, (
            f"perplexities disagree at {n_seqs} seqs: OverfitGuard {ours['perplexity']!r} vs "
            f"compute_metrics {base['perplexity']!r} (relative difference {rel:.2e})"
        )
        ours_over_floor = max(ours["extra_peak"] - floor, 0)
        base_over_floor = max(base["extra_peak"] - floor, 0)
        ratio = base["extra_peak"] / max(ours["extra_peak"], 1)
        logits_bytes = n_seqs * MEMORY_SHAPE["seq_len"] * MEMORY_SHAPE["vocab"] * 4
        comparisons.append(
            {
                "n_seqs": n_seqs,
                "ours_extra_peak": ours["extra_peak"],
                "baseline_extra_peak": base["extra_peak"],
                "ratio": ratio,
                "plain_evaluate_extra_peak": floor,
                "ours_over_plain": ours_over_floor,
                "baseline_over_plain": base_over_floor,
                # below the resolution of RSS sampling and allocator noise, a ratio means nothing
                "ratio_over_plain": base_over_floor / ours_over_floor if ours_over_floor >= NOISE_BYTES else None,
                "full_logits_bytes": logits_bytes,
                "target_min_ratio": MEMORY_TARGET if n_seqs >= MEMORY_TARGET_SEQS else None,
                "pass": ratio >= MEMORY_TARGET if n_seqs >= MEMORY_TARGET_SEQS else None,
                "ours_perplexity": ours["perplexity"],
                "baseline_perplexity": base["perplexity"],
                "perplexity_rel_diff": rel,
            }
        )
    ours_sizes = sorted(runs["ours"])
    small, large = runs["ours"][ours_sizes[0]], runs["ours"][ours_sizes[-1]]
    growth = large["extra_peak"] / max(small["extra_peak"], 1)
    constancy = {
        "sizes": ours_sizes,
        "extra_peaks": [runs["ours"][n]["extra_peak"] for n in ours_sizes],
        "ratio_largest_to_smallest": growth,
        "target_max_ratio": CONSTANCY_TARGET,
        "pass": growth <= CONSTANCY_TARGET,
        "perplexities": [runs["ours"][n]["perplexity"] for n in ours_sizes],
    }
    return {
        "shape": dict(MEMORY_SHAPE),
        "measure": "peak RSS during trainer.evaluate() minus RSS just before it (VmHWM reset + 2 ms sampler)",
        "runs": {v: {str(n): r for n, r in by_size.items()} for v, by_size in runs.items()},
        "comparisons": comparisons,
        "ours_constancy": constancy,
    }


# ---------------------------------------------------------------------------------------------------
# 3. exp(eval_loss) vs the exact perplexity
# ---------------------------------------------------------------------------------------------------
def bench_eval_loss_gap(trainer, verbose: bool) -> dict[str, Any]:
    """On the trained tiny GPT-2 (variable-length texts, padded per batch): the Trainer's exp(eval_loss),
    OverfitGuard's exact perplexity, and an independent exact computation from the logits."""
    import torch

    with quiet(verbose):
        metrics = trainer.evaluate()
    exp_loss = math.exp(metrics["eval_loss"])
    exact = metrics["eval_perplexity"]

    # Independent check, straight from the logits, plus what the Trainer's loss divides by.
    model = trainer.model
    model.eval()
    nll_total, shifted_total = 0.0, 0
    batch_means_unshifted: list[tuple[float, int]] = []
    batch_means_shifted: list[tuple[float, int]] = []
    with torch.no_grad():
        for batch in trainer.get_eval_dataloader():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            labels = batch["labels"]
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
                reduction="none",
            )
            nll = float(losses.double().sum())
            shifted = int((labels[:, 1:] != -100).sum())
            unshifted = int((labels != -100).sum())
            nll_total += nll
            shifted_total += shifted
            batch_means_unshifted.append((nll / unshifted, len(labels)))
            batch_means_shifted.append((nll / shifted, len(labels)))
    independent = math.exp(nll_total / shifted_total)
    rel = abs(independent - exact) / independent
    assert rel <= AGREEMENT_RTOL, f"OverfitGuard perplexity {exact} vs independent {independent} ({rel:.2e})"

    def weighted(pairs: list[tuple[float, int]]) -> float:
        return math.exp(sum(m * n for m, n in pairs) / sum(n for _, n in pairs))

    return {
        "eval_loss": metrics["eval_loss"],
        "exp_eval_loss": exp_loss,
        "exact_perplexity": exact,
        "independent_exact_perplexity": independent,
        "percent_low": (exact - exp_loss) / exact * 100.0,
        "explained_by": {
            "batch_size_weighted_mean_of_batch_means_unshifted_count": weighted(batch_means_unshifted),
            "batch_size_weighted_mean_of_batch_means_shifted_count": weighted(batch_means_shifted),
        },
        "eval_sequences": len(trainer.eval_dataset),
        "eval_target_tokens": shifted_total,
        "eval_batch_size": trainer.args.per_device_eval_batch_size,
    }


# ---------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------
def print_table(results: dict[str, Any]) -> list[list[str]]:
    rows = [("what", "ours", "baseline", "ratio", "target", "result")]
    st = results["step_time"]
    rows.append(
        (
            "train step time, guard on vs off (median)",
            f"{st['guard_median_step_s'] * 1e3:.2f} ms",
            f"{st['baseline_median_step_s'] * 1e3:.2f} ms",
            f"{st['ratio']:.4f}",
            f"<= {STEP_TIME_TARGET}",
            pass_fail(st["pass"]),
        )
    )
    low, high = st["ratio_ci95"]
    noisy = "noisy: spans target" if low <= STEP_TIME_TARGET < high else "info"
    rows.append(("  95% interval of that ratio (bootstrap)", "", "", f"{low:.3f}-{high:.3f}", "(info)", noisy))
    rows.append(
        (
            "  guard's own time per step (hook+events)",
            f"{st['guard_direct_cost_median_s'] * 1e6:.0f} us",
            f"{st['baseline_median_step_s'] * 1e3:.2f} ms",
            f"{st['direct_cost_ratio']:.4f}",
            f"<= {STEP_TIME_TARGET}",
            pass_fail(st["direct_cost_pass"]),
        )
    )
    aa = st["harness_check"]
    low, high = aa["ratio_ci95"]
    rows.append(
        (
            "  harness A/A: no-op callback on vs off",
            f"{aa['guard_median_step_s'] * 1e3:.2f} ms",
            f"{aa['baseline_median_step_s'] * 1e3:.2f} ms",
            f"{aa['ratio']:.4f}",
            "~1 (info)",
            f"CI {low:.3f}-{high:.3f}",
        )
    )
    mem = results["memory"]
    seq_len, vocab = mem["shape"]["seq_len"], mem["shape"]["vocab"]
    for comp in mem["comparisons"]:
        n = comp["n_seqs"]
        target = f">= {comp['target_min_ratio']:.0f}x" if comp["target_min_ratio"] else "(info)"
        rows.append(
            (
                f"eval extra peak RSS, {n}x{seq_len} tok, V={vocab // 1000}k",
                _fmt_mib(comp["ours_extra_peak"]),
                _fmt_mib(comp["baseline_extra_peak"]),
                f"{comp['ratio']:.1f}x less",
                target,
                pass_fail(comp["pass"]),
            )
        )
        rows.append(
            (
                f"  same, minus plain evaluate() ({_fmt_mib(comp['plain_evaluate_extra_peak'])})",
                _fmt_mib(comp["ours_over_plain"]),
                _fmt_mib(comp["baseline_over_plain"]),
                f"{comp['ratio_over_plain']:.1f}x less" if comp["ratio_over_plain"] else "ours ~0",
                "(info)",
                "info",
            )
        )
    cons = mem["ours_constancy"]
    rows.append(
        (
            f"ours extra peak, {cons['sizes'][-1]} vs {cons['sizes'][0]} seqs",
            f"{_fmt_mib(cons['extra_peaks'][-1])}",
            f"{_fmt_mib(cons['extra_peaks'][0])}",
            f"{cons['ratio_largest_to_smallest']:.2f}x",
            f"<= {CONSTANCY_TARGET}x",
            pass_fail(cons["pass"]),
        )
    )
    print_rows(rows)
    print(
        "step-time ratio: median over adjacent (on, off) step pairs; 'ours'/'baseline' columns: median step "
        "with OverfitGuard on/off"
    )
    print()
    for comp in mem["comparisons"]:
        print(
            f"perplexity agreement @{comp['n_seqs']} seqs: OverfitGuard {comp['ours_perplexity']:.6f} vs "
            f"compute_metrics from logits {comp['baseline_perplexity']:.6f} "
            f"(relative difference {comp['perplexity_rel_diff']:.1e} <= {AGREEMENT_RTOL:g}: OK)"
        )
    gap = results["eval_loss_gap"]
    direction = "low" if gap["percent_low"] >= 0 else "high"
    print(
        f"exp(eval_loss) = {gap['exp_eval_loss']:.4f} vs exact perplexity {gap['exact_perplexity']:.4f} "
        f"({abs(gap['percent_low']):.2f}% {direction})"
    )
    expl = gap["explained_by"]
    print(
        f"  (per-batch mean over unshifted label counts, batch-size weighted: "
        f"{expl['batch_size_weighted_mean_of_batch_means_unshifted_count']:.4f}; over shifted counts: "
        f"{expl['batch_size_weighted_mean_of_batch_means_shifted_count']:.4f}; "
        f"independent exact from logits: {gap['independent_exact_perplexity']:.4f})"
    )
    return [list(r) for r in rows]


def _prepare_lm() -> dict[str, Any]:
    from ft_callbacks import toy

    corpus = toy.stdlib_corpus()
    tokenizer = toy.train_tokenizer(corpus)
    max_length = 48
    return {
        "tokenizer": tokenizer,
        "max_length": max_length,
        "train": toy.causal_lm_dataset(corpus[:256], tokenizer, max_length),
        "eval": toy.causal_lm_dataset(corpus[300:364], tokenizer, max_length),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help="more repeats; baseline memory at 256 seqs too")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier timings)")
    parser.add_argument("--output", default=str(RESULTS_PATH), help="where to write the JSON results")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--verbose", action="store_true", help="show the Trainer's own console output")
    parser.add_argument("--_memory-worker", nargs=2, metavar=("VARIANT", "N_SEQS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    if args._memory_worker:
        variant, n_seqs = args._memory_worker
        result = memory_worker(variant, int(n_seqs))
        print_worker_result(result)
        return 0

    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    cfg = FULL if args.full else QUICK
    started = time.perf_counter()
    print(f"OverfitGuard benchmark ({'full' if args.full else 'quick'}), torch {torch.__version__}, "
          f"transformers {transformers.__version__}, {os.cpu_count()} CPUs, torch threads {args.threads}")

    print("\n[1/3] training step time, OverfitGuard switched on/off step by step", flush=True)
    lm = _prepare_lm()
    torch.manual_seed(SEED)
    step_time, trained = bench_step_time(cfg, lm, args.verbose)
    print("  harness check (A/A): a no-op callback in OverfitGuard's place", flush=True)
    harness, _ = bench_step_time(cfg, lm, args.verbose, noop=True)
    step_time["harness_check"] = harness

    print("\n[2/3] peak memory of one evaluation, one fresh subprocess each", flush=True)
    memory = bench_memory(cfg)

    print("\n[3/3] exp(eval_loss) vs exact perplexity on the trained tiny GPT-2", flush=True)
    gap = bench_eval_loss_gap(trained, args.verbose)

    results = {
        "mode": "full" if args.full else "quick",
        "config": cfg,
        "environment": environment(args.threads),
        "step_time": step_time,
        "memory": memory,
        "eval_loss_gap": gap,
    }
    results["elapsed_s"] = time.perf_counter() - started
    results["table"] = print_table(results)  # the rows `python -m benchmarks` collects
    verdicts = [step_time["pass"], memory["ours_constancy"]["pass"]]
    verdicts += [c["pass"] for c in memory["comparisons"] if c["pass"] is not None]
    results["all_pass"] = all(verdicts)
    output = write_json(results, args.output)
    print_verdict(results, output)
    return 1 if args.strict and not results["all_pass"] else 0


if __name__ == "__main__":
    sys.exit(main())
