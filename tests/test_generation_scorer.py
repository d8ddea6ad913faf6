"""GenerationScorer in real tiny-model Trainer runs: real generation, scores equal to the reference
libraries on the very generations, a step-0 baseline and deltas, tables in wandb (offline)."""

from __future__ import annotations

import math

import pytest
import torch
import wandb
from datasets import Dataset
from rouge_score import rouge_scorer
from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainer, Seq2SeqTrainingArguments, TrainerCallback

from ft_callbacks import BestCheckpointSaver, ConfigurationError, GenerationScorer, toy

from .helpers import lm_trainer, wandb_history

NUM_SAMPLES = 8


def prompt_pairs(corpus: list[str], count: int = 24) -> tuple[list[str], list[str]]:
    """Prompts (first words of a docstring of the train set) and references (the words that follow)."""
    prompts, references = [], []
    for text in corpus[:count]:
        words = text.split()
        prompts.append(" ".join(words[:6]))
        references.append(" ".join(words[6:20]) or words[-1])
    return prompts, references


class PaddingWatch(TrainerCallback):
    """Records the tokenizer's padding side at every step."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.padding_sides: set[str] = set()

    def on_step_begin(self, args, state, control, **kwargs):
        self.padding_sides.add(self.tokenizer.padding_side)


def rouge_reference(predictions: list[str], references: list[str]) -> dict[str, float]:
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    scores = [scorer.score(r, p) for p, r in zip(predictions, references, strict=True)]
    return {k: sum(s[k].fmeasure for s in scores) / len(scores) for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")}


def test_decoder_only_baseline_scores_deltas_and_tables(tokenizer, corpus, tmp_path, wandb_offline):
    prompts, references = prompt_pairs(corpus)
    scorer = GenerationScorer(prompts, references, metrics=("rouge", "bleu"), num_samples=NUM_SAMPLES,
                              max_new_tokens=20, num_lowest=3)  # fmt: skip
    side = tokenizer.padding_side
    watch = PaddingWatch(tokenizer)
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [scorer, watch], max_steps=150, eval_steps=50,
                         report_to="wandb")  # fmt: skip
    trainer.train()
    # The tokenizer's padding side never changed (prompts are padded by hand, left for decoder-only).
    assert watch.padding_sides == {side} and tokenizer.padding_side == side
    # A baseline at step 0, then one round per evaluation.
    rounds = [e for e in trainer.state.log_history if "eval_rougeL" in e]
    assert [e["step"] for e in rounds] == [0, 50, 100, 150]
    baseline = rounds[0]
    for entry in rounds[1:]:
        assert "eval_loss" in entry  # merged into the Trainer's own entry for that evaluation
        for name in ("rouge1", "rougeL", "bleu"):
            assert entry[f"eval_{name}_delta"] == pytest.approx(entry[f"eval_{name}"] - baseline[f"eval_{name}"])
    # The model memorises its training texts: the continuation scores rise well above the baseline.
    assert rounds[-1]["eval_rougeL"] > baseline["eval_rougeL"] + 0.1
    # The numbers equal rouge-score's and sacreBLEU's on the very texts that were generated (table rows).
    last = [row for row in scorer.table_rows if row[0] == 150]
    assert len(last) == NUM_SAMPLES
    generations, refs = [row[3] for row in last], [row[2] for row in last]
    assert set(refs) <= set(references)
    for name, value in rouge_reference(generations, refs).items():
        assert rounds[-1][f"eval_{name}"] == pytest.approx(value, abs=1e-12), name
    import sacrebleu

    assert rounds[-1]["eval_bleu"] == pytest.approx(sacrebleu.corpus_bleu(generations, [refs]).score, abs=1e-9)
    # The prompt is stripped: generations are continuations, not prompt + continuation.
    prompt_of = dict(zip(references, prompts, strict=True))
    assert not any(g.startswith(prompt_of[r]) for g, r in zip(generations, refs, strict=True) if g)
    # wandb: scores on the Trainer's step axis, a samples table that grows, the lowest-k table.
    wandb.finish()
    rows = [r for r in wandb_history(wandb_offline) if "eval/rougeL" in r]
    assert [r["train/global_step"] for r in rows] == [0, 50, 100, 150]
    assert [r["eval/generation_samples.nrows"] for r in rows] == [8, 16, 24, 32]
    assert all(r["eval/generation_lowest.nrows"] == 3 for r in rows)
    assert rows[-1]["eval/rougeL_delta"] == pytest.approx(rounds[-1]["eval_rougeL_delta"])


def test_scores_drive_best_checkpoint_synchronously(tokenizer, corpus, tmp_path):
    """A monitor on a generation metric makes scoring wait, so the saver sees it at that evaluation."""
    prompts, references = prompt_pairs(corpus)
    saver = BestCheckpointSaver(monitor="eval_rougeL", keep=1)
    scorer = GenerationScorer(prompts, references, metrics=("rouge",), num_samples=NUM_SAMPLES, max_new_tokens=16)
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [saver, scorer], max_steps=100, eval_steps=50)
    trainer.train()
    assert scorer._sync
    values = [e["eval_rougeL"] for e in trainer.state.log_history if "eval_rougeL" in e and "eval_loss" in e]
    assert len(values) == 2
    assert saver.ranking.best is not None and saver.ranking.best.value == pytest.approx(max(values))


def test_encoder_decoder_from_a_tokenised_dataset(tokenizer, corpus, tmp_path):
    prompts, references = prompt_pairs(corpus, 16)
    enc = tokenizer(prompts)
    labels = [[*ids, tokenizer.eos_token_id] for ids in tokenizer(references)["input_ids"]]
    data = Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels})
    scorer = GenerationScorer(dataset=data, metrics=("rouge", "exact_match"), num_samples=6, max_new_tokens=16)
    model = toy.tiny_t5(tokenizer)
    args = Seq2SeqTrainingArguments(
        output_dir=str(tmp_path), max_steps=40, eval_strategy="steps", eval_steps=20, per_device_train_batch_size=8,
        learning_rate=3e-3, report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no",
    )  # fmt: skip
    trainer = Seq2SeqTrainer(
        model=model, args=args, train_dataset=data, eval_dataset=data, processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model), callbacks=[scorer],
    )  # fmt: skip
    trainer.train()
    rounds = [e for e in trainer.state.log_history if "eval_rouge1" in e]
    assert [e["step"] for e in rounds] == [0, 20, 40]
    assert all(0.0 <= e["eval_exact_match"] <= 1.0 for e in rounds)
    last = [row for row in scorer.table_rows if row[0] == 40]
    assert len(last) == 6 and set(row[2] for row in last) <= set(references)
    value = rouge_reference([r[3] for r in last], [r[2] for r in last])["rouge1"]
    assert rounds[-1]["eval_rouge1"] == pytest.approx(value, abs=1e-12)


def test_prompts_from_causal_examples_whose_labels_mask_the_prompt(tokenizer, corpus, tmp_path):
    prompts, references = prompt_pairs(corpus, 12)
    rows = {"input_ids": [], "labels": []}
    for p, r in zip(prompts, references, strict=True):
        p_ids, r_ids = tokenizer(p)["input_ids"], tokenizer(" " + r)["input_ids"] + [tokenizer.eos_token_id]
        rows["input_ids"].append(p_ids + r_ids)
        rows["labels"].append([-100] * len(p_ids) + r_ids)
    scorer = GenerationScorer(dataset=Dataset.from_dict(rows), metrics=("rouge",), num_samples=None, max_new_tokens=8)
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [scorer], max_steps=10, eval_steps=10)
    trainer.train()
    assert [p for p in scorer._prompt_texts] == [tokenizer.decode(tokenizer(p)["input_ids"]) for p in prompts]
    assert [r.strip() for r in scorer._references] == references
    assert len([e for e in trainer.state.log_history if "eval_rouge1" in e]) == 2


def test_peft_lora_model_generates_and_is_scored(tokenizer, corpus, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(toy.tiny_gpt2(tokenizer), LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True))
    prompts, references = prompt_pairs(corpus, 8)
    scorer = GenerationScorer(prompts, references, metrics=("rouge",), max_new_tokens=8)
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [scorer], model=model, max_steps=10, eval_steps=10,
                         label_names=["labels"])  # fmt: skip
    trainer.train()
    assert [e["step"] for e in trainer.state.log_history if "eval_rouge1" in e] == [0, 10]


def test_a_failing_scorer_does_not_stop_training(tokenizer, corpus, tmp_path, capsys):
    calls = []

    def broken(predictions, references):
        calls.append(len(predictions))
        raise MemoryError("simulated out of memory in a metric")

    prompts, references = prompt_pairs(corpus, 8)
    scorer = GenerationScorer(prompts, references, metrics=(broken, "exact_match"), max_new_tokens=4)
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [scorer], max_steps=20, eval_steps=10)
    trainer.train()
    assert trainer.state.global_step == 20 and len(calls) == 3  # baseline + 2 evaluations, all failed
    assert not any("eval_exact_match" in e for e in trainer.state.log_history)
    assert "scoring failed (MemoryError: simulated out of memory" in capsys.readouterr().out


def test_generative_classification_with_invalid_answers(tokenizer, corpus):
    names = ["positive", "negative"]
    scorer = GenerationScorer(["a", "b", "c", "d", "e"], ["positive", "negative", "positive", "negative", "Positive"],
                              metrics=(), label_names=names)  # fmt: skip
    scorer._prepare(toy.tiny_gpt2(tokenizer), tokenizer)
    result = scorer.score(["Positive.", "positive", "  POSITIVE ", "no idea", "negative"])["corpus"]
    assert result["accuracy"] == pytest.approx(2 / 5)
    assert result["invalid_rate"] == pytest.approx(1 / 5)
    from sklearn.metrics import f1_score

    # The invalid answer counts as its own wrong class (id 2); positive is the binary default (id 1)... so
    # compare with sklearn on the ids directly.
    truth, predicted = [0, 1, 0, 1, 0], [0, 0, 0, 2, 1]
    assert result["f1"] == pytest.approx(f1_score(truth, predicted, labels=[1], average=None, zero_division=0)[0])


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompts": ["a", "b"], "references": ["x"]}, "one reference"),
        ({"prompts": [], "references": []}, "empty"),
        ({}, "needs prompts"),
        ({"prompts": ["a"], "references": ["x"], "metrics": ("rouge", "blue")}, "rouge.*bleu"),
        ({"prompts": ["a"], "references": ["x"], "batch_size": 0}, "batch_size"),
        ({"prompts": ["a"], "references": ["x"], "metrics": ()}, "metrics is empty"),
        ({"prompts": ["a"], "references": ["maybe"], "metrics": (), "label_names": ["yes", "no"]}, "label names"),
    ],
)
def test_bad_settings_fail_at_construction(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        GenerationScorer(**kwargs)


def test_model_that_cannot_generate_fails_before_the_first_step(tokenizer, corpus, tmp_path):
    from transformers import Trainer

    from .helpers import lm_args

    data = Dataset.from_dict({"input_ids": [[5, 6, 7]] * 4, "labels": [0, 1, 0, 1]})
    trainer = Trainer(
        model=toy.tiny_bert_classifier(tokenizer), args=lm_args(tmp_path, max_steps=2), train_dataset=data,
        eval_dataset=data, processing_class=tokenizer,
        callbacks=[GenerationScorer(["a"], ["b"], metrics=("rouge",))],
    )  # fmt: skip
    with pytest.raises(ConfigurationError, match="cannot"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_long_prompts_are_truncated_from_the_left(tokenizer, corpus, tmp_path, capsys):
    long_prompt = " ".join(corpus[:40])
    scorer = GenerationScorer([long_prompt, "short"], ["x", "y"], metrics=("exact_match",), max_new_tokens=8)
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [scorer], max_steps=1, eval_steps=10)
    trainer.train()
    context = trainer.model.config.n_positions
    assert len(scorer._prompt_ids[0]) == context - 8
    assert scorer._prompt_ids[0] == tokenizer(long_prompt)["input_ids"][-(context - 8) :]
    assert "truncated from the left" in capsys.readouterr().out
    assert math.isfinite(trainer.state.log_history[0]["eval_exact_match"])


def test_no_pad_token_train_mode_restored_and_batched_equals_one_by_one(tokenizer, corpus):
    from copy import deepcopy

    tok = deepcopy(tokenizer)
    tok.pad_token = None  # generation pads with EOS instead
    prompts, references = prompt_pairs(corpus, 6)
    model = toy.tiny_gpt2(tokenizer)
    batched = GenerationScorer(prompts, references, metrics=("exact_match",), max_new_tokens=6, batch_size=6)
    batched._prepare(model, tok)
    for training in (True, False):
        model.train(training)
        texts = batched.generate(model, tok)
        assert model.training is training and torch.is_grad_enabled()
    # Left padding and the attention mask make a batch generate exactly what each prompt alone does.
    single = GenerationScorer(prompts, references, metrics=("exact_match",), max_new_tokens=6, batch_size=1)
    single._prepare(model, tok)
    assert texts == single.generate(model, tok)
    assert len({len(p) for p in batched._prompt_ids}) > 1  # the prompts really had different lengths


@pytest.mark.distributed
def test_two_processes_generate_half_each_and_score_once(tokenizer, tmp_path):
    import json
    from pathlib import Path

    from .helpers import run_torchrun

    tok_dir = tmp_path / "tokenizer"
    tokenizer.save_pretrained(str(tok_dir))
    wandb_dir = tmp_path / "wandb_ddp"
    wandb_dir.mkdir()
    script = Path(__file__).resolve().parent / "dist_scripts" / "generation_scorer_ddp.py"
    rc, output, _ = run_torchrun(script, tok_dir, tmp_path / "out", wandb_dir=wandb_dir)
    assert rc == 0, output[-6000:]
    r0, r1 = (json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in range(2))
    # Three rounds (baseline, step 10, step 20); each rank generated its own half of the 9 prompts.
    assert r0["generated"] == [[0, 2, 4, 6, 8]] * 3 and r1["generated"] == [[1, 3, 5, 7]] * 3
    # Scored once per round, on rank 0 only, over all 9 generations; both ranks hold the same numbers.
    assert r0["scored"] == [9, 9, 9] and r1["scored"] == []
    assert r0["rounds"] == r1["rounds"] and [r["step"] for r in r0["rounds"]] == [0, 10, 20]
    # The gathered texts are what one process generates alone with the final weights.
    final = [row for row in r0["table"] if row[0] == 20]
    assert [row[3] for row in final] == [r0["alone"][str(i)] for i in range(9)]
    # One wandb run, one row per round.
    assert len(list((wandb_dir / "wandb").glob("offline-run-*"))) == 1
    wandb.teardown()
    steps = [r["train/global_step"] for r in wandb_history(wandb_dir) if "eval/rouge1" in r]
    assert steps == [0, 10, 20]


@pytest.mark.serial  # asserts wall-clock bounds: run alone, not beside a parallel worker
def test_background_scoring_that_hangs_is_dropped_at_train_end_with_a_message(tokenizer, corpus, tmp_path, capsys):
    import time

    calls = []

    def slow(predictions, references):
        calls.append(time.monotonic())
        if len(calls) > 1:  # the baseline (before training) is quick; later rounds hang
            time.sleep(5)
        return {"slow": 1.0}

    prompts, references = prompt_pairs(corpus, 4)
    scorer = GenerationScorer(prompts, references, metrics=(slow,), max_new_tokens=4, scoring_timeout=0.5)
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [scorer], max_steps=10, eval_steps=10)
    trainer.train()
    assert len(calls) == 2 and time.monotonic() - calls[-1] < 4.5  # did not wait for the hanging round
    assert trainer.state.global_step == 10
    assert "did not finish within scoring_timeout=0.5s" in capsys.readouterr().out
    assert [e["step"] for e in trainer.state.log_history if "eval_slow" in e] == [0]


def test_resume_keeps_the_baseline_history_and_samples(tokenizer, corpus, tmp_path):
    prompts, references = prompt_pairs(corpus, 6)

    def scorer():
        return GenerationScorer(prompts, references, metrics=("rouge",), max_new_tokens=6)

    first = scorer()
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [first], max_steps=20, eval_steps=10, save_strategy="steps",
                         save_steps=10)  # fmt: skip
    trainer.train()
    resumed = scorer()
    again = lm_trainer(tokenizer, corpus, tmp_path, [resumed], max_steps=20, eval_steps=10, save_strategy="steps",
                       save_steps=10)  # fmt: skip
    again.train(resume_from_checkpoint=str(tmp_path / "checkpoint-10"))
    # No new baseline on resume: the one from step 0 is restored, and deltas are against it.
    assert resumed.baseline_scores == first.baseline_scores
    assert [h["step"] for h in resumed.history] == [0, 10, 20]
    entry = [e for e in again.state.log_history if "eval_rougeL_delta" in e][-1]
    assert entry["step"] == 20
    assert entry["eval_rougeL_delta"] == pytest.approx(entry["eval_rougeL"] - first.baseline_scores["rougeL"])
    assert sorted({row[0] for row in resumed.table_rows}) == [0, 10, 20]


def test_background_auto_scores_in_a_thread_only_with_spare_cpu(tokenizer, monkeypatch):
    import os

    model = toy.tiny_gpt2(tokenizer)
    auto = GenerationScorer(["a"], ["b"], metrics=("exact_match",))
    forced = GenerationScorer(["a"], ["b"], metrics=("exact_match",), background=True)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # torch already uses every core
    assert not auto._background_pays(model) and forced._background_pays(model)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # a core to spare
    assert auto._background_pays(model)
    assert not GenerationScorer(["a"], ["b"], metrics=("exact_match",), background=False)._background_pays(model)
