"""Run under `torchrun --nproc_per_node 2` (CPU, gloo) by tests/test_label_tasks_distributed.py.

usage: label_tasks_ddp.py TOKENIZER_DIR OUT_DIR

Three tiny BERT fine-tunes in one launch (a regression head sliced by source, a multi-label head, a
token-classification head), each trained 2 steps with LabelScorer and evaluated at step 2 on 61
samples in eval batches of 10 per rank, so distributed evaluation repeats samples to even out the
last round; LabelScorer must count each sample exactly once. Every rank also runs `trainer.predict()`
(whose outputs the Trainer gathers and de-duplicates) for the test to recompute the numbers with the
reference libraries. Each rank writes OUT_DIR/rank{R}.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch.distributed as dist
from transformers import (
    BertForSequenceClassification,
    BertForTokenClassification,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    PreTrainedTokenizerFast,
)

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS.parent))

from ft_callbacks import toy  # noqa: E402
from ft_callbacks.label_scorer import LabelScorer  # noqa: E402
from ft_callbacks.records import write_record  # noqa: E402
from tests.test_label_tasks import (  # noqa: E402
    ML_NAMES,
    TAGS,
    bert_config,
    make_trainer,
    multi_hot,
    ner_data,
    sequence_data,
)

SETTINGS = {"max_steps": 2, "eval_steps": 2, "logging_steps": 2, "per_device_eval_batch_size": 10,
            "ddp_backend": "gloo", "report_to": "none"}  # fmt: skip


def run(name, model, tokenizer, train, evaluation, collator, out_dir, scorer) -> dict:
    trainer = make_trainer(model, tokenizer, train, evaluation, collator, out_dir / name, [scorer], **SETTINGS)
    trainer.train()
    logged = [e for e in trainer.state.log_history if "eval_loss" in e]
    out = trainer.predict(evaluation)
    record = {"evals": logged, "label_ids": np.asarray(out.label_ids).tolist()}
    predictions = np.asarray(out.predictions)
    # token classification: the arg-max only (what run_ner's compute_metrics uses)
    record["predictions"] = (predictions.argmax(-1) if predictions.ndim == 3 else predictions).tolist()
    if scorer.last_slices is not None:
        record["slices"] = {r.name: r.count for r in scorer.last_slices.slices}
    return record


def main() -> None:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(sys.argv[1])
    out_dir = Path(sys.argv[2])
    corpus = toy.stdlib_corpus()
    record = {}
    target = lambda text: len(text) / 100.0  # noqa: E731
    record["regression"] = run(
        "regression", BertForSequenceClassification(bert_config(tokenizer, num_labels=1)), tokenizer,
        sequence_data(tokenizer, corpus[:40], target), sequence_data(tokenizer, corpus[200:261], target),
        DataCollatorWithPadding(tokenizer), out_dir, LabelScorer(slice_by="source", min_slice_size=1),
    )  # fmt: skip
    config = bert_config(tokenizer, num_labels=3, problem_type="multi_label_classification",
                         id2label=dict(enumerate(ML_NAMES)))  # fmt: skip
    record["multi_label"] = run(
        "multi_label", BertForSequenceClassification(config), tokenizer,
        sequence_data(tokenizer, corpus[:40], multi_hot), sequence_data(tokenizer, corpus[200:261], multi_hot),
        DataCollatorWithPadding(tokenizer), out_dir, LabelScorer(),
    )  # fmt: skip
    config = bert_config(tokenizer, num_labels=len(TAGS), id2label=dict(enumerate(TAGS)))
    record["tokens"] = run(
        "tokens", BertForTokenClassification(config), tokenizer, ner_data(tokenizer, corpus[:40]),
        ner_data(tokenizer, corpus[200:261]), DataCollatorForTokenClassification(tokenizer), out_dir, LabelScorer(),
    )  # fmt: skip
    assert dist.is_initialized() and dist.get_world_size() == 2
    rank = dist.get_rank()
    record["rank"] = rank
    write_record(out_dir / f"rank{rank}.json", record)  # atomic
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
