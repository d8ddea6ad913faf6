"""CheckpointStore on a plain directory, without a Trainer: a `save_fn` that writes one file stands
for `save_pretrained`. The Trainer-level behaviour is tested in test_best_checkpoint*.py and
test_faults.py; these pin the store's own contract (save, prune, recover, only what it created)."""

from __future__ import annotations

import errno
import json
import os

import pytest

from ft_callbacks.checkpoints import (
    INFO_FILE,
    LOCK_FILE,
    MANIFEST,
    TMP_PREFIX,
    CheckpointRanking,
    CheckpointStore,
    best_checkpoint,
    checkpoint_name,
    last_complete_checkpoint,
    read_manifest,
)


def _weights(tmp: str) -> None:
    os.makedirs(tmp, exist_ok=True)
    with open(os.path.join(tmp, "weights.bin"), "wb") as f:
        f.write(b"\1" * 100)


def _store(tmp_path, keep: int = 1) -> tuple[CheckpointStore, CheckpointRanking]:
    store = CheckpointStore(tmp_path / "out", "eval_loss", "min")
    assert store.check_writable() is None
    return store, CheckpointRanking("min", keep=keep)


def _on_disk(store: CheckpointStore) -> set[str]:
    return {n for n in os.listdir(store.directory) if n.startswith("best-step")}


def test_save_writes_marker_and_manifest_and_prunes_to_keep(tmp_path):
    store, ranking = _store(tmp_path, keep=2)
    for step, value in [(1, 3.0), (2, 2.0), (3, 1.0)]:
        record = store.save(ranking, step, value, _weights)
    assert record["path"] == checkpoint_name(3, "eval_loss", 1.0) and record["bytes"] > 100
    assert record["pruned"] == [checkpoint_name(1, "eval_loss", 3.0)]
    manifest = read_manifest(store.directory)
    assert [e["step"] for e in manifest["checkpoints"]] == [3, 2] and manifest["best_step"] == 3
    assert manifest["pruning"] == [] and manifest["pending"] == []
    assert _on_disk(store) == {e["path"] for e in manifest["checkpoints"]}
    marker = json.loads((tmp_path / "out" / record["path"] / INFO_FILE).read_text())
    assert marker["step"] == 3 and marker["metric"] == "eval_loss" and marker["mode"] == "min"
    assert best_checkpoint(store.directory) == tmp_path / "out" / record["path"]
    assert not [n for n in os.listdir(store.directory) if n.startswith(TMP_PREFIX)]


def test_a_name_taken_by_an_earlier_run_is_never_overwritten(tmp_path):
    store, ranking = _store(tmp_path)
    taken = tmp_path / "out" / checkpoint_name(5, "eval_loss", 2.0)
    taken.mkdir()
    (taken / "theirs.txt").write_text("keep me")
    record = store.save(ranking, 5, 2.0, _weights)
    assert record["path"] == f"{taken.name}-2"
    assert (taken / "theirs.txt").read_text() == "keep me"


def test_a_failing_save_fn_leaves_the_previous_best_and_no_partial_folder(tmp_path):
    store, ranking = _store(tmp_path)
    store.save(ranking, 1, 2.0, _weights)
    before = read_manifest(store.directory)

    def full_disk(tmp: str) -> None:
        _weights(tmp)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)

    with pytest.raises(OSError, match="No space left"):
        store.save(ranking, 2, 1.0, full_disk)
    assert read_manifest(store.directory) == before and ranking.best_step == 1
    assert not [n for n in os.listdir(store.directory) if n.startswith(TMP_PREFIX)]


def test_a_failing_manifest_write_after_the_rename_undoes_the_save(tmp_path, monkeypatch):
    store, ranking = _store(tmp_path)
    store.save(ranking, 1, 2.0, _weights)
    real = store.write_manifest

    def write(ranking, pruning=None, pending=None):
        if pruning is not None:  # the write that would list the new checkpoint
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(ranking, pruning=pruning, pending=pending)

    monkeypatch.setattr(store, "write_manifest", write)
    with pytest.raises(OSError):
        store.save(ranking, 2, 1.0, _weights)
    assert ranking.best_step == 1 and [e.step for e in ranking.entries] == [1]
    assert _on_disk(store) == {checkpoint_name(1, "eval_loss", 2.0)}
    manifest = read_manifest(store.directory)
    assert manifest["best_step"] == 1 and manifest["pending"] == [checkpoint_name(2, "eval_loss", 1.0)]
    monkeypatch.undo()
    store.recover(ranking, fresh=False)  # the next start finds nothing left to do but clear "pending"
    assert read_manifest(store.directory)["pending"] == []


def test_recover_finishes_what_a_kill_left_and_touches_nothing_it_did_not_create(tmp_path):
    store, ranking = _store(tmp_path, keep=2)
    store.save(ranking, 1, 3.0, _weights)
    kept = store.save(ranking, 2, 2.0, _weights)["path"]
    out = tmp_path / "out"
    (out / f"{TMP_PREFIX}7-123").mkdir()  # a save a kill cut short
    (out / f"{TMP_PREFIX}probe-123").write_bytes(b"x")  # the probe of a run killed at its start
    half_deleted = out / checkpoint_name(1, "eval_loss", 3.0)
    users = out / "best-step000009-eval_loss=9.0000"  # a name like ours, without the marker
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    manifest = read_manifest(out)
    manifest["checkpoints"] = [e for e in manifest["checkpoints"] if e["path"] == kept]
    manifest["pruning"] = [half_deleted.name, users.name, "../elsewhere"]
    (out / MANIFEST).write_text(json.dumps(manifest))

    resumed = CheckpointRanking("min", keep=2)
    resumed.load_state_dict(store.state_from_manifest(manifest))
    with pytest.warns(UserWarning, match="did not create"):
        store.recover(resumed, fresh=False)
    assert sorted(os.listdir(out)) == sorted([kept, users.name, MANIFEST])
    assert (users / "notes.txt").read_text() == "mine"
    assert read_manifest(out)["pruning"] == [] and [e.path for e in resumed.entries] == [kept]


def test_recover_drops_listed_checkpoints_that_are_gone(tmp_path):
    store, ranking = _store(tmp_path, keep=2)
    gone = store.save(ranking, 1, 3.0, _weights)["path"]
    store.save(ranking, 2, 2.0, _weights)
    for name in os.listdir(tmp_path / "out" / gone):
        os.remove(tmp_path / "out" / gone / name)
    os.rmdir(tmp_path / "out" / gone)
    with pytest.warns(UserWarning, match="no longer exist"):
        store.recover(ranking, fresh=False)
    assert [e["step"] for e in read_manifest(store.directory)["checkpoints"]] == [2]


def test_a_fresh_start_archives_the_earlier_manifest_and_sets_a_malformed_one_aside(tmp_path):
    store, ranking = _store(tmp_path)
    kept = store.save(ranking, 1, 2.0, _weights)["path"]
    with pytest.warns(UserWarning, match="from an earlier run"):
        store.recover(CheckpointRanking("min"), fresh=True)
    out = tmp_path / "out"
    assert read_manifest(out) is None and (out / kept).is_dir()
    assert len(list(out.glob("best_checkpoints.*.json"))) == 1
    (out / MANIFEST).write_text('{"pruning": 5}')
    with pytest.warns(UserWarning, match=r'is malformed \("pruning" is a number, not a list\)'):
        store.recover(CheckpointRanking("min"), fresh=True)
    assert not (out / MANIFEST).exists() and len(list(out.glob("best_checkpoints.malformed-*.json"))) == 1
    assert (out / kept).is_dir()


def test_state_from_a_manifest_of_another_metric_starts_a_new_ranking(tmp_path):
    store, ranking = _store(tmp_path)
    store.save(ranking, 1, 2.0, _weights)
    other = CheckpointStore(store.directory, "eval_accuracy", "max")
    with pytest.warns(UserWarning, match="starting a new ranking"):
        assert other.state_from_manifest(read_manifest(store.directory)) is None


def test_lock_and_write_probe(tmp_path):
    store = CheckpointStore(tmp_path / "new" / "dir", "eval_loss")
    assert store.check_writable() is None and os.listdir(store.directory) == []  # created, probe gone
    assert store.acquire_lock() is None and (tmp_path / "new" / "dir" / LOCK_FILE).exists()
    store.release_lock()
    assert not (tmp_path / "new" / "dir" / LOCK_FILE).exists()
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    assert "cannot write to the output directory" in CheckpointStore(blocked, "eval_loss").check_writable()


def test_last_complete_checkpoint_skips_a_checkpoint_cut_short(tmp_path):
    for step, complete in [(10, True), (20, False)]:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}) if complete else '{"glob')
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-10"


def test_resume_takes_the_manifest_first_then_the_kept_state_and_refuses_a_malformed_one(tmp_path):
    store, ranking = _store(tmp_path)
    store.save(ranking, 3, 2.0, _weights)
    kept = {"best_value": 9.0, "best_step": 1, "entries": [{"step": 1, "value": 9.0, "path": "x"}]}
    from_manifest = CheckpointRanking("min")
    store.resume(from_manifest, lambda: pytest.fail("the manifest is usable: the kept state is not read"))
    assert from_manifest.state_dict() == ranking.state_dict()
    os.remove(tmp_path / "out" / MANIFEST)
    from_kept = CheckpointRanking("min")
    store.resume(from_kept, lambda: kept)
    assert from_kept.best_step == 1 and [e.path for e in from_kept.entries] == ["x"]
    malformed = CheckpointRanking("min")
    with pytest.warns(UserWarning, match="is malformed"):
        store.resume(malformed, lambda: {"entries": [{"step": 1}]})
    assert malformed.entries == [] and malformed.best_value is None
