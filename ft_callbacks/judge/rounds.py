"""One judged round, without a Trainer: pointwise scores and the win rate against the base outputs,
through the verdict cache, with invalid answers kept out of the numbers.

`JudgeRound(judge, ...).run(step, prompts, outputs, references, base_outputs)` returns a `JudgeResult`:
the metrics (names without the `eval_` prefix), one record per prompt (what the samples table and the
JSONL file hold), warnings (rounds skipped, budget spent) and the calls it made.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .cache import VerdictCache, cache_key
from .pairwise import side_of, win_rate
from .prompts import PAIRWISE_VERSION, POINTWISE_VERSION, criterion_key
from .protocol import Judge, PairRequest, Score, ScoreRequest, Verdict

__all__ = ["SAMPLE_COLUMNS", "JudgeResult", "JudgeRound"]

# The eval/judge_samples table's columns (one row per prompt and round).
SAMPLE_COLUMNS = ["step", "prompt", "base_output", "current_output", "verdict_current_first",
                  "verdict_base_first", "final_verdict", "rationale", "judge_score"]  # fmt: skip


@dataclass
class JudgeResult:
    metrics: dict[str, float] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    calls: int = 0  # questions sent to the judge this round (cache misses)
    cached: int = 0  # questions answered from the cache

    def rows(self) -> list[list[Any]]:
        return [[r.get(c) for c in SAMPLE_COLUMNS] for r in self.records]


def _text(reference: Any) -> str | None:
    if reference is None:
        return None
    return reference if isinstance(reference, str) else " ||| ".join(map(str, reference))


class JudgeRound:
    """Runs judged rounds with one judge.

    Args:
        judge: a `Judge` (pointwise if it can score, pairwise if it can compare).
        rubric: criteria the pointwise score is broken into (`eval_judge_<criterion>`).
        win_rate: judge each output against the base output, in both orders.
        max_invalid_rate: above this share of invalid answers, the round's numbers are not reported
            (a skipped round, with a warning).
        cache: the verdict cache (None: no cache).
    """

    def __init__(
        self, judge: Judge, rubric: Sequence[str] = (), win_rate: bool = False, max_invalid_rate: float = 0.2,
        cache: VerdictCache | None = None,
    ) -> None:
        self.judge = judge
        self.rubric = tuple(rubric)
        self.win_rate = win_rate
        self.max_invalid_rate = max_invalid_rate
        self.cache = cache
        self.budget_spent: str | None = None  # the message, once a budget stopped judging
        self.calls = 0
        self.cached = 0

    def _ask(self, kind: str, requests: list[Any], ask: Callable[[list[Any]], list[Any]], result_type: type,
             version: str) -> tuple[list[Any], int]:  # fmt: skip
        """Answers to `requests`, from the cache where it has them; the rest asked in one batch."""
        if self.budget_spent is not None:
            return [result_type(None, error=f"budget: {self.budget_spent}") for _ in requests], 0
        identity = self.judge.identity()
        keys = [cache_key(identity, version, kind, asdict(r)) for r in requests]
        answers: list[Any] = [None] * len(requests)
        if self.cache is not None:
            for i, key in enumerate(keys):
                hit = self.cache.get(key)
                if hit is not None:
                    answers[i] = result_type.from_json(hit)
        missing = [i for i, a in enumerate(answers) if a is None]
        self.cached += len(requests) - len(missing)
        if missing:
            fresh = ask([requests[i] for i in missing])
            if len(fresh) != len(missing):
                raise RuntimeError(f"the judge answered {len(fresh)} of {len(missing)} {kind} requests")
            for i, answer in zip(missing, fresh, strict=True):
                answers[i] = answer
                if self.cache is not None and not answer.error:
                    self.cache.put(keys[i], answer.to_json())
            spent = next((a.error for a in fresh if a.error and a.error.startswith("budget")), None)
            if spent is not None:
                self.budget_spent = spent.removeprefix("budget: ")
        return answers, len(missing)

    def run(
        self, step: int, prompts: Sequence[str], outputs: Sequence[str], references: Sequence[Any] | None = None,
        base_outputs: Sequence[str] | None = None,
    ) -> JudgeResult:
        """Judge one round (see the module docstring). `base_outputs`: the base model's outputs for the
        same prompts (None: no win rate this round, e.g. the baseline round itself)."""
        result = JudgeResult()
        refs = [_text(r) for r in references] if references is not None else [None] * len(prompts)
        records = [{"step": step, "index": i, "prompt": prompts[i], "reference": refs[i], "current_output": outputs[i],
                    "base_output": base_outputs[i] if base_outputs is not None else None}
                   for i in range(len(prompts))]  # fmt: skip
        calls_before, cached_before = self.calls, self.cached
        if self.judge.can_score:
            requests = [ScoreRequest(p, o, r, self.rubric) for p, o, r in zip(prompts, outputs, refs, strict=True)]
            scores, made = self._ask("score", requests, self.judge.score, Score, POINTWISE_VERSION)
            self.calls += made
            self._pointwise(scores, records, result)
        if self.win_rate and base_outputs is not None and self.judge.can_compare:
            first = [PairRequest(p, o, b, r) for p, o, b, r in zip(prompts, outputs, base_outputs, refs, strict=True)]
            second = [PairRequest(p, b, o, r) for p, o, b, r in zip(prompts, outputs, base_outputs, refs, strict=True)]
            verdicts, made = self._ask("pair", first + second, self.judge.compare, Verdict, PAIRWISE_VERSION)
            self.calls += made
            self._pairwise(verdicts[: len(first)], verdicts[len(first) :], outputs, base_outputs, records, result)
        if self.budget_spent is not None:
            result.warnings.append(f"the judge's budget is spent ({self.budget_spent}); judging stops for the rest "
                                   "of the run, training continues.")  # fmt: skip
        result.records = records
        result.calls, result.cached = self.calls - calls_before, self.cached - cached_before
        return result

    def _pointwise(self, scores: list[Score], records: list[dict], result: JudgeResult) -> None:
        for record, score in zip(records, scores, strict=True):
            record["judge_score"] = score.value
            record["judge_criteria"] = score.criteria
            record["score_rationale"] = score.rationale
            record["score_error"] = score.error
        valid = [s for s in scores if s.valid]
        invalid_rate = 1 - len(valid) / len(scores) if scores else 0.0
        if not valid or invalid_rate > self.max_invalid_rate:
            result.warnings.append(self._skipped("scores", invalid_rate, scores))
            return
        result.metrics["judge_score"] = sum(s.value for s in valid) / len(valid)
        result.metrics["judge_score_invalid_rate"] = invalid_rate
        for criterion in self.rubric:
            values = [s.criteria[criterion] for s in valid if criterion in s.criteria]
            if values:
                result.metrics[f"judge_{criterion_key(criterion)}"] = sum(values) / len(values)

    def _pairwise(self, first: list[Verdict], second: list[Verdict], outputs: Sequence[str],
                  base_outputs: Sequence[str], records: list[dict], result: JudgeResult) -> None:  # fmt: skip
        sides_first = [side_of(v.winner, current_is_a=True) for v in first]
        sides_second = [side_of(v.winner, current_is_a=False) for v in second]
        numbers = win_rate(sides_first, sides_second, [len(o) for o in outputs], [len(b) for b in base_outputs])
        for i, record in enumerate(records):
            outcome = numbers.outcomes[i]
            record.update({
                "verdict_current_first": sides_first[i] or "invalid",
                "verdict_base_first": sides_second[i] or "invalid",
                "final_verdict": outcome.outcome or "invalid", "flipped": outcome.flipped,
                "rationale": first[i].rationale or second[i].rationale,
                "errors": [e for e in (first[i].error, second[i].error) if e],
                "probabilities": [first[i].probabilities, second[i].probabilities],
            })  # fmt: skip
        if numbers.valid == 0 or numbers.invalid_rate > self.max_invalid_rate:
            result.metrics["judge_invalid_rate"] = numbers.invalid_rate
            result.warnings.append(self._skipped("verdicts", numbers.invalid_rate, first + second))
            return
        result.metrics.update({k: v for k, v in numbers.metrics().items() if not math.isnan(v)})

    def _skipped(self, what: str, rate: float, answers: list[Any]) -> str:
        errors = sorted({a.error for a in answers if a.error})
        why = f"; errors: {'; '.join(errors[:3])}" if errors else " (answers the parser could not read)"
        return (f"{rate:.0%} of the judge's {what} were invalid (max_invalid_rate={self.max_invalid_rate:g}){why}: "
                "no judge numbers this round, training continues.")  # fmt: skip
