"""Scoring rounds in the background while training goes on, without ever holding the process.

`ScoringQueue` runs jobs (one scoring round each) in order on one daemon thread and hands their
results back, in order, when the caller drains it:

- bounded: at most `max_rounds` are queued or running; a further round first waits for the oldest, at
  most `scoring_timeout` seconds, and when that runs out every queued round is dropped;
- a daemon thread, so neither Ctrl-C nor a round given up keeps the interpreter alive (a
  ThreadPoolExecutor's threads are joined at exit, queue and all);
- a dropped round's job gets its stop event set (TextScorer gives up at its next metric or BERTScore
  batch), and the rounds dropped are named in one line;
- an interpreter exit before `close()` (an interrupted run) drops what is left, saying so.

Nothing here needs a Trainer.
"""

from __future__ import annotations

import atexit
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from numbers import Real
from typing import Any

from ..core.errors import ConfigurationError
from ..publish import _print, notice_once

__all__ = ["MAX_QUEUED_ROUNDS", "QueuedRound", "ScoringQueue"]

# Background rounds queued or being scored at most. When scoring is slower than evaluations come,
# an unbounded queue grows without end and outlives the run; past this, training waits for the oldest.
MAX_QUEUED_ROUNDS = 2
# Seconds the interpreter's exit waits for a job told to stop (BERTScore stops at its next batch).
_EXIT_GRACE_S = 2.0


@dataclass
class QueuedRound:
    """One round in the queue: its training step, its result to come, and what the caller attached."""

    step: int
    future: Future
    payload: Any = None


# `on_result(round, result, error)`: a round's result (None and the error's text when its job raised).
ResultHandler = Callable[[QueuedRound, Any, str | None], None]


class ScoringQueue:
    """A bounded queue of scoring jobs on one daemon thread, drained in order by the caller.

    Args:
        owner: the name the one-line messages give (`"[ft_callbacks] <owner>: dropped ..."`).
        scoring_timeout: seconds to wait for a round (for room in a full queue, or at the end) before
            dropping it and the rounds queued behind it; `math.inf` waits without limit.
        max_rounds: rounds queued or running at most.
        slow_hint: what the user can do when scoring is slower than rounds come (said once).
        wait_at_exit: whether a running job may sit in native code long enough that the interpreter's
            exit should give it a moment to leave after its stop event is set.

    Raises:
        ConfigurationError: `scoring_timeout` is not a number of seconds >= 0.

    Example:
        >>> jobs = ScoringQueue("MyJudge", scoring_timeout=60)
        >>> jobs.submit(step, lambda stop: score(texts, stop=stop), on_result=publish_round)
        >>> jobs.drain(publish_round)  # at each step: publish what has finished
        >>> jobs.drain(publish_round, timeout=jobs.scoring_timeout)  # at train end: wait up to 60 s,
        >>> jobs.drop_unfinished()  # then drop the rest, saying so
        >>> jobs.close()
    """

    def __init__(
        self,
        owner: str = "GenerationScorer",
        scoring_timeout: float = 600.0,
        max_rounds: int = MAX_QUEUED_ROUNDS,
        slow_hint: str = "fewer evaluations, every_n_evals=, or lighter metrics",
        wait_at_exit: Callable[[], bool] | None = None,
    ) -> None:
        timeout = scoring_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, Real) or math.isnan(timeout) or timeout < 0:
            raise ConfigurationError(
                f"scoring_timeout={timeout!r} is not valid: use a number of seconds >= 0 "
                "(math.inf waits without limit)."
            )
        self.owner = owner
        self.scoring_timeout = float(timeout)
        self.max_rounds = max_rounds
        self.slow_hint = slow_hint
        self.wait_at_exit = wait_at_exit
        self.pending: list[QueuedRound] = []
        self._worker: _Worker | None = None

    def __len__(self) -> int:
        return len(self.pending)

    def submit(self, step: int, job: Callable[[threading.Event], Any], payload: Any, on_result: ResultHandler) -> None:
        """Queue `job(stop_event)` for the round of `step`. A full queue first makes room (results handed
        to `on_result`), waiting at most `scoring_timeout` for the oldest round."""
        if len(self.pending) >= self.max_rounds:
            self._make_room(on_result)
        if self._worker is None:
            self._worker = _Worker()
            atexit.register(self._at_exit)  # an interrupted run never reaches close()
        worker = self._worker
        self.pending.append(QueuedRound(step, worker.submit(job, worker.stop_event), payload))

    def drain(self, on_result: ResultHandler, timeout: float | None = 0.0, keep: int = 0) -> None:
        """Hand finished rounds to `on_result`, in order; with a timeout, wait that long for the rest (or
        until at most `keep` are left). A round is handed over only after the earlier ones."""
        deadline = None if timeout is None or math.isinf(timeout) else time.monotonic() + timeout
        while self.pending:
            first = self.pending[0]
            if not first.future.done():
                left = None if deadline is None else deadline - time.monotonic()
                if len(self.pending) <= keep or (left is not None and left <= 0):
                    break
                try:  # Ctrl-C while waiting raises here: the run ends, and the exit handler says what was lost
                    first.future.result(timeout=left)
                except FutureTimeout:
                    break
                except Exception:
                    pass  # the round's error is handed over below
            self.pending.pop(0)
            try:
                result, error = first.future.result(timeout=0), None
            except Exception as exc:
                result, error = None, f"{type(exc).__name__}: {exc}"
            on_result(first, result, error)

    def drop_unfinished(self, announce: bool = True) -> None:
        """After waiting `scoring_timeout` (`drain(on_result, timeout=queue.scoring_timeout)`), drop the rounds
        still queued, saying so in one line when `announce`."""
        if self.pending:
            self.drop(f"they did not finish within scoring_timeout={self.scoring_timeout:g}s", announce=announce)

    def drop(self, reason: str, announce: bool = True, intact: bool = True) -> None:
        """Give up every queued round, with one line saying so (when `announce`); the worker stops (a daemon
        thread, so a job still running cannot keep the process alive) and a new one takes later rounds."""
        dropped = [r.step for r in self.pending]
        for r in self.pending:
            r.future.cancel()
        self.pending = []
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        if dropped and announce:
            _print(
                f"[ft_callbacks] {self.owner}: dropped {len(dropped)} scoring round(s) (step(s) "
                f"{', '.join(map(str, dropped))}): {reason}" + ("; the training result is intact." if intact else ".")
            )

    def close(self) -> None:
        """Stop the worker and forget the exit handler (at the end, after `drop_unfinished()`)."""
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        atexit.unregister(self._at_exit)

    def _make_room(self, on_result: ResultHandler) -> None:
        notice_once(
            f"queue:{self.owner}",
            f"{self.owner}: scoring is slower than evaluations come; training waits for the oldest round so "
            f"that at most {self.max_rounds} are queued ({self.slow_hint} avoid the wait).",
        )
        self.drain(on_result, timeout=self.scoring_timeout, keep=self.max_rounds - 1)
        if len(self.pending) >= self.max_rounds:
            oldest = self.pending[0].step
            self.drop(
                f"the round of step {oldest} did not finish within scoring_timeout={self.scoring_timeout:g}s "
                "(a new scoring thread takes the next rounds)",
            )  # fmt: skip

    def _at_exit(self) -> None:
        """The interpreter is exiting before close() (Ctrl-C, an exception): say which rounds are lost, and
        give a job that honours its stop event a moment to leave native code before the exit."""
        worker = self._worker
        self.drop("the run ended before they were scored (interrupted?)", intact=False)
        if worker is not None and self.wait_at_exit is not None and self.wait_at_exit():
            worker.thread.join(timeout=_EXIT_GRACE_S)


class _Worker:
    """One daemon thread that runs jobs in order. `stop()` makes it skip every job it has not started;
    the running one sees `stop_event` set."""

    def __init__(self) -> None:
        self.stop_event = threading.Event()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="ft_callbacks_scoring", daemon=True)
        self.thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        self._queue.put((future, fn, args))
        return future

    def _run(self) -> None:
        _lower_thread_priority()
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args = item
            if self.stop_event.is_set():
                future.cancel()
                continue
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the caller through the future
                future.set_exception(exc)
            else:
                future.set_result(result)

    def stop(self) -> None:
        self.stop_event.set()
        self._queue.put(None)


def _lower_thread_priority() -> None:
    """Background scoring yields the CPU to training where cores are scarce (Linux: per-thread nice)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):
        pass
