"""The `Judge` protocol: what GenerationScorer asks of a judge, and the results it gets back.

A judge answers two kinds of requests, each independently optional:

- pointwise: `score_one(ScoreRequest) -> Score` (an overall 1-10 rating, per-criterion ratings);
- pairwise: `compare_one(PairRequest) -> Verdict` ("A", "B", "tie", or None for invalid).

A user's own judge (a reward model, a rule, another API) subclasses `Judge` and implements one or both;
batch methods (`score`, `compare`) loop over them by default and turn an exception into an invalid
result (never a loss). `identity()` names the judge in the verdict cache: two judges with the same
identity must give the same answers. The built-in backends are `Judge.openai(...)` (any
OpenAI-compatible endpoint) and `Judge.local(...)` (an in-process Hugging Face causal LM).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Judge", "JudgeBudgetExceeded", "PairRequest", "Score", "ScoreRequest", "Verdict"]


@dataclass(frozen=True)
class PairRequest:
    """One pairwise question: which of `output_a` (shown first) and `output_b` answers `prompt` better."""

    prompt: str
    output_a: str
    output_b: str
    reference: str | None = None


@dataclass(frozen=True)
class ScoreRequest:
    """One pointwise question: rate `output` as an answer to `prompt` (on each `rubric` criterion too)."""

    prompt: str
    output: str
    reference: str | None = None
    rubric: tuple[str, ...] = ()


@dataclass
class Verdict:
    """A pairwise verdict in one order: `winner` "A", "B", "tie", or None (invalid: unparseable,
    refused, or `error`). `probabilities`: the judge's probability of each verdict, when it has them."""

    winner: str | None
    rationale: str = ""
    probabilities: dict[str, float] | None = None
    error: str | None = None
    raw: str = ""
    usage: dict[str, int] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.winner in ("A", "B", "tie")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Verdict:
        return cls(**{k: data.get(k) for k in ("winner", "rationale", "probabilities", "error", "raw")},
                   usage=dict(data.get("usage") or {}))  # fmt: skip


@dataclass
class Score:
    """A pointwise score: `value` 1-10 (None: invalid), `criteria` per rubric item. With token
    probabilities it is their probability-weighted mean over the score tokens (G-Eval)."""

    value: float | None
    criteria: dict[str, float] = field(default_factory=dict)
    rationale: str = ""
    probabilities: dict[str, float] | None = None
    error: str | None = None
    raw: str = ""
    usage: dict[str, int] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.value is not None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Score:
        return cls(value=data.get("value"), criteria=dict(data.get("criteria") or {}),
                   rationale=data.get("rationale") or "", probabilities=data.get("probabilities"),
                   error=data.get("error"), raw=data.get("raw") or "", usage=dict(data.get("usage") or {}))  # fmt: skip


class JudgeBudgetExceeded(RuntimeError):
    """A judge's `max_calls`/`max_cost` is spent: judging stops (loudly) for the rest of the run."""


class Judge:
    """Base class and protocol of a judge. Subclass it and implement `score_one` and/or `compare_one`
    (or the batch forms `score`/`compare`); give `identity()` whatever distinguishes its answers.

    Example:
        >>> class PrefersLonger(Judge):
        ...     def compare_one(self, request):
        ...         a, b = len(request.output_a), len(request.output_b)
        ...         return Verdict("A" if a > b else "B" if b > a else "tie")
        >>> GenerationScorer(prompts, refs, judge=PrefersLonger(), win_rate=True)
    """

    # -- what a judge implements ----------------------------------------------------------------
    def score_one(self, request: ScoreRequest) -> Score:
        raise NotImplementedError

    def compare_one(self, request: PairRequest) -> Verdict:
        raise NotImplementedError

    def identity(self) -> dict[str, Any]:
        """What names this judge's answers in the verdict cache (backend, model, endpoint, sampling)."""
        return {"backend": f"{type(self).__module__}.{type(self).__qualname__}"}

    def preflight(self) -> None:
        """A cheap check, before the first training step, that the judge answers; raise
        `ConfigurationError` naming the fix when it cannot."""

    # -- batch forms (a backend may override them to batch or parallelise) -----------------------
    def score(self, requests: list[ScoreRequest]) -> list[Score]:
        results: list[Score] = []
        for request in requests:
            try:
                results.append(self.score_one(request))
            except JudgeBudgetExceeded as exc:  # the rest are not asked
                return results + [Score(None, error=f"budget: {exc}") for _ in requests[len(results):]]
            except Exception as exc:  # a judge's failure is an invalid score, never a low one
                results.append(Score(None, error=f"{type(exc).__name__}: {exc}"))
        return results

    def compare(self, requests: list[PairRequest]) -> list[Verdict]:
        results: list[Verdict] = []
        for request in requests:
            try:
                results.append(self.compare_one(request))
            except JudgeBudgetExceeded as exc:  # the rest are not asked
                return results + [Verdict(None, error=f"budget: {exc}") for _ in requests[len(results):]]
            except Exception as exc:  # a judge's failure is an invalid verdict, never a loss
                results.append(Verdict(None, error=f"{type(exc).__name__}: {exc}"))
        return results

    # -- what the run reports -------------------------------------------------------------------
    def usage_summary(self) -> dict[str, float]:
        """Calls made, tokens used and estimated cost (backends that count them override this)."""
        return {}

    def release(self) -> None:
        """Free what the judge holds between rounds (the local judge leaves the accelerator)."""

    @property
    def can_score(self) -> bool:
        return type(self).score_one is not Judge.score_one or type(self).score is not Judge.score

    @property
    def can_compare(self) -> bool:
        return type(self).compare_one is not Judge.compare_one or type(self).compare is not Judge.compare

    # -- the built-in backends ------------------------------------------------------------------
    @staticmethod
    def openai(model: str, base_url: str | None = None, **options: Any) -> Judge:
        """A judge behind any OpenAI-compatible endpoint (OpenAI, vLLM, `transformers serve`, llama.cpp,
        Ollama). See `ft_callbacks.judge.openai_backend.OpenAIJudge` for the options."""
        from .openai_backend import OpenAIJudge

        return OpenAIJudge(model=model, base_url=base_url, **options)

    @staticmethod
    def from_config(options: dict[str, Any]) -> Judge:
        """A built-in judge from a config mapping: `{"backend": "openai", "model": ..., "base_url": ...,
        ...}` or `{"backend": "local", "model": "path", ...}` (the other keys are the constructor's).

        Raises:
            ConfigurationError: no or an unknown backend, or options the backend does not take.
        """
        from ..core.errors import ConfigurationError

        if not isinstance(options, dict):
            raise ConfigurationError(f"judge must be a mapping with a backend, e.g. {{backend: openai, model: ...}}; "
                                     f"got {type(options).__name__}.")  # fmt: skip
        settings = dict(options)
        backend = settings.pop("backend", None)
        makers = {"openai": Judge.openai, "local": Judge.local}
        if backend not in makers:
            raise ConfigurationError(f"judge.backend={backend!r} is not valid: use 'openai' or 'local'.")
        if "api_key" in settings:
            raise ConfigurationError("judge.api_key is not read from configs (it would end up in files): put the key "
                                     "in an environment variable and name it with judge.api_key_env.")  # fmt: skip
        try:
            return makers[backend](**settings)
        except TypeError as exc:
            raise ConfigurationError(f"judge ({backend}): {exc}") from None

    @staticmethod
    def local(model: Any, tokenizer: Any = None, **options: Any) -> Judge:
        """An in-process Hugging Face causal LM as the judge (a path or a loaded model). See
        `ft_callbacks.judge.local_backend.LocalJudge` for the options."""
        from .local_backend import LocalJudge

        return LocalJudge(model, tokenizer=tokenizer, **options)
