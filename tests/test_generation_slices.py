"""GenerationScorer per slice (#18): scores of each slice of the prompts against a hand computation on that
slice's own generations (ROUGE means, BLEU and distinct-n recomputed), slices too small for a number, the
worst slice named in the console block and the wandb summary, and bad slice settings refused up front."""

from __future__ import annotations

import pytest
import sacrebleu
from datasets import Dataset

from ft_callbacks.core.errors import ConfigurationError
from ft_callbacks.core.text_scores import score_texts
from ft_callbacks.generation_scorer import GenerationScorer

from .helpers import lm_trainer, wandb_records, wandb_summary


def examples(corpus: list[str]) -> Dataset:
    rows = []
    for i, text in enumerate(corpus[:9]):
        words = text.split()
        # 4 "web", 4 "news", 1 "forum" (under min_slice_size: count only)
        source = "forum" if i == 8 else ("web" if i % 2 else "news")
        rows.append({"prompt": " ".join(words[:5]), "reference": " ".join(words[5:15]) or "-", "source": source})
    return Dataset.from_list(rows)


def test_scores_per_slice_equal_a_hand_computation(tokenizer, corpus, tmp_path, wandb_offline, capsys, caplog):
    data = examples(corpus)
    scorer = GenerationScorer(dataset=data, metrics=("rouge", "bleu", "distinct"), slice_by="source",
                              min_slice_size=2, num_samples=None, max_new_tokens=10, background=False)  # fmt: skip
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [scorer], max_steps=150, eval_steps=150, report_to="wandb")
    trainer.train()
    entry = next(e for e in trainer.state.log_history if e.get("step") == 150 and "eval_rougeL" in e)
    rows = [r for r in scorer.table_rows if r[0] == 150]
    sources = list(data["source"])
    assert scorer.slice_names == sources
    for name in ("web", "news"):
        mine = [i for i, s in enumerate(sources) if s == name]
        predictions = [rows[i][3] for i in mine]
        references = [data[i]["reference"] for i in mine]
        assert [rows[i][2] for i in mine] == references
        expected = score_texts(predictions, references, metrics=("rouge", "distinct"))
        assert entry[f"eval_slice_{name}_count"] == len(mine)
        for metric in ("rouge1", "rougeL", "distinct_1", "distinct_2"):
            assert entry[f"eval_slice_{name}_{metric}"] == pytest.approx(expected[metric], abs=1e-12), (name, metric)
        bleu = sacrebleu.corpus_bleu(predictions, [references]).score
        assert entry[f"eval_slice_{name}_bleu"] == pytest.approx(bleu, abs=1e-9), name
    # The slice under min_slice_size: its count, no numbers.
    assert entry["eval_slice_forum_count"] == 1
    assert not [k for k in entry if k.startswith("eval_slice_forum_") and not k.endswith("_count")]
    # The model has learnt its training texts unevenly: the slices differ, and neither is all zeros.
    assert 0 < entry["eval_slice_news_rougeL"] != entry["eval_slice_web_rougeL"] > 0
    worst = min(("web", "news"), key=lambda n: (entry[f"eval_slice_{n}_rougeL"], n == "web"))
    out = capsys.readouterr().out + caplog.text
    assert f"step 150 | rougeL by slice (source): worst {worst!r}" in out
    assert "forum (n=1): too small (< 2)" in out
    import wandb

    wandb.finish()
    records = wandb_records(wandb_offline)
    summary = wandb_summary(records)
    assert summary.get("worst_slice/eval_rougeL") == worst, summary
    history = [r["history"]["item"] for r in records if r.get("type") == "history"]
    assert any(r.get("eval/slices.nrows") == 3 for r in history)


def test_a_function_slices_prompt_lists(tokenizer, corpus, tmp_path):
    prompts = [" ".join(t.split()[:5]) for t in corpus[:8]]
    references = [" ".join(t.split()[5:15]) or "-" for t in corpus[:8]]

    def length(example):
        return "long" if len(example["reference"].split()) >= 10 else "short"

    scorer = GenerationScorer(prompts, references, metrics=("rouge",), slice_by=length, min_slice_size=1,
                              num_samples=None, max_new_tokens=8, background=False, baseline=False)  # fmt: skip
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [scorer], max_steps=100, eval_steps=100, report_to="none")
    trainer.train()
    assert scorer.slice_names == [length({"reference": r}) for r in references]
    entry = next(e for e in trainer.state.log_history if "eval_rougeL" in e)
    rows = scorer.table_rows
    for name in set(scorer.slice_names):
        mine = [i for i, s in enumerate(scorer.slice_names) if s == name]
        expected = score_texts([rows[i][3] for i in mine], [references[i] for i in mine], metrics=("rouge",))
        assert entry[f"eval_slice_{name}_rougeL"] == pytest.approx(expected["rougeL"], abs=1e-12)


def test_bad_slice_settings_are_refused_at_construction(corpus):
    data = examples(corpus)
    with pytest.raises(ConfigurationError, match="no such column"):
        GenerationScorer(dataset=data, slice_by="domain")
    with pytest.raises(ConfigurationError, match="prompts= lists"):
        GenerationScorer(["a b"], ["c"], slice_by="source")
    with pytest.raises(ConfigurationError, match="slice_by=3 is not valid"):
        GenerationScorer(["a b"], ["c"], slice_by=3)
    with pytest.raises(ConfigurationError, match="min_slice_size=0"):
        GenerationScorer(["a b"], ["c"], slice_by="reference", min_slice_size=0)


def test_judge_scores_per_slice_and_per_sample(tokenizer, corpus, tmp_path):
    from .test_judge_scorer import WordOverlap

    prompts = [" ".join(t.split()[:5]) for t in corpus[:8]]
    references = [" ".join(t.split()[5:15]) or "-" for t in corpus[:8]]
    halves = {p: ("first" if i < 4 else "second") for i, p in enumerate(prompts)}
    scorer = GenerationScorer(prompts, references, metrics=("rouge",), judge=WordOverlap(), num_samples=None,
                              slice_by=lambda ex: halves[ex["prompt"]], min_slice_size=2, max_new_tokens=8,
                              background=False, baseline=False)  # fmt: skip
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [scorer], max_steps=100, eval_steps=100, report_to="none")
    trainer.train()
    entry = next(e for e in trainer.state.log_history if "eval_judge_score" in e)
    generations = [row[3] for row in scorer.table_rows]
    # The judge's score of each sample, by hand: 1 + 9 x the share of the reference's words it has.
    by_hand = [1 + 9 * WordOverlap.overlap(g, r) for g, r in zip(generations, references, strict=True)]
    assert entry["eval_judge_score"] == pytest.approx(sum(by_hand) / 8)
    for name, part in (("first", by_hand[:4]), ("second", by_hand[4:])):
        assert entry[f"eval_slice_{name}_judge_score"] == pytest.approx(sum(part) / 4), name
    values, _ = scorer.per_sample_values("eval_judge_score", entry["step"])
    assert values == pytest.approx(by_hand)
