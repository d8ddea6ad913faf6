"""SIGKILL at random moments of a real run (training, evaluation, generation, best-checkpoint writing,
Trainer checkpoint writing), then `resume_from_checkpoint`: the best checkpoint loads, the manifest is
valid, and the resumed run ends with our callbacks' state exactly as an uninterrupted run's.

The run is tests/dist_scripts/kill_resume_run.py (one process): a tiny GPT-2, 80 steps, evaluation and a
Trainer checkpoint every 10 steps, OverfitGuard + BestCheckpointSaver(eval_perplexity) + GenerationScorer.
It prints a `PHASE <name> <step>` line as it enters each phase; each attempt waits for a chosen marker,
sleeps a short random (seeded) time and kills the process group.

Resuming on CPU is bit-exact here (the Trainer restores the RNG states, the data order and the optimizer):
the resumed run's evaluations, generations and saves are compared with the reference run's for equality.
Resumes alternate between both values of the Trainer's `restore_callback_states_from_checkpoint`, and
the callback objects the script holds must be the ones that ran.
`FT_CALLBACKS_KILL_SEED` (default 0) and `FT_CALLBACKS_KILL_RESUME_REPEATS` (default 6) vary the kills.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from transformers import GPT2LMHeadModel

from ft_callbacks.best_checkpoint import MANIFEST, TMP_PREFIX, best_checkpoint, last_complete_checkpoint
from ft_callbacks.records import read_json

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tests" / "dist_scripts" / "kill_resume_run.py"
REPEATS = int(os.environ.get("FT_CALLBACKS_KILL_RESUME_REPEATS", "6"))
RUN_TIMEOUT = 240.0
MAX_STEPS, EVERY = 80, 10
EVAL_STEPS = list(range(EVERY, MAX_STEPS + 1, EVERY))
# How long after its marker a kill may come, per phase (seconds). Measured on an idle 2-core CPU: a training
# step ~25 ms, an evaluation ~22 ms, generation ~9 ms, a best save ~8 ms (48 ms the first time), the Trainer's
# checkpoint ~8 ms; on a busy machine every phase is longer, so a kill lands inside its phase more often.
JITTER = {"train": 0.05, "eval": 0.02, "generate": 0.008, "best_save": 0.008, "ckpt": 0.008}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    return env


def _start(out: Path, tok_dir: Path, *extra: str) -> tuple[subprocess.Popen, queue.Queue, list[str]]:
    """The script in its own process group; a thread moves its output lines into a queue and a list."""
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(out), str(tok_dir), *extra], cwd=REPO, env=_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    lines: queue.Queue = queue.Queue()
    seen: list[str] = []

    def pump() -> None:
        for line in proc.stdout:
            seen.append(line)
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return proc, lines, seen


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _run_to_end(out: Path, tok_dir: Path, *extra: str) -> tuple[dict[str, Any], float]:
    start = time.monotonic()
    proc, _, seen = _start(out, tok_dir, *extra)
    try:
        proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        _kill(proc)
        pytest.fail(f"the run did not finish within {RUN_TIMEOUT:.0f}s (hang?). Output tail:\n{''.join(seen)[-6000:]}")
    proc.stdout.close()
    time.sleep(0.05)  # let the reader thread take the last lines
    assert proc.returncode == 0, "".join(seen)[-6000:]
    return json.loads((out / "result.json").read_text()), time.monotonic() - start


def _kill_at(out: Path, tok_dir: Path, target: str, jitter: float) -> str:
    """Start a fresh run, wait for the marker line `target`, sleep `jitter` seconds, SIGKILL the group.
    Returns the last marker the process printed before it died."""
    proc, lines, seen = _start(out, tok_dir)
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {target!r} within {RUN_TIMEOUT:.0f}s. Output tail:\n{''.join(seen)[-6000:]}")
            assert line is not None, f"the run ended before {target!r}:\n{''.join(seen)[-6000:]}"
            if line.strip() == target:
                break
        time.sleep(jitter)
    finally:
        _kill(proc)
    proc.stdout.close()
    time.sleep(0.05)
    markers = [line.strip() for line in seen if line.startswith("PHASE ")]
    return markers[-1]


def _check_after_kill(out: Path, reference: dict[str, Any]) -> dict[str, Any]:
    """What a kill may leave: a valid manifest whose checkpoints all load, and records that parse."""
    evaluated = _eval_values(reference, "eval_perplexity")
    notes: dict[str, Any] = {"manifest": (out / MANIFEST).exists()}
    if notes["manifest"]:
        manifest = json.loads((out / MANIFEST).read_text())  # valid JSON, never torn
        names = [e["path"] for e in manifest["checkpoints"]]
        assert not [n for n in names if n.startswith(TMP_PREFIX)]
        assert manifest["best"] in names and best_checkpoint(out) == out / manifest["best"]
        for entry in manifest["checkpoints"]:
            model = GPT2LMHeadModel.from_pretrained(out / entry["path"])
            assert model.config.n_embd == 64
            # What was saved is what the uninterrupted run evaluated at that step.
            assert entry["value"] == evaluated[entry["step"]]
        best_step = manifest["best_step"]
        assert manifest["best_value"] == min(v for s, v in evaluated.items() if s <= best_step)
        notes["best_step"] = best_step
        notes["inside_best_save"] = bool(list(out.glob(f"{TMP_PREFIX}*")) or manifest["pending"] or manifest["pruning"])
    for record in ("overfit_guard.json", "generation_scorer.json"):
        path = out / "ft_callbacks" / record
        assert not path.exists() or read_json(path) is not None, f"{record} is torn"
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    notes["partial_trainer_checkpoint"] = [p.name for p in checkpoints if not (p / "trainer_state.json").exists()]
    notes["checkpoints"] = [p.name for p in checkpoints]
    # What to resume from: the newest complete one, never a folder the kill cut short.
    complete = [p for p in checkpoints if p.name not in notes["partial_trainer_checkpoint"]]
    assert last_complete_checkpoint(out) == (complete[-1] if complete else None)
    return notes


def _eval_values(result: dict[str, Any], key: str) -> dict[int, float]:
    return {e["step"]: e[key] for e in result["log_history"] if key in e}


def _assert_manifest_matches_disk(out: Path) -> dict[str, Any]:
    manifest = json.loads((out / MANIFEST).read_text())
    assert not manifest["pending"] and not manifest["pruning"]
    on_disk = sorted(p.name for p in out.iterdir() if p.is_dir() and p.name.startswith(("best-", TMP_PREFIX)))
    assert on_disk == sorted(e["path"] for e in manifest["checkpoints"])
    return manifest


def _assert_resumed_like_reference(out: Path, resumed: dict[str, Any], reference: dict[str, Any]) -> None:
    assert resumed["global_step"] == reference["global_step"] == MAX_STEPS
    # Bit-exact on CPU: every evaluation, training loss and generation of the resumed run is the reference's.
    for key in ("eval_loss", "eval_perplexity", "loss", "eval_text_crc"):
        assert _eval_values(resumed, key) == _eval_values(reference, key), key
    # BestCheckpointSaver: the same best (value, step, folder), and the manifest says so.
    saver, ref_saver = resumed["saver"], reference["saver"]
    assert (saver["best_value"], saver["best_step"]) == (ref_saver["best_value"], ref_saver["best_step"])
    assert [(e["step"], e["value"], e["path"]) for e in saver["entries"]] == [
        (e["step"], e["value"], e["path"]) for e in ref_saver["entries"]
    ]
    manifest = _assert_manifest_matches_disk(out)
    assert manifest["best_value"] == ref_saver["best_value"] and manifest["best_step"] == ref_saver["best_step"]
    GPT2LMHeadModel.from_pretrained(best_checkpoint(out))
    # OverfitGuard: one count per evaluation of the whole run, the plateau rule's best and wait as if never
    # interrupted (they rose and reset along the way), no stop.
    guard, ref_guard = resumed["guard"], reference["guard"]
    assert guard["evaluations"] == ref_guard["evaluations"] == len(EVAL_STEPS)
    assert guard["plateau"] == ref_guard["plateau"]
    assert guard["stop_step"] is None
    assert (guard["best_step"], guard["best_token_loss"]) == (ref_guard["best_step"], ref_guard["best_token_loss"])
    assert guard["history_steps"] == EVAL_STEPS
    # GenerationScorer: the step-0 baseline of the first start (no new baseline from trained weights on
    # resume; text_crc would tell), and one history round per evaluation, each once.
    scorer, ref_scorer = resumed["scorer"], reference["scorer"]
    assert scorer["baseline_scores"] == ref_scorer["baseline_scores"]
    assert scorer["history_steps"] == [0, *EVAL_STEPS]
    assert scorer["history"] == ref_scorer["history"]
    assert scorer["evals_seen"] == ref_scorer["evals_seen"] == len(EVAL_STEPS)


def _plan(rng: random.Random, reference: dict[str, Any]) -> list[tuple[str, int]]:
    """(phase, step) per attempt: the phases in turn from a random start, at random steps of the run."""
    phases = list(JITTER)
    first = rng.randrange(len(phases))
    plan = []
    for attempt in range(REPEATS):
        name = phases[(first + attempt) % len(phases)]
        if name == "train":
            step = rng.randrange(0, MAX_STEPS - 2)
            step -= step % EVERY == EVERY - 1  # not the step just before an evaluation
        elif name == "generate":
            step = rng.choice([0, *EVAL_STEPS])  # 0: the baseline, before any checkpoint exists
        elif name == "best_save":
            step = rng.choice(reference["saver"]["saves"])
        else:
            step = rng.choice(EVAL_STEPS)
        plan.append((name, step))
    return plan


@pytest.mark.slow
def test_sigkill_in_every_phase_then_resume_keeps_callback_state(tokenizer, tmp_path):
    tok_dir = tmp_path / "tokenizer"
    tokenizer.save_pretrained(str(tok_dir))
    reference, ref_seconds = _run_to_end(tmp_path / "reference", tok_dir)
    # Runs are deterministic: every killed run's saved values are checked against this run's (fresh runs
    # agree), and every resumed run's evaluations too (resuming is bit-exact).
    assert reference["saver"]["saves"], "the reference run saved no best checkpoint"
    assert reference["guard"]["plateau"]["wait"] > 0, "pick a run whose plateau count is non-zero at the end"
    rng = random.Random(int(os.environ.get("FT_CALLBACKS_KILL_SEED", "0")))
    summary = [f"reference run: {ref_seconds:.1f}s"]
    for attempt, (name, step) in enumerate(_plan(rng, reference)):
        out = tmp_path / f"run{attempt}"
        jitter = rng.uniform(0.0, JITTER[name])
        landed = _kill_at(out, tok_dir, f"PHASE {name} {step}", jitter)
        notes = _check_after_kill(out, reference)
        # Both values of the Trainer's restore_callback_states_from_checkpoint, in turn.
        resumed, seconds = _run_to_end(out, tok_dir, "resume" if attempt % 2 == 0 else "resume-restore")
        assert resumed["live_handles"]
        # The newest complete Trainer checkpoint before the last step (see kill_resume_run.py), or a fresh start.
        complete = [c for c in notes["checkpoints"] if c not in notes["partial_trainer_checkpoint"]]
        complete = [c for c in complete if int(c.split("-")[1]) < MAX_STEPS]
        assert resumed["resumed_from"] == (complete[-1] if complete else None)
        _assert_resumed_like_reference(out, resumed, reference)
        summary.append(
            f"kill {attempt}: aimed at {name} {step} +{jitter * 1000:.0f}ms, last marker {landed!r}, "
            f"inside best save: {notes.get('inside_best_save', False)}, partial Trainer checkpoint: "
            f"{notes['partial_trainer_checkpoint'] or '-'}; resumed from {resumed['resumed_from']} in {seconds:.1f}s"
        )
    print("\n".join(summary))
