"""Diversity and degeneration of a round of generated texts.

* `distinct_1`, `distinct_2` (Li et al. 2016): unique n-grams / all n-grams over the whole round;
* `self_bleu` (Zhu et al. 2018, Texygen): mean sacreBLEU sentence BLEU of each output against all the
  others (the numbers of sacrebleu's `BLEU(effective_order=True).sentence_score`, 0-100), from n-gram
  statistics gathered once, so the cost grows linearly with the round; above `max_samples` outputs a
  seeded sample of that many hypotheses is scored, each still against all the others;
* `repetition_4` (Welleck et al. 2020, seq-rep-4): per output, 1 - unique 4-grams / all 4-grams (a loop
  repeats its 4-grams), averaged over the outputs; outputs with no 4-gram count 0;
* `mean_length`: tokens per output; `empty_rate`: outputs empty after stripping whitespace;
  `truncated_rate`: outputs whose generation hit `max_new_tokens` (the caller says which).

Tokens are whitespace-separated words by default (as distinct-n and seq-rep-n were defined); pass
`tokenize=` (e.g. a Hugging Face tokenizer's `tokenize`) to count model tokens instead. The n-gram counts
are a few lines of `collections.Counter`, so they are written here rather than pulled from a library.
"""

from __future__ import annotations

import bisect
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
            all the other outputs); None: every output (still linear in the round size).
        seed: the sample's seed.
        tokenize: sacrebleu's tokenizer name (default its '13a').

    Raises:
        ConfigurationError: a bad max_samples, or sacrebleu missing.

    Example:
        >>> round(SelfBleu()(["the cat sat", "the cat sat"])["self_bleu"], 6)
        100.0
    """

    name = "self_bleu"

    def __init__(
        self, max_samples: int | None = 1000, seed: int = 0, tokenize: str | None = None, name: str | None = None
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
        """sacrebleu's signature of the last round (nrefs: the round size - 1), '' before any round."""
        if getattr(self._bleu, "num_refs", 0) in (0, None):
            return ""
        return f"self-{self._bleu.get_signature()}"

    def hypotheses(self, n: int) -> list[int]:
        """The indices scored as hypotheses in a round of n outputs (all, or a seeded sample)."""
        if self.max_samples is None or n <= self.max_samples:
            return list(range(n))
        return sorted(random.Random(self.seed).sample(range(n), self.max_samples))

    def score(self, round: RoundInput) -> TaskResult:
        """Each sampled output's sacreBLEU sentence score against all the others, computed from statistics
        gathered once. Why not `sentence_score(text, others)` in a loop: it re-extracts the n-grams of every
        reference for every hypothesis (quadratic: 400 outputs take about a minute). Here each output's
        n-grams are extracted once with sacrebleu's own `_preprocess_segment` and `extract_all_word_ngrams`;
        "the others" merged (the max count of each n-gram over the other outputs, as sacrebleu merges several
        references) is the highest count over all outputs, or the second highest for the output that holds
        the highest; the closest other length likewise. The score comes from sacrebleu's
        `_compute_score_from_stats`, so the numbers equal the loop's (tested)."""
        from sacrebleu.metrics.helpers import extract_all_word_ngrams

        texts = round.predictions
        if len(texts) < 2:
            return TaskResult({self.name: 0.0})
        bleu = self._bleu
        bleu.num_refs = len(texts) - 1  # what sentence_score(text, others) records, for the signature
        order = bleu.max_ngram_order
        counts, lengths = [], []
        for text in texts:
            grams, length = extract_all_word_ngrams(bleu._preprocess_segment(text), 1, order)
            counts.append(grams)
            lengths.append(length)
        top: dict[tuple[str, ...], int] = {}
        owner: dict[tuple[str, ...], int] = {}
        second: dict[tuple[str, ...], int] = {}
        for i, grams in enumerate(counts):
            for gram, count in grams.items():
                best = top.get(gram, 0)
                if count > best:
                    second[gram], top[gram], owner[gram] = best, count, i
                elif count > second.get(gram, 0):
                    second[gram] = count
        unique = sorted(set(lengths))
        how_many = Counter(lengths)
        values = []
        for i in self.hypotheses(len(texts)):
            correct, total = [0] * order, [0] * order
            for gram, count in counts[i].items():
                n = len(gram) - 1
                total[n] += count
                others = second.get(gram, 0) if owner[gram] == i else top[gram]
                correct[n] += min(count, others)
            ref_len = _closest_other_length(lengths[i], unique, how_many)
            stats = [lengths[i], ref_len, *correct, *total]
            values.append(float(bleu._compute_score_from_stats(stats).score))
        return TaskResult({self.name: sum(values) / len(values)})


def _closest_other_length(length: int, unique: list[int], how_many: Counter) -> int:
    """sacrebleu's `_get_closest_ref_len` over every output's length but one of `length` (its own): the
    closest, the shorter on a tie."""
    if how_many[length] > 1:
        return length
    at = bisect.bisect_left(unique, length)
    below = unique[at - 1] if at > 0 else None
    above = unique[at + 1] if at + 1 < len(unique) else None
    if below is None:
        assert above is not None
        return above
    if above is None or length - below <= above - length:
        return below
    return above


class Repetition(TaskMetric):
    """`repetition_4`: mean share of repeated 4-grams within an output (loops).

    Args:
        n: the n-gram order (default 4; the key is `repetition_<n>`).
        tokenize: text -> tokens (default: whitespace split).

    Example:
        >>> round(Repetition()(["a b c d a b c d"])["repetition_4"], 6)
        0.2
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
