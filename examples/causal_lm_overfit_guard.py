"""A plain causal-LM fine-tune with `Trainer`, plus OverfitGuard in one line.

Offline and on CPU by default: a tiny GPT-2 trained on Python's standard-library docstrings, with a
deliberately small training set so it starts to memorise and OverfitGuard stops it.
With a network, `--model gpt2` (or any causal LM on the hub) fine-tunes a real model instead.

    python examples/causal_lm_overfit_guard.py --output-dir runs/clm
"""

from __future__ import annotations

import argparse
import os

from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
)

from ft_callbacks import OverfitGuard, toy


def main(argv: list[str] | None = None) -> Trainer:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="'tiny' (offline, random init) or a hub model name")
    parser.add_argument("--output-dir", default="runs/causal_lm")
    parser.add_argument("--train-size", type=int, default=48, help="training paragraphs (small = overfits)")
    parser.add_argument("--eval-size", type=int, default=96)
    parser.add_argument("--max-steps", type=int, default=400)
    parser.add_argument("--eval-steps", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--report-to", default="none", help="'wandb' to use the Trainer's own wandb logging too")
    args = parser.parse_args(argv)

    texts = toy.stdlib_corpus()
    if args.model == "tiny":
        tokenizer = toy.train_tokenizer(texts)
        model = toy.tiny_gpt2(tokenizer)
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(args.model)
    train = toy.causal_lm_dataset(texts[: args.train_size], tokenizer, max_length=64)
    evaluation = toy.causal_lm_dataset(texts[400 : 400 + args.eval_size], tokenizer, max_length=64)

    training_args = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=args.learning_rate,
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        logging_steps=args.eval_steps,
        save_strategy="no",
        report_to=args.report_to,
        seed=0,
    )
    guard = OverfitGuard(patience=3)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
        callbacks=[guard],  # <- the one line
    )
    trainer.train()
    # The end of a transformers example script: the final weights, a last evaluation, the model card.
    trainer.save_model()
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    trainer.save_state()
    trainer.create_model_card(model_name=os.path.basename(os.path.abspath(args.output_dir)))
    if guard.stopped:
        print(f"\nOverfitGuard stopped training at step {guard.policy.stop_step}: {guard.stop_reason}")
    print(f"\ntrainer_state.json (every result, step by step): {os.path.join(args.output_dir, 'trainer_state.json')}")
    return trainer


if __name__ == "__main__":
    main()
