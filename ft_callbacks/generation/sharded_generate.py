"""Generating texts from token-id prompts, batched, and sharded across the ranks of a run.

- `generate_batched`: real `model.generate` (KV cache) over prompts batched by length, padded here
  (left for decoder-only models, so the user's tokenizer is never switched to another padding side),
  the prompt stripped from decoder-only outputs; eval mode and no_grad during, train mode restored
  after. Under a sharded engine every rank joins each forward (`synced_gpus`, decided from the engine);
  FSDP1 generates inside its wrapper's full-parameter gather.
- `generate_sharded`: each rank generates its share of the prompts with the same number of calls
  (collective engines hang otherwise), the texts are gathered on every rank, and an error on any rank
  becomes `GenerationFailed` on all of them.
- `ShardedGenerator`: the settings, the Trainer they follow and its reused texts, as one object a callback
  keeps (`bind()` at train begin, `unbind()` at the end).
- `generation_settings` / `model_generation_config`: the settings the texts are made with: greedy, 64 new
  tokens; under `Seq2SeqTrainingArguments` the Trainer's own (`generation_max_length`,
  `generation_num_beams`, `generation_config`, the model's generation_config), so the texts are the ones
  its `predict()` makes; a user's `GenerationConfig` / `max_new_tokens` override either.
- `PredictionCapture`: with `predict_with_generate=True` a Seq2SeqTrainer generates for every eval example
  already; the texts it made for our prompts (matched by token ids) are taken instead of generated twice.

Only `PredictionCapture` and `trainer_generation_config` need a Trainer; `ShardedGenerator` follows one
when bound to it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from transformers import GenerationConfig

from .._compat import strip_ddp, unwrap_model
from ..core.errors import ConfigurationError
from ..distributed import all_gather_objects, rank, world_size
from ..engines import generation_context, sharded_engine

__all__ = [
    "GenerationFailed",
    "PredictionCapture",
    "ShardedGenerator",
    "check_can_generate",
    "check_generation_options",
    "generate_batched",
    "generate_sharded",
    "generation_settings",
    "is_seq2seq_args",
    "model_generation_config",
    "pad_batch",
    "trainer_generation_config",
    "truncated_flags",
]


class GenerationFailed(RuntimeError):
    """Generation raised on at least one rank; every rank gets this after the gather, and skips the round."""


def check_generation_options(generation_config: Any, max_new_tokens: Any, batch_size: Any) -> None:
    """Refuse generation settings of the wrong type or sense, naming the fix (ConfigurationError)."""
    if generation_config is not None and not isinstance(generation_config, GenerationConfig):
        hint = " (GenerationConfig(**your_dict))" if isinstance(generation_config, Mapping) else ""
        raise ConfigurationError(
            f"generation_config is {type(generation_config).__name__}: pass a transformers.GenerationConfig{hint}."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(f"batch_size={batch_size!r} is not valid: use an integer >= 1.")
    if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
                                       or max_new_tokens < 1):  # fmt: skip
        raise ConfigurationError(f"max_new_tokens={max_new_tokens!r} is not valid: use a positive integer or None.")


def check_can_generate(model: Any, tokenizer: Any, owner: str = "GenerationScorer") -> None:
    """Refuse, naming the fix, a model that cannot generate text or a tokenizer that cannot pad or decode."""
    base = unwrap_model(model)
    if not hasattr(base, "generate") or (hasattr(base, "can_generate") and not base.can_generate()):
        raise ConfigurationError(
            f"{owner} needs a model that can generate text; {type(base).__name__} cannot. Use a "
            "causal-LM or encoder-decoder model, or LabelScorer for a classification head."
        )
    if tokenizer is None or not hasattr(tokenizer, "batch_decode"):
        raise ConfigurationError(f"{owner} needs the tokenizer: pass processing_class=tokenizer to the Trainer.")
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is None:
        raise ConfigurationError(
            "The tokenizer has neither a pad token nor an EOS token; set tokenizer.pad_token before training."
        )


# -- across ranks ------------------------------------------------------------------------------------
def generate_sharded(
    count: int,
    generate_indices: Callable[[list[int], int], dict[int, Any]],
    known: Mapping[int, Any] | None = None,
) -> list[Any]:
    """The texts of all `count` prompts, on every rank, each rank generating a share.

    Args:
        count: how many prompts there are (indices 0..count-1).
        generate_indices: `(indices, keep) -> {index: text}` for this rank's share (the values may be any
            picklable object, e.g. `(text, truncated)`; they come back in prompt order); the first `keep`
            indices are its own, the rest repeat one of them so every rank makes the same number of
            calls (collective generation, ZeRO-3 or FSDP, hangs otherwise) and are not returned.
        known: texts already generated (the same on every rank), by prompt index; only the others are
            generated.

    Raises:
        GenerationFailed: on every rank, with the first error any rank met.

    Example:
        >>> def this_rank(indices, keep):  # generate all of them: the repeats keep the ranks in step
        ...     texts = generate_batched(model, tokenizer, [ids[i] for i in indices], config)
        ...     return dict(zip(indices[:keep], texts[:keep]))
        >>> texts = generate_sharded(len(ids), this_rank)
    """
    known = known or {}
    size, me = world_size(), rank()
    todo = [i for i in range(count) if i not in known]
    mine = todo[me::size]
    per_rank = math.ceil(len(todo) / size)
    padded = mine + [mine[0] if mine else (todo[0] if todo else 0)] * (per_rank - len(mine))
    error: str | None = None
    texts: dict[int, Any] = {}
    try:
        if padded:
            texts = generate_indices(padded, len(mine))
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    gathered = all_gather_objects((texts, error))
    errors = [e for _, e in gathered if e]
    if errors:
        raise GenerationFailed(errors[0])
    out: list[Any] = [None] * count
    for i, text in known.items():
        out[int(i)] = text
    for shard, _ in gathered:
        for i, text in shard.items():
            out[int(i)] = text
    return out


# -- one rank ------------------------------------------------------------------------------------------
def pad_batch(seqs: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists as one padded batch and its attention mask (left padding for decoder-only models)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if left:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = 1
        else:
            ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, : len(seq)] = 1
    return ids, mask


def truncated_flags(
    new_tokens: torch.Tensor, limit: int | None, eos_ids: Sequence[int], pad_id: int | None
) -> list[bool]:
    """Per generated row, whether generation stopped at the token limit rather than at an end of sequence.

    A row is truncated when its generated token count (trailing padding removed) equals `limit` (the
    new-token budget) and its last token is not an EOS id. Written by hand: `generate()` does not say why
    a row stopped.

    Args:
        new_tokens: the generated tokens only (no prompt, no decoder start token), one row per prompt.
        limit: the new-token budget (`max_new_tokens`, or what `max_length` leaves); None: never truncated.
        eos_ids: the end-of-sequence ids.
        pad_id: the id rows that finished early are padded with (when it is an EOS id, a finished row ends
            with EOS anyway).

    Example:
        >>> truncated_flags(torch.tensor([[5, 6, 7], [5, 2, 0]]), 3, eos_ids=[2], pad_id=0)
        [True, False]
    """
    eos = {int(e) for e in eos_ids}
    flags = []
    for row in new_tokens.tolist():
        if pad_id is not None and int(pad_id) not in eos:
            while row and row[-1] == pad_id:
                row = row[:-1]
        flags.append(limit is not None and len(row) >= limit and bool(row) and row[-1] not in eos)
    return flags


def _token_limit(config: GenerationConfig, prompt_width: int, decoder_only: bool) -> int | None:
    """The new-token budget of one `generate` call: `max_new_tokens`, else what `max_length` leaves."""
    if config.max_new_tokens is not None:
        return int(config.max_new_tokens)
    if config.max_length is None:
        return None
    # Decoder-only: max_length counts the (padded) prompt; encoder-decoder: the decoder start token.
    return int(config.max_length) - (prompt_width if decoder_only else 1)


def _eos_ids(config: GenerationConfig) -> list[int]:
    eos = config.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def generate_batched(
    model: Any,
    tokenizer: Any,
    prompt_ids: Sequence[list[int]],
    config: GenerationConfig,
    *,
    batch_size: int = 16,
    decoder_only: bool = True,
    trainer: Any = None,
    show_progress: bool = False,
    description: str = "generating",
    truncated: list[bool] | None = None,
) -> list[str]:
    """The generated text of each prompt (stripped; the prompt itself left out), in prompt order.

    Args:
        model: the model as the Trainer hands it (a DDP or PEFT wrapper is fine).
        tokenizer: decodes the outputs; its padding side is never changed.
        prompt_ids: token ids, one list per prompt.
        config: the complete generation config (see `model_generation_config`).
        batch_size: prompts per `generate` call; prompts are batched by length.
        decoder_only: pad on the left and strip the prompt from the outputs.
        trainer: the Trainer running the model, when there is one: decides `synced_gpus` from its engine
            and gathers FSDP1's flat parameters around generation.
        show_progress: a progress bar on rank 0.
        description: the progress bar's label.
        truncated: a list to fill with one flag per prompt (prompt order): whether its generation stopped
            at the token limit rather than at EOS (see `truncated_flags`).

    Example:
        >>> config = model_generation_config(generation_settings(max_new_tokens=16), model, tokenizer)
        >>> generate_batched(model, tokenizer, [tokenizer("Once upon")["input_ids"]], config)
    """
    gen_model = strip_ddp(model)
    base = unwrap_model(model)
    pad_id = config.pad_token_id  # masked out: any id will do, but one the model knows
    if pad_id is None:
        pad_id = getattr(getattr(base, "generation_config", None), "pad_token_id", None)
    if pad_id is None:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(base.parameters()).device
    synced = sharded_engine(base, trainer) is not None  # every rank joins each forward
    positions = sorted(range(len(prompt_ids)), key=lambda k: len(prompt_ids[k]))
    batches = [positions[i : i + batch_size] for i in range(0, len(positions), batch_size)]
    progress = None
    if show_progress and rank() == 0 and batches:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(batches), desc=description, leave=False, dynamic_ncols=True)
    was_training = gen_model.training
    gen_model.eval()
    texts: list[str] = [""] * len(prompt_ids)
    flags: list[bool] = [False] * len(prompt_ids)
    eos_ids = _eos_ids(config)
    try:
        with torch.no_grad(), generation_context(trainer):
            for batch in batches:
                input_ids, mask = pad_batch([prompt_ids[k] for k in batch], pad_id, left=decoder_only)
                output = gen_model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=mask.to(device),
                    generation_config=config,
                    synced_gpus=synced,
                )
                new = output[:, input_ids.shape[1] :] if decoder_only else output
                decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
                for k, text in zip(batch, decoded, strict=False):
                    texts[k] = text.strip()
                if truncated is not None:
                    limit = _token_limit(config, input_ids.shape[1], decoder_only)
                    # An encoder-decoder output starts with the decoder start token: not generated.
                    generated = new if decoder_only else new[:, 1:]
                    for k, flag in zip(batch, truncated_flags(generated, limit, eos_ids, pad_id), strict=True):
                        flags[k] = flag
                if progress is not None:
                    progress.update(1)
    finally:
        gen_model.train(was_training)
        if progress is not None:
            progress.close()
    if truncated is not None:
        truncated[:] = flags
    return texts


# -- the settings ----------------------------------------------------------------------------------------
def is_seq2seq_args(args: Any) -> bool:
    """Seq2SeqTrainingArguments (or alike): the Trainer has generation settings of its own."""
    return args is not None and hasattr(args, "predict_with_generate") and hasattr(args, "generation_max_length")


def trainer_generation_config(args: Any, trainer: Any) -> GenerationConfig | None:
    """Seq2SeqTrainingArguments.generation_config, loaded as Seq2SeqTrainer loads it. A Seq2SeqTrainer has
    already made it the model's generation_config (which generate() reads): then nothing is needed here."""
    value = getattr(args, "generation_config", None)
    if value is None or not is_seq2seq_args(args):
        return None
    from transformers import Seq2SeqTrainer

    if isinstance(trainer, Seq2SeqTrainer):
        return None
    try:
        return Seq2SeqTrainer.load_generation_config(value)
    except Exception as exc:
        raise ConfigurationError(
            f"TrainingArguments.generation_config={value!r} could not be loaded ({exc}); pass a GenerationConfig or "
            "a local directory holding generation_config.json."
        ) from exc


def generation_settings(
    args: Any = None,
    trainer_config: GenerationConfig | None = None,
    generation_config: GenerationConfig | None = None,
    max_new_tokens: int | None = None,
) -> GenerationConfig:
    """The generation settings, before the tokenizer's fill-ins. Unset fields are filled by `generate()`
    from the model's generation_config, as for the Trainer's own generation.

    Under Seq2SeqTrainingArguments `args`: the Trainer's settings (what `Seq2SeqTrainer.prediction_step`
    passes to `generate`, `trainer_config` being `trainer_generation_config(args, trainer)`). Otherwise:
    greedy, 64 new tokens. Then the fields set in `generation_config` and `max_new_tokens` override either."""
    following = is_seq2seq_args(args)
    if following:
        config = copy.deepcopy(trainer_config) if trainer_config else GenerationConfig()
        if args.generation_max_length is not None:
            config.max_length = args.generation_max_length
        if args.generation_num_beams is not None:
            config.num_beams = args.generation_num_beams
    else:
        config = GenerationConfig(do_sample=False, num_beams=1)
    if generation_config is not None:
        overrides = generation_config.to_diff_dict()
        overrides.pop("transformers_version", None)
        config.update(**overrides)
    if max_new_tokens is not None:
        config.max_new_tokens = max_new_tokens
    elif not following and config.max_new_tokens is None and config.max_length is None:
        config.max_new_tokens = 64
    return config


def model_generation_config(
    settings: GenerationConfig, model: Any, tokenizer: Any, following: bool = False
) -> GenerationConfig:
    """A copy of `settings` completed for `model` and `tokenizer` (pad, EOS, decoder start, KV cache).
    `following` (a Seq2SeqTrainer's settings): the model's generation_config has the say over unset fields."""
    config = copy.deepcopy(settings)
    base = unwrap_model(model)
    model_config = getattr(base, "generation_config", None)

    def unset(name: str) -> bool:
        return getattr(config, name, None) is None and (not following or getattr(model_config, name, None) is None)

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if not following or unset("pad_token_id"):
        config.pad_token_id = pad
    if unset("eos_token_id"):
        config.eos_token_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else None
    if getattr(base.config, "is_encoder_decoder", False) and unset("decoder_start_token_id"):
        start = getattr(base.config, "decoder_start_token_id", None)
        config.decoder_start_token_id = start if start is not None else pad
    config.use_cache = True
    return config


class ShardedGenerator:
    """Generation during training, as one object: the settings, the Trainer they follow, its reused texts.

    Holds what a callback needs around `generate_batched`: greedy settings by default, or a
    Seq2SeqTrainer's own (`bind()` reads them from its arguments), the user's overrides on top, the
    Trainer whose engine decides `synced_gpus` and FSDP1's gather, and a `PredictionCapture` that reuses
    the Trainer's own predict_with_generate texts where they stand for ours.

    Args:
        generation_config: a `GenerationConfig` whose set fields override the defaults.
        max_new_tokens: generation length; None: 64, or a Seq2SeqTrainer's settings.
        batch_size: prompts per `generate` call.
        owner: the name messages give.

    Raises:
        ConfigurationError: a setting of the wrong type or sense (at construction); a
            `generation_config` in the Trainer's arguments that does not load (`bind()`).

    Example:
        >>> generator = ShardedGenerator(max_new_tokens=32)
        >>> generator.bind(trainer, trainer.args)  # at train begin (bind(None, None) without a Trainer)
        >>> texts = generator.generate(model, tokenizer, [tokenizer("Once upon")["input_ids"]])
        >>> generator.unbind()  # at train end
    """

    def __init__(
        self,
        generation_config: GenerationConfig | None = None,
        max_new_tokens: int | None = None,
        batch_size: int = 16,
        owner: str = "GenerationScorer",
    ) -> None:
        check_generation_options(generation_config, max_new_tokens, batch_size)
        self.generation_config = generation_config
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.owner = owner
        self.trainer: Any = None  # the Trainer running the model (found at train begin)
        self.args: Any = None  # its TrainingArguments (a Seq2SeqTrainer's generation settings are followed)
        self.trainer_config: GenerationConfig | None = None  # Seq2SeqTrainingArguments.generation_config
        self.capture: PredictionCapture | None = None

    def bind(self, trainer: Any, args: Any) -> None:
        """Follow this run: its Trainer (None when driven by hand) and arguments."""
        self.trainer = trainer
        self.args = args
        self.trainer_config = trainer_generation_config(args, trainer)

    def unbind(self) -> None:
        """Let go of the run (and give the Trainer its prediction_step back)."""
        self.remove_capture()
        self.trainer = None

    @property
    def follows_trainer(self) -> bool:
        """Under Seq2SeqTrainingArguments the texts follow the Trainer's own generation settings."""
        return is_seq2seq_args(self.args)

    def settings(self) -> GenerationConfig:
        """The settings before the tokenizer's fill-ins (see `generation_settings`)."""
        return generation_settings(self.args, self.trainer_config, self.generation_config, self.max_new_tokens)

    def config_for(self, model: Any, tokenizer: Any) -> GenerationConfig:
        """The complete generation config for `model` and `tokenizer`."""
        return model_generation_config(self.settings(), model, tokenizer, following=self.follows_trainer)

    def generate(
        self, model: Any, tokenizer: Any, prompt_ids: Sequence[list[int]], show_progress: bool = False,
        truncated: list[bool] | None = None,
    ) -> list[str]:
        """This rank's texts of `prompt_ids`, in order (see `generate_batched`; `truncated` is filled with
        one flag per prompt when given)."""
        return generate_batched(
            model, tokenizer, prompt_ids, self.config_for(model, tokenizer), batch_size=self.batch_size,
            decoder_only=not getattr(unwrap_model(model).config, "is_encoder_decoder", False), trainer=self.trainer,
            show_progress=show_progress, description=f"{self.owner}: generating", truncated=truncated,
        )  # fmt: skip

    def install_capture(self, prompt_ids: Sequence[list[int]] | None, tokenizer: Any, decoder_only: bool) -> None:
        """Reuse the bound Seq2SeqTrainer's own texts for these prompts where they can stand for ours (its
        settings, not ours: no `generation_config`/`max_new_tokens` given here)."""
        self.remove_capture()
        overridden = self.generation_config is not None or self.max_new_tokens is not None
        self.capture = PredictionCapture.attach(
            self.trainer, self.args, prompt_ids, tokenizer, decoder_only, overridden
        )

    def remove_capture(self) -> None:
        if self.capture is not None:
            self.capture.remove()
        self.capture = None

    def take_captured(self) -> dict[int, str] | None:
        """This evaluation's texts from the Trainer itself by prompt index (None without a capture).
        Collective with a capture: every rank calls it."""
        return None if self.capture is None else self.capture.take()

    def describe(self) -> str | None:
        """Under a Seq2SeqTrainer, one line saying which settings the texts follow (and whether they are
        reused); None otherwise."""
        if not self.follows_trainer:
            return None
        args = self.args
        followed = [f"{name}={getattr(args, name)}" for name in ("generation_max_length", "generation_num_beams")
                    if getattr(args, name, None) is not None]  # fmt: skip
        own = [f"max_new_tokens={self.max_new_tokens}"] if self.max_new_tokens is not None else []
        if self.generation_config is not None:
            own.append("generation_config")
        line = (
            f"{self.owner} generates as the Seq2SeqTrainer does: "
            + ", ".join([*followed, "the model's generation_config"])
            + (f", overridden by {self.owner}'s {', '.join(own)}" if own else "")
        )
        settings = self.settings()
        if settings.max_new_tokens is None and settings.max_length is None:
            model_config = getattr(unwrap_model(getattr(self.trainer, "model", None)), "generation_config", None)
            if getattr(model_config, "max_new_tokens", None) is None and getattr(model_config, "max_length", 20) == 20:
                line += " (max_length is transformers' default 20 tokens: set generation_max_length= for longer texts)"
        if self.capture is not None:
            line += "; with predict_with_generate=True its own predictions for these prompts are reused"
        return line + "."


# -- a Seq2SeqTrainer's own predictions ---------------------------------------------------------------------
class PredictionCapture:
    """The texts a Seq2SeqTrainer generated in an evaluation (`predict_with_generate=True`) for our prompts.

    No callback event carries the generated ids, so this wraps the Trainer instance's `prediction_step`,
    which returns them next to the inputs they came from, and keeps the text of every batch row whose
    input ids (unpadded) are one of `prompt_ids`. Only rows generated with the Trainer's own settings
    count (an `evaluate(num_beams=...)` by hand does not). Texts not found are simply generated.

    Args:
        trainer: the Seq2SeqTrainer.
        args: its Seq2SeqTrainingArguments.
        prompt_ids: our prompts' token ids, as the Trainer's eval batches hold them.
        tokenizer: decodes the Trainer's generated ids.

    Example:
        >>> capture = PredictionCapture.attach(trainer, trainer.args, ids, tokenizer, decoder_only=False)
        >>> trainer.evaluate(); texts = capture.take()  # {prompt index: text}, merged across ranks
        >>> capture.remove()
    """

    def __init__(self, trainer: Any, args: Any, prompt_ids: Sequence[list[int]], tokenizer: Any) -> None:
        self.trainer = trainer
        self.args = args
        self.tokenizer = tokenizer
        self.index: dict[tuple[int, ...], list[int]] = {}
        for i, ids in enumerate(prompt_ids):
            self.index.setdefault(tuple(ids), []).append(i)
        self.captured: dict[int, str] = {}
        original = trainer.prediction_step

        def prediction_step(model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
            output = original(model, inputs, prediction_loss_only, ignore_keys=ignore_keys, **gen_kwargs)
            if not prediction_loss_only and not gen_kwargs:
                try:
                    self._capture(inputs, output[1] if isinstance(output, tuple) else None)
                except Exception:  # an optimisation only: what is not found is generated by us
                    pass
            return output

        self._hook = prediction_step
        trainer.prediction_step = prediction_step

    @classmethod
    def attach(
        cls, trainer: Any, args: Any, prompt_ids: Sequence[list[int]] | None, tokenizer: Any, decoder_only: bool,
        overridden: bool = False,
    ) -> PredictionCapture | None:
        """A capture on `trainer` when its texts can stand for ours, else None: a Seq2SeqTrainer generating
        in its evaluations (`predict_with_generate=True`), an encoder-decoder model (decoder-only outputs hold
        the right-padded prompt: not comparable), and no settings of our own (`overridden`)."""
        if (
            trainer is None or not is_seq2seq_args(args) or not getattr(args, "predict_with_generate", False)
            or decoder_only or overridden or not hasattr(trainer, "prediction_step") or prompt_ids is None
        ):  # fmt: skip
            return None
        return cls(trainer, args, prompt_ids, tokenizer)

    def remove(self) -> None:
        """Give the Trainer its own prediction_step back."""
        if self.trainer.__dict__.get("prediction_step") is self._hook:
            del self.trainer.prediction_step
        self.captured = {}

    def take(self) -> dict[int, str]:
        """This evaluation's captured texts by prompt index, merged across ranks (each saw its shard of the
        eval set); the capture starts empty again. Collective: every rank calls it."""
        mine, self.captured = self.captured, {}
        merged: dict[int, str] = {}
        for part in all_gather_objects(mine):
            merged.update(part)
        return merged

    def _capture(self, inputs: Any, generated: Any) -> None:
        args = self.args
        expected = {k: v for k, v in (("max_length", args.generation_max_length),
                                      ("num_beams", args.generation_num_beams)) if v is not None}  # fmt: skip
        used = {k: v for k, v in (getattr(self.trainer, "_gen_kwargs", None) or {}).items() if v is not None}
        if not torch.is_tensor(generated) or used != expected:  # evaluate(num_beams=...) by hand: not ours
            return
        ids, mask = inputs.get("input_ids"), inputs.get("attention_mask")
        if not torch.is_tensor(ids) or not torch.is_tensor(mask) or generated.shape[0] != ids.shape[0]:
            return
        hits: list[tuple[int, list[int]]] = []
        for row, (seq, keep) in enumerate(zip(ids.tolist(), mask.tolist(), strict=True)):
            found = self.index.get(tuple(t for t, m in zip(seq, keep, strict=True) if m))
            if found:
                hits.append((row, found))
        if not hits:
            return
        texts = self.tokenizer.batch_decode(generated[[row for row, _ in hits]], skip_special_tokens=True)
        for (_, found), text in zip(hits, texts, strict=True):
            for i in found:
                self.captured[i] = text.strip()
