"""Tiny models and a real corpus that need no download: for the demo, the examples and the tests.

The corpus is the documentation of Python's own standard library (docstrings ship with every
Python). Tokenizers are trained on it locally with `tokenizers`; models are built from configs
with random weights, small enough to train on a CPU in seconds.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterable, Sequence

DEFAULT_MODULES = (
    "collections", "json", "os", "pathlib", "re", "string", "textwrap", "itertools", "functools",
    "argparse", "logging", "datetime", "decimal", "fractions", "statistics", "random", "heapq",
    "bisect", "csv", "shutil", "tempfile", "typing", "dataclasses", "enum", "inspect", "unittest",
    "subprocess", "threading", "queue", "socket", "email", "http.client", "urllib.parse", "zipfile",
    "tarfile", "gzip", "pickle", "copy", "pprint", "difflib", "calendar", "math", "operator", "abc",
)
PAD, EOS, UNK = "<pad>", "<|endoftext|>", "<unk>"


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def stdlib_corpus(modules: Sequence[str] = DEFAULT_MODULES, min_chars: int = 40, max_chars: int = 400) -> list[str]:
    """Paragraphs of standard-library docstrings, deduplicated, in a stable order."""
    seen: set[str] = set()
    out: list[str] = []

    def add(doc: str | None) -> None:
        if not doc:
            return
        for paragraph in doc.split("\n\n"):
            text = _clean(paragraph)
            if len(text) < min_chars or text in seen or ">>>" in text:
                continue
            seen.add(text)
            out.append(text[:max_chars])

    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        add(inspect.getdoc(module))
        for attr in sorted(vars(module)):
            if attr.startswith("_"):
                continue
            obj = getattr(module, attr)
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", "") == name:
                add(inspect.getdoc(obj))
    return out


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, model_max_length: int = 128):
    """A byte-level BPE tokenizer trained on `texts`, as a `PreTrainedTokenizerFast` with pad and eos."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=EOS,
        bos_token=EOS,
        unk_token=UNK,
        model_max_length=model_max_length,
    )


def tiny_gpt2(tokenizer, n_layer: int = 2, n_embd: int = 64, n_head: int = 2, n_positions: int = 128, seed: int = 0):
    """A randomly initialised GPT-2 (decoder-only) sized for CPU tests."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def tiny_t5(tokenizer, d_model: int = 64, num_layers: int = 2, seed: int = 0):
    """A randomly initialised T5 (encoder-decoder)."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=16,
        d_ff=128,
        num_layers=num_layers,
        num_decoder_layers=num_layers,
        num_heads=4,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5ForConditionalGeneration(config)


def tiny_bert_classifier(tokenizer, num_labels: int = 2, hidden_size: int = 64, seed: int = 0):
    """A randomly initialised BERT sequence classifier."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=tokenizer.model_max_length,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
    )
    return BertForSequenceClassification(config)


def causal_lm_dataset(texts: Sequence[str], tokenizer, max_length: int = 64):
    """A `datasets.Dataset` of tokenised texts (variable length, eos appended) for causal-LM training."""
    from datasets import Dataset

    def encode(batch):
        enc = tokenizer([t + tokenizer.eos_token for t in batch["text"]], truncation=True, max_length=max_length)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    return Dataset.from_dict({"text": list(texts)}).map(encode, batched=True, remove_columns=["text"])
