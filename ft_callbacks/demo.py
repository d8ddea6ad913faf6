"""The embedded demo: `ft-callbacks demo` (or `make demo`).

A small GPT-2 is fine-tuned on CPU, offline, on text that ships with every Python (standard-library
docstrings), with OverfitGuard, BestCheckpointSaver and GenerationScorer from `configs/demo.yaml`.
The training set is deliberately small, so within a few minutes the model memorises it: validation
loss turns up, the gap rule stops the run, the best checkpoint is on disk and back in the model, and
the continuations it generates for held-out prompts (openings of validation docstrings) are scored
against their step-0 baseline. The last lines say which step is best by which metric.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import callbacks_from_config, training_arguments_from_config
from .publish import wandb_has_credentials

TRAIN_TEXTS = 48
EVAL_TEXTS = 96
PROMPT_WORDS = 6
REFERENCE_WORDS = 16
TABLE_KEYS = (
    ("step", "step"),
    ("eval_token_loss", "val loss"),
    ("eval_train_loss", "train loss"),
    ("eval_loss_gap", "gap"),
    ("eval_perplexity", "perplexity"),
    ("eval_rougeL", "rougeL"),
    ("eval_bleu", "bleu"),
    ("eval_bertscore_f1", "bertscore"),
)


@dataclass
class DemoResult:
    output_dir: Path
    global_step: int
    stop_step: int | None
    stop_reason: str
    best_checkpoint: str | None
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    wandb_dir: str | None = None
    report: Path | None = None


def prompt_pairs(texts: list[str]) -> tuple[list[str], list[str]]:
    """Prompts: the first words of each training docstring; references: the words that follow."""
    prompts, references = [], []
    for text in texts:
        words = text.split()
        if len(words) < PROMPT_WORDS + 4:
            continue
        prompts.append(" ".join(words[:PROMPT_WORDS]))
        references.append(" ".join(words[PROMPT_WORDS : PROMPT_WORDS + REFERENCE_WORDS]))
    return prompts, references


def evaluation_table(log_history: list[dict[str, Any]]) -> str:
    """Every evaluation, one row each; the evaluation after training (with the weights the model ended
    with) is marked `end`."""
    end = next((i for i, e in enumerate(log_history) if "train_runtime" in e), len(log_history))
    rows = [(i >= end, e) for i, e in enumerate(log_history) if "eval_loss" in e or "eval_rougeL" in e]
    keys = [(k, title) for k, title in TABLE_KEYS if any(k in e for _, e in rows)]
    if not rows:
        return "(no evaluations)"
    widths = [max(len(title), 10) for _, title in keys]
    lines = ["  ".join(f"{title:>{w}}" for (_, title), w in zip(keys, widths, strict=True))]
    for after_training, entry in rows:
        cells = []
        for (key, _), width in zip(keys, widths, strict=True):
            value = entry.get(key)
            if key == "step":
                cells.append(f"{'end' if after_training else int(value):>{width}}")
            elif value is None:
                cells.append(f"{'':>{width}}")
            else:
                cells.append(f"{value:>{width}.4g}" if isinstance(value, float) and math.isfinite(value) else
                             f"{value!s:>{width}}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def best_steps(log_history: list[dict[str, Any]]) -> dict[str, tuple[int, float]]:
    """For the demo's last lines: the training evaluation that is best by each metric (first on ties)."""
    end = next((i for i, e in enumerate(log_history) if "train_runtime" in e), len(log_history))
    best: dict[str, tuple[int, float]] = {}
    for key, better in (("eval_perplexity", min), ("eval_rougeL", max), ("eval_bertscore_f1", max)):
        values = [(e["step"], e[key]) for e in log_history[:end] if isinstance(e.get(key), float) and e["step"] > 0]
        if values:
            value = better(v for _, v in values)
            best[key] = (next(s for s, v in values if v == value), value)
    return best


def run_demo(
    output_dir: str | os.PathLike = "runs/demo",
    config: str | os.PathLike = "demo",
    overrides: list[str] | tuple[str, ...] = (),
    report_to: str | None = None,
    show_progress: bool = True,
) -> DemoResult:
    from transformers import DataCollatorForLanguageModeling, Trainer

    from . import toy
    from .best_checkpoint import BestCheckpointSaver, best_checkpoint
    from .overfit_guard import OverfitGuard

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # The demo's wandb run lives with the rest of its output, not in ./wandb of wherever it was started.
    os.environ.setdefault("WANDB_DIR", str(output_dir.resolve()))
    texts = toy.stdlib_corpus()
    train_texts, eval_texts = texts[:TRAIN_TEXTS], texts[400 : 400 + EVAL_TEXTS]
    # Held-out prompts: generation scores and validation loss then tell one story (a model that only
    # memorises its training texts does not continue unseen ones better).
    prompts, references = prompt_pairs(eval_texts)
    print(f"[demo] corpus: {len(texts)} standard-library docstrings; training on {len(train_texts)} (small on "
          f"purpose, so it memorises), validating on {len(eval_texts)} others.")  # fmt: skip
    tokenizer = toy.train_tokenizer(texts)
    model = toy.tiny_gpt2(tokenizer, n_layer=2, n_embd=96, n_head=4)
    callbacks = callbacks_from_config(config, overrides=list(overrides), prompts=prompts, references=references)
    if report_to is None:
        try:
            import wandb

            report_to = "wandb"
            # The Trainer's own WandbCallback starts the run, and without a login it stops with "No API
            # key configured": the demo logs offline then, as it promises (WANDB_MODE set by the user wins).
            if not os.environ.get("WANDB_MODE") and not wandb_has_credentials(wandb):
                os.environ["WANDB_MODE"] = "offline"
                wandb.teardown()  # the key lookup cached wandb's settings; the next run reads the mode anew
        except ImportError:
            report_to = "none"
    args = training_arguments_from_config(
        config, overrides=list(overrides), output_dir=str(output_dir), use_cpu=True, report_to=report_to,
        disable_tqdm=not show_progress, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=toy.causal_lm_dataset(train_texts, tokenizer, max_length=64),
        eval_dataset=toy.causal_lm_dataset(eval_texts, tokenizer, max_length=64),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    trainer.train()
    # The end of a transformers example script: final weights (the best: load_best_at_end in the config),
    # a last evaluation, every result step by step (trainer_state.json) and the model card (README.md).
    trainer.save_model()
    metrics = trainer.evaluate()
    trainer.save_metrics("eval", metrics)
    trainer.save_state()
    trainer.create_model_card(model_name="ft-callbacks-demo")

    guard = next((cb for cb in callbacks if isinstance(cb, OverfitGuard)), None)
    saver = next((cb for cb in callbacks if isinstance(cb, BestCheckpointSaver)), None)
    wandb_dir = _wandb_run_dir()
    result = DemoResult(
        output_dir=output_dir,
        global_step=trainer.state.global_step,
        stop_step=guard.policy.stop_step if guard else None,
        stop_reason=guard.stop_reason if guard else "",
        best_checkpoint=str(best_checkpoint(output_dir) or "") or None if saver else None,
        evaluations=[e for e in trainer.state.log_history if "eval_loss" in e or "eval_rougeL" in e],
        wandb_dir=wandb_dir,
    )
    _finish_wandb()
    result.report = _try_report(output_dir)
    _print_summary(result, trainer.state.log_history)
    return result


def _wandb_run_dir() -> str | None:
    try:
        import wandb
    except ImportError:
        return None
    run = wandb.run
    if run is None:
        return None
    return os.path.dirname(run.dir.rstrip(os.sep))


def _finish_wandb() -> None:
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except Exception:
        pass


def _try_report(output_dir: Path) -> Path | None:
    try:
        from .report import build_report

        return build_report(output_dir).png
    except Exception as exc:  # pictures are a bonus here; the run itself is done
        print(f"[demo] no report pictures ({type(exc).__name__}: {exc})")
        return None


def _print_summary(result: DemoResult, log_history: list[dict[str, Any]]) -> None:
    print("\n[demo] every evaluation:")
    print(evaluation_table(log_history))
    print()
    if result.stop_step is not None:
        print(f"[demo] early stop at step {result.stop_step}: {result.stop_reason}")
    else:
        print(f"[demo] no early stop; trained {result.global_step} steps")
    for key, (step, value) in best_steps(log_history).items():
        print(f"[demo] best {key.removeprefix('eval_')} during training: {value:.4g} at step {step}")
    if result.best_checkpoint:
        manifest = result.output_dir / "best_checkpoints.json"
        print(f"[demo] best checkpoint: {result.best_checkpoint} (manifest: {manifest})")
    print(f"[demo] every result, step by step: {result.output_dir / 'trainer_state.json'}")
    print(f"[demo] model card with every evaluation: {result.output_dir / 'README.md'}")
    if result.report:
        print(f"[demo] pictures: {result.report} (and report.html beside it)")
    if result.wandb_dir:
        print(f"[demo] wandb run: {result.wandb_dir}")
        print(f"         watch it:  wandb leet {result.wandb_dir}")
        print(f"         upload it: wandb sync {result.wandb_dir}")
    print(f"[demo] redraw the pictures: ft-callbacks report {result.output_dir}")
