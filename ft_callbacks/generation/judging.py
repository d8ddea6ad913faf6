"""The judge's part of GenerationScorer: options, the base model's outputs, judged rounds, the
samples table and the pairs file. GenerationScorer calls it; the judging itself is `ft_callbacks.judge`.

- Base outputs: generated once, at step 0 (or at any step from a PEFT model with its adapters
  disabled), kept with a fingerprint (model, generation settings, prompts) by `BaseResults` and
  reused on resume, so a resumed run never takes its "base" from trained weights;
  `baseline_generations=` gives another model's outputs instead.
- Judging runs on rank 0 only, inside the scoring round (the scoring queue's thread when scoring in
  the background), through the verdict cache (`output_dir/ft_callbacks/judge/cache.sqlite`).
- Every judged round's pairs go to `output_dir/ft_callbacks/judge/pairs.jsonl`, one JSON object per
  prompt and round (see `PAIRS_FILE_FIELDS`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from ..base_model import BaseResults, as_base_model, base_is_available, fingerprint, model_identity
from ..core.errors import ConfigurationError
from ..distributed import broadcast_from_main
from ..judge.cache import VerdictCache
from ..judge.prompts import criterion_key, parse_rubric
from ..judge.protocol import Judge
from ..judge.rounds import SAMPLE_COLUMNS, JudgeRound
from ..publish import notice_once
from ..records import write_record

__all__ = ["JUDGE_FOLDER", "PAIRS_FILE_FIELDS", "JudgeOptions", "write_usage"]

JUDGE_FOLDER = os.path.join("ft_callbacks", "judge")
# One line per prompt and judged round in pairs.jsonl (the human comparison page reads these).
PAIRS_FILE_FIELDS = ("step", "index", "prompt", "reference", "base_output", "current_output",
                     "verdict_current_first", "verdict_base_first", "final_verdict", "flipped", "rationale",
                     "judge_score", "judge_criteria", "errors")  # fmt: skip
PAIR_METRICS = ("win_rate", "tie_rate", "win_rate_ci_low", "win_rate_ci_high", "judge_flip_rate",
                "judge_invalid_rate", "length_ratio", "win_rate_lc")  # fmt: skip


class JudgeOptions:
    """GenerationScorer's judge options, checked at construction (see GenerationScorer's docstring)."""

    def __init__(
        self, judge: Any, rubric: str | Sequence[str] | None, win_rate: bool,
        baseline_generations: Sequence[str] | None, max_invalid_rate: float, owner: str = "GenerationScorer",
    ) -> None:  # fmt: skip
        if judge is not None and not isinstance(judge, Judge):
            raise ConfigurationError(
                f"{owner}(judge={type(judge).__name__}) is not a judge: use Judge.openai(model=...), "
                "Judge.local('path'), or a subclass of ft_callbacks.judge.Judge with compare_one/score_one."
            )
        if not isinstance(win_rate, bool):
            raise ConfigurationError(f"win_rate={win_rate!r} is not valid: use True or False.")
        try:
            self.rubric = parse_rubric(rubric)
        except TypeError as exc:
            raise ConfigurationError(f"rubric={rubric!r} is not valid ({exc}): use 'a, b, c' or a list of names.") \
                from None
        if judge is None and (win_rate or self.rubric or baseline_generations is not None):
            raise ConfigurationError(
                f"{owner}: win_rate, rubric and baseline_generations need a judge: pass judge=Judge.openai(model=...) "
                "or judge=Judge.local('path')."
            )
        if judge is not None and win_rate and not judge.can_compare:
            raise ConfigurationError(f"win_rate=True needs a judge that compares two answers; "
                                     f"{type(judge).__name__} has no compare_one().")  # fmt: skip
        if judge is not None and self.rubric and not judge.can_score:
            raise ConfigurationError(f"rubric= needs a judge that scores answers; {type(judge).__name__} has no "
                                     "score_one().")  # fmt: skip
        if judge is not None and judge.can_compare and not judge.can_score and not win_rate:
            raise ConfigurationError(f"{type(judge).__name__} only compares two answers, so it has nothing to do "
                                     "without win_rate=True: set win_rate=True.")  # fmt: skip
        if judge is not None and not (judge.can_score or judge.can_compare):
            raise ConfigurationError(f"{type(judge).__name__} implements neither score_one() nor compare_one().")
        if baseline_generations is not None:
            if not win_rate:
                raise ConfigurationError("baseline_generations= is what the win rate compares against: set "
                                         "win_rate=True too.")  # fmt: skip
            if isinstance(baseline_generations, str) or not all(isinstance(t, str) for t in baseline_generations):
                raise ConfigurationError("baseline_generations= must be a list of strings, one per prompt.")
            baseline_generations = list(baseline_generations)
        rate = max_invalid_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
            raise ConfigurationError(f"max_invalid_rate={rate!r} is not valid: use a share between 0 and 1, e.g. 0.2.")
        self.judge = judge
        self.win_rate = win_rate
        self.baseline_generations = baseline_generations
        self.max_invalid_rate = float(rate)
        self.base_outputs: list[str] | None = None
        self.rows: list[list[Any]] = []
        self.usage: dict[str, float] = {"judge_asked": 0, "judge_cached": 0}  # questions sent / answered by the cache
        self._round: JudgeRound | None = None
        self._preflown = False
        self._output_dir = ""

    @property
    def active(self) -> bool:
        return self.judge is not None

    def produces(self) -> set[str]:
        if self.judge is None:
            return set()
        names: set[str] = set()
        if self.judge.can_score:
            names |= {"judge_score", "judge_score_invalid_rate"} | {f"judge_{criterion_key(c)}" for c in self.rubric}
        if self.win_rate:
            names |= set(PAIR_METRICS)
        return names

    # -- set-up ---------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._round is not None

    def setup(self, args: Any, state: Any) -> None:
        if self._round is not None and self._round.cache is not None:
            self._round.cache.close()  # an earlier train() of this callback
        self._output_dir = args.output_dir
        cache = VerdictCache(os.path.join(args.output_dir, JUDGE_FOLDER, "cache.sqlite"))
        self._round = JudgeRound(self.judge, self.rubric, self.win_rate, self.max_invalid_rate, cache)
        if state.global_step > 0 and state.is_world_process_zero:
            self._reload_pairs(int(state.global_step))

    def preflight(self, state: Any) -> None:
        """The judge's preflight call, once, on rank 0; its error reaches every rank (no hang)."""
        if self._preflown or self.judge is None:
            return
        self._preflown = True
        error = None
        if state.is_world_process_zero:
            try:
                self.judge.preflight()
            except ConfigurationError as exc:
                error = str(exc)
        error = broadcast_from_main(error)
        if error:
            raise ConfigurationError(error)

    def prepare_base(
        self, args: Any, state: Any, model: Any, settings: Any, prompt_texts: list[str],
        sample: Callable[[list[Any]], list[Any]], generate: Callable[[Any], list[str]], total: int | None = None,
    ) -> dict[int, str] | None:  # fmt: skip
        """Find the base model's outputs (given, saved, or generated now); returns them by prompt index when
        they were generated from this model at step 0 (the baseline round reuses them), else None."""
        if self.judge is None or not self.win_rate:
            return None
        if self.baseline_generations is not None:
            given = self.baseline_generations
            if len(given) not in {total, len(prompt_texts)}:
                raise ConfigurationError(
                    f"baseline_generations has {len(given)} texts for {total} prompts: give one text per prompt, in "
                    "the order of the prompts."
                )
            self.base_outputs = list(given) if len(given) == len(prompt_texts) else sample(list(given))
            return None
        settings_dict = settings.to_dict() if hasattr(settings, "to_dict") else settings
        key = fingerprint(model=model_identity(model), generation=settings_dict, prompts=prompt_texts)
        store = BaseResults(args.output_dir, "judge_outputs")
        saved = store.load(key)
        if isinstance(saved, list) and len(saved) == len(prompt_texts):
            self.base_outputs = [str(t) for t in saved]
            return None
        step = int(state.global_step)
        if not base_is_available(model, step):
            if state.is_world_process_zero:
                old = store.saved_fingerprint()
                why = "none were saved" if old is None else f"the saved ones were made with other settings ({old})"
                notice_once("judge:nobase", f"GenerationScorer: no win rate in this run: the base model's outputs are "
                            f"needed and {why}, and at step {step} a full fine-tune's weights are no longer the base. "
                            "Pass baseline_generations=..., or start from step 0.")  # fmt: skip
            self.win_rate = False
            return None
        with as_base_model(model) as base:
            texts = [t or "" for t in generate(base)]
        self.base_outputs = texts
        if state.is_world_process_zero:
            store.save(key, texts)
        return dict(enumerate(texts)) if step == 0 else None

    # -- a round (rank 0) -----------------------------------------------------------------------
    def run(self, step: int, prompts: list[str], texts: list[str], references: list[Any], is_baseline: bool) -> dict:
        """Judge one round; returns {"metrics", "rows", "records", "warnings", "usage"} (plain values, so rank 0
        can broadcast it)."""
        assert self._round is not None, "setup() first"
        base = None if is_baseline else self.base_outputs
        try:
            result = self._round.run(step, prompts, texts, references, base if self.win_rate else None)
        except Exception as exc:  # a judge that fails in a way of its own: that round has no judge numbers
            return {"metrics": {}, "rows": [], "records": [], "usage": dict(self.usage),
                    "warnings": [f"the judge failed ({type(exc).__name__}: {exc}); no judge numbers this round, "
                                 "training continues."]}  # fmt: skip
        finally:
            try:
                self.judge.release()
            except Exception as exc:  # releasing memory must never fail a round
                notice_once("judge:release", f"the judge could not release its memory ({exc}).")
        self.usage["judge_asked"] += result.calls
        self.usage["judge_cached"] += result.cached
        usage = {**self.usage, **{f"judge_{k}": v for k, v in (self.judge.usage_summary() or {}).items()}}
        metrics = {k: v for k, v in result.metrics.items() if not (isinstance(v, float) and math.isnan(v))}
        if is_baseline:  # the base model's own pointwise score: the delta's reference, no win rate
            metrics = {k: v for k, v in metrics.items() if k not in PAIR_METRICS}
        return {"metrics": metrics, "rows": result.rows(), "records": result.records if not is_baseline else [],
                "warnings": result.warnings, "usage": usage}  # fmt: skip

    def pairs_path(self, output_dir: str) -> str:
        return os.path.join(output_dir, JUDGE_FOLDER, "pairs.jsonl")

    def save_pairs(self, output_dir: str, records: list[dict[str, Any]]) -> None:
        """Append a round's pairs to pairs.jsonl (rank 0)."""
        if not records:
            return
        path = self.pairs_path(output_dir)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps({k: record.get(k) for k in PAIRS_FILE_FIELDS}, ensure_ascii=False) + "\n")

    def _reload_pairs(self, step: int) -> None:
        """On resume: keep the rounds up to the resumed step (later ones are judged again, from the cache)
        and rebuild the samples table from them."""
        path = self.pairs_path(self._output_dir)
        try:
            with open(path, encoding="utf-8") as handle:
                records = [json.loads(line) for line in handle if line.strip()]
        except (OSError, ValueError):
            return
        kept = [r for r in records if isinstance(r, dict) and int(r.get("step", 0)) <= step]
        if len(kept) != len(records):
            text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept)
            tmp = f"{path}.tmp"
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, path)
        self.rows = [[r.get(c) for c in SAMPLE_COLUMNS] for r in kept]

    def media(self, prefix: str, rows: list[list[Any]], max_rows: int) -> dict[str, Callable]:
        self.rows.extend(rows)
        self.rows = self.rows[-max_rows:] if max_rows else []
        everything = list(self.rows)
        if not everything:
            return {}
        return {f"{prefix}/judge_samples": lambda wandb: wandb.Table(columns=list(SAMPLE_COLUMNS), data=everything)}

    def teardown(self) -> None:
        if self._round is not None and self._round.cache is not None:
            self._round.cache.close()
        if self.judge is not None:
            try:
                self.judge.release()
            except Exception:  # nothing to do about it at the end of a run
                pass


def write_usage(output_dir: str, usage: dict[str, Any]) -> None:
    """The judge's usage (calls, tokens, cost) beside the pairs (never the API key)."""
    write_record(os.path.join(output_dir, JUDGE_FOLDER, "usage.json"), usage)
