"""LabelScorer: accuracy, precision, recall, F1, AUC, calibration and the confusion matrix of a
classification fine-tune, with one line and no `compute_metrics`.

A forward hook sees each evaluation batch's class logits (`[batch, num_labels]`) and labels and keeps
only softmax probabilities, N x num_labels in all: never hidden states or sequence logits. At the
evaluation the rows of every rank are gathered into dataset order (samples repeated to even out the
last round dropped), and the numbers come from `core.label_metrics`, which calls scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ._compat import is_causal_lm, unwrap_model
from .base import ConfigurationError, FtCallback, require_evaluations
from .core.label_metrics import LabelAccumulator, LabelReport, compute_label_metrics
from .distributed import gather_eval_rows
from .publish import EvaluationContext, _print, notice_once

# Scalars LabelScorer can add to an evaluation's metrics (with the evaluation's prefix, e.g. eval_).
METRICS = (
    "accuracy",
    "balanced_accuracy",
    "precision",
    "recall",
    "f1",
    "precision_micro",
    "precision_macro",
    "precision_weighted",
    "recall_micro",
    "recall_macro",
    "recall_weighted",
    "f1_micro",
    "f1_macro",
    "f1_weighted",
    "specificity",
    "roc_auc",
    "pr_auc",
    "log_loss",
    "brier",
    "ece",
    "best_threshold",
    "best_threshold_f1",
)

_MAX_TABLE_ROWS = 200  # threshold table rows sent to wandb (the full curve can have N points)


def _field(output: Any, name: str) -> Any:
    if isinstance(output, dict):
        return output.get(name)
    return getattr(output, name, None)


class LabelScorer(FtCallback):
    """Label metrics at every evaluation of a classification fine-tune.

    `Trainer(..., callbacks=[LabelScorer()])` with an `AutoModelForSequenceClassification`-style model
    adds `eval_accuracy`, `eval_balanced_accuracy`, `eval_precision`, `eval_recall`, `eval_f1` (binary:
    of `positive_label`; multiclass: macro), their micro/macro/weighted averages, `eval_specificity`
    (binary), `eval_roc_auc`, `eval_pr_auc`, `eval_log_loss`, `eval_brier`, `eval_ece`, for binary
    tasks `eval_best_threshold` and `eval_best_threshold_f1`, and per-class `eval_f1_<label>`,
    `eval_precision_<label>`, `eval_recall_<label>`, `eval_support_<label>`. Every number equals
    scikit-learn's. wandb gets a confusion-matrix chart and table (and for binary tasks a PR curve
    and a threshold table); the console gets the confusion matrix.

    It works beside a user's own `compute_metrics` and in any order with the other ft_callbacks
    callbacks, so `BestCheckpointSaver(monitor="eval_f1")` and `metric_for_best_model="f1"` work.

    Args:
        label_names: class names in id order; default the model's `config.id2label`.
        positive_label: the class (name or id) whose precision/recall/F1 a binary task reports;
            default id 1.
        per_class: add the per-class metrics to the evaluation's metrics.
        ece_bins: equal-width confidence bins of the expected calibration error.
        log_confusion_matrix: wandb confusion-matrix chart and table, and the console matrix.
        log_threshold_curve: wandb PR curve and threshold table (binary tasks).

    Raises:
        ConfigurationError: at construction for bad settings (`label_names` not a list of at least two
            distinct names, `positive_label` not among them, `ece_bins` < 1); before the first step for
            a generative model, a label count that differs from the model's `num_labels`, or training
            labels outside the label set.

    Example:
        >>> Trainer(model=classifier, ..., callbacks=[LabelScorer(label_names=["neg", "pos"])])
    """

    console_label = "labels"
    shared_metrics = METRICS

    def __init__(
        self,
        label_names: Sequence[str] | None = None,
        positive_label: str | int | None = None,
        per_class: bool = True,
        ece_bins: int = 15,
        log_confusion_matrix: bool = True,
        log_threshold_curve: bool = True,
    ) -> None:
        if label_names is not None:
            if isinstance(label_names, (str, bytes)) or not isinstance(label_names, Iterable):
                # A string is iterable too: "np" would silently become the classes 'n' and 'p'.
                raise ConfigurationError(
                    f"label_names={label_names!r} is not a list: give one name per class in id order, e.g. "
                    "label_names=['negative', 'positive']."
                )
            label_names = [str(name) for name in label_names]
            if len(label_names) < 2:
                raise ConfigurationError(f"label_names={label_names!r}: a classifier needs at least two classes.")
            if len(set(label_names)) != len(label_names):
                raise ConfigurationError(f"label_names={label_names!r} has duplicates; give each class one name.")
        if isinstance(ece_bins, bool) or not isinstance(ece_bins, int) or ece_bins < 1:
            raise ConfigurationError(f"ece_bins={ece_bins!r} is not valid: use a positive number of bins (e.g. 15).")
        self.label_names: list[str] | None = list(label_names) if label_names is not None else None
        self.positive_label = positive_label
        if self.label_names is not None:
            self._check_positive(self.label_names)
        self.per_class = per_class
        self.ece_bins = ece_bins
        self.log_confusion_matrix = log_confusion_matrix
        self.log_threshold_curve = log_threshold_curve
        self.last_report: LabelReport | None = None
        self._names: list[str] | None = self.label_names
        # Per eval batch: [label, p_0 .. p_{C-1}] rows, or None for a batch that could not be read.
        self._batches: list[np.ndarray | None] = []
        self._pending: list[np.ndarray | None] = []  # rows of forwards not yet claimed by the eval loop
        self._model: Any = None
        self._handle: Any = None
        self._no_logits = 0

    # -- set-up and checks -------------------------------------------------------------------
    def _check_positive(self, names: list[str]) -> None:
        label = self.positive_label
        if label is None:
            return
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            if not 0 <= int(label) < len(names):
                raise ConfigurationError(
                    f"positive_label={label!r} is not a class id: ids are 0..{len(names) - 1} ({names})."
                )
        elif str(label) not in names:
            raise ConfigurationError(f"positive_label={label!r} is not one of the label names {names}.")

    def produces(self) -> set[str]:
        return set(METRICS)

    def _attach(self, model: Any) -> None:
        if model is None or model is self._model:
            return
        if self._handle is not None:
            self._handle.remove()
        self._model = model
        self._handle = model.register_forward_hook(self._hook, with_kwargs=True)

    def on_init_end(self, args, state, control, **kwargs):
        super().on_init_end(args, state, control, **kwargs)
        self._attach(kwargs.get("model"))

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        require_evaluations(args, "LabelScorer", "scores at evaluations")
        model = kwargs.get("model")
        self._attach(model)
        self._resolve_names(model)
        self._check_dataset_labels(getattr(kwargs.get("train_dataloader"), "dataset", None), "train")
        self._batches = []

    def _resolve_names(self, model: Any) -> list[str] | None:
        base = unwrap_model(model) if model is not None else None
        config = getattr(base, "config", None)
        if base is not None and (is_causal_lm(model) or getattr(config, "is_encoder_decoder", False)):
            raise ConfigurationError(
                f"LabelScorer scores class logits from a classification head (AutoModelForSequenceClassification "
                f"and the like), but {type(base).__name__} generates text. For an LLM that answers with label "
                "text use GenerationScorer(label_names=[...]) instead."
            )
        num_labels = getattr(config, "num_labels", None)
        if self.label_names is not None:
            if num_labels is not None and num_labels != len(self.label_names):
                raise ConfigurationError(
                    f"label_names has {len(self.label_names)} names but the model has num_labels={num_labels}: "
                    "give one name per class, in id order."
                )
            names = self.label_names
        elif num_labels:
            names = _class_names(config, num_labels)
        else:
            names = None
        if names is not None:
            self._check_positive(names)
        self._names = names
        return names

    def _check_dataset_labels(self, dataset: Any, split: str) -> None:
        """Labels outside the label set fail in the loss on CUDA with an opaque device assert; catch
        them here, from the dataset's label column, before the first step."""
        if self._names is None or dataset is None:
            return
        columns = getattr(dataset, "column_names", None) or []
        column = next((c for c in ("labels", "label") if c in columns), None)
        if column is None:
            return
        try:
            values = np.asarray(dataset[column])
        except Exception:
            return
        if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
            return
        bad = sorted({int(v) for v in values if v != -100 and not 0 <= v < len(self._names)})
        if bad:
            raise ConfigurationError(
                f"The {split} dataset's {column!r} column has labels {bad[:10]} outside the label set "
                f"0..{len(self._names) - 1} ({self._names}). Map them to class ids, or set num_labels/id2label "
                "on the model to cover every class."
            )

    # -- collecting --------------------------------------------------------------------------
    def _hook(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        if module.training:
            return
        try:
            labels = kwargs.get("labels")
            logits = _field(output, "logits")
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
                if isinstance(labels, torch.Tensor):
                    self._no_logits += 1
                return
            if isinstance(labels, torch.Tensor):
                if labels.dim() != 1:
                    self._no_logits += 1
                    return
                label_column = labels.detach().cpu().numpy().astype(np.float64)
            else:
                # The Trainer pops the labels before the forward when it computes the loss itself
                # (label smoothing, compute_loss_func): they are read from the eval dataset instead.
                label_column = np.full(len(logits), np.nan)
            probabilities = logits.detach().double().softmax(-1).cpu().numpy()
            self._pending.append(np.concatenate([label_column[:, None], probabilities], axis=1))
        except Exception as exc:  # measuring must never break the user's forward pass
            notice_once(f"labels:{type(exc).__name__}", f"LabelScorer could not read the batch ({exc}).")
            self._pending.append(None)  # a hole, so the ranks' batches still line up

    def on_prediction_step(self, args, state, control, **kwargs):
        super().on_prediction_step(args, state, control, **kwargs)
        # Only this Trainer's eval loop calls this, right after the forward of its batch: that forward
        # is the last one recorded; earlier ones came from elsewhere (another Trainer on the same
        # model, a manual forward in eval mode) and are dropped.
        if self._pending:
            self._batches.append(self._pending[-1])
        self._pending = []

    def on_step_end(self, args, state, control, **kwargs):
        self._pending = []
        self._batches = []

    def on_predict(self, args, state, control, metrics=None, **kwargs):
        self._pending = []
        self._batches = []

    # -- evaluation --------------------------------------------------------------------------
    def _gather(self, ctx: EvaluationContext) -> np.ndarray | None:
        batches, self._batches = self._batches, []
        return gather_eval_rows(batches, ctx.eval_dataloader, width=0)

    @staticmethod
    def _labels_from_dataset(ctx: EvaluationContext, count: int) -> np.ndarray:
        dataset = getattr(ctx.eval_dataloader, "dataset", None)
        columns = getattr(dataset, "column_names", None) or []
        column = next((c for c in ("labels", "label") if c in columns), None)
        values = np.asarray(dataset[column], dtype=np.float64) if column else None
        if values is None or values.ndim != 1 or len(values) != count:
            raise ConfigurationError(
                "LabelScorer could not see the labels: the Trainer removes them from the model inputs when it "
                "computes the loss itself (label_smoothing_factor > 0 or compute_loss_func), and the eval dataset "
                "has no 'labels'/'label' column of the same length to read them from. Use "
                "compute_metrics=ft_callbacks.label_metrics(...) in that set-up."
            )
        return values  # the eval loop reads the dataset in order (sequential sampler)

    def compute(self, ctx: EvaluationContext) -> None:
        rows = self._gather(ctx)
        if rows is None:
            if ctx.is_main:
                _print(f"[ft_callbacks] step {ctx.step} | LabelScorer: an evaluation batch could not be read on some "
                       "rank; no label metrics this evaluation rather than numbers over part of the eval set.")
            return
        if not len(rows):
            if self._no_logits:
                raise ConfigurationError(
                    "LabelScorer needs class logits of shape [batch, num_labels] and 1-D labels from the model, "
                    f"but {type(unwrap_model(ctx.model)).__name__} returned none this evaluation. Use a sequence "
                    "classification model, or label_metrics() as compute_metrics for other outputs."
                )
            notice_once("labels:none", "LabelScorer saw no labelled evaluation batch; no label metrics this time.")
            return
        if np.isnan(rows[:, 0]).any():
            rows[:, 0] = self._labels_from_dataset(ctx, len(rows))
        labels = rows[:, 0].astype(np.int64)
        probabilities = rows[:, 1:]
        names = self._names or [str(i) for i in range(probabilities.shape[1])]
        keep = labels != -100
        report = compute_label_metrics(
            labels[keep],
            probabilities=probabilities[keep],
            label_names=names,
            positive_label=self.positive_label,
            ece_bins=self.ece_bins,
        )
        self.last_report = report
        values = report.flat() if self.per_class else report.scalars
        headline = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc", "ece", "invalid_rate")
        for name, value in values.items():
            ctx.add(name, value, show=name in headline)
        if ctx.is_main:
            for note in report.notes:
                notice_once(f"labels:{note}", f"LabelScorer: {note}")
        self._add_media(ctx, report, labels[keep], probabilities[keep])

    def _add_media(self, ctx: EvaluationContext, report: LabelReport, labels: np.ndarray, probs: np.ndarray) -> None:
        if not ctx.is_main:
            return
        prefix = ctx.prefix
        names = list(report.label_names)
        if self.log_confusion_matrix:
            matrix = report.confusion_matrix
            predictions = probs.argmax(axis=1)
            ctx.add_media(f"{prefix}/confusion_matrix", _confusion_chart(labels, predictions, names, prefix))
            # wandb.plot stores the chart's data as "<key>_table"; ours needs another name.
            ctx.add_media(f"{prefix}/confusion_matrix_counts", _matrix_table(matrix, names))
            ctx.blocks.append(format_confusion_matrix(matrix, names, title=f"confusion matrix at step {ctx.step}"))
        if self.log_threshold_curve and report.threshold_curve is not None and probs.shape[1] == 2:
            ctx.add_media(f"{prefix}/pr_curve", _pr_chart(labels, probs, names))
            ctx.add_media(f"{prefix}/threshold_table", _threshold_table(report.threshold_curve))


def _class_names(config: Any, num_labels: int) -> list[str]:
    """Class names in id order from a model config: `id2label`, unless it holds only the placeholder
    names `LABEL_<i>` while `label2id` has the real ones (what transformers 5 leaves after run_glue.py
    sets `label2id` alone)."""
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(num_labels)]
    placeholder = all(name == f"LABEL_{i}" for i, name in enumerate(names))
    label2id = getattr(config, "label2id", None) or {}
    if placeholder and label2id:
        by_id = {}
        for name, i in label2id.items():
            try:
                by_id[int(i)] = str(name)
            except (TypeError, ValueError):
                return names
        real = [by_id.get(i) for i in range(num_labels)]
        if all(real) and len(set(real)) == num_labels and real != names:
            return real  # type: ignore[return-value]
    return names


def format_confusion_matrix(matrix: np.ndarray, names: Sequence[str], title: str = "confusion matrix") -> str:
    """The matrix as aligned text: rows are true labels, columns predictions."""
    names = [str(n) for n in names]
    width = max(6, *(len(n) for n in names), *(len(str(int(v))) for v in np.asarray(matrix).ravel()))
    corner = "true \\ pred"
    head = f"{corner:>{width + 2}} " + " ".join(f"{n:>{width}}" for n in names)
    lines = [f"[ft_callbacks] {title}", head]
    for name, row in zip(names, np.asarray(matrix), strict=False):
        lines.append(f"{name:>{width + 2}} " + " ".join(f"{int(v):>{width}}" for v in row))
    return "\n".join(lines)


def _confusion_chart(labels: np.ndarray, predictions: np.ndarray, names: list[str], prefix: str) -> Callable:
    def build(wandb: Any) -> Any:
        return wandb.plot.confusion_matrix(
            y_true=labels.tolist(), preds=predictions.tolist(), class_names=names, title=f"{prefix} confusion matrix"
        )

    return build


def _matrix_table(matrix: np.ndarray, names: list[str]) -> Callable:
    def build(wandb: Any) -> Any:
        data = [[name, *(int(v) for v in row)] for name, row in zip(names, matrix, strict=False)]
        return wandb.Table(columns=["true \\ predicted", *names[: matrix.shape[1]]], data=data)

    return build


def _pr_chart(labels: np.ndarray, probs: np.ndarray, names: list[str]) -> Callable:
    def build(wandb: Any) -> Any:
        return wandb.plot.pr_curve(labels.tolist(), probs.tolist(), labels=names)

    return build


def _threshold_table(curve: dict[str, np.ndarray]) -> Callable:
    def build(wandb: Any) -> Any:
        n = len(curve["threshold"])
        picks = np.unique(np.linspace(0, n - 1, min(n, _MAX_TABLE_ROWS)).round().astype(int)) if n else []
        columns = ["threshold", "precision", "recall", "f1"]
        data = [[float(curve[c][i]) for c in columns] for i in picks]
        return wandb.Table(columns=columns, data=data)

    return build


def label_metrics(
    label_names: Sequence[str] | None = None,
    positive_label: str | int | None = None,
    inputs: str = "logits",
    ece_bins: int = 15,
    per_class: bool = True,
) -> Callable[..., dict[str, float]]:
    """A `compute_metrics` function giving LabelScorer's numbers, for users who prefer that route.

    `Trainer(..., compute_metrics=label_metrics(["neg", "pos"]))`. Works with
    `batch_eval_metrics=True` (streaming: only N x num_labels probabilities are kept). `inputs` says
    what `eval_pred.predictions` holds: "logits" (default), "probabilities", or "predictions" (hard
    class ids, e.g. from an argmax `preprocess_logits_for_metrics`; probability metrics are then
    skipped with one notice)."""
    if inputs not in ("logits", "probabilities", "predictions"):
        raise ConfigurationError(f"inputs={inputs!r} is not valid: use 'logits', 'probabilities' or 'predictions'.")
    names = LabelScorer(label_names=label_names, positive_label=positive_label).label_names  # the same checks
    accumulator = LabelAccumulator(num_classes=len(names) if names else None)

    def compute_metrics(eval_pred: Any, compute_result: bool = True) -> dict[str, float]:
        predictions = eval_pred.predictions
        if isinstance(predictions, (tuple, list)):
            predictions = predictions[0]
        predictions = np.asarray(predictions.cpu() if isinstance(predictions, torch.Tensor) else predictions)
        labels = eval_pred.label_ids
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if inputs == "predictions":
            accumulator.add_predictions(predictions, labels)
        else:
            accumulator.add(predictions, labels, are_logits=inputs == "logits")
        if not compute_result:
            return {}
        report = accumulator.report(label_names=names, positive_label=positive_label, ece_bins=ece_bins)
        accumulator.reset()
        for note in report.notes:
            notice_once(f"labels:{note}", f"label_metrics: {note}")
        return report.flat() if per_class else dict(report.scalars)

    return compute_metrics
