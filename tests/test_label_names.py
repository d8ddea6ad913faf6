"""LabelScorer's class names: a string is no list (#20), and transformers 5's placeholder id2label (#13)."""

from __future__ import annotations

import pytest
from transformers import BertConfig

from ft_callbacks import ConfigurationError, LabelScorer, label_metrics
from ft_callbacks.label_scorer import _class_names


@pytest.mark.parametrize("names", ["np", b"np", 3])
def test_label_names_that_are_not_a_list_are_refused(names):
    for build in (lambda: LabelScorer(label_names=names), lambda: label_metrics(label_names=names)):
        with pytest.raises(ConfigurationError, match=r"label_names=.* is not a list.*label_names=\['negative'"):
            build()


def test_placeholder_id2label_falls_back_to_label2id():
    # What run_glue.py leaves with transformers 5: label2id holds the names, id2label the placeholders.
    config = BertConfig(num_labels=3)
    config.label2id = {"contradiction": 2, "entailment": 0, "neutral": 1}
    assert [config.id2label[i] for i in range(3)] == ["LABEL_0", "LABEL_1", "LABEL_2"]
    assert _class_names(config, 3) == ["entailment", "neutral", "contradiction"]


def test_real_id2label_wins_and_placeholders_stay_without_label2id():
    config = BertConfig(num_labels=2, id2label={0: "neg", 1: "pos"})
    assert _class_names(config, 2) == ["neg", "pos"]
    bare = BertConfig(num_labels=2)
    assert _class_names(bare, 2) == ["LABEL_0", "LABEL_1"]


def test_a_run_glue_style_model_reports_per_class_metrics_under_the_real_names(tokenizer, corpus, tmp_path):
    from .test_label_scorer import NAMES3, classifier_trainer, topic

    scorer = LabelScorer()
    trainer = classifier_trainer(tokenizer, corpus, tmp_path, [scorer], 3, topic, max_steps=10, eval_steps=10)
    config = trainer.model.config
    config.label2id = {name: i for i, name in enumerate(NAMES3)}  # as run_glue.py does, id2label untouched
    config.id2label = {i: f"LABEL_{i}" for i in range(3)}
    trainer.train()
    entry = [e for e in trainer.state.log_history if "eval_loss" in e][-1]
    assert all(f"eval_f1_{name}" in entry for name in NAMES3)
    assert not [k for k in entry if "LABEL_" in k]
