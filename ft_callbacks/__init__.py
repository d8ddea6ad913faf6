"""ft_callbacks: monitoring callbacks for the Hugging Face Trainer.

    from ft_callbacks import BestCheckpointSaver, OverfitGuard
    trainer = Trainer(..., callbacks=[OverfitGuard(), BestCheckpointSaver(monitor="eval_perplexity")])

The names a user types:

- callbacks: `OverfitGuard` (exact perplexity, the train/validation gap, early stopping, best weights
  at the end), `BestCheckpointSaver` (a checkpoint only when the monitored metric improves),
  `GenerationScorer` (periodic generation scored with ROUGE, BLEU, BERTScore, task metrics and an LLM
  judge, against a step-0 baseline and the base model's answers), `LabelScorer` (classification,
  regression, multi-label and NER metrics identical to scikit-learn/SciPy/seqeval, by slice),
  `ForgettingGuard` (lm-evaluation-harness scores against the base model's), `MetricThreshold` (stop
  or warn when a metric leaves its range); `FtCallback` to write your own (docs/writing_a_callback.md);
- `Judge` (`Judge.openai(...)`, `Judge.local(...)`, or your own subclass) for GenerationScorer's judge;
- task metrics with options, for `metrics=`: `JsonValid`, `JsonSchema`, `Regex`, `PassAtK`, `Distinct`,
  `SelfBleu`, `Repetition`, `Length`, `Toxicity` (the option-free ones also by name: "json_valid", ...);
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
from .core.code_exec import PassAtK
from .core.diversity import Distinct, Length, Repetition, SelfBleu
from .core.safety import Toxicity
from .core.structured import JsonSchema, JsonValid, Regex
from .core.text_scores import TextScorer, TextScores, score_texts
from .forgetting_guard import ForgettingGuard
from .generation_scorer import GenerationScorer
from .judge import Judge
from .label_scorer import LabelScorer, label_metrics
from .overfit_guard import OverfitGuard
from .publish import EvaluationContext  # noqa: F401  (kept importable from here for earlier users)
from .thresholds import MetricThreshold

__version__ = "0.1.0"

__all__ = [
    "BestCheckpointSaver",
    "ConfigurationError",
    "Distinct",
    "ForgettingGuard",
    "FtCallback",
    "GenerationScorer",
    "JsonSchema",
    "JsonValid",
    "Judge",
    "LabelScorer",
    "Length",
    "MetricThreshold",
    "OverfitGuard",
    "PassAtK",
    "Regex",
    "Repetition",
    "SelfBleu",
    "TextScorer",
    "TextScores",
    "Toxicity",
    "__version__",
    "callbacks_from_config",
    "find_best_checkpoint",
    "infer_mode",
    "label_metrics",
    "last_complete_checkpoint",
    "score_texts",
]
