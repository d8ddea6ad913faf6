"""Callbacks from a YAML/JSON config, validated strictly before anything trains.

    callbacks = callbacks_from_config("configs/default.yaml", prompts=prompts, references=references)
    trainer = Trainer(..., callbacks=callbacks)

A config has one section per callback (`overfit_guard`, `best_checkpoint`, `generation_scorer`,
`label_scorer`; a section set to `false`/`null` is off) and an optional `training` section of
`TrainingArguments` fields, which `training_arguments_from_config` applies. The keys of a section
are exactly the callback's constructor arguments, so the code is the single source of truth for
what a config may say, the way `HfArgumentParser` reads dataclass fields. An unknown or misspelt
key, a wrong type or an out-of-range value raises `ConfigurationError` naming the file, line, key,
and the allowed keys or values. Overrides use dotted keys: `overrides=["overfit_guard.patience=5"]`.
"""

from __future__ import annotations

import difflib
import inspect
import json
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
    "best_checkpoint": ("ft_callbacks.best_checkpoint", "BestCheckpointSaver"),
}
TRAINING_SECTION = "training"
# Constructor arguments that only code can pass (objects, not config values) and the config keys
# that stand in for them.
_CODE_ONLY = {"generation_scorer": {"prompts", "references", "dataset", "generation_config"}}
_EXTRA_KEYS = {"generation_scorer": {"prompts_file": "str", "generation": "dict"}}


@dataclass
class _Located:
    """Where a key came from, for messages."""

    source: str
    lines: dict[str, int]

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
def _load_yaml(text: str, source: str) -> tuple[Any, dict[str, int]]:
    try:
        import yaml
    except ImportError:
        raise ConfigurationError(f"{source} is YAML, which needs PyYAML: `pip install pyyaml`.") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{source}: not valid YAML: {exc}") from None
    lines: dict[str, int] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                dotted = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
                lines[dotted] = key_node.start_mark.line + 1
                walk(value_node, dotted)

    if root is not None:
        walk(root, "")
    return data, lines


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
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            try:
                data, lines = json.loads(text), {}
            except json.JSONDecodeError as exc:
                raise ConfigurationError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}).") from None
        else:
            data, lines = _load_yaml(text, str(path))
        located = _Located(str(path), lines)
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
        if body is None or body is False:
            continue
        if body is True:
            body = {}
        if not isinstance(body, dict):
            raise ConfigurationError(
                f"{located.at(section)}: section {section!r} must be a mapping of settings (or false to turn it off), "
                f"not {body!r}."
            )
        if section == TRAINING_SECTION:
            _check_training(body, located)
            continue
        params = _parameters(section)
        for key, value in body.items():
            where = located.at(f"{section}.{key}")
            if key not in params:
                hint = difflib.get_close_matches(str(key), list(params), n=1)
                raise ConfigurationError(
                    f"{where}: unknown key {section}.{key}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + f". Allowed keys: {sorted(params)}."
                )
            if not _matches(value, params[key]):
                raise ConfigurationError(
                    f"{where}: {section}.{key} = {value!r} has the wrong type: expected {_type_name(params[key])}."
                )
        out[section] = dict(body)
    return out


def _check_training(body: Mapping[str, Any], located: _Located) -> None:
    import dataclasses

    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
    for key in body:
        if key not in fields:
            hint = difflib.get_close_matches(str(key), sorted(fields), n=1)
            raise ConfigurationError(
                f"{located.at(f'{TRAINING_SECTION}.{key}')}: {key!r} is not a TrainingArguments field"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + "."
            )


# -- building ----------------------------------------------------------------------------------------
def _read_prompts_file(path: str, where: str) -> tuple[list[Any], list[Any]]:
    file = Path(path)
    if not file.is_file():
        raise ConfigurationError(f"{where}: prompts_file {path!r} does not exist (JSON lines with prompt, reference).")
    prompts, references = [], []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompts.append(row["prompt"])
            references.append(row["reference"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigurationError(
                f"{path}:{number}: expected an object with prompt and reference ({exc})."
            ) from None
    return prompts, references


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
    callbacks: list[TrainerCallback] = []
    for section in SECTIONS:  # fixed order, whatever the file's order
        if section not in sections:
            continue
        kwargs = dict(sections[section])
        if section == "generation_scorer":
            kwargs = _generation_kwargs(kwargs, located, prompts, references, dataset)
        try:
            callbacks.append(_class(section)(**kwargs))
        except ConfigurationError as exc:
            raise ConfigurationError(f"{located.at(section)}: [{section}] {exc}") from None
    return callbacks


def _generation_kwargs(
    kwargs: dict[str, Any], located: _Located, prompts: Any, references: Any, dataset: Any
) -> dict[str, Any]:
    prompts_file = kwargs.pop("prompts_file", None)
    generation = kwargs.pop("generation", None)
    if prompts_file is not None:
        if prompts is not None or dataset is not None:
            raise ConfigurationError(
                f"{located.at('generation_scorer.prompts_file')}: prompts_file is set and prompts/dataset were "
                "passed too; use one source."
            )
        prompts, references = _read_prompts_file(prompts_file, located.at("generation_scorer.prompts_file"))
    if prompts is None and dataset is None:
        raise ConfigurationError(
            f"{located.at('generation_scorer')}: generation_scorer needs prompts: set prompts_file in the config, or "
            "pass prompts=/references= or dataset= to callbacks_from_config."
        )
    if generation is not None:
        from transformers import GenerationConfig

        try:
            kwargs["generation_config"] = GenerationConfig(**generation)
        except Exception as exc:
            raise ConfigurationError(f"{located.at('generation_scorer.generation')}: {exc}") from None
    return {**kwargs, "prompts": prompts, "references": references, "dataset": dataset}


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
    (so value ranges are checked too); GenerationScorer is given a placeholder prompt when the config
    has no prompts_file, since prompts normally come from the script."""
    data, located = load_config(config, overrides)
    sections = validate_config(data, located)
    prompts = references = None
    if "generation_scorer" in sections and "prompts_file" not in sections["generation_scorer"]:
        prompts, references = ["(prompt from the script)"], ["(reference from the script)"]
    callbacks = _build(sections, located, prompts, references, None)
    enabled = [s for s in SECTIONS if s in sections]
    lines = [
        f"{type(cb).__name__}({', '.join(f'{k}={v!r}' for k, v in sections[s].items())})"
        for cb, s in zip(callbacks, enabled, strict=True)
    ]
    if data.get(TRAINING_SECTION):
        lines.append(f"TrainingArguments overrides: {sorted(data[TRAINING_SECTION])}")
    return lines
