"""Sharded engines (FSDP, DeepSpeed ZeRO-3): the few calls that must be collective.

When the parameters are sharded across ranks, no rank holds the whole model: a full copy exists only
once the engine gathers it, and that gather is a collective every rank must join, the same number of
times, in the same order. We never gather by hand; these functions call the engine's own API:

- FSDP (FSDP1 wrappers and FSDP2 `fully_shard`): `torch.distributed.checkpoint.state_dict`
  (`get_model_state_dict` / `set_model_state_dict` with full state dicts), the API accelerate itself
  calls for FSDP2 and which handles FSDP1 as well, whatever `state_dict_type` the user picked;
- DeepSpeed ZeRO-3: `Accelerator.get_state_dict(engine)` (DeepSpeed's consolidated 16-bit state dict,
  the call `Trainer.save_model` makes) and `deepspeed.zero.GatheredParameters(..., modifier_rank=0)`,
  DeepSpeed's documented way to change partitioned parameters, one module at a time.

A `TrainerCallback` is handed the model but not the Trainer, and under these engines the model it is
handed is not the object the engine manages (the FSDP1 wrapper, the DeepSpeed engine): `find_trainer`
reaches the Trainer that runs the callback.

Reading saved weights back (`read_saved_weights`, `load_weights_into`) lives here too: whole weights
on this process, or (through `load_full_state_dict`) spread by the engine.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any, Literal

import torch

from .distributed import rank

Engine = Literal["FSDP", "DeepSpeed ZeRO-3"]


def find_trainer(callback: Any) -> Any | None:
    """The `transformers.Trainer` whose callback list holds `callback`, found in the calling frames.

    Call it from a callback event: the Trainer calls every event from one of its own methods, a few
    frames up. None when there is none (a callback driven by hand)."""
    from transformers import Trainer

    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            handler = getattr(candidate, "callback_handler", None)
            if any(cb is callback for cb in getattr(handler, "callbacks", ())):
                return candidate
        frame = frame.f_back
    return None


def is_fsdp_model(model: Any) -> bool:
    try:
        from transformers.integrations.fsdp import is_fsdp_managed_module
    except ImportError:  # pragma: no cover - transformers without the helper
        return False
    return bool(is_fsdp_managed_module(model))


def deepspeed_zero3(trainer: Any | None = None) -> bool:
    """Whether DeepSpeed ZeRO stage 3 partitions the parameters (of `trainer`'s run, when given)."""
    plugin = getattr(getattr(getattr(trainer, "accelerator", None), "state", None), "deepspeed_plugin", None)
    if plugin is not None:
        return getattr(plugin, "zero_stage", None) == 3
    try:
        from transformers.integrations import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover
        return False
    return bool(is_deepspeed_zero3_enabled())


def sharded_engine(model: Any, trainer: Any | None = None) -> Engine | None:
    """'FSDP' or 'DeepSpeed ZeRO-3' when `model`'s parameters are sharded across ranks, else None."""
    if getattr(trainer, "is_fsdp_enabled", False) or is_fsdp_model(model):
        return "FSDP"
    if deepspeed_zero3(trainer):
        return "DeepSpeed ZeRO-3"
    return None


def zero3_config_error(trainer: Any) -> str | None:
    """Why DeepSpeed will refuse to hand over full weights at save time, checked before training."""
    config = getattr(getattr(trainer, "accelerator", None), "deepspeed_config", None) or {}
    zero = config.get("zero_optimization", {}) if isinstance(config, dict) else {}
    if zero.get("stage3_gather_16bit_weights_on_model_save", False) is True:
        return None
    return (
        "DeepSpeed ZeRO-3 hands over full weights only with "
        '"stage3_gather_16bit_weights_on_model_save": true in the "zero_optimization" section of the DeepSpeed '
        "config; set it (the Trainer's save_model needs it too)."
    )


def engine_model(trainer: Any | None, model: Any) -> Any:
    """The object the engine manages: the FSDP wrapper or DeepSpeed engine when a Trainer runs it."""
    wrapped = getattr(trainer, "model_wrapped", None)
    return wrapped if wrapped is not None else model


def full_state_dict(engine: Engine, model: Any, trainer: Any | None = None) -> dict[str, torch.Tensor]:
    """Gather the full weights. Collective: every rank calls it; rank 0 gets them (on CPU for FSDP),
    the other ranks may get an empty or partial dict."""
    if engine == "FSDP":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(engine_model(trainer, model), options=options)
    if trainer is None:
        raise RuntimeError("DeepSpeed ZeRO-3 weights are gathered through the Trainer's accelerator")
    return trainer.accelerator.get_state_dict(engine_model(trainer, model))


def load_full_state_dict(engine: Engine, model: Any, state_dict: dict[str, torch.Tensor], trainer: Any = None) -> None:
    """Put full weights (read on rank 0; other ranks may pass {}) into a sharded model, in place.
    Collective: every rank calls it. Keys absent from `state_dict` (weights tied to another one, which
    `save_pretrained` leaves out) keep their values."""
    if engine == "FSDP":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        # strict=False: the tied weights left out of the file keep their (tied) values. The file was
        # written by BestCheckpointSaver from this very model, so no other key can be missing.
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
        set_model_state_dict(engine_model(trainer, model), state_dict, options=options)
        return
    import deepspeed

    main = rank() == 0
    with torch.no_grad():
        for prefix, submodule in model.named_modules():
            params = dict(submodule.named_parameters(prefix=prefix, recurse=False))
            if not params:
                continue
            # Gathered on every rank, changed on rank 0, re-partitioned from rank 0's values on exit.
            with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=0):
                if main:
                    for name, param in params.items():
                        if name in state_dict:
                            param.data.copy_(state_dict[name].to(param.dtype))


def is_peft(model: Any) -> bool:
    """Whether `model` is a PEFT model (whose checkpoints hold the adapter only)."""
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def read_saved_weights(folder: str | os.PathLike) -> dict[str, Any]:
    """The weights `save_pretrained` wrote in `folder` (one file or an index of shards).

    Raises:
        FileNotFoundError: `folder` has no `model.safetensors` (nor an index of shards).
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.exists():
        files = [single]
    elif index.exists():
        shard_names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [folder / name for name in shard_names]
    else:
        raise FileNotFoundError(f"{folder} has no model.safetensors")
    state: dict[str, Any] = {}
    for path in files:
        state.update(load_file(str(path)))
    return state


def load_weights_into(model: Any, folder: str | os.PathLike) -> None:
    """Put the weights saved in `folder` (by `save_pretrained`) back into `model`, in place (a model
    whose parameters are whole on this process: single process, DDP, ZeRO-1/2). A PEFT model gets
    its adapter back.

    Raises:
        FileNotFoundError: `folder` holds no weights (no adapter for a PEFT model).
        RuntimeError: the saved weights do not match the model (tied weights left out are fine).
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    if is_peft(model):
        from peft import set_peft_model_state_dict

        adapter = folder / "adapter_model.safetensors"
        if not adapter.exists():
            raise FileNotFoundError(f"{folder} has no adapter_model.safetensors")
        set_peft_model_state_dict(model, load_file(str(adapter)))
        return
    result = model.load_state_dict(read_saved_weights(folder), strict=False)
    # save_pretrained leaves out tied weights (e.g. lm_head = embeddings); anything else is an error.
    tied = set()
    for getter in ("all_tied_weights_keys", "_tied_weights_keys"):
        keys = getattr(model, getter, None)
        if isinstance(keys, dict):
            tied.update(keys)
        elif isinstance(keys, (list, tuple, set)):
            tied.update(keys)
    missing = [k for k in result.missing_keys if k not in tied and not k.endswith("lm_head.weight")]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"the checkpoint in {folder} does not match the model: missing {missing[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]}"
        )


def generation_context(trainer: Any | None) -> contextlib.AbstractContextManager:
    """What generating needs around it. FSDP1 keeps the root module's parameters flat in its wrapper,
    so generating through the model gathers them first (as `Seq2SeqTrainer` does); FSDP2 and ZeRO-3
    gather inside each forward, which `synced_gpus=True` keeps collective."""
    wrapped = getattr(trainer, "model_wrapped", None)
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    if isinstance(wrapped, FullyShardedDataParallel):
        return FullyShardedDataParallel.summon_full_params(wrapped, writeback=False)
    return contextlib.nullcontext()
