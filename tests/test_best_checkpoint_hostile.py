"""BestCheckpointSaver against hostile input (issue #20): hand-edited manifests, two writers in one
directory, stale and live lock files, a full disk. Real tiny-GPT-2 Trainer runs; the recovery path is
reached by resuming a real run from its Trainer checkpoint. What must never happen: deleting or loading
anything the saver did not create."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import ft_callbacks.best_checkpoint as bc
from ft_callbacks import ConfigurationError, OverfitGuard, toy
from ft_callbacks.best_checkpoint import (
    INFO_FILE,
    LOCK_FILE,
    MANIFEST,
    TMP_PREFIX,
    BestCheckpointSaver,
    best_checkpoint,
    read_manifest,
)

from .helpers import REPO, lm_trainer

SMALL = {"eval_size": 16, "train_size": 40}  # every evaluation of a 20-step run improves (see test_faults.py)
RESUME = {"max_steps": 20, "eval_steps": 5, "save_strategy": "steps", "save_steps": 10, **SMALL}
USER_FILE = "my_notes.txt"
NAME_LIKE_OURS = "best-step000003-eval_loss=9.0000"


@pytest.fixture(scope="module")
def first_run(tokenizer, corpus, tmp_path_factory):
    """10 steps of a real run: two best checkpoints, the manifest, and the Trainer's checkpoint-10."""
    out = tmp_path_factory.mktemp("first") / "out"
    saver = BestCheckpointSaver(keep=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        lm_trainer(tokenizer, corpus, out, [saver], **{**RESUME, "max_steps": 10}).train()
    assert [s["step"] for s in saver.saves] == [5, 10]
    return out


@pytest.fixture
def out(first_run, tmp_path):
    """A copy of the first run's output dir, with a file of the user's in the Trainer's checkpoint."""
    copy = tmp_path / "out"
    shutil.copytree(first_run, copy, symlinks=True)
    (copy / "checkpoint-10" / USER_FILE).write_text("the user's own file")
    return copy


@pytest.fixture
def outside(tmp_path):
    """A folder outside the output dir that looks like one of our checkpoints (it even has the marker)."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / USER_FILE).write_text("not yours")
    (folder / INFO_FILE).write_text(json.dumps({"step": 3, "metric": "eval_loss", "value": 9.0}))
    return folder


def _edit_manifest(out: Path, **changes) -> dict:
    manifest = json.loads((out / MANIFEST).read_text())
    manifest.update(changes)
    (out / MANIFEST).write_text(json.dumps(manifest))
    return manifest


def _hostile_path(case: str, out: Path, outside: Path) -> str:
    if case == "absolute":
        return str(outside)
    if case == "dotdot":
        return f"../{outside.name}"
    if case == "symlink":  # a name exactly like ours, pointing out of the directory
        (out / NAME_LIKE_OURS).symlink_to(outside, target_is_directory=True)
        return NAME_LIKE_OURS
    return {"empty": "", "dot": ".", "trainer_checkpoint": "checkpoint-10"}[case]


def _assert_all_survive(out: Path, outside: Path) -> None:
    assert (outside / USER_FILE).read_text() == "not yours" and (outside / INFO_FILE).exists()
    assert (out / "checkpoint-10" / USER_FILE).read_text() == "the user's own file"
    assert (out / "checkpoint-10" / "trainer_state.json").exists() and (out / "checkpoint-20").is_dir()


def _assert_manifest_is_ours(out: Path) -> dict:
    manifest = json.loads((out / MANIFEST).read_text())
    names = [e["path"] for e in manifest["checkpoints"]]
    folders = sorted(p.name for p in out.iterdir() if p.name.startswith("best-") and not p.is_symlink())
    assert sorted(names) == folders and manifest["best"] in names
    assert not manifest["pruning"] and not manifest["pending"]
    assert all((out / name / INFO_FILE).is_file() for name in names)
    assert best_checkpoint(out) == out / manifest["best"]
    return manifest


# -- the manifest names something that is not ours --------------------------------------------------
HOSTILE = ["absolute", "dotdot", "symlink", "empty", "dot", "trainer_checkpoint"]


@pytest.mark.parametrize("case", HOSTILE)
def test_pruning_never_deletes_what_a_hand_edited_manifest_names(tokenizer, corpus, out, outside, case):
    """A listed entry, worse than the kept ones, is what the next save prunes: before the fix "" and "."
    deleted the whole output dir (the Trainer's checkpoints too), an absolute or ../ path a folder outside."""
    hostile = _hostile_path(case, out, outside)
    manifest = json.loads((out / MANIFEST).read_text())
    entry = {**manifest["checkpoints"][-1], "path": hostile, "step": 3, "value": 99.0, "best": False}
    _edit_manifest(out, checkpoints=[*manifest["checkpoints"], entry], pending=[hostile])

    saver = BestCheckpointSaver(keep=2)
    trainer = lm_trainer(tokenizer, corpus, out, [saver], **RESUME)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-10"))
    assert trainer.state.global_step == 20 and saver.saves  # it saved (and pruned) after the resume
    _assert_all_survive(out, outside)
    if case == "symlink":
        assert (out / NAME_LIKE_OURS).is_symlink()  # left alone, not followed, not removed
    reports = [str(w.message) for w in caught if "names folders this saver did not create" in str(w.message)]
    assert len(reports) == 1 and repr(hostile) in reports[0]  # reported once, by name
    manifest = _assert_manifest_is_ours(out)
    assert hostile not in [e["path"] for e in manifest["checkpoints"]]


@pytest.mark.parametrize("case", ["absolute", "dotdot", "symlink", "dot", "trainer_checkpoint", "no_marker"])
def test_best_checkpoint_returns_only_a_folder_the_saver_created(out, outside, case):
    assert best_checkpoint(out) == out / read_manifest(out)["best"]
    if case == "no_marker":  # a folder of the user's that happens to be named like ours
        hostile = NAME_LIKE_OURS
        (out / hostile).mkdir()
        (out / hostile / USER_FILE).write_text("mine")
    else:
        hostile = _hostile_path(case, out, outside)
    _edit_manifest(out, best=hostile)
    with pytest.warns(UserWarning, match="it is not returned"):
        assert best_checkpoint(out) is None


def test_load_best_at_end_never_loads_a_listed_folder_from_outside(tokenizer, corpus, out, outside):
    """The manifest's best is a symlink to another model (with a marker): it must neither rank nor load."""
    foreign = toy.tiny_gpt2(tokenizer)
    foreign.save_pretrained(outside)
    (out / NAME_LIKE_OURS).symlink_to(outside, target_is_directory=True)
    manifest = json.loads((out / MANIFEST).read_text())
    entry = {**manifest["checkpoints"][0], "path": NAME_LIKE_OURS, "step": 3, "value": 0.001}
    _edit_manifest(out, checkpoints=[entry, *manifest["checkpoints"]], best=NAME_LIKE_OURS, best_value=0.001)

    saver = BestCheckpointSaver(keep=2, load_best_at_end=True)
    trainer = lm_trainer(tokenizer, corpus, out, [saver], **RESUME)
    with pytest.warns(UserWarning, match="a symbolic link"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-10"))
    assert saver.saves  # 0.001 was not taken for the best to beat
    manifest = _assert_manifest_is_ours(out)
    assert saver.best_path == out / manifest["best"]
    best = load_file(str(out / manifest["best"] / "model.safetensors"))
    live = trainer.model.state_dict()
    assert all(torch.equal(live[k], v) for k, v in best.items())
    assert not torch.equal(live["transformer.wte.weight"], foreign.state_dict()["transformer.wte.weight"])
    _assert_all_survive(out, outside)


@pytest.mark.parametrize(
    "change",
    [{"pruning": 5}, {"checkpoints": {"path": "x"}}, {"best_value": "low"}, {"pending": [3]}],
    ids=["pruning_int", "checkpoints_object", "best_value_string", "pending_numbers"],
)
def test_a_manifest_field_of_the_wrong_type_is_set_aside_and_the_run_resumes(tokenizer, corpus, out, change):
    """Before the fix: a raw TypeError on resume (or later, comparing a number with "low")."""
    edited = _edit_manifest(out, **change)
    saver = BestCheckpointSaver(keep=2)
    trainer = lm_trainer(tokenizer, corpus, out, [saver], **RESUME)
    with pytest.warns(UserWarning, match=rf"{MANIFEST} in .* is malformed \(\"{next(iter(change))}\""):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-10"))
    assert trainer.state.global_step == 20
    aside = list(out.glob("best_checkpoints.malformed-*.json"))
    assert len(aside) == 1 and json.loads(aside[0].read_text()) == edited  # kept for the user, not deleted
    # The ranking came from the Trainer checkpoint instead: the best of steps 5-20, the top 2 kept.
    manifest = _assert_manifest_is_ours(out)
    evals = {e["step"]: e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e}
    assert sorted(evals) == [5, 10, 15, 20]
    assert manifest["best_value"] == min(evals.values())
    assert [e["step"] for e in manifest["checkpoints"]] == sorted(evals, key=evals.get)[:2]


# -- two writers, one directory ---------------------------------------------------------------------
@pytest.mark.parametrize("second_monitor", ["eval_loss", "eval_perplexity"])
def test_two_savers_in_one_trainer_and_one_directory_are_refused_before_the_first_step(
    tokenizer, corpus, tmp_path, second_monitor
):
    out = tmp_path / "out"
    savers = [BestCheckpointSaver("eval_loss"), BestCheckpointSaver(second_monitor)]
    trainer = lm_trainer(tokenizer, corpus, out, [OverfitGuard(), *savers], max_steps=10, eval_steps=5, **SMALL)
    with pytest.raises(ConfigurationError, match=r"two BestCheckpointSavers .* same directory.*output_dir="):
        trainer.train()
    assert trainer.state.global_step == 0
    assert not list(out.glob("best*"))  # nothing written: no manifest, no lock, no checkpoint
    if second_monitor == "eval_perplexity":  # the fix the message names works
        savers = [BestCheckpointSaver("eval_loss"), BestCheckpointSaver(second_monitor, output_dir=str(out / "ppl"))]
        lm_trainer(tokenizer, corpus, out, [OverfitGuard(), *savers], max_steps=10, eval_steps=5, **SMALL).train()
        assert read_manifest(out)["monitor"] == "eval_loss"
        assert read_manifest(out / "ppl")["monitor"] == "eval_perplexity"


WORKER = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, sys.argv[3])
    import torch
    torch.set_num_threads(1)
    from transformers import PreTrainedTokenizerFast
    from tests.helpers import lm_trainer
    from ft_callbacks import toy
    from ft_callbacks.best_checkpoint import BestCheckpointSaver

    tokenizer = PreTrainedTokenizerFast.from_pretrained(sys.argv[1])
    trainer = lm_trainer(tokenizer, toy.stdlib_corpus(), sys.argv[2], [BestCheckpointSaver(keep=2)],
                         train_size=200, eval_size=4, max_steps=100000, eval_steps=2, logging_steps=1000)
    trainer.train()
    """
)


def test_a_second_process_is_refused_while_the_first_trains_and_takes_over_once_it_was_killed(
    tokenizer, corpus, tmp_path, capsys
):
    """Before the fix, run B renamed run A's live manifest "from an earlier run" and both wrote on."""
    tok_dir = tmp_path / "tokenizer"
    tokenizer.save_pretrained(str(tok_dir))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "out"
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    run_a = subprocess.Popen([sys.executable, str(script), str(tok_dir), str(out), str(REPO)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (read_manifest(out) or {}).get("best"):  # run A has saved a best
            assert run_a.poll() is None, run_a.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "run A saved nothing within 120 s"
            time.sleep(0.05)
        lock = json.loads((out / LOCK_FILE).read_text())
        assert lock["pid"] == run_a.pid and lock["host"] == socket.gethostname()

        run_b = lm_trainer(tokenizer, corpus, out, [BestCheckpointSaver()], max_steps=5, eval_steps=5, **SMALL)
        with pytest.raises(ConfigurationError, match=rf"another run is writing into .*process {run_a.pid} on host"):
            run_b.train()
        assert run_b.state.global_step == 0
        assert not list(out.glob("best_checkpoints.*.json"))  # run A's manifest was not renamed away
        assert best_checkpoint(out) is not None  # and its best is there
    finally:
        run_a.send_signal(signal.SIGKILL)
        run_a.wait()
        run_a.stderr.close()
    kept_by_a = [e["path"] for e in read_manifest(out)["checkpoints"]]

    # Run A was killed: its lock is stale, the next run takes it over (and A's checkpoints stay on disk).
    capsys.readouterr()
    run_c = lm_trainer(tokenizer, corpus, out, [BestCheckpointSaver()], max_steps=5, eval_steps=5, **SMALL)
    with pytest.warns(UserWarning, match="from an earlier run"):
        run_c.train()
    assert run_c.state.global_step == 5
    printed = capsys.readouterr().out
    assert f"took over the stale lock {out / LOCK_FILE} of process {run_a.pid}" in printed
    assert all((out / name / INFO_FILE).is_file() for name in kept_by_a)
    assert not (out / LOCK_FILE).exists()  # released at train end


def _lock_of(case: str, tmp_path: Path) -> dict:
    me = socket.gethostname()
    if case == "dead_process":
        finished = subprocess.Popen([sys.executable, "-c", "pass"])
        finished.wait()
        return {"pid": finished.pid, "host": me}
    if case == "reused_pid":  # the parent process is alive, but it is not the one that wrote the lock
        return {"pid": os.getppid(), "host": me, "start": 1}
    if case == "this_process":  # left by an earlier train() of this process that raised
        return {"pid": os.getpid(), "host": me}
    if case == "live_process":
        return {"pid": os.getppid(), "host": me}
    return {"pid": 4242, "host": "another-host"}  # "other_host_*"


@pytest.mark.parametrize("case", ["live_process", "other_host_recent"])
def test_a_live_lock_refuses_the_run_before_the_first_step(tokenizer, corpus, tmp_path, case):
    out = tmp_path / "out"
    out.mkdir()
    lock = _lock_of(case, tmp_path)
    (out / LOCK_FILE).write_text(json.dumps({**lock, "since": "2026-01-01T00:00:00+00:00"}))
    trainer = lm_trainer(tokenizer, corpus, out, [BestCheckpointSaver()], max_steps=5, eval_steps=5, **SMALL)
    holder = re.escape(f"process {lock['pid']} on host {lock['host']} (since 2026-01-01")
    with pytest.raises(ConfigurationError, match=rf"{holder}.*output_dir="):
        trainer.train()
    assert trainer.state.global_step == 0
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == lock["pid"]  # not touched


@pytest.mark.parametrize("case", ["dead_process", "reused_pid", "this_process", "other_host_silent", "garbage"])
def test_a_stale_lock_is_taken_over_with_a_notice_and_released_at_the_end(tokenizer, corpus, tmp_path, capsys, case):
    out = tmp_path / "out"
    out.mkdir()
    lock_path = out / LOCK_FILE
    if case == "garbage":
        lock_path.write_text("{'pid': ")
    else:
        lock_path.write_text(json.dumps(_lock_of(case, tmp_path)))
    if case in ("other_host_silent", "garbage"):  # no heartbeat for 20 minutes
        old = time.time() - 20 * 60
        os.utime(lock_path, (old, old))
    saver = BestCheckpointSaver()
    trainer = lm_trainer(tokenizer, corpus, out, [saver], max_steps=5, eval_steps=5, **SMALL)
    trainer.train()
    assert trainer.state.global_step == 5 and saver.saves
    assert f"took over the stale lock {lock_path}" in capsys.readouterr().out
    assert not lock_path.exists()


# -- a full disk --------------------------------------------------------------------------------------
def _enospc(*_):
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fd_under(fd: int, folder: Path) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith(f"{os.path.realpath(folder)}{os.sep}")
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="finds a descriptor's file through /proc")
@pytest.mark.parametrize("fails_at", ["write", "fsync"])
def test_a_full_disk_is_refused_before_the_first_step(tokenizer, corpus, tmp_path, monkeypatch, fails_at):
    """The kernel reports a full disk at write() (ext4) or only at fsync() (delayed allocation, NFS):
    the start-up probe must see either, not pass with two bytes left in the page cache."""
    out = tmp_path / "out"
    out.mkdir()
    real = getattr(os, fails_at)

    def full(fd, *args):
        if _fd_under(fd, out):
            raise _enospc()
        return real(fd, *args)

    monkeypatch.setattr(os, fails_at, full)
    trainer = lm_trainer(tokenizer, corpus, out, [BestCheckpointSaver()], max_steps=5, eval_steps=5, **SMALL)
    with pytest.raises(ConfigurationError, match=r"No space left on device.*disk \(or your quota\) is full"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert not list(out.iterdir())  # the probe did not stay behind


def test_when_every_save_fails_the_end_says_why_not_no_finite_metric(tokenizer, corpus, tmp_path, monkeypatch, capsys):
    """Enough space for the probe, never for a checkpoint (as in test_faults.py, the weights write hits
    ENOSPC half way). Before the fix the last line blamed 'no finite eval_loss'."""
    import transformers.modeling_utils as mu

    out = tmp_path / "out"
    real = mu.safe_save_file

    def save_file(tensors, filename, *args, **kwargs):
        if os.path.basename(os.path.dirname(str(filename))).startswith(TMP_PREFIX):
            with open(filename, "wb") as f:
                f.write(b"\0" * 4096)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(mu, "safe_save_file", save_file)
    saver = BestCheckpointSaver()
    lm_trainer(tokenizer, corpus, out, [saver], max_steps=10, eval_steps=5, **SMALL).train()
    assert [e["step"] for e in saver.save_errors] == [5, 10] and not saver.saves
    printed = capsys.readouterr().out
    assert "nothing saved: all 2 saves of an improved eval_loss failed" in printed
    assert "No space left on device" in printed.split("nothing saved")[1]
    assert "no finite" not in printed
    assert bc.read_manifest(out) is None and not (out / LOCK_FILE).exists()
