"""ft_callbacks: monitoring callbacks for the Hugging Face Trainer.

    from ft_callbacks import BestCheckpointSaver, OverfitGuard
    trainer = Trainer(..., callbacks=[OverfitGuard(), BestCheckpointSaver(monitor="eval_perplexity")])

Also: `GenerationScorer` (periodic generation scored with ROUGE, BLEU, BERTScore against a step-0
baseline), `LabelScorer` / `label_metrics()` (classification metrics identical to scikit-learn),
`score_texts` / `TextScorer` (the same text scores outside training), `callbacks_from_config`
(validated YAML/JSON configs). `ft_callbacks.best_checkpoint.best_checkpoint(output_dir)` finds the
best saved checkpoint, `last_complete_checkpoint(output_dir)` the Trainer checkpoint to resume from
after a kill; the `ft-callbacks` command runs the demo, reports, scoring and config checks.
"""

from .base import ConfigurationError, FtCallback
from .best_checkpoint import BestCheckpointSaver, CheckpointRanking, last_complete_checkpoint
from .config import callbacks_from_config
from .core import GapRule, OverfitPolicy, PlateauRule, StopDecision, TokenLossTotals, infer_mode
from .core.text_scores import TextScorer, TextScores, score_texts
from .generation_scorer import GenerationScorer
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
    "GenerationScorer",
    "LabelScorer",
    "OverfitGuard",
    "OverfitPolicy",
    "PlateauRule",
    "StopDecision",
    "TextScorer",
    "TextScores",
    "TokenLossTotals",
    "__version__",
    "callbacks_from_config",
    "infer_mode",
    "label_metrics",
    "last_complete_checkpoint",
    "score_texts",
]
