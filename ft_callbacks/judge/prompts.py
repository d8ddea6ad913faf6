"""Versioned judge prompts and the parsing of their answers.

The templates are versioned: the version is part of every cache key, so changing a template's wording
means a new version and never a stale cached verdict. Answers are parsed leniently where that is
unambiguous (the last `[[A]]`/`[[B]]`/`[[C]]` marker; `Rating: [[7]]`) and otherwise counted invalid.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = [
    "PAIRWISE_VERSION",
    "POINTWISE_VERSION",
    "SCORE_PREFIX",
    "VERDICT_PREFIX",
    "pairwise_messages",
    "parse_rubric",
    "parse_score",
    "parse_verdict",
    "pointwise_messages",
    "rationale_of",
]  # fmt: skip

PAIRWISE_VERSION = "pairwise-v1"
POINTWISE_VERSION = "pointwise-v1"
# Where a judge that reads next-token probabilities (the local judge) starts its answer.
VERDICT_PREFIX = "Verdict: [["
SCORE_PREFIX = "Rating: [["

_PAIRWISE_SYSTEM = (
    "You are an impartial judge. Compare two answers to the user's prompt and decide which is better. "
    "Judge helpfulness, correctness and relevance; ignore the order the answers are shown in and their length. "
    "Explain briefly, then end with exactly one verdict: [[A]] if answer A is better, [[B]] if answer B is "
    "better, [[C]] for a tie. Format of the last line: Verdict: [[A]]"
)
_POINTWISE_SYSTEM = (
    "You are an impartial judge. Rate the answer to the user's prompt on a scale of 1 to 10 (10 is best). "
    "Explain briefly, then rate each criterion on its own line as `<criterion>: [[n]]`, and end with the overall "
    "rating as: Rating: [[n]]"
)


def parse_rubric(rubric: str | Sequence[str] | None) -> tuple[str, ...]:
    """A rubric as its criteria: "helpfulness, correctness, tone" or a list of names; None is no criteria."""
    if rubric is None:
        return ()
    items = rubric.split(",") if isinstance(rubric, str) else list(rubric)
    criteria = []
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"rubric criterion {item!r} is not a string")
        name = item.strip()
        if name and name not in criteria:
            criteria.append(name)
    return tuple(criteria)


def criterion_key(criterion: str) -> str:
    """A criterion as part of a metric name: `eval_judge_<key>` (lowercase, words joined by _)."""
    return re.sub(r"[^0-9a-z]+", "_", criterion.lower()).strip("_") or "criterion"


def pairwise_messages(prompt: str, output_a: str, output_b: str, reference: str | None = None) -> list[dict]:
    """The chat messages asking which of two answers is better (answer A shown first)."""
    parts = [f"[Prompt]\n{prompt}"]
    if reference:
        parts.append(f"[Reference answer]\n{reference}")
    parts += [f"[Answer A]\n{output_a}", f"[Answer B]\n{output_b}"]
    return [{"role": "system", "content": _PAIRWISE_SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def pointwise_messages(prompt: str, output: str, reference: str | None = None, rubric: Sequence[str] = ()) -> list:
    """The chat messages asking for a 1-10 rating of one answer (per criterion when a rubric is given)."""
    parts = [f"[Prompt]\n{prompt}"]
    if reference:
        parts.append(f"[Reference answer]\n{reference}")
    parts.append(f"[Answer]\n{output}")
    if rubric:
        parts.append("[Criteria]\n" + "\n".join(f"- {c}" for c in rubric))
    return [{"role": "system", "content": _POINTWISE_SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_NUMBER = r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]"


def parse_verdict(text: str | None) -> str | None:
    """"A", "B" or "tie" from the judge's answer (its last `[[A]]`/`[[B]]`/`[[C]]` marker), else None."""
    if not text:
        return None
    found = _VERDICT.findall(text)
    if not found:
        return None
    return "tie" if found[-1] == "C" else found[-1]


def _in_range(value: str) -> float | None:
    number = float(value)
    return number if 1 <= number <= 10 else None


def parse_score(text: str | None, rubric: Sequence[str] = ()) -> tuple[float | None, dict[str, float]]:
    """(overall rating, {criterion: rating}) from `Rating: [[n]]` and `<criterion>: [[n]]` lines; a
    number outside 1-10 or a missing one is None (criteria that are missing are left out)."""
    if not text:
        return None, {}
    overall = re.findall(r"rating\s*:\s*" + _NUMBER, text, flags=re.IGNORECASE)
    value = _in_range(overall[-1]) if overall else None
    criteria = {}
    for criterion in rubric:
        found = re.findall(re.escape(criterion) + r"\s*:\s*" + _NUMBER, text, flags=re.IGNORECASE)
        if found and _in_range(found[-1]) is not None:
            criteria[criterion] = float(found[-1])
    return value, criteria


def rationale_of(text: str | None, limit: int = 300) -> str:
    """The judge's explanation: its answer without the verdict/rating markers, shortened."""
    if not text:
        return ""
    cleaned = re.sub(r"(verdict|rating)?\s*:?\s*\[\[[^\]]*\]\]", "", text, flags=re.IGNORECASE).strip()
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"
