"""docs/writing_a_callback.md: its example callback, exactly as written there, in a real run."""

from __future__ import annotations

import re
import types

import pytest

from .helpers import REPO, lm_trainer

SMALL = {"eval_size": 16, "train_size": 24}
SETTINGS = {"max_steps": 200, "eval_steps": 5, "logging_steps": 5, "save_strategy": "steps", "save_steps": 5,
            "lr_scheduler_type": "constant", "learning_rate": 1e-2, "report_to": "none"}  # fmt: skip


def _example() -> types.ModuleType:
    text = (REPO / "docs" / "writing_a_callback.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert len(code.splitlines()) <= 60  # "about 50 lines"
    module = types.ModuleType("writing_a_callback_example")
    exec(compile(code, "docs/writing_a_callback.md", "exec"), module.__dict__)
    return module


@pytest.mark.parametrize("restore_flag", [False, True])
def test_the_documented_callback_adds_its_metric_stops_and_resumes(tokenizer, corpus, tmp_path, restore_flag):
    example = _example()
    guard = example.WeightNormGuard(max_growth=1.02)
    whole = lm_trainer(tokenizer, corpus, tmp_path / "whole", [guard], **SMALL, **SETTINGS)
    whole.train()
    norms = {e["step"]: e["eval_weight_norm"] for e in whole.state.log_history if "eval_weight_norm" in e}
    assert guard.stop_step == whole.state.global_step < 200
    assert norms[guard.stop_step] > 1.02 * norms[5]
    assert all(norms[s] <= 1.02 * norms[5] for s in norms if s < guard.stop_step)
    stop = [e for e in whole.state.log_history if "ft_callbacks/weight_norm_stop_step" in e]
    assert stop and stop[0]["ft_callbacks/weight_norm_stop_step"] == guard.stop_step

    # Interrupted at step 10 (after the first evaluation), resumed by new objects, as a new process would.
    out = tmp_path / "resumed"
    first = example.WeightNormGuard(max_growth=1.02)
    lm_trainer(tokenizer, corpus, out, [first], **SMALL, **{**SETTINGS, "max_steps": 10}).train()
    again = example.WeightNormGuard(max_growth=1.02)
    trainer = lm_trainer(tokenizer, corpus, out, [again], **SMALL, **SETTINGS,
                         restore_callback_states_from_checkpoint=restore_flag)  # fmt: skip
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-10"))
    assert again.first_norm == pytest.approx(guard.first_norm)  # restored, not re-measured after training
    assert again.stop_step == guard.stop_step
    assert [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, example.WeightNormGuard)] == [again]


def _second_example() -> types.ModuleType:
    """The doc's second python block: a callback that compares with the base model."""
    text = (REPO / "docs" / "writing_a_callback.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, re.S)[1]
    module = types.ModuleType("writing_a_callback_base_example")
    exec(compile(code, "docs/writing_a_callback.md", "exec"), module.__dict__)
    return module


def test_the_documented_base_model_callback_measures_its_base_once_and_stops(tokenizer, corpus, tmp_path):
    import torch

    example = _second_example()
    ids = torch.tensor([tokenizer(corpus[300])["input_ids"][:32]])
    probe = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    settings = {**SETTINGS, "max_steps": 10, "learning_rate": 5e-2}
    # max_rise below zero: the first evaluation stops whatever the probe loss did.
    guard = example.ProbeLossGuard(probe, max_rise=-100.0)
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "run", [guard], **SMALL, **settings)
    trainer.model.eval()
    with torch.no_grad():
        untrained = float(trainer.model(**probe).loss)
    trainer.train()
    assert guard.base_loss == pytest.approx(untrained)  # measured on the model before any step
    assert trainer.state.global_step == 5  # stopped at the first evaluation
    rise = [e["eval_probe_loss_rise"] for e in trainer.state.log_history if "eval_probe_loss_rise" in e]
    stop = [e for e in trainer.state.log_history if "ft_callbacks/probe_loss_stop_step" in e]
    assert len(rise) == 1 and stop and stop[0]["ft_callbacks/probe_loss_stop_step"] == 5
    # A second run into the same folder (a resume) reuses the saved base instead of re-measuring it.
    again = example.ProbeLossGuard(probe, max_rise=-100.0)
    resumed = lm_trainer(tokenizer, corpus, tmp_path / "run", [again], **SMALL, **{**settings, "max_steps": 15})
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-5"))
    assert again.base_loss == pytest.approx(untrained)
