"""The one reporting path: every result any ft_callbacks callback produces goes through here.

At an evaluation, results are collected on an `EvaluationContext` and flushed once:
  1. into the evaluation's `metrics` dict (`eval_perplexity`, ...) as soon as they are added, so
     `metric_for_best_model`, `save_strategy="best"`, HF's `EarlyStoppingCallback` and our other
     callbacks can read them;
  2. into `state.log_history` (merged into the Trainer's own entry for this evaluation), so they are
     in `trainer_state.json`;
  3. to wandb, in the run the Trainer's `WandbCallback` uses (or one we start), with its key style
     (`eval/perplexity`) and step axis (`train/global_step`), from rank 0 only;
  4. as one console line.
Events outside an evaluation (a stop on a NaN step, a checkpoint written) use `report_event`.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._compat import rewrite_logs

_PROJECT_ENV = "WANDB_PROJECT"
DEFAULT_PROJECT = "ft-callbacks"


def _print(line: str) -> None:
    # tqdm.write keeps the Trainer's progress bar intact.
    try:
        from tqdm.auto import tqdm

        tqdm.write(line)
    except Exception:  # pragma: no cover - tqdm ships with transformers
        print(line, flush=True)


class WandbSink:
    """Finds (or starts) the wandb run and logs to it; never lets a wandb problem stop training."""

    def __init__(self) -> None:
        self._notices: set[str] = set()
        self._axis_defined: set[str] = set()
        self.owned_run: Any = None
        self.init_failed = False  # wandb.init raised once: do not try again in this process

    def notice(self, key: str, message: str) -> None:
        if key not in self._notices:
            self._notices.add(key)
            _print(f"[ft_callbacks] {message}")

    def _wandb(self) -> Any:
        if os.environ.get("WANDB_MODE", "").lower() == "disabled" or os.environ.get(
            "WANDB_DISABLED", ""
        ).lower() in ("1", "true", "yes"):
            self.notice("disabled", "wandb is disabled (WANDB_MODE=disabled): results go to the console and "
                        "trainer_state.json only.")
            return None
        try:
            import wandb
        except ImportError:
            self.notice("missing", "wandb is not installed: results go to the console and trainer_state.json "
                        "only. Install it with `pip install 'ft-callbacks[wandb]'`.")
            return None
        return wandb

    @staticmethod
    def has_api_key(wandb: Any) -> bool:
        """Whether wandb has credentials (env or login), without prompting."""
        if os.environ.get("WANDB_API_KEY"):
            return True
        try:
            return bool(wandb.api.api_key)
        except Exception:
            return False

    def run(self, run_name: str | None = None) -> Any:
        """The active run (the Trainer's, or ours), or None when wandb is off or failing."""
        wandb = self._wandb()
        if wandb is None:
            return None
        run = wandb.run
        if run is not None and getattr(run, "_is_finished", False):
            run = None
        if run is None:
            if self.init_failed:
                # Once is enough: with the network down every wandb.init can block for its whole
                # timeout. A run the user (or the Trainer) starts later is still picked up above.
                return None
            try:
                run = self._start(wandb, run_name)
            except Exception as exc:  # no network, bad key, ... : keep training
                self.init_failed = True
                self.notice("init", f"could not start a wandb run ({type(exc).__name__}: {exc}); "
                            "results go to the console and trainer_state.json only.")
                return None
        if run.id not in self._axis_defined:
            self._axis_defined.add(run.id)
            if run is not self.owned_run:
                self._notice_offline(run)
            try:
                # The Trainer's WandbCallback defines the same axis; repeating it is harmless and
                # covers runs we started ourselves.
                run.define_metric("train/global_step")
                run.define_metric("*", step_metric="train/global_step", step_sync=True)
            except Exception:
                pass
        return run

    def _start(self, wandb: Any, run_name: str | None) -> Any:
        mode = os.environ.get("WANDB_MODE") or None
        if mode is None and not self.has_api_key(wandb):
            mode = "offline"
        run = wandb.init(
            project=os.environ.get(_PROJECT_ENV, DEFAULT_PROJECT),
            name=run_name,
            mode=mode,
        )
        self.owned_run = run
        self._notice_offline(run, forced=mode == "offline")
        return run

    def _notice_offline(self, run: Any, forced: bool = False) -> None:
        try:
            offline = forced or bool(getattr(run.settings, "_offline", False))
            run_dir = os.path.dirname(run.dir.rstrip(os.sep))
        except Exception:
            return
        if offline:
            self.notice("offline", f"wandb is logging offline to {run_dir} (no API key or network). "
                        f"Watch it with `wandb leet {run_dir}`; upload it later with `wandb sync {run_dir}`.")

    def log(self, data: dict[str, Any], step: int, run_name: str | None = None) -> None:
        if not data:
            return
        run = self.run(run_name)
        if run is None:
            return
        payload = {**data, "train/global_step": step}
        try:
            run.log(payload)
        except Exception as exc:
            self.notice(f"log:{type(exc).__name__}", f"wandb.log failed ({type(exc).__name__}: {exc}); "
                        "continuing without wandb for these values.")

    def summarize(self, values: dict[str, Any], run_name: str | None = None) -> None:
        if not values:
            return
        run = self.run(run_name)
        if run is None:
            return
        try:
            run.summary.update(values)
        except Exception as exc:
            self.notice("summary", f"could not write the wandb summary ({type(exc).__name__}: {exc}).")

    def finish_owned(self) -> None:
        """Finish the run we started ourselves (never the Trainer's or the user's)."""
        if self.owned_run is not None:
            try:
                self.owned_run.finish()
            except Exception:
                pass
            self.owned_run = None


SINK = WandbSink()


def summary_key(name: str) -> str:
    """Run-level keys: a name that already has a namespace (`best/eval_loss`) is kept as is;
    others are put under `ft_callbacks/` so they never collide with the Trainer's keys."""
    return name if "/" in name else f"ft_callbacks/{name}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


@dataclass
class EvaluationContext:
    """One evaluation as our callbacks see it. `add()` puts a result straight into the Trainer's
    `metrics` dict (so the next callback can read it) and queues it for log_history, wandb and console."""

    args: Any
    state: Any
    control: Any
    metrics: dict[str, Any]
    model: Any = None
    processing_class: Any = None
    train_dataloader: Any = None
    eval_dataloader: Any = None
    results: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    media: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    console: list[str] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)  # multi-line console output (a confusion matrix)
    quiet: set[str] = field(default_factory=set)  # result keys left out of the console line

    @property
    def prefix(self) -> str:
        """The metric key prefix of this evaluation ("eval", "test", "eval_<dataset>")."""
        for key in self.metrics:
            if key.endswith("_runtime"):
                return key[: -len("_runtime")]
        return "eval"

    @property
    def step(self) -> int:
        return int(self.state.global_step)

    @property
    def is_main(self) -> bool:
        return bool(self.state.is_world_process_zero)

    def key(self, name: str) -> str:
        return f"{self.prefix}_{name}"

    def add(self, name: str, value: float | int | None, show: bool = True) -> str:
        """Add a result under the Trainer's naming (`perplexity` -> `eval_perplexity`); `show=False`
        keeps it off the console line (it is still logged everywhere else)."""
        key = self.key(name)
        if value is None:
            return key
        value = float(value)
        self.metrics[key] = value
        self.results[key] = value
        if not show:
            self.quiet.add(key)
        return key

    def add_summary(self, name: str, value: Any) -> None:
        """A run-level value (best so far, stop reason): wandb summary and log_history, under
        `summary_key(name)`."""
        self.summary[name] = value

    def add_media(self, name: str, build: Callable[[Any], Any]) -> None:
        """A wandb object (table, chart) built lazily from the `wandb` module, rank 0 only."""
        self.media[name] = build


def flush_evaluation(ctx: EvaluationContext) -> None:
    """Send what the callbacks added during one evaluation everywhere it belongs, once."""
    state = ctx.state
    entry: dict[str, Any] = {**ctx.results, **{summary_key(k): v for k, v in ctx.summary.items()}}
    if entry:
        history = state.log_history
        last = history[-1] if history else None
        # The Trainer appended its entry for this evaluation just before on_evaluate; keep our
        # values beside eval_loss in the same record.
        if last is not None and last.get("step") == ctx.step and f"{ctx.prefix}_runtime" in last:
            last.update(entry)
        else:
            history.append({**entry, "epoch": state.epoch, "step": ctx.step})
    if not ctx.is_main:
        return
    run_name = _run_name(ctx.args)
    data: dict[str, Any] = rewrite_logs(ctx.results)
    if ctx.media:
        wandb = SINK._wandb()
        if wandb is not None:
            for name, build in ctx.media.items():
                try:
                    data[name] = build(wandb)
                except Exception as exc:
                    SINK.notice(f"media:{name}", f"could not build wandb object {name!r}: {exc}")
    SINK.log(data, ctx.step, run_name)
    SINK.summarize({summary_key(k): v for k, v in ctx.summary.items()}, run_name)
    shown = ", ".join(
        f"{k.removeprefix(ctx.prefix + '_')} {_fmt(v)}" for k, v in ctx.results.items() if k not in ctx.quiet
    )
    loss = ctx.metrics.get(f"{ctx.prefix}_loss")
    head = f"[ft_callbacks] step {ctx.step} | {ctx.prefix}_loss {_fmt(loss)}" if loss is not None else (
        f"[ft_callbacks] step {ctx.step}"
    )
    _print(" | ".join(part for part in [head, shown, *ctx.console] if part))
    for block in ctx.blocks:
        _print(block)


def report_event(
    args: Any,
    state: Any,
    values: dict[str, float] | None = None,
    summary: dict[str, Any] | None = None,
    message: str | None = None,
) -> None:
    """Report something that happened outside an evaluation (a stop at a training step, a save).
    `values` are logged as `train/<name>` metrics at the current step; `summary` goes to the wandb
    summary and log_history as `ft_callbacks/<name>`."""
    values = values or {}
    summary = summary or {}
    entry = {**values, **{summary_key(k): v for k, v in summary.items()}}
    if entry:
        state.log_history.append({**entry, "epoch": state.epoch, "step": int(state.global_step)})
    if not state.is_world_process_zero:
        return
    run_name = _run_name(args)
    SINK.log(rewrite_logs(values), int(state.global_step), run_name)
    SINK.summarize({summary_key(k): v for k, v in summary.items()}, run_name)
    if message:
        _print(f"[ft_callbacks] step {int(state.global_step)} | {message}")


# The curves a user reads together, each drawn as one wandb chart at train end:
# chart key -> (title, [(log_history key, series name), ...]).
OVERVIEW_CHARTS: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "overview/loss": (
        "train vs validation loss (per token)",
        [("eval_train_loss", "train"), ("eval_train_sample_loss", "train sample"), ("eval_token_loss", "validation")],
    ),
    "overview/gap": ("validation - train loss", [("eval_loss_gap", "gap")]),
    "overview/perplexity": ("validation perplexity", [("eval_perplexity", "perplexity")]),
    "overview/generation": (
        "generation scores (0-1; BLEU and chrF / 100)",
        [("eval_rouge1", "rouge1"), ("eval_rougeL", "rougeL"), ("eval_bleu", "bleu/100"), ("eval_chrf", "chrf/100"),
         ("eval_bertscore_f1", "bertscore_f1"), ("eval_exact_match", "exact_match")],
    ),
    "overview/labels": (
        "label metrics",
        [("eval_accuracy", "accuracy"), ("eval_f1", "f1"), ("eval_balanced_accuracy", "balanced accuracy")],
    ),
}  # fmt: skip
_SCALED = {"eval_bleu", "eval_chrf"}  # 0-100 scales, drawn /100 beside the 0-1 scores
OVERVIEW_TABLE_KEYS = ("eval_loss", *(key for _, series in OVERVIEW_CHARTS.values() for key, _ in series))


def overview_series(log_history: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[list[float]], list[str]]]:
    """For each overview chart with data: (steps, one value list per series, series names). A
    series missing at a step repeats nothing: charts use only steps where every series has a value."""
    out = {}
    for chart, (_, series) in OVERVIEW_CHARTS.items():
        present = [(k, name) for k, name in series if any(k in e for e in log_history)]
        if not present:
            continue
        rows = [e for e in log_history if all(isinstance(e.get(k), (int, float)) for k, _ in present)]
        if not rows:
            continue
        steps = [int(e["step"]) for e in rows]
        values = [[float(e[k]) / (100.0 if k in _SCALED else 1.0) for e in rows] for k, _ in present]
        out[chart] = (steps, values, [name for _, name in present])
    return out


def final_dashboard(args: Any, state: Any) -> None:
    """Once per training run, on rank 0: one wandb chart per group of curves that belong together
    (train vs validation loss, gap, perplexity, generation scores, label metrics) and a table of
    every evaluation. Best values and the stop reason are already in the run summary."""
    if not state.is_world_process_zero:
        return
    history = state.log_history
    charts = overview_series(history)
    evaluations = [e for e in history if any(k in e for k in OVERVIEW_TABLE_KEYS)]
    if not charts and not evaluations:
        return
    wandb = SINK._wandb()
    if wandb is None:
        return
    data: dict[str, Any] = {}
    try:
        for chart, (steps, values, names) in charts.items():
            title = OVERVIEW_CHARTS[chart][0]
            data[chart] = wandb.plot.line_series(xs=steps, ys=values, keys=names, title=title, xname="step")
        columns = ["step", *(k for k in OVERVIEW_TABLE_KEYS if any(k in e for e in evaluations))]
        merged: dict[int, dict[str, Any]] = {}
        for entry in evaluations:
            merged.setdefault(int(entry["step"]), {}).update(entry)
        rows = [[step, *(merged[step].get(k) for k in columns[1:])] for step in sorted(merged)]
        data["overview/evaluations"] = wandb.Table(columns=columns, data=rows)
    except Exception as exc:
        SINK.notice("overview", f"could not build the overview charts ({type(exc).__name__}: {exc}).")
        return
    SINK.log(data, int(state.global_step), _run_name(args))


def notice_once(key: str, message: str) -> None:
    """A one-time console notice (rank-agnostic; call it from rank 0 where it matters)."""
    SINK.notice(key, message)


def warn(message: str) -> None:
    warnings.warn(f"ft_callbacks: {message}", stacklevel=3)


def _run_name(args: Any) -> str | None:
    name = getattr(args, "run_name", None)
    return None if not name or name == getattr(args, "output_dir", None) else name
