"""Structured-output metrics: `json_valid_rate`, `json_schema_valid_rate`, `regex_match_rate`.

Parsing is `json.loads` (strict RFC 8259: `NaN`/`Infinity`, which Python alone accepts, are invalid);
schemas are checked with `jsonschema` (the validator class the schema's `$schema` names, local `$ref`s
resolved by it); patterns with `re.fullmatch`. Written here, because no library does it the same way:
`extract_json`, which strips what a user's parser strips before parsing (a markdown code fence, with or
without a language tag, and prose around the value), following LangChain's `parse_json_markdown`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from .errors import ConfigurationError
from .task_metrics import RoundInput, TaskMetric, TaskResult, read_json_file

Extract = Literal["auto", "fence", "none"]
_EXTRACT = ("auto", "fence", "none")
# A fenced block: ``` or ~~~, an optional language tag on the opening line, the body, the closing fence.
_FENCE = re.compile(r"(?P<fence>```|~~~)[ \t]*(?P<lang>[\w+.-]*)[^\n]*\n(?P<body>.*?)(?:\n[ \t]*(?P=fence)|\Z)", re.S)
_JSON_TAGS = {"json", "json5", "jsonc", "javascript", "js"}


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constants)


def extract_json(text: str, extract: Extract = "auto") -> tuple[bool, Any, str]:
    """Parse the JSON value a generated text holds.

    Args:
        text: the generated text.
        extract: "auto": the body of the first fenced block (one tagged json preferred) if there is one,
            else the whole text, else the first object or array in it with prose before or after it;
            "fence": the fenced block if any, else the whole text; "none": the whole text only.

    Returns:
        (ok, value, error): the parsed value, or ok=False and why it did not parse.

    Example:
        >>> extract_json('Here you go:\\n```json\\n{"a": 1}\\n```')
        (True, {'a': 1}, '')
    """
    if extract not in _EXTRACT:
        raise ConfigurationError(f"extract={extract!r} is not valid: use one of {_EXTRACT}.")
    candidate = text
    if extract != "none":
        blocks = list(_FENCE.finditer(text))
        if blocks:
            tagged = [b for b in blocks if b.group("lang").lower() in _JSON_TAGS]
            candidate = (tagged or blocks)[0].group("body")
    candidate = candidate.strip()
    if not candidate:
        return False, None, "empty output"
    try:
        return True, _DECODER.decode(candidate), ""
    except ValueError as exc:
        first_error = str(exc)
    if extract == "auto":
        # Prose around the value: the first '{' or '[' from which a whole value decodes.
        for match in re.finditer(r"[\[{]", candidate):
            try:
                value, _ = _DECODER.raw_decode(candidate, match.start())
            except ValueError:
                continue
            return True, value, ""
    return False, None, first_error


class JsonValid(TaskMetric):
    """`json_valid_rate`: the share of outputs holding a valid JSON value.

    Args:
        extract: how the value is found ("auto", "fence", "none"; see `extract_json`).
        name: the keys' stem (default "json_valid" -> `json_valid_rate`).

    Raises:
        ConfigurationError: an unknown `extract`.

    Example:
        >>> JsonValid()(['{"a": 1}', "not json"])
        {'json_valid_rate': 0.5}
    """

    name = "json_valid"

    def __init__(self, extract: Extract = "auto", name: str | None = None) -> None:
        super().__init__(name)
        if extract not in _EXTRACT:
            raise ConfigurationError(f"extract={extract!r} is not valid: use one of {_EXTRACT}.")
        self.extract = extract

    def keys(self) -> tuple[str, ...]:
        return (f"{self.name}_rate",)

    def score(self, round: RoundInput) -> TaskResult:
        ok, errors = [], []
        for text in round.predictions:
            valid, _, error = extract_json(text, self.extract)
            ok.append(1.0 if valid else 0.0)
            errors.append(error)
        key = self.keys()[0]
        return TaskResult({key: _mean(ok)}, {key.removesuffix("_rate"): ok}, {f"{self.name}_error": errors})


class JsonSchema(TaskMetric):
    """`json_schema_valid_rate`: the share of outputs whose JSON value satisfies a JSON Schema (and
    `json_valid_rate`: the share that parse at all). Each failing sample's detail names the rule that
    failed (`required at $: 'age' is a required property`), for the samples table.

    Args:
        schema: the JSON Schema (a mapping or bool), or None with `schema_file`.
        schema_file: a JSON file holding the schema.
        extract: how the value is found in the text ("auto", "fence", "none"; see `extract_json`).
        name: the keys' stem (default "json_schema" -> `json_schema_valid_rate`).

    Raises:
        ConfigurationError: no schema or both, an unreadable file, a schema its own metaschema rejects,
            or a missing `jsonschema` package.

    Example:
        >>> JsonSchema({"type": "object", "required": ["a"]})(['{"a": 1}', '{"b": 2}'])["json_schema_valid_rate"]
        0.5
    """

    name = "json_schema"

    def __init__(
        self,
        schema: Mapping[str, Any] | bool | None = None,
        schema_file: str | None = None,
        extract: Extract = "auto",
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if (schema is None) == (schema_file is None):
            raise ConfigurationError("JsonSchema needs exactly one of schema= (a mapping) or schema_file= (a path).")
        if schema_file is not None:
            schema = read_json_file(schema_file, "schema_file")
        if not isinstance(schema, (Mapping, bool)):
            raise ConfigurationError(f"schema is {type(schema).__name__}: a JSON Schema is a mapping (or true/false).")
        if extract not in _EXTRACT:
            raise ConfigurationError(f"extract={extract!r} is not valid: use one of {_EXTRACT}.")
        try:
            import jsonschema
        except ImportError:
            raise ConfigurationError(
                "JsonSchema needs the 'jsonschema' package, which is not installed: pip install jsonschema."
            ) from None
        self.schema = dict(schema) if isinstance(schema, Mapping) else schema
        cls = jsonschema.validators.validator_for(self.schema)
        try:
            cls.check_schema(self.schema)
        except jsonschema.exceptions.SchemaError as exc:
            where = "/".join(str(p) for p in exc.path) or "the top level"
            raise ConfigurationError(f"the JSON Schema is not valid at {where}: {exc.message}.") from None
        self._validator = cls(self.schema, format_checker=cls.FORMAT_CHECKER)
        self.extract = extract
        self._check_refs()

    def _check_refs(self) -> None:
        """A `$ref` that resolves nowhere fails now, not at the first evaluation. Checked against the root
        schema only: with a nested `$id` (a new base URI) refs are left to validation time."""
        refs: list[str] = []
        nested_id = False

        def walk(node: Any, root: bool) -> None:
            nonlocal nested_id
            if isinstance(node, Mapping):
                if not root and isinstance(node.get("$id"), str):
                    nested_id = True
                if isinstance(node.get("$ref"), str):
                    refs.append(node["$ref"])
                for value in node.values():
                    walk(value, False)
            elif isinstance(node, list):
                for value in node:
                    walk(value, False)

        walk(self.schema, True)
        resolver = getattr(self._validator, "_resolver", None)
        if nested_id or resolver is None:
            return
        for ref in refs:
            try:
                resolver.lookup(ref)
            except Exception as exc:
                raise ConfigurationError(
                    f"the JSON Schema's $ref {ref!r} cannot be resolved ({type(exc).__name__}: {exc}). Local refs "
                    "look like '#/$defs/name'; remote schemas are not fetched: inline them under $defs."
                ) from None

    def keys(self) -> tuple[str, ...]:
        return (
            f"{self.name}_valid_rate",
            "json_valid_rate" if self.name == "json_schema" else f"{self.name}_json_rate",
        )

    def check(self, value: Any) -> str:
        """'' when `value` satisfies the schema, else the rule that failed, where and why."""
        import jsonschema

        try:
            error = jsonschema.exceptions.best_match(self._validator.iter_errors(value))
        except jsonschema.exceptions._WrappedReferencingError as exc:  # an unresolvable $ref
            raise ConfigurationError(f"the JSON Schema has a $ref that cannot be resolved: {exc}.") from None
        if error is None:
            return ""
        return f"{error.validator} at {error.json_path}: {error.message}"

    def score(self, round: RoundInput) -> TaskResult:
        parsed, valid, details = [], [], []
        for text in round.predictions:
            ok, value, error = extract_json(text, self.extract)
            parsed.append(1.0 if ok else 0.0)
            failure = self.check(value) if ok else f"invalid JSON: {error}"
            valid.append(0.0 if failure else 1.0)
            details.append(failure)
        valid_key, json_key = self.keys()
        return TaskResult(
            {valid_key: _mean(valid), json_key: _mean(parsed)},
            {f"{self.name}_valid": valid},
            {f"{self.name}_error": details},
        )


class Regex(TaskMetric):
    """`regex_match_rate`: the share of outputs that fully match the pattern (or, with several, any of
    them; `require="all"`: all of them).

    Args:
        patterns: a regular expression or a list of them (Python `re` syntax), matched with `re.fullmatch`.
        require: "any" (default) or "all" of the patterns.
        strip: strip surrounding whitespace from an output before matching (default True: a trailing
            newline is no format error).
        ignore_case / multiline / dotall: the `re` flags.
        name: the keys' stem (default "regex" -> `regex_match_rate`).

    Raises:
        ConfigurationError: no pattern, a pattern that does not compile (with the position), a bad option.

    Example:
        >>> Regex(r"\\d+")(["42", "42 apples"])
        {'regex_match_rate': 0.5}
    """

    name = "regex"

    def __init__(
        self,
        patterns: str | Sequence[str] = (),
        require: Literal["any", "all"] = "any",
        strip: bool = True,
        ignore_case: bool = False,
        multiline: bool = False,
        dotall: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        if isinstance(patterns, str):
            patterns = [patterns]
        patterns = list(patterns) if isinstance(patterns, Sequence) else patterns
        if not isinstance(patterns, list) or not patterns or not all(isinstance(p, str) for p in patterns):
            raise ConfigurationError(
                f"patterns={patterns!r} is not valid: give a regular expression or a list of them, e.g. r'^\\d+$'."
            )
        if require not in ("any", "all"):
            raise ConfigurationError(f"require={require!r} is not valid: use 'any' or 'all'.")
        for option, value in (("strip", strip), ("ignore_case", ignore_case), ("multiline", multiline),
                              ("dotall", dotall)):  # fmt: skip
            if not isinstance(value, bool):
                raise ConfigurationError(f"{option}={value!r} is not valid: use True or False.")
        flags = (
            (re.IGNORECASE if ignore_case else 0) | (re.MULTILINE if multiline else 0) | (re.DOTALL if dotall else 0)
        )
        self.compiled = []
        for pattern in patterns:
            try:
                self.compiled.append(re.compile(pattern, flags))
            except re.error as exc:
                raise ConfigurationError(f"regex {pattern!r} does not compile: {exc}.") from None
        self.patterns, self.require, self.strip = patterns, require, strip

    def keys(self) -> tuple[str, ...]:
        return (f"{self.name}_match_rate",)

    def matches(self, text: str) -> bool:
        text = text.strip() if self.strip else text
        test = all if self.require == "all" else any
        return test(p.fullmatch(text) is not None for p in self.compiled)

    def score(self, round: RoundInput) -> TaskResult:
        hits = [1.0 if self.matches(t) else 0.0 for t in round.predictions]
        return TaskResult({self.keys()[0]: _mean(hits)}, {f"{self.name}_match": hits})

    def __repr__(self) -> str:
        return f"Regex(name={self.name!r})"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


__all__ = ["JsonSchema", "JsonValid", "Regex", "extract_json"]
