"""ft_callbacks: monitoring callbacks for the Hugging Face Trainer.

    from ft_callbacks import BestCheckpointSaver, OverfitGuard
    trainer = Trainer(..., callbacks=[OverfitGuard(), BestCheckpointSaver(monitor="eval_perplexity")])

The names a user types:

- callbacks: `OverfitGuard` (exact perplexity, the train/validation gap, early stopping, best weights
  at the end), `BestCheckpointSaver` (a checkpoint only when the monitored metric improves),
  `GenerationScorer` (periodic generation scored with ROUGE, BLEU, BERTScore against a step-0 baseline),
  `LabelScorer` (classification metrics identical to scikit-learn); `FtCallback` to write your own
  (docs/writing_a_callback.md);
- functions: `label_metrics()` (LabelScorer's numbers as a compute_metrics), `score_texts` /
  `TextScorer` (the text scores outside training), `callbacks_from_config` (validated YAML/JSON configs),
  `find_best_checkpoint(output_dir)` (the best saved checkpoint) and `last_complete_checkpoint(output_dir)`
  (the Trainer checkpoint to resume from after a kill), `infer_mode` (a metric's direction);
- `ConfigurationError`, raised before training with the fix in its message.

The `ft-callbacks` command runs the demo, reports, scoring and config checks. The building blocks
(stopping rules, perplexity sums, the checkpoint ranking and store, the evaluation context) live in
`ft_callbacks.core`, `ft_callbacks.checkpoints` and `ft_callbacks.publish`; the older top-level
imports of them keep working.
"""

from .base import ConfigurationError, FtCallback
from .best_checkpoint import BestCheckpointSaver, last_complete_checkpoint
from .best_checkpoint import best_checkpoint as find_best_checkpoint
from .checkpoints import CheckpointRanking  # noqa: F401  (kept importable from here for earlier users)
from .config import callbacks_from_config
from .core import GapRule, OverfitPolicy, PlateauRule, StopDecision, TokenLossTotals, infer_mode  # noqa: F401
from .core.text_scores import TextScorer, TextScores, score_texts
from .generation_scorer import GenerationScorer
from .label_scorer import LabelScorer, label_metrics
from .overfit_guard import OverfitGuard
from .publish import EvaluationContext  # noqa: F401  (kept importable from here for earlier users)

__version__ = "0.1.0"

__all__ = [
    "BestCheckpointSaver",
    "ConfigurationError",
    "FtCallback",
    "GenerationScorer",
    "LabelScorer",
    "OverfitGuard",
    "TextScorer",
    "TextScores",
    "__version__",
    "callbacks_from_config",
    "find_best_checkpoint",
    "infer_mode",
    "label_metrics",
    "last_complete_checkpoint",
    "score_texts",
]
