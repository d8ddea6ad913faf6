"""GenerationScorer under hostile input (issue #20) and under a Seq2SeqTrainer's own generation settings
(issue #13, item 8).

- Ctrl-C and scoring_timeout end the process promptly: real tiny training scripts in a subprocess,
  with a slow scorer (a plain callable metric that sleeps), timed from the moment it matters.
- Mistakes that used to surface as tracebacks at every round are refused at construction (or before
  step 1 where the tokenizer is needed) with a message naming the fix.
- Under a Seq2SeqTrainer the generations follow generation_max_length / generation_num_beams and equal
  the Trainer's own `predict()` texts; with predict_with_generate=True they are its texts, not generated twice.
"""

from __future__ import annotations

import math
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, DatasetDict
from transformers import (
    DataCollatorForSeq2Seq,
    GenerationConfig,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
)

from ft_callbacks import ConfigurationError, GenerationScorer, toy

from .helpers import REPO, lm_trainer
from .test_generation_scorer import prompt_pairs

# -- a real training script in a subprocess ---------------------------------------------------------
SCRIPT = textwrap.dedent(
    """
    import sys
    import threading
    import time

    from transformers import TrainerCallback

    from ft_callbacks import GenerationScorer, toy
    from tests.helpers import lm_trainer
    from tests.test_generation_scorer import prompt_pairs

    out, max_steps, eval_steps, sleep_s, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *map(
        float, sys.argv[4:6]
    )
    corpus = toy.stdlib_corpus()
    tokenizer = toy.train_tokenizer(corpus)
    calls = []


    started = threading.Event()


    def slow(predictions, references):  # a metric far slower than training
        started.set()
        calls.append(1)
        print(f"SCORING {len(calls)}", flush=True)
        time.sleep(sleep_s)
        return {"slow": 1.0}


    class Marker(TrainerCallback):  # listed before the scorer: runs before it at each event
        def on_evaluate(self, args, state, control, **kwargs):
            print(f"EVAL {state.global_step}", flush=True)

        def on_train_end(self, args, state, control, **kwargs):
            started.wait(120)  # a round is being scored when the scorer's on_train_end begins
            print("TRAIN_END", flush=True)


    prompts, references = prompt_pairs(corpus, 4)
    scorer = GenerationScorer(prompts, references, metrics=(slow,), max_new_tokens=2, background=True,
                              baseline=False, scoring_timeout=timeout)
    trainer = lm_trainer(tokenizer, corpus, out, [Marker(), scorer], max_steps=max_steps, eval_steps=eval_steps,
                         eval_size=8, logging_steps=1000)
    trainer.train()
    print("SCRIPT_END", flush=True)
    """
)


class Script:
    """The script above in its own process; stdout lines are read as they come, with their arrival time."""

    def __init__(self, tmp_path: Path, *argv: object) -> None:
        path = tmp_path / "train_slow_scorer.py"
        path.write_text(SCRIPT)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "RANK", "LOCAL_RANK", "WORLD_"))}
        env.update({"WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                    "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"})  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, str(path), str(tmp_path / "out"), *map(str, argv)], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.times: list[float] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put((time.monotonic(), line.rstrip("\n")))
        self._queue.put((time.monotonic(), None))

    def printed(self, text: str) -> bool:
        """Whether any line read so far contains `text`."""
        return any(text in line for line in self.lines)

    def wait_for(self, text: str, timeout: float = 240) -> float:
        """The time `text` was printed (the first line containing it, also one read earlier)."""
        for at, line in zip(self.times, self.lines, strict=True):
            if text in line:
                return at
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                at, line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                pytest.fail(f"the script ended before printing {text!r}:\n" + "\n".join(self.lines[-60:]))
            self.lines.append(line)
            self.times.append(at)
            if text in line:
                return at
        self.kill()
        pytest.fail(f"no {text!r} within {timeout:.0f}s:\n" + "\n".join(self.lines[-60:]))

    def wait_exit(self, limit: float) -> float:
        """The time the process exited (the test fails, and the process is killed, past `limit`)."""
        try:
            self.proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the process was still running {limit:.0f}s later:\n" + "\n".join(self.drain()[-60:]))
        exited = time.monotonic()
        self.drain()
        return exited

    def drain(self) -> list[str]:
        while True:
            try:
                at, line = self._queue.get(timeout=5)
            except queue.Empty:
                return self.lines
            if line is None:
                return self.lines
            self.lines.append(line)
            self.times.append(at)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


@pytest.mark.serial  # asserts wall-clock bounds: run alone, not beside a parallel worker
@pytest.mark.parametrize("interrupt_after", ["EVAL 4", "EVAL 6"], ids=["training-on", "waiting-for-the-queue"])
def test_ctrl_c_with_scoring_rounds_queued_exits_within_10s(tmp_path, interrupt_after):
    """Each round sleeps 120 s. At step 4 one round is being scored and one is queued; at step 6 training
    also waits for the full queue. SIGINT must end the process within 10 s, saying what was dropped."""
    script = Script(tmp_path, 10_000, 2, 120, 600)
    try:
        script.wait_for("SCORING 1")
        script.wait_for(interrupt_after)
        time.sleep(1.0)  # the scorer has queued this evaluation's round (or is waiting to)
        sent = time.monotonic()
        script.proc.send_signal(signal.SIGINT)
        took = script.wait_exit(limit=40) - sent
    finally:
        script.kill()
    assert took < 10, script.output[-3000:]
    assert script.proc.returncode != 0 and "KeyboardInterrupt" in script.output
    dropped = [line for line in script.lines if "GenerationScorer: dropped" in line]
    assert len(dropped) == 1, script.output[-3000:]
    assert "dropped 2 scoring round(s) (step(s) 2, 4)" in dropped[0] and "interrupted" in dropped[0]
    assert not script.printed("SCORING 2")  # the queued round never started


@pytest.mark.serial  # asserts wall-clock bounds: run alone, not beside a parallel worker
def test_scoring_timeout_ends_the_process_within_the_timeout_plus_5s(tmp_path):
    """A 40-s scorer and scoring_timeout=2: from the end of training the process is gone within 2 + 5 s."""
    script = Script(tmp_path, 4, 4, 40, 2)
    try:
        ended = script.wait_for("TRAIN_END")
        took = script.wait_exit(limit=60) - ended
    finally:
        script.kill()
    assert script.proc.returncode == 0, script.output[-3000:]
    assert took < 2 + 5, (took, script.output[-3000:])
    # Substrings: stdout and stderr share the pipe, and another thread's write can land mid-line.
    assert script.printed("SCRIPT_END") and script.printed("SCORING 1")  # the 40-s round had started
    assert any("dropped 1 scoring round(s) (step(s) 4): they did not finish within scoring_timeout=2s" in line
               for line in script.lines), script.output[-3000:]  # fmt: skip


class PendingWatch(TrainerCallback):
    def __init__(self, scorer: GenerationScorer) -> None:
        self.scorer = scorer
        self.most = 0

    def on_step_begin(self, args, state, control, **kwargs):
        self.most = max(self.most, len(self.scorer._pending))


def test_background_queue_is_bounded_and_every_round_is_still_scored(tokenizer, corpus, tmp_path, capsys):
    def slow(predictions, references):
        time.sleep(0.7)
        return {"slow": float(len(predictions))}

    prompts, references = prompt_pairs(corpus, 4)
    scorer = GenerationScorer(prompts, references, metrics=(slow,), max_new_tokens=2, background=True,
                              baseline=False)  # fmt: skip
    watch = PendingWatch(scorer)
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [scorer, watch], max_steps=7, eval_steps=1, eval_size=8)
    trainer.train()
    assert watch.most <= 2
    assert [e["step"] for e in trainer.state.log_history if "eval_slow" in e] == list(range(1, 8))
    assert "at most 2 are queued" in capsys.readouterr().out


# -- refused at construction -------------------------------------------------------------------------
OK = {"prompts": ["Once upon", "The end"], "references": ["a time", "of it"], "metrics": ("exact_match",)}


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"prompts": "abc", "references": "xyz"}, r"prompts= is a single string.*pass a list"),
        ({"references": "one reference"}, r"references= is a single string"),
        ({"prompts": {"a": 1, "b": 2}}, r"prompts= is a dict"),
        ({"prompts": ["", ""]}, r"prompts\[0\] is empty.*give it text"),
        ({"prompts": ["fine", "   "]}, r"prompts\[1\] is only whitespace"),
        ({"prompts": ["fine", "bro\ud800ken"]}, r"prompts\[1\] holds a lone surrogate .* position 3.*replace"),
        ({"references": ["fine", "bad\udfff"]}, r"references\[1\] holds a lone surrogate"),
        ({"prompts": ["fine", None]}, r"prompts\[1\] is NoneType.*a prompt is a string"),
        ({"prompts": ["fine", []]}, r"prompts\[1\] is an empty list"),
        ({"background": "no"}, r"background='no' is not valid: use True.*False.*'auto'"),
        ({"background": 1}, r"background=1 is not valid"),
        ({"baseline": "no"}, r"baseline='no' is not valid: use True or False"),
        ({"chat_template": "yes"}, r"chat_template='yes' is not valid"),
        ({"scoring_timeout": -1}, r"scoring_timeout=-1 is not valid"),
        ({"scoring_timeout": math.nan}, r"scoring_timeout=nan is not valid"),
        ({"scoring_timeout": "60"}, r"scoring_timeout='60' is not valid"),
        ({"seed": "0"}, r"seed='0' is not valid"),
        ({"generation_config": {"max_new_tokens": 8}}, r"generation_config is dict.*GenerationConfig\(\*\*your_dict\)"),
        ({"scorer_options": "use_stemmer"}, r"scorer_options is str"),
        ({"label_names": "positive", "metrics": ()}, r"label_names= is a single string"),
        ({"metrics": 5}, r"metrics=5 is not valid"),
        ({"prompt_column": 3, "prompts": None, "references": None, "dataset": [{"prompt": "a", "reference": "b"}]},
         r"prompt_column=3 is not valid"),
    ],
)
def test_mistakes_are_refused_at_construction_naming_the_fix(overrides, match):
    with pytest.raises(ConfigurationError, match=match):
        GenerationScorer(**{**OK, **overrides})


def test_a_single_metric_name_is_one_metric_not_its_letters():
    assert GenerationScorer(OK["prompts"], OK["references"], metrics="exact_match").metrics == ["exact_match"]


def test_an_evaluate_metric_that_does_not_load_is_refused_at_construction(monkeypatch):
    """Offline, `bleurt` cannot be loaded: refused now, not accepted and then 'scoring failed' every round."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigurationError, match=r"evaluate.load\('bleurt'\) failed.*network access.*local metric"):
        GenerationScorer(OK["prompts"], OK["references"], metrics=("rouge", "bleurt"))
    data = Dataset.from_dict({"prompt": OK["prompts"], "reference": OK["references"]})
    with pytest.raises(ConfigurationError, match=r"evaluate.load\('bleurt'\) failed"):
        GenerationScorer(dataset=data, metrics=("bleurt",))


@pytest.mark.parametrize(
    ("dataset", "match"),
    [
        (DatasetDict({"train": Dataset.from_dict({"prompt": ["a"], "reference": ["b"]})}),
         r"DatasetDict with splits \['train'\]: pass one split, e.g. dataset=ds\['train'\]"),
        (["just", "texts"], r"dataset= is a list of str: pass a list of dicts"),
        ("data/eval.jsonl", r"is a name or path: load it first"),
        ([], r"dataset= is empty"),
        (Dataset.from_dict({"input_ids": [[5, 6, 7]]}),
         r"input_ids but no labels .*a 'labels' column with the reference's token ids"),
        (Dataset.from_dict({"prompt": ["a"], "answer": ["b"]}), r"no 'reference' column .*reference_column="),
        ([{"prompt": "ok", "reference": "x"}, {"prompt": "", "reference": "y"}],
         r"dataset row 1, column 'prompt', is empty"),
    ],
)
def test_bad_datasets_are_refused_at_construction(dataset, match):
    with pytest.raises(ConfigurationError, match=match):
        GenerationScorer(dataset=dataset, metrics=("exact_match",))


def test_a_list_of_dicts_a_dict_of_lists_and_a_dataframe_are_accepted(tokenizer, corpus, tmp_path):
    import pandas as pd

    prompts, references = prompt_pairs(corpus, 6)
    rows = [{"prompt": p, "reference": r} for p, r in zip(prompts, references, strict=True)]
    forms = [rows, {"prompt": prompts, "reference": references}, pd.DataFrame(rows)]
    scorers = [GenerationScorer(dataset=form, metrics=("rouge",), max_new_tokens=4) for form in forms]
    trainer = lm_trainer(tokenizer, corpus, tmp_path, scorers[-1:], max_steps=2, eval_steps=2, eval_size=8)
    trainer.train()  # a real run from the DataFrame: baseline and one evaluation scored
    assert [e["step"] for e in trainer.state.log_history if "eval_rouge1" in e] == [0, 2]
    model = toy.tiny_gpt2(tokenizer)
    for scorer in scorers[:-1]:
        scorer._prepare(model, tokenizer)
    for scorer in scorers:
        assert scorer._prompt_texts == prompts and scorer._references == references


def test_a_prompt_with_no_tokens_is_refused_before_step_1(tokenizer, corpus, tmp_path):
    """A tokenised example whose input_ids are empty: a ConfigurationError before the first step, not a
    generation failure (an IndexError or a padding_side hint) at every round."""
    prompts, references = prompt_pairs(corpus, 4)
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    ids[2] = []
    labels = [[*tokenizer(r)["input_ids"], tokenizer.eos_token_id] for r in references]
    data = Dataset.from_dict({"input_ids": ids, "labels": labels})
    scorer = GenerationScorer(dataset=data, metrics=("exact_match",), max_new_tokens=4)
    trainer = seq2seq_trainer(tokenizer, data, tmp_path, scorer, max_steps=2)
    with pytest.raises(ConfigurationError, match=r"1 prompt\(s\) have no tokens after tokenisation"):
        trainer.train()
    assert trainer.state.global_step == 0


# -- Seq2SeqTrainer: its generation settings, its own predictions ----------------------------------------
def seq2seq_dataset(tokenizer, corpus, count: int) -> Dataset:
    prompts, references = prompt_pairs(corpus, count)
    enc = tokenizer(prompts)
    labels = [[*ids, tokenizer.eos_token_id] for ids in tokenizer(references)["input_ids"]]
    return Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels})


def seq2seq_trainer(tokenizer, data, tmp_path, scorer, compute_metrics=None, **overrides) -> Seq2SeqTrainer:
    model = toy.tiny_t5(tokenizer)
    settings = {
        "output_dir": str(tmp_path), "max_steps": 20, "eval_strategy": "steps", "eval_steps": 10,
        "per_device_train_batch_size": 8, "per_device_eval_batch_size": 4, "learning_rate": 3e-3,
        "report_to": "none", "use_cpu": True, "disable_tqdm": True, "save_strategy": "no", "seed": 0,
    }  # fmt: skip
    settings.update(overrides)
    return Seq2SeqTrainer(
        model=model, args=Seq2SeqTrainingArguments(**settings), train_dataset=data, eval_dataset=data,
        processing_class=tokenizer, data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
        callbacks=[scorer], compute_metrics=compute_metrics,
    )  # fmt: skip


def decode(tokenizer, predictions) -> list[str]:
    predictions = np.where(predictions != -100, predictions, tokenizer.pad_token_id)
    return [t.strip() for t in tokenizer.batch_decode(predictions, skip_special_tokens=True)]


def round_texts(scorer: GenerationScorer, step: int) -> list[str]:
    return [row[3] for row in scorer.table_rows if row[0] == step]


def test_seq2seq_generations_follow_the_trainers_settings_and_equal_its_predict(tokenizer, corpus, tmp_path, capsys):
    data = seq2seq_dataset(tokenizer, corpus, 10)
    scorer = GenerationScorer(dataset=data, metrics=("exact_match",), num_samples=None, batch_size=3)
    trainer = seq2seq_trainer(tokenizer, data, tmp_path, scorer, generation_max_length=9, generation_num_beams=3)
    trainer.train()
    ours = round_texts(scorer, 20)
    # The Trainer's own generations for the same prompts, with the same (final) weights and arguments.
    predictor = Seq2SeqTrainer(
        model=trainer.model, processing_class=tokenizer, data_collator=DataCollatorForSeq2Seq(tokenizer),
        args=Seq2SeqTrainingArguments(output_dir=str(tmp_path / "predict"), per_device_eval_batch_size=4,
                                      predict_with_generate=True, generation_max_length=9, generation_num_beams=3,
                                      report_to="none", use_cpu=True, disable_tqdm=True),
    )  # fmt: skip
    theirs = decode(tokenizer, predictor.predict(data).predictions)
    assert len(ours) == 10 and ours == theirs
    out = capsys.readouterr().out
    assert "generates as the Seq2SeqTrainer does: generation_max_length=9, generation_num_beams=3" in out


class GenerateCalls:
    """Records who called model.generate (the real one runs): the Trainer's prediction_step or us."""

    def __init__(self, trainer) -> None:
        self.calls: list[tuple[int, str]] = []
        real = trainer.model.generate

        def generate(*args, **kwargs):
            self.calls.append((trainer.state.global_step, sys._getframe(1).f_code.co_name))
            return real(*args, **kwargs)

        trainer.model.generate = generate


def test_seq2seq_predict_with_generate_texts_are_reused_not_generated_twice(tokenizer, corpus, tmp_path, capsys):
    data = seq2seq_dataset(tokenizer, corpus, 10)
    seen: list[list[str]] = []

    def compute_metrics(prediction):  # what the Trainer generated at each evaluation, in dataset order
        seen.append(decode(tokenizer, prediction.predictions))
        return {}

    scorer = GenerationScorer(dataset=data, metrics=("exact_match",), num_samples=None, batch_size=3)
    trainer = seq2seq_trainer(tokenizer, data, tmp_path, scorer, compute_metrics, predict_with_generate=True,
                              generation_max_length=9, generation_num_beams=2)  # fmt: skip
    calls = GenerateCalls(trainer)
    trainer.train()
    ours = {step: [] for step, _ in calls.calls}
    for step, caller in calls.calls:
        ours[step].append(caller)
    # We generate only the step-0 baseline (no evaluation then); at steps 10 and 20 only the Trainer generates.
    assert set(ours[0]) == {"generate_batched"}
    assert set(ours[10]) == set(ours[20]) == {"prediction_step"}
    assert [round_texts(scorer, 10), round_texts(scorer, 20)] == seen
    assert scorer.reused_last_round == 10
    assert "10 of 10 texts reused from the Seq2SeqTrainer's predictions" in capsys.readouterr().out


def test_seq2seq_user_settings_override_the_trainers(tokenizer, corpus, tmp_path):
    """max_new_tokens= / generation_config= given to GenerationScorer win, and then nothing is reused."""
    data = seq2seq_dataset(tokenizer, corpus, 6)
    scorer = GenerationScorer(dataset=data, metrics=("exact_match",), num_samples=None, max_new_tokens=3,
                              generation_config=GenerationConfig(num_beams=1))  # fmt: skip
    trainer = seq2seq_trainer(tokenizer, data, tmp_path, scorer, max_steps=10, predict_with_generate=True,
                              generation_max_length=12, generation_num_beams=2)  # fmt: skip
    calls = GenerateCalls(trainer)
    trainer.train()
    settings = scorer._settings(None)
    assert (settings.max_new_tokens, settings.num_beams, settings.max_length) == (3, 1, 12)
    assert scorer.reused_last_round == 0 and ("generate_batched" in {c for s, c in calls.calls if s == 10})


def test_a_dropped_round_stops_its_text_scorer_at_the_next_metric():
    """A background round that is given up (Ctrl-C, scoring_timeout) sets its stop event; the TextScorer
    then stops before the next metric (and between BERTScore batches) instead of running to the end."""
    from ft_callbacks.core.text_scores import ScoringCancelled, TextScorer

    stop = threading.Event()
    ran: list[str] = []

    def first(predictions, references):
        ran.append("first")
        stop.set()  # the round is dropped while this metric runs
        return {"first": 1.0}

    def second(predictions, references):
        ran.append("second")
        return {"second": 1.0}

    scorer = TextScorer([first, second, "bertscore"], ["a reference"], bertscore_batch_size=1)
    with pytest.raises(ScoringCancelled):
        scorer.score(["a prediction"], stop=stop)
    assert ran == ["first"]
    assert scorer.score(["a prediction"]).corpus["second"] == 1.0  # without a stop event it runs through
