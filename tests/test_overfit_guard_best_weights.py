"""OverfitGuard(restore_best_weights=...): which weights the model holds when training ends.

Each test runs a real tiny GPT-2 that overfits, then does what a user's script does next
(`trainer.save_model()`), reloads what was saved and measures its validation token loss again in a
fresh Trainer: it must be exactly the best (or, with the option off, the last) logged `eval_token_loss`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import GPT2LMHeadModel, TrainerCallback

from ft_callbacks import BestCheckpointSaver, ConfigurationError, OverfitGuard, toy

from .helpers import lm_trainer
from .test_overfit_guard_distributed import ddp_run  # noqa: F401  (the 2-process DDP run, as a fixture)

SCRIPTS = Path(__file__).parent / "dist_scripts"


def _token_losses(trainer) -> dict[int, float]:
    return {e["step"]: e["eval_token_loss"] for e in trainer.state.log_history if "eval_loss" in e}


def _reloaded_token_loss(tokenizer, corpus, folder, model) -> float:
    """The validation token loss of a model loaded from disk, on the same eval set, in a fresh Trainer."""
    fresh = lm_trainer(tokenizer, corpus, folder / "re-eval", [OverfitGuard()], model=model)
    return fresh.evaluate()["eval_token_loss"]


@pytest.mark.parametrize("setting", ["default", False])
def test_after_a_gap_stop_save_model_writes_the_best_weights(tokenizer, corpus, tmp_path, capsys, setting):
    options = {} if setting == "default" else {"restore_best_weights": setting}
    guard = OverfitGuard(patience=2, **options)
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [guard], max_steps=300)
    trainer.train()
    losses = _token_losses(trainer)
    assert guard.stop_rule == "gap" and guard.best_step < guard.policy.stop_step == max(losses)
    assert losses[guard.best_step] < losses[guard.policy.stop_step]  # the run did overfit after its best

    trainer.save_model(str(tmp_path / "final"))  # the script's end
    reloaded = _reloaded_token_loss(tokenizer, corpus, tmp_path, GPT2LMHeadModel.from_pretrained(tmp_path / "final"))
    out = capsys.readouterr().out
    if setting == "default":
        assert reloaded == losses[guard.best_step] == guard.best_token_loss
        assert f"The model holds the best weights, from step {guard.best_step}" in out
        end = [e for e in trainer.state.log_history if "ft_callbacks/restored_weights_step" in e]
        assert [e["ft_callbacks/restored_weights_step"] for e in end] == [guard.best_step]
    else:
        assert reloaded == losses[guard.policy.stop_step]
        assert f"The model keeps its last weights (step {guard.policy.stop_step}), not the best" in out


class _KeptWeights(TrainerCallback):
    """After each evaluation, what the guard holds in host memory (it is listed after the guard)."""

    def __init__(self, guard: OverfitGuard) -> None:
        self.guard = guard
        self.names: set[str] = set()
        self.steps: list[int] = []

    def on_evaluate(self, args, state, control, **kwargs):
        kept = self.guard._best_weights
        self.names |= set(kept.tensors)
        self.steps.append(kept.step)


def test_peft_keeps_only_the_adapter_and_saves_the_best_one(tokenizer, corpus, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"], task_type="CAUSAL_LM",
                      fan_in_fan_out=True)  # fmt: skip
    model = get_peft_model(toy.tiny_gpt2(tokenizer), lora)
    adapter = {n: p for n, p in model.named_parameters() if p.requires_grad}
    adapter_bytes = sum(p.numel() * p.element_size() for p in adapter.values())
    whole_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert adapter_bytes * 5 < whole_bytes
    # A budget the adapter fits in and the whole model does not: True would refuse a full copy.
    guard = OverfitGuard(patience=2, restore_best_weights=True, restore_best_weights_max_bytes=2 * adapter_bytes)
    watch = _KeptWeights(guard)
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [guard, watch], model=model, max_steps=300,
                         learning_rate=3e-2)  # fmt: skip
    trainer.train()
    losses = _token_losses(trainer)
    assert guard.stopped and guard.best_step < guard.policy.stop_step
    assert watch.names == set(adapter) and all("lora_" in n for n in watch.names)
    assert guard.best_step in watch.steps

    trainer.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / "adapter_model.safetensors").is_file()
    reloaded = PeftModel.from_pretrained(toy.tiny_gpt2(tokenizer), str(tmp_path / "final"))
    assert _reloaded_token_loss(tokenizer, corpus, tmp_path, reloaded) == losses[guard.best_step]


def test_a_full_model_over_the_memory_budget(tokenizer, corpus, tmp_path, capsys):
    # True: refused before the first step, naming the fixes.
    strict = OverfitGuard(restore_best_weights=True, restore_best_weights_max_bytes=100_000)
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "a", [strict], max_steps=20)
    with pytest.raises(ConfigurationError, match="restore_best_weights_max_bytes") as info:
        trainer.train()
    assert trainer.state.global_step == 0
    for fix in ("PEFT", "BestCheckpointSaver(load_best_at_end=True)", "restore_best_weights=False"):
        assert fix in str(info.value)
    # "auto" (the default): trains, says before step 1 that the model will end with its last weights.
    guard = OverfitGuard(restore_best_weights_max_bytes=100_000)
    lm_trainer(tokenizer, corpus, tmp_path / "b", [guard], max_steps=20).train()
    out = capsys.readouterr().out
    notice = out.index("keeps no copy of the best weights")
    assert notice < out.index("[ft_callbacks] step 10 ")
    assert "The model keeps its last weights: the weights (the whole model is trained) take" in out


def test_a_best_checkpoint_loader_decides_the_end_weights(tokenizer, corpus, tmp_path, capsys):
    """With BestCheckpointSaver(load_best_at_end=True) the guard keeps no copy and leaves the end to it,
    whatever the order of the callbacks (otherwise the last one to run would win)."""
    saver = BestCheckpointSaver(monitor="eval_loss", load_best_at_end=True)
    guard = OverfitGuard(patience=2)
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [saver, guard], max_steps=300)
    trainer.train()
    out = capsys.readouterr().out
    assert "OverfitGuard keeps no copy of the best weights: at the end of training BestCheckpointSaver" in out
    assert "BestCheckpointSaver(load_best_at_end=True) puts its best checkpoint's weights into the model." in out
    assert guard._best_weights is None
    fresh = lm_trainer(tokenizer, corpus, tmp_path / "re-eval", [], model=trainer.model)
    assert fresh.evaluate()["eval_loss"] == pytest.approx(saver.best_value, rel=1e-6)


def test_resume_says_which_weights_it_will_restore(tokenizer, corpus, tmp_path, capsys):
    out = tmp_path / "out"
    settings = {"max_steps": 40, "save_strategy": "steps", "save_steps": 20}
    first = OverfitGuard(patience=None, plateau_patience=None)
    lm_trainer(tokenizer, corpus, out, [first], **settings).train()
    assert first.best_step == 20  # then it overfits: steps 30 and 40 are worse
    capsys.readouterr()

    resumed = OverfitGuard(patience=None, plateau_patience=None)
    trainer = lm_trainer(tokenizer, corpus, out, [resumed], **settings)
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-20"))
    text = capsys.readouterr().out
    assert text.count("the best evaluation from step 20 on") == 1
    assert "The best before the restart (step 20, validation token loss" in text
    losses = _token_losses(trainer)
    session_best = min((s for s in losses if s > 20), key=lambda s: (losses[s], s))
    assert f"The model holds the best weights, from step {session_best}" in text
    trainer.save_model(str(tmp_path / "final"))
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "final")
    assert _reloaded_token_loss(tokenizer, corpus, tmp_path, model) == losses[session_best]


@pytest.mark.distributed
def test_ddp_every_rank_ends_with_the_best_weights(ddp_run):  # noqa: F811
    """tests/dist_scripts/overfit_guard_ddp.py: OverfitGuard(patience=2) gap-stops a 2-process DDP run;
    the evaluate() after training sees the best evaluation's weights on both ranks."""
    (r0, r1), _, _ = ddp_run
    best = min(r0["eval_perplexity"])
    assert r0["stop_rule"] == "gap" and r0["eval_perplexity"][-1] > best  # the last weights were worse
    assert r0["post_train_eval_perplexity"] == r1["post_train_eval_perplexity"] == pytest.approx(best, rel=1e-9)
    assert r0["post_train_hand_perplexity"] == pytest.approx(best, rel=1e-5)
