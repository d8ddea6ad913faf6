"""A sequence-classification fine-tune with `Trainer`, scored by LabelScorer (accuracy, precision,
recall, F1, AUC, calibration, confusion matrix: no `compute_metrics` to write) and saved by
BestCheckpointSaver whenever macro-F1 improves, both in one line.

The task needs no download: tell which part of Python's standard library a paragraph of its
documentation comes from (text processing, files, numbers or networking). Offline and on CPU by
default (a tiny, randomly initialised BERT and a tokenizer trained on the same docstrings, in well
under a minute); with a network, `--model distilbert-base-uncased` (or any encoder on the hub)
fine-tunes a real model instead.

    python examples/sequence_classification.py --output-dir runs/classify
    python examples/sequence_classification.py --model distilbert-base-uncased --output-dir runs/distilbert
"""

from __future__ import annotations

import argparse
import os
import random

from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from ft_callbacks import BestCheckpointSaver, LabelScorer, find_best_checkpoint, toy

# Class name -> the standard-library modules whose documentation makes up that class.
TOPICS: dict[str, tuple[str, ...]] = {
    "text": ("re", "string", "textwrap", "difflib", "csv"),
    "files": ("os", "pathlib", "shutil", "tempfile", "zipfile", "tarfile", "gzip"),
    "numbers": ("math", "decimal", "fractions", "statistics", "random"),
    "network": ("socket", "http.client", "urllib.parse", "email"),
}
LABELS = list(TOPICS)


def topic_splits(eval_fraction: float = 0.25, seed: int = 0) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(text, label id) pairs for training and evaluation; every class is split in the same proportion."""
    train, evaluation = [], []
    rng = random.Random(seed)
    for label, modules in enumerate(TOPICS.values()):
        texts = toy.stdlib_corpus(modules=modules)
        rng.shuffle(texts)
        cut = round(len(texts) * eval_fraction)
        evaluation += [(t, label) for t in texts[:cut]]
        train += [(t, label) for t in texts[cut:]]
    rng.shuffle(train)
    return train, evaluation


def tokenise(pairs: list[tuple[str, int]], tokenizer, max_length: int = 64) -> Dataset:
    enc = tokenizer([t for t, _ in pairs], truncation=True, max_length=max_length)
    return Dataset.from_dict(
        {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": [y for _, y in pairs]}
    )


def main(argv: list[str] | None = None) -> Trainer:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="'tiny' (offline, random init) or a hub model name")
    parser.add_argument("--output-dir", default="runs/classify")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--eval-steps", type=int, default=50)
    parser.add_argument("--learning-rate", type=float, default=None, help="default 1e-3 (tiny) or 5e-5 (hub)")
    parser.add_argument("--report-to", default="none", help="'wandb' to use the Trainer's own wandb logging too")
    args = parser.parse_args(argv)

    train_pairs, eval_pairs = topic_splits()
    id2label = dict(enumerate(LABELS))
    if args.model == "tiny":
        tokenizer = toy.train_tokenizer(toy.stdlib_corpus())
        model = toy.tiny_bert_classifier(tokenizer, num_labels=len(LABELS))
        model.config.id2label, model.config.label2id = id2label, {v: k for k, v in id2label.items()}
        learning_rate = args.learning_rate or 1e-3
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForSequenceClassification.from_pretrained(
            args.model, num_labels=len(LABELS), id2label=id2label, label2id={v: k for k, v in id2label.items()}
        )
        learning_rate = args.learning_rate or 5e-5

    training_args = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=64,
        learning_rate=learning_rate,
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        logging_steps=args.eval_steps,
        save_strategy="no",  # BestCheckpointSaver writes the only checkpoints: the best ones
        report_to=args.report_to,
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=tokenise(train_pairs, tokenizer),
        eval_dataset=tokenise(eval_pairs, tokenizer),
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        callbacks=[LabelScorer(label_names=LABELS), BestCheckpointSaver(monitor="eval_f1")],  # <- the one line
    )
    trainer.train()
    # The end of a transformers example script: the final weights, a last evaluation, the model card.
    trainer.save_model()
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    trainer.save_state()
    trainer.create_model_card(model_name=os.path.basename(os.path.abspath(args.output_dir)))

    evals = [e for e in trainer.state.log_history if e.get("eval_f1") is not None]
    best = max(evals, key=lambda e: e["eval_f1"])
    last = evals[-1]
    print(f"\n{len(train_pairs)} training / {len(eval_pairs)} evaluation paragraphs, {len(LABELS)} classes {LABELS}")
    print(
        f"macro-F1 {last['eval_f1']:.3f}, accuracy {last['eval_accuracy']:.3f} at step {last['step']} "
        f"(best macro-F1 {best['eval_f1']:.3f} at step {best['step']}; "
        f"a uniform guess scores about {1 / len(LABELS):.2f})"
    )
    print("per class F1: " + ", ".join(f"{n} {last[f'eval_f1_{n}']:.2f}" for n in LABELS))
    print(f"best checkpoint (by eval_f1): {find_best_checkpoint(args.output_dir) or 'none saved'}")
    print(f"trainer_state.json (every result, step by step): {os.path.join(args.output_dir, 'trainer_state.json')}")
    return trainer


if __name__ == "__main__":
    main()
