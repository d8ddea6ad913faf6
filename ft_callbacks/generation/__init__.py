"""The pieces generation-based callbacks are built from, each usable without a Trainer where it can be:

- `PromptSet` (prompt_set.py): prompts and references from lists, dataset columns, tokenised examples or
  chat messages; checked when built; a seeded sample, encoded and fitted to the model's context;
- `ShardedGenerator`, `generate_sharded` / `generate_batched` (sharded_generate.py): batched generation,
  each rank a share, texts gathered on every rank; the settings (greedy, or a Seq2SeqTrainer's own) and
  `PredictionCapture`, which reuses a Seq2SeqTrainer's own predict_with_generate texts;
- `ReferenceScorer` (reference_scores.py): text metrics (TextScorer) and label metrics of the texts
  against the references;
- `ScoringQueue` (scoring_queue.py): a bounded queue of scoring rounds on a daemon thread, drained in
  order, with timeouts and one line for what is dropped;
- `JudgeOptions` (judging.py): the judge's part of a round: the base model's outputs (kept with a
  fingerprint), judged rounds on rank 0 through the verdict cache, the samples table and pairs.jsonl.

`GenerationScorer` is the callback over them.
"""

from .judging import PAIRS_FILE_FIELDS, JudgeOptions
from .prompt_set import PromptSet, model_context
from .reference_scores import ReferenceScorer
from .scoring_queue import MAX_QUEUED_ROUNDS, QueuedRound, ScoringQueue
from .sharded_generate import (
    GenerationFailed,
    PredictionCapture,
    ShardedGenerator,
    generate_batched,
    generate_sharded,
    generation_settings,
    is_seq2seq_args,
    model_generation_config,
    trainer_generation_config,
)

__all__ = [
    "MAX_QUEUED_ROUNDS",
    "PAIRS_FILE_FIELDS",
    "GenerationFailed",
    "JudgeOptions",
    "PredictionCapture",
    "PromptSet",
    "QueuedRound",
    "ReferenceScorer",
    "ScoringQueue",
    "ShardedGenerator",
    "generate_batched",
    "generate_sharded",
    "generation_settings",
    "is_seq2seq_args",
    "model_context",
    "model_generation_config",
    "trainer_generation_config",
]
