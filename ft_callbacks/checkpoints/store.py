"""CheckpointStore: the directory of best checkpoints, written so that a kill never breaks it.

Layout of the directory (BestCheckpointSaver's: the Trainer's `output_dir` unless `output_dir=` is given):

    best_checkpoints.json                        the manifest: the truth scripts and resumed runs read
    best_checkpoints.lock                        the process writing here (PID, host), while it trains
    best-step000040-eval_loss=3.1416/            one kept checkpoint (weights, config, tokenizer, info)
    .tmp-best-<step>-<pid>/                      a save in progress (removed at the next start)

A checkpoint is written into a `.tmp-best-*` folder, every file fsync'ed, then renamed to its final
name in one `os.replace` (the manifest names it under `"pending"` first, so a folder renamed just
before a kill is known to be ours); only then is the manifest rewritten (tmp file + fsync +
`os.replace`), and only after that are pruned checkpoints deleted (they are listed under `"pruning"`
until gone). A kill at any moment leaves the previous manifest and every checkpoint it lists intact.

The manifest is a file anyone can edit, so nothing it names is trusted: a folder is loaded or deleted
only if it is one this store created (`_not_ours`): a `best-step…` name directly inside the directory,
not a symbolic link, holding the `best_checkpoint.json` written into every checkpoint before it
appears. One writer per directory: a lock file keeps a second process out while the first trains.

The store knows nothing of the Trainer: what goes into a checkpoint is written by a `save_fn(tmp_dir)`
callable, and which checkpoints to keep is a `CheckpointRanking` (plain numbers).
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..core.modes import Mode
from ..publish import notice_once, warn
from ..records import LOCK_STALE_SECONDS, LockHeld, RunLock, describe_holder, fsync_path, read_json, write_json_atomic
from .ranking import CheckpointRanking, RankedCheckpoint

MANIFEST = "best_checkpoints.json"
TMP_PREFIX = ".tmp-best-"
INFO_FILE = "best_checkpoint.json"  # inside every checkpoint; also the marker that the folder is ours
LOCK_FILE = "best_checkpoints.lock"
MANIFEST_VERSION = 1
PROBE_BYTES = 64 * 1024  # the start-up write test: big enough that a full disk refuses it
# What `checkpoint_name` produces (plus the "-2" of a name taken by an earlier run): one path component.
_CHECKPOINT_NAME = re.compile(r"best-step(\d+)-[A-Za-z0-9_.-]+=-?\d+\.\d{4}(?:-\d+)?")
_TMP_NAME = re.compile(r"\.tmp-best-(?:\d+|probe)-\d+")
_MISSING = "missing"


def checkpoint_name(step: int, monitor: str, value: float) -> str:
    """The folder name of a best checkpoint.

    Example:
        >>> checkpoint_name(40, "eval_loss", 3.14159)
        'best-step000040-eval_loss=3.1416'
    """
    metric = re.sub(r"[^A-Za-z0-9_.-]", "_", monitor)
    return f"best-step{int(step):06d}-{metric}={value:.4f}"


# -- reading the directory: anyone may call these --------------------------------------------------
def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _manifest_problem(data: Any) -> str | None:
    """Why a parsed manifest cannot be used (a field of the wrong type), or None."""
    if not isinstance(data, dict):
        return f"it holds {_json_type(data)}, not an object"
    for key in ("checkpoints", "pruning", "pending"):
        if not isinstance(data.get(key, []), list):
            return f'"{key}" is {_json_type(data[key])}, not a list'
    for key in ("pruning", "pending"):
        if not all(isinstance(name, str) for name in data.get(key, [])):
            return f'"{key}" holds something other than folder names'
    for key in ("best", "monitor", "mode"):
        if data.get(key) is not None and not isinstance(data[key], str):
            return f'"{key}" is {_json_type(data[key])}, not a string'
    step, value = data.get("best_step"), data.get("best_value")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        return f'"best_step" is {_json_type(step)}, not a whole number'
    finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if value is not None and not finite:
        return f'"best_value" is {value!r}, not a finite number'
    return None


def _load_manifest(output_dir: str | os.PathLike) -> tuple[dict[str, Any] | None, str | None]:
    """(manifest, None), (None, why it is unusable), or (None, None) when there is none."""
    path = os.path.join(output_dir, MANIFEST)
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"it cannot be read ({exc})"
    try:
        data = json.loads(text)
    except ValueError as exc:
        return None, f"it is not valid JSON ({exc})"
    problem = _manifest_problem(data)
    return (None, problem) if problem else (data, None)


def read_manifest(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of `output_dir`, or None when there is none, it cannot be parsed, or a field has the
    wrong type (a hand-edited `"pruning": 5`): a resumed run then treats it as lost.

    Args:
        output_dir: the directory the checkpoints are written into.
    """
    return _load_manifest(output_dir)[0]


def _not_ours(output_dir: str | os.PathLike, name: Any) -> str | None:
    """None when `name` is a checkpoint folder this store created directly inside `output_dir`;
    otherwise why not (`_MISSING` when such a name is simply not on disk). Only folders that pass are
    ever loaded or deleted: the manifest is a file anyone can edit."""
    match = _CHECKPOINT_NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None:  # "", ".", "..", absolute paths, anything with a separator, the Trainer's checkpoint-N
        return "not a best-step… folder name of this saver"
    path = os.path.join(output_dir, name)
    if os.path.islink(path):
        return "a symbolic link"
    if not os.path.lexists(path):
        return _MISSING
    if not os.path.isdir(path):
        return "not a folder"
    if os.path.realpath(path) != os.path.join(os.path.realpath(output_dir), name):
        return "outside the directory"
    marker = os.path.join(path, INFO_FILE)
    info = None if os.path.islink(marker) or not os.path.isfile(marker) else read_json(marker)
    if not isinstance(info, dict) or info.get("step") != int(match.group(1)):
        return f"a folder without this saver's {INFO_FILE} marker"
    return None


def best_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """Path of the best checkpoint the manifest of `output_dir` lists, or None.

    Only a folder the saver created is returned (a `best-step…` folder directly inside `output_dir`,
    not a symbolic link, with its `best_checkpoint.json`); a manifest naming anything else gives None
    and a warning.

    Args:
        output_dir: the directory the checkpoints are written into.

    Example:
        Load the best model after training::

            model = AutoModelForCausalLM.from_pretrained(best_checkpoint("output_dir"))
    """
    manifest = read_manifest(output_dir)
    if not manifest or not manifest.get("best"):
        return None
    reason = _not_ours(output_dir, manifest["best"])
    if reason is not None:
        warn(f"{MANIFEST} in {output_dir} names {manifest['best']!r} as the best checkpoint, but that is {reason}; "
             "it is not returned.")  # fmt: skip
        return None
    return Path(output_dir) / manifest["best"]


def last_complete_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest of the Trainer's own `checkpoint-N` folders that is complete: what to pass to
    `trainer.train(resume_from_checkpoint=...)` after a crash or kill.

    transformers' `get_last_checkpoint` returns the highest-numbered folder even when a kill cut its
    writing short, and resuming from that one fails (or loses the optimizer state). The Trainer writes
    a checkpoint in place with `trainer_state.json` last, so complete means: that file parses and
    records step N. None when no checkpoint is complete (start afresh)."""
    found = []
    for folder in Path(output_dir).glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", folder.name)
        if match is None or not folder.is_dir():
            continue
        state = read_json(folder / "trainer_state.json")
        if isinstance(state, dict) and state.get("global_step") == int(match.group(1)):
            found.append((int(match.group(1)), folder))
    return max(found)[1] if found else None


# -- writing: only the store ----------------------------------------------------------------------
def _fsync_tree(root: str | os.PathLike) -> int:
    """fsync every file and folder under `root`; returns the bytes in it."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            total += os.path.getsize(path)
            fsync_path(path)
        fsync_path(dirpath, directory=True)
    return total


def _remove_tree(path: str | os.PathLike) -> None:
    """Delete a folder this store wrote (callers check that it is ours). Its marker goes last, so a
    deletion a kill cuts short leaves a folder that the next start still recognises and finishes."""
    path = str(path)
    if os.path.islink(path) or not os.path.isdir(path):  # never follow a link out of the directory
        return
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        if name == INFO_FILE:
            continue
        child = os.path.join(path, name)
        if os.path.isdir(child) and not os.path.islink(child):
            shutil.rmtree(child, ignore_errors=True)
        else:
            try:
                os.remove(child)
            except OSError:
                pass
    try:
        if os.listdir(path) == [INFO_FILE]:  # all the rest is gone (or the marker stays, and so it is ours)
            os.remove(os.path.join(path, INFO_FILE))
        os.rmdir(path)
    except OSError:
        pass


class CheckpointStore:
    """The directory of best checkpoints of one monitored metric: atomic saves, the manifest, recovery
    at start, pruning of only what it created, the one-writer lock and the start-up write probe.

    Which checkpoints to keep is decided by a `CheckpointRanking`, passed to each call that changes the
    directory; the store writes what it says and keeps the manifest equal to it. The store needs no
    Trainer: `save_fn(tmp_dir)` writes a checkpoint's files (`model.save_pretrained`, or anything).

    Args:
        directory: where checkpoints, the manifest and the lock go (created by `check_writable`).
        monitor: the metric the checkpoints are ranked by (in names, the manifest, each marker).
        mode: "min" or "max", as the ranking's (recorded in the manifest and each marker).

    Example:
        A store on a plain directory, with any callable writing the files::

            ranking = CheckpointRanking("min", keep=2)
            store = CheckpointStore("out", monitor="eval_loss", mode="min")
            error = store.check_writable() or store.acquire_lock()  # None: ready
            store.recover(ranking, fresh=True)
            if ranking.improves(3.14):
                record = store.save(ranking, 40, 3.14, model.save_pretrained)  # "best-step000040-eval_loss=3.1400"
            store.release_lock()
    """

    def __init__(self, directory: str | os.PathLike, monitor: str, mode: Mode = "min") -> None:
        self.directory = str(directory)
        self.monitor = monitor
        self.mode = mode
        self._lock: RunLock | None = None  # while this process writes here

    def path(self, name: str) -> str:
        """The full path of a checkpoint folder named in the manifest."""
        return os.path.join(self.directory, name)

    def not_ours(self, name: Any) -> str | None:
        """None when `name` is a checkpoint folder this store created (loadable, deletable); else why not."""
        return _not_ours(self.directory, name)

    def read_manifest(self) -> dict[str, Any] | None:
        """The usable manifest of this directory, or None (see `read_manifest`)."""
        return read_manifest(self.directory)

    # -- before the first step ---------------------------------------------------------------------
    def check_writable(self) -> str | None:
        """Create the directory and write and fsync a probe of random bytes there.

        Returns:
            None when the directory takes writes; else the message for the user (a full disk or quota
            fails here, before the first step, instead of at every save).
        """
        out = self.directory
        probe = os.path.join(out, f"{TMP_PREFIX}probe-{os.getpid()}")
        try:
            os.makedirs(out, exist_ok=True)
            # Some KB of random bytes (no filesystem compresses them away), fsync'ed: a full disk or quota
            # fails here, before the first step, instead of at every save.
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                data = memoryview(os.urandom(PROBE_BYTES))
                while data:
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.remove(probe)
        except OSError as exc:
            try:
                os.remove(probe)
            except OSError:
                pass
            full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
            return (
                f"BestCheckpointSaver cannot write to the output directory {out!r} ({exc})"
                + (": the disk (or your quota) is full, so every checkpoint save would fail. Free some space or pick "
                   "another output_dir" if full else ". Pick a writable output_dir")
                + " (TrainingArguments(output_dir=...) or BestCheckpointSaver(output_dir=...))."
            )  # fmt: skip
        return None

    def acquire_lock(self) -> str | None:
        """Hold the directory's lock (`best_checkpoints.lock`) until `release_lock`.

        A lock this store still holds (an earlier run that never reached its end) is released first; a
        stale one (its process is gone) is taken over with a notice.

        Returns:
            None when the lock is held; else the message for the user (who holds it, what to do).
        """
        out = self.directory
        self.release_lock()
        lock = RunLock(os.path.join(out, LOCK_FILE))
        try:
            stale = lock.acquire()
        except LockHeld as exc:
            return (
                f"BestCheckpointSaver: another run is writing into {out!r}: {describe_holder(exc.holder)} holds "
                f"{exc.path}. Two runs in one directory overwrite each other's manifest and prune each other's "
                "checkpoints. Wait for that run to finish, or give this one its own directory "
                "(TrainingArguments(output_dir=...) or BestCheckpointSaver(output_dir=...)). If that process is no "
                f"longer running, delete {exc.path} (a lock from another host counts as stale on its own after "
                f"{LOCK_STALE_SECONDS / 60:.0f} minutes without its heartbeat)."
            )
        except OSError as exc:
            return f"BestCheckpointSaver cannot create its lock file in {out!r} ({exc}). Pick a writable output_dir."
        self._lock = lock
        if stale is not None:
            notice_once(
                f"best_lock:{lock.path}",
                f"BestCheckpointSaver took over the stale lock {lock.path} of {describe_holder(stale)}, which is no "
                "longer running.",
            )
        return None

    def release_lock(self) -> None:
        """Remove the lock file if this store holds it."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- the manifest ------------------------------------------------------------------------------
    def write_manifest(
        self, ranking: CheckpointRanking, pruning: list[str] | None = None, pending: list[str] | None = None
    ) -> None:
        """Write the manifest for `ranking` atomically (tmp file, fsync, `os.replace`).

        Args:
            ranking: the kept checkpoints, best first.
            pruning: folders being deleted (finished at the next start should a kill cut that short).
            pending: a folder about to be renamed into place (ours, should a kill come before it is listed).
        """
        best = ranking.best
        payload = {
            "version": MANIFEST_VERSION,
            "monitor": self.monitor,
            "mode": self.mode,
            "min_delta": ranking.min_delta,
            "keep": ranking.keep,
            "best": best.path if best else None,
            "best_step": ranking.best_step,
            "best_value": ranking.best_value,
            "checkpoints": [
                {
                    "path": e.path,
                    "step": e.step,
                    "metric": self.monitor,
                    "value": e.value,
                    "time": e.time,
                    "seconds": e.seconds,
                    "bytes": e.bytes,
                    "best": e is best,
                }
                for e in ranking.entries
            ],
            "pruning": list(pruning or []),
            "pending": list(pending or []),
        }
        write_json_atomic(os.path.join(self.directory, MANIFEST), payload)

    def state_from_manifest(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """A `CheckpointRanking.state_dict()` from a manifest (malformed entries dropped with a warning),
        or None when the manifest ranks another metric or mode."""
        if manifest.get("monitor") not in (None, self.monitor) or manifest.get("mode") not in (None, self.mode):
            warn(
                f"the manifest in the output dir ranks {manifest.get('monitor')!r} ({manifest.get('mode')}), "
                f"this saver {self.monitor!r} ({self.mode}): starting a new ranking."
            )
            return None
        entries = []
        for e in manifest.get("checkpoints", []):
            try:
                if not isinstance(e, dict) or not math.isfinite(float(e["value"])):
                    raise ValueError(e)
                entries.append(
                    asdict(
                        RankedCheckpoint(
                            step=int(e["step"]),
                            value=float(e["value"]),
                            path=str(e["path"]),
                            time=str(e.get("time", "")),
                            seconds=float(e.get("seconds", 0.0)),
                            bytes=int(e.get("bytes", 0)),
                        )
                    )
                )
            except (KeyError, TypeError, ValueError):
                warn(f"ignoring a malformed manifest entry: {e!r}")
        return {"best_value": manifest.get("best_value"), "best_step": manifest.get("best_step"), "entries": entries}

    def resume(self, ranking: CheckpointRanking, saved: Callable[[], dict[str, Any] | None]) -> None:
        """Fill the empty `ranking` of a resumed run: from the manifest when there is a usable one, else
        from `saved()` (the ranking the Trainer checkpoint kept); one that is malformed leaves it empty.

        Args:
            ranking: a new, empty ranking.
            saved: returns the ranking state kept elsewhere (called only when there is no usable manifest).
        """
        manifest = self.read_manifest()
        state = self.state_from_manifest(manifest) if manifest is not None else saved()
        if not state:
            return
        restored = CheckpointRanking(ranking.mode, ranking.keep, ranking.min_delta)
        try:
            restored.load_state_dict(state)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a hand-edited trainer_state.json
            warn(f"the ranking stored in the Trainer checkpoint is malformed ({exc!r}); starting a new one.")
            return
        ranking.load_state_dict(restored.state_dict())

    # -- a save ------------------------------------------------------------------------------------
    def save(
        self, ranking: CheckpointRanking, step: int, value: float, save_fn: Callable[[str], Any]
    ) -> dict[str, Any]:
        """Write a new best checkpoint atomically, rank it, list it, and delete what falls out.

        `save_fn(tmp_dir)` writes the checkpoint's files into a fresh `.tmp-best-<step>-<pid>` folder; the
        store adds its marker, fsyncs every file, names the folder under `"pending"`, renames it into
        place, lists it in the manifest (with pruned folders under `"pruning"`), then deletes those.

        Args:
            ranking: the ranking to add the checkpoint to (call only when `ranking.improves(value)`).
            step: the training step of the evaluation.
            value: the monitored value.
            save_fn: writes the checkpoint's files into the folder it is given.

        Returns:
            `step`, `path` (folder name), `seconds`, `bytes`, `pruned` (folder names) and `ranking`
            (its state after the save).

        Raises:
            Exception: whatever `save_fn` or the disk raises (disk full, permissions). The ranking, the
                manifest on disk and every listed checkpoint are then as they were, and the partial
                folder is removed.
        """
        out = self.directory
        start = time.monotonic()
        name = checkpoint_name(step, self.monitor, value)
        final = os.path.join(out, name)
        suffix = 1
        while os.path.exists(final):  # left by an earlier run into the same output_dir: never overwritten
            suffix += 1
            final = os.path.join(out, f"{name}-{suffix}")
        name = os.path.basename(final)
        tmp = os.path.join(out, f"{TMP_PREFIX}{step}-{os.getpid()}")
        _remove_tree(tmp)
        try:
            save_fn(tmp)
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            info = {"step": step, "metric": self.monitor, "value": value, "mode": self.mode, "time": now}
            with open(os.path.join(tmp, INFO_FILE), "w") as f:
                json.dump(info, f, indent=2)
            size = _fsync_tree(tmp)
            self.write_manifest(ranking, pending=[name])  # whatever happens next, `name` is known to be ours
            os.replace(tmp, final)  # the checkpoint appears complete, or not at all
            fsync_path(out, directory=True)
        except Exception:  # a kill or KeyboardInterrupt leaves the folder aside; the next start removes it
            _remove_tree(tmp)
            raise
        seconds = time.monotonic() - start
        before = ranking.state_dict()
        decision = ranking.add(step, value, path=name, time=now, seconds=round(seconds, 4), bytes=size)
        pruned = [e.path for e in decision.pruned]
        try:
            self.write_manifest(ranking, pruning=pruned)  # the manifest lists the new best before anything is deleted
        except Exception:  # disk full: the manifest on disk is the previous one; the new folder is not listed
            ranking.load_state_dict(before)
            _remove_tree(final)  # it is under "pending" there, should this fail too
            raise
        for path in pruned:
            reason = self.not_ours(path)  # checked again: the folder may have been replaced since it was listed
            if reason is None:
                _remove_tree(os.path.join(out, path))
            elif reason != _MISSING:
                self.report_refused({path: reason})
        if pruned:
            try:
                self.write_manifest(ranking)
            except OSError:  # the manifest written above is valid; its "pruning" list is finished at the next start
                pass
        return {
            "step": step,
            "path": name,
            "seconds": round(time.monotonic() - start, 4),
            "bytes": size,
            "pruned": pruned,
            "ranking": ranking.state_dict(),
        }

    # -- at start ----------------------------------------------------------------------------------
    def recover(self, ranking: CheckpointRanking, fresh: bool) -> None:
        """At the start of a run: drop unfinished saves, finish pending deletions, repair the manifest.

        Deletes and keeps only folders this store created (`not_ours`); whatever else the manifest
        names is reported once and left on disk.

        Args:
            ranking: the ranking restored for a resumed run (entries whose folder is gone or not ours are
                dropped from it); empty for a new run.
            fresh: a new run (step 0): an earlier run's manifest is archived and a new ranking starts.
        """
        out = self.directory
        for name in os.listdir(out):
            path = os.path.join(out, name)
            if _TMP_NAME.fullmatch(name) and not os.path.islink(path):
                if os.path.isdir(path):
                    _remove_tree(path)
                else:  # the write probe of a run killed at its start
                    try:
                        os.remove(path)
                    except OSError:
                        pass
        refused: dict[str, str] = {}
        manifest, problem = _load_manifest(out)
        if problem is not None:
            self.set_aside_malformed(problem, fresh)
        if manifest is not None:
            entries = manifest.get("checkpoints", [])
            listed = {e["path"] for e in entries if isinstance(e, dict) and isinstance(e.get("path"), str)}
            # A deletion cut off, or a save renamed into place but never listed: both are ours (if verified).
            for name in [*manifest.get("pruning", []), *manifest.get("pending", [])]:
                if name in listed:
                    continue
                reason = self.not_ours(name)
                if reason is None:
                    _remove_tree(os.path.join(out, name))
                elif reason != _MISSING:
                    refused[name] = reason
        if fresh:
            self.report_refused(refused)
            if manifest is not None and manifest.get("checkpoints"):
                archive = os.path.join(out, f"best_checkpoints.{int(time.time())}.json")
                os.replace(os.path.join(out, MANIFEST), archive)
                warn(
                    f"{MANIFEST} in {out} is from an earlier run; it was moved to {os.path.basename(archive)} and its "
                    "checkpoints are left on disk untouched. This run starts a new ranking."
                )
            return
        missing = []
        for e in list(ranking.entries):
            reason = self.not_ours(e.path)
            if reason is None:
                continue
            ranking.remove(e.path)
            if reason == _MISSING:
                missing.append(e.path)
            else:
                refused[e.path] = reason
        self.report_refused(refused)
        if missing:
            warn(
                f"{MANIFEST} listed checkpoints that no longer exist ({', '.join(missing)}); "
                "removed them from the ranking."
            )
        if missing or refused:
            if not ranking.entries:
                ranking.best_value = ranking.best_step = None
            else:
                best = ranking.entries[0]
                ranking.best_value, ranking.best_step = best.value, best.step
        lost = manifest is None and bool(ranking.entries)  # restored from trainer_state.json
        dirty = manifest is not None and (manifest.get("pruning") or manifest.get("pending"))
        if missing or refused or lost or dirty:
            self.write_manifest(ranking)

    def report_refused(self, refused: dict[str, str]) -> None:
        """Warn once about folders the manifest names that this store did not create (left untouched)."""
        if refused:
            listing = "; ".join(f"{name!r}: {reason}" for name, reason in refused.items())
            warn(
                f"{MANIFEST} in {self.directory} names folders this saver did not create ({listing}). They are left "
                "untouched and dropped from the manifest: only best-step… folders directly inside the directory, "
                f"holding the saver's {INFO_FILE}, are ever loaded or deleted."
            )

    def set_aside_malformed(self, problem: str, fresh: bool) -> None:
        """A manifest that cannot be used is kept for the user under another name, never deleted."""
        out = self.directory
        path = os.path.join(out, MANIFEST)
        aside = os.path.join(out, f"best_checkpoints.malformed-{int(time.time())}.json")
        try:
            os.replace(path, aside)
            where = f"it was moved to {os.path.basename(aside)}"
        except OSError as exc:
            where = f"it could not be moved aside ({exc}) and will be overwritten"
        then = "This run starts a new ranking" if fresh else "The ranking comes from the Trainer checkpoint (if any)"
        warn(f"{MANIFEST} in {out} is malformed ({problem}); {where}. {then}; no checkpoint folder was deleted.")
