"""Benchmark the whole kit (OverfitGuard + BestCheckpointSaver + GenerationScorer) against a bare Trainer.

    python benchmarks/bench_kit_overhead.py           # quick: about 3 minutes on 2 idle cores
    python benchmarks/bench_kit_overhead.py --full    # more repeats

One short training run, with and without the kit, measured in the same process (the machine may be
shared and noisy, so only medians over interleaved repeats and ratios within a repeat are reported):

- the run: a tiny GPT-2 (`toy.tiny_gpt2`: 2 layers, n_embd 64, BPE vocabulary 512) trained for 200
  steps (batch 8, 48 tokens) on 800 standard-library docstrings (`toy.stdlib_corpus()`, enough not
  to overfit within the run, so that OverfitGuard never stops it early: both runs do every step),
  evaluated every 25 steps on 64 other docstrings; same seeds, `save_strategy="no"`, wandb disabled,
  one torch thread;
- bare:  `Trainer(...)` with no callbacks of ours;
- kit:   `callbacks=[OverfitGuard(), BestCheckpointSaver(), GenerationScorer(prompts, references)]`,
  every one at its defaults: OverfitGuard's exact perplexity (a forward hook) and gap/plateau rules,
  the saver writing a checkpoint (fsync'ed, atomic) whenever eval_loss improves, the scorer
  generating greedily (64 new tokens at most, batches of 16) from 32 fixed prompts before the first
  step and at every evaluation and scoring ROUGE + BLEU + BERTScore (offline all-MiniLM-L6-v2) in a
  background thread (what is still running at train end is waited for). Prompts: the first 3 to 20 words of other
  docstrings; references: the 14 words that follow;
- kit_sync (diagnostic): the same kit with `GenerationScorer(..., background=False)`, so that all
  scoring happens inside the evaluations, on the training thread.

Every repeat runs the three (seeded random order, each on a fresh model; one discarded warm-up round of
bare and kit first). Measured around `trainer.train()` only: the kit's construction (the BERTScore
model is loaded when GenerationScorer is built) happens before and is reported apart.

The kit's cost is split by timing its parts directly: `GenerationScorer.generate` and `.score` are
wrapped on the instance (each call's wall time and thread), and so are `GenerationScorer._drain`
(the wait for background scoring at train end), `BestCheckpointSaver._save` (a whole save: weights,
tokenizer, fsyncs, manifest, pruning; the saver's own `best/save_seconds` / `best/save_bytes` log
entries are read back too), OverfitGuard's forward hook (split into training and evaluation passes)
and `Trainer.evaluation_loop` (every variant). A timing callback first in the list stamps every
`on_step_begin` and `on_evaluate`. From those: the hook's calls inside evaluation loops (the second
cross-entropy over the logits, plus the byte count of the targets) and inside `generate` (one per
decoding step, nothing to score there); and how much background scoring slows training while it runs:
the training steps that overlap a background scoring call by at least half, each minus the median of
the steps of the same run that overlap none (or, when fewer than 10 overlap none, the median step of
the same repeat's bare run), summed ("contention"). What is left after every measured
part is reported as "rest" (bookkeeping, logging, partly overlapped steps, run-to-run noise).

Target: everything except generation itself, i.e. (kit train() - time inside generate - scoring time
that blocked the training loop) / bare train(), <= 1.03. "Blocked" scoring: `score` calls on the main
thread (the step-0 baseline round, when it is synchronous) plus the train-end wait for the background
rounds still running. Background scoring is not subtracted: on 2 cores it competes with training for the CPU,
and that cost stays in the ratio. The ratio is computed per repeat (kit and bare of the same repeat)
and its median reported with a bootstrap 95% interval. The diagnostic reports the same ratio for
kit_sync, where all scoring blocks and is subtracted, i.e. what the kit costs besides generating and
scoring, and the kit's train() time with background vs synchronous scoring. Percentages in the table
are shares of the same repeat's bare train() time (medians over repeats).

Results are printed and written to benchmarks/results_kit_overhead.json.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import itertools
import json
import math
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/<script>` finds the package

from benchmarks._common import (
    ROOT,
    bootstrap_median_ci,
    environment,
    median,
    pass_fail,
    print_rows,
    print_verdict,
    prompt_pairs,
    quiet,
    training_args,
    tree_bytes,
    write_json,
)

RESULTS_PATH = ROOT / "benchmarks" / "results_kit_overhead.json"
SEED = 0
TARGET = 1.03  # (kit train() - generation - blocking scoring) / bare train()
MB = 1e6

QUICK = {"rounds": 6, "warmup_rounds": 1}
FULL = {"rounds": 16, "warmup_rounds": 1}
SHAPE = {
    "max_steps": 200,
    "eval_steps": 25,
    "train_docs": 800,  # corpus[:800]
    "eval_docs": 64,  # corpus[900:964]
    "max_length": 48,
    "prompts": 32,  # from corpus[1000:]
    "train_batch_size": 8,
    "eval_batch_size": 16,
}
VARIANTS = ("bare", "kit", "kit_sync")
MIN_FREE_STEPS = 10  # steps free of background scoring needed to serve as the reference step time


# ---------------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------------
def _training_args(output_dir: str, **overrides: Any):
    settings: dict[str, Any] = {
        "per_device_train_batch_size": SHAPE["train_batch_size"],
        "per_device_eval_batch_size": SHAPE["eval_batch_size"],
        "max_steps": SHAPE["max_steps"],
        "eval_strategy": "steps",
        "eval_steps": SHAPE["eval_steps"],
        "logging_steps": SHAPE["eval_steps"],
        "learning_rate": 3e-3,
    }
    return training_args(output_dir, SEED, **{**settings, **overrides})


def _timed(fn, record: list[dict[str, Any]], keep_args: bool = False):
    """Wrap a bound method: every call's start, end and thread (and, if asked, its arguments) into `record`."""

    def wrapper(*args: Any, **kwargs: Any):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            entry: dict[str, Any] = {
                "start": start,
                "end": time.perf_counter(),
                "thread": threading.current_thread().name,
            }
            if keep_args:
                entry["kwargs"] = dict(kwargs)
                entry["nargs"] = len(args)
            record.append(entry)

    return wrapper


def _seconds(calls: list[dict[str, Any]], main: bool | None = None) -> float:
    """Total wall time of recorded calls (main=True: on the main thread only; False: off it)."""
    out = 0.0
    for c in calls:
        if main is None or (c["thread"] == "MainThread") == main:
            out += c["end"] - c["start"]
    return out


def _probe_class():
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        """Stamps the Trainer's events; first in the callback list, so `on_evaluate` is stamped before
        the kit's work at that evaluation and `on_step_begin` before anything of the next step."""

        def __init__(self) -> None:
            self.train_begin = math.nan
            self.train_end = math.nan
            self.step_begins: list[tuple[int, float]] = []
            self.evaluates: list[tuple[int, float]] = []

        def on_train_begin(self, args, state, control, **kwargs):
            self.train_begin = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            self.step_begins.append((state.global_step, time.perf_counter()))

        def on_evaluate(self, args, state, control, **kwargs):
            self.evaluates.append((state.global_step, time.perf_counter()))

        def on_train_end(self, args, state, control, **kwargs):
            self.train_end = time.perf_counter()

    return Probe


# ---------------------------------------------------------------------------------------------------
# one training run
# ---------------------------------------------------------------------------------------------------
def _kit(prep: dict[str, Any], rec: dict[str, list[dict[str, Any]]], background: bool) -> list[Any]:
    from ft_callbacks import BestCheckpointSaver, GenerationScorer, OverfitGuard

    guard = OverfitGuard()
    saver = BestCheckpointSaver()
    started = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        if background:  # the default
            scorer = GenerationScorer(prep["prompts"], prep["references"])
        else:
            scorer = GenerationScorer(prep["prompts"], prep["references"], background=False)
    rec["construct"].append({"start": started, "end": time.perf_counter(), "thread": "MainThread"})
    scorer.generate = _timed(scorer.generate, rec["generate"])
    scorer.score = _timed(scorer.score, rec["score"])
    scorer._drain = _timed(scorer._drain, rec["drain"], keep_args=True)
    saver._save = _timed(saver._save, rec["save"])
    probe = guard.probe
    hook = probe._hook  # registered from this attribute when the Trainer is built / training begins

    def timed_hook(module, args, kwargs, output):
        start = time.perf_counter()
        try:
            return hook(module, args, kwargs, output)
        finally:
            key = "hook_train" if module.training else "hook_not_train"
            rec[key].append({"start": start, "end": time.perf_counter(), "thread": threading.current_thread().name})

    probe._hook = timed_hook
    return [guard, saver, scorer]


def _overlap(a: float, b: float, windows: list[tuple[float, float]]) -> float:
    """Share of the interval [a, b] covered by the (disjoint) windows."""
    return sum(max(0.0, min(b, e) - max(a, s)) for s, e in windows) / (b - a) if b > a else 0.0


def _inside(calls: list[dict[str, Any]], windows: list[tuple[float, float]]) -> list[dict[str, Any]]:
    return [c for c in calls if any(s <= c["start"] <= e for s, e in windows)]


def _run(variant: str, prep: dict[str, Any], verbose: bool) -> dict[str, Any]:
    from transformers import DataCollatorForLanguageModeling, Trainer

    from ft_callbacks import toy

    rec: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ("construct", "generate", "score", "drain", "save", "hook_train", "hook_not_train", "eval_loop")
    }
    probe = _probe_class()()
    callbacks: list[Any] = [probe]
    kit: list[Any] = []
    if variant != "bare":
        kit = _kit(prep, rec, background=variant == "kit")
        callbacks += kit
    tokenizer = prep["tokenizer"]
    gc.collect()
    with tempfile.TemporaryDirectory(prefix="bench-kit-") as out:
        trainer = Trainer(
            model=toy.tiny_gpt2(tokenizer, seed=SEED),
            args=_training_args(out),
            train_dataset=prep["train"],
            eval_dataset=prep["eval"],
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
            processing_class=tokenizer,
            callbacks=callbacks,
        )
        trainer.evaluation_loop = _timed(trainer.evaluation_loop, rec["eval_loop"])
        # stderr too: bert_score prints a warning for every empty generation of the untrained model
        quiet_err = contextlib.nullcontext() if verbose else contextlib.redirect_stderr(io.StringIO())
        with quiet(verbose), quiet_err:
            start, start_cpu = time.perf_counter(), time.process_time()
            trainer.train()
            wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        final_bytes = tree_bytes(out)
    history = trainer.state.log_history
    begins = [t for _, t in probe.step_begins]
    evals = [t for _, t in probe.evaluates]
    # Training steps: begin-to-begin intervals holding no evaluation.
    steps = [(a, b) for a, b in itertools.pairwise(begins) if not any(a < t < b for t in evals)]
    step_times = [b - a for a, b in steps]
    after_eval = [next((b for b in begins if b > t), probe.train_end) - t for t in evals]
    result: dict[str, Any] = {
        "variant": variant,
        "wall_s": wall,
        "cpu_s": cpu,
        "global_step": int(trainer.state.global_step),
        "evaluations": len(evals),
        "eval_losses": [round(float(e["eval_loss"]), 6) for e in history if "eval_loss" in e],
        "before_first_step_s": begins[0] - probe.train_begin if begins else math.nan,
        "train_steps_s": sum(step_times),
        "train_step_median_s": median(step_times),
        "timed_steps": len(step_times),
        "eval_loop_s": _seconds(rec["eval_loop"]),
        "after_on_evaluate_s": sum(after_eval),
        "final_output_dir_bytes": final_bytes,
    }
    if variant == "bare":
        return result
    guard, saver, _ = kit
    waits = [c for c in rec["drain"] if c["kwargs"].get("timeout") not in (None, 0, 0.0)]
    eval_windows = [(c["start"], c["end"]) for c in rec["eval_loop"]]
    gen_windows = [(c["start"], c["end"]) for c in rec["generate"]]
    hook_eval = _inside(rec["hook_not_train"], eval_windows)
    hook_gen = _inside(rec["hook_not_train"], gen_windows)
    # Steps that ran while a background scoring round did (at least half of the step) vs those that did not.
    bg_windows = [(c["start"], c["end"]) for c in rec["score"] if c["thread"] != "MainThread"]
    shares = [_overlap(a, b, bg_windows) for a, b in steps]
    during = [t for t, share in zip(step_times, shares, strict=True) if share >= 0.5]
    other = [t for t, share in zip(step_times, shares, strict=True) if share == 0.0]
    first_score = rec["score"][0] if rec["score"] else None
    result.update(
        {
            "construct_s": _seconds(rec["construct"]),
            "generation_s": _seconds(rec["generate"]),
            "generation_calls": len(rec["generate"]),
            "generation_off_main_s": _seconds(rec["generate"], main=False),
            "scoring_s": _seconds(rec["score"]),
            "scoring_calls": len(rec["score"]),
            "scoring_first_round_s": first_score["end"] - first_score["start"] if first_score else math.nan,
            "scoring_main_s": _seconds(rec["score"], main=True),
            "scoring_background_s": _seconds(rec["score"], main=False),
            "background_rounds": sum(1 for c in rec["score"] if c["thread"] != "MainThread"),
            "train_end_wait_s": _seconds(waits),
            "drain_calls": len(rec["drain"]),
            "drain_nonblocking_s": _seconds(rec["drain"]) - _seconds(waits),
            "saves": len(rec["save"]),
            "save_s": _seconds(rec["save"]),
            "save_logged_seconds": [float(e["best/save_seconds"]) for e in history if "best/save_seconds" in e],
            "save_logged_bytes": [int(e["best/save_bytes"]) for e in history if "best/save_bytes" in e],
            "saved_steps": [s["step"] for s in saver.saves],
            "hook_train_s": _seconds(rec["hook_train"]),
            "hook_train_calls": len(rec["hook_train"]),
            "hook_train_median_s": median([c["end"] - c["start"] for c in rec["hook_train"]]),
            "hook_eval_loop_s": _seconds(hook_eval),
            "hook_eval_loop_calls": len(hook_eval),
            "hook_generation_s": _seconds(hook_gen),
            "hook_generation_calls": len(hook_gen),
            "steps_during_scoring": len(during),
            "steps_otherwise": len(other),
            "step_median_during_scoring_s": median(during),
            # too few steps free of scoring (it may run from step 0 to the end): bench() uses the bare run's
            "step_median_otherwise_s": median(other) if len(other) >= MIN_FREE_STEPS else math.nan,
            "during_steps_s": during,  # used, then dropped, by bench()
            "scored_steps": sorted({int(e["step"]) for e in history if "eval_rougeL" in e}),
            "stop_reason": guard.stop_reason,
        }
    )
    # The target's numerator: everything except generation itself and the scoring that blocked the loop.
    result["blocking_scoring_s"] = result["scoring_main_s"] + result["train_end_wait_s"]
    result["except_generation_s"] = wall - result["generation_s"] - result["blocking_scoring_s"]
    return result


# ---------------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------------
def bench(cfg: dict[str, Any], prep: dict[str, Any], verbose: bool) -> dict[str, Any]:
    rng = random.Random(SEED)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    rounds = cfg["warmup_rounds"] + cfg["rounds"]
    for r in range(rounds):
        warm = r < cfg["warmup_rounds"]
        order = [v for v in VARIANTS if not warm or v != "kit_sync"]  # warm-up: imports, caches, model load
        rng.shuffle(order)
        got = {variant: _run(variant, prep, verbose) for variant in order}
        short = {v: g["global_step"] for v, g in got.items() if g["global_step"] != SHAPE["max_steps"]}
        if short:
            raise AssertionError(f"runs stopped early {short}: the comparison needs every run to train every step")
        label = "warm-up" if warm else f"{r - cfg['warmup_rounds'] + 1}/{cfg['rounds']}"
        bare = got["bare"]["wall_s"]
        parts = [f"bare {bare:.2f} s"]
        for v in ("kit", "kit_sync"):
            if v in got:
                k = got[v]
                parts.append(
                    f"{v} {k['wall_s']:.2f} s (generate {k['generation_s']:.2f}, blocking scoring "
                    f"{k['blocking_scoring_s']:.2f}, saves {k['save_s']:.2f}; rest/bare "
                    f"{k['except_generation_s'] / bare:.3f})"
                )
        print(f"  round {label}: " + ", ".join(parts), flush=True)
        if not warm:
            for v in VARIANTS:
                runs[v].append(got[v])

    kits, syncs, bares = runs["kit"], runs["kit_sync"], runs["bare"]
    pairs = list(zip(kits, bares, strict=True))
    for k, b in [*pairs, *zip(syncs, bares, strict=True)]:
        # Training time lost while background scoring ran: each step that overlapped it, minus the median
        # step of the same run that did not (or of the same repeat's bare run, when too few did not).
        own = not math.isnan(k["step_median_otherwise_s"])
        k["step_reference_s"] = k["step_median_otherwise_s"] if own else b["train_step_median_s"]
        k["step_reference"] = "same run" if own else "bare run"
        k["contention_s"] = sum(t - k["step_reference_s"] for t in k.pop("during_steps_s"))

    def share(key: str, of: list[dict[str, Any]] = kits) -> float:
        """Median over repeats of (this kit run's value / the same repeat's bare train() time)."""
        return median([k[key] / b["wall_s"] for k, b in zip(of, bares, strict=True)])

    def med(key: str, which: list[dict[str, Any]] = kits) -> float:
        return median([run[key] for run in which])

    ratio = [k["except_generation_s"] / b["wall_s"] for k, b in pairs]
    wall_ratio = [k["wall_s"] / b["wall_s"] for k, b in pairs]
    cpu_ratio = [k["cpu_s"] / b["cpu_s"] for k, b in pairs]
    sync_ratio = [k["except_generation_s"] / b["wall_s"] for k, b in zip(syncs, bares, strict=True)]
    bg_over_sync = [k["wall_s"] / s["wall_s"] for k, s in zip(kits, syncs, strict=True)]
    # What is left of the kit's extra time once every measured part is taken out.
    residual = [
        (k["except_generation_s"] - k["save_s"] - k["hook_train_s"] - k["hook_eval_loop_s"] - k["contention_s"]
         - b["wall_s"]) / b["wall_s"]
        for k, b in pairs
    ]  # fmt: skip
    expected_scored = [0, *range(SHAPE["eval_steps"], SHAPE["max_steps"] + 1, SHAPE["eval_steps"])]
    save_bytes = [b for k in kits for b in k["save_logged_bytes"]]
    return {
        "shape": dict(SHAPE),
        "model": "tiny GPT-2 (toy.tiny_gpt2: 2 layers, n_embd 64, 2 heads, BPE vocab 512), stdlib corpus",
        "kit": "OverfitGuard(), BestCheckpointSaver(), GenerationScorer(prompts, references): all defaults",
        "kit_sync": "the same with GenerationScorer(..., background=False) (diagnostic)",
        "repeats": cfg["rounds"],
        "checks": {
            "every_run_trained_all_steps": all(
                r["global_step"] == SHAPE["max_steps"] for rs in runs.values() for r in rs
            ),
            "same_eval_losses_in_every_variant": all(
                r["eval_losses"] == bares[0]["eval_losses"] for rs in runs.values() for r in rs
            ),
            "scores_at_every_evaluation": all(k["scored_steps"] == expected_scored for k in kits + syncs),
            "expected_scored_steps": expected_scored,
            "generation_on_main_thread_only": all(k["generation_off_main_s"] == 0.0 for k in kits + syncs),
            "background_scoring_off_main_thread": all(k["scoring_background_s"] > 0 for k in kits),
            "sync_scoring_on_main_thread": all(k["scoring_background_s"] == 0 for k in syncs),
            "guard_stop_reasons": sorted({k["stop_reason"] for k in kits + syncs}),
        },
        "bare_wall_s": med("wall_s", bares),
        "kit_wall_s": med("wall_s"),
        "kit_sync_wall_s": med("wall_s", syncs),
        "wall_ratio": median(wall_ratio),
        "wall_ratio_ci95": bootstrap_median_ci(wall_ratio, seed=SEED),
        "cpu_ratio": median(cpu_ratio),
        "except_generation_s": med("except_generation_s"),
        "ratio": median(ratio),
        "ratio_ci95": bootstrap_median_ci(ratio, seed=SEED),
        "ratio_each_repeat": ratio,
        "ratio_of_fastest": min(k["except_generation_s"] for k in kits) / min(b["wall_s"] for b in bares),
        "target_max_ratio": TARGET,
        "pass": median(ratio) <= TARGET,
        "sync_diagnostic": {
            "except_generation_and_scoring_s": med("except_generation_s", syncs),
            "ratio": median(sync_ratio),
            "ratio_ci95": bootstrap_median_ci(sync_ratio, seed=SEED),
            "generation_s": med("generation_s", syncs),
            "scoring_s": med("scoring_s", syncs),
            "save_s": med("save_s", syncs),
            "kit_wall_background_over_sync": median(bg_over_sync),
            "kit_wall_background_over_sync_ci95": bootstrap_median_ci(bg_over_sync, seed=SEED),
        },
        "components": {
            "construct_s": med("construct_s"),
            "generation_s": med("generation_s"),
            "generation_calls": med("generation_calls"),
            "generation_share": share("generation_s"),
            "hook_generation_s": med("hook_generation_s"),
            "hook_generation_calls": med("hook_generation_calls"),
            "scoring_s": med("scoring_s"),
            "scoring_calls": med("scoring_calls"),
            "scoring_first_round_s": med("scoring_first_round_s"),
            "scoring_main_s": med("scoring_main_s"),
            "train_end_wait_s": med("train_end_wait_s"),
            "blocking_scoring_s": med("blocking_scoring_s"),
            "blocking_scoring_share": share("blocking_scoring_s"),
            "scoring_background_s": med("scoring_background_s"),
            "background_rounds": med("background_rounds"),
            "drain_nonblocking_s": med("drain_nonblocking_s"),
            "contention_s": med("contention_s"),
            "contention_share": share("contention_s"),
            "steps_during_scoring": med("steps_during_scoring"),
            "step_median_during_scoring_s": med("step_median_during_scoring_s"),
            "step_reference_s": med("step_reference_s"),
            "step_reference": sorted({k["step_reference"] for k in kits}),
            "saves": med("saves"),
            "saved_steps": kits[0]["saved_steps"],
            "save_s": med("save_s"),
            "save_share": share("save_s"),
            "save_s_per_save": median([k["save_s"] / k["saves"] for k in kits if k["saves"]]),
            "save_logged_seconds_median": median([s for k in kits for s in k["save_logged_seconds"]]),
            "save_bytes_per_save": median(save_bytes),
            "final_output_dir_bytes": med("final_output_dir_bytes"),
            "hook_train_s": med("hook_train_s"),
            "hook_train_share": share("hook_train_s"),
            "hook_train_median_per_step_s": med("hook_train_median_s"),
            "hook_eval_loop_s": med("hook_eval_loop_s"),
            "hook_eval_loop_calls": med("hook_eval_loop_calls"),
            "hook_eval_loop_share": share("hook_eval_loop_s"),
            "eval_loop_s": {"kit": med("eval_loop_s"), "bare": med("eval_loop_s", bares)},
            "train_steps_s": {"kit": med("train_steps_s"), "bare": med("train_steps_s", bares)},
            "train_step_median_s": {"kit": med("train_step_median_s"), "bare": med("train_step_median_s", bares)},
            "before_first_step_s": {"kit": med("before_first_step_s"), "bare": med("before_first_step_s", bares)},
            "after_on_evaluate_s": {"kit": med("after_on_evaluate_s"), "bare": med("after_on_evaluate_s", bares)},
            "residual_share": median(residual),
        },
        "runs": runs,
    }


# ---------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------
def _s(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if abs(seconds) < 1 else f"{seconds:.2f} s"


def _pct(share: float) -> str:
    return f"{share * 100:+.1f}%"


def table_rows(res: dict[str, Any]) -> list[list[str]]:
    c = res["components"]
    shape = res["shape"]
    bare = _s(res["bare_wall_s"])
    rows: list[tuple[str, ...]] = [("what", "ours", "baseline", "ratio", "target", "result")]

    def info(what: str, ours: str, baseline: str = "", ratio: str = "", result: str = "info") -> None:
        rows.append((what, ours, baseline, ratio, "(info)", result))

    low, high = res["wall_ratio_ci95"]
    info(
        f"train() wall, kit vs bare Trainer ({shape['max_steps']} steps, eval every {shape['eval_steps']})",
        _s(res["kit_wall_s"]), bare, f"{res['wall_ratio']:.3f}", f"CI {low:.3f}-{high:.3f}",
    )  # fmt: skip
    low, high = res["ratio_ci95"]
    rows.append(
        (
            "everything except generation itself (kit - generate - blocking scoring)",
            _s(res["except_generation_s"]),
            bare,
            f"{res['ratio']:.3f}",
            f"<= {TARGET}",
            pass_fail(res["pass"]),
        )
    )
    noisy = "noisy: spans target" if low <= TARGET < high else "info"
    info("  95% interval of that ratio (bootstrap)", "", "", f"{low:.3f}-{high:.3f}", noisy)
    info(
        f"  generation: {c['generation_calls']:.0f} rounds x {shape['prompts']} prompts (subtracted)",
        _s(c["generation_s"]), bare, _pct(c["generation_share"]),
    )  # fmt: skip
    info(
        f"    of which OverfitGuard's hook on generate's {c['hook_generation_calls']:.0f} forwards",
        _s(c["hook_generation_s"]),
    )
    info(
        f"  scoring that blocked: main thread {_s(c['scoring_main_s'])}, train-end wait (subtracted)",
        _s(c["blocking_scoring_s"]), bare, _pct(c["blocking_scoring_share"]),
    )  # fmt: skip
    info(
        f"  scoring in the background thread ({c['background_rounds']:.0f} rounds; not subtracted)",
        _s(c["scoring_background_s"]),
    )
    info(
        f"  training slowed while background scoring ran ({c['steps_during_scoring']:.0f} steps; kept in)",
        _s(c["contention_s"]), bare, _pct(c["contention_share"]),
    )  # fmt: skip
    info(
        f"    median step during background scoring vs without ({' / '.join(c['step_reference'])})",
        f"{c['step_median_during_scoring_s'] * 1e3:.1f} ms", f"{c['step_reference_s'] * 1e3:.1f} ms",
        f"{c['step_median_during_scoring_s'] / c['step_reference_s']:.2f}",
    )  # fmt: skip
    info(
        f"  checkpoint saves: {c['saves']:.0f}, {c['save_bytes_per_save'] / MB:.2f} MB and "
        f"{_s(c['save_s_per_save'])} each (kept in)",
        _s(c["save_s"]), bare, _pct(c["save_share"]),
    )  # fmt: skip
    info(
        f"  OverfitGuard, 2nd cross-entropy in evaluation ({c['hook_eval_loop_calls']:.0f} batches; kept in)",
        _s(c["hook_eval_loop_s"]), bare, _pct(c["hook_eval_loop_share"]),
    )  # fmt: skip
    info(
        f"  OverfitGuard hook, training passes ({c['hook_train_median_per_step_s'] * 1e6:.0f} us/step median; "
        "kept in)",
        _s(c["hook_train_s"]), bare, _pct(c["hook_train_share"]),
    )  # fmt: skip
    info("  rest (bookkeeping, logging, noise)", "", "", _pct(c["residual_share"]))
    info(
        "  median training step (no evaluation in it), kit vs bare",
        f"{c['train_step_median_s']['kit'] * 1e3:.1f} ms", f"{c['train_step_median_s']['bare'] * 1e3:.1f} ms",
        f"{c['train_step_median_s']['kit'] / c['train_step_median_s']['bare']:.3f}",
    )  # fmt: skip
    sd = res["sync_diagnostic"]
    low, high = sd["ratio_ci95"]
    info(
        "diagnostic: background=False, kit - generate - all scoring, vs bare",
        _s(sd["except_generation_and_scoring_s"]), bare, f"{sd['ratio']:.3f}", f"CI {low:.3f}-{high:.3f}",
    )  # fmt: skip
    low, high = sd["kit_wall_background_over_sync_ci95"]
    info(
        "  kit train() wall, background vs synchronous scoring",
        _s(res["kit_wall_s"]), _s(res["kit_sync_wall_s"]), f"{sd['kit_wall_background_over_sync']:.3f}",
        f"CI {low:.3f}-{high:.3f}",
    )  # fmt: skip
    info("kit construction, before train() (loads the BERTScore model)", _s(c["construct_s"]))
    return [list(r) for r in rows]


def print_table(res: dict[str, Any]) -> list[list[str]]:
    rows = table_rows(res)
    print_rows(rows)
    c = res["components"]
    print(
        f"ratios: median over {res['repeats']} interleaved repeats of the per-repeat ratio; percentages: share of "
        "the same repeat's bare train() time"
    )
    print(
        f"checks: {json.dumps({k: v for k, v in res['checks'].items() if k != 'expected_scored_steps'})}; "
        f"saved at steps {c['saved_steps']}"
    )
    print(
        f"CPU time (all threads) kit / bare: {res['cpu_ratio']:.3f}; first scoring round (embeds the references): "
        f"{_s(c['scoring_first_round_s'])}; before the first step: kit {_s(c['before_first_step_s']['kit'])}, bare "
        f"{_s(c['before_first_step_s']['bare'])}; evaluation loops: kit {_s(c['eval_loop_s']['kit'])}, bare "
        f"{_s(c['eval_loop_s']['bare'])}; training steps in all: kit {_s(c['train_steps_s']['kit'])}, bare "
        f"{_s(c['train_steps_s']['bare'])}"
    )
    return rows


def _prepare() -> dict[str, Any]:
    from ft_callbacks import toy

    corpus = toy.stdlib_corpus()
    tokenizer = toy.train_tokenizer(corpus)
    max_length = SHAPE["max_length"]
    prompts, references = prompt_pairs(corpus[1000:], SHAPE["prompts"])
    return {
        "tokenizer": tokenizer,
        "train": toy.causal_lm_dataset(corpus[: SHAPE["train_docs"]], tokenizer, max_length),
        "eval": toy.causal_lm_dataset(corpus[900 : 900 + SHAPE["eval_docs"]], tokenizer, max_length),
        "prompts": prompts,
        "references": references,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="more repeats")
    parser.add_argument("--rounds", type=int, default=None, help="override the number of timed repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier timings)")
    parser.add_argument("--output", default=str(RESULTS_PATH), help="where to write the JSON results")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the target is missed (command line)")
    parser.add_argument("--verbose", action="store_true", help="show the Trainer's own console output")
    args = parser.parse_args(argv)

    import datasets
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    cfg = dict(FULL if args.full else QUICK)
    if args.rounds is not None:
        cfg["rounds"] = args.rounds
    started = time.perf_counter()
    print(
        f"Kit overhead benchmark ({'full' if args.full else 'quick'}), torch {torch.__version__}, transformers "
        f"{transformers.__version__}, {os.cpu_count()} CPUs, torch threads {args.threads}"
    )
    prep = _prepare()
    import ft_callbacks  # noqa: F401  (its imports, before the collector is frozen)

    # What is in memory now stays: freezing it keeps the gc.collect() before each run cheap.
    gc.collect()
    gc.freeze()
    print(
        f"\n{SHAPE['max_steps']} steps, eval every {SHAPE['eval_steps']}: bare Trainer vs OverfitGuard + "
        f"BestCheckpointSaver + GenerationScorer ({cfg['rounds']} repeats + {cfg['warmup_rounds']} warm-up)",
        flush=True,
    )
    bench_results = bench(cfg, prep, args.verbose)
    results: dict[str, Any] = {
        "mode": "full" if args.full else "quick",
        "config": cfg,
        "environment": {
            **environment(args.threads),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        **bench_results,
    }
    results["elapsed_s"] = time.perf_counter() - started
    results["table"] = print_table(results)
    results["all_pass"] = bool(results["pass"])
    output = write_json(results, args.output)
    print_verdict(results, output)
    results["exit_code"] = 1 if args.strict and not results["all_pass"] else 0
    return results


if __name__ == "__main__":
    sys.exit(main()["exit_code"])
