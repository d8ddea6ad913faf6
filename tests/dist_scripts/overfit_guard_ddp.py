"""Run under `torchrun --nproc_per_node 2` (CPU, gloo) by tests/test_overfit_guard_distributed.py.

usage: overfit_guard_ddp.py TOKENIZER_DIR OUT_DIR [MAX_STEPS]

Every rank trains the same tiny GPT-2 on a small train set (so it overfits) with
OverfitGuard(patience=2), and writes OUT_DIR/rank{R}.json with what it saw. The eval set has 61
samples and eval batches are 10 per rank: 7 batches, so distributed evaluation deals rank 1 a
fourth batch made only of repeated samples, and the guard must count each sample exactly once.

Rank 0 computes the exact perplexity by hand (one process, one pass over the whole eval set,
summed NLL of shifted labels / predicted tokens) for the test to compare with:
- before training, for a standalone `evaluate()` of the initial model (all ranks);
- at every evaluation during training, with the weights of that step;
- after training, for a standalone `evaluate()` of the final model.

The standalone evaluation before training runs on its own eval-only Trainer and model copy
(identical seeded init): with transformers 5.23 / accelerate, calling `trainer.evaluate()` before
`trainer.train()` in a multi-process run marks the bare model as "prepared" (`prepare_model(...,
evaluation_mode=True)` sets `_is_accelerate_prepared`), so `train()` never wraps it in
DistributedDataParallel and every rank silently trains its own weights. The script records the
wrapper type and per-rank weight checksums so the test can prove DDP really synchronised them.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import DataCollatorForLanguageModeling, PreTrainedTokenizerFast, TrainerCallback

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent))

from helpers import lm_trainer  # noqa: E402

from ft_callbacks import toy  # noqa: E402
from ft_callbacks.overfit_guard import OverfitGuard  # noqa: E402
from ft_callbacks.records import write_record  # noqa: E402

TRAIN_SIZE = 24
EVAL_SIZE = 61
EVAL_BATCH = 10


def exact_perplexity(model, dataset, tokenizer) -> tuple[float, int]:
    """exp(summed NLL / predicted tokens) over the whole dataset as one batch: labels shifted by one,
    ignore_index -100, float32 logits, float64 sum. No labels go into the forward, so no loss hook
    (OverfitGuard's probe) records anything."""
    batch = DataCollatorForLanguageModeling(tokenizer, mlm=False)([dataset[i] for i in range(len(dataset))])
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    finally:
        model.train(was_training)
    logits = logits[:, :-1, :].float()
    labels = batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="sum"
    ).double()
    count = int((labels != -100).sum())
    return math.exp(nll.item() / count), count


def per_sample_nll(model, dataset, tokenizer) -> tuple[list[float], list[int]]:
    """Each eval sample's summed NLL and target-token count, in dataset order, in this process alone."""
    batch = DataCollatorForLanguageModeling(tokenizer, mlm=False)([dataset[i] for i in range(len(dataset))])
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits, labels = logits[:, :-1, :].float(), batch["labels"][:, 1:]
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="none"
    ).view(labels.shape)
    return nll.double().sum(-1).tolist(), (labels != -100).sum(-1).tolist()


def weight_checksum(model) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


class HandEval(TrainerCallback):
    """At every evaluation: every rank's weight checksum (all ranks) and, on rank 0, the exact
    perplexity of the model as it is now over the whole eval set, in this process alone.

    Also the training NLL per target token since the previous evaluation, summed over ranks,
    computed from the logits of the very training forwards (a forward hook), independently of the
    guard, which recovers it from the model's loss times `num_items_in_batch`."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.values: dict[int, float] = {}
        self.checksums: dict[int, list[float]] = {}
        self.wrappers: dict[int, str] = {}
        self.train_loss: dict[int, float] = {}
        self._window = torch.zeros(2, dtype=torch.float64)
        trainer.model.register_forward_hook(self._train_forward, with_kwargs=True)

    def _train_forward(self, module, args, kwargs, output):
        labels = kwargs.get("labels")
        if not module.training or labels is None:
            return
        with torch.no_grad():
            logits = output.logits[:, :-1, :].float()
            targets = labels[:, 1:]
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100, reduction="sum"
            )
            self._window += torch.stack([nll.double(), (targets != -100).sum().double()])

    def on_evaluate(self, args, state, control, **kwargs):
        window, self._window = self._window.clone(), torch.zeros(2, dtype=torch.float64)
        dist.all_reduce(window)
        if window[1] > 0:
            self.train_loss[state.global_step] = float(window[0] / window[1])
        model = self.trainer.model
        mine = torch.tensor([weight_checksum(model)], dtype=torch.float64)
        every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(every, mine)
        self.checksums[state.global_step] = [float(t) for t in every]
        self.wrappers[state.global_step] = type(self.trainer.model_wrapped).__name__
        # The standalone evaluate() after training has the stop step too, and by then the guard has put
        # the best weights back: keep the value of the evaluation during training.
        if state.is_world_process_zero and state.global_step not in self.values:
            ppl, _ = exact_perplexity(model, self.trainer.eval_dataset, self.trainer.processing_class)
            self.values[state.global_step] = ppl


def main() -> None:
    tokenizer_dir, out_dir = sys.argv[1], Path(sys.argv[2])
    max_steps = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    corpus = toy.stdlib_corpus()
    common = {
        "train_size": TRAIN_SIZE,
        "eval_size": EVAL_SIZE,
        "per_device_eval_batch_size": EVAL_BATCH,
        "max_steps": max_steps,
        "ddp_backend": "gloo",
    }

    # 1. A standalone evaluation of the initial model, on every rank (eval-only Trainer, see above).
    initial = toy.tiny_gpt2(tokenizer)
    evaluator_guard = OverfitGuard()
    evaluator = lm_trainer(
        tokenizer, corpus, out_dir / "evaluator", callbacks=[evaluator_guard], model=initial, **common
    )
    rank = evaluator.args.process_index
    world = evaluator.args.world_size
    assert dist.is_initialized() and dist.get_world_size() == world == 2, (world, dist.is_initialized())
    assert len(evaluator.eval_dataset) == EVAL_SIZE
    before = evaluator.evaluate()
    record: dict = {
        "rank": rank,
        "world_size": world,
        "pre_train_eval_perplexity": before.get("eval_perplexity"),
        "pre_train_eval_token_loss": before.get("eval_token_loss"),
        # The per-sample rows the noise test pairs: gathered from both ranks in dataset order, repeats dropped.
        "pre_train_sample_nll": evaluator_guard.last_samples[0].tolist(),
        "pre_train_sample_tokens": evaluator_guard.last_samples[1].tolist(),
    }

    # 2. Training with OverfitGuard(patience=2), on a model with the same seeded initial weights.
    guard = OverfitGuard(patience=2)
    trainer = lm_trainer(tokenizer, corpus, out_dir / "trainer", callbacks=[guard], **common)
    hand = HandEval(trainer)
    trainer.add_callback(hand)  # after the guard; the guard does not depend on the order
    if rank == 0:
        # The initial model, by hand, in this process alone.
        live = trainer.model.state_dict()
        record["same_initial_weights"] = all(torch.equal(v, live[k]) for k, v in initial.state_dict().items())
        record["hand_perplexity"], record["hand_tokens"] = exact_perplexity(initial, evaluator.eval_dataset, tokenizer)
        record["hand_sample_nll"], record["hand_sample_tokens"] = per_sample_nll(initial, evaluator.eval_dataset,
                                                                                 tokenizer)  # fmt: skip
    trainer.train()

    # 3. A standalone evaluation of the final model, on every rank.
    after = trainer.evaluate()
    record["post_train_eval_perplexity"] = after.get("eval_perplexity")
    if rank == 0:
        record["post_train_hand_perplexity"] = exact_perplexity(trainer.model, trainer.eval_dataset, tokenizer)[0]

    evals = [e for e in trainer.state.log_history if "eval_loss" in e and "eval_train_loss" in e]
    record.update(
        {
            "global_step": trainer.state.global_step,
            "max_steps": max_steps,
            "stop_step": guard.policy.stop_step,
            "stop_rule": guard.policy.stop_rule,
            "eval_steps": [e["step"] for e in evals],
            "eval_perplexity": [e.get("eval_perplexity") for e in evals],
            "eval_token_loss": [e.get("eval_token_loss") for e in evals],
            "eval_train_loss": [e.get("eval_train_loss") for e in evals],
            "eval_loss_gap": [e.get("eval_loss_gap") for e in evals],
            "hand_eval_perplexity": [hand.values.get(e["step"]) for e in evals] if rank == 0 else None,
            "hand_train_loss": [hand.train_loss.get(e["step"]) for e in evals],
            "weight_checksums": [hand.checksums.get(e["step"]) for e in evals],
            "model_wrapper": [hand.wrappers.get(e["step"]) for e in evals],
        }
    )
    write_record(out_dir / f"rank{rank}.json", record)  # atomic
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
