"""OverfitGuard settings that cannot make sense, rules that cannot act, and what the console says."""

from __future__ import annotations

import math
import re

import pytest
import torch
from transformers import GPT2LMHeadModel

from ft_callbacks import ConfigurationError, OverfitGuard, toy

from .helpers import lm_trainer


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"divergence_threshold": -1}, "never below 0"),
        ({"divergence_threshold": 0.0}, "would stop training at the first step"),
        ({"divergence_threshold": "5"}, "without quotes"),
        ({"patience": "3"}, r"write patience=3, a number, without quotes"),
        ({"plateau_patience": True}, "a bool is not a number here"),
        ({"min_steps": True}, "a bool is not a number here"),
        ({"min_delta": "0.1"}, r"write min_delta=0.01, a number, without quotes"),
        ({"min_delta": math.inf}, "min_delta=inf is not valid: use a finite number"),
        ({"stop_on_nonfinite": "no"}, "stop_on_nonfinite='no' is not valid: use True or False"),
        ({"count_bytes": "yes"}, "count_bytes='yes' is not valid"),
        ({"train_sample_seed": "1"}, "train_sample_seed='1' is not valid"),
        ({"restore_best_weights": "yes"}, "restore_best_weights='yes' is not valid: use 'auto'"),
        ({"restore_best_weights": None}, "restore_best_weights=None is not valid"),
        ({"restore_best_weights_max_bytes": 0}, "use a number of bytes"),
        ({"restore_best_weights_max_bytes": True}, "use a number of bytes"),
        ({"restore_best_weights_max_bytes": "1GB"}, "use a number of bytes"),
        ({"restore_best_weights": False, "restore_best_weights_max_bytes": 10**9}, "drop one of them"),
    ],
)
def test_nonsense_settings_fail_at_construction(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        OverfitGuard(**kwargs)


class TupleGPT2(GPT2LMHeadModel):
    """A model that returns plain tuples (as older or hand-written models do): no `.loss` to read."""

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs).to_tuple()


def _tuple_model(tokenizer) -> TupleGPT2:
    config = toy.tiny_gpt2(tokenizer).config
    torch.manual_seed(0)
    return TupleGPT2(config)


def _block(out: str, step: int) -> str:
    """The console block of the evaluation at `step`: its head line and the indented lines under it."""
    lines = out.splitlines()
    (start,) = [i for i, line in enumerate(lines) if line.startswith(f"[ft_callbacks] step {step} | eval_loss")]
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith(" "):
            break
        block.append(line)
    return "\n".join(block)


def test_without_any_training_loss_the_gap_rule_says_once_it_is_off(tokenizer, corpus, tmp_path, capsys):
    guard = OverfitGuard()
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [guard], model=_tuple_model(tokenizer), max_steps=30,
                         logging_steps=1000)  # fmt: skip
    trainer.train()
    out = capsys.readouterr().out
    assert out.count("OverfitGuard's gap rule is off for this run") == 1
    assert "logging_steps=1000 > max_steps=30" in out and "train_sample_size=N" in out
    assert "gap widening" not in out  # no counter for a rule that cannot act
    assert all("plateau 0/5" in _block(out, step) for step in (10, 20, 30))


def test_a_training_loss_every_other_evaluation_shows_the_gap_only_there(tokenizer, corpus, tmp_path, capsys):
    guard = OverfitGuard()
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [guard], model=_tuple_model(tokenizer), max_steps=40,
                         logging_steps=20)  # fmt: skip
    trainer.train()
    out = capsys.readouterr().out
    assert out.count("OverfitGuard has no training loss at step 10") == 1
    assert "The gap rule counts only evaluations with a training loss" in out
    for step, measured in ((10, False), (20, True), (30, False), (40, True)):
        block = _block(out, step)
        assert ("gap widening" in block) == measured, block
    assert len(guard.policy.gap.gaps) == 2


def _too_precise(text: str) -> list[str]:
    """Decimal numbers written with more than 4 significant digits."""
    found = []
    for number in re.findall(r"(?<![\w.])\d+\.\d+(?![\d.]*e)", text):
        digits = number.replace(".", "").lstrip("0")
        if len(digits) > 4:
            found.append(number)
    return found


@pytest.mark.parametrize(
    ("options", "rule"),
    [({"patience": None, "plateau_patience": 1}, "plateau"), ({"divergence_threshold": 5.0}, "divergence")],
)
def test_stop_messages_show_about_four_significant_digits(tokenizer, corpus, tmp_path, capsys, options, rule):
    guard = OverfitGuard(**options)
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [guard], max_steps=100)
    trainer.train()
    assert guard.stop_rule == rule
    messages = [line for line in capsys.readouterr().out.splitlines() if "OverfitGuard" in line]
    assert any("stops training" in m for m in messages) and any("OverfitGuard: stopped early" in m for m in messages)
    assert not [m for m in messages if _too_precise(m)], messages
    # Full precision stays in the records.
    if guard.best_token_loss is not None:
        logged = [e["ft_callbacks/best_eval_token_loss"] for e in trainer.state.log_history
                  if "ft_callbacks/best_eval_token_loss" in e]  # fmt: skip
        assert logged[-1] == guard.best_token_loss and _too_precise(repr(logged[-1]))
