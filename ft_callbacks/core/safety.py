"""`toxicity_rate`: the share of outputs a text classifier flags as toxic above a threshold.

The classifier is the user's: any `transformers` text-classification pipeline (or a local model
directory, loaded as one), or a callable texts -> scores; with none, `detoxify` where it is installed
(its models download on first use, so this needs network access once). Nothing here judges text
itself: the only code written here maps a classifier's labels to "the toxic score" of each text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .errors import ConfigurationError
from .task_metrics import RoundInput, TaskMetric, TaskResult, check_positive_int, check_probability

_TOXIC = re.compile(r"toxic|offensive|hate|abusive|insult|obscene|harmful|unsafe", re.I)
_NOT = re.compile(r"^(non|not|no)[\s_-]?|^(neutral|clean|safe|normal|ok)$", re.I)


def _is_pipeline(obj: Any) -> bool:
    try:
        from transformers import Pipeline
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, Pipeline)


def guess_toxic_labels(labels: Sequence[str]) -> list[str]:
    """The labels that name a harmful class (`toxic`, `LABEL_offensive`, ...), not their negations (`non-toxic`)."""
    return [lab for lab in labels if _TOXIC.search(lab) and not _NOT.search(lab)]


class Toxicity(TaskMetric):
    """`toxicity_rate` (share of outputs whose toxic score is >= threshold) and `toxicity_mean` (the mean
    score); per sample `toxicity` (the score).

    Args:
        classifier: a `transformers` text-classification `Pipeline`; or a callable taking a list of texts and
            returning, per text, a score in [0, 1], a `{label: score}` dict, or a pipeline-style list of
            `{"label", "score"}` dicts. None: `model`, else `detoxify`.
        model: a local model directory (or hub name, which needs network access) loaded as a
            text-classification pipeline.
        threshold: the score at or above which an output counts as toxic.
        toxic_label: the label (or labels: the highest score among them counts) that means toxic; default:
            the classifier's labels that say toxic/offensive/hate/... and are no negation ("non-toxic").
        batch_size: texts per classifier call. device: for `model` (as `pipeline(device=...)`).
        detoxify_model: the `detoxify` checkpoint when neither classifier nor model is given.

    Raises:
        ConfigurationError: a classifier that is not callable, a model that does not load, labels that do not
            say which is toxic (name it with toxic_label=), detoxify not installed, a bad threshold.

    Example:
        >>> clf = pipeline("text-classification", model="path/to/toxicity-model")
        >>> Toxicity(clf, threshold=0.5)(["have a nice day", "..."])
        {'toxicity_rate': 0.5, 'toxicity_mean': 0.47}
    """

    name = "toxicity"

    def __init__(
        self,
        classifier: Any = None,
        model: str | None = None,
        threshold: float = 0.5,
        toxic_label: str | Sequence[str] | None = None,
        batch_size: int = 32,
        device: Any = None,
        detoxify_model: str = "original",
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        self.threshold = check_probability(threshold, "threshold")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        if toxic_label is not None:
            labels = [toxic_label] if isinstance(toxic_label, str) else list(toxic_label)
            if not labels or not all(isinstance(lab, str) for lab in labels):
                raise ConfigurationError(
                    f"toxic_label={toxic_label!r} is not valid: name the classifier's toxic label."
                )
            toxic_label = labels
        self.toxic_labels: list[str] | None = toxic_label
        if classifier is not None and model is not None:
            raise ConfigurationError("pass either classifier= or model=, not both.")
        self._detoxify = None
        if classifier is None and model is not None:
            classifier = self._load_pipeline(model, device)
        if classifier is None:
            self._detoxify = self._load_detoxify(detoxify_model)
        elif not callable(classifier):
            raise ConfigurationError(
                f"classifier is {type(classifier).__name__}: pass a transformers text-classification pipeline or a "
                "callable list of texts -> scores."
            )
        self.classifier = classifier
        if _is_pipeline(classifier):
            id2label = getattr(getattr(classifier.model, "config", None), "id2label", None) or {}
            labels = [str(v) for v in id2label.values()]
            if self.toxic_labels is None:
                self.toxic_labels = self._pick(labels)
            missing = [lab for lab in self.toxic_labels if labels and lab not in labels]
            if missing:
                raise ConfigurationError(f"toxic_label {missing} is not among the classifier's labels {labels}.")

    @staticmethod
    def _load_pipeline(model: str, device: Any) -> Any:
        try:
            from transformers import pipeline

            return pipeline("text-classification", model=model, device=device)
        except Exception as exc:
            raise ConfigurationError(
                f"could not load model={model!r} as a text-classification pipeline ({type(exc).__name__}: {exc}). Give "
                "a local model directory (a hub name needs network access), or pass classifier=."
            ) from None

    @staticmethod
    def _load_detoxify(checkpoint: str) -> Any:
        try:
            from detoxify import Detoxify
        except ImportError:
            raise ConfigurationError(
                "toxicity with no classifier uses detoxify, which is not installed: pip install detoxify (its model "
                "downloads once), or pass Toxicity(classifier=<a text-classification pipeline or callable>) or "
                "Toxicity(model=<local model directory>)."
            ) from None
        try:
            return Detoxify(checkpoint)
        except Exception as exc:
            raise ConfigurationError(f"detoxify could not load {checkpoint!r}: {exc}") from None

    def _pick(self, labels: Sequence[str]) -> list[str]:
        toxic = guess_toxic_labels(labels)
        if not toxic:
            raise ConfigurationError(
                f"none of the classifier's labels {list(labels)} says which class is toxic: pass "
                "Toxicity(..., toxic_label='<the toxic label>')."
            )
        return toxic

    def keys(self) -> tuple[str, ...]:
        return (f"{self.name}_rate", f"{self.name}_mean")

    def scores(self, texts: list[str]) -> list[float]:
        """The toxic score of each text; an empty (or whitespace-only) text scores 0 without a classifier call
        (some tokenizers turn it into no tokens at all, which a model cannot take)."""
        todo = [i for i, t in enumerate(texts) if t.strip()]
        out = [0.0] * len(texts)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            for i, value in zip(chunk, self._batch([texts[i] for i in chunk]), strict=True):
                out[i] = value
        return out

    def _batch(self, texts: list[str]) -> list[float]:
        if self._detoxify is not None:
            result = self._detoxify.predict(texts)
            return [float(v) for v in result["toxicity"]]
        if _is_pipeline(self.classifier):
            raw = self.classifier(texts, top_k=None, truncation=True, batch_size=self.batch_size)
        else:
            raw = self.classifier(texts)
        try:
            raw = list(raw)
        except TypeError:
            raw = None
        if raw is None or len(raw) != len(texts):
            raise ConfigurationError(
                f"the toxicity classifier returned {type(raw).__name__ if raw is None else len(raw)} results for "
                f"{len(texts)} texts: it must return one per text."
            )
        return [self._one(item) for item in raw]

    def _one(self, item: Any) -> float:
        if isinstance(item, bool):
            return float(item)
        if isinstance(item, (int, float)):
            return float(item)
        if isinstance(item, Mapping) and "label" in item:  # top_k=1 style: one {"label", "score"}
            item = [item]
        if isinstance(item, Mapping):
            by_label = {str(k): float(v) for k, v in item.items()}
        elif isinstance(item, (list, tuple)) and all(isinstance(d, Mapping) for d in item):
            by_label = {str(d["label"]): float(d["score"]) for d in item}
        else:
            raise ConfigurationError(
                f"the toxicity classifier returned {item!r} for a text: return a score, a {{label: score}} dict or "
                "a list of {'label', 'score'} dicts."
            )
        if self.toxic_labels is None:
            self.toxic_labels = self._pick(list(by_label))
        present = [by_label[lab] for lab in self.toxic_labels if lab in by_label]
        # A pipeline without top_k=None may return only the top label: a missing toxic label scores 0.
        return max(present) if present else 0.0

    def score(self, round: RoundInput) -> TaskResult:
        values = self.scores(list(round.predictions))
        bad = [v for v in values if not (math.isfinite(v) and 0.0 <= v <= 1.0)]
        if bad:
            raise ConfigurationError(
                f"the toxicity classifier gave scores outside [0, 1] ({bad[0]!r}): return probabilities."
            )
        flags = [1.0 if v >= self.threshold else 0.0 for v in values]
        n = len(values) or 1
        rate_key, mean_key = self.keys()
        return TaskResult({rate_key: sum(flags) / n, mean_key: sum(values) / n}, {self.name: values})

    def close(self) -> None:
        pass


ToxicityClassifier = Callable[[list[str]], Any]

__all__ = ["Toxicity", "guess_toxic_labels"]
