"""Task metrics for generated text: the common base, the names users type, and `metric_from_spec`.

Overlap scores (ROUGE, BLEU, BERTScore) say little about the failures fine-tuned models show: invalid
JSON, a broken format, code that does not run, loops, empty or truncated answers, harmful content. The
metrics for those live in their own modules (`structured`, `code_exec`, `diversity`, `safety`); each is
a `TaskMetric` object that carries its options, checks them at construction (a bad JSON Schema or regex
fails there) and scores a whole round at once. `TextScorer` / `score_texts` take them in `metrics=`
beside the overlap names, and so do `GenerationScorer` and configs (`metric_from_spec` reads the YAML
form: `json_valid`, `{regex: "^\\d+$"}`, `{json_schema: {schema_file: s.json}}`, ...).

A `TaskMetric` is also a plain callable `(predictions, references) -> dict[str, float]`, so anything
that accepts a metric callable accepts it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigurationError


@dataclass
class RoundInput:
    """What a task metric may read about one scoring round.

    predictions: the generated texts.
    references: one list of references per prediction (None when the round has no references).
    positions: each prediction's index among the scorer's references (`indices=`), else 0..n-1.
    truncated: per prediction, whether generation stopped at `max_new_tokens` (None: not known).
    """

    predictions: list[str]
    references: list[list[str]] | None = None
    positions: list[int] | None = None
    truncated: list[bool] | None = None


@dataclass
class TaskResult:
    """corpus: round-level values by key; per_sample: one float per prediction by key; details: one
    string per prediction by key (why a sample failed: the JSON error, the schema rule), for sample tables."""

    corpus: dict[str, float] = field(default_factory=dict)
    per_sample: dict[str, list[float]] = field(default_factory=dict)
    details: dict[str, list[str]] = field(default_factory=dict)


class TaskMetric:
    """Base of the task metric objects: options checked at construction, one `score()` per round.

    Subclasses set `name` (the default key stem), `needs_references`, and implement `keys()` and
    `score(round)`. `name=` on a subclass renames its keys' stem so that two metrics of one kind
    (two regexes) can sit in one list.
    """

    name: str = "task_metric"
    needs_references: bool = False

    def __init__(self, name: str | None = None) -> None:
        if name is not None:
            if not isinstance(name, str) or not name.isidentifier():
                raise ConfigurationError(
                    f"name={name!r} is not valid: use a short identifier such as 'regex_digits' (it becomes part "
                    "of the metric keys)."
                )
            self.name = name

    def keys(self) -> tuple[str, ...]:
        """The corpus keys `score()` returns (without the evaluation's prefix)."""
        raise NotImplementedError

    def score(self, round: RoundInput) -> TaskResult:
        raise NotImplementedError

    def close(self) -> None:
        """Free what the metric holds (a classifier); a later score() may load it again."""

    @property
    def __name__(self) -> str:  # TextScorer names callables by __name__
        return self.name

    def __call__(self, predictions: Sequence[str], references: Any = None) -> dict[str, float]:
        """The corpus values for `predictions` (and `references`: list[str] or list[list[str]])."""
        preds = list(predictions)
        refs = None
        if references is not None:
            refs = [[r] if isinstance(r, str) else list(r) for r in references]
        return self.score(RoundInput(preds, refs, list(range(len(preds))))).corpus

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def check_probability(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ConfigurationError(f"{what}={value!r} is not valid: use a number between 0 and 1.")
    return float(value)


def check_positive_int(value: Any, what: str, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{what}={value!r} is not valid: use a positive whole number.")
    return value


def read_json_file(path: Any, what: str) -> Any:
    """A JSON file's value (a `.jsonl` file: the list of its lines' values)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(
            f"{what}={str(path)!r} cannot be read ({exc}): give the path of a JSON file."
        ) from None
    try:
        if p.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"{what}={str(path)!r} is not valid JSON: {exc}.") from None


# -- the names users type -------------------------------------------------------------------------


def _factories() -> dict[str, Callable[..., TaskMetric]]:
    from . import code_exec, diversity, safety, structured

    return {
        "json_valid": structured.JsonValid,
        "json_schema": structured.JsonSchema,
        "regex": structured.Regex,
        "pass_at_k": code_exec.PassAtK,
        "distinct": diversity.Distinct,
        "self_bleu": diversity.SelfBleu,
        "repetition": diversity.Repetition,
        "mean_length": diversity.Length,
        "empty": diversity.Empty,
        "truncated": diversity.Truncated,
        "toxicity": safety.Toxicity,
    }


# Other spellings of the names above (the keys they produce, common variants).
ALIASES: dict[str, str] = {
    "json_valid_rate": "json_valid",
    "json": "json_valid",
    "json_schema_valid_rate": "json_schema",
    "regex_match_rate": "regex",
    "pass@k": "pass_at_k",
    "distinct_1": "distinct",
    "distinct_2": "distinct",
    "distinct_n": "distinct",
    "repetition_4": "repetition",
    "length": "mean_length",
    "empty_rate": "empty",
    "truncated_rate": "truncated",
    "toxicity_rate": "toxicity",
}

# Names usable alone (no options needed); the others need options (a schema, patterns, tests).
PLAIN_TASK_METRICS: tuple[str, ...] = (
    "json_valid", "distinct", "self_bleu", "repetition", "mean_length", "empty", "truncated",
)  # fmt: skip
TASK_METRICS: tuple[str, ...] = (*PLAIN_TASK_METRICS, "json_schema", "regex", "pass_at_k", "toxicity")

# The corpus keys each name produces with default options (pass@k keys depend on k).
TASK_METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "json_valid": ("json_valid_rate",),
    "json_schema": ("json_schema_valid_rate", "json_valid_rate"),
    "regex": ("regex_match_rate",),
    "pass_at_k": ("pass@1",),
    "distinct": ("distinct_1", "distinct_2"),
    "self_bleu": ("self_bleu",),
    "repetition": ("repetition_4",),
    "mean_length": ("mean_length",),
    "empty": ("empty_rate",),
    "truncated": ("truncated_rate",),
    "toxicity": ("toxicity_rate", "toxicity_mean"),
}


def canonical_name(name: str) -> str | None:
    """The task metric a name means (`json_valid_rate` -> `json_valid`), or None when it is no task metric."""
    if name in TASK_METRICS:
        return name
    return ALIASES.get(name)


def task_metric_keys(metrics: Any) -> set[str]:
    """The corpus keys the task metrics among `metrics` will report (names, objects; other entries add none),
    known before any scoring: what a callback declares in `produces()` so that a monitor or threshold on them
    passes the before-step-1 check.

    Example:
        >>> sorted(task_metric_keys(["rouge", "json_valid", "distinct"]))
        ['distinct_1', 'distinct_2', 'json_valid_rate']
    """
    if isinstance(metrics, (str, Mapping, TaskMetric)) or callable(metrics):
        metrics = [metrics]
    keys: set[str] = set()
    for metric in metrics or ():
        if isinstance(metric, TaskMetric):
            keys.update(metric.keys())
        elif isinstance(metric, str) and canonical_name(metric) is not None:
            keys.update(TASK_METRIC_KEYS[canonical_name(metric)])  # type: ignore[index]
    return keys


def metric_from_spec(spec: Any) -> TaskMetric | str | Callable:
    """A metric as a config file writes it, turned into what `TextScorer(metrics=...)` takes.

    Args:
        spec: a name (`"json_valid"`, `"self_bleu"`, or an overlap name such as `"rouge"`, returned as
            is); a one-key mapping `{name: options}` where options is a mapping of keyword arguments, or
            for `regex` a pattern or list of patterns; a `TaskMetric` or callable (returned as is).

    Returns:
        A `TaskMetric` for task metric names, else `spec` unchanged (overlap and `evaluate` names).

    Raises:
        ConfigurationError: an unknown task metric in a mapping, options of the wrong form, or options
            the metric rejects (a bad schema, a bad regex, code execution not allowed).

    Example:
        >>> metric_from_spec({"regex": r"^\\d+$"})
        Regex(name='regex')
        >>> metric_from_spec({"json_schema": {"schema": {"type": "object"}}}).keys()
        ('json_schema_valid_rate', 'json_valid_rate')
    """
    if isinstance(spec, TaskMetric) or callable(spec):
        return spec
    factories = _factories()
    if isinstance(spec, str):
        name = canonical_name(spec)
        if name is None:
            return spec
        if name not in PLAIN_TASK_METRICS and name != "toxicity":
            raise ConfigurationError(f"metric {spec!r} needs options: write it as a mapping, e.g. {_example(name)}.")
        return factories[name]()
    if isinstance(spec, Mapping):
        if len(spec) != 1:
            raise ConfigurationError(
                f"metric spec {dict(spec)!r} must have exactly one key, the metric's name, e.g. {_example('regex')}."
            )
        ((raw, options),) = spec.items()
        name = canonical_name(str(raw))
        if name is None:
            raise ConfigurationError(
                f"metric {raw!r} with options is not a task metric; known: {list(TASK_METRICS)} (overlap metrics "
                "such as rouge are listed by name, their options go to scorer_options)."
            )
        factory = factories[name]
        if options is None:
            options = {}
        if name == "regex" and (isinstance(options, str) or isinstance(options, list)):
            options = {"patterns": options}
        if not isinstance(options, Mapping):
            raise ConfigurationError(
                f"options of metric {raw!r} must be a mapping of settings, got {type(options).__name__}: "
                f"e.g. {_example(name)}."
            )
        try:
            return factory(**dict(options))
        except TypeError as exc:
            raise ConfigurationError(f"options of metric {raw!r} are not valid: {exc}.") from None
    raise ConfigurationError(
        f"metric spec {spec!r} is not valid: use a name (e.g. 'json_valid') or a one-key mapping "
        f"(e.g. {_example('regex')})."
    )


def _example(name: str) -> str:
    return {
        "json_schema": "{json_schema: {schema_file: schema.json}}",
        "regex": "{regex: '^\\d+$'}",
        "pass_at_k": "{pass_at_k: {tests_file: tests.json, k: [1, 5]}}",
        "toxicity": "{toxicity: {model: path/to/classifier, threshold: 0.5}}",
    }.get(name, f"{{{name}: {{}}}}")


__all__ = [
    "ALIASES",
    "PLAIN_TASK_METRICS",
    "TASK_METRICS",
    "TASK_METRIC_KEYS",
    "RoundInput",
    "TaskMetric",
    "TaskResult",
    "canonical_name",
    "metric_from_spec",
    "task_metric_keys",
]
