"""Direction of a metric ("min" or "max") and what counts as an improvement."""

from __future__ import annotations

import math
from typing import Literal

Mode = Literal["min", "max"]

# Substrings that mark a metric where lower is better. Everything else (accuracy, f1, rouge,
# bleu, bertscore, ...) is taken as higher-is-better.
_LOWER_IS_BETTER = ("loss", "perplexity", "error", "bits_per", "nll", "ece", "brier", "gap", "ratio", "wer", "cer")


def infer_mode(metric: str) -> Mode:
    """`"min"` for losses, perplexities, error rates and the like, `"max"` for everything else."""
    name = metric.lower()
    return "min" if any(part in name for part in _LOWER_IS_BETTER) else "max"


def check_mode(mode: str | None, metric: str) -> Mode:
    """Validate an explicit `mode`, or infer it from the metric name when `mode` is None."""
    if mode is None:
        return infer_mode(metric)
    if mode not in ("min", "max"):
        raise ValueError(f"mode={mode!r} is not valid: use 'min', 'max', or None to infer it from {metric!r}.")
    return mode  # type: ignore[return-value]


def is_finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def is_improvement(value: float | None, best: float | None, mode: Mode, min_delta: float = 0.0) -> bool:
    """True when `value` beats `best` by more than `min_delta`. NaN/inf never improve; anything
    finite improves on no best at all."""
    if not is_finite(value):
        return False
    if best is None or not math.isfinite(best):
        return True
    if mode == "min":
        return value < best - min_delta  # type: ignore[operator]
    return value > best + min_delta  # type: ignore[operator]


def normalize_metric_name(name: str, prefix: str = "eval") -> str:
    """Add the Trainer's metric prefix the way `metric_for_best_model` does ("loss" -> "eval_loss")."""
    if not name:
        raise ValueError("The monitored metric name is empty; use e.g. 'eval_loss' or 'eval_perplexity'.")
    return name if name.startswith(f"{prefix}_") else f"{prefix}_{name}"
