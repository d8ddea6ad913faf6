"""A forward hook that sees every per-token loss the model computes, without storing logits.

In eval mode, each forward pass that carries `labels` adds one row per sample (summed NLL, target
tokens, UTF-8 bytes of the target text) to the current ledger. NLL comes from the logits (shifted
for causal LMs, float32, `ignore_index=-100`) — never from the model's returned `loss`, whose token
count is wrong for some models — or from per-token log-probabilities where a trainer returns those
instead of logits (TRL's fused LM head).

In train mode it adds the step's summed NLL and target-token count to device tensors (no host
sync); `read_step()` collects them once per optimizer step, reduced over ranks. The model's loss is
`sum / num_items_in_batch` when the Trainer passes that count, else a mean over the batch's own
targets, so multiplying back by that divisor recovers the true sum without a second softmax.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ._compat import is_causal_lm
from .core.perplexity import (
    IGNORE_INDEX,
    per_sample_nll,
    per_sample_nll_from_log_probs,
    target_token_ids,
    utf8_bytes,
)
from .distributed import all_reduce_sum
from .publish import notice_once


def _field(output: Any, name: str) -> Any:
    if isinstance(output, dict):
        return output.get(name)
    return getattr(output, name, None)


class TokenLossProbe:
    """Attach to a model with `attach(model, tokenizer)`; read with `take()` and `read_step()`."""

    def __init__(self, count_bytes: bool = True) -> None:
        self.count_bytes = count_bytes
        self.model: Any = None
        self.tokenizer: Any = None
        self.shift = True
        self._handle: Any = None
        self.ledger = "eval"
        self._rows: dict[str, list[np.ndarray | None]] = {"eval": [], "sample": []}
        self.labels_without_scores = 0  # eval passes with labels but neither logits nor log-probs
        self._step: torch.Tensor | None = None
        self.train_passes = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def attach(self, model: Any, tokenizer: Any = None) -> None:
        if tokenizer is not None:
            self.tokenizer = tokenizer
        if model is None or model is self.model:
            return
        self.detach()
        self.model = model
        self.shift = is_causal_lm(model)
        self._handle = model.register_forward_hook(self._hook, with_kwargs=True)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
        self._handle = None
        self.model = None

    def reset_eval(self) -> None:
        self._rows["eval"] = []
        self.labels_without_scores = 0

    def take(self, ledger: str = "eval") -> list[np.ndarray | None]:
        """The rows of one ledger since the last take, per batch ([B, 3]: nll, tokens, bytes; None for a
        batch whose losses could not be read)."""
        rows, self._rows[ledger] = self._rows[ledger], []
        return rows

    def read_step(self) -> tuple[float, float]:
        """(summed NLL, target tokens) of the training forwards since the last call, over all ranks.
        (0, 0) when the model returned no loss; NaN/inf pass through so they can stop training."""
        step, self._step = self._step, None
        if step is None:
            step = torch.zeros(2, dtype=torch.float32)
        nll, tokens = all_reduce_sum(step).tolist()
        return nll, tokens

    # -- the hook ----------------------------------------------------------------------------
    def _hook(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        try:
            if module.training:
                self._train_pass(kwargs, output)
            else:
                self._eval_pass(kwargs, output)
        except Exception as exc:  # measuring must never break the user's forward pass
            if not module.training:
                self._rows[self.ledger].append(None)  # a hole, so the ranks' batches still line up
            notice_once(
                f"probe:{type(exc).__name__}",
                f"could not read per-token losses from the model output ({type(exc).__name__}: {exc}); "
                "perplexity falls back to exp(eval_loss).",
            )

    def _targets(self, kwargs: dict) -> tuple[torch.Tensor | None, bool]:
        shift_labels = kwargs.get("shift_labels")
        if isinstance(shift_labels, torch.Tensor):
            return shift_labels, False
        labels = kwargs.get("labels")
        if isinstance(labels, torch.Tensor) and labels.dim() >= 2:
            return labels, self.shift
        return None, False

    def _eval_pass(self, kwargs: dict, output: Any) -> None:
        labels, shift = self._targets(kwargs)
        if labels is None:
            return  # e.g. generate(): nothing to score
        logits = _field(output, "logits")
        log_probs = _field(output, "log_probs")
        if isinstance(logits, torch.Tensor) and logits.dim() == 3:
            nll, tokens = per_sample_nll(logits.detach(), labels, shift=shift)
        elif isinstance(log_probs, torch.Tensor) and _field(output, "label_mask") is not None:
            mask = _field(output, "label_mask")
            nll, tokens = per_sample_nll_from_log_probs(log_probs.detach(), mask)
        else:
            self.labels_without_scores += 1
            return
        n_bytes = [0] * len(nll)
        if self.count_bytes and self.ledger == "eval" and self.tokenizer is not None:
            targets = target_token_ids(labels, shift=shift)
            texts = self.tokenizer.batch_decode(targets, skip_special_tokens=True)
            n_bytes = utf8_bytes(texts)
        rows = np.stack(
            [nll.cpu().numpy(), tokens.cpu().numpy().astype(np.float64), np.asarray(n_bytes, dtype=np.float64)],
            axis=1,
        )
        self._rows[self.ledger].append(rows)

    def _train_pass(self, kwargs: dict, output: Any) -> None:
        log_probs = _field(output, "log_probs")
        mask = _field(output, "label_mask")
        if isinstance(log_probs, torch.Tensor) and isinstance(mask, torch.Tensor):
            nll, tokens = per_sample_nll_from_log_probs(log_probs.detach(), mask)
            pair = torch.stack([nll.sum().float(), tokens.sum().float()])
        else:
            loss = _field(output, "loss")
            labels, shift = self._targets(kwargs)
            if not isinstance(loss, torch.Tensor) or labels is None:
                return
            targets = labels[..., 1:] if shift else labels
            tokens = (targets != IGNORE_INDEX).sum().float()
            divisor = kwargs.get("num_items_in_batch")
            if divisor is None:
                divisor = tokens.to(loss.device)  # labels may sit on another device (model parallel)
            elif isinstance(divisor, torch.Tensor):
                divisor = divisor.to(loss.device).float()
            pair = torch.stack([loss.detach().float().reshape(()) * divisor, tokens.to(loss.device)])
        self.train_passes += 1
        self._step = pair if self._step is None else self._step + pair.to(self._step.device)


def mean_or_nan(total: float, count: float) -> float:
    return total / count if count else math.nan
