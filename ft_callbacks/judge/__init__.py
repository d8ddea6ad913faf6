"""LLM-as-judge for GenerationScorer: pointwise rubric scores and the win rate against the base model.

- `protocol`: the `Judge` protocol (a user's own judge subclasses it) and its request/result types;
- `pairwise`: the win-rate arithmetic (both orders, ties, invalids, Wilson CI, flips, length control);
- `prompts`: versioned judge prompts and the parsing of verdicts and ratings;
- `cache`: the SQLite verdict cache (reruns and resumes make no new calls);
- `rounds`: one judged round through the cache;
- `openai_backend` / `local_backend`: `Judge.openai(...)` and `Judge.local(...)`.
"""

from .protocol import Judge, JudgeBudgetExceeded, PairRequest, Score, ScoreRequest, Verdict

__all__ = ["Judge", "JudgeBudgetExceeded", "PairRequest", "Score", "ScoreRequest", "Verdict"]
