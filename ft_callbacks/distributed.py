"""The few collectives our callbacks need, on top of whatever process group the engine set up.

We never start our own process group: `torchrun`, `accelerate`, DeepSpeed and FSDP all initialise
`torch.distributed`, and everything here is a no-op in a single process.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from .core.perplexity import merge_rank_batches

T = TypeVar("T")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def _collective_device(preferred: torch.device | None) -> torch.device:
    # NCCL only moves CUDA tensors; gloo only CPU ones.
    if dist.get_backend() == "nccl":
        return preferred if preferred is not None and preferred.type == "cuda" else torch.device("cuda")
    return torch.device("cpu")


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a small tensor over ranks (in place on a copy); returns it unchanged in one process."""
    if not is_distributed():
        return values
    reduced = values.to(_collective_device(values.device)).clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced


def broadcast_from_main(obj: T) -> T:
    """Rank 0's value of a picklable object, on every rank (so all ranks act on one decision)."""
    if not is_distributed():
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj: T) -> list[T]:
    """Every rank's value, in rank order."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_eval_rows(batches: list[np.ndarray | None], eval_dataloader: Any, width: int) -> np.ndarray | None:
    """Every rank's per-sample rows of one evaluation (a list of [batch, width] arrays each), in
    dataset order with the samples repeated to even out the last round dropped. None when a batch
    could not be read on some rank (marked None there): numbers over part of the eval set, or rows
    shifted against the other ranks', would be silently wrong."""
    per_rank = all_gather_objects(batches)
    if any(batch is None for rank_batches in per_rank for batch in rank_batches):
        return None
    total = None
    if is_distributed():
        dataset = getattr(eval_dataloader, "dataset", None)
        try:
            total = len(dataset) if dataset is not None else None
        except TypeError:  # iterable dataset: nothing was repeated to even out batches
            total = None
    rows = merge_rank_batches(per_rank, total)
    return rows if len(rows) else np.zeros((0, width))
