"""LabelScorer under torchrun with 2 processes for regression, multi-label and token classification:
every sample of the eval set counted once (not one shard, not the samples repeated to even out the
last round), the same numbers on every rank, equal to the reference libraries on the gathered
`trainer.predict()` outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from seqeval import metrics as sqm
from sklearn import metrics as skm

from .helpers import run_torchrun
from .test_label_tasks import TAGS

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


@pytest.fixture(scope="module")
def ranks(tokenizer, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("label_tasks_ddp")
    tok_dir = tmp / "tokenizer"
    tokenizer.save_pretrained(str(tok_dir))
    script = Path(__file__).resolve().parent / "dist_scripts" / "label_tasks_ddp.py"
    rc, output, _ = run_torchrun(script, tok_dir, tmp / "out")
    assert rc == 0, output[-6000:]
    return [json.loads((tmp / "out" / f"rank{r}.json").read_text()) for r in range(2)]


def _same_on_both_ranks(r0: dict, r1: dict) -> dict:
    a, b = r0["evals"][-1], r1["evals"][-1]
    ours = {k: v for k, v in a.items() if "runtime" not in k and "per_second" not in k}
    assert ours == {k: b[k] for k in ours}
    return a


def test_regression_counts_each_sample_once(ranks):
    r0, r1 = ranks[0]["regression"], ranks[1]["regression"]
    logged = _same_on_both_ranks(r0, r1)
    y, p = np.asarray(r0["label_ids"], dtype=float), np.asarray(r0["predictions"], dtype=float)[:, 0]
    assert len(y) == 61
    assert sum(r0["slices"].values()) == 61 and r0["slices"] == r1["slices"]
    assert sum(logged[f"eval_slice_{name}_count"] for name in r0["slices"]) == 61
    assert logged["eval_rmse"] == pytest.approx(skm.root_mean_squared_error(y, p), rel=1e-5)
    assert logged["eval_r2"] == pytest.approx(skm.r2_score(y, p), rel=1e-5, abs=1e-6)
    assert logged["eval_spearman"] == pytest.approx(stats.spearmanr(y, p).statistic, rel=1e-5, abs=1e-6)


def test_multi_label_counts_each_sample_once(ranks):
    r0, r1 = ranks[0]["multi_label"], ranks[1]["multi_label"]
    logged = _same_on_both_ranks(r0, r1)
    y = np.asarray(r0["label_ids"]).astype(int)
    probs = 1 / (1 + np.exp(-np.asarray(r0["predictions"], dtype=float)))
    preds = (probs >= 0.5).astype(int)
    assert y.shape == (61, 3)
    assert sum(logged[f"eval_support_{n}"] for n in ("long", "code", "comma")) == y.sum()
    assert logged["eval_f1_micro"] == pytest.approx(skm.f1_score(y, preds, average="micro", zero_division=0))
    assert logged["eval_hamming_loss"] == pytest.approx(skm.hamming_loss(y, preds))


def test_token_classification_counts_each_sample_once(ranks):
    r0, r1 = ranks[0]["tokens"], ranks[1]["tokens"]
    logged = _same_on_both_ranks(r0, r1)
    labels, predictions = r0["label_ids"], r0["predictions"]
    assert len(labels) == 61
    true_tags = [[TAGS[la] for la in row if la != -100] for row in labels]
    pred_tags = [[TAGS[p] for p, la in zip(prow, row, strict=True) if la != -100]
                 for prow, row in zip(predictions, labels, strict=True)]  # fmt: skip
    reference = sqm.classification_report(true_tags, pred_tags, output_dict=True)
    for entity in ("CAP", "CODE"):
        assert logged[f"eval_entity_support_{entity}"] == reference[entity]["support"]
    assert logged["eval_entity_f1"] == pytest.approx(reference["micro avg"]["f1-score"])
    assert logged["eval_token_accuracy"] == pytest.approx(sqm.accuracy_score(true_tags, pred_tags))
