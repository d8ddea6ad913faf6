"""A judge behind any OpenAI-compatible endpoint: OpenAI, vLLM, `transformers serve`, llama.cpp, Ollama.

Reliability and cost are the point (judge users complain about exactly these):

- temperature 0 (and a fixed seed where the server takes one); a preflight call names the fix for a
  wrong URL, key or model before the first training step;
- a timeout per call; retries with jittered exponential backoff on 429, 5xx, timeouts and
  connection errors (the client's own retries are off, so every attempt is ours and counted);
- `max_concurrency` calls in flight (a thread pool); a budget: `max_calls` per run and, with prices
  per 1k tokens, `max_cost`; once spent, judging stops with a loud warning, never silently;
- the API key is read from the environment variable `api_key_env` when the client is made and kept
  only inside it: it is never part of `identity()`, `repr()`, records or logs;
- when the server returns token log-probabilities (`logprobs`), the rating is their probability-
  weighted mean over the score tokens 1-10 (G-Eval); otherwise the parsed integer.
"""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..core.errors import ConfigurationError
from .prompts import pairwise_messages, parse_score, parse_verdict, pointwise_messages, rationale_of
from .protocol import Judge, JudgeBudgetExceeded, PairRequest, Score, ScoreRequest, Verdict

__all__ = ["OpenAIJudge", "weighted_score"]

_SCORES = {str(n): n for n in range(1, 11)}


def weighted_score(top_logprobs: list[tuple[str, float]]) -> tuple[float, dict[str, float]] | None:
    """The probability-weighted mean of the score tokens 1-10 among `top_logprobs` ((token, logprob)
    pairs), renormalised over those tokens, and their probabilities; None when none is a score token."""
    import math

    probabilities: dict[str, float] = {}
    for token, logprob in top_logprobs:
        key = token.strip()
        if key in _SCORES:
            probabilities[key] = probabilities.get(key, 0.0) + math.exp(logprob)
    total = sum(probabilities.values())
    if total <= 0:
        return None
    shares = {k: p / total for k, p in probabilities.items()}
    return sum(_SCORES[k] * p for k, p in shares.items()), shares


def _rating_logprobs(content: list[Any], text: str) -> list[tuple[str, float]] | None:
    """The alternatives the server gave for the first token of the overall rating's number."""
    import re

    found = list(re.finditer(r"rating\s*:\s*\[\[\s*(\d)", text, flags=re.IGNORECASE))
    if not found or not content:
        return None
    target = found[-1].start(1)
    position = 0
    for item in content:
        token = getattr(item, "token", "") or ""
        if position <= target < position + max(1, len(token)):
            tops = getattr(item, "top_logprobs", None) or []
            return [(t.token, t.logprob) for t in tops] or [(token, getattr(item, "logprob", 0.0))]
        position += len(token)
    return None


class OpenAIJudge(Judge):
    """A judge behind an OpenAI-compatible chat-completions endpoint.

    Args:
        model: the model name the server serves (e.g. "gpt-4o-mini"; for `transformers serve DIR`, DIR).
        base_url: the endpoint, e.g. "http://127.0.0.1:8000/v1"; None is OpenAI's own.
        api_key_env: the environment variable holding the API key (read when the client is made; a
            local server without keys needs none).
        timeout: seconds per call.
        max_retries: further attempts after a 429, a 5xx, a timeout or a connection error.
        backoff: seconds before the first retry; doubled each time, jittered (x0.5-1.5), at most `max_backoff`.
        max_concurrency: calls in flight at once.
        max_calls: calls this judge may make (None: no limit); then judging stops, loudly.
        price_per_1k_input, price_per_1k_output: prices per 1,000 tokens, for the cost estimate.
        max_cost: the cost at which judging stops (needs the prices). `max_calls` is exact; the cost is known
            only after a call, so calls already in flight (at most `max_concurrency - 1`) may finish past it.
        max_tokens: the judge's answer length.
        logprobs: ask for token log-probabilities (a probability-weighted rating when returned).
        pointwise, pairwise: which questions this judge answers.

    Raises:
        ConfigurationError: bad options at construction; in `preflight()`, an endpoint, key or model that
            does not answer (the message names the fix).

    Example:
        >>> judge = Judge.openai(model="gpt-4o-mini", max_calls=2000, max_concurrency=8)
        >>> judge = Judge.openai(model="m", base_url="http://127.0.0.1:8000/v1")
    """

    def __init__(
        self, model: str, base_url: str | None = None, *, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
        max_retries: int = 4, backoff: float = 1.0, max_backoff: float = 30.0, max_concurrency: int = 4,
        max_calls: int | None = None, price_per_1k_input: float | None = None,
        price_per_1k_output: float | None = None, max_cost: float | None = None, max_tokens: int = 512,
        logprobs: bool = True, pointwise: bool = True, pairwise: bool = True,
    ) -> None:  # fmt: skip
        if not isinstance(model, str) or not model.strip():
            raise ConfigurationError(f"Judge.openai(model={model!r}): give the model name the endpoint serves.")
        for name, value in (("max_retries", max_retries), ("max_concurrency", max_concurrency),
                            ("max_tokens", max_tokens)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "max_retries" else 1):
                raise ConfigurationError(f"Judge.openai({name}={value!r}): use a whole number "
                                         f"{'>= 0' if name == 'max_retries' else '>= 1'}.")  # fmt: skip
        if max_calls is not None and (isinstance(max_calls, bool) or not isinstance(max_calls, int) or max_calls < 1):
            raise ConfigurationError(f"Judge.openai(max_calls={max_calls!r}): use a positive whole number or None.")
        if max_cost is not None and (price_per_1k_input is None or price_per_1k_output is None):
            raise ConfigurationError("Judge.openai(max_cost=...) needs price_per_1k_input and price_per_1k_output "
                                     "to estimate the cost.")  # fmt: skip
        if not (pointwise or pairwise):
            raise ConfigurationError("Judge.openai(pointwise=False, pairwise=False) answers nothing: keep one.")
        if base_url is None and not os.environ.get(api_key_env):
            raise ConfigurationError(f"Judge.openai(model={model!r}) talks to OpenAI, which needs a key: set the "
                                     f"environment variable {api_key_env} (or pass api_key_env=NAME), or give "
                                     "base_url= for a local server.")  # fmt: skip
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_concurrency = max_concurrency
        self.max_calls = max_calls
        self.price_per_1k_input = price_per_1k_input
        self.price_per_1k_output = price_per_1k_output
        self.max_cost = max_cost
        self.max_tokens = max_tokens
        self.logprobs = logprobs
        self.pointwise = pointwise
        self.pairwise = pairwise
        self._client: Any = None
        self._lock = threading.Lock()
        self._usage = {"calls": 0, "attempts": 0, "retries": 0, "errors": 0, "prompt_tokens": 0,
                       "completion_tokens": 0}  # fmt: skip

    def __repr__(self) -> str:  # never the key
        return f"OpenAIJudge(model={self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    @property
    def can_score(self) -> bool:
        return self.pointwise

    @property
    def can_compare(self) -> bool:
        return self.pairwise

    def identity(self) -> dict[str, Any]:
        return {"backend": "openai", "model": self.model, "endpoint": self.base_url or "https://api.openai.com/v1",
                "temperature": 0, "max_tokens": self.max_tokens, "logprobs": self.logprobs}  # fmt: skip

    # -- the client and one call ----------------------------------------------------------------
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import openai

                key = os.environ.get(self.api_key_env) or "not-needed"  # local servers take any key
                self._client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=self.timeout, max_retries=0)
            return self._client

    def _spend(self) -> None:
        with self._lock:
            if self.max_calls is not None and self._usage["calls"] >= self.max_calls:
                raise JudgeBudgetExceeded(f"max_calls={self.max_calls} calls made")
            if self.max_cost is not None and self.cost() >= self.max_cost:
                raise JudgeBudgetExceeded(f"estimated cost {self.cost():.4f} reached max_cost={self.max_cost}")
            self._usage["calls"] += 1

    def cost(self) -> float:
        if self.price_per_1k_input is None or self.price_per_1k_output is None:
            return 0.0
        return (self._usage["prompt_tokens"] * self.price_per_1k_input
                + self._usage["completion_tokens"] * self.price_per_1k_output) / 1000  # fmt: skip

    def _retryable(self, exc: Exception) -> bool:
        import openai

        if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, openai.RateLimitError)):
            return True
        return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500

    def chat(
        self, messages: list[dict], max_tokens: int | None = None, logprobs: bool | None = None,
        retries: int | None = None,
    ) -> Any:
        """One chat completion at temperature 0, retried with jittered exponential backoff (counts as one
        call of the budget whatever the retries)."""
        self._spend()
        want_logprobs = self.logprobs if logprobs is None else logprobs
        options: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": 0, "seed": 0,
                                   "max_tokens": max_tokens or self.max_tokens}  # fmt: skip
        if want_logprobs:
            options.update(logprobs=True, top_logprobs=10)
        attempt = 0
        while True:
            with self._lock:
                self._usage["attempts"] += 1
            try:
                response = self.client().chat.completions.create(**options)
            except Exception as exc:
                if attempt < (self.max_retries if retries is None else retries) and self._retryable(exc):
                    delay = min(self.max_backoff, self.backoff * 2**attempt) * random.uniform(0.5, 1.5)
                    attempt += 1
                    with self._lock:
                        self._usage["retries"] += 1
                    time.sleep(delay)
                    continue
                with self._lock:
                    self._usage["errors"] += 1
                raise
            usage = getattr(response, "usage", None)
            with self._lock:
                self._usage["prompt_tokens"] += int(getattr(usage, "prompt_tokens", 0) or 0)
                self._usage["completion_tokens"] += int(getattr(usage, "completion_tokens", 0) or 0)
            return response

    # -- questions ------------------------------------------------------------------------------
    def compare_one(self, request: PairRequest) -> Verdict:
        response = self.chat(pairwise_messages(request.prompt, request.output_a, request.output_b,
                                               request.reference), logprobs=False)  # fmt: skip
        text = response.choices[0].message.content or ""
        return Verdict(parse_verdict(text), rationale=rationale_of(text), raw=text[:2000])

    def score_one(self, request: ScoreRequest) -> Score:
        response = self.chat(pointwise_messages(request.prompt, request.output, request.reference, request.rubric))
        choice = response.choices[0]
        text = choice.message.content or ""
        value, criteria = parse_score(text, request.rubric)
        probabilities = None
        content = getattr(getattr(choice, "logprobs", None), "content", None)
        tops = _rating_logprobs(content, text) if content and value is not None else None
        weighted = weighted_score(tops) if tops else None
        if weighted is not None:
            value, probabilities = weighted
        return Score(value, criteria, rationale=rationale_of(text), probabilities=probabilities, raw=text[:2000])

    def _parallel(self, function: Any, requests: list[Any], invalid: Any) -> list[Any]:
        spent = threading.Event()

        def one(request: Any) -> Any:
            if spent.is_set():
                return invalid(error="budget: the judge's budget is spent")
            try:
                return function(request)
            except JudgeBudgetExceeded as exc:
                spent.set()
                return invalid(error=f"budget: {exc}")
            except Exception as exc:  # an invalid answer, never a loss; the error is not cached
                return invalid(error=f"{type(exc).__name__}: {str(exc)[:300]}")

        if self.max_concurrency == 1 or len(requests) <= 1:
            return [one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="ft-judge") as pool:
            return list(pool.map(one, requests))

    def compare(self, requests: list[PairRequest]) -> list[Verdict]:
        return self._parallel(self.compare_one, requests, lambda error: Verdict(None, error=error))

    def score(self, requests: list[ScoreRequest]) -> list[Score]:
        return self._parallel(self.score_one, requests, lambda error: Score(None, error=error))

    def usage_summary(self) -> dict[str, float]:
        with self._lock:
            usage: dict[str, float] = dict(self._usage)
        if self.price_per_1k_input is not None and self.price_per_1k_output is not None:
            usage["cost"] = self.cost()
        return usage

    # -- before the first step ------------------------------------------------------------------
    def preflight(self) -> None:
        """One short call; a failure raises ConfigurationError naming the likely fix."""
        import openai

        where = self.base_url or "OpenAI"
        try:
            # One retry at most: a wrong URL should fail in a second, not after the full backoff.
            self.chat([{"role": "user", "content": "Reply with OK."}], max_tokens=1, logprobs=False, retries=1)
        except openai.AuthenticationError as exc:
            raise ConfigurationError(f"the judge at {where} refused the API key ({exc.status_code}): put a valid key "
                                     f"in the environment variable {self.api_key_env}.") from None  # fmt: skip
        except (openai.NotFoundError, openai.BadRequestError) as exc:
            raise ConfigurationError(f"the judge at {where} does not serve model {self.model!r} ({exc.status_code}: "
                                     f"{_detail(exc)}): check Judge.openai(model=...).") from None  # fmt: skip
        except openai.APIConnectionError as exc:
            raise ConfigurationError(f"could not reach the judge at {where} ({type(exc).__name__}: {exc}): is the "
                                     "server running, and is base_url right (it usually ends in /v1, e.g. "
                                     "http://127.0.0.1:8000/v1)?") from None  # fmt: skip
        except JudgeBudgetExceeded as exc:
            raise ConfigurationError(f"the judge's budget is spent before training starts ({exc}).") from None
        except openai.APIError as exc:
            raise ConfigurationError(
                f"the judge at {where} failed its first call ({type(exc).__name__}: {_detail(exc)}); check base_url, "
                f"model and {self.api_key_env}."
            ) from None


def _detail(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("message") or body.get("error") or body)[:300]
    return str(exc)[:300]
