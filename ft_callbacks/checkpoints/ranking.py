"""Which best checkpoints to keep: plain numbers in, plain numbers out (no framework, no files)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from ..core.modes import Mode, check_mode, is_improvement

__all__ = ["CheckpointRanking", "RankedCheckpoint", "RankingDecision"]


@dataclass
class RankedCheckpoint:
    """One kept checkpoint: its step and value, and what its save cost."""

    step: int
    value: float
    path: str = ""  # folder name, relative to the output dir
    time: str = ""
    seconds: float = 0.0
    bytes: int = 0


@dataclass
class RankingDecision:
    """What `CheckpointRanking.add` decided: whether to save, and which kept entries fall out."""

    saved: bool
    pruned: list[RankedCheckpoint] = field(default_factory=list)


class CheckpointRanking:
    """Which checkpoints to keep: the `keep` best by value; a value counts only if it beats the best
    so far by more than `min_delta` (NaN/inf never do). The best is never pruned.

    Args:
        mode: "min" (lower is better) or "max".
        keep: how many of the best checkpoints to keep (at least 1).
        min_delta: by how much a value must beat the best so far (finite, >= 0).

    Raises:
        ValueError: `keep`, `mode` or `min_delta` is not valid.

    Example:
        >>> ranking = CheckpointRanking("min", keep=1)
        >>> ranking.add(10, 2.5, path="a").saved
        True
        >>> [e.path for e in ranking.add(20, 2.0, path="b").pruned]
        ['a']
    """

    def __init__(self, mode: Mode = "min", keep: int = 1, min_delta: float = 0.0) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep={keep!r} is not valid: keep at least 1 checkpoint (the best).")
        if not isinstance(min_delta, (int, float)) or not math.isfinite(min_delta) or min_delta < 0:
            raise ValueError(f"min_delta={min_delta!r} is not valid: use a finite number >= 0.")
        self.mode = check_mode(mode, "metric")
        self.keep = keep
        self.min_delta = float(min_delta)
        self.entries: list[RankedCheckpoint] = []  # kept, best first
        self.best_value: float | None = None
        self.best_step: int | None = None

    @property
    def best(self) -> RankedCheckpoint | None:
        return self.entries[0] if self.entries else None

    def improves(self, value: float | None) -> bool:
        return is_improvement(value, self.best_value, self.mode, self.min_delta)

    def _sort(self) -> None:
        sign = 1.0 if self.mode == "min" else -1.0
        # Best value first; among equal values the earlier step (it was the best first).
        self.entries.sort(key=lambda e: (sign * e.value, e.step))

    def add(self, step: int, value: float | None, path: str = "", **info: Any) -> RankingDecision:
        """Offer an evaluation's value. Saved (and ranked) only if it improves; returns the entries
        that fall out of the top `keep` (never the best)."""
        if not self.improves(value):
            return RankingDecision(saved=False)
        entry = RankedCheckpoint(step=int(step), value=float(value), path=path, **info)  # type: ignore[arg-type]
        self.entries.append(entry)
        self.best_value, self.best_step = entry.value, entry.step
        return RankingDecision(saved=True, pruned=self.prune())

    def prune(self) -> list[RankedCheckpoint]:
        self._sort()
        best = self.entries[0] if self.entries else None
        dropped = [e for e in self.entries[self.keep :] if e is not best]
        self.entries = [e for e in self.entries if e not in dropped]
        return dropped

    def remove(self, path: str) -> None:
        self.entries = [e for e in self.entries if e.path != path]

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_value": self.best_value,
            "best_step": self.best_step,
            "entries": [asdict(e) for e in self.entries],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.entries = [RankedCheckpoint(**e) for e in state.get("entries", [])]
        self.best_value = state.get("best_value")
        self.best_step = state.get("best_step")
        self._sort()
        if self.best_value is None and self.entries:
            self.best_value, self.best_step = self.entries[0].value, self.entries[0].step
