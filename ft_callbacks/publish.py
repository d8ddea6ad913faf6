"""The one reporting path: every result any ft_callbacks callback produces goes through here.

At an evaluation, results are collected on an `EvaluationContext` and flushed once:
  1. into the evaluation's `metrics` dict (`eval_perplexity`, ...) as soon as they are added, so
     `metric_for_best_model`, `save_strategy="best"`, HF's `EarlyStoppingCallback` and our other
     callbacks can read them. A key the user's `compute_metrics` (or the Trainer) already set is never
     overwritten: ours is published as `eval_ft_<name>` instead, announced once;
  2. into `state.log_history`, merged into the Trainer's own entry for this evaluation, with the same
     keys at every evaluation of a training run (a value not measured this time is `None`), because
     `transformers.modelcard.parse_log_history` builds the model card's table from those entries.
     Run-level facts (best so far, stop reason, checkpoint paths) never go into evaluation entries:
     they get an entry of their own when they change, and go to the wandb summary;
  3. to every tracker the user named in `report_to` (TensorBoard, MLflow, wandb, ...), through the
     Trainer's own integration callbacks (`on_log`), at the evaluation's step, with their key style;
     wandb additionally gets tables, charts and the run summary, only when `report_to` names it;
  4. to the console, as one short block after the evaluation.
Events outside an evaluation (a stop on a NaN step, a checkpoint written) use `report_event`.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._compat import rewrite_logs

_TRACKERS_ATTR = "_ft_callbacks_trackers"
_FACTS_ATTR = "_ft_callbacks_published_facts"
# Integrations that report_to can name but that are no metric trackers.
_NOT_TRACKERS = {"CodeCarbonCallback"}
OURS_PREFIX = "ft_"  # what a colliding result of ours is renamed with: eval_rougeL -> eval_ft_rougeL


class ConsoleHandler(logging.Handler):
    """Writes our log records to stdout without landing on a progress bar's line: the bars (stderr)
    are cleared, the line is written and flushed at once (a buffered stdout in a pipe would print it
    later, on top of a redrawn bar), then the bars are drawn again. stdout is looked up at each record,
    so redirections made after import (pytest's capture, a notebook) are honoured."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            try:
                from tqdm.auto import tqdm

                with tqdm.external_write_mode(file=sys.stdout):
                    sys.stdout.write(line + "\n")
                    sys.stdout.flush()
            except ImportError:  # pragma: no cover - tqdm ships with transformers
                print(line, flush=True)
        except Exception:  # a console problem never stops training
            self.handleError(record)


# Users silence or redirect us the way they do transformers: logging.getLogger("ft_callbacks").
logger = logging.getLogger("ft_callbacks")
if not logger.handlers:
    logger.addHandler(ConsoleHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False  # one copy on the console even when the root logger has a handler too


def _print(line: str) -> None:
    """One console line of ours (an evaluation's block, a notice), through the `ft_callbacks` logger."""
    logger.info(line)


def reports_to(args: Any, name: str) -> bool:
    """Whether the user's `TrainingArguments.report_to` names the integration `name` ("wandb", ...)."""
    report_to = getattr(args, "report_to", None)
    if report_to is None:
        return False
    if isinstance(report_to, str):
        report_to = [report_to]
    return name in report_to or "all" in report_to


class WandbSink:
    """wandb's extras for the current run (tables, charts, summary, artifacts): only when the user's
    `report_to` names wandb, only into the run the Trainer's `WandbCallback` started (we never start
    one: no hidden run, and no `wandb.init` that can block a training step on a dead network), and
    never letting a wandb problem stop training."""

    def __init__(self) -> None:
        self._notices: set[str] = set()
        self._axis_defined: set[str] = set()
        self.enabled = False  # decided per run from report_to, by `configure`

    def configure(self, args: Any) -> None:
        """Follow the user's choice for this run: wandb only when `report_to` names it."""
        self.enabled = reports_to(args, "wandb")
        if not self.enabled:
            self.notice(
                "report_to",
                "report_to does not name wandb, so ft_callbacks logs nothing to wandb: its results go to "
                "log_history, trainer_state.json, the console and the trackers report_to names. For wandb's "
                "charts and tables, set TrainingArguments(report_to=['wandb', ...]).",
            )

    def new_run(self) -> None:
        """A training run starts: its one-time notices may be said again."""
        self._notices.clear()

    def notice(self, key: str, message: str) -> None:
        if key not in self._notices:
            self._notices.add(key)
            _print(f"[ft_callbacks] {message}")

    def _wandb(self) -> Any:
        if not self.enabled:
            return None
        if os.environ.get("WANDB_MODE", "").lower() == "disabled" or os.environ.get(
            "WANDB_DISABLED", ""
        ).lower() in ("1", "true", "yes"):
            self.notice("disabled", "wandb is disabled (WANDB_MODE=disabled): results go to the console and "
                        "trainer_state.json only.")  # fmt: skip
            return None
        try:
            import wandb
        except ImportError:
            self.notice("missing", "wandb is not installed: results go to the console and trainer_state.json "
                        "only. Install it with `pip install 'ft-callbacks[wandb]'`.")  # fmt: skip
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

    def run(self) -> Any:
        """The active wandb run the Trainer started, or None when wandb is off, not chosen or failing."""
        wandb = self._wandb()
        if wandb is None:
            return None
        run = wandb.run
        if run is None or getattr(run, "_is_finished", False):
            self.notice("no_run", "report_to names wandb, but no wandb run is active (the Trainer's WandbCallback "
                        "did not start one); ft_callbacks' wandb tables and summary are skipped.")  # fmt: skip
            return None
        if run.id not in self._axis_defined:
            self._axis_defined.add(run.id)
            self._notice_offline(run)
            try:
                # The Trainer's WandbCallback defines the same axis; repeating it is harmless.
                run.define_metric("train/global_step")
                run.define_metric("*", step_metric="train/global_step", step_sync=True)
            except Exception:
                pass
        return run

    def _notice_offline(self, run: Any) -> None:
        try:
            offline = bool(getattr(run.settings, "_offline", False))
            run_dir = os.path.dirname(run.dir.rstrip(os.sep))
        except Exception:
            return
        if offline:
            why = "WANDB_MODE=offline" if os.environ.get("WANDB_MODE", "").lower() == "offline" else "offline mode"
            self.notice("offline", f"wandb is logging offline to {run_dir} ({why}). Watch it with "
                        f"`wandb leet {run_dir}`; upload it later with `wandb sync {run_dir}`.")  # fmt: skip

    def log(self, data: dict[str, Any], step: int) -> None:
        if not data:
            return
        run = self.run()
        if run is None:
            return
        try:
            run.log({**data, "train/global_step": step})
        except Exception as exc:
            self.notice(f"log:{type(exc).__name__}", f"wandb.log failed ({type(exc).__name__}: {exc}); "
                        "continuing without wandb for these values.")  # fmt: skip

    def summarize(self, values: dict[str, Any]) -> None:
        if not values:
            return
        run = self.run()
        if run is None:
            return
        try:
            run.summary.update(values)
        except Exception as exc:
            self.notice("summary", f"could not write the wandb summary ({type(exc).__name__}: {exc}).")


    def alert(self, title: str, text: str, level: str = "WARN") -> None:
        """A wandb alert (email/Slack for whoever set them up; offline, a record in the run's file)
        so that a stop or a warning reaches a user who is not watching the dashboard."""
        run = self.run()
        if run is None:
            return
        try:
            import wandb

            run.alert(title=title[:64], text=text, level=getattr(wandb.AlertLevel, level, wandb.AlertLevel.WARN),
                      wait_duration=0)  # fmt: skip
        except Exception as exc:
            self.notice("alert", f"could not raise a wandb alert ({type(exc).__name__}: {exc}).")

    def log_artifact(self, folder: str, name: str | None, metadata: dict[str, Any], aliases: list[str]) -> bool:
        """Log `folder` as a wandb model artifact (named `name`, default `<run id>-best`) into the Trainer's
        run; True when it was logged. Offline runs keep it for `wandb sync`."""
        run = self.run()
        if run is None:
            return False
        try:
            import wandb

            artifact = wandb.Artifact(re.sub(r"[^A-Za-z0-9_.-]", "-", name or f"{run.id}-best"), type="model",
                                      metadata=metadata)  # fmt: skip
            artifact.add_dir(folder)
            run.log_artifact(artifact, aliases=aliases)
            return True
        except Exception as exc:
            self.notice("artifact", f"could not log {folder} to wandb ({type(exc).__name__}: {exc}).")
            return False


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
    `metrics` dict (so the next callback can read it) and queues it for log_history, the trackers and
    the console."""

    args: Any
    state: Any
    control: Any
    metrics: dict[str, Any]
    model: Any = None
    processing_class: Any = None
    train_dataloader: Any = None
    eval_dataloader: Any = None
    training: bool = False  # inside trainer.train() (not a standalone evaluate())
    results: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    media: dict[str, Callable[[Any], Any]] = field(default_factory=dict)
    console: list[str] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)  # multi-line console output (a confusion matrix)
    quiet: set[str] = field(default_factory=set)  # result keys left out of the console block
    renamed: dict[str, str] = field(default_factory=dict)  # a user's key we did not overwrite -> our key
    source: str = ""  # the console group of the callback adding results now (set by the hub)
    groups: dict[str, list[str]] = field(default_factory=dict)  # console group -> result keys, in order
    alerts: list[tuple[str, str, str]] = field(default_factory=list)  # (title, text, level), sent at flush

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
        """The key our result `name` has in this evaluation (`eval_ft_<name>` if the user's is `eval_<name>`)."""
        key = f"{self.prefix}_{name}"
        return self.renamed.get(key, key)

    def add(self, name: str, value: float | int | None, show: bool = True) -> str:
        """Add a result under the Trainer's naming (`perplexity` -> `eval_perplexity`); `show=False`
        keeps it off the console block (it is still logged everywhere else). Returns the key used: when
        the evaluation already has that key from the user's `compute_metrics`, theirs is kept and ours
        goes in as `eval_ft_<name>`."""
        key = f"{self.prefix}_{name}"
        if key not in self.renamed and key in self.metrics and key not in self.results:
            self.renamed[key] = f"{self.prefix}_{OURS_PREFIX}{name}"
            notice_once(
                f"renamed:{key}",
                f"the evaluation already has {key} (from compute_metrics): it is kept as it is, and ft_callbacks' "
                f"own value is reported as {self.renamed[key]}.",
            )
        key = self.renamed.get(key, key)
        if value is None:
            return key
        value = float(value)
        self.metrics[key] = value
        if key not in self.results:
            self.groups.setdefault(self.source, []).append(key)
        self.results[key] = value
        if not show:
            self.quiet.add(key)
        return key

    def value(self, name: str) -> float | None:
        """Our own result `name` of this evaluation (never the user's value of the same name)."""
        return self.results.get(self.key(name))

    def add_summary(self, name: str, value: Any) -> None:
        """A run-level value (best so far, stop reason): wandb summary, and a log_history entry of
        its own when it changes, under `summary_key(name)`."""
        self.summary[name] = value

    def add_media(self, name: str, build: Callable[[Any], Any]) -> None:
        """A wandb object (table, chart) built lazily from the `wandb` module, rank 0 only."""
        self.media[name] = build

    def stop(self, owner: str, rule: str, reason: str, summary: dict[str, Any] | None = None) -> str:
        """Stop training after this evaluation, the way every stop of ours is told: `STOP: <rule>` among
        the decisions, the full message in the evaluation's block, `summary` (e.g. `early_stop_step`)
        in the wandb summary and log_history, and a wandb alert. Returns the message.

        Example:
            ctx.stop("MetricThreshold", "threshold", "eval_json_valid_rate 0.82 < 0.9 for 2 evaluations")
        """
        self.control.should_training_stop = True
        message = f"{owner} stops training at step {self.step} ({rule} rule): {reason}"
        for name, value in (summary or {}).items():
            self.add_summary(name, value)
        self.console.append(f"STOP: {rule} rule")
        self.blocks.append(f"{_INDENT}{message}")
        self.alerts.append((f"{owner} stopped training", message, "WARN"))
        return message

    def warn(self, owner: str, message: str, alert: bool = True) -> None:
        """A warning about this evaluation: in its console block and (by default) a wandb alert."""
        self.blocks.append(f"{_INDENT}WARNING {owner}: {message}")
        if alert:
            self.alerts.append((f"{owner} warning", message, "WARN"))


# -- the trackers report_to names ------------------------------------------------------------------
def _find_trainer_of(state: Any) -> Any | None:
    """The Trainer whose state is `state`, from the calling frames (callbacks are not handed it)."""
    try:
        from transformers import Trainer
    except ImportError:  # pragma: no cover
        return None
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer) and getattr(candidate, "state", None) is state:
            return candidate
        frame = frame.f_back
    return None


def trackers(state: Any) -> list[Any]:
    """The Trainer's reporting integration callbacks (`report_to`: TensorBoard, MLflow, wandb, ...),
    found once per TrainerState."""
    found = getattr(state, _TRACKERS_ATTR, None)
    if found is not None:
        return found
    found = []
    trainer = _find_trainer_of(state)
    if trainer is not None:
        try:
            from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

            kinds = tuple(c for c in INTEGRATION_TO_CALLBACK.values() if c.__name__ not in _NOT_TRACKERS)
        except ImportError:  # pragma: no cover
            kinds = ()
        found = [cb for cb in trainer.callback_handler.callbacks if kinds and isinstance(cb, kinds)]
        # A plain attribute, not a dataclass field: TrainerState.save_to_json never sees it.
        object.__setattr__(state, _TRACKERS_ATTR, found)
    return found


def _to_trackers(args: Any, state: Any, scalars: dict[str, float], step: int) -> None:
    """Hand scalars to each tracker's own `on_log`, at `step` (a late background round keeps its step)."""
    if not scalars:
        return
    at_step = state
    if step != state.global_step:
        at_step = copy.copy(state)
        at_step.global_step = step
    for tracker in trackers(state):
        if type(tracker).__name__ == "WandbCallback":
            continue  # wandb gets the scalars together with our tables, in one row (see `publish`)
        try:
            tracker.on_log(args, at_step, None, logs=dict(scalars))
        except Exception as exc:  # a tracker's problem never stops training
            SINK.notice(f"tracker:{type(tracker).__name__}", f"{type(tracker).__name__} could not log ft_callbacks' "
                        f"results ({type(exc).__name__}: {exc}); training continues.")  # fmt: skip


def _changed_facts(state: Any, facts: dict[str, Any]) -> dict[str, Any]:
    """The run-level facts that differ from what this run last put into log_history."""
    published = getattr(state, _FACTS_ATTR, None)
    if published is None:
        published = {}
        object.__setattr__(state, _FACTS_ATTR, published)
    changed = {k: v for k, v in facts.items() if k not in published or published[k] != v}
    published.update(changed)
    return changed


def _align_evaluation_keys(history: list[dict[str, Any]], entry: dict[str, Any], prefix: str, ours: set[str]) -> None:
    """Give every evaluation entry of this training run the same keys of ours (None where a value was
    not measured), as the model card's table needs: its columns come from the first entry."""
    runtime = f"{prefix}_runtime"
    # The training run the entry belongs to: between the `train_runtime` entries the Trainer logs at the
    # end of each train() (a round published at train end comes after its run's train_runtime entry).
    at = next((i for i, e in enumerate(history) if e is entry), len(history))
    start = next((i + 1 for i in range(at - 1, -1, -1) if "train_runtime" in history[i]), 0)
    end = next((i for i in range(at, len(history)) if "train_runtime" in history[i]), len(history))
    entries = [e for e in history[start:end] if runtime in e]
    if not any(e is entry for e in entries):
        entries.append(entry)
    keys = list(dict.fromkeys(k for e in entries for k in e if k in ours))
    mine = set(keys)
    for e in entries:
        # Rebuilt in place, ours last in one order: the card writes each row's values in its own key order.
        others = [(k, v) for k, v in e.items() if k not in mine]
        values = [(k, e.get(k)) for k in keys]
        e.clear()
        e.update(others)
        e.update(values)


def publish(
    args: Any,
    state: Any,
    step: int,
    scalars: dict[str, float] | None = None,
    facts: dict[str, Any] | None = None,
    media: dict[str, Callable[[Any], Any]] | None = None,
    lines: list[str] | None = None,
    entry: dict[str, Any] | None = None,
    late: bool = False,
    alerts: list[tuple[str, str, str]] | None = None,
) -> None:
    """The one way out: `scalars` (full keys, e.g. `eval_perplexity`) into `entry` (an existing
    log_history entry; else a new one at `step`), to every tracker and to wandb at `step`; run-level
    `facts` (wandb summary; a log_history entry of their own when they changed); wandb `media`; console
    `lines`; wandb `alerts` (title, text, level). `late`: results of an evaluation that was already
    flushed (a background round), merged into its `entry` with the keys of the run's evaluations kept
    aligned. log_history is written on every rank (it is every rank's trainer_state.json); the rest on
    rank 0 only."""
    scalars = scalars or {}
    if scalars:
        if entry is not None:
            entry.update(scalars)
            if late:
                prefix = next((k[: -len("_runtime")] for k in entry if k.endswith("_runtime")), "eval")
                _align_evaluation_keys(state.log_history, entry, prefix, set(scalars))
        else:
            history = state.log_history
            # In step order, also when a background round lands after later entries.
            at = next((i for i, e in enumerate(history) if e.get("step", 0) > step), len(history))
            epoch = (state.epoch or 0.0) * step / state.global_step if state.global_step else 0.0
            history.insert(at, {**scalars, "epoch": epoch, "step": step})
    facts = {summary_key(k): v for k, v in (facts or {}).items()}
    changed = _changed_facts(state, facts)
    if changed:
        state.log_history.append({**changed, "epoch": state.epoch, "step": step})
    if not state.is_world_process_zero:
        return
    _to_trackers(args, state, scalars, step)
    # wandb: the scalars as its WandbCallback names them (eval/x, train/x), with the tables, in one row.
    data: dict[str, Any] = rewrite_logs(scalars) if scalars else {}
    wandb = SINK._wandb() if media else None
    if wandb is not None:
        for name, build in (media or {}).items():
            try:
                data[name] = build(wandb)
            except Exception as exc:
                SINK.notice(f"media:{name}", f"could not build wandb object {name!r}: {exc}")
    SINK.log(data, step)
    SINK.summarize(facts)
    for line in lines or ():
        _print(line)
    for title, text, level in alerts or ():
        SINK.alert(title, text, level)


def flush_evaluation(ctx: EvaluationContext, ours: set[str] | None = None) -> None:
    """Send what the callbacks added during one evaluation everywhere it belongs, once. `ours` are
    the keys our callbacks can produce at this prefix (kept aligned across the run's evaluations)."""
    state = ctx.state
    history = state.log_history
    last = history[-1] if history else None
    # The Trainer appended its entry for this evaluation just before on_evaluate; our values go
    # beside eval_loss in the same record.
    entry = last if last is not None and last.get("step") == ctx.step and f"{ctx.prefix}_runtime" in last else None
    publish(
        ctx.args, state, ctx.step, scalars=ctx.results, facts=ctx.summary, media=ctx.media,
        lines=_console_block(ctx), entry=entry, alerts=ctx.alerts,
    )  # fmt: skip
    if ctx.training and entry is not None:
        _align_evaluation_keys(history, entry, ctx.prefix, (ours or set()) | set(ctx.results))


_INDENT = "    "


def _console_block(ctx: EvaluationContext) -> list[str]:
    """A short block a person reads at a glance while the bars run: the Trainer's loss, then one line per
    callback (a score's delta against its baseline beside it), then the decisions (counters, saves,
    STOP). Full numbers stay in log_history, trainer_state.json and the trackers."""
    loss = ctx.metrics.get(f"{ctx.prefix}_loss")
    lines = [f"[ft_callbacks] step {ctx.step} | {ctx.prefix}_loss {_fmt(loss)}" if loss is not None else
             f"[ft_callbacks] step {ctx.step}"]  # fmt: skip
    for group, keys in ctx.groups.items():
        items = []
        for key in keys:
            if key in ctx.quiet or key.endswith("_delta"):
                continue
            item = f"{key.removeprefix(ctx.prefix + '_')} {_fmt(ctx.results[key])}"
            delta = ctx.results.get(f"{key}_delta")
            if delta is not None and math.isfinite(delta):
                item += f" ({delta:+.3g})"
            items.append(item)
        if items:
            lines.append(f"{_INDENT}{group + ': ' if group else ''}{', '.join(items)}")
    decisions = [part for part in ctx.console if part]
    if decisions:
        lines.append(f"{_INDENT}" + " | ".join(decisions))
    return ["\n".join(lines), *ctx.blocks]


def report_event(
    args: Any,
    state: Any,
    values: dict[str, float] | None = None,
    summary: dict[str, Any] | None = None,
    message: str | None = None,
    alert: str | None = None,
) -> None:
    """Report something that happened outside an evaluation (a stop at a training step, a save).
    `values` are logged as `train/<name>` metrics at the current step; `summary` goes to the wandb
    summary and (when changed) log_history as `ft_callbacks/<name>`; `alert`: a wandb alert with that
    title and `message` as its text (for stops and warnings)."""
    step = int(state.global_step)
    lines = [f"[ft_callbacks] step {step} | {message}"] if message else []
    alerts = [(alert, message or alert, "WARN")] if alert else None
    publish(args, state, step, scalars=values, facts=summary, lines=lines, alerts=alerts)


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
    SINK.log(data, int(state.global_step))


# -- what the rest of the package asks of the trackers (the sink itself stays in this module) -------
def begin_run(args: Any, new_run: bool) -> None:
    """A training run (or a standalone evaluate) starts: follow its `report_to`; on a new training run,
    one-time notices may be said again."""
    if new_run:
        SINK.new_run()
    SINK.configure(args)


def log_model_artifact(folder: str, name: str | None, metadata: dict[str, Any], aliases: list[str]) -> bool:
    """Log a checkpoint folder as a wandb model artifact in the Trainer's run (when report_to names wandb)."""
    return SINK.log_artifact(folder, name, metadata, aliases)


def wandb_has_credentials(wandb: Any) -> bool:
    """Whether wandb has an API key (environment or login), without prompting."""
    return SINK.has_api_key(wandb)


def notice_once(key: str, message: str) -> None:
    """A one-time console notice (rank-agnostic; call it from rank 0 where it matters)."""
    SINK.notice(key, message)


def warn(message: str) -> None:
    warnings.warn(f"ft_callbacks: {message}", stacklevel=3)
