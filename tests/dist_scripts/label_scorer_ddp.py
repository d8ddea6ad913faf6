"""Run under `torchrun --nproc_per_node 2` (CPU, gloo) by tests/test_label_scorer.py.

usage: label_scorer_ddp.py TOKENIZER_DIR OUT_DIR

A tiny BERT classifier trains 10 steps with LabelScorer and is evaluated at step 10. The eval set has
61 samples and eval batches are 10 per rank, so distributed evaluation repeats samples to even out
the last round; LabelScorer must count each sample exactly once. Rank 0 also computes the class
probabilities of the final model over the whole eval set in this process alone, for the test to
compare with sklearn. Each rank writes OUT_DIR/rank{R}.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import DataCollatorWithPadding, PreTrainedTokenizerFast

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS.parent))

from ft_callbacks import LabelScorer, toy  # noqa: E402
from ft_callbacks.records import write_record  # noqa: E402
from tests.test_label_scorer import NAMES3, classifier_trainer, topic  # noqa: E402


def main() -> None:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(sys.argv[1])
    out_dir = Path(sys.argv[2])
    scorer = LabelScorer(label_names=NAMES3)
    trainer = classifier_trainer(
        tokenizer, toy.stdlib_corpus(), out_dir / "trainer", [scorer], 3, topic, eval_size=61,
        max_steps=10, eval_steps=10, per_device_eval_batch_size=10, ddp_backend="gloo", report_to="wandb",
    )  # fmt: skip
    assert dist.is_initialized() and dist.get_world_size() == 2
    trainer.train()
    rank = trainer.args.process_index
    logged = [e for e in trainer.state.log_history if "eval_accuracy" in e]
    record = {"rank": rank, "evals": logged, "confusion_matrix": scorer.last_report.confusion_matrix.tolist()}
    if rank == 0:
        dataset = trainer.eval_dataset
        batch = DataCollatorWithPadding(tokenizer)([dataset[i] for i in range(len(dataset))])
        model = trainer.model.eval()
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        record["hand_probabilities"] = logits.double().softmax(-1).tolist()
        record["hand_labels"] = batch["labels"].tolist()
    write_record(out_dir / f"rank{rank}.json", record)  # atomic
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
