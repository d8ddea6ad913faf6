"""core.label_tasks with plain numbers: every value equals scikit-learn / SciPy / seqeval on the same
arrays, on the tricky cases (constant targets, zero targets, labels absent, all-negative rows,
entities cut by -100, strict vs default seqeval)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from seqeval import metrics as sqm
from seqeval.scheme import IOB2, IOBES
from sklearn import metrics as skm

from ft_callbacks.core.errors import ConfigurationError
from ft_callbacks.core.label_tasks import multilabel_metrics, regression_metrics, token_metrics, token_tags
from ft_callbacks.core.modes import infer_mode

RNG = np.random.default_rng(0)


# -- regression ------------------------------------------------------------------------------------------
def _regression_reference(y, p) -> dict[str, float]:
    return {
        "mae": skm.mean_absolute_error(y, p),
        "mse": skm.mean_squared_error(y, p),
        "rmse": skm.root_mean_squared_error(y, p),
        "r2": skm.r2_score(y, p),
        "mape": skm.mean_absolute_percentage_error(y, p),
        "pearson": stats.pearsonr(y, p).statistic,
        "spearman": stats.spearmanr(y, p).statistic,
    }


def test_regression_equals_sklearn_and_scipy():
    y = RNG.normal(3, 1, 200)
    p = y + RNG.normal(0, 0.5, 200)
    p[:5] = y[:5]  # ties in the ranks of Spearman
    report = regression_metrics(y, p[:, None])  # a regression head's (N, 1) logits
    reference = _regression_reference(y, p)
    assert set(report.scalars) == set(reference)
    for key, value in reference.items():
        assert report.scalars[key] == pytest.approx(value, rel=1e-12), key
    assert report.notes == []


def test_regression_constant_targets_keep_sklearn_r2_and_drop_undefined_correlations():
    y = np.full(6, 2.0)
    p = np.array([1.0, 2.0, 3.0, 2.0, 2.5, 1.5])
    report = regression_metrics(y, p)
    assert report.scalars["r2"] == skm.r2_score(y, p) == 0.0
    assert regression_metrics(y, y).scalars["r2"] == skm.r2_score(y, y) == 1.0
    assert "pearson" not in report.scalars and "spearman" not in report.scalars  # SciPy: NaN
    assert any("constant" in note for note in report.notes)


def test_regression_zero_targets_keep_sklearn_mape_with_a_note():
    y = np.array([0.0, 1.0, 2.0, 0.0])
    p = np.array([0.5, 1.0, 1.0, 0.0])
    report = regression_metrics(y, p)
    assert report.scalars["mape"] == skm.mean_absolute_percentage_error(y, p)
    assert report.scalars["mape"] > 1e10
    assert any("MAPE" in note for note in report.notes)


def test_regression_of_one_sample_leaves_r2_and_correlations_out():
    report = regression_metrics([1.0], [2.0])
    assert report.scalars == {"mae": 1.0, "mse": 1.0, "rmse": 1.0, "mape": 1.0}
    assert any("r2 is undefined" in note for note in report.notes)


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [([1.0, 2.0], [1.0], "predictions for 2 targets"), ([], [], "No samples"), ([1.0, math.nan], [1, 2], "NaN"),
     ([[1.0, 2.0]], [[1.0, 2.0]], "num_labels=1")],
)  # fmt: skip
def test_regression_bad_input(y, p, match):
    with pytest.raises(ConfigurationError, match=match):
        regression_metrics(y, p)


# -- multi-label -----------------------------------------------------------------------------------------
def _multilabel_case():
    y = (RNG.random((40, 4)) < 0.35).astype(int)
    y[:3] = 0  # all-negative rows
    y[:, 3] = 0  # a label absent from the batch
    probs = np.clip(y * 0.4 + RNG.random((40, 4)) * 0.6, 0, 1)
    return y, probs


def test_multilabel_equals_sklearn_on_tricky_cases():
    y, probs = _multilabel_case()
    names = ["a", "b", "c", "absent"]
    report = multilabel_metrics(y, probs, label_names=names)
    preds = (probs >= 0.5).astype(int)
    for average in ("micro", "macro", "samples", "weighted"):
        for metric, fn in (("precision", skm.precision_score), ("recall", skm.recall_score), ("f1", skm.f1_score)):
            expected = fn(y, preds, average=average, zero_division=0)
            assert report.scalars[f"{metric}_{average}"] == pytest.approx(expected, rel=1e-12), (metric, average)
    assert report.scalars["hamming_loss"] == skm.hamming_loss(y, preds)
    assert report.scalars["subset_accuracy"] == skm.accuracy_score(y, preds)
    per_f1 = skm.f1_score(y, preds, average=None, zero_division=0)
    for j, name in enumerate(names):
        assert report.per_label[name]["f1"] == pytest.approx(per_f1[j], rel=1e-12)
        assert report.per_label[name]["support"] == y[:, j].sum()
    # ROC/PR AUC: defined on the three labels with both classes; the absent one is left out, with a note.
    defined = [0, 1, 2]
    assert report.scalars["roc_auc_macro"] == pytest.approx(skm.roc_auc_score(y[:, defined], probs[:, defined]))
    assert report.scalars["pr_auc_macro"] == pytest.approx(
        skm.average_precision_score(y[:, defined], probs[:, defined])
    )
    for j in defined:
        assert report.per_label[names[j]]["roc_auc"] == pytest.approx(skm.roc_auc_score(y[:, j], probs[:, j]))
        assert report.per_label[names[j]]["pr_auc"] == pytest.approx(skm.average_precision_score(y[:, j], probs[:, j]))
    assert "roc_auc" not in report.per_label["absent"] and "pr_auc" not in report.per_label["absent"]
    assert any("absent" in note and "ROC AUC" in note for note in report.notes)
    assert any("no true label" in note for note in report.notes)
    flat = report.flat()
    assert flat["f1_absent"] == 0.0 and "roc_auc_a" in flat and "support_c" in flat


def test_multilabel_label_names_never_overwrite_the_averages():
    y, probs = _multilabel_case()
    flat = multilabel_metrics(y, probs, label_names=["samples", "macro", "micro", "x y"]).flat()
    assert flat["f1_samples"] == multilabel_metrics(y, probs).scalars["f1_samples"]
    assert {"f1_samples_0", "f1_macro_1", "f1_micro_2", "f1_x_y"} <= set(flat)


def test_multilabel_per_label_thresholds():
    y, probs = _multilabel_case()
    thresholds = [0.3, 0.5, 0.7, 0.9]
    report = multilabel_metrics(y, probs, thresholds=thresholds)
    preds = (probs >= np.array(thresholds)).astype(int)
    assert report.scalars["f1_micro"] == pytest.approx(skm.f1_score(y, preds, average="micro", zero_division=0))
    assert report.scalars["f1_samples"] == pytest.approx(skm.f1_score(y, preds, average="samples", zero_division=0))


def test_multilabel_all_negative_rows_only():
    y = np.zeros((3, 2), dtype=int)
    probs = np.array([[0.1, 0.2], [0.7, 0.1], [0.2, 0.3]])
    report = multilabel_metrics(y, probs)
    preds = (probs >= 0.5).astype(int)
    assert report.scalars["f1_samples"] == skm.f1_score(y, preds, average="samples", zero_division=0)
    assert report.scalars["subset_accuracy"] == pytest.approx(2 / 3)
    assert "roc_auc_macro" not in report.scalars and "pr_auc_macro" not in report.scalars


@pytest.mark.parametrize(
    ("y", "p", "kwargs", "match"),
    [([[1, 0]], [[0.5]], {}, "shape"), ([[2, 0]], [[0.5, 0.5]], {}, "0/1"), ([[1, 0]], [[1.5, 0.1]], {}, "sigmoid"),
     ([[1, 0]], [[0.5, 0.1]], {"thresholds": [0.5]}, "one per label"),
     ([[1, 0]], [[0.5, 0.1]], {"label_names": ["a"]}, "one name per label")],
)  # fmt: skip
def test_multilabel_bad_input(y, p, kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        multilabel_metrics(y, p, **kwargs)


# -- tokens ----------------------------------------------------------------------------------------------
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def test_token_tags_drop_minus_100_like_run_ner():
    # Second word "Smith" has two subwords; only its first carries a label. Padding is -100 too.
    labels = [[1, 2, -100, 0, 3, -100], [0, 3, 4, -100, -100, -100]]
    preds = [[1, 2, 0, 0, 4, 4], [0, 3, 3, 1, 1, 1]]
    true_tags, pred_tags = token_tags(preds, labels, TAGS)
    assert true_tags == [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-LOC", "I-LOC"]]
    assert pred_tags == [["B-PER", "I-PER", "O", "I-LOC"], ["O", "B-LOC", "B-LOC"]]
    with pytest.raises(ConfigurationError, match="id2label"):
        token_tags([[7]], [[7]], TAGS)


@pytest.mark.parametrize("strict", [False, True])
def test_token_metrics_equal_seqeval_default_and_strict(strict):
    true_tags = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-LOC", "I-LOC"], ["I-PER", "I-PER", "O"], ["O"], []]
    pred_tags = [["B-PER", "I-PER", "O", "I-LOC"], ["O", "B-LOC", "B-LOC"], ["I-PER", "I-PER", "O"], ["B-PER"], []]
    kwargs = {"mode": "strict", "scheme": IOB2} if strict else {}
    report = token_metrics(true_tags, pred_tags, mode="strict" if strict else None)
    assert report.scalars["entity_precision"] == pytest.approx(sqm.precision_score(true_tags, pred_tags, **kwargs))
    assert report.scalars["entity_recall"] == pytest.approx(sqm.recall_score(true_tags, pred_tags, **kwargs))
    assert report.scalars["entity_f1"] == pytest.approx(sqm.f1_score(true_tags, pred_tags, **kwargs))
    assert report.scalars["token_accuracy"] == sqm.accuracy_score(true_tags, pred_tags)
    expected = sqm.classification_report(true_tags, pred_tags, output_dict=True, **kwargs)
    for entity in ("PER", "LOC"):
        assert report.per_label[entity]["f1"] == pytest.approx(expected[entity]["f1-score"])
        assert report.per_label[entity]["support"] == expected[entity]["support"]
    flat = report.flat()
    assert flat["entity_f1_PER"] == report.per_label["PER"]["f1"] and "entity_support_LOC" in flat


def test_strict_and_default_differ_where_seqeval_does():
    true_tags = [["I-PER", "I-PER", "O"]]  # not well formed IOB2: default mode accepts it, strict does not
    pred_tags = [["I-PER", "I-PER", "O"]]
    assert token_metrics(true_tags, pred_tags).scalars["entity_f1"] == 1.0
    assert token_metrics(true_tags, pred_tags, mode="strict").scalars["entity_f1"] == 0.0


def test_token_metrics_iobes_strict():
    true_tags = [["S-PER", "O", "B-LOC", "E-LOC"], ["B-PER", "I-PER", "E-PER"]]
    pred_tags = [["S-PER", "O", "B-LOC", "I-LOC"], ["B-PER", "I-PER", "E-PER"]]
    report = token_metrics(true_tags, pred_tags, mode="strict", scheme="IOBES")
    assert report.scalars["entity_f1"] == pytest.approx(
        sqm.f1_score(true_tags, pred_tags, mode="strict", scheme=IOBES)
    )


def test_token_metrics_bad_input():
    with pytest.raises(ConfigurationError, match="every label is -100"):
        token_metrics([[]], [[]])
    with pytest.raises(ConfigurationError, match="mode"):
        token_metrics([["O"]], [["O"]], mode="lenient")
    with pytest.raises(ConfigurationError, match="scheme"):
        token_metrics([["O"]], [["O"]], mode="strict", scheme="BIO")
    with pytest.raises(ConfigurationError, match="same sequences"):
        token_metrics([["O", "O"]], [["O"]])


def test_every_new_metric_has_the_right_direction():
    for name in ("eval_mae", "eval_mse", "eval_rmse", "eval_mape", "eval_hamming_loss"):
        assert infer_mode(name) == "min", name
    for name in ("eval_r2", "eval_pearson", "eval_spearman", "eval_f1_micro", "eval_f1_samples", "eval_subset_accuracy",
                 "eval_roc_auc_macro", "eval_pr_auc_macro", "eval_entity_f1", "eval_entity_precision",
                 "eval_entity_recall", "eval_token_accuracy", "eval_slice_web_entity_f1"):  # fmt: skip
        assert infer_mode(name) == "max", name
    assert infer_mode("eval_slice_news_rmse") == "min"


def test_missing_seqeval_names_the_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "seqeval.metrics", None)  # as if the extra were not installed
    with pytest.raises(ConfigurationError, match=r"ft-callbacks\[labels\]"):
        token_metrics([["O"]], [["O"]])
