"""`ft-callbacks report RUN_DIR`: a training run as one picture, one HTML page and a few lines of text.

    from ft_callbacks.report import build_report
    result = build_report("out")          # out/report/report.png, out/report/report.html
    print(result.summary)

What is read from RUN_DIR (a Trainer `output_dir`):

- `trainer_state.json`: in RUN_DIR itself or, when there is none, the newest `checkpoint-*/` or
  `best-step*/` folder inside it (largest `global_step`). With `save_strategy="no"` the Trainer writes
  none: call `trainer.save_state()` (or `trainer.state.save_to_json(...)`) after `train()`. Its
  `log_history` holds the training losses, every evaluation's metrics (ours included) and the
  run-level values our callbacks add (`ft_callbacks/early_stop_step`, `best/step`, `baseline/rougeL`).
- `ft_callbacks/overfit_guard.json` (OverfitGuard's record: stop step, rule and reason), optional;
- `best_checkpoints.json` (BestCheckpointSaver's manifest: the kept checkpoints and the best), optional.

What is written (default into RUN_DIR/report/):

- `report.png`: up to four panels over training steps, each drawn only when there is data:
  1. training vs validation loss (validation: `eval_token_loss`, else `eval_loss`; training:
     `eval_train_loss`, else the Trainer's logged `loss`), the gap between them shaded, the best
     validation loss and the best kept checkpoint marked, the early stop drawn with its rule;
  2. validation perplexity (log scale when it spans more than a factor of 10);
  3. generation scores: ROUGE/BERTScore/exact match (0-1) on the left axis, BLEU/chrF (0-100) on a
     right-hand axis, each with its step-0 baseline as a dotted line;
  4. label metrics (accuracy, F1, precision, recall, AUC, ...).
- `report.html`: one self-contained page: the picture (embedded), the summary and a table of every
  evaluation's key metrics.

matplotlib is optional (`pip install matplotlib`, or the `all` extra); it is imported only here and
drawn with the Agg canvas directly, so no display is needed and pyplot's global state is not touched.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from .core.errors import ConfigurationError

STATE_FILE = "trainer_state.json"
GUARD_RECORD = os.path.join("ft_callbacks", "overfit_guard.json")  # OverfitGuard._record_path
MANIFEST = "best_checkpoints.json"  # = best_checkpoint.MANIFEST
REPORT_DIR = "report"
FORMATS = ("png", "html")

_CHECKPOINT_DIR = re.compile(r"^(?:checkpoint-|best-step)(\d+)")

# Generation scores by scale: 0-1 on the left axis, 0-100 (sacrebleu) on the right.
# rouge2 and rougeLsum are left out: they track rouge1/rougeL and crowd the panel and the table.
_UNIT_SCORES = ("rouge1", "rougeL", "bertscore_f1", "exact_match")
_PERCENT_SCORES = ("bleu", "chrf")
_LABEL_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "f1",
    "precision",
    "recall",
    "roc_auc",
    "pr_auc",
    "invalid_rate",
)
# Columns of the HTML table, in this order, when any evaluation has them.
_TABLE_METRICS = (
    "eval_loss",
    "eval_token_loss",
    "eval_perplexity",
    "eval_train_loss",
    "eval_train_sample_loss",
    "eval_loss_gap",
    "eval_bits_per_byte",
    *(f"eval_{n}" for n in (*_UNIT_SCORES, *_PERCENT_SCORES)),
    *(f"eval_{n}" for n in _LABEL_METRICS),
)

_TRAIN_COLOR, _VAL_COLOR, _GAP_COLOR = "#1f77b4", "#d62728", "#d62728"
_BEST_COLOR, _CKPT_COLOR, _STOP_COLOR = "#2ca02c", "#9467bd", "#444444"


@dataclass
class ReportResult:
    """What `build_report` wrote (None for a format not asked for) and what it found."""

    png: Path | None
    html: Path | None
    summary: str
    steps: int
    state_file: Path | None = None
    evaluations: int = 0
    best_step: int | None = None
    stop_step: int | None = None
    notes: list[str] = field(default_factory=list)
    plotted: dict[str, list[str]] = field(default_factory=dict)  # panel -> series drawn (legend labels)


# -- reading ----------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def _step_of(state: dict[str, Any], folder: Path) -> int:
    step = state.get("global_step")
    if isinstance(step, int) and not isinstance(step, bool):
        return step
    match = _CHECKPOINT_DIR.match(folder.name)
    return int(match.group(1)) if match else -1


def find_trainer_state(run_dir: str | os.PathLike) -> tuple[Path, dict[str, Any], list[str]]:
    """The trainer_state.json `build_report` uses: RUN_DIR's own, else the newest (largest
    global_step) in a `checkpoint-*/` or `best-step*/` folder. Returns (path, parsed state, notes)."""
    root = Path(run_dir)
    if not root.exists():
        raise ConfigurationError(f"{root} does not exist; give the Trainer's output_dir (the RUN_DIR of the run).")
    if not root.is_dir():
        raise ConfigurationError(f"{root} is not a directory; give the Trainer's output_dir (the RUN_DIR of the run).")
    notes: list[str] = []
    unreadable: list[str] = []
    candidates: list[tuple[int, Path, dict[str, Any]]] = []
    folders = sorted(p for p in root.iterdir() if p.is_dir() and _CHECKPOINT_DIR.match(p.name))
    for folder in folders:
        path = folder / STATE_FILE
        if not path.is_file():
            continue
        try:
            state = _read_json(path)
        except (OSError, ValueError) as exc:
            unreadable.append(f"{path} ({exc})")
            continue
        if isinstance(state, dict):
            candidates.append((_step_of(state, folder), path, state))
    newest = max(candidates, key=lambda c: (c[0], c[1].parent.name.startswith("checkpoint-")), default=None)

    top = root / STATE_FILE
    if top.is_file():
        try:
            state = _read_json(top)
        except (OSError, ValueError) as exc:
            unreadable.append(f"{top} ({exc})")
        else:
            if isinstance(state, dict):
                if newest is not None and newest[0] > _step_of(state, root):
                    notes.append(
                        f"{newest[1].parent.name}/{STATE_FILE} is at step {newest[0]}, later than "
                        f"{STATE_FILE} in the run folder (step {_step_of(state, root)}); the run folder's is used."
                    )
                return top, state, notes
            unreadable.append(f"{top} (not a JSON object)")
    if newest is not None:
        notes.append(f"{STATE_FILE} read from {newest[1].parent.name}/ (the run folder has none of its own).")
        if unreadable:
            notes.append("unreadable: " + "; ".join(unreadable))
        return newest[1], newest[2], notes
    looked = f"{top}, and {root}/checkpoint-*/{STATE_FILE} or {root}/best-step*/{STATE_FILE}"
    problem = f" Found but could not read: {'; '.join(unreadable)}." if unreadable else ""
    raise ConfigurationError(
        f"no {STATE_FILE} in {root}: looked for {looked}.{problem} With save_strategy='no' the Trainer "
        f"writes none: call trainer.save_state() (or trainer.state.save_to_json('{root}/{STATE_FILE}')) "
        "after trainer.train()."
    )


def _optional_json(path: Path) -> dict[str, Any] | None:
    try:
        data = _read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and math.isfinite(number) else None


@dataclass
class _Run:
    """The numbers of one run, merged from trainer_state.json and the callbacks' files."""

    root: Path
    state_file: Path
    steps: int
    max_steps: int | None
    epoch: float | None
    train: dict[int, float]  # step -> the Trainer's logged training loss
    evals: dict[int, dict[str, float]]  # step -> every eval_* number logged at that step
    epochs: dict[int, float]
    summary: dict[str, Any]  # last value of each run-level key (ft_callbacks/..., best/..., baseline/...)
    guard: dict[str, Any] | None
    manifest: dict[str, Any] | None
    hf_best_checkpoint: str | None
    notes: list[str]

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of an eval metric, non-finite values as NaN (a gap in the line)."""
        steps, values = [], []
        for step in sorted(self.evals):
            value = self.evals[step].get(key)
            if value is not None:
                steps.append(step)
                values.append(value if math.isfinite(value) else math.nan)
        return steps, values

    def has(self, key: str) -> bool:
        return any(key in entry for entry in self.evals.values())

    @property
    def val_key(self) -> str | None:
        for key in ("eval_token_loss", "eval_loss"):
            if self.has(key):
                return key
        return None

    def best_validation(self) -> tuple[int, float] | None:
        key = self.val_key
        if key is None:
            return None
        points = [(v, s) for s, v in zip(*self.series(key), strict=True) if not math.isnan(v)]
        if not points:
            return None
        value, step = min(points)  # earliest step among equal values
        return step, value

    def stop(self) -> tuple[int, str, str] | None:
        """(step, rule, reason) of OverfitGuard's early stop, from its record or the log."""
        if self.guard and self.guard.get("stop_step") is not None:
            step = _int(self.guard.get("stop_step"))
            if step is not None:
                return step, str(self.guard.get("stop_rule") or ""), str(self.guard.get("stop_reason") or "")
        step = _int(self.summary.get("ft_callbacks/early_stop_step"))
        if step is None:
            return None
        return (
            step,
            str(self.summary.get("ft_callbacks/early_stop_rule") or ""),
            str(self.summary.get("ft_callbacks/early_stop_reason") or ""),
        )

    def best_checkpoint(self) -> dict[str, Any] | None:
        """{step, metric, value, path, exists} of BestCheckpointSaver's best (manifest, else the log)."""
        manifest = self.manifest or {}
        if manifest.get("best"):
            entry = next(
                (
                    e
                    for e in manifest.get("checkpoints", [])
                    if isinstance(e, dict) and e.get("path") == manifest["best"]
                ),
                {},
            )
            step = _int(entry.get("step", manifest.get("best_step")))
            metric = str(entry.get("metric") or manifest.get("monitor") or "")
            value = _number(entry.get("value", manifest.get("best_value")))
            path = self.root / str(manifest["best"])
            return {"step": step, "metric": metric, "value": value, "path": path, "exists": path.is_dir()}
        step = _int(self.summary.get("best/step"))
        if step is None:
            return None
        metrics = [k for k in self.summary if k.startswith("best/") and k[5:].startswith("eval_")]
        metric = metrics[-1][5:] if metrics else ""
        path = self.root / str(self.summary["best/checkpoint"]) if self.summary.get("best/checkpoint") else None
        return {
            "step": step,
            "metric": metric,
            "value": _number(self.summary.get(f"best/{metric}")) if metric else None,
            "path": path,
            "exists": bool(path and path.is_dir()),
        }

    def kept_checkpoints(self) -> list[dict[str, Any]]:
        rows = []
        for entry in (self.manifest or {}).get("checkpoints", []):
            if isinstance(entry, dict) and entry.get("path"):
                rows.append({**entry, "exists": (self.root / str(entry["path"])).is_dir()})
        return rows

    def baseline(self, name: str) -> float | None:
        """The step-0 (untrained model) score GenerationScorer recorded for `name`."""
        value = _number(self.summary.get(f"baseline/{name}"))
        if value is None:
            value = self.evals.get(0, {}).get(f"eval_{name}")
        return value if value is not None and math.isfinite(value) else None


def _load_run(run_dir: str | os.PathLike) -> _Run:
    state_file, state, notes = find_trainer_state(run_dir)
    root = Path(run_dir)
    history = state.get("log_history") or []
    train: dict[int, float] = {}
    evals: dict[int, dict[str, float]] = {}
    epochs: dict[int, float] = {}
    summary: dict[str, Any] = {}
    for entry in history:
        if not isinstance(entry, dict):
            continue
        step = _int(entry.get("step"))
        if step is None:
            continue
        for key, value in entry.items():
            if "/" in key:  # run-level values: best/..., ft_callbacks/..., baseline/...
                summary[key] = value
        loss = _number(entry.get("loss"))
        if loss is not None:
            train[step] = loss
        numbers = {k: _number(v) for k, v in entry.items() if k.startswith("eval_")}
        numbers = {k: v for k, v in numbers.items() if v is not None}
        if numbers:
            evals.setdefault(step, {}).update(numbers)
            epoch = _number(entry.get("epoch"))
            if epoch is not None:
                epochs[step] = epoch
    steps = _int(state.get("global_step")) or max([*train, *evals, 0])
    guard = _optional_json(root / GUARD_RECORD)
    if guard and (_int(guard.get("global_step")) or 0) > steps:
        notes.append(
            f"OverfitGuard's record reaches step {guard['global_step']}, later than {STATE_FILE} (step {steps}): "
            "the state file is older than the end of the run."
        )
    return _Run(
        root=root,
        state_file=state_file,
        steps=steps,
        max_steps=_int(state.get("max_steps")),
        epoch=_number(state.get("epoch")),
        train=train,
        evals=evals,
        epochs=epochs,
        summary=summary,
        guard=guard,
        manifest=_optional_json(root / MANIFEST),
        hf_best_checkpoint=state.get("best_model_checkpoint")
        if isinstance(state.get("best_model_checkpoint"), str)
        else None,
        notes=notes,
    )


# -- text -------------------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "-"
    if math.isnan(value) or math.isinf(value):
        return str(value)
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def _short(key: str) -> str:
    return key.removeprefix("eval_")


def _summary_lines(run: _Run) -> list[str]:
    source = run.state_file.relative_to(run.root) if run.state_file.is_relative_to(run.root) else run.state_file
    lines = [f"Run {run.root} (read from {source})"]
    trained = f"Trained {run.steps} steps"
    if run.max_steps and run.max_steps > run.steps:
        trained += f" of max_steps={run.max_steps}"
    if run.epoch is not None:
        trained += f" ({run.epoch:.3g} epochs)"
    lines.append(f"{trained}; {len(run.evals)} evaluations logged.")
    val_key = run.val_key
    best = run.best_validation()
    if best is None:
        lines.append(
            "No validation loss was logged: the report shows the training loss only (for validation curves set "
            "eval_strategy='steps' and pass an eval_dataset)."
        )
    else:
        step, value = best
        extra = ""
        ppl = run.evals.get(step, {}).get("eval_perplexity")
        if ppl is not None:
            extra = f" (perplexity {_fmt(ppl)})"
        last_step = max(s for s in run.evals if val_key in run.evals[s])
        last = run.evals[last_step][val_key]
        lines.append(
            f"Best validation loss ({val_key}): {_fmt(value)} at step {step}{extra}; last {_fmt(last)} at step "
            f"{last_step}."
        )
    stop = run.stop()
    if stop is not None:
        step, rule, reason = stop
        lines.append(f"Stopped early at step {step} by OverfitGuard ({rule} rule): {reason}")
    elif run.guard is not None:
        lines.append(f"No early stop: OverfitGuard let training run to step {run.steps}.")
    else:
        lines.append("No early stop recorded.")
    ckpt = run.best_checkpoint()
    if ckpt is not None:
        kept = len(run.kept_checkpoints())
        where = f"{ckpt['path']}" if ckpt["path"] is not None else "(path not recorded)"
        missing = "" if ckpt["exists"] else " [folder not found]"
        value = f"{ckpt['metric']} {_fmt(ckpt['value'])}, " if ckpt["metric"] else ""
        lines.append(
            f"Best checkpoint: {where}{missing} ({value}step {ckpt['step']}" + (f"; {kept} kept)" if kept else ")")
        )
    elif run.hf_best_checkpoint:
        lines.append(f"Best checkpoint (the Trainer's): {run.hf_best_checkpoint}")
    scores = _latest_scores(run, (*_UNIT_SCORES, *_PERCENT_SCORES), with_baseline=True)
    if scores:
        lines.append(scores)
    labels = _latest_scores(run, _LABEL_METRICS, with_baseline=False, title="Label metrics")
    if labels:
        lines.append(labels)
    lines.extend(_human_lines(run.root))
    lines.extend(f"Note: {note}" for note in run.notes)
    return lines


def _human_lines(root: Path) -> list[str]:
    """One line per imported human comparison (`ft-callbacks compare RUN_DIR --import FILE`)."""
    from .human_compare import read_human_results

    lines = []
    for entry in read_human_results(root):
        line = (f"Human check at step {entry.get('step')}: win rate {_fmt(_number(entry.get('win_rate')))} over "
                f"{entry.get('pairs')} pairs ({entry.get('wins')} wins, {entry.get('losses')} losses, "
                f"{entry.get('ties')} ties)")  # fmt: skip
        if entry.get("judge_pairs"):
            line += (f"; the judge agrees on {_fmt(_number(entry.get('judge_agreement')))} of {entry['judge_pairs']}"
                     f" (Cohen's kappa {_fmt(_number(entry.get('judge_kappa')))})")  # fmt: skip
        lines.append(line + ".")
    return lines


def _latest_scores(run: _Run, names: Sequence[str], with_baseline: bool, title: str = "Generation scores") -> str:
    present = [n for n in names if run.has(f"eval_{n}")]
    if not present:
        return ""
    step = max(s for s in run.evals if any(f"eval_{n}" in run.evals[s] for n in present))
    parts = []
    for name in present:
        value = run.evals[step].get(f"eval_{name}")
        if value is None:
            continue
        part = f"{name} {_fmt(value)}"
        base = run.baseline(name) if with_baseline else None
        if base is not None and step != 0:
            part += f" ({value - base:+.4g} vs step 0)"
        parts.append(part)
    return f"{title} at step {step}: " + ", ".join(parts) + "."


# -- the picture ------------------------------------------------------------------------------------
def _matplotlib() -> tuple[Any, Any]:
    try:
        import matplotlib  # noqa: F401  (first, so a missing package is reported as such)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigurationError(
            "ft-callbacks report draws with matplotlib, which is not installed: pip install matplotlib "
            "(or pip install 'ft-callbacks[all]')."
        ) from None
    return Figure, FigureCanvasAgg


def _interp(x: Sequence[float], xs: Sequence[float], ys: Sequence[float]) -> list[float]:
    """Linear interpolation of (xs, ys) at x; NaN outside [xs[0], xs[-1]]."""
    out = []
    points = [(a, b) for a, b in zip(xs, ys, strict=True) if not math.isnan(b)]
    for value in x:
        result = math.nan
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            if x0 <= value <= x1:
                result = y0 if x1 == x0 else y0 + (y1 - y0) * (value - x0) / (x1 - x0)
                break
        if len(points) == 1 and points[0][0] == value:
            result = points[0][1]
        out.append(result)
    return out


def _mark_events(ax: Any, run: _Run, label: bool) -> None:
    stop = run.stop()
    if stop is not None:
        step, rule, _ = stop
        ax.axvline(
            step,
            color=_STOP_COLOR,
            linestyle="--",
            linewidth=1.4,
            label=f"early stop @ {step} ({rule} rule)" if label else None,
        )
    best = run.best_validation()
    if best is not None:
        ax.axvline(best[0], color=_BEST_COLOR, linestyle=":", linewidth=1.2, alpha=0.8)


def _loss_panel(ax: Any, run: _Run) -> None:
    val_key = run.val_key
    train_steps = sorted(run.train)
    train_values = [run.train[s] for s in train_steps]
    has_window = run.has("eval_train_loss")
    if has_window:
        ts, tv = run.series("eval_train_loss")
        if len(train_steps) > len(ts):  # logged more often than evaluated: the finer curve, faintly
            ax.plot(train_steps, train_values, color=_TRAIN_COLOR, alpha=0.3, linewidth=1, label="train loss (logged)")
        ax.plot(
            ts, tv, color=_TRAIN_COLOR, marker="o", markersize=3.5, linewidth=2, label="train loss (eval_train_loss)"
        )
    else:
        ts, tv = train_steps, train_values
        if ts:
            ax.plot(
                ts,
                tv,
                color=_TRAIN_COLOR,
                marker="o" if len(ts) < 60 else None,
                markersize=3,
                linewidth=2,
                label="train loss (logged)",
            )
    compare_steps, compare_values = ts, tv
    if run.has("eval_train_sample_loss"):
        compare_steps, compare_values = run.series("eval_train_sample_loss")
        ax.plot(
            compare_steps,
            compare_values,
            color=_TRAIN_COLOR,
            linestyle="--",
            linewidth=1.5,
            label="train sample loss (eval mode)",
        )
    if val_key is not None:
        vs, vv = run.series(val_key)
        ax.plot(vs, vv, color=_VAL_COLOR, marker="o", markersize=3.5, linewidth=2, label=f"validation ({val_key})")
        if compare_steps:
            train_at = _interp(vs, compare_steps, compare_values)
            # Where either side is missing (NaN) the shading breaks, like the lines.
            where = [v >= t for v, t in zip(vv, train_at, strict=True)]  # False for NaN
            if sum(where) >= 2:
                ax.fill_between(
                    vs,
                    train_at,
                    vv,
                    where=where,
                    interpolate=True,
                    color=_GAP_COLOR,
                    alpha=0.13,
                    label="gap (validation − train)",
                )
        best = run.best_validation()
        ckpt = run.best_checkpoint()
        if best is not None:
            step, value = best
            same = ckpt is not None and ckpt["step"] == step
            ax.plot(
                [step],
                [value],
                marker="*",
                markersize=16,
                color=_BEST_COLOR,
                linestyle="none",
                zorder=5,
                label=f"best validation {_fmt(value)} @ {step}" + (" = best checkpoint" if same else ""),
            )
        if ckpt is not None and ckpt["step"] is not None and (best is None or ckpt["step"] != best[0]):
            at = run.evals.get(ckpt["step"], {}).get(val_key)
            if at is not None and math.isfinite(at):
                ax.plot(
                    [ckpt["step"]],
                    [at],
                    marker="D",
                    markersize=9,
                    color=_CKPT_COLOR,
                    linestyle="none",
                    zorder=5,
                    label=f"best checkpoint ({ckpt['metric'] or 'monitor'}) @ {ckpt['step']}",
                )
    _mark_events(ax, run, label=True)
    ax.set_ylabel("loss (nats / token)" if val_key == "eval_token_loss" else "loss")
    title = "Training vs validation loss"
    if val_key is None:
        title += " — no evaluations logged, training loss only"
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    if not ts and val_key is None:
        ax.text(0.5, 0.5, "no losses in log_history", transform=ax.transAxes, ha="center", va="center", color="gray")
    ax.legend(loc="best", fontsize=8, framealpha=0.85)


def _perplexity_panel(ax: Any, run: _Run) -> None:
    steps, values = run.series("eval_perplexity")
    ax.plot(steps, values, color=_VAL_COLOR, marker="o", markersize=3.5, linewidth=2, label="validation perplexity")
    finite = [v for v in values if not math.isnan(v) and v > 0]
    if finite and max(finite) / min(finite) > 10:
        ax.set_yscale("log")
    best = run.best_validation()
    if best is not None and best[0] in run.evals and "eval_perplexity" in run.evals[best[0]]:
        value = run.evals[best[0]]["eval_perplexity"]
        ax.plot(
            [best[0]],
            [value],
            marker="*",
            markersize=14,
            color=_BEST_COLOR,
            linestyle="none",
            zorder=5,
            label=f"at best validation loss: {_fmt(value)}",
        )
    _mark_events(ax, run, label=False)
    ax.set_ylabel("perplexity")
    ax.set_title("Validation perplexity", loc="left", fontsize=11, fontweight="bold")
    ax.legend(loc="best", fontsize=8, framealpha=0.85)


def _score_lines(ax: Any, run: _Run, names: Iterable[str], colors: dict[str, str], style: str) -> list[Any]:
    handles = []
    for name in names:
        steps, values = run.series(f"eval_{name}")
        if not steps:
            continue
        color = colors[name]
        (line,) = ax.plot(
            steps, values, color=color, linestyle=style, marker="o", markersize=3.5, linewidth=2, label=name
        )
        handles.append(line)
        base = run.baseline(name)
        if base is not None:
            ax.axhline(base, color=color, linestyle=":", linewidth=1.2, alpha=0.7)
            ax.plot(
                [0],
                [base],
                marker="o",
                markersize=6,
                markerfacecolor="white",
                markeredgecolor=color,
                linestyle="none",
                zorder=5,
            )
    return handles


def _baseline_handle() -> Any:
    from matplotlib.lines import Line2D

    return Line2D(
        [], [], color="gray", linestyle=":", marker="o", markerfacecolor="white", label="step-0 baseline (untrained)"
    )


def _generation_panel(ax: Any, run: _Run, palette: list[str]) -> None:
    unit = [n for n in _UNIT_SCORES if run.has(f"eval_{n}")]
    percent = [n for n in _PERCENT_SCORES if run.has(f"eval_{n}")]
    colors = {n: palette[i % len(palette)] for i, n in enumerate([*unit, *percent])}
    if unit:
        handles = _score_lines(ax, run, unit, colors, "-")
        ax.set_ylabel("ROUGE / BERTScore (0–1)")
        if percent:
            twin = ax.twinx()
            handles += _score_lines(twin, run, percent, colors, "--")
            twin.set_ylabel("BLEU / chrF (0–100), dashed")
    else:
        handles = _score_lines(ax, run, percent, colors, "--")
        ax.set_ylabel("BLEU / chrF (0–100)")
    if any(run.baseline(n) is not None for n in (*unit, *percent)):
        handles.append(_baseline_handle())
    _mark_events(ax, run, label=False)
    ax.set_title("Generation scores", loc="left", fontsize=11, fontweight="bold")
    ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.85)


def _label_panel(ax: Any, run: _Run, palette: list[str]) -> None:
    names = [n for n in _LABEL_METRICS if run.has(f"eval_{n}")]
    colors = {n: palette[i % len(palette)] for i, n in enumerate(names)}
    handles = _score_lines(ax, run, names, colors, "-")
    if any(run.baseline(n) is not None for n in names):
        handles.append(_baseline_handle())
    _mark_events(ax, run, label=False)
    ax.set_ylabel("score (0–1)")
    ax.set_title("Label metrics", loc="left", fontsize=11, fontweight="bold")
    ax.legend(handles=handles, loc="best", fontsize=8, framealpha=0.85)


def _figure_png(run: _Run, plotted: dict[str, list[str]] | None = None) -> bytes:
    """The picture; `plotted` (when given) receives each panel's drawn series, by legend label."""
    Figure, FigureCanvasAgg = _matplotlib()
    panels: list[str] = ["loss"]
    if run.has("eval_perplexity"):
        panels.append("perplexity")
    if any(run.has(f"eval_{n}") for n in (*_UNIT_SCORES, *_PERCENT_SCORES)):
        panels.append("generation")
    if any(run.has(f"eval_{n}") for n in _LABEL_METRICS):
        panels.append("labels")
    heights = [1.5 if p == "loss" else 1.0 for p in panels]
    fig = Figure(figsize=(11, 1.5 + sum(2.9 * h for h in heights)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False, gridspec_kw={"height_ratios": heights})[:, 0]
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "loss":
            _loss_panel(ax, run)
        elif panel == "perplexity":
            _perplexity_panel(ax, run)
        elif panel == "generation":
            _generation_panel(ax, run, palette)
        else:
            _label_panel(ax, run, palette)
        ax.grid(True, alpha=0.3)
        if plotted is not None:
            plotted[panel] = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    axes[-1].set_xlabel("training step")
    title = f"{run.root.resolve().name}: {run.steps} steps"
    stop = run.stop()
    if stop is not None:
        title += f", stopped early at step {stop[0]} ({stop[1]} rule)"
    best = run.best_validation()
    if best is not None:
        title += f", best validation loss {_fmt(best[1])} at step {best[0]}"
    fig.suptitle(title, fontsize=12)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


# -- the page ---------------------------------------------------------------------------------------
_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;color:#222}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;margin-top:28px}
.meta{color:#666;font-size:13px} img{max-width:100%;border:1px solid #ddd}
ul.summary li{margin:3px 0} table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right} th{background:#f4f4f4;position:sticky;top:0}
td.note{text-align:left;color:#444} tr.best td{background:#e9f7ec} tr.stop td{background:#fdecec}
tr.best.stop td{background:#f6f1dc} code{background:#f4f4f4;padding:1px 4px}
"""


def _table_rows(run: _Run) -> tuple[list[str], list[tuple[list[str], list[str]]]]:
    """(header, [(css classes, cells)]) of the evaluations table."""
    columns = [k for k in _TABLE_METRICS if run.has(k)]
    ckpt = run.best_checkpoint()
    if ckpt and ckpt["metric"] and ckpt["metric"] not in columns and run.has(ckpt["metric"]):
        columns.append(ckpt["metric"])
    show_logged = not run.has("eval_train_loss") and any(s in run.train for s in run.evals)
    header = ["step", "epoch", *(["train loss (logged)"] if show_logged else []), *map(_short, columns), "notes"]
    best = run.best_validation()
    stop = run.stop()
    kept = {_int(e.get("step")): e for e in run.kept_checkpoints()}
    rows = []
    for step in sorted(run.evals):
        entry = run.evals[step]
        classes, notes = [], []
        if best is not None and step == best[0]:
            classes.append("best")
            notes.append("best validation loss")
        if ckpt is not None and step == ckpt["step"]:
            notes.append("best checkpoint")
        elif step in kept:
            notes.append("checkpoint kept")
        if stop is not None and step == stop[0]:
            classes.append("stop")
            notes.append(f"early stop ({stop[1]} rule)")
        if step == 0 and any(f"eval_{n}" in entry for n in (*_UNIT_SCORES, *_PERCENT_SCORES)):
            notes.append("baseline (untrained)")
        epoch = run.epochs.get(step)
        cells = [str(step), "-" if epoch is None else f"{epoch:.3g}"]
        if show_logged:
            cells.append(_fmt(run.train.get(step)))
        cells += [_fmt(entry.get(k)) for k in columns]
        cells.append(", ".join(notes))
        rows.append((classes, cells))
    return header, rows


def _html_page(run: _Run, summary_lines: list[str], png: bytes) -> str:
    esc = html.escape
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>ft_callbacks report: {esc(run.root.resolve().name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Training report: {esc(run.root.resolve().name)}</h1>",
        f'<div class="meta">{esc(str(run.root.resolve()))} · {esc(str(run.state_file))} · generated '
        f"{datetime.now().isoformat(timespec='seconds')} by ft_callbacks</div>",
        "<h2>Summary</h2>",
        '<ul class="summary">',
        *(f"<li>{esc(line)}</li>" for line in summary_lines[1:]),
        "</ul>",
    ]
    stop = run.stop()
    best = run.best_validation()
    ckpt = run.best_checkpoint()
    ckpt_text = "-"
    if ckpt is not None:
        where = ckpt["path"].name if ckpt["path"] is not None else "(path not recorded)"
        ckpt_text = f"{where} (step {ckpt['step']}" + ("" if ckpt["exists"] else ", folder not found") + ")"
    # data-key: stable hooks for scripts reading the page.
    facts = [
        ("steps", "steps trained", str(run.steps)),
        ("evaluations", "evaluations", str(len(run.evals))),
        ("best_step", "best validation step", "-" if best is None else str(best[0])),
        ("best_value", "best validation loss", "-" if best is None else f"{_fmt(best[1])} ({run.val_key})"),
        ("early_stop_step", "early stop step", "-" if stop is None else str(stop[0])),
        ("early_stop_rule", "stop rule", "-" if stop is None else stop[1]),
        ("early_stop_reason", "stop reason", "-" if stop is None else stop[2]),
        ("best_checkpoint_step", "best checkpoint step", "-" if ckpt is None else str(ckpt["step"])),
        ("best_checkpoint", "best checkpoint", ckpt_text),
        ("checkpoints_kept", "checkpoints kept", str(len(run.kept_checkpoints()))),
    ]
    out.append('<table class="facts">')
    out += [
        f'<tr><th style="text-align:left">{esc(label)}</th><td class="note" data-key="{key}">{esc(v)}</td></tr>'
        for key, label, v in facts
    ]
    out.append("</table>")
    if png:
        encoded = base64.b64encode(png).decode("ascii")
        out += ["<h2>Curves</h2>", f'<img alt="training curves" src="data:image/png;base64,{encoded}">']
    kept = run.kept_checkpoints()
    if kept:
        out += [
            "<h2>Checkpoints kept (best_checkpoints.json)</h2>",
            "<table>",
            "<tr><th>step</th><th>metric</th><th>value</th><th>path</th><th>best</th><th>on disk</th></tr>",
        ]
        for e in kept:
            out.append(
                f"<tr><td>{esc(str(e.get('step')))}</td><td class=note>{esc(str(e.get('metric', '')))}</td>"
                f"<td>{esc(_fmt(_number(e.get('value'))))}</td><td class=note><code>{esc(str(e['path']))}</code></td>"
                f"<td>{'yes' if e.get('best') else ''}</td><td>{'yes' if e['exists'] else 'missing'}</td></tr>"
            )
        out.append("</table>")
    header, rows = _table_rows(run)
    out.append(f"<h2>Evaluations ({len(rows)})</h2>")
    if rows:
        out += ["<table>", "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"]
        for classes, cells in rows:
            tds = "".join(f"<td>{esc(c)}</td>" for c in cells[:-1]) + f'<td class="note">{esc(cells[-1])}</td>'
            cls = f' class="{" ".join(classes)}"' if classes else ""
            out.append(f"<tr{cls}>{tds}</tr>")
        out.append("</table>")
    else:
        out.append("<p>No evaluations were logged; the curves show the training loss only.</p>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# -- entry point ------------------------------------------------------------------------------------
def _check_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    items = [formats] if isinstance(formats, str) else list(formats)
    chosen: list[str] = []
    for item in items:
        for name in str(item).split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name not in FORMATS:
                raise ConfigurationError(f"report format {name!r} is not known; use any of {', '.join(FORMATS)}.")
            if name not in chosen:
                chosen.append(name)
    return tuple(chosen)


def build_report(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    formats: str | Iterable[str] = FORMATS,
) -> ReportResult:
    """Draw the run in `run_dir` (a Trainer output_dir) into `out_dir` (default `run_dir/report`).

    `formats`: any of "png" (report.png) and "html" (report.html, the picture embedded); empty for
    the summary alone (no matplotlib needed). Raises `ConfigurationError` when `run_dir` is missing,
    holds no readable trainer_state.json (nor a checkpoint folder with one), or matplotlib is not
    installed."""
    chosen = _check_formats(formats)
    run = _load_run(run_dir)
    lines = _summary_lines(run)
    plotted: dict[str, list[str]] = {}
    png_bytes = _figure_png(run, plotted) if chosen else b""
    target = Path(out_dir) if out_dir is not None else Path(run_dir) / REPORT_DIR
    png_path = html_path = None
    if chosen:
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create the report folder {target} ({exc}); pick another out_dir."
            ) from None
    if "png" in chosen:
        png_path = target / "report.png"
        png_path.write_bytes(png_bytes)
        lines.append(f"Picture: {png_path}")
    if "html" in chosen:
        html_path = target / "report.html"
        html_path.write_text(_html_page(run, lines, png_bytes), encoding="utf-8")
        lines.append(f"Page: {html_path}")
    best = run.best_validation()
    stop = run.stop()
    return ReportResult(
        png=png_path,
        html=html_path,
        summary="\n".join(lines),
        steps=run.steps,
        state_file=run.state_file,
        evaluations=len(run.evals),
        best_step=None if best is None else best[0],
        stop_step=None if stop is None else stop[0],
        notes=list(run.notes),
        plotted=plotted,
    )


__all__ = ["ReportResult", "build_report", "find_trainer_state"]
