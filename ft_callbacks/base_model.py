"""The model a fine-tune started from, and what it scored: the "base" every comparison is against.

Two callbacks compare the fine-tuned model with its base: the judge (win rate against the base
model's answers) and ForgettingGuard (benchmark scores against the base's). Both need the same two
things, kept here so they behave the same way:

- `as_base_model(model)`: the live model as the base model. For a PEFT model that is the same model
  with its adapters disabled (exactly the weights training started from, at any step); for a full
  fine-tune it is the model itself, which is the base only before the first training step.
- `BaseResults`: the base's results (outputs, scores) kept under `output_dir/ft_callbacks/base/` with
  a fingerprint of what produced them, so a resumed run reuses them and never recomputes its "base"
  from trained weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

from .engines import is_peft
from .records import read_json, write_record

BASE_FOLDER = os.path.join("ft_callbacks", "base")


def base_is_available(model: Any, global_step: int) -> bool:
    """Whether `as_base_model(model)` gives the base model now: always for a PEFT model (its adapters
    can be disabled), else only before the first training step."""
    return is_peft(model) or int(global_step) == 0


@contextlib.contextmanager
def as_base_model(model: Any) -> Iterator[Any]:
    """The live model as its base model, in eval mode and without gradients; training mode is
    restored afterwards. PEFT adapters are disabled inside the block (no copy of the weights).

    Example:
        with as_base_model(model) as base:
            outputs = base.generate(**inputs)
    """
    import torch

    was_training = model.training
    adapters_off = model.disable_adapter() if is_peft(model) else contextlib.nullcontext()
    model.eval()
    try:
        with adapters_off, torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def fingerprint(**parts: Any) -> str:
    """A short stable hash of what produced a result (model, settings, prompts, tasks): results
    are reused only when it matches."""
    text = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def model_identity(model: Any) -> dict[str, Any]:
    """What names the base model in a fingerprint: its name or path, its config and its size (not
    its weights, which training changes)."""
    base = model.get_base_model() if is_peft(model) else model
    config = getattr(base, "config", None)
    try:
        config_text = config.to_json_string(use_diff=True) if config is not None else ""
    except Exception:  # a config that cannot serialise still has a repr
        config_text = repr(config)
    return {
        "name_or_path": getattr(config, "_name_or_path", ""),
        "config": hashlib.sha256(config_text.encode()).hexdigest()[:16],
        "parameters": sum(p.numel() for p in base.parameters()),
        "class": type(base).__name__,
    }


class BaseResults:
    """The base model's results for one purpose (`name`), kept as JSON in `output_dir` with the
    fingerprint of what produced them.

    Args:
        output_dir: the run's output directory (`TrainingArguments.output_dir`).
        name: what the results are, e.g. `"judge_outputs"` or `"forgetting_scores"`.

    Example:
        store = BaseResults(args.output_dir, "forgetting_scores")
        scores = store.load(key)
        if scores is None:
            scores = evaluate_base()
            store.save(key, scores)
    """

    def __init__(self, output_dir: str | os.PathLike, name: str) -> None:
        self.path = os.path.join(os.fspath(output_dir), BASE_FOLDER, f"{name}.json")

    def load(self, key: str) -> Any | None:
        """The saved results if they were produced with fingerprint `key`, else None."""
        saved = read_json(self.path)
        if not isinstance(saved, dict) or saved.get("fingerprint") != key:
            return None
        return saved.get("results")

    def saved_fingerprint(self) -> str | None:
        """The fingerprint of what is saved (to say why saved results were not reused), or None."""
        saved = read_json(self.path)
        return saved.get("fingerprint") if isinstance(saved, dict) else None

    def save(self, key: str, results: Any) -> None:
        """Write the results atomically (a crash leaves the old file or the new one, never half)."""
        write_record(self.path, {"fingerprint": key, "results": results})
