"""OverfitGuard under TRL's SFTTrainer with a PEFT LoRA model.

SFTTrainer calls the model with `fused_lm_head=True` for training and evaluation: the output has no
logits, only per-token `log_probs` and a `label_mask`. OverfitGuard must still report the exact,
token-weighted perplexity. We check it against a hand computation from real logits (the same PEFT
model called without the fused head) over the same eval dataloader, at every evaluation.
"""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from transformers import TrainerCallback

from ft_callbacks import toy
from ft_callbacks.overfit_guard import OverfitGuard
from ft_callbacks.publish import SINK

peft = pytest.importorskip("peft")
trl = pytest.importorskip("trl")

MAX_STEPS = 20
EVAL_STEPS = 10


def exact_perplexity(model, dataloader) -> tuple[float, float, int]:
    """(perplexity, mean NLL, predicted tokens) over the whole dataloader, from logits: one plain forward
    per batch (no fused head), labels shifted by one, ignore_index -100, summed NLL / token count."""
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    try:
        with torch.no_grad():
            for batch in dataloader:
                inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "position_ids")}
                # No labels: the forward returns logits (the fused head only runs with fused_lm_head=True).
                out = model(**inputs)
                logits = out.logits
                assert isinstance(logits, torch.Tensor) and logits.dim() == 3
                labels = batch["labels"][:, 1:]
                logits = logits[:, :-1, :].float()
                nll += (
                    torch.nn.functional.cross_entropy(
                        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="sum"
                    )
                    .double()
                    .item()
                )
                count += int((labels != -100).sum())
    finally:
        model.train(was_training)
    assert count > 0
    return math.exp(nll / count), nll / count, count


class HandPerplexity(TrainerCallback):
    """At every evaluation, recompute the perplexity by hand with the model as it is at that step."""

    def __init__(self) -> None:
        self.trainer = None
        self.values: dict[int, tuple[float, float, int]] = {}

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.values[state.global_step] = exact_perplexity(self.trainer.model, self.trainer.get_eval_dataloader())


class OutputKinds:
    """Records what the model returned in eval mode, to prove the fused head (no logits) was in use."""

    def __init__(self, model) -> None:
        self.eval_outputs: list[tuple[str, bool, bool]] = []
        self._handle = model.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output):
        if not module.training and kwargs.get("labels") is not None:
            has_logits = getattr(output, "logits", None) is not None
            has_log_probs = getattr(output, "log_probs", None) is not None
            self.eval_outputs.append((type(output).__name__, has_logits, has_log_probs))

    def remove(self) -> None:
        self._handle.remove()


def _split_on_space(text: str, at: int = 40) -> tuple[str, str]:
    """Prompt/completion split at a word boundary (so the prompt's tokens are a prefix of the whole)."""
    cut = text.find(" ", at)
    cut = cut if cut > 0 else len(text) // 2
    return text[:cut], text[cut:]


def _dataset(texts: list[str], kind: str) -> Dataset:
    if kind == "text":
        return Dataset.from_dict({"text": list(texts)})
    pairs = [_split_on_space(t) for t in texts]
    return Dataset.from_dict({"prompt": [p for p, _ in pairs], "completion": [c for _, c in pairs]})


@pytest.mark.parametrize("kind", ["text", "prompt_completion"])
def test_sft_peft_exact_perplexity(tokenizer, corpus, tmp_path, kind):
    from peft import LoraConfig, PeftModel
    from trl import SFTConfig, SFTTrainer

    train = _dataset(corpus[:32], kind)
    evaluation = _dataset(corpus[200:237], kind)  # 37 examples: the last eval batch is short
    config = SFTConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=MAX_STEPS,
        eval_strategy="steps",
        eval_steps=EVAL_STEPS,
        logging_steps=EVAL_STEPS,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=2e-2,
        max_length=64,
        packing=False,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
    )
    lora = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["c_attn"], task_type="CAUSAL_LM", fan_in_fan_out=True
    )
    hand = HandPerplexity()
    guard = OverfitGuard()
    trainer = SFTTrainer(
        model=toy.tiny_gpt2(tokenizer),
        args=config,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[guard, hand],
    )
    hand.trainer = trainer
    assert isinstance(trainer.model, PeftModel)
    kinds = OutputKinds(trainer.model)
    try:
        trainer.train()
    finally:
        kinds.remove()

    # The eval forwards really went through the fused head: no logits, per-token log-probs instead.
    assert kinds.eval_outputs
    for name, has_logits, has_log_probs in kinds.eval_outputs:
        assert name == "FusedCausalLMOutput" and not has_logits and has_log_probs
    # ... and the guard measured them, without falling back to exp(eval_loss) or a probe error.
    assert "ppl_fallback" not in SINK._notices
    assert not [key for key in SINK._notices if key.startswith("probe:")]

    # (1) every evaluation's log_history entry carries our metrics beside the Trainer's eval_loss.
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    assert [e["step"] for e in evals] == list(range(EVAL_STEPS, MAX_STEPS + 1, EVAL_STEPS))
    for entry in evals:
        assert "eval_perplexity" in entry and "eval_token_loss" in entry, entry
        assert math.isclose(entry["eval_token_loss"], math.log(entry["eval_perplexity"]), rel_tol=1e-9)

    # (2) the perplexity is exactly exp(summed NLL / predicted tokens) over the eval set, at every step.
    assert sorted(hand.values) == [e["step"] for e in evals]
    for entry in evals:
        ppl, mean_nll, _ = hand.values[entry["step"]]
        assert math.isclose(entry["eval_perplexity"], ppl, rel_tol=1e-4), (entry["step"], entry["eval_perplexity"], ppl)
        assert math.isclose(entry["eval_token_loss"], mean_nll, rel_tol=1e-4)
    # The weights moved between the two evaluations, and the guard followed them.
    first, last = (hand.values[e["step"]][0] for e in (evals[0], evals[-1]))
    assert first != last

    # (3) the training-window loss is present, finite, and close to the Trainer's own logged loss
    # over the same steps (logging_steps == eval_steps); the gap is consistent with it.
    logged = {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e and "eval_loss" not in e}
    for entry in evals:
        train_loss = entry["eval_train_loss"]
        assert math.isfinite(train_loss)
        assert math.isclose(train_loss, logged[entry["step"]], rel_tol=0.05), (train_loss, logged)
        assert math.isclose(entry["eval_loss_gap"], entry["eval_token_loss"] - train_loss, rel_tol=1e-9, abs_tol=1e-12)
