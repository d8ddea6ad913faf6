"""Small JSON records our callbacks keep in `output_dir` (a manifest, a stop record): written
atomically, read forgivingly."""

from __future__ import annotations

import json
import os
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
