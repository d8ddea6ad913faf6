"""GenerationScorer with a judge in real tiny Trainer runs: base outputs at step 0 kept with a fingerprint,
pointwise scores and the win rate in log_history and wandb (read back offline), the judge samples table,
the pairs file, a resume from a checkpoint that regenerates nothing and asks the judge nothing."""

from __future__ import annotations

import json

import pytest
import wandb

from ft_callbacks import GenerationScorer
from ft_callbacks.core.errors import ConfigurationError
from ft_callbacks.judge import Judge, Score, Verdict

from .helpers import lm_trainer, wandb_history, wandb_records


class WordOverlap(Judge):
    """Prefers the answer sharing more words with the reference; scores 1 + 9 x that share. Counts questions."""

    def __init__(self):
        self.asked = {"score": 0, "pair": 0}

    @staticmethod
    def overlap(text, reference):
        ref = set(reference.split())
        return len(ref & set(text.split())) / max(1, len(ref))

    def compare_one(self, request):
        self.asked["pair"] += 1
        return Verdict(self.prefer(request.output_a, request.output_b, request.reference), rationale="overlap, length")

    @classmethod
    def prefer(cls, a, b, reference):
        """More of the reference's words; at equal overlap the shorter (more concise) answer; else a tie."""
        key_a, key_b = (cls.overlap(a, reference), -len(a)), (cls.overlap(b, reference), -len(b))
        return "A" if key_a > key_b else "B" if key_b > key_a else "tie"

    def score_one(self, request):
        self.asked["score"] += 1
        value = 1 + 9 * self.overlap(request.output, request.reference)
        return Score(value, criteria={c: value for c in request.rubric})


class Gibberish(Judge):
    def compare_one(self, request):
        return Verdict(None, raw="zxq zxq")


def prompt_pairs(corpus, count=12):
    prompts, references = [], []
    for text in corpus[:count]:
        words = text.split()
        prompts.append(" ".join(words[:6]))
        references.append(" ".join(words[6:20]) or words[-1])
    return prompts, references


def scorer(corpus, judge, **options):
    prompts, references = prompt_pairs(corpus)
    settings = {"background": False, **options}
    return GenerationScorer(prompts, references, metrics=("rouge",), num_samples=6, max_new_tokens=12, judge=judge,
                            rubric="helpfulness, correctness", win_rate=True, **settings)  # fmt: skip


def test_win_rate_and_scores_over_a_run_and_a_resume(tokenizer, corpus, tmp_path, wandb_offline):
    judge = WordOverlap()
    gen = scorer(corpus, judge)
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [gen], max_steps=40, eval_steps=20, save_strategy="steps",
                         save_steps=20, learning_rate=1e-2)  # fmt: skip
    trainer.train()
    rounds = {e["step"]: e for e in trainer.state.log_history if "eval_rougeL" in e}
    assert sorted(rounds) == [0, 20, 40]
    assert "eval_win_rate" not in rounds[0] and rounds[0]["eval_judge_score"] >= 1  # the base's own score
    for step in (20, 40):
        entry = rounds[step]
        assert "eval_loss" in entry  # beside the Trainer's own numbers
        for key in ("eval_win_rate", "eval_tie_rate", "eval_win_rate_ci_low", "eval_win_rate_ci_high",
                    "eval_judge_flip_rate", "eval_length_ratio", "eval_win_rate_lc", "eval_judge_invalid_rate",
                    "eval_judge_score", "eval_judge_helpfulness", "eval_judge_correctness"):  # fmt: skip
            assert key in entry, key
        delta = entry["eval_judge_score"] - rounds[0]["eval_judge_score"]
        assert entry["eval_judge_score_delta"] == pytest.approx(delta)
        assert entry["eval_win_rate_ci_low"] <= entry["eval_win_rate"] <= entry["eval_win_rate_ci_high"]
        assert entry["eval_judge_flip_rate"] == 0 and entry["eval_judge_invalid_rate"] == 0  # a consistent judge
    # Questions: 6 scores per round (3 rounds) and 2 orders x 6 pairs per trained round; a question asked
    # before (the same texts again) comes from the cache.
    usage = gen._judging.usage
    assert usage["judge_asked"] + usage["judge_cached"] == 18 + 24
    assert judge.asked["score"] + judge.asked["pair"] == usage["judge_asked"]
    # The base outputs: saved with a fingerprint, equal to what the model generated at step 0.
    out = tmp_path / "ft_callbacks"
    base = json.loads((out / "base" / "judge_outputs.json").read_text())
    assert len(base["fingerprint"]) == 16
    pairs = [json.loads(line) for line in (out / "judge" / "pairs.jsonl").read_text().splitlines()]
    assert [p["step"] for p in pairs] == [20] * 6 + [40] * 6
    assert [p["base_output"] for p in pairs[:6]] == base["results"]
    step0 = [row[3] for row in gen.table_rows if row[0] == 0]
    assert step0 == base["results"]
    # Each final verdict is the judge's rule applied to the texts the file holds (right texts, right sides).
    side = {"A": "current", "B": "base", "tie": "tie"}
    assert [p["final_verdict"] for p in pairs] == [
        side[WordOverlap.prefer(p["current_output"], p["base_output"], p["reference"])] for p in pairs]
    wins = sum(p["final_verdict"] == "current" for p in pairs[6:])
    ties = sum(p["final_verdict"] == "tie" for p in pairs[6:])
    assert rounds[40]["eval_win_rate"] == pytest.approx((wins + 0.5 * ties) / 6)
    # wandb (offline, read back): the numbers on the eval charts, the samples table, the usage in the summary.
    wandb.finish()
    history = wandb_history(wandb_offline)
    logged = [r for r in history if "eval/win_rate" in r]
    assert [json.loads(r["eval/win_rate"]) if isinstance(r["eval/win_rate"], str) else r["eval/win_rate"]
            for r in logged] == pytest.approx([rounds[20]["eval_win_rate"], rounds[40]["eval_win_rate"]])  # fmt: skip
    tables = [r["eval/judge_samples.nrows"] for r in history if "eval/judge_samples.nrows" in r]
    assert tables == [6, 12, 18]  # one growing table: the base's scores at step 0, then each round's pairs
    summary = [r for r in wandb_records(wandb_offline) if r.get("type") == "summary"]
    assert any("judge_asked" in json.dumps(s) for s in summary)

    # Resume from the step-20 checkpoint with a new judge object: the base outputs are reused (a full
    # fine-tune's weights at step 20 are not the base any more), every question comes from the cache.
    again = WordOverlap()
    resumed = lm_trainer(tokenizer, corpus, tmp_path, [scorer(corpus, again)], max_steps=40, eval_steps=20,
                         save_strategy="steps", save_steps=20)  # fmt: skip
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-20"))
    assert again.asked == {"score": 0, "pair": 0}
    after = {e["step"]: e for e in resumed.state.log_history if "eval_win_rate" in e}
    assert after[40]["eval_win_rate"] == pytest.approx(rounds[40]["eval_win_rate"])
    pairs_after = [json.loads(line) for line in (out / "judge" / "pairs.jsonl").read_text().splitlines()]
    assert [p["step"] for p in pairs_after] == [20] * 6 + [40] * 6  # the step-40 round replaced, not doubled
    assert json.loads((out / "base" / "judge_outputs.json").read_text()) == base

    # The human check on this run (`ft-callbacks compare`): the page shows the step-40 pairs the judge saw;
    # a person who agrees with the judge everywhere gets its win rate and a kappa of 1.
    from ft_callbacks.cli import main

    assert main(["compare", str(tmp_path)]) == 0
    key = json.loads((out / "human" / "compare-step-40.key.json").read_text())
    page = (out / "human" / "compare-step-40.html").read_text()
    shown = json.loads(page.split('<script type="application/json" id="data">')[1].split("</script>")[0])
    judged = [{p["current_output"], p["base_output"]} for p in pairs_after[6:]]
    assert [{x["a"], x["b"]} for x in shown["pairs"]] == judged
    to_side = {"tie": lambda k: "tie", "current": lambda k: "A" if k["a"] == "current" else "B",
               "base": lambda k: "A" if k["a"] == "base" else "B"}  # fmt: skip
    choices = {f"p{i}": to_side[p["final_verdict"]](key["pairs"][f"p{i}"]) for i, p in enumerate(pairs_after[6:])}
    chosen = tmp_path / "choices.json"
    chosen.write_text(json.dumps({"page": key["page"], "step": 40, "choices": choices}))
    assert main(["compare", str(tmp_path), "--import", str(chosen)]) == 0
    human = json.loads((out / "human_eval.json").read_text())[0]
    assert human["win_rate"] == pytest.approx(rounds[40]["eval_win_rate"])
    assert human["judge_agreement"] == 1.0 and human["judge_pairs"] == 6


def test_other_settings_after_resume_mean_no_win_rate_not_a_base_from_trained_weights(tokenizer, corpus, tmp_path,
                                                                                      capsys):  # fmt: skip
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [scorer(corpus, WordOverlap())], max_steps=20, eval_steps=20,
                         save_strategy="steps", save_steps=10, report_to="none")  # fmt: skip
    trainer.train()
    prompts, references = prompt_pairs(corpus)
    other = GenerationScorer(prompts, references, metrics=("rouge",), num_samples=6, max_new_tokens=9,
                             background=False, judge=WordOverlap(), win_rate=True)  # fmt: skip
    resumed = lm_trainer(tokenizer, corpus, tmp_path, [other], max_steps=20, eval_steps=20, report_to="none")
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-10"))
    assert "no win rate in this run" in capsys.readouterr().out
    after = [e for e in resumed.state.log_history if e.get("step") == 20 and "eval_rougeL" in e]
    assert after and all("eval_win_rate" not in e for e in after)  # generation scores go on, no win rate
    assert json.loads((tmp_path / "ft_callbacks" / "base" / "judge_outputs.json").read_text())["fingerprint"]


def test_invalid_verdicts_skip_the_round_loudly_and_training_goes_on(tokenizer, corpus, tmp_path, capsys):
    gen = GenerationScorer(*prompt_pairs(corpus), metrics=("rouge",), num_samples=4, max_new_tokens=8,
                           background=False, judge=Gibberish(), win_rate=True)  # fmt: skip
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [gen], max_steps=20, eval_steps=10, report_to="none")
    trainer.train()
    entries = [e for e in trainer.state.log_history if "eval_rougeL" in e and e["step"] > 0]
    assert [e["step"] for e in entries] == [10, 20]
    assert all("eval_win_rate" not in e and e["eval_judge_invalid_rate"] == 1.0 for e in entries)
    assert "100% of the judge's verdicts were invalid" in capsys.readouterr().out


def test_baseline_generations_from_another_model(tokenizer, corpus, tmp_path):
    prompts, references = prompt_pairs(corpus, 6)
    judge = WordOverlap()
    gen = GenerationScorer(prompts, references, metrics=("rouge",), num_samples=None, max_new_tokens=8,
                           background=False, judge=judge, win_rate=True, baseline_generations=references)
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [gen], max_steps=10, eval_steps=10, report_to="none")
    trainer.train()
    entry = next(e for e in trainer.state.log_history if "eval_win_rate" in e)
    assert entry["eval_win_rate"] <= 0.5  # the references themselves are hard to beat on their own words
    assert not (tmp_path / "ft_callbacks" / "base" / "judge_outputs.json").exists()


def test_bad_judge_options_are_refused_at_construction(corpus):
    prompts, references = prompt_pairs(corpus, 4)
    with pytest.raises(ConfigurationError, match="not a judge"):
        GenerationScorer(prompts, references, judge=lambda a, b: "A")
    with pytest.raises(ConfigurationError, match="need a judge"):
        GenerationScorer(prompts, references, win_rate=True)
    with pytest.raises(ConfigurationError, match="scores answers"):
        GenerationScorer(prompts, references, judge=Gibberish(), rubric="tone")
    with pytest.raises(ConfigurationError, match="max_invalid_rate"):
        GenerationScorer(prompts, references, judge=Gibberish(), win_rate=True, max_invalid_rate=2)
    with pytest.raises(ConfigurationError, match="set win_rate=True"):
        GenerationScorer(prompts, references, judge=Gibberish(), baseline_generations=["x"] * 4)
    with pytest.raises(ConfigurationError, match="only compares two answers"):
        GenerationScorer(prompts, references, judge=Gibberish())


def test_standalone_evaluate_gets_pointwise_scores(tokenizer, corpus, tmp_path):
    judge = WordOverlap()
    gen = scorer(corpus, judge)
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [gen], report_to="none")
    metrics = trainer.evaluate()
    assert 1 <= metrics["eval_judge_score"] <= 10 and "eval_win_rate" not in metrics  # no base outputs without train()
    assert judge.asked == {"score": 6, "pair": 0}


def test_judging_in_the_background_thread_lands_at_its_step(tokenizer, corpus, tmp_path):
    import threading

    threads = set()

    class Where(WordOverlap):
        def compare_one(self, request):
            threads.add(threading.current_thread().name)
            return super().compare_one(request)

    gen = scorer(corpus, Where(), background=True)
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [gen], max_steps=30, eval_steps=10, report_to="none")
    trainer.train()
    entries = [e for e in trainer.state.log_history if "eval_win_rate" in e]
    assert [e["step"] for e in entries] == [10, 20, 30] and all("eval_loss" in e for e in entries)
    assert threads and threading.main_thread().name not in threads  # judged off the training thread
