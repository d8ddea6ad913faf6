"""Chat fine-tuning with TRL's `SFTTrainer` and a PEFT LoRA adapter, with all three callbacks in one
line: OverfitGuard (exact perplexity of the assistant tokens, even through SFTTrainer's fused LM head
that returns no logits), GenerationScorer (the model answers held-out chat prompts through the chat
template; ROUGE/BLEU against the reference answers) and BestCheckpointSaver (keeps the best adapter).

The conversations need no download: the user asks to "Explain" the first words of a paragraph of
Python's standard-library documentation, and the assistant answers with the rest of it. Offline and
on CPU by default (a tiny, randomly initialised GPT-2, a tokenizer trained on the docstrings and a
small Jinja chat template set here); with a network, `--model` takes any chat model on the hub, e.g.
`--model Qwen/Qwen2.5-0.5B-Instruct`, which brings its own chat template.

    python examples/sft_lora_chat.py --output-dir runs/sft_lora
    python examples/sft_lora_chat.py --model Qwen/Qwen2.5-0.5B-Instruct --max-steps 300 --output-dir runs/qwen
"""

from __future__ import annotations

import argparse
import os

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling
from trl import SFTConfig, SFTTrainer

from ft_callbacks import BestCheckpointSaver, GenerationScorer, OverfitGuard, find_best_checkpoint, toy

# A minimal chat template for the tiny tokenizer. The `{% generation %}` markers tell TRL which tokens
# are the assistant's (assistant_only_loss); EOS ends each answer, inside the markers, so the model
# learns to stop. A newline (not a space) ends each role label, so the answer's first token is the
# same in training and after the generation prompt.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ 'Assistant:\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ message['role'] | capitalize + ':\n' + message['content'] + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:\n' }}{% endif %}"
)
PROMPT_WORDS = 5
ANSWER_CHARS = 150  # whole words up to this length
MAX_LENGTH = 128  # tokens per conversation (the tiny GPT-2's context)


def conversation(text: str) -> tuple[str, str] | None:
    """(question, answer) from one docstring paragraph, or None when it is too short."""
    words = text.split()
    if len(words) < PROMPT_WORDS + 4:
        return None
    answer = " ".join(words[PROMPT_WORDS:])
    if len(answer) > ANSWER_CHARS:
        answer = answer[: answer.rfind(" ", 0, ANSWER_CHARS + 1)]
    return f"Explain: {' '.join(words[:PROMPT_WORDS])}", answer


def chat_dataset(texts: list[str], tokenizer, max_length: int) -> Dataset:
    """A conversational dataset: one `messages` list (user, assistant) per docstring paragraph. Those
    longer than `max_length` tokens are left out rather than truncated (which would cut off the EOS)."""
    conversations = []
    for pair in map(conversation, texts):
        if pair is None:
            continue
        messages = [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        if len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]) <= max_length:
            conversations.append(messages)
    return Dataset.from_dict({"messages": conversations})


def pretrain_tiny_base(model, tokenizer, texts: list[str], steps: int, seed: int = 0):
    """Stand-in for a pretrained base model: a few seconds of plain causal-LM training of the tiny GPT-2
    on docstrings. (LoRA adapts a model that already knows the language; on random weights it barely moves.)"""
    data = toy.causal_lm_dataset(texts, tokenizer, max_length=64)
    collate = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = collate([data[int(i)] for i in torch.randint(len(data), (16,), generator=generator)])
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


def main(argv: list[str] | None = None) -> SFTTrainer:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="'tiny' (offline, random init) or a hub chat model name")
    parser.add_argument("--output-dir", default="runs/sft_lora")
    parser.add_argument("--train-size", type=int, default=128, help="training conversations")
    parser.add_argument("--eval-size", type=int, default=48)
    parser.add_argument("--max-steps", type=int, default=120)
    parser.add_argument("--eval-steps", type=int, default=30)
    parser.add_argument("--learning-rate", type=float, default=None, help="default 1e-2 (tiny) or 2e-4 (hub)")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--pretrain-steps", type=int, default=150, help="tiny only: steps of base-model pretraining")
    parser.add_argument("--num-samples", type=int, default=12, help="held-out chat prompts answered per evaluation")
    parser.add_argument("--report-to", default="none", help="'wandb' to use the Trainer's own wandb logging too")
    args = parser.parse_args(argv)

    texts = toy.stdlib_corpus()
    if args.model == "tiny":
        tokenizer = toy.train_tokenizer(texts)
        tokenizer.chat_template = TINY_CHAT_TEMPLATE
        # Pretrained on docstrings other than the held-out ones the evaluation uses.
        base_texts = texts[:400] + texts[400 + args.eval_size :]
        model = pretrain_tiny_base(toy.tiny_gpt2(tokenizer), tokenizer, base_texts, args.pretrain_steps)
        # GPT-2 keeps its projections in Conv1D layers (weights stored transposed: fan_in_fan_out).
        lora = LoraConfig(
            r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            lora_dropout=0.0,
            task_type="CAUSAL_LM",
            target_modules=["c_attn", "c_proj", "c_fc"],
            fan_in_fan_out=True,
        )
        learning_rate = args.learning_rate or 1e-2
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        if not tokenizer.chat_template:
            parser.error(f"{args.model} has no chat template; pick a chat/instruct model")
        model = AutoModelForCausalLM.from_pretrained(args.model)
        lora = LoraConfig(
            r=args.lora_r,
            lora_alpha=2 * args.lora_r,
            lora_dropout=0.05,
            task_type="CAUSAL_LM",
            target_modules="all-linear",
        )
        learning_rate = args.learning_rate or 2e-4
    train = chat_dataset(texts[: args.train_size], tokenizer, MAX_LENGTH)
    evaluation = chat_dataset(texts[400 : 400 + args.eval_size], tokenizer, MAX_LENGTH)

    config = SFTConfig(
        output_dir=args.output_dir,
        max_steps=args.max_steps,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=learning_rate,
        max_length=MAX_LENGTH,
        packing=False,
        # TRL defaults to bf16 and activation (gradient) checkpointing: right for a real model on a recent
        # GPU, but bf16 needs one (or use_cpu=True) and checkpointing only slows a tiny model down.
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        activation_checkpointing=args.model != "tiny",
        # Loss on the assistant's answers only (the chat template marks them); OverfitGuard's perplexity
        # is then the perplexity of the answers.
        assistant_only_loss=True,
        eval_strategy="steps",
        eval_steps=args.eval_steps,
        logging_steps=args.eval_steps,
        save_strategy="no",  # BestCheckpointSaver writes the only checkpoints: the best adapters
        report_to=args.report_to,
        seed=0,
        dataloader_num_workers=0,
    )
    # Held-out user turns, answered through the chat template at step 0 and at every evaluation.
    prompts = [m["messages"][:1] for m in evaluation]
    references = [m["messages"][1]["content"] for m in evaluation]
    scorer = GenerationScorer(
        prompts=prompts,
        references=references,
        metrics=("rouge", "bleu"),
        num_samples=args.num_samples,
        max_new_tokens=40,
    )
    guard = OverfitGuard(patience=3)
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[guard, scorer, BestCheckpointSaver(monitor="eval_token_loss")],  # <- the one line
    )
    trainer.train()
    # The end of a transformers example script: the final weights, a last evaluation, the model card.
    trainer.save_model()
    metrics = trainer.evaluate()
    trainer.log_metrics("eval", metrics)
    trainer.save_metrics("eval", metrics)
    trainer.save_state()
    trainer.create_model_card(model_name=os.path.basename(os.path.abspath(args.output_dir)))

    evals = [e for e in trainer.state.log_history if e.get("eval_token_loss") is not None]
    # By step: a round scored in the background is logged when ready, possibly after later entries.
    rounds = sorted((e for e in trainer.state.log_history if e.get("eval_rougeL") is not None), key=lambda e: e["step"])
    print(
        f"\nanswer perplexity (assistant tokens): {evals[0]['eval_perplexity']:.1f} at step {evals[0]['step']} -> "
        f"{evals[-1]['eval_perplexity']:.1f} at step {evals[-1]['step']}"
    )
    print(
        f"ROUGE-L of generated answers: {rounds[0]['eval_rougeL']:.3f} at step 0 (untrained adapter) -> "
        f"{rounds[-1]['eval_rougeL']:.3f} at step {rounds[-1]['step']}"
    )
    if guard.stopped:
        print(f"OverfitGuard stopped training at step {guard.policy.stop_step}: {guard.stop_reason}")
    best = find_best_checkpoint(args.output_dir)
    print(f"best adapter (by eval_token_loss): {best or 'none saved'}")
    print(f"trainer_state.json (every result, step by step): {os.path.join(args.output_dir, 'trainer_state.json')}")
    return trainer


if __name__ == "__main__":
    main()
