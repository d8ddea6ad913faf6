"""Benchmark GenerationScorer against baselines measured in the same run, on CPU and offline.

    python benchmarks/bench_generation_scorer.py           # quick: ~2 min CPU (2-5 min wall on 2 shared cores)
    python benchmarks/bench_generation_scorer.py --full    # more repeats and rounds

The model is a GPT-2 somewhat larger than the test toy (4 layers, n_embd 256, 4 heads, 3.3M
parameters, BPE vocabulary 512 trained on standard-library docstrings, `ft_callbacks.toy`), first
trained for a couple of hundred steps on the docstrings (untimed) so that it writes short
continuations and often ends them with EOS, as a fine-tuned model does. Prompts are the first 3 to
20 words of a docstring, references the 14 words that follow. Decoding is greedy, 32 new tokens at
most. wandb is disabled (WANDB_MODE=disabled), so wandb tables are not built and not timed. Only
medians over interleaved repeats and ratios measured in the same run are reported (the machine may
be shared and noisy; the load average at start and end is recorded).

1. Generation throughput: `GenerationScorer.generate(model, tokenizer)` (prompts sorted by length,
   batches of 16, left padding with an attention mask, KV cache) vs a per-sample loop calling
   `model.generate` on each prompt alone, with the very `GenerationConfig` object the scorer passed
   to `model.generate` (captured in an untimed warm-up call), on 64 prompts. Both produce the same
   greedy continuations; the texts are compared and every difference is reported (with, for each, the
   logit margin of the per-sample run at the first diverging token: a near-tie means float rounding
   of batched vs single-row matmuls, not a padding bug). Generated tokens: new tokens up to and
   including the first EOS (or 32). Throughput = generated tokens / wall time; ratio = median over
   repeats of the per-repeat ratio (the two ways run back to back, in a seeded random order). The
   share of the batched time spent outside `model.generate` (padding, decoding) is reported too.
   Two model states: the trained model (EOS stops many continuations early: a batch still runs until
   its longest continuation is done, while the loop stops each prompt at its own EOS) and the same
   architecture at random initialisation (no EOS in practice: every continuation runs 32 tokens, the
   pure cost of batching). Target: >= 5x tokens/s.
2. Training stall per scoring event: short Trainer runs (60 steps of batch 4 x <= 32 tokens from
   the trained weights, an evaluation every 15 steps on 32 texts; 32 prompts; metrics rouge + bleu +
   bertscore with the offline all-MiniLM-L6-v2) with `GenerationScorer()` scoring in the background
   (the default), with `GenerationScorer(background=False)` (scoring blocks the evaluation), and
   without a scorer. Every round runs the three in a seeded random order on a fresh model. A timing
   callback placed before the scorer stamps `on_train_begin`, every `on_step_begin`, `on_evaluate`
   and `on_train_end`; `GenerationScorer.generate` and `GenerationScorer.score` are wrapped to time
   each call (and the thread it ran on). The stall of an evaluation is the time from `on_evaluate` to
   the next `on_step_begin` minus the same in the runs without a scorer (median over those at the
   same step): it holds generation in both modes and scoring only in the synchronous mode. Also
   reported: the step-0 baseline round (before the first step, synchronous in both modes), the last
   evaluation (at the final step, where training has nothing left to overlap with: background mode
   waits for its scoring in `on_train_end`), the `train()` wall time ratios, and, because on 2 cores
   the scoring thread competes with training for the same cores (and the GIL), the training step
   time while a background scoring runs (steps overlapping a scoring window by at least half) over
   that of the other steps of the same run, with the training thread's own CPU time per step
   (`time.thread_time()`) and the cores this process kept busy (process CPU / wall): wall time that
   grows while the training thread's CPU time does not means it waits for a core or the GIL. Also:
   how many steps it took until the scores were published. Every run's scores must land at the steps
   of their evaluations (0, 15, 30, 45, 60), and background and synchronous runs of a round must give
   the same numbers (training on CPU is deterministic).

Results are printed and written to benchmarks/results_generation_scorer.json.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/<script>` finds the package

from benchmarks._common import (
    ROOT,
    bootstrap_median_ci,
    bootstrap_ratio_ci,
    environment,
    median,
    pass_fail,
    print_rows,
    prompt_pairs,
    quiet,
    training_args,
    write_json,
)

RESULTS_PATH = ROOT / "benchmarks" / "results_generation_scorer.json"
SEED = 0
THROUGHPUT_TARGET = 5.0  # batched tokens/s over the per-sample loop's
STALL_TARGET = 1.0  # background stall per event / synchronous stall: must be below
MODEL_SHAPE = {"n_layer": 4, "n_embd": 256, "n_head": 4, "n_positions": 128}
MAX_NEW_TOKENS = 32
GEN_BATCH_SIZE = 16
MAX_LENGTH = 32  # training sequence length (tokens)
TRAIN_BATCH_SIZE = 4  # in the timed runs (pre-training: 8)
PRETRAIN_BATCH_SIZE = 8
METRICS = ("rouge", "bleu", "bertscore")
MODES = ("none", "background", "sync")
OVERLAP_FRACTION = 0.5  # a step counts as "during background scoring" when this share of it overlaps

QUICK = {
    "pretrain_steps": 200,
    "throughput_prompts": 64,
    "throughput_repeats": 3,
    "stall_rounds": 3,
    "stall_max_steps": 60,
    "stall_eval_steps": 15,
    "stall_prompts": 32,
}
FULL = {
    "pretrain_steps": 200,
    "throughput_prompts": 64,
    "throughput_repeats": 7,
    "stall_rounds": 6,
    "stall_max_steps": 60,
    "stall_eval_steps": 15,
    "stall_prompts": 32,
}


# ---------------------------------------------------------------------------------------------------
# shared helpers
# ---------------------------------------------------------------------------------------------------
def _training_args(output_dir: str, **overrides: Any):
    settings: dict[str, Any] = {
        "per_device_train_batch_size": TRAIN_BATCH_SIZE,
        "per_device_eval_batch_size": 16,
        "learning_rate": 1e-3,
        "logging_steps": 10**6,
    }
    return training_args(output_dir, SEED, **{**settings, **overrides})


def _new_model(tokenizer, weights: dict[str, Any] | None = None):
    from ft_callbacks import toy

    model = toy.tiny_gpt2(tokenizer, seed=SEED, **MODEL_SHAPE)
    if weights is not None:
        model.load_state_dict(weights)
    return model


def _prepare(cfg: dict[str, Any], verbose: bool) -> dict[str, Any]:
    """Corpus, tokenizer, datasets, prompts, and the weights after an untimed pre-training."""
    from transformers import DataCollatorForLanguageModeling, Trainer

    from ft_callbacks import toy

    corpus = toy.stdlib_corpus()
    tokenizer = toy.train_tokenizer(corpus)
    texts = corpus[:256]
    train = toy.causal_lm_dataset(texts, tokenizer, MAX_LENGTH)
    evaluation = toy.causal_lm_dataset(corpus[300:332], tokenizer, MAX_LENGTH)
    model = _new_model(tokenizer)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            model=model,
            args=_training_args(
                out,
                max_steps=cfg["pretrain_steps"],
                eval_strategy="no",
                warmup_steps=10,
                learning_rate=2e-3,
                per_device_train_batch_size=PRETRAIN_BATCH_SIZE,
            ),
            train_dataset=train,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
            processing_class=tokenizer,
        )
        with quiet(verbose):
            output = trainer.train()
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {
        "tokenizer": tokenizer,
        "texts": texts,
        "train": train,
        "eval": evaluation,
        "weights": weights,
        "pretrain_s": time.perf_counter() - started,
        "pretrain_loss": float(output.training_loss),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


# ---------------------------------------------------------------------------------------------------
# 1. generation throughput
# ---------------------------------------------------------------------------------------------------
def _count_generated(new_tokens, eos_id: int) -> int:
    """New tokens up to and including the first EOS (all of them when there is none)."""
    ids = new_tokens.tolist()
    return ids.index(eos_id) + 1 if eos_id in ids else len(ids)


def _diagnose(model, tokenizer, prompt_ids: list[int], loop_new: list[int], batched_text: str) -> dict[str, Any]:
    """Where a batched continuation departs from the per-sample one, and how close the per-sample run's
    top two logits were there (a near-tie: float rounding, not a masking or position bug)."""
    import torch

    batched_ids = tokenizer(batched_text)["input_ids"] if batched_text else []
    loop_text = tokenizer.decode(loop_new, skip_special_tokens=True).strip()
    # Compare on re-tokenised text (the batched side returns only text); find the first differing token.
    loop_ids = tokenizer(loop_text)["input_ids"] if loop_text else []
    pos = next(
        (i for i, (a, b) in enumerate(zip(loop_ids, batched_ids, strict=False)) if a != b),
        min(len(loop_ids), len(batched_ids)),
    )
    prefix = loop_new[:pos] if pos <= len(loop_new) else loop_new
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt_ids + list(prefix)])).logits[0, -1].float()
    top = torch.topk(logits, 2).values
    return {
        "first_diverging_token": pos,
        "per_sample_top2_logit_margin": float(top[0] - top[1]),
        "per_sample_text": loop_text,
        "batched_text": batched_text,
    }


def bench_throughput_one(
    cfg: dict[str, Any], prep: dict[str, Any], label: str, weights: Any, verbose: bool
) -> dict[str, Any]:
    import torch
    from transformers import TrainerControl, TrainerState

    from ft_callbacks import GenerationScorer

    tokenizer = prep["tokenizer"]
    eos = tokenizer.eos_token_id
    prompts, references = prompt_pairs(prep["texts"], cfg["throughput_prompts"])
    model = _new_model(tokenizer, weights)
    model.eval()
    scorer = GenerationScorer(
        prompts,
        references,
        metrics=("exact_match",),
        num_samples=None,
        max_new_tokens=MAX_NEW_TOKENS,
        batch_size=GEN_BATCH_SIZE,
        baseline=False,
    )
    # Its own set-up (tokenise the prompts), as at the start of training; no baseline round.
    with tempfile.TemporaryDirectory() as out:
        train_args = _training_args(out, eval_strategy="steps", eval_steps=10)
        scorer.on_train_begin(train_args, TrainerState(), TrainerControl(), model=model, processing_class=tokenizer)

    original = model.generate
    calls: list[dict[str, Any]] = []

    def recording_generate(*args: Any, **kwargs: Any):
        start = time.perf_counter()
        out = original(*args, **kwargs)
        inside = time.perf_counter() - start
        width = kwargs["input_ids"].shape[1]
        new = out[:, width:]
        calls.append(
            {
                "config": kwargs.get("generation_config"),
                "rows": int(new.shape[0]),
                "steps": int(new.shape[1]),
                "tokens": sum(_count_generated(r, eos) for r in new),
                "seconds": inside,
            }
        )
        return out

    model.generate = recording_generate  # the scorer calls model.generate: record its calls
    prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]

    def batched() -> tuple[float, list[str], list[dict[str, Any]]]:
        calls.clear()
        start = time.perf_counter()
        texts = scorer.generate(model, tokenizer, show_progress=False)
        return time.perf_counter() - start, [t or "" for t in texts], list(calls)

    config = None

    def loop(subset: list[list[int]]) -> tuple[float, list[str], list[list[int]]]:
        texts, news = [], []
        start = time.perf_counter()
        with torch.no_grad():
            for ids in subset:
                x = torch.tensor([ids])
                out = original(input_ids=x, attention_mask=torch.ones_like(x), generation_config=config)
                new = out[0, len(ids) :]
                news.append(new.tolist())
                texts.append(tokenizer.decode(new, skip_special_tokens=True).strip())
        return time.perf_counter() - start, texts, news

    # Warm-up (untimed): one batched pass, which also captures the GenerationConfig the scorer uses.
    _, batched_texts, warm_calls = batched()
    config = warm_calls[0]["config"]
    assert all(c["config"] is config or c["config"].to_dict() == config.to_dict() for c in warm_calls)
    loop(prompt_ids[:8])

    rng = random.Random(SEED)
    times: dict[str, list[float]] = {"batched": [], "loop": []}
    cpu_times: dict[str, list[float]] = {"batched": [], "loop": []}  # CPU seconds of this (the only) thread
    inside: list[float] = []  # seconds inside model.generate, per batched repeat
    batched_calls: list[dict[str, Any]] = []
    loop_texts: list[str] = []
    loop_news: list[list[int]] = []
    for repeat in range(cfg["throughput_repeats"]):
        order = ["batched", "loop"]
        rng.shuffle(order)
        got: dict[str, float] = {}
        for way in order:
            gc.collect()
            cpu_start = time.thread_time()
            if way == "batched":
                seconds, texts, batched_calls = batched()
                inside.append(sum(c["seconds"] for c in batched_calls))
                assert texts == batched_texts, "batched generation is not deterministic across repeats"
            else:
                seconds, texts, news = loop(prompt_ids)
                assert not loop_texts or texts == loop_texts, "per-sample generation is not deterministic"
                loop_texts, loop_news = texts, news
            cpu_times[way].append(time.thread_time() - cpu_start)
            got[way] = seconds
            times[way].append(seconds)
        print(
            f"  {label}: repeat {repeat + 1}/{cfg['throughput_repeats']}: batched {got['batched']:.2f} s, "
            f"per-sample loop {got['loop']:.2f} s, time ratio {got['loop'] / got['batched']:.2f}x",
            flush=True,
        )
    del model.generate  # back to the class's method

    loop_tokens = sum(_count_generated(torch.tensor(n), eos) for n in loop_news)
    batched_tokens = sum(c["tokens"] for c in batched_calls)
    slots = sum(c["rows"] * c["steps"] for c in batched_calls)
    differing = [i for i, (a, b) in enumerate(zip(batched_texts, loop_texts, strict=True)) if a != b]
    diagnoses = [
        {"prompt_index": i, **_diagnose(model, tokenizer, prompt_ids[i], loop_news[i], batched_texts[i])}
        for i in differing[:10]
    ]
    batched_s, loop_s = median(times["batched"]), median(times["loop"])
    # tokens/s ratio of each repeat (the two ways ran back to back)
    ratios = [(batched_tokens / b) / (loop_tokens / lo) for b, lo in zip(times["batched"], times["loop"], strict=True)]
    ratio = median(ratios)
    cpu_ratios = [
        (batched_tokens / b) / (loop_tokens / lo) for b, lo in zip(cpu_times["batched"], cpu_times["loop"], strict=True)
    ]
    overhead = [1.0 - i / t for i, t in zip(inside, times["batched"], strict=True)]
    per_sample_lengths = [_count_generated(torch.tensor(n), eos) for n in loop_news]
    return {
        "model_state": label,
        "prompts": len(prompts),
        "prompt_tokens_min_max": [min(map(len, prompt_ids)), max(map(len, prompt_ids))],
        "max_new_tokens": MAX_NEW_TOKENS,
        "batch_size": GEN_BATCH_SIZE,
        "generation_config": {k: v for k, v in config.to_diff_dict().items() if k != "transformers_version"},
        "generated_tokens_loop": loop_tokens,
        "generated_tokens_batched": batched_tokens,
        "continuations_ending_in_eos": sum(1 for n in loop_news if eos in n),
        "continuation_lengths_min_median_max": [
            min(per_sample_lengths),
            median(per_sample_lengths),
            max(per_sample_lengths),
        ],
        "batched_decode_steps": [c["steps"] for c in batched_calls],
        "batched_token_slots": slots,
        "batched_useful_fraction": batched_tokens / slots if slots else math.nan,
        "batched_s": times["batched"],
        "loop_s": times["loop"],
        "batched_median_s": batched_s,
        "batched_inside_model_generate_s": inside,
        "scorer_overhead_share": median(overhead),
        "loop_median_s": loop_s,
        "batched_tokens_per_s": batched_tokens / batched_s,
        "loop_tokens_per_s": loop_tokens / loop_s,
        "ratio": ratio,
        "ratio_ci95": bootstrap_median_ci(ratios, seed=SEED, n_boot=2000),
        "repeat_ratios": ratios,
        "batched_cpu_s": cpu_times["batched"],
        "loop_cpu_s": cpu_times["loop"],
        "ratio_cpu_time": median(cpu_ratios),
        "ratio_cpu_time_ci95": bootstrap_median_ci(cpu_ratios, seed=SEED, n_boot=2000),
        "texts_identical": not differing,
        "texts_differing": len(differing),
        "differences": diagnoses,
        "target_min_ratio": THROUGHPUT_TARGET,
        "pass": ratio >= THROUGHPUT_TARGET,
    }


def bench_throughput(cfg: dict[str, Any], prep: dict[str, Any], verbose: bool) -> dict[str, Any]:
    out = {}
    for label, weights in (("trained", prep["weights"]), ("random_init", None)):
        out[label] = bench_throughput_one(cfg, prep, label, weights, verbose)
        r = out[label]
        print(
            f"  {label}: {r['generated_tokens_loop']} generated tokens ({r['continuations_ending_in_eos']}/"
            f"{r['prompts']} end in EOS); batched {r['batched_tokens_per_s']:.0f} tok/s vs loop "
            f"{r['loop_tokens_per_s']:.0f} tok/s = {r['ratio']:.2f}x; texts identical: {r['texts_identical']}"
            + ("" if r["texts_identical"] else f" ({r['texts_differing']} differ)"),
            flush=True,
        )
    return out


# ---------------------------------------------------------------------------------------------------
# 2. training stall per scoring event
# ---------------------------------------------------------------------------------------------------
def _probe_class():
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        """Stamps the Trainer's events; placed before the scorer, so `on_evaluate` is stamped before the
        scorer's work at that evaluation and `on_step_begin` before anything of the next step."""

        def __init__(self) -> None:
            self.train_begin = math.nan
            self.train_end = math.nan
            self.step_begins: list[tuple[int, float]] = []
            self.cpu: list[tuple[float, float]] = []  # (main thread, whole process) CPU seconds at each step begin
            self.evaluates: list[tuple[int, float]] = []
            self.evaluate_cpu: list[float] = []  # main thread CPU seconds at each on_evaluate

        def on_train_begin(self, args, state, control, **kwargs):
            self.train_begin = time.perf_counter()

        def on_step_begin(self, args, state, control, **kwargs):
            self.step_begins.append((state.global_step, time.perf_counter()))
            self.cpu.append((time.thread_time(), time.process_time()))

        def on_evaluate(self, args, state, control, **kwargs):
            self.evaluates.append((state.global_step, time.perf_counter()))
            self.evaluate_cpu.append(time.thread_time())

        def on_train_end(self, args, state, control, **kwargs):
            self.train_end = time.perf_counter()

    return Probe


def _timed(fn, record: list[dict[str, Any]]):
    def wrapper(*args: Any, **kwargs: Any):
        start, cpu = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            record.append(
                {
                    "start": start,
                    "end": time.perf_counter(),
                    "cpu_s": time.thread_time() - cpu,  # CPU seconds of the thread it ran on
                    "thread": threading.current_thread().name,
                }
            )

    return wrapper


def _stall_run(cfg: dict[str, Any], prep: dict[str, Any], mode: str, verbose: bool) -> dict[str, Any]:
    from transformers import DataCollatorForLanguageModeling, Trainer

    from ft_callbacks import GenerationScorer

    tokenizer = prep["tokenizer"]
    probe = _probe_class()()
    generations: list[dict[str, Any]] = []
    scorings: list[dict[str, Any]] = []
    callbacks: list[Any] = [probe]
    if mode != "none":
        prompts, references = prompt_pairs(prep["texts"], cfg["stall_prompts"])
        scorer = GenerationScorer(
            prompts,
            references,
            metrics=METRICS,
            num_samples=None,
            max_new_tokens=MAX_NEW_TOKENS,
            batch_size=GEN_BATCH_SIZE,
            background=mode == "background",
        )
        scorer.generate = _timed(scorer.generate, generations)
        scorer.score = _timed(scorer.score, scorings)
        callbacks.append(scorer)
    gc.collect()
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            model=_new_model(tokenizer, prep["weights"]),
            args=_training_args(
                out, max_steps=cfg["stall_max_steps"], eval_strategy="steps", eval_steps=cfg["stall_eval_steps"]
            ),
            train_dataset=prep["train"],
            eval_dataset=prep["eval"],
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
            processing_class=tokenizer,
            callbacks=callbacks,
        )
        with quiet(verbose):
            t0, cpu0 = time.perf_counter(), time.process_time()
            trainer.train()
            t_end, cpu_end = time.perf_counter(), time.process_time()
        history = trainer.state.log_history

    begins = [t for _, t in probe.step_begins]
    evals = probe.evaluates
    events: list[dict[str, Any]] = []
    event_steps = [0, *[s for s, _ in evals]] if mode != "none" else [s for s, _ in evals]
    if mode != "none":
        assert len(generations) == len(event_steps) == len(scorings), (
            f"{mode}: {len(generations)} generate and {len(scorings)} score calls for events {event_steps}"
        )
    for i, (step, t_eval) in enumerate(evals):
        k_next = next((k for k, t in enumerate(begins) if t > t_eval), None)
        nxt = None if k_next is None else begins[k_next]
        event: dict[str, Any] = {
            "step": step,
            "final": nxt is None,
            "stall_s": (nxt if nxt is not None else t_end) - t_eval,
            # the training thread's CPU seconds in that interval: less sensitive to other processes
            "stall_cpu_s": probe.cpu[k_next][0] - probe.evaluate_cpu[i] if k_next is not None else math.nan,
        }
        if mode != "none":
            gen, sc = generations[i + 1], scorings[i + 1]
            event.update(
                {
                    "generation_s": gen["end"] - gen["start"],
                    "scoring_s": sc["end"] - sc["start"],
                    "generation_cpu_s": gen["cpu_s"],
                    "scoring_cpu_s": sc["cpu_s"],
                    "scoring_thread": sc["thread"],
                    "scoring_window": [sc["start"] - t0, sc["end"] - t0],
                }
            )
            if mode == "background" and nxt is not None:
                # Published at the on_step_end of the step during which scoring finished.
                event["publish_lag_steps"] = sum(1 for t in begins if t_eval < t < sc["end"])
        events.append(event)

    # Step times (begin to begin), leaving out the steps that hold an evaluation.
    steps: list[dict[str, Any]] = []
    windows = [(sc["start"], sc["end"]) for sc, ev in zip(scorings[1:], events, strict=False) if not ev["final"]]
    for k in range(len(begins) - 1):
        a, b = begins[k], begins[k + 1]
        if any(a < t < b for _, t in evals):
            continue
        overlap = sum(max(0.0, min(b, e) - max(a, s)) for s, e in windows) if mode == "background" else 0.0
        (main_a, proc_a), (main_b, proc_b) = probe.cpu[k], probe.cpu[k + 1]
        steps.append(
            {
                "step": probe.step_begins[k][0],
                "s": b - a,
                "overlap": overlap / (b - a),
                "main_cpu_s": main_b - main_a,
                "process_cpu_s": proc_b - proc_a,
            }
        )
    scored = {int(e["step"]): e.get("eval_rougeL") for e in history if "eval_rougeL" in e}
    baseline_round = None
    if mode != "none":
        baseline_round = {
            "generation_s": generations[0]["end"] - generations[0]["start"],
            "scoring_s": scorings[0]["end"] - scorings[0]["start"],
        }
    return {
        "mode": mode,
        "train_s": t_end - t0,
        "train_cpu_s": cpu_end - cpu0,  # all threads of this process
        "before_first_step_s": (begins[0] - probe.train_begin) if begins else math.nan,
        "baseline_round": baseline_round,
        "events": events,
        "steps": steps,
        "scored_steps": sorted(scored),
        "rougeL_by_step": scored,
        "scoring_threads": sorted({s["thread"] for s in scorings}),
    }


def bench_stall(cfg: dict[str, Any], prep: dict[str, Any], verbose: bool) -> dict[str, Any]:
    rng = random.Random(SEED)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    rounds: list[dict[str, dict[str, Any]]] = []
    for rnd in range(cfg["stall_rounds"]):
        order = list(MODES)
        rng.shuffle(order)
        this: dict[str, dict[str, Any]] = {}
        for mode in order:
            run = _stall_run(cfg, prep, mode, verbose)
            runs[mode].append(run)
            this[mode] = run
            mid = [e for e in run["events"] if not e["final"]]
            extra = ""
            if mode != "none":
                extra = (
                    f", generation {median([e['generation_s'] for e in mid]):.2f} s, scoring "
                    f"{median([e['scoring_s'] for e in mid]):.2f} s per event"
                )
            print(
                f"  round {rnd + 1}/{cfg['stall_rounds']} {mode:10s}: train() {run['train_s']:.2f} s, "
                f"stall {median([e['stall_s'] for e in mid]):.3f} s per mid-run evaluation{extra}",
                flush=True,
            )
        rounds.append(this)

    expected = [0, *range(cfg["stall_eval_steps"], cfg["stall_max_steps"] + 1, cfg["stall_eval_steps"])]
    checks = {
        "scores_at_every_evaluation": all(
            r["scored_steps"] == expected for m in ("background", "sync") for r in runs[m]
        ),
        "background_equals_sync": all(r["background"]["rougeL_by_step"] == r["sync"]["rougeL_by_step"] for r in rounds),
        "background_scored_off_main_thread": all(
            all(e["scoring_thread"] != "MainThread" for e in r["events"]) for r in runs["background"]
        ),
        "expected_scored_steps": expected,
    }

    # The same event step in the runs without a scorer: what an evaluation costs there anyway.
    none_stall: dict[str, dict[int, float]] = {"stall_s": {}, "stall_cpu_s": {}}
    for key, by_step in none_stall.items():
        for step in {e["step"] for r in runs["none"] for e in r["events"]}:
            by_step[step] = median([e[key] for r in runs["none"] for e in r["events"] if e["step"] == step])

    def excess(mode: str, final: bool, key: str = "stall_s") -> list[float]:
        return [e[key] - none_stall[key][e["step"]] for r in runs[mode] for e in r["events"] if e["final"] == final]

    def pooled(mode: str, key: str) -> list[float]:
        return [e[key] for r in runs[mode] for e in r["events"] if not e["final"]]

    bg, sy = excess("background", False), excess("sync", False)
    modes_out: dict[str, Any] = {}
    for mode in ("background", "sync"):
        modes_out[mode] = {
            "stall_per_event_s": median(excess(mode, False)),
            "stall_per_event_all_s": excess(mode, False),
            "generation_per_event_s": median(pooled(mode, "generation_s")),
            "scoring_per_event_s": median(pooled(mode, "scoring_s")),
            "stall_cpu_per_event_s": median(excess(mode, False, "stall_cpu_s")),
            "generation_cpu_per_event_s": median(pooled(mode, "generation_cpu_s")),
            "scoring_cpu_per_event_s": median(pooled(mode, "scoring_cpu_s")),
            "train_cpu_s": median([r["train_cpu_s"] for r in runs[mode]]),
            "last_event_excess_s": median(excess(mode, True)),
            "baseline_round_generation_s": median([r["baseline_round"]["generation_s"] for r in runs[mode]]),
            "baseline_round_scoring_s": median([r["baseline_round"]["scoring_s"] for r in runs[mode]]),
            "before_first_step_s": median([r["before_first_step_s"] for r in runs[mode]]),
            "train_s": median([r["train_s"] for r in runs[mode]]),
        }
    modes_out["none"] = {
        "stall_per_event_s": median([e["stall_s"] for r in runs["none"] for e in r["events"] if not e["final"]]),
        "stall_cpu_per_event_s": median(
            [e["stall_cpu_s"] for r in runs["none"] for e in r["events"] if not e["final"]]
        ),
        "before_first_step_s": median([r["before_first_step_s"] for r in runs["none"]]),
        "train_s": median([r["train_s"] for r in runs["none"]]),
        "train_cpu_s": median([r["train_cpu_s"] for r in runs["none"]]),
    }

    # Step time while a background scoring runs vs the other steps of the same run.
    per_run_slowdown, during_all, other_all, lags = [], [], [], []
    cpu: dict[str, dict[str, list[float]]] = {k: {"main": [], "process": []} for k in ("during", "other")}
    for r in runs["background"]:
        during = [s["s"] for s in r["steps"] if s["overlap"] >= OVERLAP_FRACTION]
        other = [s["s"] for s in r["steps"] if s["overlap"] == 0.0]
        during_all += during
        other_all += other
        for key, chosen in (
            ("during", [s for s in r["steps"] if s["overlap"] >= OVERLAP_FRACTION]),
            ("other", [s for s in r["steps"] if s["overlap"] == 0.0]),
        ):
            cpu[key]["main"] += [s["main_cpu_s"] for s in chosen]
            cpu[key]["process"] += [s["process_cpu_s"] / s["s"] for s in chosen]
        if during and other:
            per_run_slowdown.append(median(during) / median(other))
        lags += [e["publish_lag_steps"] for e in r["events"] if "publish_lag_steps" in e]
    none_steps = [s["s"] for r in runs["none"] for s in r["steps"]]
    sync_steps = [s["s"] for r in runs["sync"] for s in r["steps"]]
    slowdown = {
        "median_step_during_scoring_s": median(during_all),
        "median_step_otherwise_s": median(other_all),
        "steps_during_scoring": len(during_all),
        "steps_otherwise": len(other_all),
        "ratio": median(per_run_slowdown),
        "run_ratios": per_run_slowdown,
        "ratio_pooled": median(during_all) / median(other_all) if during_all and other_all else math.nan,
        "ratio_pooled_ci95": bootstrap_ratio_ci(during_all, other_all, seed=SEED),
        "median_step_no_scorer_runs_s": median(none_steps),
        "median_step_sync_runs_s": median(sync_steps),
        "publish_lag_steps_median": median(lags),
        "publish_lag_steps": lags,
        "overlap_fraction_threshold": OVERLAP_FRACTION,
        # CPU seconds of the training (main) thread per step: unchanged while wall time grows means the
        # training thread waits (for a core or the GIL); process CPU / wall: cores busy in this process.
        "median_main_thread_cpu_during_s": median(cpu["during"]["main"]),
        "median_main_thread_cpu_otherwise_s": median(cpu["other"]["main"]),
        "median_process_cores_busy_during": median(cpu["during"]["process"]),
        "median_process_cores_busy_otherwise": median(cpu["other"]["process"]),
    }

    def round_ratios(a: str, b: str) -> list[float]:
        return [r[a]["train_s"] / r[b]["train_s"] for r in rounds]

    train_ratios = {}
    for a, b in (("background", "none"), ("sync", "none"), ("background", "sync")):
        values = round_ratios(a, b)
        train_ratios[f"{a}/{b}"] = {
            "ratio": median(values),
            "ci95": bootstrap_median_ci(values, seed=SEED, n_boot=2000),
            "rounds": values,
        }
    stall_ratio = median(bg) / median(sy) if sy and median(sy) > 0 else math.nan
    bg_cpu, sy_cpu = excess("background", False, "stall_cpu_s"), excess("sync", False, "stall_cpu_s")
    stall_cpu_ratio = median(bg_cpu) / median(sy_cpu) if sy_cpu and median(sy_cpu) > 0 else math.nan
    return {
        "setup": {
            "max_steps": cfg["stall_max_steps"],
            "eval_steps": cfg["stall_eval_steps"],
            "prompts": cfg["stall_prompts"],
            "metrics": list(METRICS),
            "max_new_tokens": MAX_NEW_TOKENS,
            "gen_batch_size": GEN_BATCH_SIZE,
            "train_batch_size": TRAIN_BATCH_SIZE,
            "max_length": MAX_LENGTH,
            "eval_examples": len(prep["eval"]),
            "rounds": cfg["stall_rounds"],
        },
        "no_scorer_stall_by_step_s": {str(k): v for k, v in sorted(none_stall["stall_s"].items())},
        "modes": modes_out,
        "stall_ratio_background_over_sync": stall_ratio,
        "stall_ratio_ci95": bootstrap_ratio_ci(bg, sy, seed=SEED),
        "stall_cpu_ratio_background_over_sync": stall_cpu_ratio,
        "stall_cpu_ratio_ci95": bootstrap_ratio_ci(bg_cpu, sy_cpu, seed=SEED),
        "stall_target_max_ratio": STALL_TARGET,
        "pass": stall_ratio < STALL_TARGET,
        "train_time_ratios": train_ratios,
        "background_step_slowdown": slowdown,
        "checks": checks,
        "runs": {m: [{k: v for k, v in r.items() if k != "steps"} for r in rs] for m, rs in runs.items()},
    }


# ---------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------
def table_rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [("what", "ours", "baseline", "ratio", "target", "result")]
    for label, r in results["throughput"].items():
        low, high = r["ratio_ci95"]
        what = {
            "trained": "generation tok/s, trained model (EOS ends many early)",
            "random_init": "generation tok/s, random init (all run 32 tokens)",
        }[label]
        rows.append(
            (
                what,
                f"{r['batched_tokens_per_s']:.0f} tok/s",
                f"{r['loop_tokens_per_s']:.0f} tok/s",
                f"{r['ratio']:.2f}x (CI {low:.2f}-{high:.2f})",
                f">= {THROUGHPUT_TARGET:g}x",
                pass_fail(r["pass"]),
            )
        )
        low, high = r["ratio_cpu_time_ci95"]
        rows.append(
            (
                "  same in CPU time (less sensitive to other load)",
                f"{r['generated_tokens_batched'] / median(r['batched_cpu_s']):.0f} tok/s",
                f"{r['generated_tokens_loop'] / median(r['loop_cpu_s']):.0f} tok/s",
                f"{r['ratio_cpu_time']:.2f}x (CI {low:.2f}-{high:.2f})",
                "(info)",
                "info",
            )
        )
        rows.append(
            (
                f"  texts identical to per-sample loop ({r['prompts']} prompts)",
                "yes" if r["texts_identical"] else f"{r['texts_differing']} differ",
                "",
                "",
                "identical",
                pass_fail(r["texts_identical"]),
            )
        )
        rows.append(
            (
                f"  useful share of batched token slots ({r['generated_tokens_batched']} tokens)",
                f"{r['batched_useful_fraction']:.0%}",
                "",
                "",
                "(info)",
                "info",
            )
        )
    st = results["stall"]
    bgm, sym = st["modes"]["background"], st["modes"]["sync"]
    low, high = st["stall_ratio_ci95"]
    rows.append(
        (
            "stall per evaluation: background vs sync scoring",
            f"{bgm['stall_per_event_s']:.2f} s",
            f"{sym['stall_per_event_s']:.2f} s",
            f"{st['stall_ratio_background_over_sync']:.2f} (CI {low:.2f}-{high:.2f})",
            f"< {STALL_TARGET:g}",
            pass_fail(st["pass"]),
        )
    )
    low, high = st["stall_cpu_ratio_ci95"]
    rows.append(
        (
            "  same in training-thread CPU time",
            f"{bgm['stall_cpu_per_event_s']:.2f} s",
            f"{sym['stall_cpu_per_event_s']:.2f} s",
            f"{st['stall_cpu_ratio_background_over_sync']:.2f} (CI {low:.2f}-{high:.2f})",
            "(info)",
            "info",
        )
    )
    rows.append(
        (
            "  of which generation (both modes)",
            f"{bgm['generation_per_event_s']:.2f} s",
            f"{sym['generation_per_event_s']:.2f} s",
            "",
            "(info)",
            "info",
        )
    )
    rows.append(
        (
            "  scoring (off the loop in background)",
            f"{bgm['scoring_per_event_s']:.2f} s",
            f"{sym['scoring_per_event_s']:.2f} s",
            f"CPU {bgm['scoring_cpu_per_event_s']:.2f} vs {sym['scoring_cpu_per_event_s']:.2f} s",
            "(info)",
            "info",
        )
    )
    rows.append(
        (
            "  last evaluation (nothing left to overlap)",
            f"{bgm['last_event_excess_s']:.2f} s",
            f"{sym['last_event_excess_s']:.2f} s",
            "",
            "(info)",
            "info",
        )
    )
    rows.append(
        (
            "  step-0 baseline round (sync in both)",
            f"{bgm['baseline_round_generation_s'] + bgm['baseline_round_scoring_s']:.2f} s",
            f"{sym['baseline_round_generation_s'] + sym['baseline_round_scoring_s']:.2f} s",
            "",
            "(info)",
            "info",
        )
    )
    tr = st["train_time_ratios"]
    for key, label in (
        ("background/none", "train() wall time, background vs no scorer"),
        ("sync/none", "train() wall time, sync vs no scorer"),
        ("background/sync", "train() wall time, background vs sync"),
    ):
        a, b = key.split("/")
        low, high = tr[key]["ci95"]
        rows.append(
            (
                label,
                f"{st['modes'][a]['train_s']:.2f} s",
                f"{st['modes'][b]['train_s']:.2f} s",
                f"{tr[key]['ratio']:.3f} (CI {low:.2f}-{high:.2f})",
                "(info)",
                "info",
            )
        )
    rows.append(
        (
            "  train() process CPU time, background / sync / none",
            f"{bgm['train_cpu_s']:.1f} s",
            f"{sym['train_cpu_s']:.1f} s",
            f"none {st['modes']['none']['train_cpu_s']:.1f} s",
            "(info)",
            "info",
        )
    )
    sd = st["background_step_slowdown"]
    low, high = sd["ratio_pooled_ci95"]
    rows.append(
        (
            "train step during background scoring vs other steps",
            f"{sd['median_step_during_scoring_s'] * 1e3:.0f} ms",
            f"{sd['median_step_otherwise_s'] * 1e3:.0f} ms",
            f"{sd['ratio']:.2f} (pooled {sd['ratio_pooled']:.2f}, CI {low:.2f}-{high:.2f})",
            "(info)",
            "info",
        )
    )
    rows.append(
        (
            "  training thread CPU per step, during vs other",
            f"{sd['median_main_thread_cpu_during_s'] * 1e3:.0f} ms",
            f"{sd['median_main_thread_cpu_otherwise_s'] * 1e3:.0f} ms",
            f"cores busy {sd['median_process_cores_busy_during']:.2f} vs "
            f"{sd['median_process_cores_busy_otherwise']:.2f}",
            "(info)",
            "info",
        )
    )
    rows.append(
        (
            "  steps until background scores are published",
            f"{sd['publish_lag_steps_median']:.0f}",
            "",
            "",
            "(info)",
            "info",
        )
    )
    rows.append(
        (
            "  median step, runs without scorer / sync runs",
            f"{sd['median_step_no_scorer_runs_s'] * 1e3:.0f} ms",
            f"{sd['median_step_sync_runs_s'] * 1e3:.0f} ms",
            "",
            "(info)",
            "info",
        )
    )
    return rows


def print_table(results: dict[str, Any]) -> None:
    rows = table_rows(results)
    print_rows(rows)
    st = results["stall"]
    print(
        f"stall = on_evaluate -> next on_step_begin, minus the same without a scorer "
        f"({st['modes']['none']['stall_per_event_s'] * 1e3:.1f} ms); medians over "
        f"{len(st['modes']['background']['stall_per_event_all_s'])} mid-run evaluations per mode"
    )
    checks = st["checks"]
    print(
        f"checks: scores at every evaluation {checks['scores_at_every_evaluation']}, background == sync "
        f"{checks['background_equals_sync']}, background scoring off the main thread "
        f"{checks['background_scored_off_main_thread']}"
    )
    for label, r in results["throughput"].items():
        for d in r["differences"]:
            print(
                f"  {label}: prompt {d['prompt_index']} differs from token {d['first_diverging_token']} "
                f"(per-sample top-2 logit margin {d['per_sample_top2_logit_margin']:.2e}): "
                f"{d['per_sample_text']!r} vs {d['batched_text']!r}"
            )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="more repeats and rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier timings)")
    parser.add_argument("--output", default=str(RESULTS_PATH), help="where to write the JSON results")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed (command line)")
    parser.add_argument("--verbose", action="store_true", help="show the Trainer's own console output")
    args = parser.parse_args(argv)

    import datasets
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    cfg = FULL if args.full else QUICK
    started = time.perf_counter()
    load_before = os.getloadavg()
    print(
        f"GenerationScorer benchmark ({'full' if args.full else 'quick'}), torch {torch.__version__}, "
        f"transformers {transformers.__version__}, {os.cpu_count()} CPUs, torch threads {args.threads}, load "
        f"average {load_before[0]:.1f}; wandb disabled (tables not built, not timed)",
        flush=True,
    )
    prep = _prepare(cfg, args.verbose)
    print(
        f"  GPT-2 {MODEL_SHAPE['n_layer']} layers, n_embd {MODEL_SHAPE['n_embd']}, {prep['parameters'] / 1e6:.1f}M "
        f"parameters; pre-trained {cfg['pretrain_steps']} steps in {prep['pretrain_s']:.1f} s (untimed), "
        f"loss {prep['pretrain_loss']:.2f}",
        flush=True,
    )

    print(
        f"\n[1/2] generation throughput, {cfg['throughput_prompts']} prompts, batched (GenerationScorer.generate) "
        f"vs per-sample model.generate ({cfg['throughput_repeats']} interleaved repeats)",
        flush=True,
    )
    throughput = bench_throughput(cfg, prep, args.verbose)

    print(
        f"\n[2/2] training stall per scoring event: background vs sync vs no scorer ({cfg['stall_rounds']} rounds)",
        flush=True,
    )
    stall = bench_stall(cfg, prep, args.verbose)

    results: dict[str, Any] = {
        "mode": "full" if args.full else "quick",
        "config": cfg,
        "model": {
            **MODEL_SHAPE,
            "vocab": len(prep["tokenizer"]),
            "parameters": prep["parameters"],
            "pretrain_steps": cfg["pretrain_steps"],
            "pretrain_loss": prep["pretrain_loss"],
        },
        "environment": {
            **environment(args.threads),
            "wandb_mode": os.environ.get("WANDB_MODE"),
            "load_average_1_5_15_min_at_start": list(load_before),
            "load_average_1_5_15_min_at_end": list(os.getloadavg()),
        },
        "throughput": throughput,
        "stall": stall,
    }
    results["elapsed_s"] = time.perf_counter() - started
    results["process_cpu_s"] = time.process_time()
    print_table(results)
    verdicts = [r["pass"] for r in throughput.values()] + [stall["pass"]]
    results["all_pass"] = all(verdicts)
    results["table"] = [list(r) for r in table_rows(results)]
    output = write_json(results, args.output)
    print(
        f"\nall targets {'PASS' if results['all_pass'] else 'NOT MET'}; {results['elapsed_s']:.0f} s "
        f"({results['process_cpu_s']:.0f} s CPU; load average {load_before[0]:.1f} at start, "
        f"{results['environment']['load_average_1_5_15_min_at_end'][0]:.1f} at end); results written to {output}"
    )
    results["exit_code"] = 1 if args.strict and not results["all_pass"] else 0
    return results


if __name__ == "__main__":
    sys.exit(main()["exit_code"])
