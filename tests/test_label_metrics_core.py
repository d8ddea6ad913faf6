"""ft_callbacks.core.label_metrics against scikit-learn called directly, number by number."""

from __future__ import annotations

import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from scipy.special import softmax
from sklearn import metrics as skm

from ft_callbacks.core.errors import ConfigurationError
from ft_callbacks.core.label_metrics import (
    INVALID_LABEL,
    LabelAccumulator,
    LabelReport,
    compute_label_metrics,
    match_label_texts,
    normalize_label_text,
)

PROB_KEYS = {"roc_auc", "pr_auc", "log_loss", "brier", "ece"}
AVERAGED = {f"{m}_{a}" for m in ("precision", "recall", "f1") for a in ("micro", "macro", "weighted")}
BASE_KEYS = {"accuracy", "balanced_accuracy", "precision", "recall", "f1"} | AVERAGED
BINARY_KEYS = BASE_KEYS | {"specificity"}
THRESHOLD_KEYS = {"best_threshold", "best_threshold_f1"}


def reference_ece(probs: np.ndarray, y: np.ndarray, bins: int) -> float:
    """Straight loop over the definition: bins (k/M, (k+1)/M], top-label confidence."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    total = 0.0
    for k in range(bins):
        lo, hi = k / bins, (k + 1) / bins
        in_bin = (conf > lo) & (conf <= hi) if k else (conf >= lo) & (conf <= hi)
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return total


def sklearn_reference(*args, **kwargs) -> dict[str, float]:
    """The expected scalars, every one from a direct sklearn call (ECE from the loop above). sklearn's
    own warnings for degenerate cases are silenced here: the module must turn them into notes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _sklearn_reference(*args, **kwargs)


def _sklearn_reference(
    y: np.ndarray,
    preds: np.ndarray,
    c: int,
    *,
    probs: np.ndarray | None = None,
    pos: int | None = None,
    with_invalid: bool = False,
) -> dict[str, float]:
    ids = list(range(c))
    micro_ids = [*ids, c] if with_invalid else ids
    exp = {
        "accuracy": skm.accuracy_score(y, preds),
        "balanced_accuracy": skm.balanced_accuracy_score(y, preds),
    }
    for avg in ("micro", "macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            y, preds, labels=micro_ids if avg == "micro" else ids, average=avg, zero_division=0.0
        )
        exp[f"precision_{avg}"], exp[f"recall_{avg}"], exp[f"f1_{avg}"] = p, r, f
    if pos is not None:
        if with_invalid:
            p, r, f, _ = skm.precision_recall_fscore_support(y, preds, labels=[pos], average=None, zero_division=0.0)
            p, r, f = p[0], r[0], f[0]
        else:
            p, r, f, _ = skm.precision_recall_fscore_support(
                y, preds, average="binary", pos_label=pos, zero_division=0.0
            )
        exp["precision"], exp["recall"], exp["f1"] = p, r, f
        cm = skm.confusion_matrix(y, preds, labels=micro_ids)
        neg = 1 - pos
        exp["specificity"] = cm[neg, neg] / cm[neg].sum()
    else:
        exp["precision"], exp["recall"], exp["f1"] = exp["precision_macro"], exp["recall_macro"], exp["f1_macro"]
    if with_invalid:
        exp["invalid_rate"] = np.mean(preds == c)
    if probs is not None:
        exp["log_loss"] = skm.log_loss(y, probs, labels=ids)
        exp["ece"] = reference_ece(probs, y, 15)
        if pos is not None:
            yb = (y == pos).astype(int)
            exp["roc_auc"] = skm.roc_auc_score(yb, probs[:, pos])
            exp["pr_auc"] = skm.average_precision_score(yb, probs[:, pos])
            exp["brier"] = skm.brier_score_loss(yb, probs[:, pos])
            prec, rec, thr = skm.precision_recall_curve(yb, probs[:, pos])
            f1 = [2 * a * b / (a + b) if a + b else 0.0 for a, b in zip(prec[:-1], rec[:-1], strict=True)]
            exp["best_threshold"] = thr[int(np.argmax(f1))]
            exp["best_threshold_f1"] = max(f1)
        else:
            exp["roc_auc"] = skm.roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=ids)
            exp["pr_auc"] = skm.average_precision_score(np.eye(c)[y], probs, average="macro")
            exp["brier"] = skm.brier_score_loss(y, probs, labels=ids)
    return {k: float(v) for k, v in exp.items()}


def assert_scalars(report: LabelReport, expected: dict[str, float]) -> None:
    assert set(report.scalars) == set(expected)
    for key, value in expected.items():
        assert math.isfinite(report.scalars[key]), key
        assert report.scalars[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def assert_per_class(report: LabelReport, y: np.ndarray, preds: np.ndarray, c: int) -> None:
    p, r, f, s = skm.precision_recall_fscore_support(y, preds, labels=list(range(c)), average=None, zero_division=0.0)
    assert list(report.per_class) == report.label_names
    for i, name in enumerate(report.label_names):
        got = report.per_class[name]
        assert got == pytest.approx({"precision": p[i], "recall": r[i], "f1": f[i], "support": s[i]}, abs=1e-15)


def quiet_report(*args, **kwargs) -> LabelReport:
    """compute_label_metrics with every warning turned into an error: sklearn spam must become notes."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = compute_label_metrics(*args, **kwargs)
    assert not [note for note in report.notes if note.startswith("sklearn")], report.notes  # all explained
    return report


def random_probs(rng: np.random.Generator, y: np.ndarray, c: int, skill: float = 1.5) -> np.ndarray:
    logits = rng.normal(size=(len(y), c))
    logits[np.arange(len(y)), y] += skill
    return softmax(logits, axis=1)


# ----------------------------------------------------------------------------------- binary


def test_random_balanced_binary_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=400)
    probs = random_probs(rng, y, 2)
    report = quiet_report(y, probabilities=probs, label_names=["negative", "positive"])
    preds = probs.argmax(axis=1)
    assert_scalars(report, sklearn_reference(y, preds, 2, probs=probs, pos=1))
    assert set(report.scalars) == BINARY_KEYS | PROB_KEYS | THRESHOLD_KEYS
    assert_per_class(report, y, preds, 2)
    np.testing.assert_array_equal(report.confusion_matrix, skm.confusion_matrix(y, preds, labels=[0, 1]))
    assert report.notes == []

    curve = report.threshold_curve
    prec, rec, thr = skm.precision_recall_curve(y, probs[:, 1])
    np.testing.assert_array_equal(curve["threshold"], thr)
    np.testing.assert_array_equal(curve["precision"], prec[:-1])
    np.testing.assert_array_equal(curve["recall"], rec[:-1])
    # the best threshold applied by hand gives the reported F1
    best = report.scalars["best_threshold"]
    assert skm.f1_score(y, (probs[:, 1] >= best).astype(int)) == pytest.approx(report.scalars["best_threshold_f1"])

    flat = report.flat()
    assert flat["f1_positive"] == report.per_class["positive"]["f1"]
    assert flat["support_negative"] == float(np.sum(y == 0))
    assert all(isinstance(v, float) for v in flat.values())


def test_imbalanced_fraud_like_binary():
    rng = np.random.default_rng(1)
    y = (rng.random(2000) < 0.02).astype(int)
    assert 10 < y.sum() < 80
    probs = random_probs(rng, y, 2, skill=2.5)
    report = quiet_report(y, probabilities=probs, label_names=["legit", "fraud"])
    assert_scalars(report, sklearn_reference(y, probs.argmax(axis=1), 2, probs=probs, pos=1))
    assert_per_class(report, y, probs.argmax(axis=1), 2)


def test_model_that_never_predicts_positive():
    rng = np.random.default_rng(2)
    y = (rng.random(1000) < 0.02).astype(int)
    p_pos = rng.uniform(0.0, 0.4, size=1000)  # always below 0.5: argmax is always "legit"
    p_pos[y == 1] += 0.05  # but it still ranks the frauds a bit higher
    probs = np.stack([1 - p_pos, p_pos], axis=1)
    report = quiet_report(y, probabilities=probs, label_names=["legit", "fraud"])
    preds = probs.argmax(axis=1)
    assert not preds.any()
    assert_scalars(report, sklearn_reference(y, preds, 2, probs=probs, pos=1))
    assert report.scalars["precision"] == 0.0 and report.scalars["recall"] == 0.0 and report.scalars["f1"] == 0.0
    assert report.scalars["specificity"] == 1.0
    assert report.scalars["accuracy"] == pytest.approx(1 - y.mean())
    assert any("never predicted" in note and "fraud" in note for note in report.notes)
    assert report.scalars["best_threshold"] < 0.5  # the threshold view finds a useful operating point


def test_string_positive_label_and_int_id():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=300)
    probs = random_probs(rng, y, 2, skill=1.0)
    preds = probs.argmax(axis=1)
    by_name = quiet_report(y, probabilities=probs, label_names=["yes", "no"], positive_label="yes")
    by_id = quiet_report(y, probabilities=probs, label_names=["yes", "no"], positive_label=0)
    expected = sklearn_reference(y, preds, 2, probs=probs, pos=0)
    assert_scalars(by_name, expected)
    assert by_name.scalars == by_id.scalars
    tn, fp = skm.confusion_matrix(y, preds, labels=[0, 1])[1]  # negative = "no" (id 1)
    assert by_name.scalars["specificity"] == pytest.approx(fp / (tn + fp))
    # default positive is id 1, which gives different numbers
    assert quiet_report(y, probabilities=probs).scalars["precision"] != by_name.scalars["precision"]


def test_only_one_class_in_labels_omits_auc_with_a_note():
    y = np.zeros(20, dtype=int)
    probs = softmax(np.random.default_rng(4).normal(size=(20, 2)), axis=1)
    report = quiet_report(y, probabilities=probs, label_names=["neg", "pos"])
    assert "roc_auc" not in report.scalars and "pr_auc" not in report.scalars
    assert "best_threshold" not in report.scalars and report.threshold_curve is None
    assert any("roc_auc omitted" in note for note in report.notes)
    assert any("pr_auc" in note and "no 'pos'" in note for note in report.notes)
    assert all(math.isfinite(v) for v in report.scalars.values())
    assert report.scalars["log_loss"] == pytest.approx(skm.log_loss(y, probs, labels=[0, 1]))
    assert report.scalars["brier"] == pytest.approx(skm.brier_score_loss(y, probs[:, 1], pos_label=1))


# ------------------------------------------------------------------------------- multiclass


@pytest.mark.parametrize("c", [4, 5])
def test_multiclass_matches_sklearn(c):
    rng = np.random.default_rng(10 + c)
    y = rng.integers(0, c, size=500)
    probs = random_probs(rng, y, c)
    names = [f"class {i}" for i in range(c)]
    report = quiet_report(y, probabilities=probs, label_names=names)
    preds = probs.argmax(axis=1)
    expected = sklearn_reference(y, preds, c, probs=probs)
    assert_scalars(report, expected)
    assert set(report.scalars) == BASE_KEYS | PROB_KEYS
    assert report.scalars["f1"] == report.scalars["f1_macro"]
    assert_per_class(report, y, preds, c)
    np.testing.assert_array_equal(report.confusion_matrix, skm.confusion_matrix(y, preds, labels=list(range(c))))
    assert report.threshold_curve is None
    assert report.flat()["f1_class_2"] == report.per_class["class 2"]["f1"]


def test_class_missing_from_labels():
    rng = np.random.default_rng(20)
    c = 4
    y = rng.integers(0, 3, size=300)  # class 3 never occurs
    probs = random_probs(rng, y, c)
    probs[:10] = softmax(np.array([0.0, 0.0, 0.0, 5.0]) + rng.normal(size=(10, c)), axis=1)  # and is predicted
    preds = probs.argmax(axis=1)
    assert (preds == 3).any()
    report = quiet_report(y, probabilities=probs, label_names=["a", "b", "c", "d"])
    expected = sklearn_reference(y, preds, c, probs=probs)
    # sklearn's one-vs-rest macro is NaN here (and warns); the report averages the present classes (with a note)
    assert math.isnan(expected["roc_auc"])
    present = [0, 1, 2]
    one_hot = np.eye(c)[y][:, present]
    expected["roc_auc"] = skm.roc_auc_score(one_hot, probs[:, present], average="macro")
    expected["pr_auc"] = skm.average_precision_score(one_hot, probs[:, present], average="macro")
    assert_scalars(report, expected)
    assert_per_class(report, y, preds, c)
    assert report.per_class["d"]["recall"] == 0.0 and report.per_class["d"]["support"] == 0.0
    assert any("never occur in labels" in note and "'d'" in note for note in report.notes)
    assert any("one-vs-rest macro averages over the 3 classes" in note for note in report.notes)


def test_class_missing_from_predictions():
    rng = np.random.default_rng(21)
    c = 4
    y = rng.integers(0, c, size=300)
    probs = random_probs(rng, y, c)
    probs[:, 2] *= 0.01  # class 2 is never the arg-max
    probs /= probs.sum(axis=1, keepdims=True)
    preds = probs.argmax(axis=1)
    assert not (preds == 2).any()
    report = quiet_report(y, probabilities=probs, label_names=["a", "b", "c", "d"])
    assert_scalars(report, sklearn_reference(y, preds, c, probs=probs))
    assert_per_class(report, y, preds, c)
    assert report.per_class["c"]["precision"] == 0.0
    assert any("never predicted" in note and "'c'" in note for note in report.notes)


# ------------------------------------------------------------------ hard predictions / invalid


def test_hard_predictions_only():
    rng = np.random.default_rng(30)
    y = rng.integers(0, 3, size=200)
    preds = np.where(rng.random(200) < 0.7, y, rng.integers(0, 3, size=200))
    report = quiet_report(y, predictions=preds, label_names=["x", "y", "z"])
    expected = sklearn_reference(y, preds, 3, with_invalid=True)
    assert expected["invalid_rate"] == 0.0
    assert_scalars(report, expected)
    assert not PROB_KEYS & set(report.scalars)
    assert report.threshold_curve is None
    assert any("hard predictions only" in note for note in report.notes)
    # the invalid row/column is there (all zero), so the shape is stable across evaluations
    assert report.confusion_matrix.shape == (4, 4) and not report.confusion_matrix[:, 3].any()
    assert report.matrix_labels == ["x", "y", "z", INVALID_LABEL]


def test_hard_predictions_binary():
    rng = np.random.default_rng(31)
    y = rng.integers(0, 2, size=200)
    preds = np.where(rng.random(200) < 0.8, y, 1 - y)
    report = quiet_report(y, predictions=preds, num_classes=2)
    assert_scalars(report, sklearn_reference(y, preds, 2, pos=1, with_invalid=True))


@pytest.mark.parametrize("c", [2, 4])
def test_invalid_generative_predictions(c):
    rng = np.random.default_rng(40 + c)
    y = rng.integers(0, c, size=300)
    preds = np.where(rng.random(300) < 0.7, y, rng.integers(0, c, size=300))
    preds[rng.random(300) < 0.15] = c  # unmatched answers
    n_invalid = int((preds == c).sum())
    report = quiet_report(y, predictions=preds, num_classes=c)
    expected = sklearn_reference(y, preds, c, pos=1 if c == 2 else None, with_invalid=True)
    assert_scalars(report, expected)
    assert_per_class(report, y, preds, c)
    assert report.scalars["invalid_rate"] == pytest.approx(n_invalid / 300)
    # invalid answers count as wrong: micro precision == accuracy
    assert report.scalars["precision_micro"] == pytest.approx(report.scalars["accuracy"])
    cm = skm.confusion_matrix(y, preds, labels=list(range(c + 1)))
    np.testing.assert_array_equal(report.confusion_matrix, cm)
    assert report.confusion_matrix[:, c].sum() == n_invalid
    assert report.matrix_labels[-1] == INVALID_LABEL
    assert any("match no label" in note for note in report.notes)


def test_invalid_with_probabilities():
    rng = np.random.default_rng(45)
    y = rng.integers(0, 2, size=100)
    probs = random_probs(rng, y, 2)
    preds = probs.argmax(axis=1)
    preds[:7] = 2
    report = quiet_report(y, probabilities=probs, predictions=preds)
    expected = sklearn_reference(y, preds, 2, probs=probs, pos=1, with_invalid=True)
    assert_scalars(report, expected)


def test_ece_tiny_hand_computation():
    # 4 rows, 2 bins: (0, .5] and (.5, 1].
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    y = np.array([0, 1, 1, 0])
    # bin (.5, 1] holds all rows: confidences .9 .8 .6 .7 (mean .75), correct 1 0 1 0 (acc .5)
    report = compute_label_metrics(y, probabilities=probs, ece_bins=2)
    assert report.scalars["ece"] == pytest.approx(0.25)
    # 10 bins: .9 -> (.8,.9] acc 1; .8 -> (.7,.8] acc 0; .6 -> (.5,.6] acc 1; .7 -> (.6,.7] acc 0
    expected = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.6) + abs(0 - 0.7)) / 4
    assert compute_label_metrics(y, probabilities=probs, ece_bins=10).scalars["ece"] == pytest.approx(expected)
    # three classes, 1 bin: |accuracy - mean confidence|
    p3 = np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.1, 0.7, 0.2]])
    r3 = compute_label_metrics(np.array([0, 1, 1]), probabilities=p3, ece_bins=1)
    assert r3.scalars["ece"] == pytest.approx(abs(2 / 3 - (0.5 + 0.6 + 0.7) / 3))


def test_float32_probabilities_are_accepted():
    rng = np.random.default_rng(50)
    y = rng.integers(0, 3, size=100)
    probs32 = random_probs(rng, y, 3).astype(np.float32)
    report = quiet_report(y, probabilities=probs32)
    p64 = probs32.astype(np.float64)
    p64 /= p64.sum(axis=1, keepdims=True)
    assert report.scalars["log_loss"] == pytest.approx(skm.log_loss(y, p64, labels=[0, 1, 2]), rel=1e-9)


# ------------------------------------------------------------------------------- flat keys


def test_flat_sanitises_and_avoids_collisions():
    y = np.array([0, 1, 2, 3, 0, 1])
    preds = np.array([0, 1, 2, 3, 1, 1])
    names = ["Not spam!", "not-spam?", "macro", "ok"]
    report = compute_label_metrics(y, predictions=preds, label_names=names)
    flat = report.flat()
    assert flat["f1_Not_spam_"] == report.per_class["Not spam!"]["f1"]
    assert flat["f1_not_spam_"] == report.per_class["not-spam?"]["f1"]
    assert flat["f1_macro"] == report.scalars["f1_macro"]  # not overwritten by the label "macro"
    assert flat["f1_macro_2"] == report.per_class["macro"]["f1"]
    assert all(k.replace("_", "").isalnum() for k in flat)
    assert len(flat) == len(report.scalars) + 4 * len(names)


# ------------------------------------------------------------------------------- bad input


def test_labels_outside_label_set_raise():
    with pytest.raises(ConfigurationError, match=r"\[0, 2\).*'neg', 'pos'.*\[-100, 5\]"):
        compute_label_metrics([0, 1, 5, -100], predictions=[0, 1, 1, 1], label_names=["neg", "pos"])


def test_bad_configuration_raises():
    probs = np.array([[0.3, 0.7], [0.6, 0.4]])
    with pytest.raises(ConfigurationError, match="positive_label='maybe'"):
        compute_label_metrics([0, 1], probabilities=probs, label_names=["no", "yes"], positive_label="maybe")
    with pytest.raises(ConfigurationError, match="positive_label=2"):
        compute_label_metrics([0, 1], probabilities=probs, positive_label=2)
    with pytest.raises(ConfigurationError, match="only applies to binary"):
        compute_label_metrics([0, 1], probabilities=np.full((2, 3), 1 / 3), positive_label=1)
    with pytest.raises(ConfigurationError, match="3 rows but labels has 2"):
        compute_label_metrics([0, 1], probabilities=np.full((3, 2), 0.5))
    with pytest.raises(ConfigurationError, match="disagrees"):
        compute_label_metrics([0, 1], probabilities=probs, label_names=["a", "b", "c"])
    with pytest.raises(ConfigurationError, match="shape"):
        compute_label_metrics([0, 1], probabilities=np.array([0.3, 0.6]))
    with pytest.raises(ConfigurationError, match="softmax"):
        compute_label_metrics([0, 1], probabilities=np.array([[2.0, -1.0], [0.5, 0.1]]))
    with pytest.raises(ConfigurationError, match="sum to 1"):
        compute_label_metrics([0, 1], probabilities=np.array([[0.5, 0.1], [0.5, 0.1]]))
    with pytest.raises(ConfigurationError, match="num_classes= or label_names="):
        compute_label_metrics([0, 1], predictions=[0, 1])
    with pytest.raises(ConfigurationError, match="outside"):
        compute_label_metrics([0, 1], predictions=[0, 3], num_classes=2)
    with pytest.raises(ConfigurationError, match="No labelled examples"):
        compute_label_metrics([], predictions=[], num_classes=2)
    with pytest.raises(ConfigurationError, match="unique"):
        compute_label_metrics([0, 1], predictions=[0, 1], label_names=["a", "a"])
    assert issubclass(ConfigurationError, ValueError)


# ------------------------------------------------------------------------------ accumulator


def _batches(rng: np.random.Generator, n: int, c: int, batch: int):
    logits = rng.normal(size=(n, c)) * 3
    labels = rng.integers(0, c, size=n)
    labels[rng.random(n) < 0.2] = -100
    return [(logits[i : i + batch], labels[i : i + batch]) for i in range(0, n, batch)], logits, labels


def test_accumulator_streaming_equals_one_shot():
    rng = np.random.default_rng(60)
    batches, logits, labels = _batches(rng, 203, 3, 16)
    acc = LabelAccumulator()
    for i, (lg, lb) in enumerate(batches):
        if i % 2:  # torch tensors (bf16-safe path) and numpy both work
            acc.add(torch.tensor(lg, dtype=torch.float64), torch.tensor(lb))
        else:
            acc.add(lg, lb)
    keep = labels != -100
    assert len(acc) == int(keep.sum())
    expected = quiet_report(labels[keep], probabilities=softmax(logits[keep], axis=1))
    got = acc.report()
    assert got.scalars == pytest.approx(expected.scalars, rel=1e-12)
    assert_scalars(got, sklearn_reference(labels[keep], logits[keep].argmax(1), 3, probs=softmax(logits[keep], 1)))
    np.testing.assert_array_equal(got.confusion_matrix, expected.confusion_matrix)
    acc.reset()
    assert len(acc) == 0


def test_accumulator_probabilities_and_sigmoid_head():
    rng = np.random.default_rng(61)
    y = rng.integers(0, 2, size=50)
    p = rng.random(50)
    acc = LabelAccumulator()
    acc.add(p[:, None], y, are_logits=False)
    expected = compute_label_metrics(y, probabilities=np.stack([1 - p, p], axis=1))
    assert acc.report().scalars == pytest.approx(expected.scalars)
    z = rng.normal(size=50)
    acc2 = LabelAccumulator()
    acc2.add(torch.tensor(z, dtype=torch.bfloat16), y)
    zb = torch.tensor(z, dtype=torch.bfloat16).double().numpy()
    pb = 1 / (1 + np.exp(-zb))
    assert acc2.report().scalars == pytest.approx(
        compute_label_metrics(y, probabilities=np.stack([1 - pb, pb], axis=1)).scalars
    )


def test_merged_states_equal_one_shot():
    rng = np.random.default_rng(62)
    batches, logits, labels = _batches(rng, 150, 4, 10)
    ranks = [LabelAccumulator(num_classes=4) for _ in range(3)]
    for i, (lg, lb) in enumerate(batches):
        ranks[i % 3].add(lg, lb)
    states = [pickle.loads(pickle.dumps(r.state())) for r in ranks]
    merged = LabelAccumulator.merged([*states, LabelAccumulator().state()])  # an empty rank is fine
    one_shot = LabelAccumulator(num_classes=4)
    for lg, lb in batches:
        one_shot.add(lg, lb)
    assert len(merged) == len(one_shot)
    # rows come in rank order, so compare the (order-independent) metrics
    names = list("abcd")
    assert merged.report(label_names=names).scalars == pytest.approx(one_shot.report(label_names=names).scalars)
    keep = labels != -100
    direct = compute_label_metrics(labels[keep], probabilities=softmax(logits[keep], axis=1), label_names=names)
    assert merged.report(label_names=names).flat() == pytest.approx(direct.flat())


def test_accumulator_hard_predictions():
    acc = LabelAccumulator(num_classes=3)
    acc.add_predictions([0, 1, 3, 2], [0, 1, 1, -100])
    acc.add_predictions(torch.tensor([2, 2]), torch.tensor([2, 0]))
    merged = LabelAccumulator.merged([acc.state()])
    for a in (acc, merged):
        report = a.report(label_names=["a", "b", "c"])
        assert len(a) == 5
        assert report.scalars["invalid_rate"] == pytest.approx(1 / 5)
        assert report.scalars["accuracy"] == pytest.approx(3 / 5)
    with pytest.raises(ConfigurationError, match="cannot mix"):
        acc.add(np.zeros((1, 3)), [0])
    with pytest.raises(ConfigurationError, match="num_classes=3"):
        LabelAccumulator(num_classes=3).add(np.zeros((2, 4)), [0, 1])
    with pytest.raises(ConfigurationError, match="No labelled examples"):
        LabelAccumulator(num_classes=2).report()


# ------------------------------------------------------------------------- text matching


def test_normalize_label_text():
    assert normalize_label_text("  **Positive.**\n") == "positive"
    assert normalize_label_text("NOT\tsure!!") == "not sure"
    assert normalize_label_text("Straße") == "strasse"
    assert normalize_label_text("«Non-toxic»") == "non toxic"


def test_match_label_texts():
    labels = ["positive", "negative", "neutral"]
    inv = len(labels)
    cases = {
        "positive": 0,
        "POSITIVE": 0,  # case
        "Negative.": 1,  # punctuation
        "  neutral \n": 2,  # whitespace
        "**neutral**": 2,
        "Positive, because the reviewer loved it": 0,  # prefix answer
        "negative. The plot was weak, nothing positive": 1,  # a later mention does not count
        "positively thrilled": inv,  # not a whole word
        "positive or negative": inv,  # ambiguous hedge
        "Positive/Negative": inv,
        "positive, maybe negative": inv,
        "I think it is positive": inv,  # label not at the start
        "mixed": inv,  # no match
        "": inv,
    }
    assert match_label_texts(list(cases), labels) == list(cases.values())
    assert match_label_texts([None], labels) == [inv]


def test_match_label_texts_nested_and_hedge_labels():
    labels = ["yes", "no", "maybe", "not sure", "not"]
    got = match_label_texts(["Not sure, really", "not at all", "yes maybe", "Maybe.", "no, no"], labels)
    assert got == [3, 4, len(labels), 2, 1]
    with pytest.raises(ConfigurationError, match="normalise to"):
        match_label_texts(["x"], ["Positive", "positive!"])
    with pytest.raises(ConfigurationError, match="empty"):
        match_label_texts(["x"], ["ok", "?!"])


def test_generative_end_to_end():
    names = ["Positive", "Negative"]
    gens = ["positive", "Negative!", "Positive, clearly", "dunno", "negative or positive", "NEGATIVE"]
    y = np.array([0, 1, 1, 0, 1, 1])
    preds = np.array(match_label_texts(gens, names))
    np.testing.assert_array_equal(preds, [0, 1, 0, 2, 2, 1])
    report = quiet_report(y, predictions=preds, label_names=names, positive_label="Positive")
    assert_scalars(report, sklearn_reference(y, preds, 2, pos=0, with_invalid=True))
    assert report.scalars["invalid_rate"] == pytest.approx(2 / 6)
