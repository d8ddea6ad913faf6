"""GenerationScorer offers its per-sample scores to OverfitGuard's noise test (#19): a real run monitoring
`eval_rougeL` gets the paired test (no fall-back notice), and `eval_bleu` (corpus-level, not a mean of
per-sample values) falls back to counting, saying so once."""

from __future__ import annotations

import pytest

from ft_callbacks.generation_scorer import GenerationScorer
from ft_callbacks.overfit_guard import OverfitGuard

from .helpers import lm_trainer

FALLBACK = "OverfitGuard's noise test: {} has no per-sample values"


def pairs(corpus: list[str], count: int = 8) -> tuple[list[str], list[str]]:
    prompts = [" ".join(t.split()[:5]) for t in corpus[:count]]
    references = [" ".join(t.split()[5:15]) or "-" for t in corpus[:count]]
    return prompts, references


def run(tokenizer, corpus, output_dir, monitor: str) -> tuple[GenerationScorer, OverfitGuard, object]:
    prompts, references = pairs(corpus)
    scorer = GenerationScorer(prompts, references, metrics=("rouge", "bleu"), max_new_tokens=10, background=False,
                              baseline=False)  # fmt: skip
    guard = OverfitGuard(noise_test=True, patience=None, plateau_patience=50, monitor=monitor,
                         restore_best_weights=False)  # fmt: skip
    trainer = lm_trainer(tokenizer, corpus, output_dir, [scorer, guard], max_steps=30, eval_steps=10,
                         report_to="none")  # fmt: skip
    trainer.train()
    return scorer, guard, trainer


def test_rouge_gets_the_paired_noise_test(tokenizer, corpus, tmp_path, capsys, caplog):
    scorer, guard, trainer = run(tokenizer, corpus, tmp_path, "eval_rougeL")
    out = capsys.readouterr().out + caplog.text
    assert FALLBACK.format("eval_rougeL") not in out
    # Every evaluation was judged by the paired test on the scorer's per-sample ROUGE-L.
    assert guard.policy.monitor_obs is not None and guard.policy.noise_fallback == []
    assert "no improvement beyond noise" in out
    values, weights = scorer.per_sample_values("eval_rougeL", 30)
    assert weights is None and len(values) == 8
    last = [e for e in trainer.state.log_history if "eval_rougeL" in e][-1]
    assert last["step"] == 30 and sum(values) / len(values) == pytest.approx(last["eval_rougeL"], abs=1e-12)
    # The very values of the samples table (column rougeL) at that step.
    column = scorer._table_columns.index("rougeL")
    assert values == [row[column] for row in scorer.table_rows if row[0] == 30]
    assert guard.policy.monitor_obs.mean == pytest.approx(last["eval_rougeL"], abs=1e-12)
    # Another step, another prefix, or a corpus-level metric: nothing to pair.
    assert scorer.per_sample_values("eval_rougeL", 20) is None
    assert scorer.per_sample_values("test_rougeL", 30) is None
    assert scorer.per_sample_values("eval_bleu", 30) is None


def test_bleu_falls_back_with_the_notice(tokenizer, corpus, tmp_path, capsys, caplog):
    _, guard, _ = run(tokenizer, corpus, tmp_path, "eval_bleu")
    out = capsys.readouterr().out + caplog.text
    assert FALLBACK.format("eval_bleu") in out
    assert guard.policy.monitor_obs is None and guard.policy.noise_fallback == ["plateau"]
