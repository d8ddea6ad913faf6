"""Local lm-eval tasks and models for the ForgettingGuard tests (imported by tests and worker scripts).

`write_tasks(folder)` writes offline tasks: `fg_dirs` (multiple choice: "<word> north is" -> cold /
warm / sunrise / sunset, which a tiny GPT-2 learns in a few dozen steps; acc and acc_norm),
`fg_dirs_acc` (the same, acc only) and `fg_text` (log-likelihood of a docstring's continuation).
`pretrained_dirs_model` trains a tiny GPT-2 to answer fg_dirs, the "base model" whose knowledge
fine-tuning on unrelated text then erases.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ANSWERS = {"north": "cold", "south": "warm", "east": "sunrise", "west": "sunset"}


def _words(corpus: list[str]) -> list[str]:
    return sorted({w for t in corpus[:300] for w in t.split() if w.isalpha() and w.islower() and 3 < len(w) < 9})


def write_tasks(folder: str | Path, corpus: list[str], questions: int = 60) -> Path:
    """Write fg_dirs.yaml and fg_text.yaml (with their JSONL data) into `folder`; returns it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    words = _words(corpus)
    with open(folder / "dirs.jsonl", "w") as f:
        for i in range(questions):
            direction = list(ANSWERS)[i % 4]
            row = {"q": f"{rng.choice(words)} {direction} is", "choices": list(ANSWERS.values()),
                   "label": list(ANSWERS).index(direction)}  # fmt: skip
            f.write(json.dumps(row) + "\n")
    with open(folder / "text.jsonl", "w") as f:
        for words_of in [t.split() for t in corpus[300:400] if len(t.split()) >= 8][:30]:
            f.write(json.dumps({"ctx": " ".join(words_of[:6]), "cont": " " + " ".join(words_of[6:8])}) + "\n")
    (folder / "fg_dirs.yaml").write_text(
        f"task: fg_dirs\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'dirs.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{q}}\"\ndoc_to_choice: \"{{choices}}\"\n"
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n"
    )
    # The same questions scored by accuracy alone (the forgetting scenario's task).
    (folder / "fg_dirs_acc.yaml").write_text(
        (folder / "fg_dirs.yaml").read_text().replace("task: fg_dirs", "task: fg_dirs_acc").replace(
            "  - metric: acc_norm\n", ""
        )
    )
    (folder / "fg_text.yaml").write_text(
        f"task: fg_text\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'text.jsonl'}\n"
        "test_split: test\noutput_type: loglikelihood\ndoc_to_text: \"{{ctx}}\"\ndoc_to_target: \"{{cont}}\"\n"
        "metric_list:\n  - metric: perplexity\n  - metric: acc\n"
    )
    return folder


def pretrained_dirs_model(tokenizer, corpus: list[str], output_dir: str | Path, steps: int = 80):
    """A tiny GPT-2 trained to answer fg_dirs (accuracy 1.0 on this machine)."""
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from ft_callbacks import toy

    rng = random.Random(1)
    words = _words(corpus)
    texts = []
    for _ in range(400):
        direction = rng.choice(list(ANSWERS))
        texts.append(f"{rng.choice(words)} {direction} is {ANSWERS[direction]}")
    model = toy.tiny_gpt2(tokenizer)
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=steps, learning_rate=5e-3, per_device_train_batch_size=16,
        eval_strategy="no", save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0,
        logging_strategy="no",
    )  # fmt: skip
    Trainer(model=model, args=args, train_dataset=toy.causal_lm_dataset(texts, tokenizer, 16),
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False)).train()  # fmt: skip
    model.eval()
    return model
