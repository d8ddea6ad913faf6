"""Benchmark OverfitGuard's early stop against the Trainer's EarlyStoppingCallback on overfitting runs, on CPU.

    python benchmarks/bench_early_stopping.py           # quick: 3 seeds x 3 sizes, eval every 10: ~2-4 min
    python benchmarks/bench_early_stopping.py --full    # 5 seeds x 4 sizes x eval every 10 and 5: ~35 min

What is measured (step and loss counts, not timings: the machine's load does not change them).

A tiny GPT-2 (2 layers, 64 wide, its own 512-token BPE vocabulary) is trained from scratch on the
first N standard-library docstrings (N = 24, 48, 96; 192 as well with --full) and evaluated every
`eval_steps` steps on 64 other docstrings (fixed). Learning rate 1e-3, constant, batch 8, long
enough that the validation loss falls, bottoms out and then clearly rises. For every (seed, N) the
same run (same initial weights, same data order: model seed = Trainer seed = data seed = seed) is
trained once per method:

- full:      no early stopping; `OverfitGuard(patience=None, plateau_patience=None)` only observes, so
             that each evaluation carries the exact token-weighted validation loss `eval_token_loss`;
- hf:        `EarlyStoppingCallback(early_stopping_patience=3)` with `metric_for_best_model="eval_loss"`,
             `load_best_model_at_end=True`, `save_strategy="steps"` at the evaluation cadence (the
             observing OverfitGuard too, for the same curve);
- guard:     `OverfitGuard()` at its defaults (gap rule patience=3, plateau rule plateau_patience=5 on
             eval_loss), with `BestCheckpointSaver(monitor="eval_token_loss", load_best_at_end=True)`
             to keep (and load back at the end) the best weights it saw;
- guard_p2:  ALTERNATIVE SETTING, not the default, clearly labelled: `OverfitGuard(patience=2)`, same saver.
             One fixed setting for every run, not tuned per run.

The validation loss everywhere below is `eval_token_loss` (mean NLL per target token over the whole
eval set), never the Trainer's batch-averaged `eval_loss`, except where the Trainer's callback
itself decides on `eval_loss` (that is how it is configured in practice). Both curves are recorded.

Per run and method:
- steps trained (global_step at the end) and whether the method stopped before max_steps;
- stop lag: evaluations between the full run's validation minimum and the evaluation that stopped
  the run (negative: stopped before the minimum);
- regret: best validation loss reached before the stop vs the full run's minimum, relative;
- kept regret: the validation loss of the weights the method leaves in the model at the end (the
  Trainer's best checkpoint by eval_loss; the saver's best by eval_token_loss), measured by a
  `trainer.evaluate()` after training, vs the full run's minimum.

Checks that the comparison is sound:
- prefix: the stopped runs' curves (steps, eval_token_loss, eval_loss, the window train loss)
  must equal the full run's first evaluations (the largest difference is reported; above 1e-6 the
  measurement is marked invalid, above 1e-4 the benchmark aborts; it is exactly 0 in practice);
- replay: the stopping rules replayed on the full run's curve (the Trainer's counter on eval_loss,
  `OverfitPolicy` on token loss / train loss / eval_loss) must stop at the same evaluation as the live
  runs. The replay also gives the Trainer's callback with patience 2 (replayed only, not trained) as
  the like-for-like reference for the labelled alternative.
- kept: the loss measured after loading the kept weights equals the curve's value at the kept step.

Target (from the product issue): with the defaults, a best validation loss no worse than the
Trainer's callback (within 1%, in every run) with fewer steps trained (mean over runs).

How to read it: with min_delta=0 both rules count evaluations without a new best validation loss
(the Trainer's on eval_loss, the gap rule on eval_token_loss; the two reach their bests at the same
evaluations in practice). The gap rule additionally needs the gap to have widened at each of those
evaluations, and the plateau rule waits 5, so OverfitGuard() can tie the Trainer's callback
(patience 3) but not stop before it; the per-run table shows where it waits longer and what that
buys (a later stop past a noisy stretch of the descent) or costs (steps).

Results are printed (also as a markdown table) and written to benchmarks/results_early_stopping.json.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/<script>` finds the package

from benchmarks._common import ROOT, environment, pass_fail, print_rows, quiet, table_lines, training_args, write_json

RESULTS_PATH = ROOT / "benchmarks" / "results_early_stopping.json"
HF_PATIENCE = 3
ALT_PATIENCE = 2  # the one labelled alternative: OverfitGuard(patience=2)
LOSS_TOLERANCE = 0.01  # ours' best validation loss may be at most 1% above the Trainer callback's
PREFIX_ATOL = 1e-6
KEPT_RTOL = 1e-6

QUICK = {
    "seeds": [0, 1, 2],
    "train_sizes": [24, 48, 96],
    "eval_size": 64,
    "eval_offset": 300,  # eval docstrings: corpus[300:364], disjoint from every train set
    "max_length": 48,
    "max_steps": 300,
    "eval_steps": [10],  # evaluation cadences; each is a separate set of runs
    "learning_rate": 1e-3,
    "lr_scheduler_type": "constant",
    "train_batch_size": 8,
    "eval_batch_size": 16,
}
FULL = {
    **QUICK,
    "seeds": [0, 1, 2, 3, 4],
    "train_sizes": [24, 48, 96, 192],
    "max_steps": 500,
    "eval_steps": [10, 5],
}

METHODS = ("full", "hf", "guard", "guard_p2")
STOPPING = ("hf", "guard", "guard_p2")
LABELS = {
    "full": "no early stopping (full run)",
    "hf": f"HF EarlyStoppingCallback(patience={HF_PATIENCE}), eval_loss",
    "guard": "OverfitGuard() defaults",
    "guard_p2": f"ALTERNATIVE (not default): OverfitGuard(patience={ALT_PATIENCE})",
    "hf_p2_replay": f"HF EarlyStoppingCallback(patience={ALT_PATIENCE}), replayed on the full curve",
}


# ---------------------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------------------
def _prepare(cfg: dict[str, Any]) -> dict[str, Any]:
    from ft_callbacks import toy

    corpus = toy.stdlib_corpus()
    tokenizer = toy.train_tokenizer(corpus)
    start, size = cfg["eval_offset"], cfg["eval_size"]
    assert max(cfg["train_sizes"]) <= start, "train and eval docstrings must not overlap"
    return {
        "tokenizer": tokenizer,
        "eval": toy.causal_lm_dataset(corpus[start : start + size], tokenizer, cfg["max_length"]),
        "train": {n: toy.causal_lm_dataset(corpus[:n], tokenizer, cfg["max_length"]) for n in cfg["train_sizes"]},
    }


def _training_args(output_dir: str, cfg: dict[str, Any], seed: int, **overrides: Any):
    settings: dict[str, Any] = {
        "per_device_train_batch_size": cfg["train_batch_size"],
        "per_device_eval_batch_size": cfg["eval_batch_size"],
        "max_steps": cfg["max_steps"],
        "eval_strategy": "steps",
        "eval_steps": cfg["eval_steps"],
        "logging_steps": cfg["eval_steps"],
        "learning_rate": cfg["learning_rate"],
        "lr_scheduler_type": cfg["lr_scheduler_type"],
    }
    return training_args(output_dir, seed, **{**settings, **overrides})


def _callbacks_and_overrides(method: str, cfg: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    from transformers import EarlyStoppingCallback

    from ft_callbacks import BestCheckpointSaver, OverfitGuard

    def observer() -> Any:
        return OverfitGuard(patience=None, plateau_patience=None)

    def saver() -> Any:
        return BestCheckpointSaver(monitor="eval_token_loss", load_best_at_end=True)

    if method == "full":
        return [observer()], {}
    if method == "hf":
        overrides = {
            "save_strategy": "steps",
            "save_steps": cfg["eval_steps"],
            "save_total_limit": 2,
            "load_best_model_at_end": True,
            "metric_for_best_model": "eval_loss",
            "greater_is_better": False,
        }
        return [observer(), EarlyStoppingCallback(early_stopping_patience=HF_PATIENCE)], overrides
    if method == "guard":
        return [OverfitGuard(), saver()], {}
    if method == "guard_p2":
        return [OverfitGuard(patience=ALT_PATIENCE), saver()], {}
    raise ValueError(method)


CURVE_KEYS = ("eval_token_loss", "eval_loss", "eval_train_loss")


def run_one(method: str, lm: dict[str, Any], cfg: dict[str, Any], seed: int, size: int, verbose: bool) -> dict:
    """Train one (method, seed, train size) run; return its validation curve and what it stopped / kept."""
    from transformers import DataCollatorForLanguageModeling, Trainer

    from ft_callbacks import BestCheckpointSaver, OverfitGuard, toy

    callbacks, overrides = _callbacks_and_overrides(method, cfg)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"bench-es-{method}-") as out:
        trainer = Trainer(
            model=toy.tiny_gpt2(lm["tokenizer"], seed=seed),
            args=_training_args(out, cfg, seed, **overrides),
            train_dataset=lm["train"][size],
            eval_dataset=lm["eval"],
            data_collator=DataCollatorForLanguageModeling(lm["tokenizer"], mlm=False),
            processing_class=lm["tokenizer"],
            callbacks=callbacks,
        )
        with quiet(verbose):
            trainer.train()
        curve = [
            {"step": int(e["step"]), **{k: float(e[k]) for k in CURVE_KEYS}}
            for e in trainer.state.log_history
            if "eval_token_loss" in e
        ]
        steps = int(trainer.state.global_step)
        with quiet(verbose):
            kept_metrics = trainer.evaluate()  # the weights the model holds now: the kept ones for hf/guard
    record: dict[str, Any] = {
        "method": method,
        "seed": seed,
        "train_size": size,
        "steps": steps,
        "stopped": steps < cfg["max_steps"],
        "curve": curve,
        "kept_token_loss": float(kept_metrics["eval_token_loss"]),
        "kept_eval_loss": float(kept_metrics["eval_loss"]),
        "seconds": time.perf_counter() - started,
    }
    guard = next((c for c in callbacks if isinstance(c, OverfitGuard) and c.policy.gap is not None), None)
    saver = next((c for c in callbacks if isinstance(c, BestCheckpointSaver)), None)
    if guard is not None:
        record["stop_rule"] = guard.policy.stop_rule or None
        record["stop_reason"] = guard.stop_reason or None
        record["guard_stop_step"] = guard.policy.stop_step
        record["guard_best_step"] = guard.best_step
    if saver is not None:
        record["kept_step"] = saver.best_step
        record["kept_value"] = saver.best_value
    if method == "hf":
        record["stop_rule"] = "hf_patience" if record["stopped"] else None
        record["kept_step"] = trainer.state.best_global_step
        record["kept_value_eval_loss"] = trainer.state.best_metric
    return record


# ---------------------------------------------------------------------------------------------------
# replay of the stopping rules on the full run's curve
# ---------------------------------------------------------------------------------------------------
def replay_hf(curve: list[dict[str, float]], patience: int) -> int | None:
    """Index of the evaluation at which EarlyStoppingCallback (threshold 0, eval_loss, lower is better)
    stops, or None. Its counter compares with the best before the current evaluation, as in the Trainer."""
    best: float | None = None
    wait = 0
    for i, point in enumerate(curve):
        value = point["eval_loss"]
        if best is None or value < best:
            wait = 0
        else:
            wait += 1
        if best is None or value < best:
            best = value
        if wait >= patience:
            return i
    return None


def replay_guard(curve: list[dict[str, float]], **settings: Any) -> tuple[int | None, str | None]:
    """Index of the evaluation at which OverfitGuard's policy (with `settings`) stops, and the rule."""
    from ft_callbacks import OverfitPolicy

    policy = OverfitPolicy(**settings)
    for i, point in enumerate(curve):
        decision = policy.on_evaluation(
            point["step"], point["eval_token_loss"], point["eval_train_loss"], point["eval_loss"]
        )
        if decision:
            return i, decision.rule
    return None, None


# ---------------------------------------------------------------------------------------------------
# analysis
# ---------------------------------------------------------------------------------------------------
def _argmin(values: list[float]) -> int:
    return min(range(len(values)), key=lambda i: (values[i], i))


def _prefix_diff(full: list[dict[str, float]], run: list[dict[str, float]]) -> float:
    """Largest absolute difference between `run`'s curve and the same evaluations of the full run."""
    if len(run) > len(full):
        return math.inf
    worst = 0.0
    for a, b in zip(full[: len(run)], run, strict=True):
        if a["step"] != b["step"]:
            return math.inf
        worst = max(worst, *(abs(a[k] - b[k]) for k in CURVE_KEYS))
    return worst


def analyse_case(runs: dict[str, dict[str, Any]], cfg: dict[str, Any]) -> dict[str, Any]:
    full = runs["full"]["curve"]
    token = [p["eval_token_loss"] for p in full]
    i_min = _argmin(token)
    full_min = token[i_min]
    case: dict[str, Any] = {
        "eval_steps": cfg["eval_steps"],
        "seed": runs["full"]["seed"],
        "train_size": runs["full"]["train_size"],
        "full": {
            "steps": runs["full"]["steps"],
            "evaluations": len(full),
            "min_token_loss": full_min,
            "min_step": full[i_min]["step"],
            "min_eval_loss_step": full[_argmin([p["eval_loss"] for p in full])]["step"],
            "final_token_loss": token[-1],
            "rise_after_min": (token[-1] - full_min) / full_min,
        },
    }
    replays = {
        "hf": (replay_hf(full, HF_PATIENCE), "hf_patience"),
        "guard": replay_guard(full),
        "guard_p2": replay_guard(full, patience=ALT_PATIENCE),
    }
    for method in STOPPING:
        run = runs[method]
        curve = run["curve"]
        seen = [p["eval_token_loss"] for p in curve]
        i_best = _argmin(seen)
        stop_index = len(curve) - 1
        replay_index, replay_rule = replays[method]
        live_index = stop_index if run["stopped"] else None
        kept_step = run.get("kept_step")
        kept_curve_value = next((p["eval_token_loss"] for p in curve if p["step"] == kept_step), None)
        case[method] = {
            "steps": run["steps"],
            "stopped": run["stopped"],
            "stop_rule": run.get("stop_rule"),
            "stop_step": curve[stop_index]["step"] if run["stopped"] else None,
            "stop_lag_evals": stop_index - i_min,
            "evals_after_own_best": stop_index - i_best,
            "best_token_loss": seen[i_best],
            "best_step": curve[i_best]["step"],
            "regret": (seen[i_best] - full_min) / full_min,
            "kept_step": kept_step,
            "kept_token_loss": run["kept_token_loss"],
            "kept_regret": (run["kept_token_loss"] - full_min) / full_min,
            "kept_matches_curve": kept_curve_value is not None
            and abs(kept_curve_value - run["kept_token_loss"]) <= KEPT_RTOL * abs(kept_curve_value),
            "prefix_max_abs_diff": _prefix_diff(full, curve),
            "replay_stop_index": replay_index,
            "replay_rule": replay_rule,
            # a rule firing at the last evaluation (max_steps) ends the run there anyway: not a stop
            "replay_agrees": (replay_index == live_index or (live_index is None and replay_index == len(full) - 1))
            and (method == "hf" or not run["stopped"] or replay_rule == run.get("stop_rule")),
            "seconds": run["seconds"],
        }
        if method != "hf":  # why the gap rule waited: evaluations after the minimum whose gap did not widen
            gaps = [p["eval_token_loss"] - p["eval_train_loss"] for p in curve]
            case[method]["gap_not_widened_after_min"] = [
                curve[j]["step"] for j in range(max(i_min, 0) + 1, len(curve)) if not gaps[j] > gaps[j - 1]
            ]
    # The like-for-like reference for the alternative: the Trainer's callback with the same patience.
    i_p2 = replay_hf(full, ALT_PATIENCE)
    end = i_p2 if i_p2 is not None else len(full) - 1
    best_p2 = min(token[: end + 1])
    case["hf_p2_replay"] = {
        "steps": full[end]["step"],
        "stopped": i_p2 is not None,
        "stop_lag_evals": end - i_min,
        "best_token_loss": best_p2,
        "regret": (best_p2 - full_min) / full_min,
    }
    return case


def _mean(values: list[float]) -> float:
    return float(statistics.fmean(values)) if values else math.nan


def summarise(cases: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    hf_steps = _mean([c["hf"]["steps"] for c in cases])
    for method in (*STOPPING, "hf_p2_replay"):
        rows = [c[method] for c in cases]
        steps = _mean([r["steps"] for r in rows])
        entry = {
            "label": LABELS[method],
            "runs": len(rows),
            "stopped": sum(bool(r["stopped"]) for r in rows),
            "steps_mean": steps,
            "steps_ratio_vs_hf": steps / hf_steps,
            "stop_lag_mean": _mean([r["stop_lag_evals"] for r in rows]),
            "stop_lag_min": min(r["stop_lag_evals"] for r in rows),
            "stop_lag_max": max(r["stop_lag_evals"] for r in rows),
            "regret_mean": _mean([r["regret"] for r in rows]),
            "regret_max": max(r["regret"] for r in rows),
        }
        if method != "hf_p2_replay":
            entry["kept_regret_mean"] = _mean([r["kept_regret"] for r in rows])
            entry["kept_regret_max"] = max(r["kept_regret"] for r in rows)
            rules = sorted({str(r["stop_rule"]) for r in rows})
            entry["rules"] = {rule: sum(str(r["stop_rule"]) == rule for r in rows) for rule in rules}
        if method != "hf":
            entry["fewer_steps_than_hf"] = sum(c[method]["steps"] < c["hf"]["steps"] for c in cases)
            entry["same_steps_as_hf"] = sum(c[method]["steps"] == c["hf"]["steps"] for c in cases)
            entry["more_steps_than_hf"] = sum(c[method]["steps"] > c["hf"]["steps"] for c in cases)
            entry["best_within_1pct_of_hf"] = sum(
                c[method]["best_token_loss"] <= c["hf"]["best_token_loss"] * (1 + LOSS_TOLERANCE) for c in cases
            )
            entry["best_loss_ratio_vs_hf_max"] = max(
                c[method]["best_token_loss"] / c["hf"]["best_token_loss"] for c in cases
            )
        out[method] = entry
    alt = out["guard_p2"]
    alt["fewer_steps_than_hf_p2_replay"] = sum(c["guard_p2"]["steps"] < c["hf_p2_replay"]["steps"] for c in cases)
    alt["steps_ratio_vs_hf_p2_replay"] = alt["steps_mean"] / out["hf_p2_replay"]["steps_mean"]
    return out


def verdict(summary: dict[str, Any], cases: list[dict[str, Any]]) -> dict[str, Any]:
    guard = summary["guard"]
    loss_ok = guard["best_within_1pct_of_hf"] == len(cases)
    steps_ok = guard["steps_ratio_vs_hf"] < 1.0
    checks = {
        "prefix_max_abs_diff": max(c[m]["prefix_max_abs_diff"] for c in cases for m in STOPPING),
        "prefix_exact": all(c[m]["prefix_max_abs_diff"] == 0.0 for c in cases for m in STOPPING),
        "replay_agrees": all(c[m]["replay_agrees"] for c in cases for m in STOPPING),
        "kept_matches_curve": all(c[m]["kept_matches_curve"] for c in cases for m in STOPPING),
    }
    return {
        "criterion": (
            f"OverfitGuard() defaults: best validation token loss <= {1 + LOSS_TOLERANCE:g} x the HF callback's "
            "in every run, and mean steps trained < the HF callback's"
        ),
        "loss_pass": loss_ok,
        "steps_pass": steps_ok,
        "target_met": loss_ok and steps_ok,
        "checks": checks,
        "measurement_valid": checks["prefix_max_abs_diff"] <= PREFIX_ATOL
        and checks["replay_agrees"]
        and checks["kept_matches_curve"],
    }


# ---------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{x * 100:+.2f}%"


def print_report(results: dict[str, Any]) -> None:
    cases, summary, ver = results["cases"], results["summary"], results["verdict"]
    n = len(cases)

    print("\nper run (validation loss = eval_token_loss; lag = evaluations from the full run's minimum to the stop)")
    rows = [("every", "seed", "N", "full min @step", "rise", "HF stop", "lag", "regret", "guard stop", "rule", "lag",
             "regret", "alt p2 stop", "lag", "regret")]  # fmt: skip
    for c in cases:
        f, h, g, a = c["full"], c["hf"], c["guard"], c["guard_p2"]

        def stop(r: dict[str, Any]) -> str:
            return str(r["steps"]) if r["stopped"] else f"{r['steps']} (no stop)"

        rows.append((
            str(c["eval_steps"]), str(c["seed"]), str(c["train_size"]), f"{f['min_token_loss']:.4f} @{f['min_step']}",
            _pct(f["rise_after_min"]), stop(h), str(h["stop_lag_evals"]), _pct(h["regret"]), stop(g),
            str(g["stop_rule"] or "-"), str(g["stop_lag_evals"]), _pct(g["regret"]), stop(a),
            str(a["stop_lag_evals"]), _pct(a["regret"]),
        ))  # fmt: skip
    print("\n".join(table_lines(rows)))

    hf, guard, alt, hf2 = summary["hf"], summary["guard"], summary["guard_p2"], summary["hf_p2_replay"]
    rows = [("what", "ours", "baseline", "ratio", "target", "result")]
    rows.append(
        (
            "steps trained, mean (OverfitGuard() vs HF patience 3)",
            f"{guard['steps_mean']:.1f}",
            f"{hf['steps_mean']:.1f}",
            f"{guard['steps_ratio_vs_hf']:.3f}",
            "< 1",
            pass_fail(ver["steps_pass"]),
        )
    )
    rows.append(("  runs with fewer / same / more steps than HF", "", "",
                 f"{guard['fewer_steps_than_hf']}/{guard['same_steps_as_hf']}/{guard['more_steps_than_hf']}",
                 "(info)", "info"))  # fmt: skip
    rows.append(
        (
            "best val token loss within 1% of HF's (runs)",
            f"{guard['best_within_1pct_of_hf']}/{n}",
            "",
            f"{guard['best_loss_ratio_vs_hf_max']:.4f} max",
            f"{n}/{n}",
            pass_fail(ver["loss_pass"]),
        )
    )
    rows.append(
        (
            "regret: best before stop vs full-run min, mean",
            _pct(guard["regret_mean"]),
            _pct(hf["regret_mean"]),
            "",
            "(info)",
            "info",
        )
    )
    rows.append(("regret, worst run", _pct(guard["regret_max"]), _pct(hf["regret_max"]), "", "(info)", "info"))
    rows.append(
        (
            "regret of the weights kept at the end, mean",
            _pct(guard["kept_regret_mean"]),
            _pct(hf["kept_regret_mean"]),
            "",
            "(info)",
            "info",
        )
    )
    rows.append(
        (
            "stop lag, evaluations after the minimum (mean)",
            f"{guard['stop_lag_mean']:.2f}",
            f"{hf['stop_lag_mean']:.2f}",
            "",
            "(info)",
            "info",
        )
    )
    rows.append(
        ("runs stopped before max_steps", f"{guard['stopped']}/{n}", f"{hf['stopped']}/{n}", "", "(info)", "info")
    )
    rows.append(
        (
            f"ALT OverfitGuard(patience={ALT_PATIENCE}) steps vs HF patience 3",
            f"{alt['steps_mean']:.1f}",
            f"{hf['steps_mean']:.1f}",
            f"{alt['steps_ratio_vs_hf']:.3f}",
            "(alt, info)",
            "info",
        )
    )
    rows.append(
        (
            "  ALT best within 1% of HF patience 3 (runs)",
            f"{alt['best_within_1pct_of_hf']}/{n}",
            "",
            f"{alt['best_loss_ratio_vs_hf_max']:.4f} max",
            "(alt, info)",
            "info",
        )
    )
    rows.append(
        (
            f"  ALT vs HF patience {ALT_PATIENCE} (replayed), steps",
            f"{alt['steps_mean']:.1f}",
            f"{hf2['steps_mean']:.1f}",
            f"{alt['steps_ratio_vs_hf_p2_replay']:.3f}",
            "(alt, info)",
            "info",
        )
    )
    chk = ver["checks"]
    rows.append(
        (
            "stopped curves = full-run prefix (max |diff|)",
            f"{chk['prefix_max_abs_diff']:.1e}",
            "",
            "",
            f"<= {PREFIX_ATOL:g}",
            pass_fail(chk["prefix_max_abs_diff"] <= PREFIX_ATOL),
        )
    )
    rows.append(
        (
            "live stops = rules replayed on the full curve",
            str(chk["replay_agrees"]),
            "",
            "",
            "True",
            pass_fail(chk["replay_agrees"]),
        )
    )
    rows.append(
        (
            "kept weights' loss = curve value at kept step",
            str(chk["kept_matches_curve"]),
            "",
            "",
            "True",
            pass_fail(chk["kept_matches_curve"]),
        )
    )
    print_rows(rows)

    cfg = results["config"]
    groups = [("all runs", cases, summary)]
    if len(cfg["eval_steps"]) > 1:
        for every in cfg["eval_steps"]:
            subset = [c for c in cases if c["eval_steps"] == every]
            groups.append((f"eval every {every} steps", subset, results["by_eval_steps"][str(every)]))
    for title, group, summ in groups:
        print(
            f"\nmarkdown, {title} (validation loss = exact token-weighted eval_token_loss; {len(group)} runs = "
            f"{len(cfg['seeds'])} seeds x train sizes {cfg['train_sizes']}, eval every "
            f"{sorted({c['eval_steps'] for c in group})} steps):\n"
        )
        print(markdown_table(summ, group))


def markdown_table(summary: dict[str, Any], cases: list[dict[str, Any]]) -> str:
    n = len(cases)
    out = [
        "| method | stopped | steps trained, mean | vs HF | stop lag (evals), mean [min, max] "
        "| regret of best before stop, mean / worst | regret of kept weights, mean |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in ("hf", "guard", "guard_p2", "hf_p2_replay"):
        s = summary[method]
        kept = _pct(s["kept_regret_mean"]) if "kept_regret_mean" in s else "n/a"
        out.append(
            f"| {s['label']} | {s['stopped']}/{n} | {s['steps_mean']:.1f} | {s['steps_ratio_vs_hf']:.3f} | "
            f"{s['stop_lag_mean']:.2f} [{s['stop_lag_min']}, {s['stop_lag_max']}] | "
            f"{_pct(s['regret_mean'])} / {_pct(s['regret_max'])} | {kept} |"
        )
    full_steps = _mean([c["full"]["steps"] for c in cases])
    rise = _pct(_mean([c["full"]["rise_after_min"] for c in cases]))
    out.append(
        f"| no early stopping (full run) | 0/{n} | {full_steps:.1f} | {full_steps / summary['hf']['steps_mean']:.3f} "
        f"| - | 0 (defines the minimum) | {rise} (final weights) |"
    )
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="5 seeds x 4 train sizes, 500 steps")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--output", default=str(RESULTS_PATH), help="where to write the JSON results")
    parser.add_argument("--verbose", action="store_true", help="show the Trainer's and callbacks' console output")
    args = parser.parse_args(argv)

    import datasets
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # save_pretrained's "Writing model shards" bars
    datasets.disable_progress_bars()
    cfg = FULL if args.full else QUICK
    started = time.perf_counter()
    print(
        f"early-stopping benchmark ({'full' if args.full else 'quick'}), torch {torch.__version__}, "
        f"transformers {transformers.__version__}, {os.cpu_count()} CPUs, torch threads {args.threads}"
    )
    lm = _prepare(cfg)
    cases = []
    plan = [(every, seed, size) for every in cfg["eval_steps"] for seed in cfg["seeds"] for size in cfg["train_sizes"]]
    for every, seed, size in plan:
        run_cfg = {**cfg, "eval_steps": every}
        runs = {m: run_one(m, lm, run_cfg, seed, size, args.verbose) for m in METHODS}
        case = analyse_case(runs, run_cfg)
        case["curve"] = runs["full"]["curve"]
        cases.append(case)
        print(
            f"  eval every {every} seed {seed} N={size:3d}: full min {case['full']['min_token_loss']:.4f} @ step "
            f"{case['full']['min_step']}; stops: HF {case['hf']['stop_step']}, guard {case['guard']['stop_step']} "
            f"({case['guard']['stop_rule']}), alt {case['guard_p2']['stop_step']} "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
        worst = max(case[m]["prefix_max_abs_diff"] for m in STOPPING)
        assert worst <= 1e-4, f"seed {seed} N={size}: a stopped run's curve left the full run's ({worst})"
    summary = summarise(cases)
    results: dict[str, Any] = {
        "mode": "full" if args.full else "quick",
        "config": cfg,
        "methods": LABELS,
        "validation_loss": "eval_token_loss (OverfitGuard's exact token-weighted validation NLL); the HF callback "
        "decides on eval_loss",
        "environment": environment(args.threads),
        "summary": summary,
        "by_eval_steps": {
            str(every): summarise([c for c in cases if c["eval_steps"] == every]) for every in cfg["eval_steps"]
        },
        "verdict": verdict(summary, cases),
        "cases": cases,
    }
    results["elapsed_s"] = time.perf_counter() - started
    print_report(results)
    output = write_json(results, args.output)
    ver = results["verdict"]
    print(
        f"\ntarget ({ver['criterion']}): {'MET' if ver['target_met'] else 'NOT MET'}; measurement checks "
        f"{'OK' if ver['measurement_valid'] else 'FAILED'}; {results['elapsed_s']:.0f} s; written to {output}"
    )
    return results


if __name__ == "__main__":
    main()
