"""Judging saved outputs outside training (`ft-callbacks judge FILE`): the same rounds, cache and
numbers as during training, over a JSON-lines file of {prompt, prediction[, baseline][, reference]}."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.errors import ConfigurationError
from .cache import VerdictCache
from .prompts import parse_rubric
from .protocol import Judge
from .rounds import JudgeRound

__all__ = ["judge_file", "read_rows"]


def read_rows(path: Path, fields: dict[str, str | None]) -> dict[str, list[Any]]:
    """The columns named in `fields` (role -> field name; None: optional and absent) from a JSON-lines file."""
    from ..config import json_object_lines

    columns: dict[str, list[Any]] = {role: [] for role, name in fields.items() if name}
    example = "{" + ", ".join(f'"{name}": "..."' for name in fields.values() if name) + "}"
    for number, row in json_object_lines(path, example):
        for role, name in fields.items():
            if not name:
                continue
            if name not in row:
                raise ConfigurationError(f"{path}:{number}: missing field {name!r} (the {role}); the line has "
                                         f"{sorted(row)}. Name the fields with --{role}-field.")  # fmt: skip
            value = row[name]
            if role != "reference" and not isinstance(value, str):
                raise ConfigurationError(f"{path}:{number}: {name} must be a string.")
            columns[role].append(value)
    if not columns.get("prompt"):
        raise ConfigurationError(f"{path} has no rows.")
    return columns


def judge_file(
    path: str | Path, judge: Judge, *, rubric: str | Sequence[str] | None = None, prompt_field: str = "prompt",
    prediction_field: str = "prediction", baseline_field: str | None = None, reference_field: str | None = None,
    max_invalid_rate: float = 0.2, cache: str | Path | None = None,
) -> dict[str, Any]:
    """Judge the rows of a JSON-lines file; returns {"metrics", "records", "warnings", "usage"}. With a
    baseline field, the win rate of the predictions against it (both orders)."""
    path = Path(path)
    rows = read_rows(path, {"prompt": prompt_field, "prediction": prediction_field, "baseline": baseline_field,
                            "reference": reference_field})  # fmt: skip
    judge.preflight()
    cache_path = Path(cache) if cache else path.with_name(f"{path.stem}.judge_cache.sqlite")
    verdicts = VerdictCache(cache_path)
    try:
        runner = JudgeRound(judge, parse_rubric(rubric), win_rate=baseline_field is not None,
                            max_invalid_rate=max_invalid_rate, cache=verdicts)  # fmt: skip
        result = runner.run(0, rows["prompt"], rows["prediction"], rows.get("reference"), rows.get("baseline"))
    finally:
        verdicts.close()
        judge.release()
    usage = {"calls": result.calls, "cached": result.cached, **(judge.usage_summary() or {})}
    return {"metrics": result.metrics, "records": result.records, "warnings": result.warnings, "usage": usage,
            "cache": str(cache_path)}  # fmt: skip
