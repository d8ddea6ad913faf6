"""Benchmark ForgettingGuard's cost, on CPU and offline.

    python benchmarks/bench_forgetting.py           # quick: about 2 minutes on 2 cores
    python benchmarks/bench_forgetting.py --full    # more repeats, larger limits

Three measurements on a tiny GPT-2 and local lm-eval tasks (a 4-choice multiple-choice set and a
log-likelihood set, written to a temporary folder; nothing is downloaded):

1. One benchmark round (lm-eval's `simple_evaluate` on the live model, `limit` questions per task,
   after one warm-up round) vs one plain `trainer.evaluate()` of the same model on its 64-example eval
   set: median CPU seconds of the process over interleaved repeats, and their ratio. Wall seconds are
   recorded too: on a shared machine they vary with other jobs' load, and they include what CPU time
   of this process does not (reading the task data, the `git` subprocess lm-eval starts each round).
   Information only: a round's cost is what `limit` and `every_n_evals` control.
2. How a round's time grows with `limit`: median seconds at each limit, a least-squares line through
   them, and R^2 (target: linear, R^2 >= 0.95; the intercept is lm-eval's fixed cost per round).
3. Training-step time outside rounds: the guard's own time in the per-step events it receives, timed
   directly (`CostMeter`), over the median step time of the same run (target <= 1.01), plus an A/B of
   whole runs with and without the guard (interleaved, information only: two runs differ by a few
   percent on a shared machine).

Results are printed and written to benchmarks/results_forgetting.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/<script>` finds the package

from benchmarks._common import (
    ROOT,
    CostMeter,
    environment,
    median,
    pass_fail,
    print_rows,
    print_verdict,
    quiet,
    training_args,
    write_json,
)

sys.path.insert(0, str(ROOT / "tests" / "dist_scripts"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    opts = parser.parse_args(argv)
    started = time.perf_counter()
    import torch
    from forgetting_tasks import write_tasks
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainerCallback

    from ft_callbacks import toy
    from ft_callbacks.bench_engine import BenchEngine
    from ft_callbacks.forgetting_guard import ForgettingGuard

    torch.set_num_threads(1)
    repeats = 7 if opts.full else 5
    limits = [50, 100, 200, 400, 800] if opts.full else [50, 100, 200, 400]
    corpus = toy.stdlib_corpus()
    tokenizer = toy.train_tokenizer(corpus)
    folder = Path(tempfile.mkdtemp(prefix="bench_forgetting_"))
    tasks = write_tasks(folder / "tasks", corpus, questions=max(limits))
    model = toy.tiny_gpt2(tokenizer).eval()
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    train = toy.causal_lm_dataset(corpus[:96], tokenizer, 48)
    evaluation = toy.causal_lm_dataset(corpus[200:264], tokenizer, 48)

    # 1 and 2: a round vs evaluate(), and rounds at growing limits (interleaved repeats).
    engines = {limit: BenchEngine(["fg_dirs"], [str(tasks)], limit=limit) for limit in limits}
    for engine in engines.values():
        engine.check()
        with torch.no_grad():
            engine.run(model, tokenizer)  # warm-up: first-call costs (dataset cache, kernels) are not a round's
    trainer = Trainer(model=model, args=training_args(str(folder / "eval"), 0, per_device_eval_batch_size=16),
                      eval_dataset=evaluation, data_collator=collator)  # fmt: skip
    # CPU seconds of this process (one torch thread, no worker processes): other jobs on a shared machine
    # stretch wall time by tens of percent from one repeat to the next, not the work done. Wall seconds kept too.
    round_times: dict[int, list[float]] = {limit: [] for limit in limits}
    round_wall: dict[int, list[float]] = {limit: [] for limit in limits}
    evaluate_times: list[float] = []
    evaluate_wall: list[float] = []
    for _ in range(repeats):
        start, wall = time.process_time(), time.perf_counter()
        with quiet(opts.verbose):
            trainer.evaluate()
        evaluate_times.append(time.process_time() - start)
        evaluate_wall.append(time.perf_counter() - wall)
        for limit, engine in engines.items():
            with torch.no_grad():
                start, wall = time.process_time(), time.perf_counter()
                engine.run(model, tokenizer)
                round_times[limit].append(time.process_time() - start)
                round_wall[limit].append(time.perf_counter() - wall)
    medians = {limit: median(times) for limit, times in round_times.items()}
    xs, ys = list(medians), list(medians.values())
    slope, intercept = statistics.linear_regression(xs, ys)
    fitted = [intercept + slope * x for x in xs]
    mean_y = statistics.fmean(ys)
    r2 = 1 - sum((y - f) ** 2 for y, f in zip(ys, fitted, strict=True)) / sum((y - mean_y) ** 2 for y in ys)
    wall_medians = [median(round_wall[limit]) for limit in limits]
    wall_slope, wall_intercept = statistics.linear_regression(xs, wall_medians)
    wall_mean = statistics.fmean(wall_medians)
    wall_fit = [wall_intercept + wall_slope * x for x in xs]
    wall_r2 = 1 - sum((y - f) ** 2 for y, f in zip(wall_medians, wall_fit, strict=True)) / sum(
        (y - wall_mean) ** 2 for y in wall_medians
    )
    reference_limit = 200 if 200 in medians else limits[-1]

    # 3: step time outside rounds (no evaluation during the timed steps).
    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._last: float | None = None

        def on_step_begin(self, args, state, control, **kwargs):
            now = time.perf_counter()
            if self._last is not None:
                self.times.append(now - self._last)
            self._last = now

    steps = 120 if opts.full else 60

    def run(with_guard: bool) -> tuple[float, float, int]:
        timer, meter = StepTimer(), CostMeter()
        callbacks: list = [timer]
        if with_guard:
            guard = ForgettingGuard(tasks=["fg_dirs"], include_path=str(tasks), limit=25)
            for event in ("on_step_begin", "on_step_end", "on_substep_end", "on_pre_optimizer_step",
                          "on_optimizer_step", "on_log"):  # fmt: skip
                setattr(guard, event, meter.timed(getattr(guard, event)))
            callbacks.append(guard)
        args = training_args(str(folder / "train"), 0, max_steps=steps, eval_strategy="steps", eval_steps=10 * steps,
                             per_device_train_batch_size=8, logging_steps=10, learning_rate=1e-3)  # fmt: skip
        run_trainer = Trainer(model=toy.tiny_gpt2(tokenizer), args=args, train_dataset=train, eval_dataset=evaluation,
                              data_collator=collator, processing_class=tokenizer, callbacks=callbacks)  # fmt: skip
        with quiet(opts.verbose):
            run_trainer.train()
        step_times = timer.times[5:]  # the first steps warm up
        return median(step_times), meter.seconds / steps, len(step_times)

    with_guard, without_guard, own_cost = [], [], []
    for _ in range(3):
        step, cost, _ = run(True)
        with_guard.append(step)
        own_cost.append(cost)
        without_guard.append(run(False)[0])
    step_median = median(with_guard)
    direct_ratio = (step_median + median(own_cost)) / step_median
    ab_ratio = step_median / median(without_guard)

    round_ratio = medians[reference_limit] / median(evaluate_times)
    table = [
        ["what", "ours", "baseline", "ratio", "target", "result"],
        [f"one benchmark round (limit={reference_limit}) vs trainer.evaluate() (64 examples), CPU s",
         f"{medians[reference_limit]:.3f} s", f"{median(evaluate_times):.3f} s", f"{round_ratio:.3g}", "-", "info"],
        *[[f"round CPU time at limit={limit} (wall {median(round_wall[limit]):.2f} s)", f"{medians[limit]:.3f} s",
           "-", "-", "-", "info"] for limit in limits],
        ["round time vs limit: linear fit", f"{slope * 1000:.2f} ms/question + {intercept:.2f} s", "-",
         f"R^2 {r2:.4f}", "R^2 >= 0.95", pass_fail(r2 >= 0.95)],
        ["round wall time vs limit: linear fit (information: other jobs' load)",
         f"{wall_slope * 1000:.2f} ms/question + {wall_intercept:.2f} s", "-", f"R^2 {wall_r2:.4f}", "-", "info"],
        ["train step time outside rounds (guard's own per-step time)", f"{median(own_cost) * 1e6:.1f} us/step",
         f"{step_median * 1000:.2f} ms/step", f"{direct_ratio:.4f}", "<= 1.01", pass_fail(direct_ratio <= 1.01)],
        ["train step time, whole runs with vs without the guard (A/B)", f"{step_median * 1000:.2f} ms",
         f"{median(without_guard) * 1000:.2f} ms", f"{ab_ratio:.4f}", "-", "info"],
    ]  # fmt: skip
    results = {
        "mode": "full" if opts.full else "quick",
        "config": {"repeats": repeats, "train_runs": 3, "limits": limits, "train_steps": steps, "tasks": ["fg_dirs"]},
        "environment": environment(1),
        "round_cpu_seconds": round_times,
        "round_wall_seconds": round_wall,
        "evaluate_cpu_seconds": evaluate_times,
        "evaluate_wall_seconds": evaluate_wall,
        "linear_fit": {"slope_s_per_question": slope, "intercept_s": intercept, "r2": r2},
        "linear_fit_wall": {"slope_s_per_question": wall_slope, "intercept_s": wall_intercept, "r2": wall_r2},
        "step_seconds": {"with_guard": with_guard, "without_guard": without_guard, "guard_own_per_step": own_cost},
        "elapsed_s": time.perf_counter() - started,
        "table": table,
        "all_pass": bool(r2 >= 0.95 and direct_ratio <= 1.01),
    }
    print_rows(table)
    output = write_json(results, ROOT / "benchmarks" / "results_forgetting.json")
    print_verdict(results, output)


if __name__ == "__main__":
    main()
