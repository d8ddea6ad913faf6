"""Each callback once, together, in real tiny runs: the subset CI also runs against the oldest
transformers we support (`make test-oldest`), where the Trainer's events, argument names and loss
counting differ (see ft_callbacks/_compat.py)."""

from __future__ import annotations

import math

import pytest
from datasets import Dataset
from transformers import DataCollatorWithPadding, Trainer

from ft_callbacks import BestCheckpointSaver, GenerationScorer, LabelScorer, OverfitGuard, toy
from ft_callbacks._compat import TRANSFORMERS_VERSION

from .helpers import lm_args, lm_trainer

pytestmark = pytest.mark.smoke


def test_language_model_kit(tokenizer, corpus, tmp_path):
    prompts = [" ".join(t.split()[:5]) for t in corpus[:8]]
    references = [" ".join(t.split()[5:14]) or "x" for t in corpus[:8]]
    guard = OverfitGuard(patience=2)
    saver = BestCheckpointSaver(monitor="eval_perplexity", load_best_at_end=True)
    scorer = GenerationScorer(prompts, references, metrics=("rouge", "bleu"), max_new_tokens=8)
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [saver, scorer, guard], max_steps=120, eval_steps=10)
    trainer.train()
    evals = [e for e in trainer.state.log_history if "eval_perplexity" in e]
    assert evals and all(math.isfinite(e["eval_perplexity"]) for e in evals)
    assert guard.stopped and trainer.state.global_step == guard.policy.stop_step < 120, TRANSFORMERS_VERSION
    assert saver.ranking.best.value == pytest.approx(min(e["eval_perplexity"] for e in evals))
    assert (tmp_path / saver.ranking.best.path / "config.json").is_file()
    rounds = [e for e in trainer.state.log_history if "eval_rougeL" in e]
    assert rounds[0]["step"] == 0 and len(rounds) == len(evals) + 1


def test_classifier_label_scorer(tokenizer, corpus, tmp_path):
    texts = corpus[:120]
    enc = tokenizer(texts, truncation=True, max_length=48)
    data = Dataset.from_dict({**enc, "labels": [int(len(t) > 150) for t in texts]})
    trainer = Trainer(
        model=toy.tiny_bert_classifier(tokenizer), args=lm_args(tmp_path, max_steps=10, eval_steps=10),
        train_dataset=data, eval_dataset=data, data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[LabelScorer(label_names=["short", "long"])],
    )  # fmt: skip
    trainer.train()
    logged = [e for e in trainer.state.log_history if "eval_accuracy" in e]
    assert len(logged) == 1 and 0 <= logged[0]["eval_f1"] <= 1 and logged[0]["eval_support_long"] > 0
