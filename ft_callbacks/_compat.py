"""What differs between the transformers versions we support (4.46+ and 5.x), in one place."""

from __future__ import annotations

from typing import Any

import transformers
from packaging.version import Version

TRANSFORMERS_VERSION = Version(transformers.__version__)

try:  # moved around between releases; the naming is what matters
    from transformers.integrations.integration_utils import rewrite_logs as _hf_rewrite_logs
except ImportError:  # pragma: no cover
    _hf_rewrite_logs = None


def rewrite_logs(logs: dict[str, Any]) -> dict[str, Any]:
    """The key names WandbCallback uses (`eval_x` -> `eval/x`, `test_x` -> `test/x`, else `train/x`)."""
    if _hf_rewrite_logs is not None:
        return _hf_rewrite_logs(logs)
    out = {}
    for key, value in logs.items():  # pragma: no cover - fallback
        if key.startswith("eval_"):
            out["eval/" + key[5:]] = value
        elif key.startswith("test_"):
            out["test/" + key[5:]] = value
        else:
            out["train/" + key] = value
    return out


def eval_strategy(args: Any) -> str:
    """`eval_strategy` as a plain string ("no", "steps", "epoch"); older releases call it `evaluation_strategy`."""
    value = getattr(args, "eval_strategy", None)
    if value is None:
        value = getattr(args, "evaluation_strategy", "no")
    return str(getattr(value, "value", value))


def save_strategy(args: Any) -> str:
    value = getattr(args, "save_strategy", "no")
    return str(getattr(value, "value", value))


def processing_class(kwargs: dict[str, Any]) -> Any:
    """The tokenizer/processor a callback event carries (`processing_class` since 4.46, `tokenizer` before)."""
    return kwargs.get("processing_class") or kwargs.get("tokenizer")


def strip_ddp(model: Any) -> Any:
    """The model inside a DDP-style wrapper (one with `.module` and no config); a PEFT model stays one."""
    while hasattr(model, "module") and not hasattr(model, "config"):
        model = model.module
    return model


def unwrap_model(model: Any) -> Any:
    """The underlying transformers model of a PEFT or DDP wrapper."""
    seen = 0
    while seen < 8:
        seen += 1
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module") and not hasattr(model, "config"):
            model = model.module
        else:
            break
    return model


def is_causal_lm(model: Any) -> bool:
    """Whether labels must be shifted by one to line up with logits (decoder-only LMs)."""
    base = unwrap_model(model)
    config = getattr(base, "config", None)
    if config is not None and getattr(config, "is_encoder_decoder", False):
        return False
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        causal_names = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    except ImportError:  # pragma: no cover
        causal_names = set()
    name = type(base).__name__
    return name in causal_names or name.endswith(("ForCausalLM", "LMHeadModel"))
