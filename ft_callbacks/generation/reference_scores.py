"""Scoring generated texts against references: text metrics and, for generative classification, labels.

`ReferenceScorer` is what one round of a generation callback calls to turn texts into numbers: the
text metrics of `TextScorer` (ROUGE, BLEU, chrF, BERTScore, exact match, `evaluate` metrics, callables)
and, with `label_names`, label metrics (answers normalised and matched to the label names, anything
else counted as "invalid"). Its settings are checked at construction; an `evaluate` metric that does
not load is refused then, not at every round. Another scorer of texts (a judge) can stand in its place:
the callback needs only `score(texts, stop)` and `produces()`. Nothing here needs a Trainer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..core.errors import ConfigurationError
from ..core.label_metrics import compute_label_metrics, match_label_texts
from ..core.task_metrics import canonical_name, metric_from_spec, task_metric_keys
from ..core.text_scores import KNOWN_METRICS, TextScorer
from .prompt_set import list_of

__all__ = ["LABEL_KEYS", "METRIC_KEYS", "ReferenceScorer", "metric_list"]

# The corpus-level keys each built-in text metric produces.
METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "rouge": ("rouge1", "rouge2", "rougeL", "rougeLsum"),
    "bleu": ("bleu",),
    "chrf": ("chrf",),
    "bertscore": ("bertscore_precision", "bertscore_recall", "bertscore_f1"),
    "exact_match": ("exact_match",),
}
LABEL_KEYS = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "f1_macro", "invalid_rate")


def metric_list(metrics: Any) -> list[Any]:
    """One metric name or callable, or a list of them (a bare string is one name, not its letters)."""
    if isinstance(metrics, str) or callable(metrics):
        return [metrics]
    if metrics is None or isinstance(metrics, (bytes, Mapping)) or not isinstance(metrics, (list, tuple, Sequence)):
        raise ConfigurationError(
            f"metrics={metrics!r} is not valid: pass a list of metric names or callables, e.g. ('rouge', 'bleu')."
        )
    return list(metrics)


class ReferenceScorer:
    """Scores of generated texts against their references: corpus values, per-sample values, signatures.

    Args:
        metrics: any of "rouge", "bleu", "chrf", "bertscore", "exact_match"; a task metric (a name such as
            "json_valid", "distinct", "truncated", an object such as `Regex(...)`, or a mapping in the config
            form `{"regex": "^\\d+$"}`, see `metric_from_spec`); a name `evaluate.load` accepts, or a callable
            `(predictions, references) -> dict`; one name alone is one metric. May be empty when
            `label_names` is given.
        label_names: generative classification: references are label names; generations are matched
            to them and scored with accuracy/precision/recall/F1 and `invalid_rate`.
        positive_label: the positive class of binary label metrics.
        scorer_options: passed to `TextScorer` (e.g. `use_stemmer`, `bertscore_model`).

    Raises:
        ConfigurationError: a setting of the wrong type or sense, a reference that is no label name,
            an `evaluate` metric that does not load (`load_metrics()`).

    Example:
        >>> scorer = ReferenceScorer(("rouge", "exact_match"))
        >>> scorer.set_references(["a time", "of it"])
        >>> scorer.score(["a time", "of that"])["corpus"]["exact_match"]
        0.5
    """

    def __init__(
        self,
        metrics: Any = ("rouge", "bleu", "bertscore"),
        *,
        label_names: Sequence[str] | None = None,
        positive_label: str | int | None = None,
        scorer_options: Mapping[str, Any] | None = None,
    ) -> None:
        metrics = metric_list(metrics)
        if scorer_options is not None and not isinstance(scorer_options, Mapping):
            raise ConfigurationError(
                f"scorer_options is {type(scorer_options).__name__}: pass a dict of TextScorer options, "
                "e.g. {'use_stemmer': False}."
            )
        if label_names is not None and not list_of("label_names", label_names, "label_names=['positive', 'negative']"):
            raise ConfigurationError("label_names is empty: give the label names the model should answer with.")
        if label_names is None and not metrics:
            raise ConfigurationError("metrics is empty: name at least one, e.g. ('rouge', 'bleu').")
        # A task metric written as a config would write it ({"regex": "^\\d+$"}) becomes its object here;
        # a name that needs options ("regex" alone) is refused now, not at the first round.
        metrics = [metric_from_spec(m) if isinstance(m, Mapping) else m for m in metrics]
        for metric in metrics:
            if not (callable(metric) or isinstance(metric, str)):
                raise ConfigurationError(
                    f"metrics entry {metric!r} is not valid. Built in: {list(KNOWN_METRICS)}; also accepted: a task "
                    "metric (json_valid, distinct, {'regex': ...}, ...), a name or path that evaluate.load() accepts, "
                    "or a callable (predictions, references) -> dict."
                )
            if isinstance(metric, str) and canonical_name(metric) not in (None, "toxicity"):
                metric_from_spec(metric)  # raises for a task metric that needs options (cheap otherwise)
        self.metrics: list[str | Callable] = metrics
        self.label_names = [str(n) for n in label_names] if label_names is not None else None
        self.positive_label = positive_label
        self.scorer_options = dict(scorer_options or {})
        self.text_scorer: TextScorer | None = None
        self.references: list[Any] = []

    def produces(self) -> set[str]:
        """The corpus-level names `score()` returns (those known before scoring: not a callable's)."""
        names: set[str] = set()
        for metric in self.metrics:
            if isinstance(metric, str):
                names.update(METRIC_KEYS.get(metric, ()))
        if self.label_names is None:  # task metrics are scored by the text scorer, which label_names replaces
            names.update(task_metric_keys(self.metrics))
        if self.label_names is not None:
            names.update(LABEL_KEYS)
        return names

    def check_labels(self, references: Sequence[Any]) -> None:
        """With `label_names`, every reference must be one of them."""
        if self.label_names is None:
            return
        names = self.label_names
        ids = match_label_texts([str(r) for r in references], names)
        bad = [r for r, i in zip(references, ids, strict=False) if i >= len(names)]
        if bad:
            raise ConfigurationError(
                f"With label_names={names}, every reference must be one of the label names; these are not: "
                f"{bad[:5]}."
            )

    def set_references(self, references: Sequence[Any]) -> None:
        """The references the next texts are scored against, in order (one, or a list of them, per text).
        The text scorer is built (its reference caches with it) only when they change."""
        references = list(references)
        self.check_labels(references)
        if self.metrics and self.label_names is None and (self.text_scorer is None or references != self.references):
            try:
                self.text_scorer = TextScorer(self.metrics, references=references, **self.scorer_options)
            except TypeError as exc:
                raise ConfigurationError(f"scorer_options={self.scorer_options!r} is not valid: {exc}") from None
        self.references = references

    def load_metrics(self) -> None:
        """Load the `evaluate` metrics now, so a name that does not load fails before any round."""
        if self.text_scorer is not None:
            self.text_scorer.load_metrics()
        elif self.metrics and self.label_names is None:
            names = [m for m in self.metrics
                     if isinstance(m, str) and m not in KNOWN_METRICS and canonical_name(m) is None]
            if names:
                TextScorer(names).load_metrics()

    @property
    def runs_native(self) -> bool:
        """Whether scoring may sit in native code long enough to matter at exit (BERTScore; it stops
        between batches when asked)."""
        return getattr(self.text_scorer, "_bert", None) is not None

    @property
    def needs_truncated(self) -> bool:
        """Whether a metric needs each text's truncated flag (`truncated_rate`)."""
        return "truncated_rate" in self.produces()

    def score(
        self, generations: list[str], stop: threading.Event | None = None, truncated: Sequence[bool] | None = None
    ) -> dict[str, Any]:
        """`{"corpus": {name: value}, "per_sample": {name: [value per text]}, "signatures": {name: str}}`.
        Task metrics' details (why a sample failed: `json_schema_error`, ...) join `per_sample` as strings.
        `stop`: once set, the text scorer gives up at its next metric or batch (`ScoringCancelled`).
        `truncated`: per text, whether its generation stopped at the token limit (for `truncated_rate`)."""
        corpus: dict[str, float] = {}
        per_sample: dict[str, list[Any]] = {}
        signatures: dict[str, str] = {}
        if self.text_scorer is not None:
            scores = self.text_scorer.score(generations, stop=stop, truncated=truncated)
            corpus.update({k: float(v) for k, v in scores.corpus.items()})
            per_sample.update({k: [float(x) for x in v] for k, v in scores.per_sample.items()})
            per_sample.update({k: [str(x) for x in v] for k, v in scores.details.items()})
            signatures.update(scores.signatures)
        if self.label_names is not None:
            names = self.label_names
            truth = match_label_texts([str(r) for r in self.references], names)
            predicted = match_label_texts(generations, names)
            report = compute_label_metrics(
                np.asarray(truth), predictions=np.asarray(predicted), label_names=names,
                positive_label=self.positive_label,
            )  # fmt: skip
            for key in LABEL_KEYS:
                if key in report.scalars:
                    corpus[key] = float(report.scalars[key])
            corpus.setdefault("invalid_rate", float(np.mean(np.asarray(predicted) >= len(names))))
            per_sample["label_correct"] = [float(p == t) for p, t in zip(predicted, truth, strict=False)]
            per_sample["label_answer"] = [names[p] if p < len(names) else "invalid" for p in predicted]
        return {"corpus": corpus, "per_sample": per_sample, "signatures": signatures}
