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
