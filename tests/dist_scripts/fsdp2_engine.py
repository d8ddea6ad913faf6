"""Run under `torchrun --nproc_per_node 2` (CPU, gloo) by tests/test_engines.py.

usage: fsdp2_engine.py TOKENIZER_DIR OUT_DIR

accelerate starts FSDP only for accelerator backends (its state.py picks DistributedType.FSDP for
MULTI_GPU/XPU/NPU/..., never MULTI_CPU), so the Trainer cannot run FSDP on this CPU-only machine.
torch's own FSDP2 (`fully_shard`) does run on CPU with gloo, and the FSDP code paths of ft_callbacks
take the model, not the Trainer: this script drives them on a really sharded tiny GPT-2.

1. GenerationScorer generates its 7 prompts (uneven shards: 4 + 3) on the whole model, then again on
   the sharded one (synced_gpus, one padding call on rank 1): the texts must be equal.
2. `engines.full_state_dict` gathers the sharded weights; rank 0 writes them with save_pretrained
   (what BestCheckpointSaver does) and checks them against the weights before sharding.
3. The sharded weights are zeroed through `engines.load_full_state_dict`, then the saved file is put
   back through it (what load_best_at_end does); a gather must give the original weights again.

Each rank writes OUT_DIR/rank{R}.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS.parent))

from ft_callbacks import GenerationScorer, toy  # noqa: E402
from ft_callbacks.best_checkpoint import read_saved_weights  # noqa: E402
from ft_callbacks.engines import full_state_dict, load_full_state_dict, sharded_engine  # noqa: E402
from ft_callbacks.records import write_record  # noqa: E402
from tests.dist_scripts.kit_ddp import NUM_PROMPTS, prompt_pairs  # noqa: E402


def checksum(weights: dict[str, torch.Tensor]) -> float:
    return sum(float(v.double().sum()) for v in weights.values())


def main() -> None:
    tokenizer_dir, out_dir = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    corpus = toy.stdlib_corpus()
    torch.manual_seed(0)  # the same weights on both ranks
    model = toy.tiny_gpt2(tokenizer)
    reference = {k: v.detach().clone() for k, v in model.state_dict().items()}
    prompts, references = prompt_pairs(corpus, NUM_PROMPTS)
    scorer = GenerationScorer(prompts, references, metrics=("rouge",), max_new_tokens=8, batch_size=2)
    scorer._prepare(model, tokenizer)
    calls: list[int] = []
    generate = model.generate

    def counting_generate(*args, **kwargs):
        calls.append(int(kwargs.get("synced_gpus", False)))
        return generate(*args, **kwargs)

    model.generate = counting_generate
    engine_before = sharded_engine(model)
    whole_texts = scorer.generate(model, tokenizer, show_progress=False)
    calls_whole = list(calls)
    calls.clear()

    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    engine = sharded_engine(model)
    held = sum(p.to_local().numel() for p in model.parameters()) / sum(p.numel() for p in model.parameters())
    sharded_texts = scorer.generate(model, tokenizer, show_progress=False)
    calls_sharded = list(calls)

    gathered = full_state_dict(engine, model)
    gathered_keys = len(gathered)
    gathered_equal = bool(gathered) and all(torch.equal(gathered[k], reference[k]) for k in gathered)
    folder = out_dir / "saved"
    if rank == 0:
        model.save_pretrained(str(folder), state_dict=gathered)
        tokenizer.save_pretrained(str(folder))
    dist.barrier()
    loaded = AutoModelForCausalLM.from_pretrained(str(folder))
    loaded_equal = all(torch.equal(loaded.state_dict()[k], reference[k]) for k in reference)

    zeros = {k: torch.zeros_like(v) for k, v in reference.items()} if rank == 0 else {}
    load_full_state_dict(engine, model, zeros)
    zeroed = checksum(full_state_dict(engine, model))
    load_full_state_dict(engine, model, read_saved_weights(folder) if rank == 0 else {})
    restored = full_state_dict(engine, model)
    record = {
        "rank": rank,
        "engine_before": engine_before,
        "engine": engine,
        "held_fraction": held,
        "whole_texts": whole_texts,
        "sharded_texts": sharded_texts,
        "generate_calls_whole": calls_whole,
        "generate_calls_sharded": calls_sharded,
        "gathered_keys": gathered_keys,  # save_pretrained empties the dict it is given
        "gathered_equal": gathered_equal,
        "loaded_equal": loaded_equal,
        "zeroed_checksum": zeroed if rank == 0 else None,
        "restored_equal": bool(restored) and all(torch.equal(restored[k], reference[k]) for k in reference),
        "reference_checksum": checksum(reference),
    }
    write_record(out_dir / f"rank{rank}.json", record)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
