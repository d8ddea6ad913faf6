"""LabelScorer in real tiny BERT fine-tunes of every label task but single-label classification: a
regression head, a multi-label head and a token-classification (NER) head. The logged numbers equal
scikit-learn / SciPy / seqeval computed here from `trainer.predict()` outputs the way a user (and
`run_ner.py`) would; the monitors pick their direction by themselves; slices recompute each metric."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import wandb
from datasets import Dataset
from scipy import stats
from seqeval import metrics as sqm
from seqeval.scheme import IOB2
from sklearn import metrics as skm
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    Trainer,
)

from ft_callbacks.best_checkpoint import BestCheckpointSaver
from ft_callbacks.core.errors import ConfigurationError
from ft_callbacks.label_scorer import LabelScorer, label_metrics

from .helpers import lm_args, wandb_history, wandb_records

TAGS = ["O", "B-CAP", "I-CAP", "B-CODE", "I-CODE"]
ML_NAMES = ["long", "code", "comma"]
SOURCES = ("alpha", "beta", "gamma")


def bert_config(tokenizer, **kwargs) -> BertConfig:
    torch.manual_seed(0)
    return BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=tokenizer.model_max_length, pad_token_id=tokenizer.pad_token_id, **kwargs,
    )  # fmt: skip


def source_of(i: int) -> str:
    return SOURCES[0] if i % 7 == 0 else SOURCES[1] if i % 2 else SOURCES[2]  # alpha is the small slice


def sequence_data(tokenizer, texts, label_of) -> Dataset:
    enc = tokenizer(list(texts), truncation=True, max_length=40)
    return Dataset.from_dict({
        "input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
        "labels": [label_of(t) for t in texts], "source": [source_of(i) for i in range(len(texts))],
    })  # fmt: skip


def word_tags(words: list[str]) -> list[int]:
    """A learnable NER-like tagging: runs of capitalised words are CAP entities, words with code
    punctuation are CODE entities (consecutive ones merge), everything else O."""
    tags, previous = [], None
    for word in words:
        kind = "CODE" if any(c in word for c in "()_.`") else "CAP" if word[:1].isupper() else None
        if kind is None:
            tags.append(0)
        else:
            tags.append(TAGS.index(f"{'I' if previous == kind else 'B'}-{kind}"))
        previous = kind
    return tags


def ner_data(tokenizer, texts) -> Dataset:
    """First-subword alignment as run_ner.py does: the first subword of a word gets the word's tag,
    the others -100."""
    rows = {"input_ids": [], "attention_mask": [], "labels": [], "source": []}
    for i, text in enumerate(texts):
        words = text.split()[:10]
        tags = word_tags(words)
        enc = tokenizer(words, is_split_into_words=True, truncation=True, max_length=48)
        labels, previous = [], None
        for word_id in enc.word_ids():
            labels.append(-100 if word_id is None or word_id == previous else tags[word_id])
            previous = word_id
        rows["input_ids"].append(enc["input_ids"])
        rows["attention_mask"].append(enc["attention_mask"])
        rows["labels"].append(labels)
        rows["source"].append(source_of(i))
    return Dataset.from_dict(rows)


def make_trainer(model, tokenizer, train, evaluation, collator, output_dir, callbacks, **overrides):
    settings = {"max_steps": 20, "eval_steps": 10, "logging_steps": 10, "learning_rate": 2e-3, "report_to": "none",
                "per_device_eval_batch_size": 16}  # fmt: skip
    settings.update(overrides)
    return Trainer(
        model=model, args=lm_args(output_dir, **settings), train_dataset=train, eval_dataset=evaluation,
        data_collator=collator, processing_class=tokenizer, callbacks=callbacks,
    )  # fmt: skip


def last_eval(trainer) -> dict:
    return [e for e in trainer.state.log_history if "eval_loss" in e][-1]


# -- regression ----------------------------------------------------------------------------------------------
def regression_trainer(tokenizer, corpus, tmp_path, callbacks, **overrides):
    model = BertForSequenceClassification(bert_config(tokenizer, num_labels=1))
    target = lambda text: len(text) / 100.0  # noqa: E731
    return make_trainer(
        model, tokenizer, sequence_data(tokenizer, corpus[:160], target),
        sequence_data(tokenizer, corpus[200:261], target), DataCollatorWithPadding(tokenizer), tmp_path, callbacks,
        **overrides,
    )  # fmt: skip


def test_regression_head_numbers_equal_sklearn_scipy_and_rmse_is_minimised(tokenizer, corpus, tmp_path, wandb_offline):
    scorer = LabelScorer(slice_by="source", min_slice_size=12)
    saver = BestCheckpointSaver(monitor="eval_rmse", keep=1)
    trainer = regression_trainer(tokenizer, corpus, tmp_path, [saver, scorer], report_to="wandb")
    trainer.train()
    assert scorer.resolved_task == "regression" and saver.mode == "min"
    logged = last_eval(trainer)
    out = trainer.predict(trainer.eval_dataset)
    y, p = np.asarray(out.label_ids, dtype=np.float64), np.asarray(out.predictions, dtype=np.float64)[:, 0]
    assert len(y) == 61
    expected = {
        "eval_mae": skm.mean_absolute_error(y, p), "eval_mse": skm.mean_squared_error(y, p),
        "eval_rmse": skm.root_mean_squared_error(y, p), "eval_r2": skm.r2_score(y, p),
        "eval_mape": skm.mean_absolute_percentage_error(y, p), "eval_pearson": stats.pearsonr(y, p).statistic,
        "eval_spearman": stats.spearmanr(y, p).statistic,
    }  # fmt: skip
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key  # float32 forward vs float64
    # The monitor kept the best (lowest) rmse.
    rmses = [e["eval_rmse"] for e in trainer.state.log_history if "eval_rmse" in e]
    assert saver.ranking.best.value == pytest.approx(min(rmses))
    # Slices: recomputed on the slice's samples; alpha (9 samples) is too small for a number.
    sources = np.array(trainer.eval_dataset["source"])
    for name in ("beta", "gamma"):
        mask = sources == name
        assert logged[f"eval_slice_{name}_count"] == mask.sum()
        assert logged[f"eval_slice_{name}_rmse"] == pytest.approx(skm.root_mean_squared_error(y[mask], p[mask]), 1e-5)
        assert logged[f"eval_slice_{name}_r2"] == pytest.approx(skm.r2_score(y[mask], p[mask]), rel=1e-5, abs=1e-6)
    assert logged["eval_slice_alpha_count"] == (sources == "alpha").sum() == 9
    assert "eval_slice_alpha_rmse" not in logged
    worst = max(("beta", "gamma"), key=lambda n: logged[f"eval_slice_{n}_rmse"])
    assert scorer.last_slices.worst("rmse").name == worst
    wandb.finish()
    rows = [row for row in wandb_history(wandb_offline) if "eval/rmse" in row]
    assert rows[-1]["eval/predicted_vs_true_table.nrows"] == 61  # the scatter plot's data
    assert rows[-1]["eval/slices.nrows"] == 3  # the per-slice table, the small slice included
    summaries = [r["summary"]["update"] for r in wandb_records(wandb_offline) if r.get("type") == "summary"]
    assert [s["worst_slice/eval_rmse"] for s in summaries if "worst_slice/eval_rmse" in s][-1] == worst


def test_single_label_classification_by_slice_recomputes_sklearn(tokenizer, corpus, tmp_path, capsys):
    """The existing classification metrics, per slice of a column the Trainer drops from the batches."""
    topic = lambda text: int(len(text) > 110) + int(len(text) > 220)  # noqa: E731
    scorer = LabelScorer(slice_by="source", min_slice_size=10)
    model = BertForSequenceClassification(bert_config(tokenizer, num_labels=3))
    trainer = make_trainer(
        model, tokenizer, sequence_data(tokenizer, corpus[:160], topic),
        sequence_data(tokenizer, corpus[200:261], topic), DataCollatorWithPadding(tokenizer), tmp_path, [scorer],
    )  # fmt: skip
    trainer.train()
    logged = last_eval(trainer)
    out = trainer.predict(trainer.eval_dataset)
    y, preds = np.asarray(out.label_ids), np.asarray(out.predictions).argmax(1)
    sources = np.array(trainer.eval_dataset["source"])
    for name in ("beta", "gamma"):
        mask = sources == name
        assert logged[f"eval_slice_{name}_accuracy"] == pytest.approx(skm.accuracy_score(y[mask], preds[mask]))
        assert logged[f"eval_slice_{name}_f1"] == pytest.approx(
            skm.f1_score(y[mask], preds[mask], average="macro", labels=[0, 1, 2], zero_division=0)
        )
    assert "eval_slice_alpha_f1" not in logged and logged["eval_slice_alpha_count"] == 9
    worst = min(("beta", "gamma"), key=lambda n: logged[f"eval_slice_{n}_f1"])
    printed = capsys.readouterr().out + capsys.readouterr().err
    assert f"f1 by slice (source): worst '{worst}'" in printed
    assert "alpha (n=9): too small (< 10)" in printed


def test_a_misspelt_slice_metric_is_said_not_silently_ignored(tokenizer, corpus, tmp_path, capsys):
    with pytest.raises(ConfigurationError, match="slice_metric=5 is not valid"):
        LabelScorer(slice_by="source", slice_metric=5)
    topic = lambda text: int(len(text) > 110) + int(len(text) > 220)  # noqa: E731
    scorer = LabelScorer(slice_by="source", min_slice_size=10, slice_metric="f1_macr")
    model = BertForSequenceClassification(bert_config(tokenizer, num_labels=3))
    trainer = make_trainer(
        model, tokenizer, sequence_data(tokenizer, corpus[:40], topic),
        sequence_data(tokenizer, corpus[200:261], topic), DataCollatorWithPadding(tokenizer), tmp_path, [scorer],
    )  # fmt: skip
    trainer.evaluate()
    printed = capsys.readouterr().out
    assert "LabelScorer(slice_metric='f1_macr'): the slices have no such metric" in printed and "'f1_macro'" in printed


# -- multi-label ---------------------------------------------------------------------------------------------
def multi_hot(text: str) -> list[float]:
    return [float(len(text) > 110), float("(" in text or "`" in text), float("," in text)]


def test_multi_label_head_numbers_equal_sklearn(tokenizer, corpus, tmp_path):
    model = BertForSequenceClassification(
        bert_config(tokenizer, num_labels=3, problem_type="multi_label_classification",
                    id2label=dict(enumerate(ML_NAMES)), label2id={n: i for i, n in enumerate(ML_NAMES)})
    )  # fmt: skip
    scorer = LabelScorer(thresholds=[0.5, 0.4, 0.6])
    saver = BestCheckpointSaver(monitor="eval_hamming_loss", keep=1)
    trainer = make_trainer(
        model, tokenizer, sequence_data(tokenizer, corpus[:160], multi_hot),
        sequence_data(tokenizer, corpus[200:261], multi_hot), DataCollatorWithPadding(tokenizer), tmp_path,
        [scorer, saver],
    )  # fmt: skip
    trainer.train()
    assert scorer.resolved_task == "multi_label" and saver.mode == "min"
    logged = last_eval(trainer)
    out = trainer.predict(trainer.eval_dataset)
    y = np.asarray(out.label_ids).astype(int)
    probs = torch.from_numpy(np.asarray(out.predictions, dtype=np.float64)).sigmoid().numpy()
    preds = (probs >= np.array([0.5, 0.4, 0.6])).astype(int)
    for average in ("micro", "macro", "samples", "weighted"):
        assert logged[f"eval_f1_{average}"] == pytest.approx(skm.f1_score(y, preds, average=average, zero_division=0))
        assert logged[f"eval_precision_{average}"] == pytest.approx(
            skm.precision_score(y, preds, average=average, zero_division=0)
        )
    assert logged["eval_hamming_loss"] == pytest.approx(skm.hamming_loss(y, preds))
    assert logged["eval_subset_accuracy"] == pytest.approx(skm.accuracy_score(y, preds))
    assert logged["eval_roc_auc_macro"] == pytest.approx(skm.roc_auc_score(y, probs, average="macro"), rel=1e-5)
    assert logged["eval_pr_auc_macro"] == pytest.approx(skm.average_precision_score(y, probs), rel=1e-5)
    per_label = skm.f1_score(y, preds, average=None, zero_division=0)
    for j, name in enumerate(ML_NAMES):
        assert logged[f"eval_f1_{name}"] == pytest.approx(per_label[j])
        assert logged[f"eval_roc_auc_{name}"] == pytest.approx(skm.roc_auc_score(y[:, j], probs[:, j]), rel=1e-5)


def test_multi_label_inferred_from_float_labels_when_problem_type_is_unset(tokenizer, corpus, tmp_path):
    """transformers sets problem_type at the first forward (float multi-hot labels); LabelScorer follows."""
    model = BertForSequenceClassification(bert_config(tokenizer, num_labels=3))
    assert model.config.problem_type is None
    scorer = LabelScorer()
    trainer = make_trainer(
        model, tokenizer, sequence_data(tokenizer, corpus[:20], multi_hot),
        sequence_data(tokenizer, corpus[200:261], multi_hot), DataCollatorWithPadding(tokenizer), tmp_path, [scorer],
    )  # fmt: skip
    metrics = trainer.evaluate()
    assert scorer.resolved_task == "multi_label"
    out = trainer.predict(trainer.eval_dataset)
    preds = (np.asarray(out.predictions) >= 0).astype(int)  # sigmoid >= 0.5
    assert metrics["eval_f1_micro"] == pytest.approx(
        skm.f1_score(out.label_ids.astype(int), preds, average="micro", zero_division=0)
    )


# -- token classification ------------------------------------------------------------------------------------
def ner_trainer(tokenizer, corpus, tmp_path, callbacks, **overrides):
    overrides = {"max_steps": 30, "eval_steps": 15, "learning_rate": 5e-3, **overrides}  # learns some entities
    model = BertForTokenClassification(
        bert_config(tokenizer, num_labels=len(TAGS), id2label=dict(enumerate(TAGS)),
                    label2id={t: i for i, t in enumerate(TAGS)})
    )  # fmt: skip
    return make_trainer(
        model, tokenizer, ner_data(tokenizer, corpus[:160]), ner_data(tokenizer, corpus[200:261]),
        DataCollatorForTokenClassification(tokenizer), tmp_path, callbacks, **overrides,
    )  # fmt: skip


def run_ner_reference(trainer, strict: bool) -> tuple[dict, list, list]:
    """run_ner.py's compute_metrics on trainer.predict(): argmax, drop -100, seqeval."""
    out = trainer.predict(trainer.eval_dataset)
    predictions = np.argmax(out.predictions, axis=2)
    true_tags = [[TAGS[lab] for p, lab in zip(pr, la, strict=True) if lab != -100]
                 for pr, la in zip(predictions, out.label_ids, strict=True)]  # fmt: skip
    pred_tags = [[TAGS[p] for p, lab in zip(pr, la, strict=True) if lab != -100]
                 for pr, la in zip(predictions, out.label_ids, strict=True)]  # fmt: skip
    kwargs = {"mode": "strict", "scheme": IOB2} if strict else {}
    return sqm.classification_report(true_tags, pred_tags, output_dict=True, **kwargs), true_tags, pred_tags


@pytest.mark.parametrize("strict", [False, True])
def test_token_classification_equals_seqeval_as_run_ner_computes_it(tokenizer, corpus, tmp_path, strict):
    scorer = LabelScorer(seqeval_mode="strict" if strict else None, slice_by=lambda ex: "short" if
                         len(ex["input_ids"]) < 30 else "long", min_slice_size=5)  # fmt: skip
    saver = BestCheckpointSaver(monitor="eval_entity_f1", keep=1)
    trainer = ner_trainer(tokenizer, corpus, tmp_path, [scorer, saver])
    trainer.train()
    assert scorer.resolved_task == "token_classification" and saver.mode == "max"
    logged = last_eval(trainer)
    reference, true_tags, pred_tags = run_ner_reference(trainer, strict)
    assert sum(len(t) for t in true_tags) < sum(len(x) for x in trainer.eval_dataset["labels"])  # -100 dropped
    overall = reference["micro avg"]
    assert 0 < overall["f1-score"] < 1  # a model that finds some entities and misses some
    assert logged["eval_entity_precision"] == pytest.approx(overall["precision"])
    assert logged["eval_entity_recall"] == pytest.approx(overall["recall"])
    assert logged["eval_entity_f1"] == pytest.approx(overall["f1-score"])
    assert logged["eval_token_accuracy"] == pytest.approx(sqm.accuracy_score(true_tags, pred_tags))
    for entity in ("CAP", "CODE"):
        assert logged[f"eval_entity_f1_{entity}"] == pytest.approx(reference[entity]["f1-score"])
        assert logged[f"eval_entity_support_{entity}"] == reference[entity]["support"]
    f1s = [e["eval_entity_f1"] for e in trainer.state.log_history if "eval_entity_f1" in e]
    assert len(f1s) == 2 and saver.ranking.best.value == pytest.approx(max(f1s))
    # Slices by a function of the example: recomputed with seqeval on each slice's sequences.
    lengths = [len(ids) for ids in trainer.eval_dataset["input_ids"]]
    for name, pick in (("short", lambda n: n < 30), ("long", lambda n: n >= 30)):
        index = [i for i, n in enumerate(lengths) if pick(n)]
        kwargs = {"mode": "strict", "scheme": IOB2} if strict else {}
        expected = sqm.f1_score([true_tags[i] for i in index], [pred_tags[i] for i in index], **kwargs)
        assert logged[f"eval_slice_{name}_count"] == len(index)
        assert logged[f"eval_slice_{name}_entity_f1"] == pytest.approx(expected)


def test_token_classification_keeps_only_tag_ids_not_logits(tokenizer, corpus, tmp_path):
    scorer = LabelScorer()
    trainer = ner_trainer(tokenizer, corpus, tmp_path, [scorer], max_steps=1)
    examples = [{k: v for k, v in trainer.eval_dataset[i].items() if k != "source"} for i in range(4)]
    batch = DataCollatorForTokenClassification(tokenizer)(examples)
    trainer.model.eval()
    with torch.no_grad():
        trainer.model(**batch)
    rows = scorer._pending[-1]
    labelled = (batch["labels"] != -100).sum(dim=1).tolist()
    assert [r.shape for r in rows] == [(n, 2) for n in labelled]  # (label, arg-max) per labelled token
    assert all(r.dtype == np.int32 for r in rows)


@pytest.mark.parametrize("batch_eval_metrics", [False, True])
def test_label_metrics_route_equals_the_callback(tokenizer, corpus, tmp_path, batch_eval_metrics):
    """compute_metrics=label_metrics(task=...) with an argmax preprocess_logits_for_metrics (what a run_ner
    user writes) gives the callback's numbers; the callback's own go in as eval_ft_* beside them."""
    trainer = ner_trainer(tokenizer, corpus, tmp_path, [LabelScorer()], max_steps=1)
    trainer.compute_metrics = label_metrics(TAGS, task="token_classification")
    trainer.preprocess_logits_for_metrics = lambda logits, labels: logits.argmax(-1)
    trainer.args.batch_eval_metrics = batch_eval_metrics
    metrics = trainer.evaluate()
    for key in ("entity_precision", "entity_recall", "entity_f1", "token_accuracy", "entity_f1_CAP"):
        assert metrics[f"eval_{key}"] == pytest.approx(metrics[f"eval_ft_{key}"], rel=1e-12), key


def test_label_metrics_regression_and_multi_label_with_plain_arrays():
    class Pred:
        predictions = np.array([[1.0], [2.5], [2.0]])
        label_ids = np.array([1.0, 2.0, 3.0])

    out = label_metrics(task="regression")(Pred())
    assert out["rmse"] == pytest.approx(skm.root_mean_squared_error(Pred.label_ids, Pred.predictions[:, 0]))

    class MultiPred:
        predictions = np.array([[2.0, -1.0], [-2.0, 0.5], [0.1, -0.2]])
        label_ids = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])

    out = label_metrics(["a", "b"], task="multi_label")(MultiPred())
    preds = (1 / (1 + np.exp(-MultiPred.predictions)) >= 0.5).astype(int)
    assert out["f1_samples"] == pytest.approx(skm.f1_score(MultiPred.label_ids, preds, average="samples"))
    assert out["f1_b"] == pytest.approx(skm.f1_score(MultiPred.label_ids[:, 1], preds[:, 1]))
    with pytest.raises(ConfigurationError, match="label_names"):
        label_metrics(task="token_classification")


# -- bad input -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"task": "ranking"}, "task='ranking'"), ({"thresholds": 1.5}, "thresholds"),
     ({"seqeval_mode": "lenient"}, "seqeval_mode"), ({"seqeval_scheme": "BIO"}, "seqeval_scheme"),
     ({"slice_by": 3}, "slice_by"), ({"min_slice_size": 0}, "min_slice_size")],
)  # fmt: skip
def test_bad_settings_fail_at_construction(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        LabelScorer(**kwargs)


def test_labels_hidden_by_label_smoothing_say_what_to_use(tokenizer, corpus, tmp_path):
    trainer = ner_trainer(tokenizer, corpus, tmp_path, [LabelScorer()], max_steps=1, label_smoothing_factor=0.1)
    with pytest.raises(ConfigurationError, match=r"label_smoothing_factor > 0.*task='token_classification'"):
        trainer.evaluate()


def test_missing_slice_column_and_wrong_threshold_count_fail_before_step_one(tokenizer, corpus, tmp_path):
    trainer = regression_trainer(tokenizer, corpus, tmp_path, [LabelScorer(slice_by="domain")])
    with pytest.raises(ConfigurationError, match="no such column"):
        trainer.train()
    assert trainer.state.global_step == 0
    config = bert_config(tokenizer, num_labels=3, problem_type="multi_label_classification")
    trainer = make_trainer(
        BertForSequenceClassification(config), tokenizer, sequence_data(tokenizer, corpus[:20], multi_hot),
        sequence_data(tokenizer, corpus[20:30], multi_hot),
        DataCollatorWithPadding(tokenizer), tmp_path, [LabelScorer(thresholds=[0.5, 0.5])],
    )  # fmt: skip
    with pytest.raises(ConfigurationError, match="one per label"):
        trainer.train()
    assert trainer.state.global_step == 0
