"""ft_callbacks: monitoring callbacks for the Hugging Face Trainer.

    from ft_callbacks import OverfitGuard
    trainer = Trainer(..., callbacks=[OverfitGuard()])
"""

from .base import ConfigurationError, FtCallback
from .core import GapRule, OverfitPolicy, PlateauRule, StopDecision, TokenLossTotals, infer_mode
from .overfit_guard import OverfitGuard
from .reporting import EvaluationContext

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "EvaluationContext",
    "FtCallback",
    "GapRule",
    "OverfitGuard",
    "OverfitPolicy",
    "PlateauRule",
    "StopDecision",
    "TokenLossTotals",
    "__version__",
    "infer_mode",
]
