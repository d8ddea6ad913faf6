"""LabelScorer in real tiny BERT classifier fine-tunes: every number equals scikit-learn's, computed
here from the model's own logits; wandb (offline) gets the metrics and the confusion matrix."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import wandb
from datasets import Dataset
from sklearn import metrics as skm
from transformers import DataCollatorWithPadding, Trainer

from ft_callbacks import BestCheckpointSaver, ConfigurationError, LabelScorer, OverfitGuard, label_metrics, toy
from ft_callbacks.label_scorer import format_confusion_matrix

from .helpers import lm_args, lm_trainer, run_torchrun, wandb_history

NAMES3 = ["short", "medium", "long"]


def topic(text: str) -> int:
    """Three classes by length (short, medium, long docstrings): learnable, all present."""
    return int(len(text) > 110) + int(len(text) > 220)


def classification_data(tokenizer, texts, label_of) -> Dataset:
    enc = tokenizer(list(texts), truncation=True, max_length=48)
    return Dataset.from_dict(
        {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": [label_of(t) for t in texts]}
    )


def classifier_trainer(tokenizer, corpus, output_dir, callbacks, num_labels, label_of, eval_size=61, **overrides):
    settings = {"max_steps": 20, "eval_steps": 10, "logging_steps": 10, "learning_rate": 1e-3}
    settings.update(overrides)
    return Trainer(
        model=toy.tiny_bert_classifier(tokenizer, num_labels=num_labels),
        args=lm_args(output_dir, **settings),
        train_dataset=classification_data(tokenizer, corpus[:160], label_of),
        eval_dataset=classification_data(tokenizer, corpus[200 : 200 + eval_size], label_of),
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def probabilities_of(trainer) -> tuple[np.ndarray, np.ndarray]:
    """The final model's class probabilities over the eval set, straight from `predict` (float64 softmax)."""
    out = trainer.predict(trainer.eval_dataset)
    probs = torch.from_numpy(np.asarray(out.predictions, dtype=np.float64)).softmax(-1).numpy()
    return probs, np.asarray(out.label_ids)


def last_eval(trainer) -> dict:
    return [e for e in trainer.state.log_history if "eval_loss" in e][-1]


def test_multiclass_metrics_equal_sklearn_and_reach_wandb(tokenizer, corpus, tmp_path, wandb_offline, capsys):
    scorer = LabelScorer(label_names=NAMES3)
    trainer = classifier_trainer(tokenizer, corpus, tmp_path, [scorer], 3, topic, report_to="wandb")
    trainer.train()
    logged = last_eval(trainer)
    assert logged["step"] == 20
    probs, labels = probabilities_of(trainer)
    preds = probs.argmax(1)
    assert len(labels) == 61
    expected = {
        "eval_accuracy": skm.accuracy_score(labels, preds),
        "eval_balanced_accuracy": skm.balanced_accuracy_score(labels, preds),
        "eval_f1": skm.f1_score(labels, preds, average="macro", zero_division=0),
        "eval_precision_weighted": skm.precision_score(labels, preds, average="weighted", zero_division=0),
        "eval_recall_micro": skm.recall_score(labels, preds, average="micro", zero_division=0),
        "eval_roc_auc": skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=[0, 1, 2]),
        "eval_log_loss": skm.log_loss(labels, probs, labels=[0, 1, 2]),
    }
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    per_class = skm.precision_recall_fscore_support(labels, preds, labels=[0, 1, 2], zero_division=0)
    for i, name in enumerate(NAMES3):
        assert logged[f"eval_f1_{name}"] == pytest.approx(per_class[2][i], abs=1e-12)
        assert logged[f"eval_support_{name}"] == per_class[3][i]
    np.testing.assert_array_equal(scorer.last_report.confusion_matrix, skm.confusion_matrix(labels, preds))
    # wandb: the scalars on the Trainer's step axis, once per evaluation, and the confusion matrix.
    wandb.finish()
    rows = [r for r in wandb_history(wandb_offline) if "eval/accuracy" in r]
    assert [r["train/global_step"] for r in rows] == [10, 20]
    assert rows[-1]["eval/accuracy"] == pytest.approx(expected["eval_accuracy"])
    for key in ("eval/confusion_matrix_table", "eval/confusion_matrix_counts"):  # chart data, count table
        assert rows[-1][f"{key}._type"] == "table-file", key
    assert rows[-1]["eval/confusion_matrix_counts.nrows"] == 3
    # The console shows the matrix with label names.
    printed = capsys.readouterr()
    assert re.search(r"true \\ pred\s+short\s+medium\s+long", printed.out + printed.err)


def test_binary_imbalanced_positive_label_threshold_view(tokenizer, corpus, tmp_path):
    def rare(text: str) -> int:
        return int("file" in text.lower())

    scorer = LabelScorer(label_names=["no", "yes"], positive_label="yes")
    trainer = classifier_trainer(tokenizer, corpus, tmp_path, [scorer], 2, rare)
    trainer.train()
    logged = last_eval(trainer)
    probs, labels = probabilities_of(trainer)
    preds = probs.argmax(1)
    assert 0 < labels.mean() < 0.5  # imbalanced, both classes present
    assert logged["eval_precision"] == pytest.approx(skm.precision_score(labels, preds, zero_division=0), abs=1e-12)
    assert logged["eval_recall"] == pytest.approx(skm.recall_score(labels, preds, zero_division=0), abs=1e-12)
    tn, fp, _, _ = skm.confusion_matrix(labels, preds, labels=[0, 1]).ravel()
    assert logged["eval_specificity"] == pytest.approx(tn / (tn + fp))
    assert logged["eval_roc_auc"] == pytest.approx(skm.roc_auc_score(labels, probs[:, 1]), rel=1e-9)
    assert logged["eval_pr_auc"] == pytest.approx(skm.average_precision_score(labels, probs[:, 1]), rel=1e-9)
    assert logged["eval_brier"] == pytest.approx(skm.brier_score_loss(labels, probs[:, 1]), rel=1e-9)
    precision, recall, thresholds = skm.precision_recall_curve(labels, probs[:, 1])
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0)[:-1]
    assert logged["eval_best_threshold_f1"] == pytest.approx(f1.max(), rel=1e-9)
    assert logged["eval_best_threshold"] == pytest.approx(thresholds[f1.argmax()], rel=1e-9)


def test_label_metrics_compute_metrics_matches_scorer_streaming(tokenizer, corpus, tmp_path):
    """label_metrics() as a streaming compute_metrics (batch_eval_metrics=True) gives LabelScorer's
    numbers in the same evaluation, and LabelScorer works beside a user's compute_metrics."""
    streaming = label_metrics(NAMES3)

    def renamed(eval_pred, compute_result=True):
        return {f"cm_{k}": v for k, v in streaming(eval_pred, compute_result).items()}

    trainer = classifier_trainer(tokenizer, corpus, tmp_path, [LabelScorer(label_names=NAMES3)], 3, topic)
    trainer.compute_metrics = renamed
    trainer.args.batch_eval_metrics = True
    metrics = trainer.evaluate()
    for key in ("accuracy", "f1", "f1_macro", "roc_auc", "log_loss", "ece", "brier", "f1_long"):
        assert metrics[f"eval_cm_{key}"] == pytest.approx(metrics[f"eval_{key}"], rel=1e-9), key


def test_monitor_label_metric_drives_best_checkpoint_in_any_order(tokenizer, corpus, tmp_path):
    saver = BestCheckpointSaver(monitor="eval_f1", keep=1)
    trainer = classifier_trainer(tokenizer, corpus, tmp_path, [saver, LabelScorer(label_names=NAMES3)], 3, topic)
    trainer.train()
    f1s = [e["eval_f1"] for e in trainer.state.log_history if "eval_f1" in e]
    assert len(f1s) == 2
    assert saver.ranking.best.value == pytest.approx(max(f1s))


def test_hard_predictions_only_skip_probability_metrics_with_a_note():
    fn = label_metrics(["a", "b", "c"], inputs="predictions")

    class Pred:
        predictions = np.array([0, 1, 2, 2, 1])
        label_ids = np.array([0, 1, 1, 2, 0])

    out = fn(Pred())
    assert out["accuracy"] == pytest.approx(skm.accuracy_score(Pred.label_ids, Pred.predictions))
    assert "roc_auc" not in out and "log_loss" not in out and "ece" not in out


# -- bad input, before the first step ------------------------------------------------------------------
def test_generative_model_is_refused_before_training(tokenizer, corpus, tmp_path):
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [LabelScorer()], max_steps=5)
    with pytest.raises(ConfigurationError, match="GenerationScorer"):
        trainer.train()
    assert trainer.state.global_step == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"label_names": ["a", "b"], "positive_label": "c"}, "not one of the label names"),
        ({"label_names": ["a", "b"], "positive_label": 2}, "not a class id"),
        ({"label_names": ["a"]}, "at least two"),
        ({"label_names": ["a", "a"]}, "duplicates"),
        ({"ece_bins": 0}, "ece_bins"),
    ],
)
def test_bad_settings_fail_at_construction(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        LabelScorer(**kwargs)


def test_labels_outside_the_label_set_and_name_count_mismatch(tokenizer, corpus, tmp_path):
    trainer = classifier_trainer(tokenizer, corpus, tmp_path / "a", [LabelScorer()], 2, topic)  # 3 classes in data
    with pytest.raises(ConfigurationError, match=r"labels \[2\] outside the label set"):
        trainer.train()
    assert trainer.state.global_step == 0
    trainer = classifier_trainer(tokenizer, corpus, tmp_path / "b", [LabelScorer(label_names=["x", "y"])], 3, topic)
    with pytest.raises(ConfigurationError, match="num_labels=3"):
        trainer.train()


def test_confusion_matrix_text():
    text = format_confusion_matrix(np.array([[3, 1], [0, 12]]), ["cat", "dog"])
    lines = text.splitlines()
    assert lines[1].split()[-2:] == ["cat", "dog"]
    assert lines[2].split() == ["cat", "3", "1"] and lines[3].split() == ["dog", "0", "12"]


def test_works_with_overfit_guard_in_the_same_run(tokenizer, corpus, tmp_path):
    """The classification loss has no tokens: OverfitGuard falls back to eval_loss, LabelScorer is unaffected."""
    trainer = classifier_trainer(
        tokenizer, corpus, tmp_path, [OverfitGuard(patience=None), LabelScorer(label_names=NAMES3)], 3, topic
    )
    trainer.train()
    logged = last_eval(trainer)
    assert "eval_accuracy" in logged and "eval_perplexity" in logged


@pytest.mark.distributed
def test_two_processes_score_the_whole_eval_set_once(tokenizer, tmp_path):
    import json
    from pathlib import Path

    tok_dir = tmp_path / "tokenizer"
    tokenizer.save_pretrained(str(tok_dir))
    wandb_dir = tmp_path / "wandb_ddp"
    wandb_dir.mkdir()
    script = Path(__file__).resolve().parent / "dist_scripts" / "label_scorer_ddp.py"
    rc, output, _ = run_torchrun(script, tok_dir, tmp_path / "out", wandb_dir=wandb_dir)
    assert rc == 0, output[-6000:]
    r0, r1 = (json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in range(2))
    assert len(r0["evals"]) == len(r1["evals"]) == 1
    ours = {k: v for k, v in r0["evals"][0].items() if "runtime" not in k and "per_second" not in k}
    assert ours == {k: r1["evals"][0][k] for k in ours}  # every rank holds the same numbers
    assert r0["confusion_matrix"] == r1["confusion_matrix"]
    logged = r0["evals"][0]
    probs, labels = np.asarray(r0["hand_probabilities"]), np.asarray(r0["hand_labels"])
    preds = probs.argmax(1)
    # Every one of the 61 samples counted once (not one shard, not the repeated padding samples).
    assert sum(logged[f"eval_support_{n}"] for n in NAMES3) == len(labels) == 61
    assert np.asarray(r0["confusion_matrix"]).sum() == 61
    np.testing.assert_array_equal(r0["confusion_matrix"], skm.confusion_matrix(labels, preds, labels=[0, 1, 2]))
    assert logged["eval_accuracy"] == pytest.approx(skm.accuracy_score(labels, preds), abs=1e-12)
    assert logged["eval_f1"] == pytest.approx(skm.f1_score(labels, preds, average="macro", zero_division=0), abs=1e-12)
    assert logged["eval_log_loss"] == pytest.approx(skm.log_loss(labels, probs, labels=[0, 1, 2]), rel=1e-6)
    # One wandb run (rank 0's), one row of label metrics.
    assert len(list((wandb_dir / "wandb").glob("offline-run-*"))) == 1
    rows = [r for r in wandb_history(wandb_dir) if "eval/accuracy" in r]
    assert [r["train/global_step"] for r in rows] == [10]


def test_label_smoothing_hides_labels_from_the_model_yet_metrics_match(tokenizer, corpus, tmp_path):
    scorer = LabelScorer(label_names=NAMES3)
    trainer = classifier_trainer(tokenizer, corpus, tmp_path, [scorer], 3, topic, label_smoothing_factor=0.1)
    trainer.train()
    logged = last_eval(trainer)
    probs, labels = probabilities_of(trainer)
    assert logged["eval_accuracy"] == pytest.approx(skm.accuracy_score(labels, probs.argmax(1)), abs=1e-12)
    assert logged["eval_log_loss"] == pytest.approx(skm.log_loss(labels, probs, labels=[0, 1, 2]), rel=1e-9)


def test_forwards_outside_this_trainers_eval_loop_are_not_counted(tokenizer, corpus, tmp_path):
    scorer = LabelScorer(label_names=NAMES3)
    first = classifier_trainer(tokenizer, corpus, tmp_path / "a", [scorer], 3, topic)
    other = Trainer(model=first.model, args=lm_args(tmp_path / "b"), eval_dataset=first.eval_dataset,
                    data_collator=DataCollatorWithPadding(tokenizer))  # fmt: skip
    first.evaluate()
    other.evaluate()  # the same model object, evaluated by a Trainer without the scorer
    metrics = first.evaluate()
    assert sum(metrics[f"eval_support_{n}"] for n in NAMES3) == len(first.eval_dataset) == 61
