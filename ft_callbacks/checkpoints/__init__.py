"""Best checkpoints without a Trainer: which to keep (`ranking`) and the directory they live in (`store`).

`BestCheckpointSaver` (ft_callbacks.best_checkpoint) decides when to save; everything about writing,
the manifest, recovery and the lock is here. Reading weights back is in `ft_callbacks.engines`.
"""

from .ranking import CheckpointRanking, RankedCheckpoint, RankingDecision
from .store import (
    INFO_FILE,
    LOCK_FILE,
    MANIFEST,
    MANIFEST_VERSION,
    PROBE_BYTES,
    TMP_PREFIX,
    CheckpointStore,
    best_checkpoint,
    checkpoint_name,
    last_complete_checkpoint,
    read_manifest,
)

__all__ = [
    "INFO_FILE",
    "LOCK_FILE",
    "MANIFEST",
    "MANIFEST_VERSION",
    "PROBE_BYTES",
    "TMP_PREFIX",
    "CheckpointRanking",
    "CheckpointStore",
    "RankedCheckpoint",
    "RankingDecision",
    "best_checkpoint",
    "checkpoint_name",
    "last_complete_checkpoint",
    "read_manifest",
]
