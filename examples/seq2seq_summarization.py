"""A summarization-style fine-tune of an encoder-decoder with `Seq2SeqTrainer`, with all three
callbacks in one line: OverfitGuard, GenerationScorer (ROUGE and BLEU of real generations against
the references, from a step-0 baseline on) and BestCheckpointSaver keeping the best-ROUGE-L weights.

The task needs no download: each input is a paragraph of Python's standard-library documentation,
and its "summary" is the paragraph's first sentence. Offline and on CPU by default (a tiny, randomly
initialised T5 and a tokenizer trained on the same docstrings, in well under a minute); with a
network, `--model t5-small` (or any encoder-decoder on the hub) fine-tunes a real model instead.
The tiny model learns the style of the summaries more than how to copy a sentence, so its ROUGE stays
low and tends to peak before the end as it starts to memorise: which is what BestCheckpointSaver is for.

    python examples/seq2seq_summarization.py --output-dir runs/seq2seq
    python examples/seq2seq_summarization.py --model t5-small --max-steps 500 --output-dir runs/t5
"""

from __future__ import annotations

import argparse
import os
import re

from datasets import Dataset
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    GenerationConfig,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
)

from ft_callbacks import BestCheckpointSaver, GenerationScorer, OverfitGuard, find_best_checkpoint, toy

PREFIX = "summarize: "  # T5's own task prefix; harmless for the tiny model
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def summarisation_pairs(texts: list[str], max_summary_chars: int = 110) -> list[tuple[str, str]]:
    """(document, summary) pairs: a docstring paragraph of two or more sentences and its first sentence."""
    pairs = []
    for text in texts:
        parts = _SENTENCE_END.split(text, maxsplit=1)
        if len(parts) == 2 and 20 <= len(parts[0]) <= max_summary_chars:
            pairs.append((text, parts[0]))
    return pairs


def tokenise(pairs: list[tuple[str, str]], tokenizer, max_source: int, max_target: int) -> Dataset:
    """input_ids/attention_mask of the documents (truncated) and labels of the summaries, each ending in
    EOS. Pairs whose summary does not fit in `max_target` tokens are left out, not cut: a truncated
    reference would be scored against a summary the model is right to finish."""
    eos = tokenizer.eos_token_id
    rows: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    for document, summary in pairs:
        source = tokenizer(PREFIX + document, truncation=True, max_length=max_source)
        target = tokenizer(summary)["input_ids"]
        # Hub seq2seq tokenizers (T5, BART) end a sequence with EOS themselves; the tiny one does not.
        target = target if target and target[-1] == eos else [*target, eos]
        if len(target) > max_target:
            continue
        rows["input_ids"].append(source["input_ids"])
        rows["attention_mask"].append(source["attention_mask"])
        rows["labels"].append(target)
    return Dataset.from_dict(rows)


def main(argv: list[str] | None = None) -> Seq2SeqTrainer:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="'tiny' (offline, random init) or a hub model name")
    parser.add_argument("--output-dir", default="runs/seq2seq")
    parser.add_argument("--train-size", type=int, default=192, help="training (document, summary) pairs")
    parser.add_argument("--eval-size", type=int, default=48)
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--eval-steps", type=int, default=50)
    parser.add_argument("--learning-rate", type=float, default=None, help="default 3e-3 (tiny) or 3e-4 (hub)")
    parser.add_argument("--max-source-tokens", type=int, default=64, help="documents are truncated to this")
    parser.add_argument("--num-samples", type=int, default=16, help="eval documents summarised at each evaluation")
    parser.add_argument("--report-to", default="none", help="'wandb' to use the Trainer's own wandb logging too")
    args = parser.parse_args(argv)

    texts = toy.stdlib_corpus()
    pairs = summarisation_pairs(texts)
    train_pairs = pairs[: args.train_size]
    eval_pairs = pairs[args.train_size : args.train_size + args.eval_size]
    if not eval_pairs:
        parser.error(f"--train-size {args.train_size} leaves no evaluation pairs (there are {len(pairs)} in all)")
    if args.model == "tiny":
        tokenizer = toy.train_tokenizer(texts)
        model = toy.tiny_t5(tokenizer)
        learning_rate = args.learning_rate or 3e-3
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        model = AutoModelForSeq2SeqLM.from_pretrained(args.model)
        learning_rate = args.learning_rate or 3e-4
    train = tokenise(train_pairs, tokenizer, max_source=args.max_source_tokens, max_target=48)
    evaluation = tokenise(eval_pairs, tokenizer, max_source=args.max_source_tokens, max_target=48)

    training_args = Seq2SeqTrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=32,
        learning_rate=learning_rate,
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        logging_steps=args.eval_steps,
        save_strategy="no",  # BestCheckpointSaver writes the only checkpoints: the best ones
        report_to=args.report_to,
        seed=0,
        dataloader_num_workers=0,
    )
    # Summaries of a fixed sample of eval documents, generated (greedy, no repeated trigrams, as is usual
    # for summaries) and scored with ROUGE and BLEU at step 0 and at every evaluation.
    scorer = GenerationScorer(
        dataset=evaluation,
        metrics=("rouge", "bleu"),
        num_samples=args.num_samples,
        max_new_tokens=48,
        generation_config=GenerationConfig(no_repeat_ngram_size=3),
    )
    guard = OverfitGuard(patience=3)
    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
        processing_class=tokenizer,
        callbacks=[guard, scorer, BestCheckpointSaver(monitor="eval_rougeL")],  # <- the one line
    )
    trainer.train()
    # The end of a transformers example script: the final weights, a last evaluation, the model card.
    trainer.save_model()
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    trainer.save_state()
    trainer.create_model_card(model_name=os.path.basename(os.path.abspath(args.output_dir)))

    # By step: a round scored in the background is logged when ready, possibly after later entries.
    rounds = sorted((e for e in trainer.state.log_history if e.get("eval_rougeL") is not None), key=lambda e: e["step"])
    top = max((e for e in rounds if "eval_loss" in e), key=lambda e: e["eval_rougeL"])  # evaluations, not step 0
    print(
        f"\nROUGE-L of generated summaries: {rounds[0]['eval_rougeL']:.3f} at step 0 (untrained) -> "
        f"{rounds[-1]['eval_rougeL']:.3f} at step {rounds[-1]['step']} (BLEU {rounds[-1]['eval_bleu']:.2f}); "
        f"best {top['eval_rougeL']:.3f} at step {top['step']}"
    )
    last = [e for e in trainer.state.log_history if e.get("eval_perplexity") is not None][-1]
    print(f"validation perplexity at step {last['step']}: {last['eval_perplexity']:.2f}")
    if guard.stopped:
        print(f"OverfitGuard stopped training at step {guard.policy.stop_step}: {guard.stop_reason}")
    best = find_best_checkpoint(args.output_dir)
    print(f"best checkpoint (by eval_rougeL): {best or 'none saved'}")
    print(f"trainer_state.json (every result, step by step): {os.path.join(args.output_dir, 'trainer_state.json')}")
    return trainer


if __name__ == "__main__":
    main()
