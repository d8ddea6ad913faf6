"""The whole generative-LM kit in one 2-process run; launched by tests/test_kit_distributed.py under
`torchrun --nproc_per_node 2` and under `accelerate launch --multi_gpu --num_processes 2` (CPU, gloo).

usage: kit_ddp.py TOKENIZER_DIR OUT_DIR [monitor=METRIC] [background=default|off] [max_steps=N]
                  [eval_steps=N] [engine=ddp|zero2|zero3] [load_best=0|1]

A tiny GPT-2 trains on 8 docstrings (global batch 8: it overfits fast) with, together,
OverfitGuard(patience=2), BestCheckpointSaver(monitor=METRIC, keep=100: every improvement stays on
disk) and GenerationScorer(7 prompts, metrics rouge + bleu + a counting callable), reporting to
wandb (offline). Each rank writes OUT_DIR/rank{R}.json with what it saw:

- `generated`: per generation round, the prompt indices this rank generated (GenerationScorer's
  `_generate_indices` is wrapped; padding calls that even out the shards are left out);
- `scored`: per round, how many texts the scoring callable received on this rank;
- `checkpoint_writes`: the steps at which this rank wrote a checkpoint folder;
- the evaluations in `log_history`, the guard's stop, the saver's saves and ranking, the wandb run
  this process holds, and a checksum of its final weights (gathered first under ZeRO-3);
- `held_fraction`: the share of the weights' elements this rank held when training began;
- `samples`: the generation table rows (step, prompt, reference, generation, scores).

`engine=zero3` / `engine=zero2` train under DeepSpeed ZeRO-3 / ZeRO-2 (CPU accelerator, gloo;
tests/test_engines.py);
`load_best=1` sets BestCheckpointSaver(load_best_at_end=True).

`build_kit` and `write_record` are reused by kit_rank_error.py.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import PreTrainedTokenizerFast, TrainerCallback

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS.parent))

from ft_callbacks import BestCheckpointSaver, GenerationScorer, OverfitGuard, toy  # noqa: E402
from ft_callbacks.records import write_record as write_json  # noqa: E402
from tests.helpers import lm_trainer  # noqa: E402

NUM_PROMPTS = 7  # odd: rank 0 generates 4 prompts, rank 1 three (plus one padding call)
EVAL_KEYS = ("eval_loss", "eval_perplexity", "eval_token_loss", "eval_train_loss", "eval_loss_gap",
             "eval_rouge1", "eval_rougeL", "eval_bleu", "eval_rougeL_delta")  # fmt: skip


def prompt_pairs(corpus: list[str], count: int) -> tuple[list[str], list[str]]:
    """Prompts (the first words of a training docstring) and references (the words that follow)."""
    prompts, references = [], []
    for text in corpus[:count]:
        words = text.split()
        prompts.append(" ".join(words[:6]))
        references.append(" ".join(words[6:20]) or words[-1])
    return prompts, references


ZERO3 = {  # DeepSpeed ZeRO-3; the saver needs the 16-bit gather at save time
    "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
    "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "train_batch_size": "auto",
}  # fmt: skip


class PartitionProbe(TrainerCallback):
    """How much of the weights this rank holds once training starts (1.0 unless sharded)."""

    def __init__(self, probes: dict[str, Any]) -> None:
        self.probes = probes

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        params = list(model.parameters())
        whole = sum(getattr(p, "ds_numel", p.numel()) for p in params)  # ZeRO-3 keeps the full size here
        self.probes["held_fraction"] = sum(p.numel() for p in params) / whole


def build_kit(tokenizer_dir: str, out_dir: Path, monitor: str, background: bool | None, max_steps: int,
              eval_steps: int, on_score: Callable | None = None, engine: str = "ddp", load_best: bool = False,
              **guard_options: Any) -> dict[str, Any]:  # fmt: skip
    """The Trainer with the three callbacks, instrumented. Returns the pieces and the probes.
    `on_score(predictions)` runs inside the scoring callable first (kit_rank_error.py makes it raise)."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    corpus = toy.stdlib_corpus()
    prompts, references = prompt_pairs(corpus, NUM_PROMPTS)
    probes: dict[str, list] = {"generated": [], "scored": [], "checkpoint_writes": []}

    def counted(predictions, refs):
        if on_score is not None:
            on_score(predictions)
        probes["scored"].append(len(predictions))
        return {}

    options: dict[str, Any] = {} if background is None else {"background": background}
    scorer = GenerationScorer(prompts, references, metrics=("rouge", "bleu", counted), max_new_tokens=8,
                              batch_size=4, **options)  # fmt: skip
    generate = scorer._generate_indices

    def recording(model, tok, indices, keep, args, show_progress):
        probes["generated"].append(list(indices[:keep]))
        return generate(model, tok, indices, keep, args, show_progress)

    scorer._generate_indices = recording
    saver = BestCheckpointSaver(monitor=monitor, keep=100, load_best_at_end=load_best)
    write = saver._write_checkpoint

    def counting_write(ctx, step, value, *weights):
        probes["checkpoint_writes"].append(step)
        return write(ctx, step, value, *weights)

    saver._write_checkpoint = counting_write
    guard = OverfitGuard(patience=2, **guard_options)
    engine_args: dict[str, Any] = {}
    if engine == "zero3":
        engine_args["deepspeed"] = ZERO3
    elif engine == "zero2":  # optimizer state and gradients partitioned, weights whole on every rank
        engine_args["deepspeed"] = {**ZERO3, "zero_optimization": {"stage": 2}}
    trainer = lm_trainer(
        tokenizer, corpus, out_dir / "trainer", [PartitionProbe(probes), guard, saver, scorer], train_size=8,
        eval_size=30, max_steps=max_steps, eval_steps=eval_steps, logging_steps=eval_steps,
        per_device_train_batch_size=4, per_device_eval_batch_size=8, ddp_backend="gloo", report_to="wandb",
        run_name="kit", **engine_args,
    )  # fmt: skip
    assert dist.is_initialized() and dist.get_world_size() == 2, "expected a 2-process run"
    return {"trainer": trainer, "guard": guard, "saver": saver, "scorer": scorer, "probes": probes}


def write_record(kit: dict[str, Any], out_dir: Path, **extra: Any) -> dict[str, Any]:
    import wandb

    trainer, guard, saver, scorer = kit["trainer"], kit["guard"], kit["saver"], kit["scorer"]
    rank = trainer.args.process_index
    evals = [
        {k: e[k] for k in ("step", *EVAL_KEYS) if k in e}
        for e in trainer.state.log_history
        if "eval_loss" in e or "eval_rouge1" in e
    ]
    record = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "launcher_env": sorted(k for k in os.environ if k.startswith(("ACCELERATE_", "TORCHELASTIC_RUN_ID"))),
        "model_wrapper": type(trainer.model_wrapped).__name__,
        "global_step": trainer.state.global_step,
        "stop_step": guard.policy.stop_step,
        "stop_rule": guard.policy.stop_rule,
        "evals": evals,
        "saves": saver.saves,
        "ranking": saver.ranking.state_dict(),
        "scorer_sync": scorer._sync,
        "generation_history": scorer.history,
        "wandb_run": wandb.run.id if wandb.run is not None else None,
        "weights_checksum": weights_checksum(trainer.model),
        "samples": scorer.table_rows,
        **kit["probes"],
        **extra,
    }
    write_json(out_dir / f"rank{rank}.json", record)  # atomic
    return record


def weights_checksum(model: torch.nn.Module) -> float:
    """The sum of every weight, gathered first where DeepSpeed ZeRO-3 partitions them (collective)."""
    params = list(model.parameters())
    if all(hasattr(p, "ds_id") for p in params):
        import deepspeed

        with deepspeed.zero.GatheredParameters(params):
            return sum(float(p.detach().double().sum()) for p in params)
    return sum(float(p.detach().double().sum()) for p in params)


def parse_options(argv: list[str], **defaults: Any) -> dict[str, Any]:
    """`TOKENIZER_DIR OUT_DIR key=value ...` (not `--key`: torchrun and accelerate launch take any
    `--option` that abbreviates one of theirs, e.g. `--monitor` for `--monitor_interval`). A key given
    twice collects a list."""
    options: dict[str, Any] = {"tokenizer_dir": argv[0], "out_dir": Path(argv[1]), **defaults}
    for item in argv[2:]:
        key, _, value = item.partition("=")
        if key not in defaults:
            raise SystemExit(f"unknown option {item!r}; known: {sorted(defaults)}")
        if isinstance(defaults[key], list):
            options[key] = [*options[key], value]
        else:
            options[key] = type(defaults[key])(value)
    return options


def main() -> None:
    options = parse_options(sys.argv[1:], monitor="eval_perplexity", background="default", max_steps=40,
                            eval_steps=5, engine="ddp", load_best=0)  # fmt: skip
    started = time.monotonic()
    kit = build_kit(options["tokenizer_dir"], options["out_dir"], options["monitor"],
                    None if options["background"] == "default" else False, options["max_steps"],
                    options["eval_steps"], engine=options["engine"], load_best=bool(options["load_best"]))  # fmt: skip
    kit["trainer"].train()
    write_record(kit, options["out_dir"], seconds=time.monotonic() - started)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
