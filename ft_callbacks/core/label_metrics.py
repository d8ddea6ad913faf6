"""Label metrics for classification fine-tunes: one sklearn-backed report, framework-free.

Every number that scikit-learn can compute comes from `sklearn.metrics`, called on exactly the
arrays a user would pass it, so a value here can always be reproduced with one sklearn call:
accuracy (`accuracy_score`), balanced accuracy (`balanced_accuracy_score`), precision / recall /
F1 / support (`precision_recall_fscore_support`, `zero_division=0.0`), the confusion matrix
(`confusion_matrix`), ROC AUC (`roc_auc_score`), PR AUC (`average_precision_score`), log loss
(`log_loss`), Brier score (`brier_score_loss`, multiclass since sklearn 1.7) and the
precision/recall curve (`precision_recall_curve`).

Hand-written, because sklearn has no function for them:

* ``ece`` — expected calibration error (sklearn only has `calibration_curve`, which bins the
  positive-class probability of a binary task, not the top-label confidence of any task);
* ``specificity`` — TN / (TN + FP) read off the sklearn confusion matrix;
* ``best_threshold`` / ``best_threshold_f1`` — the F1 at each threshold of sklearn's
  `precision_recall_curve` and its arg-max.

Degenerate inputs never produce a silent NaN: a metric that is undefined (ROC AUC with one class
in the labels, PR AUC without positives) is left out of ``scalars`` and a sentence in ``notes``
says why; classes missing from the labels or the predictions keep sklearn's ``zero_division=0.0``
numbers and get a note. Bad input (labels outside the label set, wrong shapes, probabilities that
are not probabilities) raises `ConfigurationError` naming the fix.

Generative classification: a predicted id equal to the number of classes ``C`` means "the answer
matched no label" (see `match_label_texts`). It is its own ``"invalid"`` row/column of the
confusion matrix, is wrong for accuracy, recall, micro averages and specificity, and
``invalid_rate`` reports its share.
"""

from __future__ import annotations

import re
import string
import unicodedata
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn import metrics as skm

from .errors import ConfigurationError

__all__ = [
    "INVALID_LABEL",
    "LabelAccumulator",
    "LabelReport",
    "compute_label_metrics",
    "match_label_texts",
    "normalize_label_text",
]

INVALID_LABEL = "invalid"
IGNORE_INDEX = -100
_PER_CLASS_METRICS = ("precision", "recall", "f1", "support")
# Per-class keys are f"{metric}_{label}"; these label keys would collide with the averaged scalars
# (``f1_macro`` ...), so such labels get their class id appended in `LabelReport.flat`.
_RESERVED_LABEL_KEYS = frozenset({"micro", "macro", "weighted"})
# Rows of `probabilities` must sum to 1 within this (float32 softmax outputs do); they are then
# renormalised in float64 so sklearn's stricter checks pass.
_ROW_SUM_ATOL = 1e-4
_PROB_RANGE_ATOL = 1e-6


@dataclass
class LabelReport:
    """Everything one evaluation of a classifier produced.

    ``scalars`` holds flat metric names without any ``eval_`` prefix; ``per_class`` maps each label
    name to its precision, recall, F1 and support. ``confusion_matrix`` has true labels on rows and
    predictions on columns in ``label_names`` order, plus a last ``"invalid"`` row and column when
    invalid predictions are possible (``"invalid_rate"`` in ``scalars``); `matrix_labels` names its
    axes. ``threshold_curve`` (binary with probabilities) holds sklearn's precision/recall curve
    without its final threshold-less point, plus the F1 at each threshold."""

    scalars: dict[str, float]
    per_class: dict[str, dict[str, float]]
    confusion_matrix: np.ndarray
    label_names: list[str]
    threshold_curve: dict[str, np.ndarray] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def matrix_labels(self) -> list[str]:
        """Names of the confusion matrix rows/columns: ``label_names`` plus the invalid class if present."""
        names = list(self.label_names)
        if self.confusion_matrix.shape[0] > len(names):
            names.append(INVALID_LABEL if INVALID_LABEL not in names else f"<{INVALID_LABEL}>")
        return names

    def flat(self) -> dict[str, float]:
        """``scalars`` plus ``f"{metric}_{label}"`` for every class (e.g. ``f1_positive``, ``support_cat``).

        Label names are reduced to ``[A-Za-z0-9_]`` (anything else becomes ``_``). When two labels
        reduce to the same key, or a label key is ``micro``/``macro``/``weighted`` (which would
        overwrite ``f1_macro`` ...), the class id is appended (``f1_macro_3``). Values are floats,
        ready for the Trainer's metrics dict."""
        out = {name: float(value) for name, value in self.scalars.items()}
        for name, key in zip(self.label_names, flat_label_keys(self.label_names), strict=True):
            for metric in _PER_CLASS_METRICS:
                if metric in self.per_class.get(name, {}):
                    out[f"{metric}_{key}"] = float(self.per_class[name][metric])
        return out


def flat_label_keys(label_names: Sequence[str]) -> list[str]:
    """The key each label gets in `LabelReport.flat` (sanitised, deduplicated, stable for a label set)."""
    keys: list[str] = []
    used: set[str] = set(_RESERVED_LABEL_KEYS)
    for class_id, name in enumerate(label_names):
        key = re.sub(r"[^A-Za-z0-9_]", "_", str(name)) or f"class_{class_id}"
        if key in used:
            key = f"{key}_{class_id}"
        while key in used:
            key = f"{key}_"
        used.add(key)
        keys.append(key)
    return keys


# ----------------------------------------------------------------------------------- validation


def _to_numpy(x: Any, *, floating: bool = False) -> np.ndarray:
    """numpy view of a numpy array, list or torch tensor (any device or dtype, bf16 included)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        x = x.double() if floating else x
        return x.numpy()
    return np.asarray(x)


def _as_int_vector(values: Any, what: str) -> np.ndarray:
    arr = _to_numpy(values)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ConfigurationError(f"{what} must be a 1-D sequence of integer class ids, got shape {arr.shape}.")
    if arr.dtype == bool:
        raise ConfigurationError(f"{what} must hold integer class ids, not booleans: convert with .astype(int).")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.number):
            raise ConfigurationError(
                f"{what} must hold integer class ids, got dtype {arr.dtype}; "
                "map label strings to ids (label_names.index(...)) first."
            )
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ConfigurationError(f"{what} must hold integer class ids; got non-integral values such as {arr[:5]}.")
    return arr.astype(np.int64)


def _sample(values: np.ndarray, limit: int = 10) -> str:
    uniq = sorted({int(v) for v in np.unique(values)})
    shown = ", ".join(str(v) for v in uniq[:limit])
    return f"[{shown}{', ...' if len(uniq) > limit else ''}]"


def _resolve_num_classes(
    probabilities: np.ndarray | None, label_names: Sequence[str] | None, num_classes: int | None
) -> int:
    candidates: dict[str, int] = {}
    if probabilities is not None:
        candidates["probabilities.shape[1]"] = int(probabilities.shape[1])
    if label_names is not None:
        candidates["len(label_names)"] = len(label_names)
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
            raise ConfigurationError(f"num_classes must be an int, got {num_classes!r}.")
        candidates["num_classes"] = int(num_classes)
    if not candidates:
        raise ConfigurationError(
            "Cannot tell the number of classes from hard predictions alone: pass num_classes= or label_names=."
        )
    if len(set(candidates.values())) > 1:
        detail = ", ".join(f"{k}={v}" for k, v in candidates.items())
        raise ConfigurationError(f"The number of classes disagrees ({detail}); make them match.")
    value = next(iter(candidates.values()))
    if value < 2:
        raise ConfigurationError(f"A classification task needs at least 2 classes, got {value}.")
    return value


def _check_probabilities(probabilities: Any, n: int) -> np.ndarray:
    probs = _to_numpy(probabilities, floating=True)
    if probs.ndim != 2:
        raise ConfigurationError(
            f"probabilities must have shape (N, C) = ({n}, num_classes), got {probs.shape}; "
            "for a single sigmoid output stack [1 - p, p] (LabelAccumulator.add does this)."
        )
    if probs.shape[0] != n:
        raise ConfigurationError(f"probabilities has {probs.shape[0]} rows but labels has {n}; pass one row per label.")
    probs = probs.astype(np.float64)
    if not np.all(np.isfinite(probs)):
        raise ConfigurationError("probabilities contain NaN or inf; check the model outputs.")
    if probs.min() < -_PROB_RANGE_ATOL or probs.max() > 1 + _PROB_RANGE_ATOL:
        raise ConfigurationError(
            f"probabilities must lie in [0, 1] (got values in [{probs.min():.4g}, {probs.max():.4g}]): "
            "these look like logits, apply a softmax first or use LabelAccumulator.add(..., are_logits=True)."
        )
    sums = probs.sum(axis=1)
    bad = np.abs(sums - 1.0) > _ROW_SUM_ATOL
    if bad.any():
        raise ConfigurationError(
            f"probabilities rows must sum to 1 ({int(bad.sum())} rows do not, e.g. row {int(np.argmax(bad))} sums to "
            f"{sums[np.argmax(bad)]:.6g}): apply a softmax over the class dimension first."
        )
    probs = np.clip(probs, 0.0, 1.0)
    sums = probs.sum(axis=1, keepdims=True)
    if np.any(np.abs(sums - 1.0) > 1e-12):  # float32 softmax: renormalise so sklearn's own checks pass
        probs = probs / sums
    return probs


def _resolve_positive(positive_label: str | int | None, names: list[str], num_classes: int) -> int | None:
    if num_classes != 2:
        if positive_label is not None:
            raise ConfigurationError(
                f"positive_label={positive_label!r} only applies to binary tasks, but there are {num_classes} classes; "
                "drop it (multiclass precision/recall/f1 are macro averages)."
            )
        return None
    if positive_label is None:
        return 1
    if isinstance(positive_label, str):
        if positive_label in names:
            return names.index(positive_label)
        raise ConfigurationError(f"positive_label={positive_label!r} is not a label name; choose one of {names}.")
    if isinstance(positive_label, (int, np.integer)) and not isinstance(positive_label, bool):
        if 0 <= int(positive_label) < num_classes:
            return int(positive_label)
    raise ConfigurationError(
        f"positive_label={positive_label!r} is not in the label set: pass a name from {names} "
        f"or an id in [0, {num_classes})."
    )


# ------------------------------------------------------------------------------------ metrics


def _quiet(fn: Callable[..., Any], notes: list[str], *args: Any, explained: bool = False, **kwargs: Any) -> Any:
    """Call an sklearn function with its warnings captured: a case already explained by a note is
    silent; any other warning becomes a note instead of console spam."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    if not explained:
        for w in caught:
            message = f"sklearn {fn.__name__}: {w.message}"
            if message not in notes:
                notes.append(message)
    return result


def _ece(probabilities: np.ndarray, labels: np.ndarray, bins: int) -> float:
    """Expected calibration error, top-label, equal-width bins (Guo et al. 2017). Hand-written:
    sklearn has no ECE. The confidence of a row is its largest probability and it is correct when
    that arg-max equals the label; rows fall into bins ``(k/bins, (k+1)/bins]`` (0 joins the
    first bin), and ECE = sum over bins of (rows in bin / N) * |accuracy(bin) - mean confidence(bin)|."""
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    n = len(labels)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        count = int(in_bin.sum())
        if count:
            total += count / n * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(total)


def _f1_curve(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """F1 at every point of a precision/recall curve (0 where precision + recall is 0). Hand-written:
    sklearn's precision_recall_curve returns no F1."""
    denom = precision + recall
    return np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)


def compute_label_metrics(
    labels: Any,
    *,
    probabilities: Any = None,
    predictions: Any = None,
    label_names: Sequence[str] | None = None,
    positive_label: str | int | None = None,
    num_classes: int | None = None,
    ece_bins: int = 15,
) -> LabelReport:
    """All label metrics for one evaluation, computed with sklearn (see the module docstring).

    ``labels``: (N,) int class ids in ``[0, C)``. ``probabilities``: (N, C) rows summing to 1 (apply a
    softmax first), or None when only hard predictions exist. ``predictions``: (N,) ints in ``[0, C]``
    (``C`` = invalid), default the arg-max of ``probabilities``. ``label_names``: C names (default
    ``"0"``..). ``positive_label``: name or id of the positive class of a binary task (default id 1).
    ``num_classes``: needed only when neither probabilities nor label_names give C.

    Binary scalars: accuracy, balanced_accuracy, precision/recall/f1 (positive class), specificity,
    {precision,recall,f1}_{micro,macro,weighted}; multiclass: precision/recall/f1 are the macro
    averages. With probabilities also roc_auc, pr_auc, log_loss, brier, ece and, binary only,
    best_threshold and best_threshold_f1. ``invalid_rate`` appears when invalid predictions are
    possible (hard predictions without probabilities) or present."""
    notes: list[str] = []
    y = _as_int_vector(labels, "labels")
    n = len(y)
    if n == 0:
        raise ConfigurationError("No labelled examples to score (all rows empty or label -100); evaluate on some data.")
    probs = _check_probabilities(probabilities, n) if probabilities is not None else None
    if label_names is not None:
        if isinstance(label_names, str):
            raise ConfigurationError("label_names must be a list of names, not one string.")
        label_names = [str(name) for name in label_names]
        if len(set(label_names)) != len(label_names):
            raise ConfigurationError(f"label_names must be unique, got {label_names}.")
    c = _resolve_num_classes(probs, label_names, num_classes)
    names = list(label_names) if label_names is not None else [str(i) for i in range(c)]
    if isinstance(ece_bins, bool) or not isinstance(ece_bins, (int, np.integer)) or ece_bins < 1:
        raise ConfigurationError(f"ece_bins must be a positive int, got {ece_bins!r}.")

    out_of_range = (y < 0) | (y >= c)
    if out_of_range.any():
        raise ConfigurationError(
            f"labels contain ids outside the label set [0, {c}) = {names}: {_sample(y[out_of_range])}. "
            "Drop ignored rows (-100) first, or pass the full label set (label_names / num_classes)."
        )
    pos = _resolve_positive(positive_label, names, c)

    if predictions is None:
        if probs is None:
            raise ConfigurationError("Pass probabilities= or predictions= (or both); got neither.")
        preds = probs.argmax(axis=1).astype(np.int64)
    else:
        preds = _as_int_vector(predictions, "predictions")
        if len(preds) != n:
            raise ConfigurationError(f"predictions has {len(preds)} entries but labels has {n}; pass one per label.")
        bad = (preds < 0) | (preds > c)
        if bad.any():
            raise ConfigurationError(
                f"predictions contain ids outside [0, {c}] ({c} = '{INVALID_LABEL}'): {_sample(preds[bad])}. "
                "Map unmatched answers to len(label_names) (match_label_texts does)."
            )

    n_invalid = int((preds == c).sum())
    with_invalid = n_invalid > 0 or (predictions is not None and probs is None)
    class_ids = list(range(c))
    matrix_ids = [*class_ids, c] if with_invalid else class_ids

    scalars: dict[str, float] = {}
    scalars["accuracy"] = float(skm.accuracy_score(y, preds))
    missing_true = [names[i] for i in class_ids if not np.any(y == i)]
    never_predicted = [names[i] for i in class_ids if not np.any(preds == i)]
    if missing_true:
        notes.append(
            f"class(es) {missing_true} never occur in labels: their recall and F1 are 0 (zero_division=0.0) and "
            "count in macro averages; balanced_accuracy averages over the classes present only."
        )
    if never_predicted:
        notes.append(
            f"class(es) {never_predicted} are never predicted: their precision is 0 (zero_division=0.0) and counts in "
            "macro averages."
        )
    if n_invalid:
        notes.append(f"{n_invalid} of {n} predictions match no label ('{INVALID_LABEL}') and count as wrong.")
    # sklearn warns "y_pred contains classes not in y_true" for the cases noted just above.
    scalars["balanced_accuracy"] = float(
        _quiet(skm.balanced_accuracy_score, notes, y, preds, explained=bool(missing_true or n_invalid))
    )

    p_cls, r_cls, f_cls, s_cls = skm.precision_recall_fscore_support(
        y, preds, labels=class_ids, average=None, zero_division=0.0
    )
    per_class = {
        names[i]: {
            "precision": float(p_cls[i]),
            "recall": float(r_cls[i]),
            "f1": float(f_cls[i]),
            "support": float(s_cls[i]),
        }
        for i in class_ids
    }
    for average in ("micro", "macro", "weighted"):
        # micro includes the invalid id so an unmatched answer counts as a wrong prediction
        # (micro precision = accuracy); macro/weighted average over the real classes only.
        ids = matrix_ids if average == "micro" else class_ids
        p, r, f, _ = skm.precision_recall_fscore_support(y, preds, labels=ids, average=average, zero_division=0.0)
        scalars[f"precision_{average}"] = float(p)
        scalars[f"recall_{average}"] = float(r)
        scalars[f"f1_{average}"] = float(f)

    cm = skm.confusion_matrix(y, preds, labels=matrix_ids)
    if pos is not None:
        if n_invalid:
            # sklearn's average="binary" rejects a third (invalid) value; labels=[pos] is the same computation.
            p, r, f, _ = skm.precision_recall_fscore_support(y, preds, labels=[pos], average=None, zero_division=0.0)
            p, r, f = p[0], r[0], f[0]
        else:
            p, r, f, _ = skm.precision_recall_fscore_support(
                y, preds, average="binary", pos_label=pos, zero_division=0.0
            )
        scalars["precision"], scalars["recall"], scalars["f1"] = float(p), float(r), float(f)
        # Specificity: sklearn has no function; TN / actual negatives from the confusion matrix
        # (a negative answered "invalid" is not a true negative).
        neg = 1 - pos
        actual_negatives = int(cm[neg].sum())
        scalars["specificity"] = float(cm[neg, neg] / actual_negatives) if actual_negatives else 0.0
        if not actual_negatives:
            notes.append(f"no '{names[neg]}' (negative) labels: specificity set to 0.0 (zero_division=0.0).")
    else:
        scalars["precision"] = scalars["precision_macro"]
        scalars["recall"] = scalars["recall_macro"]
        scalars["f1"] = scalars["f1_macro"]
    if with_invalid:
        scalars["invalid_rate"] = n_invalid / n

    threshold_curve = None
    if probs is None:
        notes.append(
            "hard predictions only (no probabilities): roc_auc, pr_auc, log_loss, brier, ece and the threshold view "
            "are skipped."
        )
    else:
        threshold_curve = _probability_metrics(y, probs, c, pos, names, int(ece_bins), scalars, notes)

    return LabelReport(
        scalars=scalars,
        per_class=per_class,
        confusion_matrix=cm,
        label_names=names,
        threshold_curve=threshold_curve,
        notes=notes,
    )


def _probability_metrics(
    y: np.ndarray,
    probs: np.ndarray,
    c: int,
    pos: int | None,
    names: list[str],
    ece_bins: int,
    scalars: dict[str, float],
    notes: list[str],
) -> dict[str, np.ndarray] | None:
    """roc_auc, pr_auc, log_loss, brier, ece (+ binary threshold view) into ``scalars``; returns the curve."""
    class_ids = list(range(c))
    threshold_curve = None
    if pos is not None:
        y_pos = (y == pos).astype(np.int64)
        score = probs[:, pos]
        n_pos = int(y_pos.sum())
        if 0 < n_pos < len(y):
            scalars["roc_auc"] = float(skm.roc_auc_score(y_pos, score))
        else:
            notes.append(f"roc_auc omitted: only one class ('{names[y[0]]}') is present in the labels.")
        if n_pos:
            scalars["pr_auc"] = float(skm.average_precision_score(y_pos, score))
            precision, recall, thresholds = skm.precision_recall_curve(y_pos, score)
            # sklearn's last curve point (precision 1, recall 0) has no threshold: drop it.
            precision, recall = precision[:-1], recall[:-1]
            f1 = _f1_curve(precision, recall)
            best = int(np.argmax(f1))
            scalars["best_threshold"] = float(thresholds[best])
            scalars["best_threshold_f1"] = float(f1[best])
            threshold_curve = {"threshold": thresholds, "precision": precision, "recall": recall, "f1": f1}
        else:
            notes.append(f"pr_auc, best_threshold and best_threshold_f1 omitted: no '{names[pos]}' (positive) labels.")
        scalars["log_loss"] = float(skm.log_loss(y, probs, labels=class_ids))
        scalars["brier"] = float(skm.brier_score_loss(y_pos, score, pos_label=1))
    else:
        present = [i for i in class_ids if np.any(y == i)]
        if len(present) < 2:
            notes.append(
                f"roc_auc and pr_auc omitted: only one class ('{names[present[0]]}') is present in the labels."
            )
        elif len(present) == c:
            scalars["roc_auc"] = float(
                skm.roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=class_ids)
            )
            one_hot = np.eye(c, dtype=np.int64)[y]
            scalars["pr_auc"] = float(skm.average_precision_score(one_hot, probs, average="macro"))
        else:
            # sklearn's one-vs-rest macro is NaN when a class has no positives; average the
            # one-vs-rest scores of the classes that are present instead (same sklearn calls,
            # on those columns), and say so.
            one_hot = np.eye(c, dtype=np.int64)[y][:, present]
            scalars["roc_auc"] = float(skm.roc_auc_score(one_hot, probs[:, present], average="macro"))
            scalars["pr_auc"] = float(skm.average_precision_score(one_hot, probs[:, present], average="macro"))
            absent = [names[i] for i in class_ids if i not in present]
            notes.append(
                f"roc_auc and pr_auc are one-vs-rest macro averages over the {len(present)} classes present in the "
                f"labels; {absent} have no positives and are left out."
            )
        scalars["log_loss"] = float(skm.log_loss(y, probs, labels=class_ids))
        # sklearn >= 1.7 scores multiclass Brier directly: mean over rows of the summed squared
        # error against one-hot labels, range [0, 2] (binary tasks use the usual [0, 1] form).
        scalars["brier"] = float(skm.brier_score_loss(y, probs, labels=class_ids))
    scalars["ece"] = _ece(probs, y, ece_bins)
    return threshold_curve


# -------------------------------------------------------------------------------- accumulator


def _softmax64(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class LabelAccumulator:
    """Streams one evaluation: keeps only the (N, C) class probabilities (float64) and labels, or
    hard predictions and labels, never sequence logits. Rows labelled -100 are skipped.

    Feed it with `add` (logits or probabilities) or `add_predictions` (hard ids, e.g. from
    `match_label_texts`), not both. `state` / `merged` gather it across processes."""

    def __init__(self, num_classes: int | None = None) -> None:
        if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) < 2):
            raise ConfigurationError(f"num_classes must be an int >= 2 or None, got {num_classes!r}.")
        self.num_classes: int | None = int(num_classes) if num_classes is not None else None
        self._kind: str | None = None  # "probabilities" or "predictions"
        self._labels: list[np.ndarray] = []
        self._values: list[np.ndarray] = []

    def _set_kind(self, kind: str) -> None:
        if self._kind is not None and self._kind != kind:
            raise ConfigurationError(
                f"This accumulator already holds {self._kind}; it cannot mix in {kind}. Use one accumulator per kind "
                "or call reset()."
            )
        self._kind = kind

    def _set_width(self, width: int) -> None:
        if self.num_classes is None:
            self.num_classes = width
        elif self.num_classes != width:
            raise ConfigurationError(
                f"Got scores for {width} classes but this accumulator has num_classes={self.num_classes}."
            )

    @staticmethod
    def _labels_for(labels: Any, rows: int) -> np.ndarray:
        y = _as_int_vector(labels, "labels")
        if len(y) != rows:
            raise ConfigurationError(f"Got {rows} rows of scores/predictions but {len(y)} labels; pass one per row.")
        return y

    def add(self, logits_or_probs: Any, labels: Any, *, are_logits: bool = True) -> None:
        """Add a batch: scores of shape (B, C), or (B,) / (B, 1) for a single-output binary head
        (sigmoid, stacked to [1 - p, p]); numpy or torch. Logits get a float64 softmax."""
        scores = _to_numpy(logits_or_probs, floating=True).astype(np.float64)
        if scores.ndim == 2 and scores.shape[1] == 1:
            scores = scores[:, 0]
        if scores.ndim not in (1, 2):
            raise ConfigurationError(
                f"add() takes per-example class scores of shape (B, C), got {scores.shape}; "
                "reduce sequence logits to one row per example first."
            )
        y = self._labels_for(labels, scores.shape[0])
        keep = y != IGNORE_INDEX
        scores, y = scores[keep], y[keep]
        if np.isnan(scores).any() or np.isposinf(scores).any():
            raise ConfigurationError("Scores contain NaN or +inf; check the model outputs (e.g. fp16 overflow).")
        if scores.ndim == 1:
            p = 1.0 / (1.0 + np.exp(-scores)) if are_logits else scores
            probs = np.stack([1.0 - p, p], axis=1)
        else:
            probs = _softmax64(scores) if are_logits else scores
        if not np.all(np.isfinite(probs)):
            raise ConfigurationError("Softmax produced non-finite probabilities (a row of -inf logits?).")
        if not are_logits and len(probs):
            probs = _check_probabilities(probs, len(y))
        self._set_width(int(probs.shape[1]))
        self._set_kind("probabilities")
        self._labels.append(y)
        self._values.append(probs)

    def add_predictions(self, predictions: Any, labels: Any) -> None:
        """Add a batch of hard predictions (ids in [0, C], C = invalid) and their labels."""
        preds = _as_int_vector(predictions, "predictions")
        y = self._labels_for(labels, len(preds))
        keep = y != IGNORE_INDEX
        self._set_kind("predictions")
        self._labels.append(y[keep])
        self._values.append(preds[keep])

    def _concat(self) -> tuple[np.ndarray, np.ndarray | None]:
        y = np.concatenate(self._labels) if self._labels else np.zeros(0, dtype=np.int64)
        values = np.concatenate(self._values) if self._values else None
        return y, values

    def state(self) -> dict:
        """Picklable snapshot (numpy arrays and ints) for gathering across processes."""
        y, values = self._concat()
        return {
            "num_classes": self.num_classes,
            "kind": self._kind,
            "labels": y,
            "probabilities": values if self._kind == "probabilities" else None,
            "predictions": values if self._kind == "predictions" else None,
        }

    @classmethod
    def merged(cls, states: list[dict]) -> LabelAccumulator:
        """One accumulator holding the rows of every state, in order."""
        acc = cls()
        for st in states:
            if st.get("num_classes") is not None:
                acc._set_width(int(st["num_classes"]))
            kind = st.get("kind")
            if kind is None or len(st["labels"]) == 0:
                continue
            acc._set_kind(kind)
            acc._labels.append(np.asarray(st["labels"], dtype=np.int64))
            acc._values.append(np.asarray(st[kind]))
        return acc

    def __len__(self) -> int:
        return int(sum(len(y) for y in self._labels))

    def report(self, **kwargs: Any) -> LabelReport:
        """`compute_label_metrics` on everything added so far (kwargs are passed through)."""
        y, values = self._concat()
        if self.num_classes is not None and "num_classes" not in kwargs:
            kwargs["num_classes"] = self.num_classes
        if self._kind == "probabilities":
            kwargs.setdefault("probabilities", values)
        elif self._kind == "predictions":
            kwargs.setdefault("predictions", values)
        return compute_label_metrics(y, **kwargs)

    def reset(self) -> None:
        """Forget the rows (num_classes, once known, stays)."""
        self._kind = None
        self._labels.clear()
        self._values.clear()


# ------------------------------------------------------------------------- generative answers

_PUNCTUATION = frozenset(string.punctuation)
# Words allowed between two labels of a hedged answer ("positive or negative", "positive / maybe negative").
_HEDGE_WORDS = frozenset({"or", "and", "nor", "but", "vs", "versus", "maybe", "perhaps", "possibly"})


def normalize_label_text(text: str) -> str:
    """NFKC, casefold, every punctuation character (Unicode P* and ASCII punctuation such as
    ``*`` ``` ` ``` ``<>``) replaced by a space, whitespace collapsed. ``" **Positive.**\\n"`` -> ``"positive"``."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(" " if ch in _PUNCTUATION or unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(text.split())


def match_label_texts(generations: Sequence[str | None], label_names: Sequence[str]) -> list[int]:
    """Map generated answers to label ids; ``len(label_names)`` (invalid) when no label fits.

    Both sides go through `normalize_label_text`. A generation matches:

    1. the label it equals (``"Positive."``, ``"  POSITIVE "``);
    2. otherwise the label it starts with as whole words (``"positive, because ..."``; ``"positively"``
       does not match). If several labels are prefixes they are nested (``"not"`` / ``"not sure"``) and
       the longest wins;
    3. but a prefix answer that goes straight on to another label, possibly through hedge words
       (or/and/nor/but/vs/versus/maybe/perhaps/possibly), is ambiguous and invalid:
       ``"positive or negative"``, ``"Positive/Negative"``, ``"positive, maybe negative"``. A label
       mentioned later (``"positive, it is not negative"``) does not count.

    A label is never found in the middle of the answer (``"I think positive"`` is invalid): strip
    prompt echoes first. None or empty answers are invalid. Label names that normalise to the same
    text (or to nothing) raise `ConfigurationError`."""
    normalized = [normalize_label_text(str(name)) for name in label_names]
    seen: dict[str, str] = {}
    for name, norm in zip(label_names, normalized, strict=True):
        if not norm:
            raise ConfigurationError(f"Label name {name!r} is empty once punctuation is stripped; rename it.")
        if norm in seen:
            raise ConfigurationError(
                f"Label names {seen[norm]!r} and {name!r} both normalise to {norm!r}; generated answers could not "
                "tell them apart, rename one."
            )
        seen[norm] = str(name)
    invalid = len(label_names)
    exact = {norm: i for i, norm in enumerate(normalized)}
    by_length = sorted(range(len(normalized)), key=lambda i: -len(normalized[i]))

    def prefix_label(text: str) -> int | None:
        for i in by_length:  # longest first: nested labels resolve to the most specific
            if text == normalized[i] or text.startswith(normalized[i] + " "):
                return i
        return None

    def _offers_other_label(rest: list[str], found: int) -> bool:
        # Walk over hedge words; stop at the first other word. A label that is itself a hedge word
        # ("maybe" in yes/no/maybe) is checked before the word is skipped.
        while rest:
            other = prefix_label(" ".join(rest))
            if other is not None and other != found:
                return True
            if rest[0] not in _HEDGE_WORDS:
                return False
            rest = rest[1:]
        return False

    out: list[int] = []
    for generation in generations:
        if generation is None:
            out.append(invalid)
            continue
        if not isinstance(generation, str):
            raise ConfigurationError(
                f"generations must be strings, got {type(generation).__name__}: decode them first."
            )
        text = normalize_label_text(generation)
        if text in exact:
            out.append(exact[text])
            continue
        found = prefix_label(text)
        if found is None:
            out.append(invalid)
            continue
        out.append(found if not _offers_other_label(text[len(normalized[found]) :].split(), found) else invalid)
    return out
