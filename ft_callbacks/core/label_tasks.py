"""Label metrics for the fine-tuning tasks beyond single-label classification, framework-free.

* Regression (an STS-B-style head, ``num_labels == 1``): `regression_metrics` -- MAE, MSE, RMSE,
  R², MAPE from `sklearn.metrics`, Pearson and Spearman from `scipy.stats`.
* Multi-label classification (a sigmoid per label): `multilabel_metrics` -- precision / recall / F1
  (micro, macro, samples, weighted), Hamming loss, subset accuracy, per-label F1, ROC AUC and PR AUC
  per label and macro, all from `sklearn.metrics`.
* Token classification (NER with ``run_ner``-style first-subword labels): `token_metrics` --
  entity-level precision / recall / F1 per entity type and overall from `seqeval` (its default
  CoNLL mode or its strict mode with an IOB2/IOBES/... scheme), and token accuracy; positions whose
  label is ``-100`` are dropped first, exactly as ``run_ner.py``'s ``compute_metrics`` does.

Each value is what the reference function returns on the same arrays, so it can be reproduced with
one call. What a reference library leaves undefined (NaN: Pearson of a constant, ROC AUC of a label
with one class, R² of one sample) is left out of ``scalars`` and a sentence in ``notes`` says why;
sklearn conventions that give a number but can mislead (R² of constant targets, MAPE with zero
targets) keep sklearn's number and get a note. Bad input raises `ConfigurationError` naming the fix.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ConfigurationError
from .label_metrics import IGNORE_INDEX, flat_label_keys

__all__ = [
    "MULTILABEL_METRICS",
    "REGRESSION_METRICS",
    "TASKS",
    "TOKEN_METRICS",
    "TaskReport",
    "multilabel_metrics",
    "regression_metrics",
    "require_seqeval",
    "token_metrics",
    "token_tags",
]

TASKS = ("classification", "regression", "multi_label", "token_classification")
REGRESSION_METRICS = ("mae", "mse", "rmse", "r2", "mape", "pearson", "spearman")
MULTILABEL_METRICS = (
    *(f"{m}_{a}" for m in ("precision", "recall", "f1") for a in ("micro", "macro", "samples", "weighted")),
    "hamming_loss",
    "subset_accuracy",
    "roc_auc_macro",
    "pr_auc_macro",
)
TOKEN_METRICS = ("entity_precision", "entity_recall", "entity_f1", "token_accuracy")
SEQEVAL_SCHEMES = ("IOB1", "IOB2", "IOE1", "IOE2", "IOBES", "BILOU")


@dataclass
class TaskReport:
    """One evaluation's numbers for a regression, multi-label or token-classification task.

    ``scalars`` holds flat metric names without prefix (``rmse``, ``f1_micro``, ``entity_f1``);
    ``per_label`` maps a label (multi-label) or entity type (tokens) to its own metrics;
    ``per_label_prefix`` is put before per-label keys in `flat` (``"entity_"`` for tokens)."""

    task: str
    scalars: dict[str, float]
    per_label: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    count: int = 0
    per_label_prefix: str = ""

    def flat(self) -> dict[str, float]:
        """``scalars`` plus ``f"{prefix}{metric}_{label}"`` per label (``f1_toxic``, ``entity_f1_PER``);
        label names are reduced to ``[A-Za-z0-9_]`` the way `LabelReport.flat` does."""
        out = {name: float(value) for name, value in self.scalars.items()}
        names = list(self.per_label)
        keys = flat_label_keys(names)
        # A label called "samples" would overwrite f1_samples (micro/macro/weighted are handled there).
        keys = [f"{key}_{i}" if key == "samples" else key for i, key in enumerate(keys)]
        for name, key in zip(names, keys, strict=True):
            for metric, value in self.per_label[name].items():
                out[f"{self.per_label_prefix}{metric}_{key}"] = float(value)
        return out


def _quiet(fn: Callable[..., Any], notes: list[str], *args: Any, **kwargs: Any) -> Any:
    """Call a reference function with its warnings turned into notes (no console spam)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    for w in caught:
        message = f"{getattr(fn, '__module__', '').split('.')[0]} {fn.__name__}: {w.message}"
        if message not in notes:
            notes.append(message)
    return result


def _float_vector(values: Any, what: str) -> np.ndarray:
    if hasattr(values, "detach"):  # torch tensor, without importing torch
        values = values.detach().cpu().double().numpy()
    arr = np.asarray(values, dtype=np.float64) if not isinstance(values, np.ndarray) else values.astype(np.float64)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ConfigurationError(
            f"{what} must be one number per sample (shape (N,) or (N, 1)), got shape {arr.shape}; a regression "
            "head has num_labels=1."
        )
    return arr


# ------------------------------------------------------------------------------------ regression


def regression_metrics(targets: Any, predictions: Any) -> TaskReport:
    """MAE, MSE, RMSE, R², MAPE (scikit-learn) and Pearson, Spearman (SciPy) of one regression evaluation.

    Args:
        targets: (N,) true values.
        predictions: (N,) or (N, 1) predicted values (a regression head's logits).

    Returns:
        A `TaskReport` with ``scalars`` ``mae``, ``mse``, ``rmse``, ``r2``, ``mape``, ``pearson``,
        ``spearman`` (each left out, with a note, where its reference function gives NaN).

    Raises:
        ConfigurationError: shapes differ, no samples, or non-finite values.

    Example:
        >>> regression_metrics([1.0, 2.0, 3.0], [1.1, 1.9, 3.2]).scalars["rmse"]  # doctest: +ELLIPSIS
        0.14...
    """
    from scipy import stats
    from sklearn import metrics as skm

    y = _float_vector(targets, "targets")
    p = _float_vector(predictions, "predictions")
    if len(y) != len(p):
        raise ConfigurationError(f"{len(p)} predictions for {len(y)} targets; pass one prediction per target.")
    if not len(y):
        raise ConfigurationError("No samples to score; evaluate on some data.")
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(p))):
        raise ConfigurationError("targets or predictions contain NaN or inf; check the labels and the model outputs.")
    notes: list[str] = []
    values: dict[str, float] = {
        "mae": skm.mean_absolute_error(y, p),
        "mse": skm.mean_squared_error(y, p),
        "rmse": skm.root_mean_squared_error(y, p),
        "r2": _quiet(skm.r2_score, notes, y, p),
        "mape": skm.mean_absolute_percentage_error(y, p),
    }
    if len(y) >= 2 and np.ptp(y) == 0:
        notes.append(
            "the targets are constant: R² uses sklearn's convention (1.0 for a perfect prediction, else 0.0) and "
            "Pearson/Spearman are undefined."
        )
    if np.any(y == 0):
        notes.append(
            f"{int(np.sum(y == 0))} target(s) are 0: MAPE divides by max(|y|, machine epsilon) as sklearn does, so it "
            "is huge and says little; read MAE/RMSE instead."
        )
    values["pearson"] = _quiet(lambda a, b: stats.pearsonr(a, b).statistic, notes, y, p) if len(y) >= 2 else math.nan
    values["spearman"] = _quiet(lambda a, b: stats.spearmanr(a, b).statistic, notes, y, p) if len(y) >= 2 else math.nan
    scalars: dict[str, float] = {}
    for name, value in values.items():
        value = float(value)
        if math.isfinite(value):
            scalars[name] = value
        else:
            notes.append(f"{name} is undefined for these {len(y)} sample(s) (the reference gives NaN); left out.")
    return TaskReport("regression", scalars, notes=notes, count=len(y))


# ------------------------------------------------------------------------------------ multi-label


def _thresholds(thresholds: float | Sequence[float] | None, num_labels: int) -> np.ndarray:
    if thresholds is None:
        return np.full(num_labels, 0.5)
    arr = np.asarray(thresholds, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(num_labels, float(arr))
    if arr.shape != (num_labels,) or not np.all((arr >= 0) & (arr <= 1)):
        raise ConfigurationError(
            f"thresholds={thresholds!r} must be one probability in [0, 1], or one per label ({num_labels})."
        )
    return arr


def multilabel_metrics(
    targets: Any,
    probabilities: Any,
    *,
    label_names: Sequence[str] | None = None,
    thresholds: float | Sequence[float] | None = None,
) -> TaskReport:
    """Multi-label metrics (scikit-learn) of one evaluation: a label is predicted when its sigmoid
    probability is >= its threshold.

    Scalars: ``precision_/recall_/f1_`` ``micro``, ``macro``, ``samples``, ``weighted`` (``zero_division=0``),
    ``hamming_loss``, ``subset_accuracy`` (exact match of the whole label set), ``roc_auc_macro`` and
    ``pr_auc_macro`` (average precision). Per label: ``precision``, ``recall``, ``f1``, ``support``,
    ``roc_auc``, ``pr_auc``. ROC AUC is undefined for a label with one class in ``targets`` and PR AUC
    for a label without positives: those per-label values are left out, and the macro values are
    sklearn's on the labels where they are defined (a note names the rest).

    Args:
        targets: (N, L) 0/1 label matrix.
        probabilities: (N, L) sigmoid probabilities.
        label_names: L names (default ``"0"``..).
        thresholds: one threshold, or one per label (default 0.5).

    Raises:
        ConfigurationError: shapes, non-binary targets or probabilities outside [0, 1].

    Example:
        >>> multilabel_metrics([[1, 0], [0, 1]], [[0.9, 0.2], [0.4, 0.7]]).scalars["subset_accuracy"]
        1.0
    """
    from sklearn import metrics as skm

    y = np.asarray(targets.detach().cpu().numpy() if hasattr(targets, "detach") else targets, dtype=np.float64)
    probs = probabilities.detach().cpu().double().numpy() if hasattr(probabilities, "detach") else probabilities
    probs = np.asarray(probs, dtype=np.float64)
    if y.ndim != 2 or probs.shape != y.shape:
        raise ConfigurationError(
            f"multi-label targets and probabilities must both have shape (N, num_labels), got {y.shape} and "
            f"{probs.shape}."
        )
    n, num_labels = y.shape
    if not n:
        raise ConfigurationError("No samples to score; evaluate on some data.")
    if not np.all((y == 0) | (y == 1)):
        raise ConfigurationError("multi-label targets must be 0/1 per label (a multi-hot float vector per sample).")
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1:
        raise ConfigurationError("probabilities must lie in [0, 1]: apply a sigmoid to the logits first.")
    names = [str(v) for v in label_names] if label_names is not None else [str(i) for i in range(num_labels)]
    if len(names) != num_labels:
        raise ConfigurationError(f"{len(names)} label_names for {num_labels} labels; give one name per label.")
    y = y.astype(np.int64)
    preds = (probs >= _thresholds(thresholds, num_labels)).astype(np.int64)
    notes: list[str] = []
    scalars: dict[str, float] = {}
    for average in ("micro", "macro", "samples", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y, preds, average=average, zero_division=0.0)
        scalars[f"precision_{average}"], scalars[f"recall_{average}"], scalars[f"f1_{average}"] = (
            float(p), float(r), float(f),
        )  # fmt: skip
    scalars["hamming_loss"] = float(skm.hamming_loss(y, preds))
    scalars["subset_accuracy"] = float(skm.accuracy_score(y, preds))
    p, r, f, s = skm.precision_recall_fscore_support(y, preds, average=None, zero_division=0.0)
    per_label = {
        names[j]: {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]), "support": float(s[j])}
        for j in range(num_labels)
    }
    positives = y.sum(axis=0)
    empty_rows = int((y.sum(axis=1) == 0).sum())
    if empty_rows:
        notes.append(
            f"{empty_rows} sample(s) have no true label: f1/precision/recall_samples count them as 0 unless nothing is "
            "predicted for them either (sklearn zero_division=0)."
        )
    two_classes = [j for j in range(num_labels) if 0 < positives[j] < n]
    with_positives = [j for j in range(num_labels) if positives[j] > 0]
    for j in two_classes:
        per_label[names[j]]["roc_auc"] = float(skm.roc_auc_score(y[:, j], probs[:, j]))
    for j in with_positives:
        per_label[names[j]]["pr_auc"] = float(skm.average_precision_score(y[:, j], probs[:, j]))
    if two_classes:
        scalars["roc_auc_macro"] = float(skm.roc_auc_score(y[:, two_classes], probs[:, two_classes], average="macro"))
    if with_positives:
        scalars["pr_auc_macro"] = float(
            skm.average_precision_score(y[:, with_positives], probs[:, with_positives], average="macro")
        )
    skipped_roc = [names[j] for j in range(num_labels) if j not in two_classes]
    skipped_pr = [names[j] for j in range(num_labels) if j not in with_positives]
    if skipped_roc:
        notes.append(
            f"label(s) {skipped_roc} have one class in the targets: their ROC AUC is undefined and roc_auc_macro "
            "averages the other labels."
        )
    if skipped_pr:
        notes.append(
            f"label(s) {skipped_pr} have no positive target: their PR AUC is undefined and pr_auc_macro averages "
            "the other labels."
        )
    return TaskReport("multi_label", scalars, per_label, notes, count=n)


# --------------------------------------------------------------------------------------- tokens


def require_seqeval() -> None:
    """Raise `ConfigurationError` naming the install command when seqeval (an optional extra) is missing."""
    try:
        import seqeval.metrics  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "Token-classification metrics come from seqeval, which is not installed: "
            "pip install 'ft-callbacks[labels]' (or pip install seqeval)."
        ) from None


def token_tags(
    predictions: Sequence[Sequence[int]] | np.ndarray,
    labels: Sequence[Sequence[int]] | np.ndarray,
    id2label: Sequence[str] | dict[int, str],
) -> tuple[list[list[str]], list[list[str]]]:
    """(true tags, predicted tags) per sequence with every ``-100`` position dropped, as ``run_ner.py``
    does before seqeval (first-subword alignment: the other subwords of a word carry -100).

    Args:
        predictions: per-sequence predicted tag ids (arg-max of the logits), padded or ragged.
        labels: per-sequence label ids, -100 where ignored, same lengths as ``predictions``.
        id2label: tag name of each id.

    Example:
        >>> token_tags([[1, 2, 0]], [[1, -100, 0]], ["O", "B-PER", "I-PER"])
        ([['B-PER', 'O']], [['B-PER', 'O']])
    """
    names = id2label if isinstance(id2label, dict) else dict(enumerate(id2label))
    true_tags: list[list[str]] = []
    pred_tags: list[list[str]] = []
    for pred_row, label_row in zip(predictions, labels, strict=True):
        pred_row, label_row = np.asarray(pred_row), np.asarray(label_row)
        if pred_row.shape != label_row.shape:
            raise ConfigurationError(
                f"a sequence has {pred_row.shape} predictions but {label_row.shape} labels; pass one per token."
            )
        keep = label_row != IGNORE_INDEX
        try:
            true_tags.append([str(names[int(i)]) for i in label_row[keep]])
            pred_tags.append([str(names[int(i)]) for i in pred_row[keep]])
        except KeyError as exc:
            raise ConfigurationError(
                f"tag id {exc.args[0]} has no name in id2label ({len(names)} tags); set the model's id2label to every "
                "tag of the dataset."
            ) from None
    return true_tags, pred_tags


def token_metrics(
    true_tags: Sequence[Sequence[str]],
    pred_tags: Sequence[Sequence[str]],
    *,
    mode: str | None = None,
    scheme: str = "IOB2",
) -> TaskReport:
    """Entity-level precision, recall and F1 per entity type and overall (seqeval's micro average),
    and token accuracy (`seqeval.metrics.accuracy_score`), from tag sequences (see `token_tags`).

    Args:
        true_tags / pred_tags: per sequence, one tag string per labelled token.
        mode: None for seqeval's default (CoNLL-style, lenient: ``I-PER`` after ``O`` starts an entity),
            ``"strict"`` to count only entities well formed under ``scheme``.
        scheme: the tagging scheme of strict mode: one of IOB1, IOB2, IOE1, IOE2, IOBES, BILOU.

    Returns:
        A `TaskReport` with ``scalars`` ``entity_precision``, ``entity_recall``, ``entity_f1``,
        ``token_accuracy`` and ``per_label`` {entity type: precision, recall, f1, support} (flat keys
        ``entity_f1_PER`` ...).

    Raises:
        ConfigurationError: unknown mode or scheme, lengths that differ, no tokens at all, or tags that
            strict mode cannot parse.

    Example:
        >>> token_metrics([["B-PER", "I-PER", "O"]], [["B-PER", "I-PER", "O"]]).scalars["entity_f1"]
        1.0
    """
    require_seqeval()
    from seqeval import metrics as sqm
    from seqeval import scheme as sqs

    if mode not in (None, "default", "strict"):
        raise ConfigurationError(f"mode={mode!r} is not valid: use None (seqeval's default) or 'strict'.")
    if scheme not in SEQEVAL_SCHEMES:
        raise ConfigurationError(f"scheme={scheme!r} is not valid: use one of {SEQEVAL_SCHEMES}.")
    true_tags = [list(row) for row in true_tags]
    pred_tags = [list(row) for row in pred_tags]
    if len(true_tags) != len(pred_tags) or any(len(a) != len(b) for a, b in zip(true_tags, pred_tags, strict=False)):
        raise ConfigurationError("true_tags and pred_tags must have the same sequences and lengths.")
    tokens = sum(len(row) for row in true_tags)
    if not tokens:
        raise ConfigurationError("No labelled tokens to score (every label is -100); evaluate on some data.")
    notes: list[str] = []
    kwargs: dict[str, Any] = {}
    if mode == "strict":
        kwargs = {"mode": "strict", "scheme": getattr(sqs, scheme)}
    try:
        report = _quiet(sqm.classification_report, notes, true_tags, pred_tags, output_dict=True, **kwargs)
    except Exception as exc:  # seqeval raises bare exceptions for tags a strict scheme cannot parse
        raise ConfigurationError(
            f"seqeval could not read the tags in strict {scheme} mode ({exc}); pick the scheme the dataset uses, or "
            "mode=None."
        ) from None
    overall = report.pop("micro avg")
    for key in ("macro avg", "weighted avg"):
        report.pop(key, None)
    scalars = {
        "entity_precision": float(overall["precision"]),
        "entity_recall": float(overall["recall"]),
        "entity_f1": float(overall["f1-score"]),
        "token_accuracy": float(sqm.accuracy_score(true_tags, pred_tags)),
    }
    per_label = {
        str(name): {
            "precision": float(row["precision"]),
            "recall": float(row["recall"]),
            "f1": float(row["f1-score"]),
            "support": float(row["support"]),
        }
        for name, row in sorted(report.items())
    }
    return TaskReport(
        "token_classification", scalars, per_label, notes, count=len(true_tags), per_label_prefix="entity_"
    )
