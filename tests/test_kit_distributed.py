"""The whole generative-LM kit under real multi-process launchers (CPU, gloo), and one rank failing.

OverfitGuard(patience=2) + BestCheckpointSaver + GenerationScorer(rouge, bleu) train one tiny GPT-2
together (tests/dist_scripts/kit_ddp.py), reporting to wandb (offline):

- under `torchrun --nproc_per_node 2`: one wandb run, one set of checkpoints (one folder per
  improvement, written once, exactly what the manifest lists), the same stop on every rank, the
  same numbers on every rank, generation sharded and each prompt scored once, each evaluation
  logged once;
- under `accelerate launch --multi_gpu --num_processes 2` (the same essentials). Not `--cpu`: on
  accelerate 1.x `--cpu --num_processes 2` without an MPI hostfile starts ONE plain process (no
  RANK/WORLD_SIZE), so it is no distributed run at all; `--multi_gpu` goes through
  torch.distributed.run and, with `use_cpu=True` + `ddp_backend="gloo"` in TrainingArguments,
  trains on the CPU. The script asserts a world size of 2, so the trap cannot pass silently.

Then an exception on ONE rank inside our code (tests/dist_scripts/kit_rank_error.py) must give a
clean skip (that round's metrics absent, training goes on, both ranks finish) or a clean error on
every rank, never a hang: the launchers run in their own process group and are killed at their
timeout, which fails the test with the output tail.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from pathlib import Path

import pytest

from ft_callbacks.best_checkpoint import INFO_FILE, MANIFEST, TMP_PREFIX
from ft_callbacks.core.modes import is_improvement

from .helpers import free_port, run_launcher, run_torchrun, wandb_history

SCRIPTS = Path(__file__).resolve().parent / "dist_scripts"
KIT = SCRIPTS / "kit_ddp.py"
FAULTS = SCRIPTS / "kit_rank_error.py"
MAX_STEPS = 40  # the guard stops well before
PROMPTS = 7
SHARDS = ([0, 2, 4, 6], [1, 3, 5])  # prompt indices each rank generates

pytestmark = pytest.mark.distributed


# -- launching ------------------------------------------------------------------------------------
def accelerate_command(script: str | os.PathLike, *script_args: str | os.PathLike) -> list[str]:
    """`accelerate launch` of 2 local processes on a free port (see the module docstring for --multi_gpu)."""
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
        str(script), *map(str, script_args),
    ]  # fmt: skip


def records(out_dir: Path) -> list[dict]:
    """The rank records of the ranks that finished."""
    paths = [out_dir / f"rank{r}.json" for r in range(2)]
    return [json.loads(p.read_text()) for p in paths if p.exists()]


class Run:
    def __init__(self, root: Path, rc: int, output: str, seconds: float) -> None:
        self.root, self.rc, self.output, self.seconds = root, rc, output, seconds
        self.out = root / "out"
        self.wandb_dir = root / "wandb_root"
        self.records = records(self.out)

    def ok(self) -> tuple[dict, dict]:
        assert self.rc == 0, f"the run failed (rc={self.rc}). Output tail:\n{self.output[-6000:]}"
        assert len(self.records) == 2, self.output[-6000:]
        return self.records[0], self.records[1]


@pytest.fixture(scope="module")
def tok_dir(tokenizer, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kit_tokenizer")
    tokenizer.save_pretrained(str(path))
    return path


def _launch(tmp_path_factory, name: str, tok_dir: Path, script: Path, *args: str, launcher: str = "torchrun",
            wandb: bool = True) -> Run:  # fmt: skip
    root = tmp_path_factory.mktemp(name)
    wandb_dir = root / "wandb_root"
    wandb_dir.mkdir()
    wandb_dir = wandb_dir if wandb else None
    if launcher == "torchrun":
        rc, output, seconds = run_torchrun(script, tok_dir, root / "out", *args, wandb_dir=wandb_dir)
    else:
        rc, output, seconds = run_launcher(accelerate_command(script, tok_dir, root / "out", *args), wandb_dir,
                                           root / "hf_home")  # fmt: skip
    return Run(root, rc, output, seconds)


# -- shared checks --------------------------------------------------------------------------------
def training_evals(record: dict) -> list[dict]:
    return [e for e in record["evals"] if "eval_loss" in e]


def improving_steps(record: dict, monitor: str, mode: str) -> list[int]:
    best, steps = None, []
    for e in training_evals(record):
        if is_improvement(e.get(monitor), best, mode, 0.0):
            best = e[monitor]
            steps.append(e["step"])
    return steps


def assert_ranks_agree_and_stop_together(r0: dict, r1: dict, wrapper: str = "DistributedDataParallel") -> None:
    assert (r0["rank"], r1["rank"]) == (0, 1)
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["model_wrapper"] == r1["model_wrapper"] == wrapper
    # The gap rule stopped both ranks at the same step, before max_steps.
    assert r0["stop_rule"] == r1["stop_rule"] == "gap"
    assert r0["stop_step"] == r1["stop_step"] == r0["global_step"] == r1["global_step"] < MAX_STEPS
    # Every number of every evaluation (perplexity, losses, rouge, bleu) is the same on both ranks.
    assert r0["evals"] == r1["evals"]
    evals = training_evals(r0)
    assert len(evals) >= 3 and evals[-1]["step"] == r0["stop_step"]
    for e in evals:
        assert math.isfinite(e["eval_perplexity"]) and "eval_rougeL" in e and "eval_bleu" in e, e
    assert r0["generation_history"] == r1["generation_history"]
    assert r0["weights_checksum"] == r1["weights_checksum"]


def assert_generation_sharded_and_scored_once(r0: dict, r1: dict) -> None:
    rounds = 1 + len(training_evals(r0))  # the step-0 baseline and every evaluation
    assert r0["generated"] == [SHARDS[0]] * rounds
    assert r1["generated"] == [SHARDS[1]] * rounds
    assert r0["scored"] == [PROMPTS] * rounds and r1["scored"] == []
    scored = [e["step"] for e in r0["evals"] if e.get("eval_rougeL") is not None]
    assert scored == [0, *(e["step"] for e in training_evals(r0))]


def assert_one_set_of_checkpoints(run: Run, r0: dict, r1: dict, monitor: str, mode: str) -> None:
    improving = improving_steps(r0, monitor, mode)
    assert improving, r0["evals"]
    # Rank 0 wrote one folder per improvement, rank 1 none; both know the same saves and ranking.
    assert r0["checkpoint_writes"] == improving and r1["checkpoint_writes"] == []
    assert r0["saves"] == r1["saves"] and [s["step"] for s in r0["saves"]] == improving
    assert r0["ranking"] == r1["ranking"]
    out = run.out / "trainer"
    manifest = json.loads((out / MANIFEST).read_text())
    listed = sorted(e["path"] for e in manifest["checkpoints"])
    on_disk = sorted(p.name for p in out.iterdir() if p.name.startswith("best-"))
    assert listed == on_disk == sorted(s["path"] for s in r0["saves"])
    assert not [p for p in out.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert manifest["monitor"] == monitor and manifest["pending"] == [] and manifest["pruning"] == []
    values = {e["step"]: e[monitor] for e in training_evals(r0)}
    for entry in manifest["checkpoints"]:
        info = json.loads((out / entry["path"] / INFO_FILE).read_text())
        assert info["step"] == entry["step"] and info["value"] == entry["value"] == values[entry["step"]]
        assert (out / entry["path"] / "model.safetensors").is_file()
        assert run.output.count(f"saved {entry['path']} ") == 1  # one console line: one save
    assert manifest["best_step"] == improving[-1]


def assert_one_wandb_run_each_evaluation_once(run: Run, r0: dict, r1: dict) -> None:
    runs = sorted((run.wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    assert r0["wandb_run"] is not None and runs[0].name.endswith(r0["wandb_run"])
    assert r1["wandb_run"] is None
    history = wandb_history(run.wandb_dir)
    eval_steps = [e["step"] for e in training_evals(r0)]
    perplexity = [(row["train/global_step"], row["eval/perplexity"]) for row in history if "eval/perplexity" in row]
    rouge = [(row["train/global_step"], row["eval/rougeL"]) for row in history if "eval/rougeL" in row]
    assert [s for s, _ in perplexity] == eval_steps  # once each, nothing twice
    assert [s for s, _ in rouge] == [0, *eval_steps]
    expected = {e["step"]: e for e in r0["evals"]}
    assert [v for _, v in perplexity] == pytest.approx([expected[s]["eval_perplexity"] for s, _ in perplexity])
    assert [v for _, v in rouge] == pytest.approx([expected[s]["eval_rougeL"] for s, _ in rouge])


# -- 1. torchrun ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torchrun_kit(tok_dir, tmp_path_factory) -> Run:
    """eval_perplexity drives the saver (improves at several evaluations); scoring is synchronous."""
    return _launch(tmp_path_factory, "kit_torchrun", tok_dir, KIT, "monitor=eval_perplexity", "background=off",
                   f"max_steps={MAX_STEPS}")  # fmt: skip


def test_torchrun_kit_ranks_agree_and_stop_together(torchrun_kit):
    r0, r1 = torchrun_kit.ok()
    assert_ranks_agree_and_stop_together(r0, r1)
    assert r0["scorer_sync"] is r1["scorer_sync"] is True


def test_torchrun_kit_generation_is_sharded_and_each_prompt_scored_once(torchrun_kit):
    r0, r1 = torchrun_kit.ok()
    assert_generation_sharded_and_scored_once(r0, r1)


def test_torchrun_kit_writes_one_set_of_checkpoints(torchrun_kit):
    r0, r1 = torchrun_kit.ok()
    assert len(improving_steps(r0, "eval_perplexity", "min")) >= 2
    assert_one_set_of_checkpoints(torchrun_kit, r0, r1, "eval_perplexity", "min")


def test_torchrun_kit_logs_each_evaluation_once_to_one_wandb_run(torchrun_kit):
    r0, r1 = torchrun_kit.ok()
    assert_one_wandb_run_each_evaluation_once(torchrun_kit, r0, r1)


# -- 2. accelerate launch -------------------------------------------------------------------------
def test_accelerate_launch_kit_has_the_same_essentials(tok_dir, tmp_path_factory):
    """eval_rougeL drives the saver with the scorer's default (background) mode: the scorer must turn
    synchronous on every rank, or rank 1 would never see the score the saver needs."""
    run = _launch(tmp_path_factory, "kit_accelerate", tok_dir, KIT, "monitor=eval_rougeL", f"max_steps={MAX_STEPS}",
                  launcher="accelerate")  # fmt: skip
    r0, r1 = run.ok()
    assert {"ACCELERATE_MIXED_PRECISION", "ACCELERATE_DYNAMO_BACKEND"} <= set(r0["launcher_env"])  # really accelerate
    assert r0["scorer_sync"] is r1["scorer_sync"] is True
    assert_ranks_agree_and_stop_together(r0, r1)
    assert_generation_sharded_and_scored_once(r0, r1)
    assert_one_set_of_checkpoints(run, r0, r1, "eval_rougeL", "max")
    assert_one_wandb_run_each_evaluation_once(run, r0, r1)


# -- 3. one rank fails ----------------------------------------------------------------------------
def test_generation_failing_on_rank1_and_scoring_failing_on_rank0_skip_only_their_round(tok_dir, tmp_path_factory):
    """Synchronous scoring (the collective path): rank 1 cannot generate at step 10, rank 0's scoring
    callable raises at step 15. Both rounds are skipped on both ranks; everything else as usual."""
    run = _launch(tmp_path_factory, "fault_skip", tok_dir, FAULTS, "fault=generate:1:10", "fault=score:0:15",
                  "background=off")  # fmt: skip
    r0, r1 = run.ok()
    assert r0["fired"] == [["score", 15]] and r1["fired"] == [["generate", 10]]
    # Training went on to the same stop on both ranks, with every other number agreeing.
    assert r0["stop_step"] == r1["stop_step"] == r0["global_step"] == r1["global_step"] < MAX_STEPS
    assert r0["evals"] == r1["evals"] and r0["saves"] == r1["saves"] and r0["ranking"] == r1["ranking"]
    eval_steps = [e["step"] for e in training_evals(r0)]
    assert 10 in eval_steps and 15 in eval_steps and eval_steps[-1] == r0["stop_step"]
    scored_steps = [e["step"] for e in r0["evals"] if e.get("eval_rougeL") is not None]
    assert scored_steps == [0, *(s for s in eval_steps if s not in (10, 15))]
    assert [h["step"] for h in r0["generation_history"]] == scored_steps
    assert [h["step"] for h in r1["generation_history"]] == scored_steps
    # Rank 0 generated its share every round; rank 1 all but the failed one. Scored once per good round.
    assert r0["generated"] == [SHARDS[0]] * (1 + len(eval_steps))
    assert r1["generated"] == [SHARDS[1]] * len(eval_steps)
    assert r0["scored"] == [PROMPTS] * len(scored_steps) and r1["scored"] == []
    for message in ("generation failed (RuntimeError: injected generation failure on rank 1 at step 10)",
                    "scoring failed (ValueError: injected scoring failure on rank 0 at step 15)"):  # fmt: skip
        assert run.output.count(message) == 1, run.output[-6000:]
    # Nothing of the skipped rounds reached wandb.
    rouge_steps = [row["train/global_step"] for row in wandb_history(run.wandb_dir) if "eval/rougeL" in row]
    assert rouge_steps == scored_steps


def test_generation_failing_on_one_rank_at_the_first_evaluation_is_never_a_hang(tok_dir, tmp_path_factory):
    """BestCheckpointSaver monitors eval_rougeL and rank 1 cannot generate at the FIRST evaluation.

    Today GenerationScorer skips the round on both ranks ("no generation scores this round, training
    continues") and then BestCheckpointSaver.decide raises its missing-monitor ConfigurationError
    ("monitors 'eval_rougeL', but the evaluation at step 5 produced only [...]. Pick one of those (or
    fix compute_metrics)") on every rank, since it checks the monitor at the first evaluation it sees.
    That is a clean error on every rank, not a hang, so it passes here; a skip of the round (the
    better behaviour for a transient failure) passes too."""
    run = _launch(tmp_path_factory, "fault_first", tok_dir, FAULTS, "fault=generate:1:5", "monitor=eval_rougeL",
                  "background=default", wandb=False)  # fmt: skip
    assert "injected generation failure on rank 1 at step 5" in run.output, run.output[-6000:]
    if run.rc == 0:  # a clean skip
        r0, r1 = run.ok()
        assert r0["evals"] == r1["evals"] and r0["saves"] == r1["saves"]
        assert 5 not in [e["step"] for e in r0["evals"] if e.get("eval_rougeL") is not None]
        return
    # A clean error: every rank that failed raised the saver's error itself (none was left waiting in
    # a collective whose peer had died: that would be gloo's "Connection closed by peer"), and no
    # rank went on to finish.
    errors = set(re.findall(r"^\[rank\d\]: ([\w.]+Error): ", run.output, flags=re.MULTILINE))
    assert errors == {"ft_callbacks.core.errors.ConfigurationError"}, run.output[-6000:]
    assert "BestCheckpointSaver monitors 'eval_rougeL', but the evaluation at step 5 produced only" in run.output
    assert "Connection closed by peer" not in run.output
    assert run.records == []


def test_an_uncaught_error_on_one_rank_ends_every_rank(tok_dir, tmp_path_factory):
    """OverfitGuard(train_sample_size=4) measures its training sample at each evaluation with a forward
    on each rank; on rank 1 that forward runs out of memory at step 10 (nothing catches it). Rank 0
    is then waiting for rank 1 in a collective: it must fail too (gloo: "Connection closed by peer")
    or be terminated by the launcher, not wait for the 30-minute process-group timeout."""
    run = _launch(tmp_path_factory, "fault_oom", tok_dir, FAULTS, "fault=sample-oom:1:10")
    assert run.rc != 0, run.output[-6000:]
    injected = "injected: out of memory in the train-sample forward on rank 1 at step 10"
    assert f"[rank1]: torch.OutOfMemoryError: {injected}" in run.output, run.output[-6000:]
    assert run.records == []  # neither rank went on as if nothing had happened
    rank0_failed = "[rank0]: RuntimeError" in run.output and "Connection closed by peer" in run.output
    rank0_terminated = "(SIGTERM)" in run.output
    assert rank0_failed or rank0_terminated, run.output[-6000:]


@pytest.fixture(scope="module")
def label_fault(tok_dir, tmp_path_factory) -> Run:
    """A tiny BERT classifier, LabelScorer + BestCheckpointSaver(eval_f1), 61 eval samples in batches
    of 10 per rank; rank 1's LabelScorer hook cannot read its first eval batch (caught in the hook)."""
    return _launch(tmp_path_factory, "fault_label", tok_dir, FAULTS, "fault=label-hook:1:10", wandb=False)


def test_label_hook_failing_on_one_rank_is_never_a_hang(label_fault):
    r0, r1 = label_fault.ok()
    assert r0["fired"] == [] and r1["fired"] == [["label-hook", 10]]
    assert "LabelScorer could not read the batch (injected: cannot read the eval output on rank 1" in label_fault.output
    # Both ranks finished and agree: the label metrics of that evaluation are skipped on every rank
    # (numbers over part of the eval set would be silently wrong), so nothing was saved on eval_f1.
    assert len(r0["evals"]) == len(r1["evals"]) == 1
    assert r0["evals"] == r1["evals"] and "eval_accuracy" not in r0["evals"][0]
    assert r0["saves"] == r1["saves"] == []
    assert "an evaluation batch could not be read on some rank" in label_fault.output
    assert "eval_f1 is missing this evaluation (its producer skipped the round)" in label_fault.output


def test_label_hook_failing_on_one_rank_gives_true_metrics_or_none(label_fault):
    r0, _ = label_fault.ok()
    logged = r0["evals"][0]
    if "eval_accuracy" not in logged:  # the round skipped: acceptable
        return
    support = [logged[f"eval_support_{name}"] for name in ("short", "medium", "long")]
    assert support == r0["hand_support"]
    assert logged["eval_accuracy"] == pytest.approx(r0["hand_accuracy"], abs=1e-12)
