"""Diversity and degeneration of a round of generated texts.

* `distinct_1`, `distinct_2` (Li et al. 2016): unique n-grams / all n-grams over the whole round;
* `self_bleu` (Zhu et al. 2018, Texygen): mean sacreBLEU sentence BLEU of each output against all the
  others (sacrebleu's `BLEU(effective_order=True).sentence_score`, 0-100); above `max_samples` outputs,
  a seeded sample of that many hypotheses is scored, each still against all the others, so the cost grows
  linearly with the round instead of quadratically;
* `repetition_4` (Welleck et al. 2020, seq-rep-4): per output, 1 - unique 4-grams / all 4-grams (a loop
  repeats its 4-grams), averaged over the outputs; outputs with no 4-gram count 0;
* `mean_length`: tokens per output; `empty_rate`: outputs empty after stripping whitespace;
  `truncated_rate`: outputs whose generation hit `max_new_tokens` (the caller says which).

Tokens are whitespace-separated words by default (as distinct-n and seq-rep-n were defined); pass
`tokenize=` (e.g. a Hugging Face tokenizer's `tokenize`) to count model tokens instead. The n-gram counts
are a few lines of `collections.Counter`, so they are written here rather than pulled from a library.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from .errors import ConfigurationError
from .task_metrics import RoundInput, TaskMetric, TaskResult, check_positive_int

Tokenize = Callable[[str], Sequence[str]]


def _check_tokenize(tokenize: Any) -> Tokenize:
    if tokenize is None:
        return str.split
    if not callable(tokenize):
        raise ConfigurationError(
            f"tokenize={tokenize!r} is not valid: pass a callable text -> list of tokens, or None."
        )
    return tokenize


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """The n-grams of a token list, in order."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(token_lists: Sequence[Sequence[str]], n: int) -> float:
    """Unique n-grams over all outputs / all n-grams over all outputs (0 when there are none)."""
    counts: Counter[tuple[str, ...]] = Counter()
    for tokens in token_lists:
        counts.update(ngrams(tokens, n))
    total = sum(counts.values())
    return len(counts) / total if total else 0.0


def repetition_n(tokens: Sequence[str], n: int = 4) -> float:
    """1 - unique n-grams / all n-grams of one output (0 when it has no n-gram)."""
    grams = ngrams(tokens, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


class Distinct(TaskMetric):
    """`distinct_1`, `distinct_2` (or the orders given): unique / all n-grams over the round.

    Args:
        orders: the n-gram orders (default (1, 2)).
        tokenize: text -> tokens (default: whitespace split).

    Raises:
        ConfigurationError: an order that is not a positive integer, a tokenize that is not callable.

    Example:
        >>> Distinct()(["a b a", "a c"])
        {'distinct_1': 0.6, 'distinct_2': 1.0}
    """

    name = "distinct"

    def __init__(self, orders: Sequence[int] = (1, 2), tokenize: Tokenize | None = None, name: str | None = None):
        super().__init__(name)
        orders = [orders] if isinstance(orders, int) else list(orders)
        if not orders:
            raise ConfigurationError("orders is empty: give n-gram orders such as (1, 2).")
        for n in orders:
            check_positive_int(n, "orders entry")
        self.orders = sorted(set(orders))
        self.tokenize = _check_tokenize(tokenize)

    def keys(self) -> tuple[str, ...]:
        return tuple(f"{self.name}_{n}" for n in self.orders)

    def score(self, round: RoundInput) -> TaskResult:
        tokens = [list(self.tokenize(t)) for t in round.predictions]
        return TaskResult({f"{self.name}_{n}": distinct_n(tokens, n) for n in self.orders})


class SelfBleu(TaskMetric):
    """`self_bleu`: how alike the outputs are (0-100, higher = less diverse), with sacreBLEU.

    Args:
        max_samples: above this many outputs, score a seeded sample of that many hypotheses (each against
            all the other outputs); None: every output.
        seed: the sample's seed.
        tokenize: sacrebleu's tokenizer name (default its '13a').

    Raises:
        ConfigurationError: a bad max_samples, or sacrebleu missing.

    Example:
        >>> SelfBleu()(["the cat sat", "the cat sat"])
        {'self_bleu': 100.0}
    """

    name = "self_bleu"

    def __init__(
        self, max_samples: int | None = 500, seed: int = 0, tokenize: str | None = None, name: str | None = None
    ) -> None:
        super().__init__(name)
        self.max_samples = check_positive_int(max_samples, "max_samples", allow_none=True)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigurationError(f"seed={seed!r} is not valid: use a whole number.")
        self.seed = seed
        try:
            from sacrebleu.metrics import BLEU
        except ImportError:
            raise ConfigurationError("self_bleu needs sacrebleu: pip install 'ft-callbacks[text]'.") from None
        try:
            self._bleu = BLEU(effective_order=True, tokenize=tokenize)
        except Exception as exc:
            raise ConfigurationError(f"tokenize={tokenize!r} is not a sacrebleu tokenizer: {exc}.") from None

    def keys(self) -> tuple[str, ...]:
        return (self.name,)

    def signature(self) -> str:
        return str(self._bleu.get_signature())

    def hypotheses(self, n: int) -> list[int]:
        """The indices scored as hypotheses in a round of n outputs (all, or a seeded sample)."""
        if self.max_samples is None or n <= self.max_samples:
            return list(range(n))
        return sorted(random.Random(self.seed).sample(range(n), self.max_samples))

    def score(self, round: RoundInput) -> TaskResult:
        texts = round.predictions
        if len(texts) < 2:
            return TaskResult({self.name: 0.0})
        values = []
        for i in self.hypotheses(len(texts)):
            others = texts[:i] + texts[i + 1 :]
            values.append(float(self._bleu.sentence_score(texts[i], others).score))
        return TaskResult({self.name: sum(values) / len(values)})


class Repetition(TaskMetric):
    """`repetition_4`: mean share of repeated 4-grams within an output (loops).

    Args:
        n: the n-gram order (default 4; the key is `repetition_<n>`).
        tokenize: text -> tokens (default: whitespace split).

    Example:
        >>> Repetition()(["a b c d a b c d"])
        {'repetition_4': 0.2}
    """

    name = "repetition"

    def __init__(self, n: int = 4, tokenize: Tokenize | None = None, name: str | None = None) -> None:
        super().__init__(name)
        self.n = check_positive_int(n, "n")
        self.tokenize = _check_tokenize(tokenize)

    def keys(self) -> tuple[str, ...]:
        return (f"{self.name}_{self.n}",)

    def score(self, round: RoundInput) -> TaskResult:
        assert self.n is not None
        values = [repetition_n(list(self.tokenize(t)), self.n) for t in round.predictions]
        key = self.keys()[0]
        return TaskResult({key: sum(values) / len(values) if values else 0.0}, {key: values})


class Length(TaskMetric):
    """`mean_length`: tokens per output (GenerationScorer reports its change from the step-0 baseline as
    `mean_length_delta`).

    Args:
        tokenize: text -> tokens (default: whitespace split; pass a tokenizer's `tokenize` for model tokens).

    Example:
        >>> Length()(["a b", "c d e f"])
        {'mean_length': 3.0}
    """

    name = "mean_length"

    def __init__(self, tokenize: Tokenize | None = None, name: str | None = None) -> None:
        super().__init__(name)
        self.tokenize = _check_tokenize(tokenize)

    def keys(self) -> tuple[str, ...]:
        return (self.name,)

    def score(self, round: RoundInput) -> TaskResult:
        lengths = [float(len(self.tokenize(t))) for t in round.predictions]
        return TaskResult({self.name: sum(lengths) / len(lengths) if lengths else 0.0}, {"length": lengths})


class Empty(TaskMetric):
    """`empty_rate`: the share of outputs that are empty or whitespace only.

    Example:
        >>> Empty()(["", " \\n", "a"])["empty_rate"]
        0.6666666666666666
    """

    name = "empty"

    def keys(self) -> tuple[str, ...]:
        return (f"{self.name}_rate",)

    def score(self, round: RoundInput) -> TaskResult:
        flags = [0.0 if t.strip() else 1.0 for t in round.predictions]
        return TaskResult({self.keys()[0]: sum(flags) / len(flags) if flags else 0.0}, {self.name: flags})


class Truncated(TaskMetric):
    """`truncated_rate`: the share of outputs whose generation stopped at `max_new_tokens` rather than at
    an end-of-sequence token. The scorer must be told which: `TextScorer.score(..., truncated=[...])`.

    Raises:
        ConfigurationError: at scoring, when the round carries no `truncated` flags.

    Example:
        >>> from ft_callbacks.core.task_metrics import RoundInput
        >>> Truncated().score(RoundInput(["a", "b"], truncated=[True, False])).corpus
        {'truncated_rate': 0.5}
    """

    name = "truncated"

    def keys(self) -> tuple[str, ...]:
        return (f"{self.name}_rate",)

    def score(self, round: RoundInput) -> TaskResult:
        flags = round.truncated
        if flags is None:
            raise ConfigurationError(
                "truncated_rate needs to know which outputs hit max_new_tokens: pass truncated=[bool per output] "
                "to TextScorer.score()/score_texts() (GenerationScorer passes it itself)."
            )
        if len(flags) != len(round.predictions):
            raise ConfigurationError(
                f"{len(round.predictions)} predictions but {len(flags)} truncated flags: pass one per prediction."
            )
        values = [1.0 if f else 0.0 for f in flags]
        return TaskResult({self.keys()[0]: sum(values) / len(values) if values else 0.0}, {self.name: values})


__all__ = ["Distinct", "Empty", "Length", "Repetition", "SelfBleu", "Truncated", "distinct_n", "ngrams", "repetition_n"]
