"""ft_callbacks: monitoring callbacks for the Hugging Face Trainer.

    from ft_callbacks import BestCheckpointSaver, OverfitGuard
    trainer = Trainer(..., callbacks=[OverfitGuard(), BestCheckpointSaver(monitor="eval_perplexity")])

`ft_callbacks.best_checkpoint.best_checkpoint(output_dir)` finds the best saved checkpoint.
"""

from .base import ConfigurationError, FtCallback
from .best_checkpoint import BestCheckpointSaver, CheckpointRanking
from .core import GapRule, OverfitPolicy, PlateauRule, StopDecision, TokenLossTotals, infer_mode
from .label_scorer import LabelScorer, label_metrics
from .overfit_guard import OverfitGuard
from .reporting import EvaluationContext

__version__ = "0.1.0"

__all__ = [
    "BestCheckpointSaver",
    "CheckpointRanking",
    "ConfigurationError",
    "EvaluationContext",
    "FtCallback",
    "GapRule",
    "LabelScorer",
    "OverfitGuard",
    "OverfitPolicy",
    "PlateauRule",
    "StopDecision",
    "TokenLossTotals",
    "__version__",
    "infer_mode",
    "label_metrics",
]
