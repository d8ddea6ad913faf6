"""core.slices with plain numbers: per-slice means and recomputed metrics with counts, slices too small
for a confident number, the worst slice by the metric's direction, and nested slices of size 1."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from ft_callbacks.core.errors import ConfigurationError
from ft_callbacks.core.label_metrics import compute_label_metrics
from ft_callbacks.core.label_tasks import regression_metrics
from ft_callbacks.core.slices import slice_means, slice_metrics


def test_slice_means_counts_and_too_small():
    scores = {"rougeL": [0.1, 0.3, 0.5, 0.9, 0.8, math.nan], "bleu": [10, 20, 30, 40, 50, 60]}
    slices = ["web", "web", "web", "news", "news", "code"]
    report = slice_means(scores, slices, min_slice_size=2)
    assert report.names == ["code", "news", "web"]
    assert report["web"].count == 3 and report["web"].values == pytest.approx({"rougeL": 0.3, "bleu": 20.0})
    assert report["news"].values == pytest.approx({"rougeL": 0.85, "bleu": 45.0})
    assert report["code"].too_small and report["code"].values == {} and report.too_small == ["code"]
    assert report.worst("rougeL").name == "web"
    assert report.worst("bleu").name == "web"
    columns, rows = report.rows()
    assert columns == ["slice", "count", "too_small", "rougeL", "bleu"]
    assert rows[0] == ["code", 1, True, None, None]


def test_nan_scores_are_left_out_of_a_mean():
    report = slice_means({"judge_score": [math.nan, 4.0, math.nan, math.nan]}, ["a", "a", "b", "b"], min_slice_size=1)
    assert report["a"].values == {"judge_score": 4.0}
    assert report["b"].values == {}  # every score missing: no value, never NaN
    assert report.worst("judge_score").name == "a"


def test_worst_uses_the_metric_direction_and_explicit_mode():
    report = slice_means({"rmse": [1, 1, 5, 5], "custom": [1, 1, 5, 5]}, ["a", "a", "b", "b"], min_slice_size=2)
    assert report.worst("rmse").name == "b"  # lower is better: the highest is worst
    assert report.worst("custom", mode="min").name == "b"
    assert report.worst("custom", mode="max").name == "a"
    assert report.worst("absent") is None


def test_recomputed_classification_metrics_equal_sklearn_per_slice():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 90)
    probs = rng.dirichlet(np.ones(3), 90)
    slices = np.array(["x", "y", "z"])[rng.integers(0, 3, 90)]

    def score(index):
        return compute_label_metrics(labels[index], probabilities=probs[index], label_names=["a", "b", "c"]).scalars

    report = slice_metrics(slices.tolist(), score, min_slice_size=5)
    for name in ("x", "y", "z"):
        mask = slices == name
        preds = probs[mask].argmax(1)
        assert report[name].count == mask.sum()
        assert report[name].values["f1"] == pytest.approx(
            skm.f1_score(labels[mask], preds, average="macro", labels=[0, 1, 2], zero_division=0)
        )
        assert report[name].values["accuracy"] == pytest.approx(skm.accuracy_score(labels[mask], preds))
    worst = min(("x", "y", "z"), key=lambda n: report[n].values["f1"])
    assert report.worst("f1").name == worst


def test_nested_slices_of_size_one():
    # source x length bucket: some combinations hold one sample.
    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    p = np.array([1.5, 2.0, 2.0, 4.5, 5.0, 9.0])
    slices = ["web/short", "web/short", "web/long", "news/short", "news/short", "news/long"]
    report = slice_metrics(slices, lambda i: regression_metrics(y[i], p[i]).scalars, min_slice_size=1)
    one = report["web/long"]
    assert one.count == 1 and not one.too_small
    assert one.values["mae"] == 1.0 and "r2" not in one.values  # R² of one sample: undefined, not a number
    assert report["web/short"].values["r2"] == pytest.approx(skm.r2_score(y[:2], p[:2]))
    # The worst rmse slice is the size-1 'news/long' only because min_slice_size allowed it ...
    assert report.worst("rmse").name == "news/long"
    # ... with the default threshold it is too small and not named.
    strict = slice_metrics(slices, lambda i: regression_metrics(y[i], p[i]).scalars, min_slice_size=2)
    assert strict.too_small == ["news/long", "web/long"]
    assert strict.worst("rmse").name in ("news/short", "web/short")


def test_a_slice_the_metric_cannot_score_gets_a_note_not_a_crash():
    def score(index):
        if 0 in index:
            raise ConfigurationError("No labelled tokens to score")
        return {"entity_f1": 0.5}

    report = slice_metrics(["a", "b", "b"], score, min_slice_size=1)
    assert report["a"].values == {} and "No labelled tokens" in report["a"].notes[0]
    assert report["b"].values == {"entity_f1": 0.5}


@pytest.mark.parametrize(
    ("call", "match"),
    [(lambda: slice_means({"f1": [1.0, 2.0]}, ["a"]), "one per sample"),
     (lambda: slice_means({"f1": [1.0]}, ["a"], min_slice_size=0), "min_slice_size"),
     (lambda: slice_metrics([], lambda i: {}), "No samples")],
)  # fmt: skip
def test_bad_input(call, match):
    with pytest.raises(ConfigurationError, match=match):
        call()
