"""The base model and its kept results: PEFT adapters really off, training mode restored, results
reused only under the same fingerprint, and written so a crash leaves no torn file."""

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from ft_callbacks.base_model import BaseResults, as_base_model, base_is_available, fingerprint, model_identity

NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def tiny_gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32, **NO_DROPOUT))


def test_peft_base_is_the_model_with_its_adapter_disabled():
    peft = pytest.importorskip("peft")
    model = tiny_gpt2()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        untrained = model(ids).logits.clone()
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["c_attn"], init_lora_weights=False))
    lora.train()
    with torch.no_grad():
        adapted = lora(ids).logits
    assert not torch.allclose(adapted, untrained)  # the adapter changes the outputs...
    with as_base_model(lora) as base:
        assert not base.training and not torch.is_grad_enabled()
        assert torch.allclose(base(ids).logits, untrained)  # ...and inside the block it is off
    assert lora.training  # training mode restored
    assert torch.allclose(lora(ids).logits, adapted)  # and the adapter is back on
    assert base_is_available(lora, global_step=100)


def test_a_full_fine_tune_is_its_base_only_before_the_first_step():
    model = tiny_gpt2()
    model.eval()
    with as_base_model(model):
        pass
    assert not model.training  # eval mode kept as it was
    assert base_is_available(model, 0) and not base_is_available(model, 1)


def test_results_are_reused_only_under_the_same_fingerprint(tmp_path):
    model = tiny_gpt2()
    key = fingerprint(model=model_identity(model), prompts=["a", "b"], max_new_tokens=8)
    assert key == fingerprint(max_new_tokens=8, prompts=["a", "b"], model=model_identity(tiny_gpt2(seed=1)))
    other = fingerprint(model=model_identity(model), prompts=["a", "c"], max_new_tokens=8)
    assert other != key
    store = BaseResults(tmp_path, "judge_outputs")
    assert store.load(key) is None and store.saved_fingerprint() is None
    store.save(key, {"outputs": ["x", "y"]})
    assert BaseResults(tmp_path, "judge_outputs").load(key) == {"outputs": ["x", "y"]}
    assert store.load(other) is None and store.saved_fingerprint() == key
    # A torn or foreign file is not results.
    (tmp_path / "ft_callbacks" / "base" / "judge_outputs.json").write_text("{not json")
    assert store.load(key) is None
    (tmp_path / "ft_callbacks" / "base" / "judge_outputs.json").write_text(json.dumps([1, 2]))
    assert store.load(key) is None and store.saved_fingerprint() is None
