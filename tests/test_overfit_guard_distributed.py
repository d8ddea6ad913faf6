"""OverfitGuard under real DDP: `torchrun --nproc_per_node 2` on CPU (gloo).

The script (tests/dist_scripts/overfit_guard_ddp.py) trains a tiny GPT-2 that overfits, with an eval
set of 61 samples and eval batches of 10 per rank, so distributed evaluation repeats samples to
even out the last round. We check that the ranks agree on every number and on the stop, that the
distributed perplexity counts each eval sample exactly once (against a single-process hand
computation, before, during and after training), that DDP really kept the weights in sync, and
that only rank 0 wrote to wandb.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from .helpers import run_torchrun, wandb_history

SCRIPT = Path(__file__).resolve().parent / "dist_scripts" / "overfit_guard_ddp.py"
MAX_STEPS = 200

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def ddp_run(tokenizer, tmp_path_factory):
    """One 2-process run shared by the tests of this module: (rank records, wandb dir, seconds)."""
    root = tmp_path_factory.mktemp("ddp")
    tok_dir = root / "tokenizer"
    tokenizer.save_pretrained(str(tok_dir))
    out_dir = root / "out"
    wandb_dir = root / "wandb_root"
    wandb_dir.mkdir()
    rc, output, seconds = run_torchrun(SCRIPT, str(tok_dir), str(out_dir), str(MAX_STEPS), wandb_dir=wandb_dir)
    assert rc == 0, f"torchrun failed (rc={rc}). Output tail:\n{output[-6000:]}"
    records = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]
    return records, wandb_dir, seconds


def test_ranks_agree_and_stop_together(ddp_run):
    (r0, r1), _, seconds = ddp_run
    assert (r0["rank"], r1["rank"]) == (0, 1)
    assert r0["world_size"] == r1["world_size"] == 2
    # The gap rule stopped both ranks at the same step, well before max_steps.
    assert r0["stop_rule"] == r1["stop_rule"] == "gap"
    assert r0["stop_step"] == r1["stop_step"] == r0["global_step"] == r1["global_step"]
    assert r0["global_step"] < MAX_STEPS
    # Every evaluation produced the same reduced numbers on both ranks.
    assert r0["eval_steps"] == r1["eval_steps"] and r0["eval_steps"][-1] == r0["stop_step"]
    assert len(r0["eval_perplexity"]) >= 3
    assert all(v is not None and math.isfinite(v) for v in r0["eval_perplexity"])
    assert r0["eval_perplexity"] == r1["eval_perplexity"]
    assert r0["eval_token_loss"] == r1["eval_token_loss"]
    for a, b in zip(r0["eval_train_loss"], r1["eval_train_loss"], strict=True):
        assert a is not None and math.isfinite(a)
        assert math.isclose(a, b, rel_tol=1e-12)
    # The training loss of each window is the true token-weighted NLL over both ranks' batches,
    # as computed from the logits of the same training forwards.
    for step, ours, hand in zip(r0["eval_steps"], r0["eval_train_loss"], r0["hand_train_loss"], strict=True):
        assert hand is not None
        assert math.isclose(ours, hand, rel_tol=1e-5), (step, ours, hand)
    # DDP really synchronised the weights (each rank's evaluation is of the same model).
    assert set(r0["model_wrapper"]) == set(r1["model_wrapper"]) == {"DistributedDataParallel"}
    for sums in r0["weight_checksums"]:
        assert sums[0] == sums[1], sums
    # It overfit: training loss fell while the gap widened at the last evaluations.
    gaps = r0["eval_loss_gap"]
    assert gaps[-1] > gaps[-2] > gaps[-3]
    assert seconds < 120, f"the distributed run took {seconds:.0f}s"


def test_distributed_perplexity_counts_each_sample_once(ddp_run):
    (r0, r1), _, _ = ddp_run
    # Standalone evaluate() of the initial model before training: same value on both ranks, and
    # equal to the exact perplexity of that model over the whole eval set in one process.
    assert r0["same_initial_weights"]
    assert r0["pre_train_eval_perplexity"] == r1["pre_train_eval_perplexity"]
    assert math.isclose(r0["pre_train_eval_perplexity"], r0["hand_perplexity"], rel_tol=1e-5), (
        r0["pre_train_eval_perplexity"],
        r0["hand_perplexity"],
    )
    assert math.isclose(r0["pre_train_eval_token_loss"], math.log(r0["hand_perplexity"]), rel_tol=1e-5)
    # ... and at every evaluation during training, with the weights of that step.
    assert len(r0["hand_eval_perplexity"]) == len(r0["eval_perplexity"])
    for step, ours, hand in zip(r0["eval_steps"], r0["eval_perplexity"], r0["hand_eval_perplexity"], strict=True):
        assert hand is not None
        assert math.isclose(ours, hand, rel_tol=1e-5), (step, ours, hand)
    # ... and for a standalone evaluate() after training.
    assert r0["post_train_eval_perplexity"] == r1["post_train_eval_perplexity"]
    assert math.isclose(r0["post_train_eval_perplexity"], r0["post_train_hand_perplexity"], rel_tol=1e-5)


def test_per_sample_losses_are_gathered_in_dataset_order(ddp_run):
    """The noise test pairs sample i with sample i of the best evaluation: under DDP the rows of both
    ranks must come back in dataset order, each sample once, the same on every rank."""
    (r0, r1), _, _ = ddp_run
    assert len(r0["pre_train_sample_nll"]) == 61  # rank 1's padding batch of repeated samples dropped
    assert r0["pre_train_sample_nll"] == r1["pre_train_sample_nll"]
    assert r0["pre_train_sample_tokens"] == r1["pre_train_sample_tokens"] == r0["hand_sample_tokens"]
    for i, (ours, hand) in enumerate(zip(r0["pre_train_sample_nll"], r0["hand_sample_nll"], strict=True)):
        assert math.isclose(ours, hand, rel_tol=1e-5), (i, ours, hand)


def test_only_rank_zero_logs_to_wandb(ddp_run):
    (r0, _), wandb_dir, _ = ddp_run
    runs = sorted((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    logged = [row for row in wandb_history(wandb_dir) if "eval/perplexity" in row]
    steps = [row["train/global_step"] for row in logged]
    values = [row["eval/perplexity"] for row in logged]
    # The standalone evaluation at step 0, one row per evaluation during training, and the standalone
    # evaluation after training (at the final step).
    assert steps == [0, *r0["eval_steps"], r0["global_step"]]
    assert values[0] == pytest.approx(r0["pre_train_eval_perplexity"], rel=1e-9)
    assert values[1:-1] == pytest.approx(r0["eval_perplexity"], rel=1e-9)
    assert values[-1] == pytest.approx(r0["post_train_eval_perplexity"], rel=1e-9)
