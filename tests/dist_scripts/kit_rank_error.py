"""An exception on ONE rank inside ft_callbacks code, under `torchrun --nproc_per_node 2` (CPU, gloo);
launched by tests/test_kit_distributed.py, which turns a hang into a failure with its timeout.

usage: kit_rank_error.py TOKENIZER_DIR OUT_DIR fault=KIND:RANK:STEP [fault=...] [monitor=METRIC]
                         [background=default|off] [max_steps=N]

Faults (each fires once, on rank RANK, at the evaluation of step STEP):
- `generate`: GenerationScorer's `_generate_indices` raises RuntimeError (this rank's share of the
  prompts cannot be generated);
- `score`: the scoring callable raises ValueError (scoring runs on rank 0 only);
- `sample-oom`: OverfitGuard(train_sample_size=4) measures its training sample; that forward raises
  torch.OutOfMemoryError on this rank only (one GPU fuller than the others), which nothing catches;
- `label-hook`: a tiny BERT classifier with LabelScorer + BestCheckpointSaver(monitor="eval_f1")
  instead of the LM kit; LabelScorer's forward hook fails to read the first eval batch's output on
  this rank (the hook catches it: measuring must never break the forward pass).

The generative faults run the kit of kit_ddp.py. Each rank that finishes writes OUT_DIR/rank{R}.json
(with `fired`: the faults that fired on it).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kit_ddp import build_kit, parse_options, write_record


def parse_fault(text: str) -> tuple[str, int, int]:
    kind, rank, step = text.split(":")
    if kind not in ("generate", "score", "sample-oom", "label-hook"):
        raise SystemExit(f"unknown fault {kind!r}")
    return kind, int(rank), int(step)


def lm_kit(options: dict[str, Any], faults: list[tuple[str, int, int]]) -> None:
    me = int(os.environ["RANK"])
    fired: list[list[Any]] = []
    holder: dict[str, Any] = {}

    def armed(kind: str) -> tuple[int, int] | None:
        """(rank, step) of this kind's fault if it must fire now on this rank."""
        step = holder["trainer"].state.global_step
        for k, rank, at in faults:
            if k == kind and rank == me and at == step and [k, at] not in fired:
                fired.append([k, at])
                return rank, at
        return None

    def on_score(predictions):
        hit = armed("score")
        if hit:
            raise ValueError(f"injected scoring failure on rank {hit[0]} at step {hit[1]}")

    guard_options = {"train_sample_size": 4} if any(k == "sample-oom" for k, _, _ in faults) else {}
    kit = build_kit(options["tokenizer_dir"], options["out_dir"], options["monitor"],
                    None if options["background"] == "default" else False, options["max_steps"], 5, on_score=on_score,
                    **guard_options)  # fmt: skip
    holder["trainer"] = kit["trainer"]
    scorer, guard = kit["scorer"], kit["guard"]
    generate = scorer._generate_indices

    def failing_generate(*args, **kwargs):
        hit = armed("generate")
        if hit:
            raise RuntimeError(f"injected generation failure on rank {hit[0]} at step {hit[1]}")
        return generate(*args, **kwargs)

    scorer._generate_indices = failing_generate
    sample_loss = guard._train_sample_loss

    def failing_sample_loss(ctx):
        hit = armed("sample-oom")
        if hit:
            raise torch.OutOfMemoryError(f"injected: out of memory in the train-sample forward on rank {hit[0]} at "
                                         f"step {hit[1]}")  # fmt: skip
        return sample_loss(ctx)

    guard._train_sample_loss = failing_sample_loss
    started = time.monotonic()
    kit["trainer"].train()
    write_record(kit, options["out_dir"], fired=fired, seconds=time.monotonic() - started)


def label_kit(options: dict[str, Any], faults: list[tuple[str, int, int]]) -> None:
    import numpy as np
    from sklearn import metrics as skm
    from transformers import DataCollatorWithPadding, PreTrainedTokenizerFast

    import ft_callbacks.label_scorer as label_scorer_module
    from ft_callbacks import BestCheckpointSaver, LabelScorer, toy
    from ft_callbacks.records import write_record as write_json
    from tests.test_label_scorer import NAMES3, classifier_trainer, topic

    tokenizer = PreTrainedTokenizerFast.from_pretrained(options["tokenizer_dir"])
    scorer = LabelScorer(label_names=NAMES3)
    saver = BestCheckpointSaver(monitor="eval_f1", keep=100)
    trainer = classifier_trainer(
        tokenizer, toy.stdlib_corpus(), options["out_dir"] / "trainer", [scorer, saver], 3, topic, eval_size=61,
        max_steps=10, eval_steps=10, per_device_eval_batch_size=10, ddp_backend="gloo", report_to="wandb",
    )  # fmt: skip
    me = trainer.args.process_index
    fired: list[list[Any]] = []
    field = label_scorer_module._field

    def failing_field(output, name):
        step = trainer.state.global_step
        for kind, rank, at in faults:
            if kind == "label-hook" and rank == me and at == step and not fired and name == "logits":
                fired.append([kind, at])
                raise RuntimeError(f"injected: cannot read the eval output on rank {rank} at step {at}")
        return field(output, name)

    label_scorer_module._field = failing_field
    trainer.train()
    evals = [{k: v for k, v in e.items() if "runtime" not in k and "per_second" not in k}
             for e in trainer.state.log_history if "eval_loss" in e]  # fmt: skip
    record: dict[str, Any] = {"rank": me, "fired": fired, "evals": evals, "saves": saver.saves}
    if me == 0:  # the true numbers: the final model over the whole eval set, in this process alone
        dataset = trainer.eval_dataset
        batch = DataCollatorWithPadding(tokenizer)([dataset[i] for i in range(len(dataset))])
        with torch.no_grad():
            logits = trainer.model.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        probs = logits.double().softmax(-1).numpy()
        labels = batch["labels"].numpy()
        record["hand_accuracy"] = float(skm.accuracy_score(labels, probs.argmax(1)))
        record["hand_log_loss"] = float(skm.log_loss(labels, probs, labels=[0, 1, 2]))
        record["hand_support"] = np.bincount(labels, minlength=3).tolist()
    write_json(options["out_dir"] / f"rank{me}.json", record)  # atomic


def main() -> None:
    options = parse_options(sys.argv[1:], fault=[], monitor="eval_perplexity", background="off", max_steps=40)
    faults = [parse_fault(text) for text in options["fault"]]
    if not faults:
        raise SystemExit("give at least one fault=KIND:RANK:STEP")
    if any(kind == "label-hook" for kind, _, _ in faults):
        label_kit(options, faults)
    else:
        lm_kit(options, faults)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
