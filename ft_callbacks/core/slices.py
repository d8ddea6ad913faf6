"""Metrics by slice (a data source, a length bucket, a class): averages hide the slice that fails.

Framework-free: plain lists in, a `SliceReport` out, used by LabelScorer and callable from any
scorer.

* `slice_means` -- per-sample scores (ROUGE, BLEU, a judge's score ...) averaged within each slice;
* `slice_metrics` -- a metric recomputed on each slice's samples (F1 or R² of a slice is not a mean
  of per-sample values).

A slice with fewer than ``min_slice_size`` samples is reported with its count and ``too_small=True``
and no values: a confident-looking number from three samples is worse than none. `SliceReport.worst`
names the slice with the worst value of a metric among the slices large enough, using the metric's
direction (`infer_mode`, or ``mode=``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ConfigurationError
from .label_metrics import flat_label_keys
from .modes import Mode, check_mode

__all__ = [
    "SliceReport",
    "SliceResult",
    "format_slices",
    "slice_keys",
    "slice_means",
    "slice_metrics",
    "slice_names",
]

DEFAULT_MIN_SLICE_SIZE = 10


@dataclass
class SliceResult:
    """One slice: its name, sample count, and values (empty when ``too_small``)."""

    name: str
    count: int
    values: dict[str, float] = field(default_factory=dict)
    too_small: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class SliceReport:
    """Every slice of one evaluation, in name order (see the module docstring)."""

    slices: list[SliceResult]
    min_slice_size: int

    def __getitem__(self, name: str) -> SliceResult:
        for result in self.slices:
            if result.name == name:
                return result
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [result.name for result in self.slices]

    @property
    def too_small(self) -> list[str]:
        """Names of the slices under ``min_slice_size`` (reported without values)."""
        return [result.name for result in self.slices if result.too_small]

    def worst(self, metric: str, mode: Mode | None = None) -> SliceResult | None:
        """The slice with the worst finite value of ``metric`` among the slices large enough (the lowest
        for a "max" metric, the highest for a "min" one; ties go to the first name). None when no slice
        has the metric.

        Args:
            metric: a metric name as in ``values`` (``"f1"``, ``"rmse"``, ``"rougeL"``).
            mode: "min" or "max"; default from the name (`infer_mode`).

        Example:
            >>> report = slice_means({"rmse": [1.0, 2.0, 5.0, 6.0]}, ["a", "a", "b", "b"], min_slice_size=2)
            >>> report.worst("rmse").name
            'b'
        """
        direction = check_mode(mode, metric)
        candidates = [
            r for r in self.slices if not r.too_small and metric in r.values and math.isfinite(r.values[metric])
        ]
        if not candidates:
            return None
        sign = 1.0 if direction == "max" else -1.0
        return min(candidates, key=lambda r: sign * r.values[metric])  # min() keeps the first of equals

    def rows(self, metrics: Sequence[str] | None = None) -> tuple[list[str], list[list[Any]]]:
        """(columns, rows) of a per-slice table: slice, count, too_small, then one column per metric
        (None where a slice has no value)."""
        if metrics is None:
            seen: dict[str, None] = {}
            for result in self.slices:
                seen.update(dict.fromkeys(result.values))
            metrics = list(seen)
        columns = ["slice", "count", "too_small", *metrics]
        data = [[r.name, r.count, r.too_small, *(r.values.get(m) for m in metrics)] for r in self.slices]
        return columns, data


def _check_min_size(min_slice_size: int) -> int:
    if isinstance(min_slice_size, bool) or not isinstance(min_slice_size, (int, np.integer)) or min_slice_size < 1:
        raise ConfigurationError(f"min_slice_size={min_slice_size!r} is not valid: use a positive sample count.")
    return int(min_slice_size)


def slice_names(slices: Sequence[Any]) -> list[str]:
    """One slice name per sample as a string (None becomes ``"None"``); raises for an empty list."""
    names = [str(s) for s in slices]
    if not names:
        raise ConfigurationError("No samples to slice; evaluate on some data.")
    return names


def _groups(slices: Sequence[Any]) -> dict[str, np.ndarray]:
    names = np.asarray(slice_names(slices), dtype=object)
    return {name: np.flatnonzero(names == name) for name in sorted(set(names.tolist()))}


def slice_means(
    scores: Mapping[str, Sequence[float]],
    slices: Sequence[Any],
    min_slice_size: int = DEFAULT_MIN_SLICE_SIZE,
) -> SliceReport:
    """Per-slice means of per-sample scores, with counts.

    NaN scores (a sample a metric could not score) are left out of that metric's mean; a slice whose
    scores of a metric are all NaN has no value for it.

    Args:
        scores: metric name -> one score per sample.
        slices: one slice name per sample (same order).
        min_slice_size: slices with fewer samples are reported as too small, without values.

    Raises:
        ConfigurationError: score lists of another length than ``slices``, or a bad ``min_slice_size``.

    Example:
        >>> report = slice_means({"rougeL": [0.2, 0.4, 0.9]}, ["web", "web", "news"], min_slice_size=2)
        >>> report["web"].values, report["news"].too_small
        ({'rougeL': 0.30000000000000004}, True)
    """
    minimum = _check_min_size(min_slice_size)
    names = slice_names(slices)
    arrays: dict[str, np.ndarray] = {}
    for metric, values in scores.items():
        arr = np.asarray(values, dtype=np.float64)
        if arr.shape != (len(names),):
            raise ConfigurationError(
                f"scores[{metric!r}] has {arr.size} values for {len(names)} slice names; pass one per sample."
            )
        arrays[metric] = arr
    results = []
    for name, index in _groups(names).items():
        result = SliceResult(name, len(index), too_small=len(index) < minimum)
        if not result.too_small:
            for metric, arr in arrays.items():
                part = arr[index]
                part = part[~np.isnan(part)]
                if len(part):
                    result.values[metric] = float(part.mean())
        results.append(result)
    return SliceReport(results, minimum)


def slice_metrics(
    slices: Sequence[Any],
    compute: Callable[[np.ndarray], Mapping[str, float]],
    min_slice_size: int = DEFAULT_MIN_SLICE_SIZE,
) -> SliceReport:
    """A metric recomputed on each slice's samples: ``compute(indices)`` gets the sample indices of one
    slice (dataset order) and returns its metrics. A slice under ``min_slice_size`` is not computed.

    A `ConfigurationError` raised by ``compute`` for one slice (e.g. a slice without a single labelled
    token) becomes that slice's note, with no values; it never hides the other slices.

    Args:
        slices: one slice name per sample.
        compute: indices -> {metric: value}; non-finite values are dropped.
        min_slice_size: slices with fewer samples are reported as too small, without values.

    Example:
        >>> y, p = [1, 0, 1, 1], [1, 0, 0, 1]
        >>> acc = lambda i: {"accuracy": float(np.mean(np.asarray(y)[i] == np.asarray(p)[i]))}
        >>> slice_metrics(["a", "a", "b", "b"], acc, min_slice_size=1)["b"].values
        {'accuracy': 0.5}
    """
    minimum = _check_min_size(min_slice_size)
    results = []
    for name, index in _groups(slices).items():
        result = SliceResult(name, len(index), too_small=len(index) < minimum)
        if not result.too_small:
            try:
                values = compute(index)
            except ConfigurationError as exc:
                result.notes.append(str(exc))
            else:
                result.values = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
        results.append(result)
    return SliceReport(results, minimum)


def slice_keys(names: Sequence[str]) -> list[str]:
    """The metric-key form of each slice name (``[A-Za-z0-9_]``, deduplicated), for keys such as
    ``eval_slice_<key>_f1``.

    Example:
        >>> slice_keys(["web/short", "news", "web short"])
        ['web_short', 'news', 'web_short_2']
    """
    return flat_label_keys(names)


def format_slices(report: SliceReport, metric: str, slice_by: Any, step: int, mode: Mode | None = None) -> str:
    """Console lines of a sliced evaluation: the worst slice of `metric` named, then each slice's count
    and value, the slices too small for a number marked as such.

    Args:
        report: the evaluation's `SliceReport`.
        metric: the metric shown (a key of the slices' values).
        slice_by: a column name, or a function (its ``__name__`` is shown).
        step: the training step, for the header.
        mode: "min" or "max"; default from the name.

    Example:
        >>> report = slice_means({"f1": [1, 0, 1, 1]}, ["a", "a", "b", "c"], min_slice_size=2)
        >>> print(format_slices(report, "f1", "source", 10))
        [ft_callbacks] step 10 | f1 by slice (source): worst 'a' 0.5 (n=2)
            a (n=2): 0.5, b (n=1): too small (< 2), c (n=1): too small (< 2)
    """
    by = slice_by if isinstance(slice_by, str) else getattr(slice_by, "__name__", "function")
    worst = report.worst(metric, mode)
    head = f"[ft_callbacks] step {step} | {metric} by slice ({by})"
    head += f": worst {worst.name!r} {worst.values[metric]:.4g} (n={worst.count})" if worst else ": no slice has it"
    parts = []
    for result in report.slices:
        if result.too_small:
            parts.append(f"{result.name} (n={result.count}): too small (< {report.min_slice_size})")
        elif metric in result.values:
            parts.append(f"{result.name} (n={result.count}): {result.values[metric]:.4g}")
        else:
            parts.append(f"{result.name} (n={result.count}): undefined")
    return head + "\n    " + ", ".join(parts)
