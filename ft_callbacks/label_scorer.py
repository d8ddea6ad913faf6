"""LabelScorer: the label metrics of a fine-tune, with one line and no `compute_metrics`, for
single-label classification (accuracy, precision, recall, F1, AUC, calibration, the confusion
matrix), regression (MAE, MSE, RMSE, R², MAPE, Pearson, Spearman), multi-label classification
(micro/macro/samples F1, Hamming loss, subset accuracy, per-label F1 and AUC) and token
classification (seqeval entity precision/recall/F1 per type and overall, token accuracy), and every
metric also per slice of the eval set.

A forward hook sees each evaluation batch's logits and labels and keeps only what the metrics need:
softmax probabilities (N x num_labels) for classification, one prediction per sample for regression,
sigmoid probabilities (N x num_labels) for multi-label, and for token classification only the arg-max
tag id and the label of each labelled token (never the [batch, seq, num_tags] logits). At the
evaluation the rows of every rank are gathered into dataset order (samples repeated to even out the
last round dropped), and the numbers come from `core.label_metrics` / `core.label_tasks`, which call
scikit-learn, SciPy and seqeval.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ._compat import is_causal_lm, unwrap_model
from .base import ConfigurationError, FtCallback, require_evaluations
from .core.label_metrics import IGNORE_INDEX, LabelAccumulator, LabelReport, compute_label_metrics
from .core.label_tasks import (
    MULTILABEL_METRICS,
    REGRESSION_METRICS,
    SEQEVAL_SCHEMES,
    TOKEN_METRICS,
    TaskReport,
    multilabel_metrics,
    regression_metrics,
    require_seqeval,
    token_metrics,
    token_tags,
)
from .core.slices import DEFAULT_MIN_SLICE_SIZE, SliceReport, format_slices, slice_keys, slice_metrics
from .distributed import gather_eval_rows
from .engines import find_trainer
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
# The same for the other tasks (LabelScorer adds the metrics of its task only).
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": METRICS,
    "regression": REGRESSION_METRICS,
    "multi_label": MULTILABEL_METRICS,
    "token_classification": TOKEN_METRICS,
}
ALL_METRICS = tuple(dict.fromkeys(name for names in TASK_METRICS.values() for name in names))
_TASK_ALIASES = {
    "classification": "classification",
    "single_label_classification": "classification",
    "regression": "regression",
    "multi_label": "multi_label",
    "multilabel": "multi_label",
    "multi_label_classification": "multi_label",
    "token_classification": "token_classification",
    "ner": "token_classification",
}
# The metric whose worst slice is named, per task (slice_metric= overrides).
_SLICE_HEADLINE = {
    "classification": "f1",
    "regression": "rmse",
    "multi_label": "f1_micro",
    "token_classification": "entity_f1",
}
_HEADLINE = {
    "classification": ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "roc_auc", "ece", "invalid_rate"),
    "regression": ("mae", "rmse", "r2", "pearson", "spearman"),
    "multi_label": ("f1_micro", "f1_macro", "f1_samples", "hamming_loss", "subset_accuracy", "roc_auc_macro"),
    "token_classification": ("entity_precision", "entity_recall", "entity_f1", "token_accuracy"),
}
_MAX_SCATTER_POINTS = 2000  # regression scatter points sent to wandb

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

    Other tasks, inferred from the model (`task=` overrides):

    - regression (`num_labels == 1` or `problem_type="regression"`): `eval_mae`, `eval_mse`, `eval_rmse`,
      `eval_r2`, `eval_mape` (scikit-learn), `eval_pearson`, `eval_spearman` (SciPy); wandb gets a
      predicted-vs-true scatter plot;
    - multi-label (`problem_type="multi_label_classification"`; a label is predicted when its sigmoid
      probability reaches its threshold): `eval_{precision,recall,f1}_{micro,macro,samples,weighted}`,
      `eval_hamming_loss`, `eval_subset_accuracy`, `eval_roc_auc_macro`, `eval_pr_auc_macro` and per
      label `eval_f1_<label>`, `eval_precision_<label>`, `eval_recall_<label>`, `eval_support_<label>`,
      `eval_roc_auc_<label>`, `eval_pr_auc_<label>` (scikit-learn);
    - token classification (`*ForTokenClassification`): `eval_entity_precision`, `eval_entity_recall`,
      `eval_entity_f1` overall and `eval_entity_{precision,recall,f1,support}_<TYPE>` per entity type,
      equal to seqeval (default or strict mode), and `eval_token_accuracy`; tokens labelled -100 (the
      non-first subwords of `run_ner`-style data, special tokens, padding) are ignored. Only the arg-max
      tag and the label of each labelled token are kept, never the logits over the sequence.

    With `slice_by`, every scalar is also computed on each slice's samples (recomputed, not averaged):
    `eval_slice_<slice>_<metric>` and `eval_slice_<slice>_count`; a slice under `min_slice_size`
    samples gets its count only. The console block and the wandb summary name the worst slice of the
    task's headline metric (`slice_metric`), and wandb gets a per-slice table.

    It works beside a user's own `compute_metrics` and in any order with the other ft_callbacks
    callbacks, so `BestCheckpointSaver(monitor="eval_f1")` (or `"eval_rmse"`, `"eval_entity_f1"`, whose
    direction is inferred) and `metric_for_best_model="f1"` work.

    Args:
        label_names: class names in id order (tag names for token classification); default the model's
            `config.id2label`.
        positive_label: the class (name or id) whose precision/recall/F1 a binary task reports;
            default id 1.
        per_class: add the per-class (per-label, per-entity-type) metrics to the evaluation's metrics.
        ece_bins: equal-width confidence bins of the expected calibration error.
        log_confusion_matrix: wandb confusion-matrix chart and table, and the console matrix.
        log_threshold_curve: wandb PR curve and threshold table (binary tasks).
        task: "classification", "regression", "multi_label" or "token_classification" ("ner"); default
            inferred from the model.
        thresholds: multi-label decision threshold, one for all labels or one per label (default 0.5).
        seqeval_mode: None for seqeval's default (CoNLL) entity matching, "strict" for its strict mode.
        seqeval_scheme: the tagging scheme of strict mode: IOB2 (default), IOBES, IOB1, IOE1, IOE2, BILOU.
        slice_by: a column of the eval dataset, or a function example -> slice name (e.g. a length bucket).
        min_slice_size: slices with fewer samples are reported as too small, without values.
        slice_metric: the metric whose worst slice is named; default f1 / rmse / f1_micro / entity_f1.
        log_scatter: wandb predicted-vs-true scatter plot (regression).

    Raises:
        ConfigurationError: at construction for bad settings (`label_names` not a list of at least two
            distinct names, `positive_label` not among them, `ece_bins` < 1, an unknown `task`,
            thresholds outside [0, 1], an unknown seqeval mode or scheme, `slice_by` neither a column
            name nor a function, `min_slice_size` < 1); before the first step for a generative model, a
            label count that differs from the model's `num_labels`, training labels outside the label set,
            or a `slice_by` column the eval dataset lacks.

    Example:
        >>> Trainer(model=classifier, ..., callbacks=[LabelScorer(label_names=["neg", "pos"])])
        >>> Trainer(model=ner_model, ..., callbacks=[LabelScorer(seqeval_mode="strict", slice_by="source")])
    """

    console_label = "labels"
    shared_metrics = ALL_METRICS

    def __init__(
        self,
        label_names: Sequence[str] | None = None,
        positive_label: str | int | None = None,
        per_class: bool = True,
        ece_bins: int = 15,
        log_confusion_matrix: bool = True,
        log_threshold_curve: bool = True,
        task: str | None = None,
        thresholds: float | Sequence[float] | None = None,
        seqeval_mode: str | None = None,
        seqeval_scheme: str = "IOB2",
        slice_by: str | Callable[[Any], Any] | None = None,
        min_slice_size: int = DEFAULT_MIN_SLICE_SIZE,
        slice_metric: str | None = None,
        log_scatter: bool = True,
    ) -> None:
        if task is not None and _TASK_ALIASES.get(str(task).lower()) is None:
            raise ConfigurationError(
                f"task={task!r} is not valid: use 'classification', 'regression', 'multi_label' or "
                "'token_classification' (or None to infer it from the model)."
            )
        if thresholds is not None:
            arr = np.asarray(thresholds, dtype=np.float64) if not isinstance(thresholds, str) else np.asarray(-1.0)
            if arr.ndim > 1 or arr.size == 0 or not np.all((arr >= 0) & (arr <= 1)):
                raise ConfigurationError(
                    f"thresholds={thresholds!r} is not valid: give one probability in [0, 1] (e.g. 0.5) or one per "
                    "label."
                )
        if seqeval_mode not in (None, "default", "strict"):
            raise ConfigurationError(f"seqeval_mode={seqeval_mode!r} is not valid: use None (default) or 'strict'.")
        if seqeval_scheme not in SEQEVAL_SCHEMES:
            raise ConfigurationError(f"seqeval_scheme={seqeval_scheme!r} is not valid: use one of {SEQEVAL_SCHEMES}.")
        if slice_by is not None and not (isinstance(slice_by, str) and slice_by) and not callable(slice_by):
            raise ConfigurationError(
                f"slice_by={slice_by!r} is not valid: give an eval dataset column name (e.g. 'source') or a function "
                "example -> slice name (e.g. lambda ex: 'long' if len(ex['input_ids']) > 64 else 'short')."
            )
        if isinstance(min_slice_size, bool) or not isinstance(min_slice_size, int) or min_slice_size < 1:
            raise ConfigurationError(f"min_slice_size={min_slice_size!r} is not valid: use a positive sample count.")
        self.task = _TASK_ALIASES[str(task).lower()] if task is not None else None
        self.thresholds = thresholds
        self.seqeval_mode = None if seqeval_mode == "default" else seqeval_mode
        self.seqeval_scheme = seqeval_scheme
        self.slice_by = slice_by
        self.min_slice_size = min_slice_size
        if slice_metric is not None and (not isinstance(slice_metric, str) or not slice_metric):
            raise ConfigurationError(f"slice_metric={slice_metric!r} is not valid: name a metric, e.g. 'f1' or 'rmse'.")
        self.slice_metric = slice_metric
        self.log_scatter = log_scatter
        self.last_slices: SliceReport | None = None
        self.last_task_report: TaskReport | None = None
        self._task: str | None = self.task
        self._trainer_ref: Any = None  # weak: the Trainer holds this callback
        self._slice_cache: tuple[Any, list[str]] | None = None
        self._resolved = False  # label names and task read from the model
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
        self._no_labels = 0  # eval batches whose labels the Trainer kept from the model (label smoothing)

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
        if self._task is None:
            return set(ALL_METRICS)
        return set(TASK_METRICS[self._task])

    @property
    def resolved_task(self) -> str | None:
        """The task being scored ("classification", "regression", "multi_label", "token_classification"),
        once the model is known."""
        return self._task

    def _attach(self, model: Any) -> None:
        if model is None or model is self._model:
            return
        if self._handle is not None:
            self._handle.remove()
        self._model = model
        self._handle = model.register_forward_hook(self._hook, with_kwargs=True)

    def on_init_end(self, args, state, control, **kwargs):
        super().on_init_end(args, state, control, **kwargs)
        model = kwargs.get("model")
        self._attach(model)
        self._find_trainer()
        try:
            self._task = self._infer_task(model)
        except ConfigurationError:
            pass  # raised with the full message at on_train_begin / the first evaluation

    def _find_trainer(self) -> Any:
        trainer = find_trainer(self)
        if trainer is not None:
            self._trainer_ref = weakref.ref(trainer)
        return self._trainer

    @property
    def _trainer(self) -> Any:
        return self._trainer_ref() if self._trainer_ref is not None else None

    def _infer_task(self, model: Any) -> str | None:
        if self.task is not None:
            return self.task
        base = unwrap_model(model) if model is not None else None
        if base is None:
            return None
        config = getattr(base, "config", None)
        problem_type = getattr(config, "problem_type", None)
        if problem_type == "regression" or getattr(config, "num_labels", 2) == 1:
            return "regression"
        if problem_type == "multi_label_classification":
            return "multi_label"
        if type(base).__name__.endswith("ForTokenClassification"):
            return "token_classification"
        return "classification"

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        require_evaluations(args, "LabelScorer", "scores at evaluations")
        model = kwargs.get("model")
        self._attach(model)
        self._find_trainer()
        self._resolve_names(model)
        if self._task == "classification":
            self._check_dataset_labels(getattr(kwargs.get("train_dataloader"), "dataset", None), "train")
        self._check_slice_column()
        self._batches = []

    def _eval_datasets(self) -> list[Any]:
        trainer = self._trainer
        dataset = getattr(trainer, "eval_dataset", None)
        if isinstance(dataset, dict):
            return list(dataset.values())
        return [dataset] if dataset is not None else []

    def _check_slice_column(self) -> None:
        if not isinstance(self.slice_by, str):
            return
        for dataset in self._eval_datasets():
            columns = getattr(dataset, "column_names", None)
            if columns is not None and self.slice_by not in columns:
                raise ConfigurationError(
                    f"LabelScorer(slice_by={self.slice_by!r}): the eval dataset has no such column (it has "
                    f"{list(columns)}). Add the column (it may stay in the dataset: the Trainer drops unused columns "
                    "only from the batches), or pass a function example -> slice name."
                )

    def _resolve_names(self, model: Any) -> list[str] | None:
        base = unwrap_model(model) if model is not None else None
        config = getattr(base, "config", None)
        if base is not None and (is_causal_lm(model) or getattr(config, "is_encoder_decoder", False)):
            raise ConfigurationError(
                f"LabelScorer scores class logits from a classification head (AutoModelForSequenceClassification "
                f"and the like), but {type(base).__name__} generates text. For an LLM that answers with label "
                "text use GenerationScorer(label_names=[...]) instead."
            )
        self._task = self._infer_task(model) or self._task or "classification"
        num_labels = getattr(config, "num_labels", None)
        if self._task == "regression":
            if num_labels not in (None, 1):
                raise ConfigurationError(
                    f"LabelScorer(task='regression') needs a model with one output (num_labels=1), but "
                    f"{type(base).__name__} has num_labels={num_labels}."
                )
            if self.positive_label is not None:
                raise ConfigurationError("positive_label applies to classification, not regression: drop it.")
            self._names = None
            self._resolved = True
            return None
        if self._task == "token_classification":
            require_seqeval()  # before step 1, not at the first evaluation
        if self._task != "classification" and self.positive_label is not None:
            raise ConfigurationError(
                f"positive_label applies to single-label classification, not {self._task}: drop it."
            )
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
        if self._task == "multi_label" and self.thresholds is not None and names is not None:
            count = np.asarray(self.thresholds).size
            if np.ndim(self.thresholds) == 1 and count != len(names):
                raise ConfigurationError(
                    f"thresholds has {count} values but the model has {len(names)} labels: give one per label, or one "
                    "number for all."
                )
        self._names = names
        self._resolved = True
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
            if self.task is None and self._task == "classification":
                # transformers sets config.problem_type at the first forward from the labels' dtype and
                # shape (float multi-hot labels -> multi-label) when the user did not.
                self._task = self._infer_task(module) or self._task
            task = self._task or "classification"
            rows = self._rows(task, logits, labels)
            if rows is None:
                if isinstance(labels, torch.Tensor):
                    self._no_logits += 1
                elif task in ("multi_label", "token_classification") and isinstance(logits, torch.Tensor):
                    self._no_labels += 1
                return
            self._pending.append(rows)
        except Exception as exc:  # measuring must never break the user's forward pass
            notice_once(f"labels:{type(exc).__name__}", f"LabelScorer could not read the batch ({exc}).")
            self._pending.append(None)  # a hole, so the ranks' batches still line up

    @staticmethod
    def _rows(task: str, logits: Any, labels: Any) -> np.ndarray | None:
        """The per-sample rows one eval batch leaves (None when the output is not of this task)."""
        if not isinstance(logits, torch.Tensor):
            return None
        has_labels = isinstance(labels, torch.Tensor)
        if task == "regression":
            if logits.dim() == 2 and logits.shape[1] == 1:
                logits = logits[:, 0]
            if logits.dim() != 1:
                return None
            if has_labels:
                target = labels.detach().reshape(len(logits), -1)
                if target.shape[1] != 1:
                    return None
                target = target[:, 0].double().cpu().numpy()
            else:
                target = np.full(len(logits), np.nan)
            return np.stack([target, logits.detach().double().cpu().numpy()], axis=1)  # [label, prediction]
        if task == "multi_label":
            if logits.dim() != 2 or not has_labels or tuple(labels.shape) != tuple(logits.shape):
                return None
            probabilities = logits.detach().double().sigmoid().cpu().numpy()
            return np.concatenate([labels.detach().double().cpu().numpy(), probabilities], axis=1)
        if task == "token_classification":
            if logits.dim() != 3 or not has_labels or tuple(labels.shape) != tuple(logits.shape[:2]):
                return None
            # Only the arg-max tag and the label of each labelled token leave the device: O(labelled tokens)
            # ints, never the [batch, seq, num_tags] logits.
            predicted = logits.detach().argmax(-1).cpu().numpy().astype(np.int32)
            label_ids = labels.detach().cpu().numpy().astype(np.int32)
            rows = np.empty(len(label_ids), dtype=object)
            for i in range(len(label_ids)):
                keep = label_ids[i] != IGNORE_INDEX
                rows[i] = np.stack([label_ids[i][keep], predicted[i][keep]], axis=1)
            return rows
        # single-label classification: [label, p_0 .. p_{C-1}]
        if logits.dim() != 2:
            return None
        if has_labels:
            if labels.dim() != 1:
                return None
            label_column = labels.detach().cpu().numpy().astype(np.float64)
        else:
            # The Trainer pops the labels before the forward when it computes the loss itself
            # (label smoothing, compute_loss_func): they are read from the eval dataset instead.
            label_column = np.full(len(logits), np.nan)
        probabilities = logits.detach().double().softmax(-1).cpu().numpy()
        return np.concatenate([label_column[:, None], probabilities], axis=1)

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
        if not self._resolved and ctx.model is not None:
            self._resolve_names(ctx.model)  # a standalone evaluate(): no on_train_begin came first
        task = self._task or "classification"
        if not len(rows):
            if self._no_logits:
                shapes = {
                    "classification": "class logits [batch, num_labels] and 1-D labels",
                    "regression": "one output per sample ([batch] or [batch, 1] logits) and labels",
                    "multi_label": "logits [batch, num_labels] and multi-hot labels of the same shape",
                    "token_classification": "logits [batch, seq, num_tags] and labels [batch, seq]",
                }
                raise ConfigurationError(
                    f"LabelScorer ({task}) needs {shapes[task]} from the model, but "
                    f"{type(unwrap_model(ctx.model)).__name__} returned none this evaluation. Use a model with such a "
                    "head, pass task= if it was inferred wrongly, or label_metrics() as compute_metrics for other "
                    "outputs."
                )
            if self._no_labels:
                raise ConfigurationError(
                    f"LabelScorer ({task}) could not see the labels: the Trainer removes them from the model inputs "
                    "when it computes the loss itself (label_smoothing_factor > 0 or compute_loss_func). Use "
                    f"compute_metrics=ft_callbacks.label_metrics(..., task={task!r}) in that set-up."
                )
            notice_once("labels:none", "LabelScorer saw no labelled evaluation batch; no label metrics this time.")
            return
        if task == "classification":
            scalars, score_slice, keep = self._compute_classification(ctx, rows)
        elif task == "regression":
            scalars, score_slice, keep = self._compute_regression(ctx, rows)
        elif task == "multi_label":
            scalars, score_slice, keep = self._compute_multi_label(ctx, rows)
        else:
            scalars, score_slice, keep = self._compute_tokens(ctx, rows)
        headline = _HEADLINE[task]
        for name, value in scalars.items():
            ctx.add(name, value, show=name in headline)
        if self.slice_by is not None:
            self._compute_slices(ctx, len(rows), keep, score_slice)

    def _compute_classification(self, ctx: EvaluationContext, rows: np.ndarray) -> tuple:
        if np.isnan(rows[:, 0]).any():
            rows[:, 0] = self._labels_from_dataset(ctx, len(rows))
        labels = rows[:, 0].astype(np.int64)
        probabilities = rows[:, 1:]
        names = self._names or [str(i) for i in range(probabilities.shape[1])]
        keep = labels != -100
        labels, probabilities = labels[keep], probabilities[keep]
        report = compute_label_metrics(
            labels, probabilities=probabilities, label_names=names, positive_label=self.positive_label,
            ece_bins=self.ece_bins,
        )  # fmt: skip
        self.last_report = report
        self._notes(ctx, report.notes)
        self._add_media(ctx, report, labels, probabilities)

        def score_slice(index: np.ndarray) -> dict[str, float]:
            return compute_label_metrics(
                labels[index], probabilities=probabilities[index], label_names=names,
                positive_label=self.positive_label, ece_bins=self.ece_bins,
            ).scalars  # fmt: skip

        return (report.flat() if self.per_class else report.scalars), score_slice, keep

    def _compute_regression(self, ctx: EvaluationContext, rows: np.ndarray) -> tuple:
        if np.isnan(rows[:, 0]).any():
            rows[:, 0] = self._labels_from_dataset(ctx, len(rows))
        targets, predictions = rows[:, 0], rows[:, 1]
        report = regression_metrics(targets, predictions)
        self.last_task_report = report
        self._notes(ctx, report.notes)
        if ctx.is_main and self.log_scatter:
            ctx.add_media(f"{ctx.prefix}/predicted_vs_true", _scatter_chart(targets, predictions, ctx.prefix))

        def score_slice(index: np.ndarray) -> dict[str, float]:
            return regression_metrics(targets[index], predictions[index]).scalars

        return report.scalars, score_slice, None

    def _compute_multi_label(self, ctx: EvaluationContext, rows: np.ndarray) -> tuple:
        width = rows.shape[1] // 2
        targets, probabilities = rows[:, :width], rows[:, width:]
        names = self._names or [str(i) for i in range(width)]
        report = multilabel_metrics(targets, probabilities, label_names=names, thresholds=self.thresholds)
        self.last_task_report = report
        self._notes(ctx, report.notes)

        def score_slice(index: np.ndarray) -> dict[str, float]:
            return multilabel_metrics(
                targets[index], probabilities[index], label_names=names, thresholds=self.thresholds
            ).scalars

        return (report.flat() if self.per_class else report.scalars), score_slice, None

    def _compute_tokens(self, ctx: EvaluationContext, rows: np.ndarray) -> tuple:
        if self._names is None:
            raise ConfigurationError(
                "LabelScorer cannot name the tags of this token-classification model: set config.id2label, or "
                "pass label_names=[...] (one tag per id, e.g. ['O', 'B-PER', 'I-PER'])."
            )
        true_tags, pred_tags = token_tags([r[:, 1] for r in rows], [r[:, 0] for r in rows], self._names)
        report = token_metrics(true_tags, pred_tags, mode=self.seqeval_mode, scheme=self.seqeval_scheme)
        self.last_task_report = report
        self._notes(ctx, report.notes)

        def score_slice(index: np.ndarray) -> dict[str, float]:
            return token_metrics(
                [true_tags[i] for i in index], [pred_tags[i] for i in index], mode=self.seqeval_mode,
                scheme=self.seqeval_scheme,
            ).scalars  # fmt: skip

        return (report.flat() if self.per_class else report.scalars), score_slice, None

    @staticmethod
    def _notes(ctx: EvaluationContext, notes: list[str]) -> None:
        if ctx.is_main:
            for note in notes:
                notice_once(f"labels:{note}", f"LabelScorer: {note}")

    # -- slices --------------------------------------------------------------------------------
    def _slice_datasets(self, ctx: EvaluationContext) -> list[Any]:
        """The datasets slice values may come from: the Trainer's own eval dataset of this evaluation
        (every column kept), then the one the eval loop read (unused columns removed)."""
        found = []
        dataset = getattr(self._trainer, "eval_dataset", None)
        if isinstance(dataset, dict):
            dataset = dataset.get(ctx.prefix.removeprefix("eval_"))
        if dataset is not None:
            found.append(dataset)
        loaded = getattr(ctx.eval_dataloader, "dataset", None)
        if loaded is not None:
            found.append(loaded)
        return found

    def _slice_values(self, ctx: EvaluationContext, count: int) -> list[str] | None:
        for dataset in self._slice_datasets(ctx):
            try:
                if len(dataset) != count:
                    continue
            except TypeError:
                continue
            if isinstance(self.slice_by, str):
                columns = getattr(dataset, "column_names", None) or []
                if self.slice_by not in columns:
                    continue
                return [str(v) for v in dataset[self.slice_by]]
            # A function runs once per example: cached for the same eval dataset (evaluations repeat).
            key = (id(dataset), getattr(dataset, "_fingerprint", None), count)
            if self._slice_cache is None or self._slice_cache[0] != key:
                names = [str(self.slice_by(dataset[i])) for i in range(count)]  # type: ignore[misc, operator]
                self._slice_cache = (key, names)
            return list(self._slice_cache[1])
        return None

    def _compute_slices(
        self, ctx: EvaluationContext, count: int, keep: np.ndarray | None, score_slice: Callable
    ) -> None:
        names = self._slice_values(ctx, count)
        if names is None:
            if ctx.is_main:
                notice_once(
                    "labels:slices",
                    f"LabelScorer(slice_by={self.slice_by!r}): the evaluated dataset ({count} samples) has no such "
                    "column, or is not a sized dataset of that length; no per-slice metrics.",
                )
            return
        if keep is not None:
            names = [name for name, kept in zip(names, keep, strict=True) if kept]
        report = slice_metrics(names, score_slice, min_slice_size=self.min_slice_size)
        self.last_slices = report
        keys = dict(zip(report.names, slice_keys(report.names), strict=True))
        for result in report.slices:
            ctx.add(f"slice_{keys[result.name]}_count", result.count, show=False)
            for metric, value in result.values.items():
                ctx.add(f"slice_{keys[result.name]}_{metric}", value, show=False)
        metric = self.slice_metric or _SLICE_HEADLINE[self._task or "classification"]
        worst = report.worst(metric)
        if worst is not None:
            ctx.add_summary(f"worst_slice/{ctx.prefix}_{metric}", worst.name)
        if not ctx.is_main:
            return
        measured = sorted({m for result in report.slices for m in result.values})
        if measured and metric not in measured:  # a misspelt slice_metric would otherwise name nothing, silently
            notice_once(f"labels:slice_metric:{metric}", f"LabelScorer(slice_metric={metric!r}): the slices have no "
                        f"such metric, so no worst slice is named; use one of {measured}.")  # fmt: skip
        for result in report.slices:
            for note in result.notes:
                notice_once(f"labels:slice:{result.name}:{note}", f"LabelScorer, slice {result.name!r}: {note}")
        ctx.blocks.append(format_slices(report, metric, self.slice_by, ctx.step))
        columns, data = report.rows()
        ctx.add_media(f"{ctx.prefix}/slices", _table(columns, data))

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


def _table(columns: list[str], data: list[list[Any]]) -> Callable:
    def build(wandb: Any) -> Any:
        return wandb.Table(columns=columns, data=data)

    return build


def _scatter_chart(targets: np.ndarray, predictions: np.ndarray, prefix: str) -> Callable:
    picks = np.unique(np.linspace(0, len(targets) - 1, min(len(targets), _MAX_SCATTER_POINTS)).round().astype(int))
    data = [[float(targets[i]), float(predictions[i])] for i in picks]

    def build(wandb: Any) -> Any:
        table = wandb.Table(data=data, columns=["true", "predicted"])
        return wandb.plot.scatter(table, "true", "predicted", title=f"{prefix} predicted vs true")

    return build


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
    task: str = "classification",
    thresholds: float | Sequence[float] | None = None,
    seqeval_mode: str | None = None,
    seqeval_scheme: str = "IOB2",
) -> Callable[..., dict[str, float]]:
    """A `compute_metrics` function giving LabelScorer's numbers, for users who prefer that route.

    `Trainer(..., compute_metrics=label_metrics(["neg", "pos"]))`. Works with
    `batch_eval_metrics=True` (streaming: only N x num_labels probabilities are kept, and for token
    classification only the arg-max tag and label of each labelled token). `inputs` says what
    `eval_pred.predictions` holds: "logits" (default), "probabilities", or "predictions" (hard
    class ids, e.g. from an argmax `preprocess_logits_for_metrics`; probability metrics are then
    skipped with one notice).

    Args:
        label_names: class names (tag names for token classification, required there), in id order.
        positive_label: binary classification only, as for `LabelScorer`.
        inputs: "logits", "probabilities" or "predictions" (see above).
        ece_bins: classification only.
        per_class: also return the per-class / per-label / per-entity-type metrics.
        task: "classification", "regression", "multi_label" or "token_classification".
        thresholds: multi-label decision threshold(s), default 0.5.
        seqeval_mode / seqeval_scheme: token classification, as for `LabelScorer`.

    Raises:
        ConfigurationError: bad settings, or a token task without label_names.

    Example:
        >>> Trainer(..., compute_metrics=label_metrics(tags, task="token_classification"),
        ...         preprocess_logits_for_metrics=lambda logits, labels: logits.argmax(-1))
    """
    if inputs not in ("logits", "probabilities", "predictions"):
        raise ConfigurationError(f"inputs={inputs!r} is not valid: use 'logits', 'probabilities' or 'predictions'.")
    checked = LabelScorer(
        label_names=label_names, positive_label=positive_label, task=task, thresholds=thresholds,
        seqeval_mode=seqeval_mode, seqeval_scheme=seqeval_scheme,
    )  # the same checks  # fmt: skip
    names = checked.label_names
    if checked.task != "classification":
        return _task_metrics(checked, inputs, per_class)
    accumulator = LabelAccumulator(num_classes=len(names) if names else None)

    def compute_metrics(eval_pred: Any, compute_result: bool = True) -> dict[str, float]:
        predictions, labels = _eval_arrays(eval_pred)
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


def _eval_arrays(eval_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    predictions = eval_pred.predictions
    if isinstance(predictions, (tuple, list)):
        predictions = predictions[0]
    predictions = np.asarray(predictions.float().cpu() if isinstance(predictions, torch.Tensor) else predictions)
    labels = eval_pred.label_ids
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    return predictions, labels


def _task_metrics(scorer: LabelScorer, inputs: str, per_class: bool) -> Callable[..., dict[str, float]]:
    """`label_metrics` for regression, multi-label and token classification."""
    task = scorer.task
    if task == "token_classification" and scorer.label_names is None:
        raise ConfigurationError(
            "label_metrics(task='token_classification') needs label_names: the tag names in id order, e.g. "
            "model.config.id2label values."
        )
    if task == "regression" and inputs == "predictions":
        inputs = "logits"  # a regression head's output is its prediction
    parts: list[Any] = []

    def add(predictions: np.ndarray, labels: np.ndarray) -> None:
        if task == "regression":
            parts.append(np.stack([_flat_float(labels), _flat_float(predictions)], axis=1))
        elif task == "multi_label":
            if inputs == "predictions":
                raise ConfigurationError(
                    "multi-label metrics need scores (logits or probabilities), not hard predictions."
                )
            scores = predictions.astype(np.float64)
            probabilities = 1.0 / (1.0 + np.exp(-scores)) if inputs == "logits" else scores
            parts.append(np.concatenate([labels.astype(np.float64), probabilities], axis=1))
        else:
            ids = predictions.argmax(-1) if predictions.ndim == labels.ndim + 1 else predictions
            for label_row, id_row in zip(labels, ids, strict=True):
                keep = label_row != IGNORE_INDEX
                parts.append(np.stack([label_row[keep], id_row[keep]], axis=1).astype(np.int32))

    def compute_metrics(eval_pred: Any, compute_result: bool = True) -> dict[str, float]:
        add(*_eval_arrays(eval_pred))
        if not compute_result:
            return {}
        if task == "token_classification":
            true_tags, pred_tags = token_tags([r[:, 1] for r in parts], [r[:, 0] for r in parts], scorer.label_names)
            report = token_metrics(true_tags, pred_tags, mode=scorer.seqeval_mode, scheme=scorer.seqeval_scheme)
        else:
            rows = np.concatenate(parts)
            if task == "regression":
                report = regression_metrics(rows[:, 0], rows[:, 1])
            else:
                width = rows.shape[1] // 2
                report = multilabel_metrics(
                    rows[:, :width], rows[:, width:], label_names=scorer.label_names, thresholds=scorer.thresholds
                )
        parts.clear()
        for note in report.notes:
            notice_once(f"labels:{note}", f"label_metrics: {note}")
        return report.flat() if per_class else dict(report.scalars)

    return compute_metrics


def _flat_float(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return values.reshape(len(values), -1)[:, 0] if values.ndim == 2 and values.shape[1] == 1 else values
