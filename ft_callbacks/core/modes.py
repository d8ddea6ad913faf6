"""Direction of a metric ("min" or "max") and what counts as an improvement."""

from __future__ import annotations

import logging
import math
import re
from typing import Literal

Mode = Literal["min", "max"]

logger = logging.getLogger("ft_callbacks")

# Names are matched as whole `_`-separated tokens, never as substrings: "wer" must not match
# "answer", "ece" not "recent" or "piece", "ratio" not "generation" (they did, and a saver on
# `eval_answer_f1` kept the worst checkpoint).
#
# Compound names first (their tokens alone would mislead: "loss" in "loss_ratio" is right, but
# "bits_per_byte" has no token that says "lower"; "self_bleu" is a diversity penalty).
_COMPOUND_MIN = (
    "bits_per_token",
    "bits_per_byte",
    "bits_per_character",
    "log_loss",
    "hamming_loss",
    "loss_ratio",
    "loss_gap",
    "invalid_rate",
    "error_rate",
    "empty_rate",
    "truncated_rate",
    "toxicity_rate",
    "self_bleu",
    "judge_invalid_rate",
    "judge_flip_rate",
)
_COMPOUND_MAX = (
    "win_rate",
    "win_rate_lc",
    "json_valid_rate",
    "json_schema_valid_rate",
    "regex_match_rate",
    "exact_match",
    "judge_score",
    "subset_accuracy",
    "best_threshold_f1",
)
# Single tokens. A metric whose last known token is in one of these sets takes its direction
# ("eval_answer_f1" -> f1 -> max; "eval_perplexity_delta" -> perplexity -> min).
_TOKENS_MIN = frozenset(
    "loss losses nll perplexity ppl error errors err gap ece brier mae mse rmse mape wer cer ter "
    "forgetting distance latency repetition stderr".split()
)
_TOKENS_MAX = frozenset(
    "accuracy acc f1 f1s precision recall rouge1 rouge2 rougel rougelsum rouge bleu chrf bertscore "
    "auc roc pr r2 pearson spearman mcc kappa score scores match win reward correct pass distinct "
    "specificity sensitivity map ndcg mrr iou dice".split()
)
# Tokens that change nothing about the direction of what they qualify.
_NEUTRAL = frozenset("delta ci low high macro micro weighted samples lc".split())

_unplaced_noticed: set[str] = set()


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[_/\-\s.]+", name.lower()) if t]


def _known_mode(metric: str) -> Mode | None:
    """The direction when the name says it, else None."""
    name = metric.lower()
    if name.startswith("pass@") or "_pass@" in name:
        return "max"
    tokens = _tokens(name)
    joined = "_".join(tokens)
    padded = f"_{joined}_"
    # The longest compound found anywhere in the name decides ("eval_judge_invalid_rate" is min even
    # though "judge_score" would be max for another name).
    hits = [(len(c), "min") for c in _COMPOUND_MIN if f"_{c}_" in padded]
    hits += [(len(c), "max") for c in _COMPOUND_MAX if f"_{c}_" in padded]
    if hits:
        return max(hits)[1]  # type: ignore[return-value]
    for token in reversed(tokens):
        if token in _NEUTRAL:
            continue
        if token in _TOKENS_MIN:
            return "min"
        if token in _TOKENS_MAX or re.fullmatch(r"(rouge|bleu|f|acc|top)\d+|precision@\d+|recall@\d+", token):
            return "max"
    return None


def is_mode_known(metric: str) -> bool:
    """Whether `infer_mode` can place `metric` from its name (else it guesses "max")."""
    return _known_mode(metric) is not None


def infer_mode(metric: str) -> Mode:
    """The direction of `metric` from its name: `"min"` for losses, perplexities, error rates and the
    like, `"max"` for scores.

    Whole `_`-separated tokens are matched (`eval_answer_f1` is "max" although "answer" contains
    "wer"). A name that says nothing about its direction is taken as "max" with a one-time warning
    that says how to pass `mode=` explicitly.

    Args:
        metric: a metric name, with or without the `eval_` prefix.

    Example:
        >>> infer_mode("eval_perplexity"), infer_mode("eval_answer_f1")
        ('min', 'max')
    """
    mode = _known_mode(metric)
    if mode is not None:
        return mode
    if metric not in _unplaced_noticed:
        _unplaced_noticed.add(metric)
        logger.warning(
            "[ft_callbacks] cannot tell from its name whether %r is better high or low; it is taken as "
            "higher-is-better. Pass mode='min' (or mode='max') to the callback that monitors it to say so.",
            metric,
        )
    return "max"


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
