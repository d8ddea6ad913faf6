"""A disk cache of judge answers, so a rerun or a resume over the same outputs makes no new calls.

SQLite (one file, atomic commits, safe across threads with one lock, and across processes thanks to
SQLite's own locking). A key is the SHA-256 of everything that determines an answer: the judge's
identity (backend, model, endpoint, sampling settings), the prompt template version, the kind of
question and its content (prompt, both outputs in their order, reference, rubric). Errors are never
cached (a later call may succeed); an unparseable answer is (at temperature 0 it would be the same).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from typing import Any

__all__ = ["VerdictCache", "cache_key"]


def cache_key(identity: dict[str, Any], template: str, kind: str, content: dict[str, Any]) -> str:
    """The key of one judge question (see the module docstring)."""
    text = json.dumps({"judge": identity, "template": template, "kind": kind, "content": content},
                      sort_keys=True, default=str, ensure_ascii=False)  # fmt: skip
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class VerdictCache:
    """Answers by key in a SQLite file (created with its folder on first use).

    Args:
        path: the database file, e.g. `output_dir/ft_callbacks/judge/cache.sqlite`.

    Example:
        >>> cache = VerdictCache("/tmp/judge.sqlite")
        >>> cache.put(key, {"winner": "A"})
        >>> cache.get(key)
        {'winner': 'A'}
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self.hits = 0
        self.misses = 0

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            connection.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            connection.commit()
            self._connection = connection
        return self._connection

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db().execute("SELECT value FROM answers WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return json.loads(row[0])

    def put(self, key: str, value: dict[str, Any]) -> None:
        if value.get("error"):
            return  # errors are never cached: the next run asks again
        text = json.dumps(value, ensure_ascii=False, default=str)
        with self._lock:
            db = self._db()
            db.execute("INSERT OR REPLACE INTO answers (key, value) VALUES (?, ?)", (key, text))
            db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db().execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
