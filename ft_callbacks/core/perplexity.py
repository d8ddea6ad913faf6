"""Exact, token-weighted perplexity without keeping logits.

`exp(eval_loss)` from the Trainer is a mean of per-batch means weighted by batch size, and for
some models its token count is off by one per sequence (see shared TRAINER_NOTES). The exact
corpus perplexity is `exp(sum NLL / number of target tokens)`; these helpers compute the two sums
per sample, batch by batch, so nothing larger than a batch's logits ever lives in memory.

Per-sample sums (rather than one running total) let a distributed run drop the samples that the
sampler repeated to even out the last batches, exactly as `gather_for_metrics` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100
LN2 = math.log(2.0)
# Upcasting logits to float32 for the log-softmax makes a copy; this many elements at a time
# (64 MiB of float32) keeps the copy bounded whatever the vocabulary.
_CHUNK_ELEMENTS = 1 << 24


def safe_exp(x: float) -> float:
    """exp() that returns inf instead of raising OverflowError."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


@dataclass
class TokenLossTotals:
    """Running sums for one evaluation: NLL in nats, target tokens, and UTF-8 bytes of target text."""

    nll: float = 0.0
    tokens: int = 0
    bytes: int = 0

    def add(self, nll: float, tokens: int, n_bytes: int = 0) -> None:
        self.nll += float(nll)
        self.tokens += int(tokens)
        self.bytes += int(n_bytes)

    @property
    def mean_nll(self) -> float:
        """Token-weighted mean negative log-likelihood (nats per token); NaN with no tokens."""
        return self.nll / self.tokens if self.tokens else math.nan

    @property
    def perplexity(self) -> float:
        return safe_exp(self.mean_nll) if self.tokens else math.nan

    @property
    def bits_per_token(self) -> float:
        return self.mean_nll / LN2 if self.tokens else math.nan

    @property
    def bits_per_byte(self) -> float | None:
        """Total bits over UTF-8 bytes of the target text: independent of the tokenizer, so models
        with different vocabularies compare fairly. None when bytes were not counted."""
        return self.nll / LN2 / self.bytes if self.bytes else None


def per_sample_nll(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    shift: bool,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed NLL (float64) and target-token count per sample, from logits `[B, T, V]` and labels `[B, T]`.

    `shift=True` for causal LMs (position t predicts label t+1); `shift=False` for encoder-decoder
    models and for labels that are already shifted. Computed in float32 whatever the logits' dtype."""
    if shift:
        logits = logits[:, :-1, :]
        labels = labels[:, 1:]
    batch, length, vocab = logits.shape
    labels = labels.to(logits.device)
    nll = torch.zeros(batch, length, dtype=torch.float32, device=logits.device)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, vocab * length))
    for start in range(0, batch, rows_per_chunk):
        part = slice(start, start + rows_per_chunk)
        chunk_logits = logits[part].float()
        nll[part] = torch.nn.functional.cross_entropy(
            chunk_logits.reshape(-1, vocab),
            labels[part].reshape(-1),
            ignore_index=ignore_index,
            reduction="none",
        ).view(-1, length)
    mask = labels != ignore_index
    return nll.double().sum(dim=-1), mask.sum(dim=-1)


def per_sample_nll_from_log_probs(
    log_probs: torch.Tensor, label_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same sums from per-token log-probabilities of the labels (as TRL's fused LM head returns)."""
    mask = label_mask.bool()
    nll = -(log_probs.double() * mask)
    return nll.sum(dim=-1), mask.sum(dim=-1)


def target_token_ids(labels: torch.Tensor, *, shift: bool, ignore_index: int = IGNORE_INDEX) -> list[list[int]]:
    """The predicted label ids of each sample, as lists (for decoding to text and counting bytes)."""
    if shift:
        labels = labels[:, 1:]
    rows = labels.detach().cpu().tolist()
    return [[t for t in row if t != ignore_index] for row in rows]


def utf8_bytes(texts: Sequence[str]) -> list[int]:
    return [len(t.encode("utf-8")) for t in texts]


def merge_rank_batches(per_rank: Sequence[Sequence[np.ndarray]], total: int | None) -> np.ndarray:
    """Put per-batch, per-sample rows from every rank back into dataset order and drop padding.

    Distributed evaluation deals batch k to rank k % world_size and repeats samples from the
    start of the dataset to even out the last round; `gather_for_metrics` undoes that by
    interleaving and truncating to the dataset length. This does the same for our rows
    (`total=None`, e.g. an iterable dataset: keep everything)."""
    steps = max((len(batches) for batches in per_rank), default=0)
    ordered = [batches[step] for step in range(steps) for batches in per_rank if step < len(batches)]
    if not ordered:
        return np.zeros((0, 3))
    rows = np.concatenate(ordered, axis=0)
    return rows[:total] if total is not None else rows
