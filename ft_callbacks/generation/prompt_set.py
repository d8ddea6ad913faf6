"""The prompts a model generates from, and the references its texts are scored against.

`PromptSet` takes them as lists (text, token ids or chat messages), as text columns of a dataset, or
as tokenised examples (`input_ids` + `labels`), and checks them when it is built, so a mistake fails
before any training: strings where lists go, empty prompts, lone surrogates, a DatasetDict or a
streaming dataset, missing columns. `prepare()` then draws a fixed, seeded sample, encodes it with the
tokenizer (a chat template where asked) and truncates prompts from the left to fit the model's context.
Nothing here needs a Trainer.
"""

from __future__ import annotations

import numbers
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

from ..core.errors import ConfigurationError
from ..publish import notice_once

__all__ = ["PromptSet", "list_of", "model_context"]


class PromptSet:
    """A fixed, seeded sample of prompts with their references, encoded for one tokenizer.

    Args:
        prompts: one prompt per sample: a non-empty string, a list of token ids, or a list of chat
            messages (`{"role": "user", "content": ...}`). Give either `prompts` (with `references`)
            or `dataset`.
        references: one reference, or a list of references, per prompt.
        dataset: a `datasets.Dataset` (a list of dicts, a dict of lists or a pandas DataFrame is
            converted) with text columns `prompt_column`/`reference_column`, or tokenised with
            `input_ids` and `labels` (label -100 marks a causal LM's prompt; for encoder-decoder
            models the input is the prompt and the labels the reference).
        prompt_column: the dataset's prompt column.
        reference_column: the dataset's reference column.
        num_samples: how many prompts to keep (a seeded sample, the same every time); None keeps all.
        seed: the sample's seed.
        chat_template: wrap each text prompt as a user message with the tokenizer's chat template
            (message lists always use it).
        owner: the name error messages give for the component that needs the prompts.

    Raises:
        ConfigurationError: at construction, for anything that could not be generated from or scored
            (naming the fix); in `prepare()`, for prompts that have no tokens or no room in the context.

    Example:
        >>> prompts = PromptSet(["Once upon a time", "The end"], ["there was", "of it"], num_samples=None)
        >>> prompts.prepare(tokenizer, decoder_only=True, context=1024, reserve=64)
        >>> prompts.prompt_ids[0], prompts.references[0]
    """

    def __init__(
        self,
        prompts: Sequence[Any] | None = None,
        references: Sequence[Any] | None = None,
        *,
        dataset: Any = None,
        prompt_column: str = "prompt",
        reference_column: str = "reference",
        num_samples: int | None = 32,
        seed: int = 0,
        chat_template: bool = False,
        owner: str = "GenerationScorer",
    ) -> None:
        if prompts is None and dataset is None:
            raise ConfigurationError(
                f"{owner} needs prompts: pass prompts=[...] and references=[...], or dataset= with "
                f"{prompt_column!r}/{reference_column!r} columns (or tokenised input_ids and labels)."
            )
        if prompts is not None and dataset is not None:
            raise ConfigurationError("Pass either prompts=/references= or dataset=, not both.")
        if not isinstance(chat_template, bool):
            raise ConfigurationError(f"chat_template={chat_template!r} is not valid: use True or False.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigurationError(f"seed={seed!r} is not valid: use an integer.")
        for name, column in (("prompt_column", prompt_column), ("reference_column", reference_column)):
            if not isinstance(column, str) or not column:
                raise ConfigurationError(f"{name}={column!r} is not valid: give a column name.")
        if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                        or num_samples < 1):  # fmt: skip
            raise ConfigurationError(f"num_samples={num_samples!r} is not valid: use a positive integer or None.")
        if prompts is not None:
            prompts, references = _checked_lists(prompts, references)
        if dataset is not None:
            dataset = as_dataset(dataset, owner)
            check_dataset(dataset, prompt_column, reference_column, owner)
        self.raw_prompts: list[Any] | None = prompts
        self.raw_references: list[Any] | None = references
        self.dataset = dataset
        self.prompt_column = prompt_column
        self.reference_column = reference_column
        self.num_samples = num_samples
        self.seed = seed
        self.chat_template = chat_template
        self.owner = owner
        # Set by prepare(): the sample, encoded.
        self.prompt_ids: list[list[int]] | None = None
        self.prompt_texts: list[str] = []
        self.references: list[Any] = []

    def sample(self, items: list[Any]) -> tuple[list[int], list[Any]]:
        """The seeded sample of `items` (indices in order, and the items): the same on every call."""
        n = len(items)
        if self.num_samples is None or self.num_samples >= n:
            indices = list(range(n))
        else:
            indices = sorted(random.Random(self.seed).sample(range(n), self.num_samples))
        return indices, [items[i] for i in indices]

    def sampled_references(self) -> list[Any] | None:
        """The sample's references when they are known before any tokenizer (given as lists), else None."""
        return None if self.raw_references is None else self.sample(list(self.raw_references))[1]

    def prepare(self, tokenizer: Any, decoder_only: bool, context: int | None = None, reserve: int = 0) -> None:
        """Sample, encode and fit the prompts: sets `prompt_ids`, `prompt_texts` and `references`.

        Args:
            tokenizer: the model's tokenizer (decodes tokenised references, applies chat templates).
            decoder_only: whether the model continues its prompt (a causal LM): decides how tokenised
                examples split into prompt and reference, and whether `reserve` counts against the context.
            context: the model's context length in tokens (see `model_context`); None: no limit.
            reserve: tokens a decoder-only model still needs after the prompt (its new tokens).

        Raises:
            ConfigurationError: no prompts, a prompt with no tokens, or no room left for any prompt.
        """
        prompts, references = self.load(tokenizer, decoder_only)
        if not prompts:
            raise ConfigurationError(f"{self.owner} found no prompts in the dataset; check the columns.")
        indices, prompts = self.sample(prompts)
        self.references = [references[i] for i in indices]
        self.prompt_ids = [self.encode(tokenizer, p) for p in prompts]
        self.prompt_texts = [
            p if isinstance(p, str) else tokenizer.decode(self.prompt_ids[i], skip_special_tokens=True)
            for i, p in enumerate(prompts)
        ]
        empty = [i for i, ids in enumerate(self.prompt_ids) if not ids]
        if empty:  # generate() fails on them with an IndexError, or a padding hint that does not apply
            raise ConfigurationError(
                f"{len(empty)} prompt(s) have no tokens after tokenisation (e.g. {self.prompt_texts[empty[0]]!r}): "
                "the model needs at least one token to continue. Give each prompt text the tokenizer keeps, or "
                "drop the empty examples from the dataset."
            )
        if context is not None:
            self.truncate(context, reserve if decoder_only else 0)

    def load(self, tokenizer: Any, decoder_only: bool) -> tuple[list[Any], list[Any]]:
        """Every prompt and reference, before sampling (tokenised references decoded with `tokenizer`)."""
        if self.raw_prompts is not None:
            return list(self.raw_prompts), list(self.raw_references or [])
        data = self.dataset
        columns = list(getattr(data, "column_names", None) or (data[0].keys() if len(data) else []))
        if self.prompt_column in columns and self.reference_column in columns:
            prompts, references = columns_of(data, self.prompt_column, self.reference_column)
            return prompts, references
        if "input_ids" in columns and "labels" in columns:
            prompts, references = [], []
            for row in data:
                ids, labels = list(row["input_ids"]), list(row["labels"])
                if decoder_only:
                    start = next((i for i, lab in enumerate(labels) if lab != -100), None)
                    if not start:  # no prompt part (label on every token): nothing to condition on
                        continue
                    prompts.append(ids[:start])
                    targets = [t for t, lab in zip(ids, labels, strict=False) if lab != -100]
                else:
                    prompts.append(ids)
                    targets = [t for t in labels if t != -100]
                references.append(tokenizer.decode(targets, skip_special_tokens=True))
            if not prompts:
                raise ConfigurationError(
                    "dataset has input_ids/labels but no example marks a prompt with label -100 at its start; "
                    "mask the prompt tokens' labels, or pass prompts=/references= explicitly."
                )
            return prompts, references
        raise ConfigurationError(
            f"dataset has columns {columns}: {self.owner} needs {self.prompt_column!r} and "
            f"{self.reference_column!r} (set prompt_column=/reference_column=), or input_ids and labels."
        )

    def encode(self, tokenizer: Any, prompt: Any) -> list[int]:
        """One prompt's token ids: token ids as they are, chat messages through the chat template."""
        if isinstance(prompt, (list, tuple)) and (not prompt or isinstance(prompt[0], numbers.Integral)):
            return [int(t) for t in prompt]
        messages = prompt if isinstance(prompt, (list, tuple)) else None
        if messages is None and self.chat_template:
            messages = [{"role": "user", "content": str(prompt)}]
        if messages is not None:
            if not getattr(tokenizer, "chat_template", None):
                raise ConfigurationError(
                    "A chat prompt needs a tokenizer with a chat template (tokenizer.chat_template is empty); set "
                    "one, or pass plain text prompts with chat_template=False."
                )
            out = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
            ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
            return [int(t) for t in ids]
        return [int(t) for t in tokenizer(str(prompt))["input_ids"]]

    def truncate(self, context: int, reserve: int = 0) -> None:
        """Cut prompts longer than `context - reserve` tokens from the left (said once): the end of a
        prompt is the part next to the answer."""
        budget = context - reserve
        if budget < 1:
            raise ConfigurationError(
                f"max_new_tokens={reserve} leaves no room for a prompt in the model's context of {context} tokens; "
                "lower max_new_tokens."
            )
        ids = self.prompt_ids or []
        long = [i for i, prompt in enumerate(ids) if len(prompt) > budget]
        for i in long:
            ids[i] = ids[i][-budget:]
        if long:
            notice_once(
                "gen:truncate",
                f"{self.owner}: {len(long)} prompt(s) longer than {budget} tokens (context {context} minus "
                "max_new_tokens) were truncated from the left.",
            )


def model_context(config: Any, tokenizer: Any = None) -> int | None:
    """The context length in tokens of a model (its config), else the tokenizer's `model_max_length`
    when that is a real limit; None when neither says."""
    context = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if context is None:
        limit = getattr(tokenizer, "model_max_length", None)
        context = limit if limit and limit < 1_000_000 else None
    return context


# -- checks of what users pass ---------------------------------------------------------------------
def list_of(name: str, value: Any, example: str) -> list[Any]:
    """A list from a list-like argument; a string or a dict is refused (list('abc') is three one-letter items)."""
    if isinstance(value, (str, bytes)):
        raise ConfigurationError(
            f"{name}= is a single string ({value[:40]!r}); pass a list, one item per sample: {example}."
        )
    if isinstance(value, Mapping):
        raise ConfigurationError(f"{name}= is a dict; pass a list, one item per sample: {example}.")
    try:
        return list(value)
    except TypeError:
        raise ConfigurationError(
            f"{name}= is {type(value).__name__}, not a list; pass a list, one item per sample: {example}."
        ) from None


def _checked_lists(prompts: Any, references: Any) -> tuple[list[Any], list[Any]]:
    prompts = list_of("prompts", prompts, "prompts=['Once upon a time', ...]")
    if references is None:
        raise ConfigurationError("prompts= needs references= (one reference, or a list of them, per prompt).")
    references = list_of("references", references, "references=['the expected text', ...]")
    if not prompts:
        raise ConfigurationError("prompts= is empty: give at least one prompt.")
    if len(prompts) != len(references):
        raise ConfigurationError(
            f"prompts has {len(prompts)} items but references has {len(references)}: give one reference "
            "(or one list of references) per prompt."
        )
    for i, prompt in enumerate(prompts):
        check_prompt(prompt, f"prompts[{i}]")
    for i, reference in enumerate(references):
        check_reference(reference, f"references[{i}]")
    return prompts, references


def check_text(text: str, where: str) -> None:
    """A lone surrogate (text decoded badly upstream) cannot be encoded: tokenizers fail with a TypeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigurationError(
            f"{where} holds a lone surrogate ({text[exc.start]!r} at position {exc.start}), which no tokenizer "
            "can encode: the text was decoded wrongly upstream. Fix it at the source, or replace it with "
            "text.encode('utf-8', 'replace').decode('utf-8')."
        ) from None


def check_prompt(prompt: Any, where: str) -> None:
    """A prompt is a non-empty string, a non-empty list of token ids, or a list of chat messages."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ConfigurationError(
                f"{where} is {'empty' if not prompt else 'only whitespace'}: the model continues each prompt, so "
                "each needs some text. Remove it, or give it text."
            )
        check_text(prompt, where)
        return
    if isinstance(prompt, (list, tuple)) and prompt:
        if all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in prompt):
            return  # token ids
        if all(isinstance(m, Mapping) for m in prompt):
            for j, message in enumerate(prompt):
                content = message.get("content")
                if isinstance(content, str):
                    check_text(content, f"{where}[{j}]['content']")
            return
    if isinstance(prompt, (list, tuple)) and not prompt:
        raise ConfigurationError(f"{where} is an empty list: give the prompt's token ids or chat messages.")
    raise ConfigurationError(
        f"{where} is {type(prompt).__name__} ({str(prompt)[:40]!r}): a prompt is a string, a list of token ids, "
        "or a list of chat messages ({'role': 'user', 'content': ...})."
    )


def check_reference(reference: Any, where: str) -> None:
    if isinstance(reference, str):
        check_text(reference, where)
    elif isinstance(reference, (list, tuple)):
        for j, text in enumerate(reference):
            if isinstance(text, str):
                check_text(text, f"{where}[{j}]")


def as_dataset(data: Any, owner: str = "GenerationScorer") -> Any:
    """dataset= as a `datasets.Dataset`: a list of dicts, a dict of lists and a pandas DataFrame are
    converted; a DatasetDict, a streaming dataset or a plain list of texts is refused naming the fix."""
    import datasets

    if isinstance(data, datasets.Dataset):
        return data
    if isinstance(data, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        split = next(iter(data), "validation")
        raise ConfigurationError(
            f"dataset= is a {type(data).__name__} with splits {list(data)}: pass one split, e.g. dataset=ds[{split!r}]."
        )
    if isinstance(data, datasets.IterableDataset):
        raise ConfigurationError(
            f"dataset= is a streaming IterableDataset: {owner} needs fixed rows to sample from. Take some: "
            "datasets.Dataset.from_list(list(ds.take(200)))."
        )
    if isinstance(data, (str, bytes, os.PathLike)):
        raise ConfigurationError(
            f"dataset={data!r} is a name or path: load it first (datasets.load_dataset(...)['validation'] or "
            "Dataset.from_json(path)) and pass the Dataset."
        )
    try:
        if type(data).__module__.split(".")[0] == "pandas" and hasattr(data, "columns"):
            return datasets.Dataset.from_pandas(data, preserve_index=False)
        if isinstance(data, Mapping):
            return datasets.Dataset.from_dict(dict(data))
        if isinstance(data, (list, tuple)):
            if not data:
                raise ConfigurationError("dataset= is empty: give at least one example.")
            if all(isinstance(row, Mapping) for row in data):
                return datasets.Dataset.from_list([dict(row) for row in data])
            raise ConfigurationError(
                f"dataset= is a list of {type(data[0]).__name__}: pass a list of dicts (one per example, with "
                "prompt/reference keys), or prompts=[...] and references=[...]."
            )
    except ConfigurationError:
        raise
    except Exception as exc:
        raise ConfigurationError(f"dataset= could not be turned into a datasets.Dataset: {exc}") from exc
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise ConfigurationError(
            f"dataset= is {type(data).__name__}: pass a datasets.Dataset, a list of dicts, a dict of lists or a "
            "pandas DataFrame."
        )
    return data  # a map-style dataset of dicts (e.g. a torch Dataset), read row by row


def columns_of(data: Any, *names: str) -> list[list[Any]]:
    """Whole columns of a datasets.Dataset, or of a map-style dataset of dicts read row by row."""
    if hasattr(data, "column_names"):
        return [list(data[name]) for name in names]
    rows = [data[i] for i in range(len(data))]
    return [[row[name] for row in rows] for name in names]


def check_dataset(data: Any, prompt_column: str, reference_column: str, owner: str = "GenerationScorer") -> None:
    """The columns the prompts are read from must exist; text prompts are checked like prompts=."""
    if not len(data):
        raise ConfigurationError("dataset= is empty: give at least one example.")
    columns = list(getattr(data, "column_names", None) or data[0].keys())
    if prompt_column in columns and reference_column in columns:
        for i, (prompt, reference) in enumerate(zip(*columns_of(data, prompt_column, reference_column), strict=True)):
            check_prompt(prompt, f"dataset row {i}, column {prompt_column!r},")
            check_reference(reference, f"dataset row {i}, column {reference_column!r},")
        return
    if "input_ids" in columns and "labels" in columns:
        return
    if "input_ids" in columns:
        raise ConfigurationError(
            f"dataset has input_ids but no labels (columns {columns}): {owner} scores generations "
            "against references, so each example needs one: a 'labels' column with the reference's token ids "
            "(for a causal LM, input_ids = prompt + reference with labels -100 on the prompt tokens), or text "
            f"columns {prompt_column!r}/{reference_column!r}."
        )
    if prompt_column in columns:
        raise ConfigurationError(
            f"dataset has the prompt column {prompt_column!r} but no {reference_column!r} column (columns "
            f"{columns}): name the reference column with reference_column=."
        )
    raise ConfigurationError(
        f"dataset has columns {columns}: {owner} needs {prompt_column!r} and {reference_column!r} (set "
        "prompt_column=/reference_column=), or input_ids and labels."
    )
