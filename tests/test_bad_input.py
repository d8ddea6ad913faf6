"""Mistakes in how the callbacks meet TrainingArguments, the model and the tokenizer: each a clear
ConfigurationError naming the fix, before the first training step (docs/bad_input.md lists every
mistake and the test that covers it)."""

from __future__ import annotations

from copy import deepcopy

import pytest

from ft_callbacks import ConfigurationError, GenerationScorer, LabelScorer, OverfitGuard

from .helpers import lm_trainer

PROMPTS = {"prompts": ["Return the"], "references": ["number of items"], "metrics": ("exact_match",)}


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: GenerationScorer(**PROMPTS), r"eval_strategy='no'.*every_n_steps"),
        (lambda: LabelScorer(), r"LabelScorer scores at evaluations, but eval_strategy='no'"),
        (lambda: OverfitGuard(), r"OverfitGuard needs evaluations"),
    ],
    ids=["generation_scorer", "label_scorer", "overfit_guard"],
)
def test_no_evaluations_is_refused_before_the_first_step(tokenizer, corpus, tmp_path, make, match):
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [make()], max_steps=3, eval_strategy="no")
    with pytest.raises(ConfigurationError, match=match):
        trainer.train()
    assert trainer.state.global_step == 0


def test_generation_on_a_step_schedule_needs_no_evaluations(tokenizer, corpus, tmp_path):
    scorer = GenerationScorer(**PROMPTS, every_n_steps=2, max_new_tokens=3)
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [scorer], max_steps=4, eval_strategy="no")
    trainer.train()
    assert [e["step"] for e in trainer.state.log_history if "eval_exact_match" in e] == [0, 2, 4]


def test_tokenizer_with_neither_pad_nor_eos_token(tokenizer, corpus, tmp_path):
    broken = deepcopy(tokenizer)
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [GenerationScorer(**PROMPTS)], max_steps=3)
    trainer.processing_class = broken
    trainer.callback_handler.processing_class = broken
    broken.pad_token = None
    broken.eos_token = None
    with pytest.raises(ConfigurationError, match="neither a pad token nor an EOS token"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_a_generation_metric_monitored_without_a_scorer_is_caught_at_step_zero(tokenizer, corpus, tmp_path):
    guard = OverfitGuard(monitor="eval_rougeL")
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [guard], max_steps=5, eval_on_start=True)
    with pytest.raises(ConfigurationError, match=r"'eval_rougeL'.*produced only \['eval_bits_per_byte'"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_metric_for_best_model_lower_is_better_needs_greater_is_better_false(tokenizer, corpus, tmp_path):
    # The Trainer takes every name not ending in "loss" as higher-is-better: it would keep the worst.
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "a", [OverfitGuard(patience=None)], max_steps=20,
                         save_strategy="best", metric_for_best_model="perplexity")  # fmt: skip
    with pytest.raises(ConfigurationError, match=r"greater_is_better=False"):
        trainer.train()
    assert trainer.state.global_step == 0
    # Without the eval_ prefix, and with the direction set, our metric drives the Trainer's choice.
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "b", [OverfitGuard(patience=None)], max_steps=10, eval_steps=5,
                         save_strategy="best", metric_for_best_model="perplexity", greater_is_better=False,
                         save_only_model=True)  # fmt: skip
    trainer.train()
    evals = [e["eval_perplexity"] for e in trainer.state.log_history if "eval_perplexity" in e]
    assert trainer.state.best_metric == pytest.approx(min(evals))
