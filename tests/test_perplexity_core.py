"""Exact token-weighted NLL sums, checked against a direct computation with plain tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ft_callbacks.core.perplexity import (
    TokenLossTotals,
    merge_rank_batches,
    per_sample_nll,
    per_sample_nll_from_log_probs,
    safe_exp,
    target_token_ids,
)


def _direct_nll(logits, labels, shift):
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1] - (1 if shift else 0)):
            label = labels[b, t + 1] if shift else labels[b, t]
            if label == -100:
                continue
            log_probs = torch.log_softmax(logits[b, t].double(), dim=-1)
            total -= log_probs[label].item()
            count += 1
    return total, count


@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_sample_nll_matches_direct_sum(shift, dtype):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 11, generator=gen).to(dtype)
    labels = torch.randint(0, 11, (3, 7), generator=gen)
    labels[0, 4:] = -100  # padding
    labels[2, :2] = -100  # a masked prompt
    nll, tokens = per_sample_nll(logits, labels, shift=shift)
    total, count = _direct_nll(logits.float(), labels, shift)
    assert int(tokens.sum()) == count
    assert float(nll.sum()) == pytest.approx(total, rel=1e-5)


def test_chunking_does_not_change_the_result(monkeypatch):
    import ft_callbacks.core.perplexity as perplexity

    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 6, 13, generator=gen)
    labels = torch.randint(0, 13, (5, 6), generator=gen)
    whole, _ = per_sample_nll(logits, labels, shift=True)
    monkeypatch.setattr(perplexity, "_CHUNK_ELEMENTS", 13)  # one row per chunk
    chunked, _ = per_sample_nll(logits, labels, shift=True)
    assert torch.allclose(whole, chunked)


def test_from_log_probs():
    log_probs = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    nll, tokens = per_sample_nll_from_log_probs(log_probs, mask)
    assert nll.tolist() == [3.0, 0.5]
    assert tokens.tolist() == [2, 1]


def test_totals_and_overflow():
    totals = TokenLossTotals()
    assert math.isnan(totals.perplexity) and totals.bits_per_byte is None
    totals.add(nll=12.0, tokens=4, n_bytes=16)
    totals.add(nll=6.0, tokens=2, n_bytes=8)
    assert totals.mean_nll == pytest.approx(3.0)
    assert totals.perplexity == pytest.approx(math.exp(3.0))
    assert totals.bits_per_token == pytest.approx(3.0 / math.log(2))
    assert totals.bits_per_byte == pytest.approx(18.0 / math.log(2) / 24)
    huge = TokenLossTotals(nll=1e6, tokens=1)
    assert huge.perplexity == math.inf
    assert safe_exp(1e6) == math.inf


def test_target_token_ids():
    labels = torch.tensor([[5, 6, -100], [-100, 7, 8]])
    assert target_token_ids(labels, shift=True) == [[6], [7, 8]]
    assert target_token_ids(labels, shift=False) == [[5, 6], [7, 8]]


def test_merge_rank_batches_restores_order_and_drops_repeats():
    # dataset of 5 samples, batch 2, 2 ranks: rank 0 gets batches 0 and 2, rank 1 gets batch 1 and
    # a batch padded by repeating samples 0 and 1.
    def rows(ids):
        return np.array([[i, 1, 0] for i in ids], dtype=float)

    per_rank = [[rows([0, 1]), rows([4, 0])], [rows([2, 3]), rows([1, 2])]]
    merged = merge_rank_batches(per_rank, total=5)
    assert merged[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert len(merge_rank_batches(per_rank, total=None)) == 8
    assert merge_rank_batches([[], []], total=3).shape == (0, 3)
