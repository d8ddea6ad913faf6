"""Small JSON records our callbacks keep in `output_dir` (a manifest, a stop record): written
atomically, read forgivingly."""

from __future__ import annotations

import atexit
import json
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any


def fsync_path(path: str | os.PathLike, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    """A reader sees the old file or the new one, never a torn one, even after a crash."""
    path = str(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(payload, f, indent=2, default=_jsonable)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception:  # disk full: the old file stays, and no torn tmp file is left beside it
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    fsync_path(os.path.dirname(path) or ".", directory=True)


def _jsonable(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def write_record(path: str | os.PathLike, payload: Any) -> None:
    """`write_json_atomic`, creating the folder first."""
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    write_json_atomic(path, payload)


def read_json(path: str | os.PathLike) -> Any:
    """The parsed file, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# -- a lock file naming the one process that writes into a folder ---------------------------------
LOCK_STALE_SECONDS = 600.0  # a lock from another host whose heartbeat is older than this is from a dead run
_HEARTBEAT_SECONDS = 60.0
_HELD: set[RunLock] = set()  # locks this process holds: released at exit if training never ended


class LockHeld(RuntimeError):
    """Another live process holds the lock; `holder` is what it wrote (pid, host, since), or None."""

    def __init__(self, path: str, holder: dict[str, Any] | None) -> None:
        self.path = path
        self.holder = holder
        super().__init__(f"{path} is held by {describe_holder(holder)}")


def describe_holder(holder: dict[str, Any] | None) -> str:
    """'process 1234 on host h (since 2026-…)' for a lock's content."""
    if not isinstance(holder, dict) or not holder:
        return "a process that left no readable record"
    since = f" (since {holder['since']})" if holder.get("since") else ""
    return f"process {holder.get('pid')} on host {holder.get('host')}{since}"


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of `pid` from /proc, or None without /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # the command name, in parentheses, may hold spaces
        return fields[0], int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _holder_alive(holder: Any, age: float) -> bool:
    """Whether the process that wrote a lock (`age` seconds since its last heartbeat) still runs."""
    if not isinstance(holder, dict):  # unreadable: a writer that is mid-write, or the debris of a dead one
        return age < 10.0
    pid = holder.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:  # os.kill(0, 0) would test our own group
        return False
    if holder.get("host") != socket.gethostname():
        # Another machine on a shared filesystem: its PID means nothing here, but a live holder keeps
        # refreshing the file's time.
        return age < LOCK_STALE_SECONDS
    if pid == os.getpid():  # this process: an earlier train() here raised before it could release the lock
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    except OSError:
        return False
    stat = _proc_stat(pid)
    if stat is not None:
        if stat[0] in ("Z", "X"):  # killed, not yet reaped
            return False
        if isinstance(holder.get("start"), int) and holder["start"] != stat[1]:  # the PID was reused
            return False
    return True


class RunLock:
    """A lock file that names the one process writing into a folder: PID, host, the process's start
    time (so a reused PID is not mistaken for the holder) and a token. While held, a daemon thread
    refreshes the file's time every minute, which is how a process on another host tells a live lock
    from the debris of a dead run (`LOCK_STALE_SECONDS`).

    `acquire()` refuses while the holder lives and takes over a stale lock (its process is gone, or it
    was this process's own, left by a `train()` that raised). `release()` removes the file only if it
    is still this lock's. Locks still held when the interpreter exits are released then.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self.token: str | None = None
        self._pid: int | None = None
        self._stop: threading.Event | None = None

    def acquire(self) -> dict[str, Any] | None:
        """Take the lock.

        Returns:
            What a stale lock that was taken over said (its holder), or None when the lock was free.

        Raises:
            LockHeld: a live process holds the lock.
            OSError: the lock file cannot be written.
        """
        token = uuid.uuid4().hex
        stat = _proc_stat(os.getpid())
        mine = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start": stat[1] if stat else None,
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "token": token,
        }
        taken_over: dict[str, Any] | None = None
        holder: Any = None
        for _ in range(5):  # each round loses at most one race with another process
            if self._create(mine):
                self.token, self._pid = token, os.getpid()
                self._start_heartbeat()
                _HELD.add(self)
                return taken_over
            raw, age = self._read_raw()
            if raw is None:  # released in between: try again
                continue
            holder = _parse(raw)
            if _holder_alive(holder, age):
                raise LockHeld(self.path, holder)
            if self._set_aside(raw):
                taken_over = holder if isinstance(holder, dict) else {}
        raise LockHeld(self.path, holder if isinstance(holder, dict) else None)

    def release(self) -> None:
        """Remove the lock file if it is still this lock's (never another process's)."""
        if self._stop is not None:
            self._stop.set()
            self._stop = None
        _HELD.discard(self)
        if self.token is None or self._pid != os.getpid():  # a forked child never releases its parent's lock
            return
        raw, _ = self._read_raw()
        holder = _parse(raw) if raw is not None else None
        if isinstance(holder, dict) and holder.get("token") == self.token:
            try:
                os.remove(self.path)
            except OSError:
                pass
        self.token = None

    def _create(self, content: dict[str, Any]) -> bool:
        """Create the lock with its whole content in one step; False when it exists."""
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(content, f)
            f.flush()
            os.fsync(f.fileno())
        try:
            # A hard link appears complete or not at all and fails if the name exists: no reader ever
            # sees a half-written lock, and of two processes creating it at once exactly one succeeds.
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: exclusive create, then write
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                json.dump(content, f)
                f.flush()
                os.fsync(f.fileno())
            return True
        finally:
            try:
                os.remove(tmp)
            except OSError:
                pass

    def _read_raw(self) -> tuple[bytes | None, float]:
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
                age = time.time() - os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return None, 0.0
        return raw, max(age, 0.0)

    def _set_aside(self, stale: bytes) -> bool:
        """Remove a stale lock whose content is `stale`; should another process have replaced it in the
        meantime (its fresh lock), that one is put back. True when the stale lock is gone."""
        aside = f"{self.path}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            with open(aside, "rb") as f:
                moved = f.read()
            if moved != stale:
                try:
                    os.link(aside, self.path)
                except OSError:
                    pass
                return False
            return True
        finally:
            try:
                os.remove(aside)
            except OSError:
                pass

    def _start_heartbeat(self) -> None:
        stop = threading.Event()
        self._stop = stop

        def beat() -> None:
            while not stop.wait(_HEARTBEAT_SECONDS):
                try:
                    os.utime(self.path)
                except OSError:
                    return

        threading.Thread(target=beat, name="ft_callbacks-lock-heartbeat", daemon=True).start()


def _parse(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


@atexit.register
def _release_held() -> None:
    # A script whose train() raised never reached on_train_end: its locks go with the process.
    for lock in list(_HELD):
        lock.release()
