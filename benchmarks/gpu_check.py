"""The GPU paths we cannot run on the CPU machines, in one prepared script (under 8 minutes on one H200).

    bash benchmarks/gpu_check.sh                      # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --cpu-dry-run      # tiny sizes on CPU: checks the script runs, measures nothing

What it runs, on a small Llama-architecture model built from `LlamaConfig` (random weights, no download;
tokenizer: `toy.train_tokenizer` on standard-library docstrings, trained in the script):

1. bf16 training with the whole kit: `Trainer(bf16=True)` with `OverfitGuard()`, `BestCheckpointSaver()`
   and `GenerationScorer(prompts, references, metrics=("rouge", "bleu"))` (BERTScore needs a model
   download), against a bare Trainer on the same data and seed; train() wall time of each, interleaved
   repeats, the median ratio, and the kit's time inside generation (wrapped) subtracted for the
   "everything but generation" ratio. Every run must finish with finite losses and the kit's metrics
   in the log history.
2. Batched generation throughput (run after 3: it casts the model to bf16): `model.generate` on 64 prompts,
   greedy, 64 new tokens at most,
   left-padded batches of 16 vs one prompt at a time, bf16; generated tokens per second of each and
   whether the texts are identical.
3. Exact perplexity in bf16 vs float32: the trained model evaluated with OverfitGuard in bf16
   (`bf16_full_eval=True`) and in float32; `eval_token_loss` of both, their relative difference, and
   the float32 value against a float64 computation from the logits (the probe upcasts bf16 logits to
   float32 before the log-softmax).

Writes `gpu_check.json` under `$OUT` when that is set, else `benchmarks/results_gpu_check.json`.
Figures in README/RESULTS.md are CPU-only until this has run on a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python benchmarks/<script>` finds the package

from benchmarks._common import ROOT, environment, prompt_pairs, quiet

GPU = {"hidden": 512, "layers": 8, "heads": 8, "vocab": 4096, "seq": 128, "train_docs": 1000, "eval_docs": 128,
       "steps": 300, "batch": 32, "eval_every": 50, "repeats": 2, "prompts": 64, "gen_batch": 16, "new_tokens": 64}
DRY = {"hidden": 32, "layers": 2, "heads": 2, "vocab": 512, "seq": 32, "train_docs": 64, "eval_docs": 16,
       "steps": 8, "batch": 4, "eval_every": 4, "repeats": 1, "prompts": 4, "gen_batch": 2, "new_tokens": 4}


def _model(tokenizer, cfg: dict[str, Any], seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg["hidden"], intermediate_size=cfg["hidden"] * 11 // 4,
        num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"], num_key_value_heads=cfg["heads"],
        max_position_embeddings=max(256, cfg["seq"] * 2), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def _args(out: str, cfg: dict[str, Any], device: str, **extra: Any):
    from transformers import TrainingArguments

    settings = {
        "output_dir": out, "per_device_train_batch_size": cfg["batch"], "per_device_eval_batch_size": cfg["batch"],
        "max_steps": cfg["steps"], "eval_strategy": "steps", "eval_steps": cfg["eval_every"],
        "logging_steps": cfg["eval_every"], "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
        "learning_rate": 1e-3, "seed": 0, "data_seed": 0, "dataloader_num_workers": 0,
        "use_cpu": device == "cpu", "bf16": device == "cuda",
    }  # fmt: skip
    settings.update(extra)
    return TrainingArguments(**settings)


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def check_training(prep: dict[str, Any], cfg: dict[str, Any], device: str) -> dict[str, Any]:
    from transformers import DataCollatorForLanguageModeling, Trainer

    from ft_callbacks import BestCheckpointSaver, GenerationScorer, OverfitGuard

    runs: dict[str, list[dict[str, Any]]] = {"bare": [], "kit": []}
    trained = None
    for _ in range(cfg["repeats"]):
        for variant in ("bare", "kit"):
            with tempfile.TemporaryDirectory(prefix=f"gpu-check-{variant}-") as out:
                gen_seconds = [0.0]
                callbacks: list[Any] = []
                if variant == "kit":
                    scorer = GenerationScorer(
                        prep["prompts"], prep["references"], metrics=("rouge", "bleu"),
                        max_new_tokens=cfg["new_tokens"], batch_size=cfg["gen_batch"],
                    )  # fmt: skip
                    generate = scorer.generate

                    def timed(*a: Any, _generate: Any = generate, _spent: list = gen_seconds, **k: Any) -> Any:
                        _sync(device)
                        started = time.perf_counter()
                        try:
                            return _generate(*a, **k)
                        finally:
                            _sync(device)
                            _spent[0] += time.perf_counter() - started

                    scorer.generate = timed  # type: ignore[method-assign]
                    callbacks = [OverfitGuard(), BestCheckpointSaver(), scorer]
                trainer = Trainer(
                    model=_model(prep["tokenizer"], cfg), args=_args(out, cfg, device), train_dataset=prep["train"],
                    eval_dataset=prep["eval"], processing_class=prep["tokenizer"], callbacks=callbacks,
                    data_collator=DataCollatorForLanguageModeling(prep["tokenizer"], mlm=False),
                )  # fmt: skip
                _sync(device)
                started = time.perf_counter()
                with quiet(False):
                    trainer.train()
                _sync(device)
                seconds = time.perf_counter() - started
                history = trainer.state.log_history
                losses = [e["loss"] for e in history if "loss" in e]
                evals = [e for e in history if "eval_loss" in e]
                record = {
                    "seconds": seconds, "generate_seconds": gen_seconds[0], "steps": trainer.state.global_step,
                    "finite_losses": all(math.isfinite(x) for x in losses) and bool(losses),
                    "dtype": str(next(trainer.model.parameters()).dtype),
                }  # fmt: skip
                if variant == "kit":
                    record["kit_metrics_present"] = all("eval_perplexity" in e for e in evals) and any(
                        any(k.startswith("eval_rouge") for k in e) for e in history
                    )
                    record["final_eval_perplexity"] = evals[-1].get("eval_perplexity") if evals else None
                    trained = trainer
                runs[variant].append(record)
    ratios = [k["seconds"] / b["seconds"] for b, k in zip(runs["bare"], runs["kit"], strict=True)]
    no_gen = [(k["seconds"] - k["generate_seconds"]) / b["seconds"] for b, k in zip(runs["bare"], runs["kit"],
                                                                                     strict=True)]  # fmt: skip
    return {
        "runs": runs,
        "kit_vs_bare_ratio_median": statistics.median(ratios),
        "kit_minus_generation_vs_bare_ratio_median": statistics.median(no_gen),
        "ok": all(r["finite_losses"] for v in runs.values() for r in v)
        and all(r.get("kit_metrics_present") for r in runs["kit"]),
        "_trainer": trained,
    }


def check_generation(prep: dict[str, Any], cfg: dict[str, Any], device: str, model: Any) -> dict[str, Any]:
    import torch

    tok = prep["tokenizer"]
    model = model.to(device).eval()
    if device == "cuda":
        model = model.to(torch.bfloat16)
    side = tok.padding_side
    tok.padding_side = "left"
    prompts = prep["prompts"]
    settings = {"max_new_tokens": cfg["new_tokens"], "do_sample": False, "pad_token_id": tok.pad_token_id}

    def run(batch: int) -> tuple[float, int, list[str]]:
        texts, tokens = [], 0
        _sync(device)
        started = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(prompts), batch):
                enc = tok(prompts[i : i + batch], return_tensors="pt", padding=True).to(device)
                out = model.generate(**enc, **settings)[:, enc["input_ids"].shape[1] :]
                for row in out.tolist():
                    row = row[: row.index(tok.eos_token_id) + 1] if tok.eos_token_id in row else row
                    row = [t for t in row if t != tok.pad_token_id]
                    tokens += len(row)
                    texts.append(tok.decode(row, skip_special_tokens=True))
        _sync(device)
        return time.perf_counter() - started, tokens, texts

    try:
        run(cfg["gen_batch"])  # warm-up (kernels, allocator)
        batched_s, batched_tokens, batched_texts = run(cfg["gen_batch"])
        single_s, single_tokens, single_texts = run(1)
    finally:
        tok.padding_side = side
    same = sum(a == b for a, b in zip(batched_texts, single_texts, strict=True))
    return {
        "prompts": len(prompts), "batch_size": cfg["gen_batch"], "dtype": str(next(model.parameters()).dtype),
        "batched_tokens_per_s": batched_tokens / batched_s, "single_tokens_per_s": single_tokens / single_s,
        "speedup": (batched_tokens / batched_s) / (single_tokens / single_s),
        "identical_texts": same, "ok": batched_tokens > 0,
        "note": "bf16 batched and one-at-a-time texts may differ where padding changes the rounding",
    }  # fmt: skip


def check_perplexity(prep: dict[str, Any], cfg: dict[str, Any], device: str, model: Any) -> dict[str, Any]:
    import torch
    from transformers import DataCollatorForLanguageModeling, Trainer

    from ft_callbacks import OverfitGuard

    results: dict[str, Any] = {}
    for name, extra in (("float32", {"bf16": False}), ("bf16", {"bf16": device == "cuda",
                                                                 "bf16_full_eval": device == "cuda"})):  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="gpu-check-ppl-") as out:
            trainer = Trainer(
                model=model.float(), args=_args(out, cfg, device, **extra), eval_dataset=prep["eval"],
                processing_class=prep["tokenizer"], callbacks=[OverfitGuard()],
                data_collator=DataCollatorForLanguageModeling(prep["tokenizer"], mlm=False),
            )  # fmt: skip
            with quiet(False):
                metrics = trainer.evaluate()
            results[name] = {key: metrics[f"eval_{key}"] for key in ("token_loss", "perplexity", "loss")}
            if name == "float32":
                nll, count = 0.0, 0
                m = trainer.model.eval()
                with torch.no_grad():
                    for batch in trainer.get_eval_dataloader():
                        batch = {k: v.to(m.device) for k, v in batch.items()}
                        logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                        labels = batch["labels"][:, 1:]
                        logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)
                        mask = labels != -100
                        nll -= logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)[mask].sum().item()
                        count += int(mask.sum())
                results["float64_reference_token_loss"] = nll / count
    f32, b16 = results["float32"]["token_loss"], results["bf16"]["token_loss"]
    ref = results["float64_reference_token_loss"]
    results["bf16_vs_float32_rel_diff"] = (b16 - f32) / f32
    results["float32_vs_float64_rel_diff"] = (f32 - ref) / ref
    results["ok"] = abs(results["float32_vs_float64_rel_diff"]) < 1e-4 and math.isfinite(b16)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-dry-run", action="store_true", help="tiny sizes on CPU: does the script run?")
    parser.add_argument("--output", help="JSON results path (default $OUT/gpu_check.json or benchmarks/)")
    args = parser.parse_args(argv)

    import datasets
    import torch
    import transformers

    from ft_callbacks import toy

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    if args.cpu_dry_run:
        device, cfg = "cpu", DRY
    elif torch.cuda.is_available():
        device, cfg = "cuda", GPU
    else:
        parser.error("no CUDA device here: run it on a GPU machine, or pass --cpu-dry-run to check the script")
    started = time.perf_counter()
    corpus = toy.stdlib_corpus()
    tokenizer = toy.train_tokenizer(corpus, vocab_size=cfg["vocab"])
    prompts, references = prompt_pairs(corpus[1000:], cfg["prompts"])
    prep = {
        "tokenizer": tokenizer,
        "train": toy.causal_lm_dataset(corpus[: cfg["train_docs"]], tokenizer, cfg["seq"]),
        "eval": toy.causal_lm_dataset(corpus[900 : 900 + cfg["eval_docs"]], tokenizer, cfg["seq"]),
        "prompts": prompts,
        "references": references,
    }
    results: dict[str, Any] = {
        "mode": "cpu-dry-run" if args.cpu_dry_run else "gpu",
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "config": cfg,
        "environment": environment(torch.get_num_threads()),
    }
    training = check_training(prep, cfg, device)
    trainer = training.pop("_trainer")
    results["training_bf16_kit"] = training
    print(f"training: kit/bare {training['kit_vs_bare_ratio_median']:.3f}, without generation "
          f"{training['kit_minus_generation_vs_bare_ratio_median']:.3f}, ok={training['ok']}", flush=True)  # fmt: skip
    # Perplexity first: the generation check casts the model to bf16 in place.
    results["perplexity"] = check_perplexity(prep, cfg, device, trainer.model)
    print(f"perplexity: bf16 vs float32 {results['perplexity']['bf16_vs_float32_rel_diff']:+.2e}, float32 vs "
          f"float64 {results['perplexity']['float32_vs_float64_rel_diff']:+.2e}", flush=True)  # fmt: skip
    results["generation"] = check_generation(prep, cfg, device, trainer.model)
    print(f"generation: {results['generation']['batched_tokens_per_s']:.0f} tok/s batched, "
          f"{results['generation']['single_tokens_per_s']:.0f} one at a time", flush=True)  # fmt: skip
    results["all_ok"] = all(results[k]["ok"] for k in ("training_bf16_kit", "generation", "perplexity"))
    results["elapsed_s"] = time.perf_counter() - started
    if args.output:
        output = Path(args.output)
    elif os.environ.get("OUT"):
        output = Path(os.environ["OUT"]) / "gpu_check.json"
    elif args.cpu_dry_run:  # a dry run measures nothing worth keeping in the repository
        output = Path(tempfile.gettempdir()) / "gpu_check_dry_run.json"
    else:
        output = ROOT / "benchmarks" / "results_gpu_check.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"{'all checks ok' if results['all_ok'] else 'SOME CHECKS FAILED'}; {results['elapsed_s']:.0f} s; "
          f"written to {output}")  # fmt: skip
    return results


if __name__ == "__main__":
    main()
