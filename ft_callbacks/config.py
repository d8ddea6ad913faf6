"""Callbacks from a YAML/JSON config, validated strictly before anything trains.

    callbacks = callbacks_from_config("configs/default.yaml", prompts=prompts, references=references)
    trainer = Trainer(..., callbacks=callbacks)

A config has one section per callback (`overfit_guard`, `best_checkpoint`, `generation_scorer`,
`label_scorer`, `forgetting_guard`; a section set to `false`/`null` is off), `thresholds` (a list of
`MetricThreshold` settings) and an optional `training` section of
`TrainingArguments` fields, which `training_arguments_from_config` applies. The keys of a section
are exactly the callback's constructor arguments, so the code is the single source of truth for
what a config may say, the way `HfArgumentParser` reads dataclass fields. An unknown or misspelt
key, a wrong type or an out-of-range value raises `ConfigurationError` naming the file, line, key,
and the allowed keys or values. So does a duplicate key or section, a key inside `generation`
(`transformers.GenerationConfig`) or `scorer_options` (`TextScorer`) that those do not take, a
`training` value of the wrong type or range, a section or key with nothing after its colon (write
`{}` for defaults, `false`/`null` for off), and a file that is not UTF-8 (UTF-16/UTF-32 with a BOM
are read). A relative `prompts_file` is relative to the config file's folder.
Overrides use dotted keys: `overrides=["overfit_guard.patience=5"]`.
"""

from __future__ import annotations

import codecs
import difflib
import enum
import functools
import inspect
import json
import math
import os
import re
import tempfile
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from transformers import TrainerCallback

from .core.errors import ConfigurationError

# Shipped inside the package (so bundled names work after a plain pip install); `configs/` at the
# repository root links here.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"

# Section name -> (module, class). Order = the order callbacks are returned in: metric producers
# first, then the callbacks that decide on those metrics, so even a callback that is not ours and
# is appended afterwards sees every metric.
SECTIONS: dict[str, tuple[str, str]] = {
    "overfit_guard": ("ft_callbacks.overfit_guard", "OverfitGuard"),
    "label_scorer": ("ft_callbacks.label_scorer", "LabelScorer"),
    "generation_scorer": ("ft_callbacks.generation_scorer", "GenerationScorer"),
    "forgetting_guard": ("ft_callbacks.forgetting_guard", "ForgettingGuard"),
    "thresholds": ("ft_callbacks.thresholds", "MetricThreshold"),
    "best_checkpoint": ("ft_callbacks.best_checkpoint", "BestCheckpointSaver"),
}
# Settings that are paths: relative to the config file's folder when written in the file (like prompts_file).
_PATH_KEYS = {"forgetting_guard": ("include_path",)}
# Sections that hold a list of settings, one callback each (a run may watch several thresholds).
_LIST_SECTIONS = {"thresholds"}
TRAINING_SECTION = "training"
# Constructor arguments that only code can pass (objects, not config values) and the config keys
# that stand in for them.
_CODE_ONLY = {
    "generation_scorer": {"prompts", "references", "dataset", "generation_config", "judge", "baseline_generations"},
    "forgetting_guard": {"general_text"},
}
_EXTRA_KEYS = {"generation_scorer": {"prompts_file": "str", "generation": "dict", "judge": "dict"}}
# Config keys whose value is a mapping of keyword arguments for something else, and where to read the
# keys (and types) that something takes: (section, key) -> (its name in messages, allowed keys).
_NESTED: dict[tuple[str, str], tuple[str, Callable[[], dict[str, Any]]]] = {
    ("generation_scorer", "generation"): ("transformers.GenerationConfig", lambda: _generation_config_fields()),
    ("generation_scorer", "scorer_options"): ("TextScorer", lambda: _text_scorer_fields()),
}


@dataclass
class _Located:
    """Where a key came from, for messages."""

    source: str
    lines: dict[str, int]
    # Dotted keys written with nothing after the colon (YAML reads them as null).
    empty: set[str] = field(default_factory=set)
    # The config file's folder (relative paths in it are relative to it); None for a dict.
    base: Path | None = None
    # Keys set by an override (relative paths in them are relative to the current directory).
    overridden: set[str] = field(default_factory=set)

    def at(self, dotted: str) -> str:
        line = self.lines.get(dotted)
        return f"{self.source}:{line}" if line else self.source


def _class(section: str) -> type:
    import importlib

    module, name = SECTIONS[section]
    return getattr(importlib.import_module(module), name)


def _parameters(section: str) -> dict[str, Any]:
    """Allowed keys of a section with their type hints."""
    cls = _class(section)
    hints = typing.get_type_hints(cls.__init__)
    params = {
        name: hints.get(name, Any)
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    for name in _CODE_ONLY.get(section, ()):
        params.pop(name, None)
    for name, kind in _EXTRA_KEYS.get(section, {}).items():
        params[name] = str if kind == "str" else dict
    return params


# -- reading -----------------------------------------------------------------------------------------
_BOMS = (  # longest first: the UTF-32-LE mark starts with the UTF-16-LE one
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def read_text(path: str | os.PathLike) -> str:
    """A text file's contents: UTF-8, or UTF-8/16/32 with a byte-order mark.

    Args:
        path: the file.

    Returns:
        The text, without the byte-order mark.

    Raises:
        ConfigurationError: the file is in another encoding (Latin-1, UTF-16 without a mark, ...); the
            message names the file, the first line that is not UTF-8 and how to convert it.
    """
    path = Path(path)
    raw = path.read_bytes()
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            try:
                return raw[len(bom) :].decode(encoding)
            except UnicodeDecodeError as exc:
                line = raw.count(b"\n", 0, exc.start) + 1
                raise ConfigurationError(
                    f"{path}:{line}: starts with a {encoding.upper()} byte-order mark but is not valid "
                    f"{encoding.upper()} ({exc.reason}); save it as UTF-8."
                ) from None
    if b"\x00" in raw:  # NUL bytes: text in UTF-16/32 (e.g. PowerShell's `>`) without a byte-order mark
        guess = "UTF-16-LE" if raw[:1] != b"\x00" else "UTF-16-BE"
        raise ConfigurationError(
            f"{path}: not UTF-8: it has NUL bytes, so it looks like {guess} without a byte-order mark; save it as "
            f"UTF-8, e.g. `iconv -f {guess.lower()} -t utf-8 {path} > {_sibling(path, '.utf8')}`."
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        byte = raw[exc.start]
        raise ConfigurationError(
            f"{path}:{line}: not UTF-8 (byte 0x{byte:02x}, which is {bytes([byte]).decode('latin-1')!r} in Latin-1): "
            "the file looks like Latin-1/Windows-1252. Save it as UTF-8, e.g. "
            f"`iconv -f latin1 -t utf-8 {path} > {_sibling(path, '.utf8')}`."
        ) from None


def _sibling(path: Path, tag: str) -> Path:
    """`data.yaml` -> `data.utf8.yaml`: where a converted copy goes, in the fixes messages suggest."""
    return path.with_name(path.stem + tag + path.suffix)


def _duplicate(source: str, dotted: str, line: int, first: int) -> ConfigurationError:
    what = f"section {dotted!r}" if "." not in dotted else f"key {dotted}"
    return ConfigurationError(
        f"{source}:{line}: duplicate {what} (first at line {first}); the parser would silently keep the last one. "
        "Delete one, or keep one and merge the settings into it."
    )


def _load_yaml(text: str, source: str) -> tuple[Any, dict[str, int], set[str]]:
    try:
        import yaml
    except ImportError:
        raise ConfigurationError(f"{source} is YAML, which needs PyYAML: `pip install pyyaml`.") from None
    lines: dict[str, int] = {}
    empty: set[str] = set()
    seen_nodes: set[int] = set()

    def walk(node: Any, prefix: str, record: bool) -> None:
        if id(node) in seen_nodes:  # an alias: walked where its anchor is
            return
        seen_nodes.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item, prefix, False)
        if not isinstance(node, yaml.MappingNode):
            return
        first: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: overriding merged keys is the point
                continue
            dotted = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            line = key_node.start_mark.line + 1
            key = (key_node.tag, key_node.value)
            if key in first:
                raise _duplicate(source, dotted, line, first[key])
            first[key] = line
            if record:
                lines[dotted] = line
                blank = isinstance(value_node, yaml.ScalarNode) and not value_node.value
                if blank and value_node.tag.endswith(":null"):  # `key:` and nothing else; `null`/`~` are said
                    empty.add(dotted)
            walk(value_node, dotted, record)

    loader = yaml.SafeLoader(text)
    try:
        # One parse: the node tree gives lines, duplicates and empty values, then the data is built from
        # it (after the walk: building resolves `<<` merges into the nodes themselves).
        root = loader.get_single_node()
        if root is not None:
            walk(root, "", True)
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ConfigurationError(f"{where}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    return data, lines, empty


def _json_lines(text: str, source: str) -> dict[str, int]:
    """The line of every object key (dotted) in valid JSON `text`; raises on a duplicate key (which
    `json.loads` would silently resolve to the last value)."""
    from json.decoder import scanstring

    lines: dict[str, int] = {}
    stack: list[tuple[str, dict[str, int] | None]] = []  # (prefix, keys seen) per object; None for arrays
    last_key, expect_key, i, line = "", False, 0, 1
    while i < len(text):
        char = text[i]
        if char == "\n":
            line += 1
        elif char == '"':
            value, end = scanstring(text, i + 1)
            if expect_key and stack and stack[-1][1] is not None:
                prefix, seen = stack[-1]
                last_key = f"{prefix}.{value}" if prefix else value
                if value in seen:
                    raise _duplicate(source, last_key, line, seen[value])
                seen[value] = lines[last_key] = line
                expect_key = False
            i = end
            continue
        elif char in "{[":
            in_object = bool(stack) and stack[-1][1] is not None
            prefix = last_key if in_object else (stack[-1][0] if stack else "")
            stack.append((prefix, {} if char == "{" else None))
            expect_key = char == "{"
        elif char in "}]":
            stack.pop()
            expect_key = False
        elif char == ",":
            expect_key = bool(stack) and stack[-1][1] is not None
        i += 1
    return lines


def load_config(config: str | os.PathLike | Mapping[str, Any], overrides: Sequence[str] = ()) -> tuple[dict, _Located]:
    """Read a config (path to YAML/JSON, or a dict) and apply `section.key=value` overrides."""
    if isinstance(config, Mapping):
        data, located = dict(config), _Located("<dict>", {})
    else:
        path = Path(config)
        if not path.is_file() and not path.suffix and (CONFIG_DIR / f"{path}.yaml").is_file():
            path = CONFIG_DIR / f"{path}.yaml"  # a bundled config by name: "default", "demo", ...
        if not path.is_file():
            bundled = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")) if CONFIG_DIR.is_dir() else []
            raise ConfigurationError(f"Config file {str(config)!r} does not exist. Bundled configs: {bundled}.")
        text = read_text(path)
        empty: set[str] = set()
        if path.suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigurationError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}).") from None
            lines = _json_lines(text, str(path))
        else:
            data, lines, empty = _load_yaml(text, str(path))
        located = _Located(str(path), lines, empty, base=path.resolve().parent)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigurationError(
            f"{located.source}: the top level must be a mapping of sections, not {type(data).__name__}."
        )
    for item in overrides:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ConfigurationError(
                f"Override {item!r} is not valid: write section.key=value, e.g. overfit_guard.patience=5."
            )
        dotted, raw = item.split("=", 1)
        section, key = dotted.split(".", 1)
        try:
            import yaml

            value = yaml.safe_load(raw)
        except Exception:
            value = raw
        if not isinstance(data.get(section), dict):
            data[section] = {}
        data[section][key] = value
        located.lines.pop(dotted, None)
        located.empty -= {section, dotted}
        located.overridden.add(dotted)
    return data, located


# -- validation --------------------------------------------------------------------------------------
def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return getattr(hint, "__name__", str(hint))


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return isinstance(value, hint) or value in {m.value for m in hint}
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if (origin is not None and issubclass(origin, Mapping)) or hint is dict:
        return isinstance(value, dict)
    if origin is not None and issubclass(origin, Sequence):
        args = typing.get_args(hint)
        return isinstance(value, list) and (not args or all(_matches(v, args[0]) for v in value))
    if origin is typing.Callable or hint is typing.Callable:
        return False
    return True  # anything else (objects) is the constructor's to check


def _wrong_type(where: str, dotted: str, value: Any, hint: Any) -> ConfigurationError:
    message = f"{where}: {dotted} = {value!r} has the wrong type: expected {_type_name(hint)}."
    if isinstance(value, str) and _matches(0.5, hint):
        exponent = re.fullmatch(r"([+-]?\d+)([eE][+-]?\d+)", value.strip())
        if exponent:  # PyYAML follows YAML 1.1, where a float needs a point: 3e-4 is the text "3e-4"
            message += f" YAML reads {value} as text: write {exponent[1]}.0{exponent[2]}."
        elif re.fullmatch(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*", value):
            message += " Write the number without quotes."
    return ConfigurationError(message)


def _no_value(where: str, dotted: str, accepts_none: bool) -> ConfigurationError:
    leaf = dotted.rsplit(".", 1)[-1]
    fix = f"write `{leaf}: null` for none, or give a value" if accepts_none else "give a value, or delete the line"
    return ConfigurationError(f"{where}: {dotted} has no value (nothing after the colon); {fix}.")


def _check_keys(
    body: Mapping[str, Any], params: Mapping[str, Any], prefix: str, located: _Located, allowed_note: str = ""
) -> None:
    """Every key of `body` is in `params` and its value matches the type hint; `prefix` is the dotted
    path of `body` for messages."""
    for key, value in body.items():
        dotted = f"{prefix}.{key}"
        where = located.at(dotted)
        if key not in params:
            hint = difflib.get_close_matches(str(key), list(params), n=1)
            allowed = allowed_note or f"Allowed keys: {sorted(params)}."
            raise ConfigurationError(
                f"{where}: unknown key {dotted}" + (f" (did you mean {hint[0]!r}?)" if hint else "") + f". {allowed}"
            )
        if dotted in located.empty:
            raise _no_value(where, dotted, _matches(None, params[key]))
        if not _matches(value, params[key]):
            raise _wrong_type(where, dotted, value, params[key])


def validate_config(data: Mapping[str, Any], located: _Located | None = None) -> dict[str, dict[str, Any]]:
    """Check every section and key; returns {section: kwargs} for the enabled callback sections."""
    located = located or _Located("<dict>", {})
    allowed_sections = [*SECTIONS, TRAINING_SECTION]
    out: dict[str, dict[str, Any]] = {}
    for section, body in data.items():
        if section not in allowed_sections:
            hint = difflib.get_close_matches(str(section), allowed_sections, n=1)
            raise ConfigurationError(
                f"{located.at(str(section))}: unknown section {section!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f". Sections: {allowed_sections}."
            )
        if section in located.empty and section in SECTIONS:
            # YAML reads a section whose keys are all commented out as null, which would mean "off". (An
            # empty `training:` changes nothing, which is what commenting its keys out means.)
            raise ConfigurationError(
                f"{located.at(section)}: section {section!r} has no settings (are its keys all commented out?), so "
                f"{_class(section).__name__} would be off. Write `{section}: {{}}` for its defaults, or "
                f"`{section}: false` to say it is off."
            )
        if body is None or body is False:
            continue
        if body is True:
            body = {}
        if section in _LIST_SECTIONS:
            out[section] = _check_list_section(section, body, located)
            continue
        if not isinstance(body, dict):
            raise ConfigurationError(
                f"{located.at(section)}: section {section!r} must be a mapping of settings (or false to turn it off), "
                f"not {body!r}."
            )
        if section == TRAINING_SECTION:
            _check_training(body, located)
            continue
        params = _parameters(section)
        if section == "generation_scorer" and isinstance(body.get("metrics"), list):
            _check_metric_specs(body["metrics"], located)
            params["metrics"] = list  # each entry checked above: a name or a {task_metric: options} mapping
        _check_keys(body, params, section, located)
        for (nested_section, key), (target, fields) in _NESTED.items():
            if nested_section == section and isinstance(body.get(key), dict):
                allowed = fields()
                note = (
                    f"Allowed keys: {sorted(allowed)}."
                    if len(allowed) <= 30
                    else f"{key} takes the arguments of {target} (see its documentation)."
                )
                _check_keys(body[key], allowed, f"{section}.{key}", located, note)
        out[section] = dict(body)
    return out


def _check_list_section(section: str, body: Any, located: _Located) -> list[dict[str, Any]]:
    """A section holding one mapping of settings per callback (a single mapping is a list of one)."""
    items = [body] if isinstance(body, dict) else body
    name = _class(section).__name__
    if not isinstance(items, list) or not items or not all(isinstance(item, dict) for item in items):
        raise ConfigurationError(
            f"{located.at(section)}: section {section!r} must be a list of settings, one {name} each, e.g. "
            f"`{section}: [{{metric: eval_json_valid_rate, below: 0.9}}]` (or false to turn it off); got {body!r}."
        )
    params = _parameters(section)
    for i, item in enumerate(items):
        _check_keys(item, params, f"{section}[{i}]", located)
    return [dict(item) for item in items]


def _check_metric_specs(specs: list[Any], located: _Located) -> None:
    """GenerationScorer's `metrics:` entries: names, or task metrics with options as one-key mappings
    (`{regex: "^\\d+$"}`), each checked the way the scorer will build it (a bad schema or regex fails here)."""
    from .core.task_metrics import metric_from_spec

    for i, spec in enumerate(specs):
        if not isinstance(spec, (str, dict)):
            raise ConfigurationError(
                f"{located.at('generation_scorer.metrics')}: generation_scorer.metrics[{i}] must be a metric name or a "
                f"one-key mapping of a task metric to its options, not {spec!r}."
            )
        try:
            metric_from_spec(spec)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{located.at('generation_scorer.metrics')}: [generation_scorer.metrics[{i}]] "
                                     f"{exc}") from None  # fmt: skip


@functools.lru_cache(maxsize=1)
def _generation_config_fields() -> dict[str, Any]:
    """GenerationConfig's settings with their types where transformers states them: the attributes of a
    default instance; types from the class docstring's `name (`type`, ...)` lines (HF's documented
    convention), else from the type of the default value the library applies when unset."""
    from transformers import GenerationConfig

    defaults = GenerationConfig().to_dict()
    names = [k for k in defaults if not k.startswith("_") and k != "transformers_version"]
    applied = getattr(GenerationConfig, "_get_default_generation_params", dict)()  # transformers >= 5
    simple = {"int": int, "float": float, "bool": bool, "str": str}
    documented: dict[str, Any] = {}
    for match in re.finditer(r"^\s+(\w+) \((.*)\):\s*$", GenerationConfig.__doc__ or "", re.MULTILINE):
        kinds = re.split(r"\s+or\s+", match[2].split(", *")[0].replace("`", "").strip())
        if all(k in simple for k in kinds):
            documented[match[1]] = typing.Union[tuple(simple[k] for k in kinds)]  # noqa: UP007 (runtime Union)
    fields: dict[str, Any] = {}
    for name in names:
        default = applied.get(name, defaults[name])
        hint = documented.get(name) or (type(default) if isinstance(default, (bool, int, float, str)) else Any)
        fields[name] = Any if hint is Any else hint | None  # None: "unset", as every default is
    return fields


def _text_scorer_fields() -> dict[str, Any]:
    """TextScorer's keyword arguments, less the two GenerationScorer passes itself."""
    from .core.text_scores import TextScorer

    hints = typing.get_type_hints(TextScorer.__init__)
    return {
        name: hints.get(name, Any)
        for name, p in inspect.signature(TextScorer.__init__).parameters.items()
        if name not in ("self", "metrics", "references") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


# TrainingArguments takes these values without complaint but cannot train as meant with them:
# field -> (test, what the value must be).
_TRAINING_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "learning_rate": (lambda v: v > 0, "> 0"),
    "num_train_epochs": (lambda v: v > 0, "> 0"),
    "max_steps": (lambda v: v == -1 or v >= 1, ">= 1, or -1 to train for num_train_epochs (0 would silently do that)"),
    "per_device_train_batch_size": (lambda v: v >= 1, ">= 1"),
    "per_device_eval_batch_size": (lambda v: v >= 1, ">= 1"),
    "gradient_accumulation_steps": (lambda v: v >= 1, ">= 1"),
    "eval_accumulation_steps": (lambda v: v >= 1, ">= 1"),
    "logging_steps": (lambda v: v > 0, "> 0 (a number of steps, or a fraction of the run below 1)"),
    "eval_steps": (lambda v: v > 0, "> 0 (a number of steps, or a fraction of the run below 1)"),
    "save_steps": (lambda v: v > 0, "> 0 (a number of steps, or a fraction of the run below 1)"),
    "warmup_steps": (lambda v: v >= 0, ">= 0"),
    "warmup_ratio": (lambda v: 0 <= v <= 1, "between 0 and 1"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "max_grad_norm": (lambda v: v >= 0, ">= 0"),
    "adam_beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "adam_beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "adam_epsilon": (lambda v: v > 0, "> 0"),
    "label_smoothing_factor": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "save_total_limit": (lambda v: v >= 1, ">= 1, or null for no limit (0 would silently keep every checkpoint)"),
    "dataloader_num_workers": (lambda v: v >= 0, ">= 0"),
    "seed": (lambda v: 0 <= v < 2**32, "in [0, 2**32)"),
}


@functools.lru_cache(maxsize=1)
def _training_fields() -> dict[str, Any]:
    """TrainingArguments' init fields with their type hints (Any where a hint cannot be resolved)."""
    import dataclasses

    from transformers import TrainingArguments

    try:
        hints = typing.get_type_hints(TrainingArguments)
    except Exception:  # a forward reference this transformers version cannot resolve: check names only
        hints = {}
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(TrainingArguments) if f.init}


def _enum_choices(hint: Any) -> list[str]:
    """The values of the string enums in a `Union[SomeStrategy, str]` hint (the str must be one of them)."""
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return [
        m.value
        for cls in members
        if isinstance(cls, type) and issubclass(cls, enum.Enum)
        for m in cls
        if isinstance(m.value, str)
    ]


def _check_training(body: Mapping[str, Any], located: _Located) -> None:
    fields = _training_fields()
    for key, value in body.items():
        dotted = f"{TRAINING_SECTION}.{key}"
        where = located.at(dotted)
        if key not in fields:
            hint = difflib.get_close_matches(str(key), sorted(fields), n=1)
            raise ConfigurationError(
                f"{where}: {key!r} is not a TrainingArguments field"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + "."
            )
        if dotted in located.empty:
            raise _no_value(where, dotted, _matches(None, fields[key]))
        if not _matches(value, fields[key]):
            raise _wrong_type(where, dotted, value, fields[key])
        choices = _enum_choices(fields[key])
        if isinstance(value, str) and choices and value not in choices:
            hint = difflib.get_close_matches(value, choices, n=1)
            raise ConfigurationError(
                f"{where}: {dotted} = {value!r} is not one of {choices}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + "."
            )
        if key in _TRAINING_RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
            test, need = _TRAINING_RANGES[key]
            if not (math.isfinite(value) and test(value)):
                raise ConfigurationError(f"{where}: {dotted} = {value!r} is out of range: it must be {need}.")


def _check_training_arguments(body: Mapping[str, Any], located: _Located) -> str | None:
    """Build TrainingArguments from the section so its own cross-field checks run. Returns a note when
    the only trouble is this machine's hardware (bf16 on a CPU-only machine, say), else None."""
    from transformers import TrainingArguments

    settings = {"output_dir": os.path.join(tempfile.gettempdir(), "ft-callbacks-check"), **body}
    environ = dict(os.environ)  # TrainingArguments sets ACCELERATE_* variables: keep them out of this process

    def build(extra: Mapping[str, Any]) -> None:
        try:
            TrainingArguments(**settings, **extra)
        finally:
            for name in set(os.environ) - set(environ):
                del os.environ[name]
            os.environ.update(environ)

    try:
        build({})
        return None
    except (ValueError, TypeError) as exc:
        error = exc
    if "use_cpu" not in body:
        try:
            build({"use_cpu": True})
        except (ValueError, TypeError):
            pass
        else:
            return f"note: on this machine TrainingArguments says: {error} (fine on hardware that has it)"
    # The line of the key the message names first (HF writes `--load_best_model_at_end requires ...`).
    found = [(m.start(), k) for k in body if (m := re.search(rf"\b{re.escape(str(k))}\b", str(error)))]
    where = located.at(f"{TRAINING_SECTION}.{min(found)[1]}") if found else located.at(TRAINING_SECTION)
    raise ConfigurationError(f"{where}: [training] {error}") from None


# -- building ----------------------------------------------------------------------------------------
def _kind(value: Any) -> str:
    """What a JSON value is, in words, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return {dict: "an object", list: "an array", str: "a string"}.get(type(value), "a number")


def json_object_lines(path: Path, example: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line of a JSON-lines file, read the way every file of
    ours is (`read_text`). A missing file, a line that is not JSON or not one JSON object is a
    `ConfigurationError` naming the file, the line and the fix (`example`: what a line should look like);
    a whole-file JSON array gets the `jq` command that converts it."""
    if not path.is_file():
        raise ConfigurationError(f"{path} does not exist; give a JSON-lines file with one object per line.")
    converted = path.with_name(f"{path.stem}.lines.jsonl")  # where the `jq` fix for a JSON array writes
    convert = f"convert it: `jq -c '.[]' {path} > {converted}`"
    rows: list[tuple[int, dict[str, Any]]] = []
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other characters splitlines breaks at.
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if not rows and line.strip() == "[":  # a pretty-printed JSON array, not JSON lines
                raise ConfigurationError(
                    f"{path}:{number}: the file is one JSON array, not JSON lines; {convert}."
                ) from None
            raise ConfigurationError(f"{path}:{number}: not valid JSON ({exc.msg}).") from None
        if not isinstance(row, dict):
            tip = f" If the file is one JSON array, {convert}." if isinstance(row, list) else ""
            raise ConfigurationError(
                f"{path}:{number}: line is {_kind(row)}, not an object; each line must be one JSON object such as "
                f"{example}.{tip}"
            )
        rows.append((number, row))
    return rows


def _read_prompts_file(file: Path, where: str) -> tuple[list[Any], list[Any], list[dict[str, Any]]]:
    """(prompts, references, rows): the rows keep every field, for `slice_by` on a column of the file."""
    prompts, references, rows = [], [], []
    for number, row in json_object_lines(file, '{"prompt": ..., "reference": ...}'):
        if "prompt" not in row or "reference" not in row:
            raise ConfigurationError(
                f"{file}:{number}: expected an object with prompt and reference, got an object with {sorted(row)}; "
                'write one {"prompt": ..., "reference": ...} per line (prompts_file at ' + f"{where})."
            )
        for name in ("prompt", "reference"):
            if row[name] is None:
                raise ConfigurationError(f"{file}:{number}: {name} is null; give it text, or delete the line.")
        prompts.append(row["prompt"])
        references.append(row["reference"])
        rows.append(row)
    return prompts, references, rows


def callbacks_from_config(
    config: str | os.PathLike | Mapping[str, Any],
    *,
    overrides: Sequence[str] = (),
    prompts: Sequence[Any] | None = None,
    references: Sequence[Any] | None = None,
    dataset: Any = None,
) -> list[TrainerCallback]:
    """The callbacks a config describes, validated, in an order that works with any other callback.

    `config` is a path (YAML or JSON), the name of a bundled config ("default", "summarization",
    "chat_sft", "classification", "demo"), or a dict. GenerationScorer's prompts come from
    `prompts=`/`references=` or `dataset=` here, or from `prompts_file` in the config."""
    data, located = load_config(config, overrides)
    return _build(validate_config(data, located), located, prompts, references, dataset)


def _build(
    sections: dict[str, dict[str, Any]], located: _Located, prompts: Any, references: Any, dataset: Any
) -> list[TrainerCallback]:
    return [callback for _, _, callback in _built(sections, located, prompts, references, dataset)]


def _built(
    sections: dict[str, Any], located: _Located, prompts: Any, references: Any, dataset: Any
) -> list[tuple[str, dict[str, Any], TrainerCallback]]:
    """(section, settings, callback) for every callback the sections describe, in SECTIONS order."""
    built = []
    for section in SECTIONS:  # fixed order, whatever the file's order
        if section not in sections:
            continue
        items = sections[section] if section in _LIST_SECTIONS else [sections[section]]
        for i, settings in enumerate(items):
            where = f"{section}[{i}]" if section in _LIST_SECTIONS else section
            kwargs = dict(settings)
            for key in _PATH_KEYS.get(section, ()):
                value = kwargs.get(key)
                if isinstance(value, str):
                    kwargs[key] = _config_relative(value, f"{section}.{key}", located)
                elif isinstance(value, list):
                    kwargs[key] = [_config_relative(v, f"{section}.{key}", located) if isinstance(v, str) else v
                                   for v in value]  # fmt: skip
            if section == "generation_scorer":
                kwargs = _generation_kwargs(kwargs, located, prompts, references, dataset)
            try:
                built.append((section, dict(settings), _class(section)(**kwargs)))
            except ConfigurationError as exc:
                raise ConfigurationError(f"{located.at(section)}: [{where}] {exc}") from None
    return built


def _generation_kwargs(
    kwargs: dict[str, Any], located: _Located, prompts: Any, references: Any, dataset: Any
) -> dict[str, Any]:
    key = "generation_scorer.prompts_file"
    prompts_file = kwargs.pop("prompts_file", None)
    generation = kwargs.pop("generation", None)
    judge = kwargs.pop("judge", None)
    if judge is not None:  # {backend: openai|local, model: ..., ...}; an API key only ever from api_key_env
        from .judge import Judge

        try:
            kwargs["judge"] = Judge.from_config(judge)
        except ConfigurationError as exc:
            where = located.at("generation_scorer.judge")
            raise ConfigurationError(f"{where}: [generation_scorer.judge] {exc}") from None
    if prompts_file is not None:
        if prompts is not None or dataset is not None:
            raise ConfigurationError(
                f"{located.at(key)}: prompts_file is set and prompts/dataset were "
                "passed too; use one source."
            )
        prompts, references, rows = _read_prompts_file(_prompts_path(prompts_file, located), located.at(key))
        if isinstance(kwargs.get("slice_by"), str):  # a column of the file: pass its rows as the dataset
            prompts = references = None
            dataset = rows
    if prompts is None and dataset is None:
        raise ConfigurationError(
            f"{located.at('generation_scorer')}: generation_scorer needs prompts: set prompts_file in the config, or "
            "pass prompts=/references= or dataset= to callbacks_from_config."
        )
    if isinstance(kwargs.get("metrics"), list):
        from .core.task_metrics import metric_from_spec

        kwargs["metrics"] = [metric_from_spec(spec) for spec in kwargs["metrics"]]
    if generation is not None:
        from transformers import GenerationConfig

        try:
            kwargs["generation_config"] = GenerationConfig(**generation)
        except Exception as exc:
            # The line of the setting GenerationConfig complains about (it writes `max_new_tokens`), if named.
            named = [k for k in generation if f"`{k}`" in str(exc)]
            dotted = f"generation_scorer.generation.{named[0]}" if named else "generation_scorer.generation"
            raise ConfigurationError(f"{located.at(dotted)}: [generation_scorer.generation] {exc}") from None
    return {**kwargs, "prompts": prompts, "references": references, "dataset": dataset}


def _config_relative(value: str, dotted: str, located: _Located) -> str:
    """A path setting as the file meant it: relative to the config's folder when written in the file."""
    path = Path(value).expanduser()
    if path.is_absolute() or located.base is None or dotted in located.overridden:
        return str(path)
    return str(located.base / path)


def _prompts_path(prompts_file: str, located: _Located) -> Path:
    """prompts_file as a path: relative to the config's folder when written in the config file, to the
    current directory when given as an override or in a dict."""
    key = "generation_scorer.prompts_file"
    path = Path(prompts_file).expanduser()
    in_file = located.base is not None and key not in located.overridden
    if not path.is_absolute() and in_file:
        path = located.base / path
    if not path.is_file():
        where = "next to the config" if in_file and not Path(prompts_file).is_absolute() else "there"
        hint = ""
        if in_file and Path(prompts_file).is_file() and not Path(prompts_file).is_absolute():
            hint = (
                f" A {prompts_file!r} exists in the current directory, but a relative path in a config is relative to "
                f"the config's folder: write {str(Path(prompts_file).resolve())!r}."
            )
        raise ConfigurationError(
            f"{located.at(key)}: prompts_file {prompts_file!r} does not exist (looked for {path}, {where}); it should "
            "be JSON lines with prompt and reference." + hint
        )
    return path


def training_arguments_from_config(
    config: str | os.PathLike | Mapping[str, Any], overrides: Sequence[str] = (), **defaults: Any
) -> Any:
    """`TrainingArguments` from the config's `training` section over `defaults`."""
    from transformers import TrainingArguments

    data, located = load_config(config, overrides)
    validate_config(data, located)
    settings = {**defaults, **(data.get(TRAINING_SECTION) or {})}
    try:
        return TrainingArguments(**settings)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"{located.at(TRAINING_SECTION)}: [training] {exc}") from None


def check_config(config: str | os.PathLike | Mapping[str, Any], overrides: Sequence[str] = ()) -> list[str]:
    """Validate a config without training; returns one line per enabled callback. Constructors run
    (so value ranges are checked too), and so does TrainingArguments on the `training` section (its
    cross-field checks; a complaint only about this machine's hardware comes back as a "note:" line,
    not an error); GenerationScorer is given a placeholder prompt when the config
    has no prompts_file, since prompts normally come from the script."""
    data, located = load_config(config, overrides)
    sections = validate_config(data, located)
    prompts = references = None
    if "generation_scorer" in sections and "prompts_file" not in sections["generation_scorer"]:
        prompts, references = ["(prompt from the script)"], ["(reference from the script)"]
    lines = [
        f"{type(cb).__name__}({', '.join(f'{k}={v!r}' for k, v in settings.items())})"
        for _, settings, cb in _built(sections, located, prompts, references, None)
    ]
    if isinstance(data.get(TRAINING_SECTION), dict):
        note = _check_training_arguments(data[TRAINING_SECTION], located)
        if data[TRAINING_SECTION]:
            lines.append(f"TrainingArguments overrides: {sorted(data[TRAINING_SECTION])}")
        if note:
            lines.append(note)
    return lines
