"""Benchmark BestCheckpointSaver against the Trainer's own checkpointing, measured in the same run, on CPU.

    python benchmarks/bench_best_checkpoint.py           # quick: about 2-3 minutes on 2 cores
    python benchmarks/bench_best_checkpoint.py --full    # more repeats

Two measurements, each against a baseline of the same run (the machine may be noisy, so timings are
reported as medians over interleaved repeats, with bootstrap intervals):

1. What a short training run writes, and how long it takes. A tiny GPT-2 trained for 120 steps on 40
   standard-library docstrings (small enough that the validation loss first falls, then rises as it
   overfits), evaluated every 10 steps, with:
     - ours:          `BestCheckpointSaver(monitor="eval_loss")`, `save_strategy="no"`;
     - ours + optim:  the same with `save_optimizer=True` (checkpoint content closer to the Trainer's);
     - steps:         the Trainer's `save_strategy="steps"`, `save_steps=eval_steps`, no save_total_limit;
     - best:          the Trainer's `save_strategy="best"`, `metric_for_best_model="eval_loss"`;
     - none:          no saving at all (the control: wall time and bytes of training + evaluation alone).
   Every variant runs once per repeat, in a seeded random order (plus one discarded warm-up round).
   Bytes written: the process's `wchar` counter in /proc/self/io, read just before and after
   `trainer.train()`, minus the control's. `wchar` counts every byte passed to write() by any thread
   of the process, so a checkpoint pruned later, a manifest rewritten three times or a temporary folder
   renamed into place all count, whatever the filesystem and whenever the kernel writes the pages back
   (`write_bytes` is page-granular and 0 on tmpfs, so it is recorded for information only). Cross-check:
   file accounting, i.e. the size of each checkpoint folder at the moment it was written (the
   Trainer's: measured in `on_save`; ours: the `best/save_bytes` the saver logs into
   `state.log_history` for each save, which excludes its small manifest). Also reported: the number of
   checkpoints written, the bytes left in the output dir at the end, the wall time of `train()`, and
   the time spent inside the save calls themselves (`Trainer._save_checkpoint` / the saver's `_save`,
   timed directly: much less noisy than differences of whole-run wall times). Ours fsyncs every file
   it writes (that is what makes it atomic); the Trainer does not fsync.
2. Training step time with vs without the saver, when no save happens: within one Trainer, the saver
   is switched on for one step of every pair and off for the other (seeded random order; off = its
   per-step events return at once), no evaluation during the timed steps (eval_strategy="steps" with
   eval_steps > max_steps, which the saver requires; transformers 5 still evaluates once when training
   ends, after the last timed step), and a timing callback records wall time between
   consecutive `on_step_begin` events. Reported: the median of the on/off ratios over adjacent pairs
   (several fresh Trainers) with a block-bootstrap 95% interval; the same ratio of the main thread's
   CPU time (`time.thread_time`, blind to other processes competing for the cores; torch runs on one
   thread here); the saver's own per-step time (its event handlers, timed directly); and a harness
   check (A/A) with a no-op callback switched the same way.

Results are printed and written to benchmarks/results_best_checkpoint.json.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import random
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
    bootstrap_median_ci,
    environment,
    median,
    noop_callback,
    pass_fail,
    print_rows,
    print_verdict,
    quiet,
    training_args,
    tree_bytes,
    write_json,
)

RESULTS_PATH = ROOT / "benchmarks" / "results_best_checkpoint.json"
SEED = 0
STEP_TIME_TARGET = 1.01  # saver on / off, median step time, no save happening
BYTES_TARGET = 1.0  # ours / baseline bytes written: strictly less
MB = 1e6

QUICK = {
    "train_runs": 6,  # repeats of every checkpointing variant (interleaved)
    "train_warmup_runs": 1,  # discarded rounds first (imports, caches, first fsyncs)
    "timing_runs": 6,  # fresh Trainers, the saver switched on/off step by step
    "timing_pairs": 100,  # timed (on, off) step pairs per run, after the warm-up pairs
    "timing_warmup_pairs": 5,
    "aa_runs": 3,  # the same with a no-op callback in the saver's place: the harness's own bias
}
FULL = {
    "train_runs": 15,
    "train_warmup_runs": 1,
    "timing_runs": 16,
    "timing_pairs": 150,
    "timing_warmup_pairs": 5,
    "aa_runs": 6,
}
TRAIN_SHAPE = {"max_steps": 120, "eval_steps": 10, "train_size": 40, "eval_size": 64, "max_length": 48}
VARIANTS = {
    "ours": 'BestCheckpointSaver(monitor="eval_loss"), save_strategy="no"',
    "ours_optim": 'BestCheckpointSaver(monitor="eval_loss", save_optimizer=True), save_strategy="no"',
    "steps": 'save_strategy="steps", save_steps=eval_steps, save_total_limit=None',
    "best": 'save_strategy="best", metric_for_best_model="eval_loss", save_total_limit=None',
    "none": 'save_strategy="no", no saver (control)',
}
BASELINES = ("steps", "best")


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


def _trainer(lm: dict[str, Any], train, evaluation, output_dir: str, callbacks: list[Any], **overrides: Any):
    from transformers import DataCollatorForLanguageModeling, Trainer

    from ft_callbacks import toy

    tokenizer = lm["tokenizer"]
    return Trainer(
        model=toy.tiny_gpt2(tokenizer, seed=SEED),
        args=_training_args(output_dir, **overrides),
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def _io_counters() -> dict[str, int] | None:
    """This process's I/O counters (all its threads), or None where /proc/self/io cannot be read."""
    try:
        with open("/proc/self/io") as f:
            return {key: int(value) for key, value in (line.split(":") for line in f if ":" in line)}
    except (OSError, ValueError):
        return None


def _timed_method(obj: Any, name: str, sink: list[float]) -> None:
    """Replace `obj.name` (a bound method) by a wrapper that appends each call's wall time to `sink`."""
    fn = getattr(obj, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            sink.append(time.perf_counter() - start)

    setattr(obj, name, wrapper)


# ---------------------------------------------------------------------------------------------------
# 1. bytes written and wall time of a short training run
# ---------------------------------------------------------------------------------------------------
def _save_recorder():
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    class SaveRecorder(TrainerCallback):
        """The Trainer's saves: the size of each checkpoint folder right after it was written."""

        def __init__(self) -> None:
            self.saves: list[dict[str, int]] = []

        def on_save(self, args, state, control, **kwargs):
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            self.saves.append({"step": int(state.global_step), "bytes": tree_bytes(folder)})

    return SaveRecorder()


def _train_run(variant: str, lm: dict[str, Any], verbose: bool) -> dict[str, Any]:
    from ft_callbacks import BestCheckpointSaver

    shape = TRAIN_SHAPE
    recorder = _save_recorder()
    saver = None
    overrides: dict[str, Any] = {}
    if variant in ("ours", "ours_optim"):
        saver = BestCheckpointSaver(monitor="eval_loss", save_optimizer=variant == "ours_optim")
    elif variant == "steps":
        overrides = {"save_strategy": "steps", "save_steps": shape["eval_steps"], "save_total_limit": None}
    elif variant == "best":
        overrides = {
            "save_strategy": "best",
            "metric_for_best_model": "eval_loss",
            "greater_is_better": False,
            "save_total_limit": None,
        }
    callbacks = [recorder] + ([saver] if saver is not None else [])
    save_seconds: list[float] = []
    gc.collect()
    with tempfile.TemporaryDirectory(prefix="bench-best-") as out:
        trainer = _trainer(
            lm,
            lm["small_train"],
            lm["small_eval"],
            out,
            callbacks,
            max_steps=shape["max_steps"],
            eval_strategy="steps",
            eval_steps=shape["eval_steps"],
            logging_steps=shape["eval_steps"],
            **overrides,
        )
        if saver is not None:
            _timed_method(saver, "_save", save_seconds)
        else:
            _timed_method(trainer, "_save_checkpoint", save_seconds)
        with quiet(verbose):
            io_before = _io_counters()
            start, start_cpu = time.perf_counter(), time.process_time()
            trainer.train()
            wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            io_after = _io_counters()
        final_bytes = tree_bytes(out)
        final_entries = sorted(os.listdir(out))
    history = trainer.state.log_history
    if saver is not None:
        logged = [int(e["best/save_bytes"]) for e in history if "best/save_bytes" in e]
        assert len(logged) == len(saver.saves), "the saver's log entries and its saves disagree"
        file_bytes, written = sum(logged), len(saver.saves)
        saved_steps = [s["step"] for s in saver.saves]
    else:
        file_bytes, written = sum(s["bytes"] for s in recorder.saves), len(recorder.saves)
        saved_steps = [s["step"] for s in recorder.saves]
    counters = {}
    if io_before is not None and io_after is not None:
        counters = {key: io_after[key] - io_before[key] for key in io_before if key in io_after}
    return {
        "variant": variant,
        "wall_s": wall,
        "cpu_s": cpu,
        "save_s": sum(save_seconds),
        "save_calls": len(save_seconds),
        "checkpoints_written": written,
        "saved_steps": saved_steps,
        "file_bytes_written": file_bytes,
        "wchar": counters.get("wchar"),
        "write_bytes": counters.get("write_bytes"),
        "cancelled_write_bytes": counters.get("cancelled_write_bytes"),
        "final_bytes": final_bytes,
        "final_entries": final_entries,
        "eval_losses": [round(float(e["eval_loss"]), 6) for e in history if "eval_loss" in e],
    }


def _per_save_seconds(runs: list[dict[str, Any]]) -> list[float]:
    return [run["save_s"] / run["save_calls"] for run in runs if run["save_calls"]]


def _best_strategy_available() -> bool:
    from transformers.trainer_utils import SaveStrategy

    return "best" in {s.value for s in SaveStrategy}


def bench_training_runs(cfg: dict[str, Any], lm: dict[str, Any], verbose: bool) -> dict[str, Any]:
    variants = [v for v in VARIANTS if v != "best" or _best_strategy_available()]
    rng = random.Random(SEED)
    rounds = cfg["train_warmup_runs"] + cfg["train_runs"]
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for r in range(rounds):
        order = list(variants)
        rng.shuffle(order)
        warm = r < cfg["train_warmup_runs"]
        for variant in order:
            result = _train_run(variant, lm, verbose)
            if not warm:
                runs[variant].append(result)
        label = "warm-up" if warm else f"{r - cfg['train_warmup_runs'] + 1}/{cfg['train_runs']}"
        line = ", ".join(f"{v} {runs[v][-1]['wall_s']:.2f} s" if not warm else v for v in order)
        print(f"  round {label}: {line}", flush=True)

    have_io = all(run["wchar"] is not None for rs in runs.values() for run in rs)
    control_wchar = median([run["wchar"] for run in runs["none"]]) if have_io else math.nan
    losses = [run["eval_losses"] for rs in runs.values() for run in rs]
    reference = losses[0]
    same_losses = all(
        len(ls) == len(reference)
        and all(abs(a - b) <= 1e-4 * max(1.0, abs(b)) for a, b in zip(ls, reference, strict=True))
        for ls in losses
    )
    best_index = min(range(len(reference)), key=reference.__getitem__)
    eval_steps = [TRAIN_SHAPE["eval_steps"] * (i + 1) for i in range(len(reference))]

    per_variant: dict[str, dict[str, Any]] = {}
    for variant, rs in runs.items():
        net = [run["wchar"] - control_wchar for run in rs] if have_io else []
        per_variant[variant] = {
            "setting": VARIANTS[variant],
            "checkpoints_written": median([run["checkpoints_written"] for run in rs]),
            "checkpoints_written_each_run": [run["checkpoints_written"] for run in rs],
            "saved_steps": rs[0]["saved_steps"],
            "bytes_written_wchar_net": median(net) if net else None,
            "bytes_written_wchar_net_range": [min(net), max(net)] if net else None,
            "bytes_written_wchar_raw": median([run["wchar"] for run in rs]) if have_io else None,
            "bytes_written_files": median([run["file_bytes_written"] for run in rs]),
            "write_bytes": median([run["write_bytes"] for run in rs]) if have_io else None,
            "cancelled_write_bytes": median([run["cancelled_write_bytes"] for run in rs]) if have_io else None,
            "final_output_dir_bytes": median([run["final_bytes"] for run in rs]),
            "final_output_dir_entries": rs[0]["final_entries"],
            "wall_s_median": median([run["wall_s"] for run in rs]),
            "wall_s_each_run": [run["wall_s"] for run in rs],
            "cpu_s_median": median([run["cpu_s"] for run in rs]),
            "save_s_median": median([run["save_s"] for run in rs]),
            "save_s_per_checkpoint_median": median(per_save) if (per_save := _per_save_seconds(rs)) else None,
        }
        # the two byte counts must tell the same story (the gap: manifests, trainer_state rewrites, ...)
        if have_io and per_variant[variant]["bytes_written_files"]:
            files = per_variant[variant]["bytes_written_files"]
            per_variant[variant]["wchar_vs_files_rel_diff"] = (
                per_variant[variant]["bytes_written_wchar_net"] - files
            ) / files

    def bytes_of(variant: str) -> float:
        pv = per_variant[variant]
        return pv["bytes_written_wchar_net"] if have_io else pv["bytes_written_files"]

    comparisons = []
    for ours in ("ours", "ours_optim"):
        for base in BASELINES:
            if base not in runs:
                continue
            wall_ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(runs[ours], runs[base], strict=True)]
            save_ratios = [
                a["save_s"] / b["save_s"] for a, b in zip(runs[ours], runs[base], strict=True) if b["save_s"] > 0
            ]
            overhead_ours = [a["wall_s"] - c["wall_s"] for a, c in zip(runs[ours], runs["none"], strict=True)]
            overhead_base = [b["wall_s"] - c["wall_s"] for b, c in zip(runs[base], runs["none"], strict=True)]
            bytes_ratio = bytes_of(ours) / bytes_of(base)
            files_ratio = per_variant[ours]["bytes_written_files"] / per_variant[base]["bytes_written_files"]
            primary = ours == "ours"
            comparisons.append(
                {
                    "ours": ours,
                    "baseline": base,
                    "checkpoints_ratio": per_variant[ours]["checkpoints_written"]
                    / per_variant[base]["checkpoints_written"],
                    "bytes_ratio": bytes_ratio,
                    "bytes_ratio_file_accounting": files_ratio,
                    "final_dir_bytes_ratio": per_variant[ours]["final_output_dir_bytes"]
                    / per_variant[base]["final_output_dir_bytes"],
                    "wall_ratio": median(wall_ratios),
                    "wall_ratio_ci95": bootstrap_median_ci(wall_ratios, seed=SEED),
                    "wall_ratio_each_run": wall_ratios,
                    # noise only ever adds time: the fastest runs are another robust estimate
                    "wall_ratio_of_fastest": min(r["wall_s"] for r in runs[ours])
                    / min(r["wall_s"] for r in runs[base]),
                    "save_time_ratio": median(save_ratios),
                    "save_time_ratio_ci95": bootstrap_median_ci(save_ratios, seed=SEED),
                    "wall_overhead_vs_control_s": {"ours": median(overhead_ours), "baseline": median(overhead_base)},
                    "bytes_target_max_ratio": BYTES_TARGET if primary else None,
                    "bytes_pass": bytes_ratio < BYTES_TARGET if primary else None,
                }
            )
    return {
        "shape": dict(TRAIN_SHAPE),
        "model": "tiny GPT-2 (toy.tiny_gpt2: 2 layers, n_embd 64, BPE vocab 512), stdlib corpus",
        "bytes_measure": "/proc/self/io wchar delta around trainer.train(), minus the no-save control's"
        if have_io
        else "file accounting (/proc/self/io unreadable)",
        "cross_check": "file accounting: checkpoint folder size at on_save (Trainer) / best/save_bytes in "
        "log_history (saver, manifest excluded)",
        "tmp_dir": tempfile.gettempdir(),
        "repeats": cfg["train_runs"],
        "eval_steps": eval_steps,
        "eval_losses": reference,
        "best_eval_step": eval_steps[best_index],
        "curve_falls_then_rises": 0 < best_index < len(reference) - 1 and reference[-1] > reference[best_index],
        "same_eval_losses_across_variants": same_losses,
        "control_wchar": control_wchar if have_io else None,
        "variants": per_variant,
        "comparisons": comparisons,
        "pass": all(c["bytes_pass"] for c in comparisons if c["bytes_pass"] is not None),
    }


# ---------------------------------------------------------------------------------------------------
# 2. step time with vs without the saver (no save happening)
# ---------------------------------------------------------------------------------------------------
# The Trainer events that run at every training step (on_log too, when logging); the saver handles
# on_step_begin itself and inherits the others as no-ops, all of which a step pays for.
STEP_EVENTS = ("on_step_begin", "on_substep_end", "on_pre_optimizer_step", "on_optimizer_step", "on_step_end", "on_log")


def _step_switch_class():
    from transformers import TrainerCallback

    class StepSwitch(TrainerCallback):
        """Turns a callback on for one step of every pair of steps and off for the other, in a seeded
        random order, and times every step: one Trainer, one model, one thread, so the on and off steps
        share memory layout, caches and whatever else loads the machine. Off: the callback's per-step
        events return at once. Goes first in the callback list, so that a step's time (from this
        on_step_begin to the next) holds all of that step's work, callbacks included."""

        def __init__(self, target: Any, seed: int) -> None:
            self.target = target
            self.meter = CostMeter()
            self.rng = random.Random(seed)
            self.active = True
            self._pending: list[bool] = []
            self.flags: list[bool] = []
            self.times: list[float] = []
            self.direct: list[float] = []
            self.cpu: list[float] = []  # this thread's CPU time: blind to other processes competing for the cores
            self._begin: float | None = None
            self._begin_cpu = 0.0
            self._metered = 0.0
            for event in STEP_EVENTS:
                setattr(target, event, self._gated(self.meter.timed(getattr(target, event))))

        def _gated(self, fn):
            def wrapper(*args, **kwargs):
                return fn(*args, **kwargs) if self.active else None

            return wrapper

        def on_step_begin(self, args, state, control, **kwargs):
            now, now_cpu = time.perf_counter(), time.thread_time()
            if self._begin is not None:
                self.times.append(now - self._begin)
                self.cpu.append(now_cpu - self._begin_cpu)
                self.direct.append(self.meter.seconds - self._metered)
            if not self._pending:
                self._pending = [True, False]
                self.rng.shuffle(self._pending)
            self.active = self._pending.pop()
            self.flags.append(self.active)
            self._metered = self.meter.seconds
            self._begin_cpu = time.thread_time()
            self._begin = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.active = True

        def pairs(self, warmup_pairs: int) -> list[tuple[float, float, float, float, float]]:
            """(on time, off time, the callback's own time on the on step, on CPU time, off CPU time)
            for each complete pair."""
            out = []
            for i in range(2 * warmup_pairs, len(self.times) - 1, 2):
                a, fa, da, ca = self.times[i], self.flags[i], self.direct[i], self.cpu[i]
                b, db, cb = self.times[i + 1], self.direct[i + 1], self.cpu[i + 1]
                out.append((a, b, da, ca, cb) if fa else (b, a, db, cb, ca))
            return out

    return StepSwitch


def bench_step_time(cfg: dict[str, Any], lm: dict[str, Any], verbose: bool, noop: bool = False) -> dict[str, Any]:
    from ft_callbacks import BestCheckpointSaver

    StepSwitch = _step_switch_class()
    warmup_pairs, timed_pairs = cfg["timing_warmup_pairs"], cfg["timing_pairs"]
    runs_n = cfg["aa_runs"] if noop else cfg["timing_runs"]
    max_steps = 2 * (warmup_pairs + timed_pairs) + 1  # begin-to-begin times: the last step has no successor
    label = "no-op" if noop else "saver"
    runs: list[list[tuple[float, float, float, float, float]]] = []
    for run in range(runs_n):
        target = noop_callback() if noop else BestCheckpointSaver(monitor="eval_loss")
        switch = StepSwitch(target, seed=SEED + run)
        gc.collect()
        with tempfile.TemporaryDirectory(prefix="bench-best-step-") as out:
            trainer = _trainer(
                lm,
                lm["train"],
                lm["eval"],
                out,
                [switch, target],
                max_steps=max_steps,
                eval_strategy="steps",  # the saver needs evaluation on; none runs during the timed steps
                eval_steps=max_steps + 1,
                logging_steps=max_steps + 1,
            )
            with quiet(verbose):
                trainer.train()
        if not noop:
            # transformers 5 evaluates once more when training ends (max_steps % eval_steps != 0), so the
            # saver may save then: after the last timed step, outside every timed interval.
            early = [s["step"] for s in target.saves if s["step"] < max_steps]
            assert not early, f"the saver saved during the timed steps (steps {early})"
        pairs = switch.pairs(warmup_pairs)
        assert len(pairs) == timed_pairs, f"expected {timed_pairs} timed pairs, got {len(pairs)}"
        runs.append(pairs)
        print(
            f"  run {run + 1}/{runs_n}: median step {label} on {median([p[0] for p in pairs]) * 1e3:.2f} ms, "
            f"off {median([p[1] for p in pairs]) * 1e3:.2f} ms, "
            f"paired ratio {median([p[0] / p[1] for p in pairs]):.4f}",
            flush=True,
        )
    every = [p for run in runs for p in run]
    on_median = median([p[0] for p in every])
    off_median = median([p[1] for p in every])
    direct_median = median([p[2] for p in every])
    ratio = median([p[0] / p[1] for p in every])
    ci = block_bootstrap_ci(runs, seed=SEED)
    cpu_ratio = median([p[3] / p[4] for p in every])
    cpu_ci = block_bootstrap_ci(runs, seed=SEED, on=3, off=4)
    return {
        "treatment": "a no-op TrainerCallback (harness check, A/A)"
        if noop
        else 'BestCheckpointSaver(monitor="eval_loss")',
        "method": "one Trainer per run; the callback on for one step of each pair, off for the other "
        "(seeded random order); begin-to-begin step time; no evaluation, no save during the timed steps",
        "train_batch_size": 8,
        "max_length": lm["max_length"],
        "runs": runs_n,
        "timed_pairs_per_run": timed_pairs,
        "warmup_pairs_per_run": warmup_pairs,
        "on_median_step_s": on_median,
        "off_median_step_s": off_median,
        "ratio": ratio,
        "ratio_ci95": list(ci),
        "ratio_of_pooled_medians": on_median / off_median,
        "run_ratios": [median([p[0] / p[1] for p in r]) for r in runs],
        "direct_cost_median_s": direct_median,
        "direct_cost_mean_s": statistics.fmean(p[2] for p in every),
        "cpu_on_median_step_s": median([p[3] for p in every]),
        "cpu_off_median_step_s": median([p[4] for p in every]),
        "cpu_ratio": cpu_ratio,
        "cpu_ratio_ci95": list(cpu_ci),
        "direct_cost_ratio": (off_median + direct_median) / off_median,
        "target_max_ratio": STEP_TIME_TARGET,
        "pass": ratio <= STEP_TIME_TARGET,
        "ci_spans_target": ci[0] <= STEP_TIME_TARGET < ci[1],
        "direct_cost_pass": (off_median + direct_median) / off_median <= STEP_TIME_TARGET,
    }


# ---------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------
def _mb(n_bytes: float | None) -> str:
    return "-" if n_bytes is None else f"{n_bytes / MB:.2f} MB"


def table_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    rows: list[tuple[str, str, str, str, str, str]] = [("what", "ours", "baseline", "ratio", "target", "result")]
    tr = results["training_runs"]
    pv = tr["variants"]

    def bytes_of(variant: str) -> float:
        v = pv[variant]
        return v["bytes_written_wchar_net"] if v["bytes_written_wchar_net"] is not None else v["bytes_written_files"]

    for comp in tr["comparisons"]:
        ours, base = comp["ours"], comp["baseline"]
        tag = f'save_strategy="{base}"'
        if ours == "ours":
            rows.append(
                (
                    f"checkpoints written, 120 steps, vs {tag}",
                    f"{pv[ours]['checkpoints_written']:.0f}",
                    f"{pv[base]['checkpoints_written']:.0f}",
                    f"{comp['checkpoints_ratio']:.3f}",
                    "(info)",
                    "info",
                )
            )
            rows.append(
                (
                    f"  bytes written (all files ever), vs {tag}",
                    _mb(bytes_of(ours)),
                    _mb(bytes_of(base)),
                    f"{comp['bytes_ratio']:.3f}",
                    f"< {BYTES_TARGET:g}",
                    pass_fail(comp["bytes_pass"]),
                )
            )
            rows.append(
                (
                    "  bytes left in output_dir at the end",
                    _mb(pv[ours]["final_output_dir_bytes"]),
                    _mb(pv[base]["final_output_dir_bytes"]),
                    f"{comp['final_dir_bytes_ratio']:.3f}",
                    "(info)",
                    "info",
                )
            )
            low, high = comp["wall_ratio_ci95"]
            rows.append(
                (
                    "  wall time of train() (median)",
                    f"{pv[ours]['wall_s_median']:.2f} s",
                    f"{pv[base]['wall_s_median']:.2f} s",
                    f"{comp['wall_ratio']:.3f}",
                    "(info)",
                    f"CI {low:.3f}-{high:.3f}",
                )
            )
            rows.append(
                (
                    "  time inside the save calls (median)",
                    f"{pv[ours]['save_s_median'] * 1e3:.0f} ms",
                    f"{pv[base]['save_s_median'] * 1e3:.0f} ms",
                    f"{comp['save_time_ratio']:.3f}",
                    "(info)",
                    "info",
                )
            )
        else:
            rows.append(
                (
                    f"bytes written, save_optimizer=True, vs {tag}",
                    _mb(bytes_of(ours)),
                    _mb(bytes_of(base)),
                    f"{comp['bytes_ratio']:.3f}",
                    "(info)",
                    "info",
                )
            )
    st = results["step_time"]
    rows.append(
        (
            "train step time, saver on vs off (median)",
            f"{st['on_median_step_s'] * 1e3:.2f} ms",
            f"{st['off_median_step_s'] * 1e3:.2f} ms",
            f"{st['ratio']:.4f}",
            f"<= {STEP_TIME_TARGET}",
            pass_fail(st["pass"]),
        )
    )
    low, high = st["ratio_ci95"]
    noisy = "noisy: spans target" if st["ci_spans_target"] else "info"
    rows.append(("  95% interval of that ratio (bootstrap)", "", "", f"{low:.4f}-{high:.4f}", "(info)", noisy))
    rows.append(
        (
            "  saver's own time per step (handlers)",
            f"{st['direct_cost_median_s'] * 1e6:.1f} us",
            f"{st['off_median_step_s'] * 1e3:.2f} ms",
            f"{st['direct_cost_ratio']:.5f}",
            f"<= {STEP_TIME_TARGET}",
            pass_fail(st["direct_cost_pass"]),
        )
    )
    low, high = st["cpu_ratio_ci95"]
    rows.append(
        (
            "  same, main-thread CPU time per step",
            f"{st['cpu_on_median_step_s'] * 1e3:.2f} ms",
            f"{st['cpu_off_median_step_s'] * 1e3:.2f} ms",
            f"{st['cpu_ratio']:.4f}",
            "(info)",
            f"CI {low:.4f}-{high:.4f}",
        )
    )
    aa = st["harness_check"]
    low, high = aa["ratio_ci95"]
    rows.append(
        (
            "  harness A/A: no-op callback on vs off",
            f"{aa['on_median_step_s'] * 1e3:.2f} ms",
            f"{aa['off_median_step_s'] * 1e3:.2f} ms",
            f"{aa['ratio']:.4f}",
            "~1 (info)",
            f"CI {low:.3f}-{high:.3f}",
        )
    )
    return rows


def print_table(results: dict[str, Any]) -> None:
    rows = table_rows(results)
    print_rows(rows)
    tr = results["training_runs"]
    print(
        f"bytes: {tr['bytes_measure']}; ratios of medians over {tr['repeats']} interleaved repeats. "
        "wall/save-time ratios: median of per-repeat ratios."
    )
    for variant, pv in tr["variants"].items():
        diff = pv.get("wchar_vs_files_rel_diff")
        print(
            f"  {variant:10s} {pv['checkpoints_written']:4.0f} ckpt, wchar {_mb(pv['bytes_written_wchar_net'])}, "
            f"files {_mb(pv['bytes_written_files'])}"
            + (f" ({diff * 100:+.2f}%)" if diff is not None else "")
            + f", final dir {_mb(pv['final_output_dir_bytes'])}, train() {pv['wall_s_median']:.2f} s, "
            f"saves {pv['save_s_median'] * 1e3:.0f} ms"
        )
    losses = ", ".join(f"{v:.3f}" for v in tr["eval_losses"])
    print(
        f"eval_loss every {tr['shape']['eval_steps']} steps: {losses} (best at step {tr['best_eval_step']}; "
        f"falls then rises: {tr['curve_falls_then_rises']}; identical in every variant: "
        f"{tr['same_eval_losses_across_variants']})"
    )
    print("step-time ratio: median over adjacent (on, off) step pairs; columns: median step with the saver on/off")


def _prepare_lm() -> dict[str, Any]:
    from ft_callbacks import toy

    corpus = toy.stdlib_corpus()
    tokenizer = toy.train_tokenizer(corpus)
    max_length = TRAIN_SHAPE["max_length"]
    return {
        "tokenizer": tokenizer,
        "max_length": max_length,
        # part 1: a small train set that overfits within 120 steps (as in tests/helpers.py)
        "small_train": toy.causal_lm_dataset(corpus[: TRAIN_SHAPE["train_size"]], tokenizer, max_length),
        "small_eval": toy.causal_lm_dataset(corpus[200 : 200 + TRAIN_SHAPE["eval_size"]], tokenizer, max_length),
        # part 2: the step-time set-up of bench_overfit_guard.py
        "train": toy.causal_lm_dataset(corpus[:256], tokenizer, max_length),
        "eval": toy.causal_lm_dataset(corpus[300:364], tokenizer, max_length),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="more repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier timings)")
    parser.add_argument("--output", default=str(RESULTS_PATH), help="where to write the JSON results")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed (command line)")
    parser.add_argument("--verbose", action="store_true", help="show the Trainer's own console output")
    args = parser.parse_args(argv)

    import datasets
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # "Writing model shards" at every save
    datasets.disable_progress_bars()
    cfg = FULL if args.full else QUICK
    started = time.perf_counter()
    print(
        f"BestCheckpointSaver benchmark ({'full' if args.full else 'quick'}), torch {torch.__version__}, "
        f"transformers {transformers.__version__}, {os.cpu_count()} CPUs, torch threads {args.threads}"
    )
    lm = _prepare_lm()

    print(
        f"\n[1/2] {TRAIN_SHAPE['max_steps']} steps, eval every {TRAIN_SHAPE['eval_steps']}: "
        f"{', '.join(VARIANTS)} (interleaved)",
        flush=True,
    )
    training = bench_training_runs(cfg, lm, args.verbose)

    print("\n[2/2] training step time, BestCheckpointSaver switched on/off step by step (no save)", flush=True)
    step_time = bench_step_time(cfg, lm, args.verbose)
    print("  harness check (A/A): a no-op callback in the saver's place", flush=True)
    step_time["harness_check"] = bench_step_time(cfg, lm, args.verbose, noop=True)

    results: dict[str, Any] = {
        "mode": "full" if args.full else "quick",
        "config": cfg,
        "environment": environment(args.threads),
        "training_runs": training,
        "step_time": step_time,
    }
    results["elapsed_s"] = time.perf_counter() - started
    print_table(results)
    results["all_pass"] = bool(training["pass"] and step_time["pass"])
    results["table"] = [list(r) for r in table_rows(results)]
    output = write_json(results, args.output)
    print_verdict(results, output)
    results["exit_code"] = 1 if args.strict and not results["all_pass"] else 0
    return results


if __name__ == "__main__":
    sys.exit(main()["exit_code"])
