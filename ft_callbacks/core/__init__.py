"""Framework-free core: stopping rules, perplexity sums, metric directions. No Trainer imports here."""

from .errors import ConfigurationError
from .modes import infer_mode, is_improvement
from .perplexity import TokenLossTotals, per_sample_nll
from .stopping import DivergenceRule, GapRule, OverfitPolicy, PlateauRule, StopDecision

__all__ = [
    "ConfigurationError",
    "DivergenceRule",
    "GapRule",
    "OverfitPolicy",
    "PlateauRule",
    "StopDecision",
    "TokenLossTotals",
    "infer_mode",
    "is_improvement",
    "per_sample_nll",
]
