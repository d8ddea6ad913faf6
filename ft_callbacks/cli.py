"""The `ft-callbacks` command.

    ft-callbacks score predictions.jsonl [--metrics rouge bleu bertscore] [--output scores.json]
    ft-callbacks check configs/default.yaml [--set overfit_guard.patience=5]
    ft-callbacks demo [--output-dir runs/demo]
    ft-callbacks report RUN_DIR [--out-dir DIR] [--format png,html]

Exit codes: 0 success, 2 bad input (file, fields, options: the message names the fix), 1 anything
else.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .core.errors import ConfigurationError

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2


def _read_jsonl(path: Path, prediction_field: str, reference_field: str) -> tuple[list[str], list[Any]]:
    if not path.is_file():
        raise ConfigurationError(f"{path} does not exist; give a JSON-lines file with one object per line.")
    predictions: list[str] = []
    references: list[Any] = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigurationError(f"{path}:{number}: not valid JSON ({exc.msg}).") from None
            missing = [k for k in (prediction_field, reference_field) if k not in row]
            if missing:
                raise ConfigurationError(
                    f"{path}:{number}: missing field(s) {missing}; the line has {sorted(row)}. Name the fields with "
                    "--prediction-field/--reference-field."
                )
            predictions.append(str(row[prediction_field]))
            reference = row[reference_field]
            references.append([str(r) for r in reference] if isinstance(reference, list) else str(reference))
    if not predictions:
        raise ConfigurationError(f"{path} has no rows.")
    return predictions, references


def _table(scores: dict[str, float]) -> str:
    width = max(len(k) for k in scores) if scores else 6
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    lines += [f"{name:<{width}}  {value:.4f}" for name, value in scores.items()]
    return "\n".join(lines)


def cmd_score(args: argparse.Namespace) -> int:
    from .core.text_scores import TextScorer

    predictions, references = _read_jsonl(Path(args.file), args.prediction_field, args.reference_field)
    options: dict[str, Any] = {"use_stemmer": not args.no_stemmer}
    if args.bertscore_model:
        options["bertscore_model"] = args.bertscore_model
        options["bertscore_num_layers"] = args.bertscore_num_layers
    if args.device:
        options["device"] = args.device
    scorer = TextScorer(args.metrics, references, **options)
    try:
        scores = scorer.score(predictions)
    finally:
        scorer.close()
    output = Path(args.output) if args.output else Path(args.file).with_suffix(".scores.json")
    payload = {
        "file": str(args.file),
        "samples": len(predictions),
        "scores": scores.corpus,
        "signatures": scores.signatures,
        "per_sample": scores.per_sample,
    }
    output.write_text(json.dumps(payload, indent=2), encoding="utf-8")
    print(_table(scores.corpus))
    print(f"\n{len(predictions)} samples; written to {output}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    formats = tuple(f for f in args.format.split(",") if f) if args.format else ()
    result = build_report(args.run_dir, out_dir=args.out_dir, formats=formats)
    print(result.summary)
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from .config import check_config

    lines = check_config(args.config, overrides=args.set or ())
    print(f"{args.config}: OK")
    for line in lines:
        print(f"  {line}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(args.output_dir, config=args.config, overrides=args.set or (), report_to=args.report_to)
    return EXIT_OK if result.global_step > 0 else EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ft-callbacks", description="Monitoring callbacks for the HF Trainer.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    score = commands.add_parser(
        "score",
        help="score predictions against references (ROUGE, BLEU, chrF, BERTScore, exact match)",
        description="Score a JSON-lines file of {prediction, reference} objects (reference may be a list of "
        "references). Prints a table and writes JSON (corpus scores, per-sample scores, signatures).",
    )
    score.add_argument("file", help="JSON-lines file, one object per line")
    score.add_argument("--metrics", nargs="+", default=["rouge", "bleu", "bertscore"],
                       help="rouge, bleu, chrf, bertscore, exact_match, or an evaluate metric name "
                       "(default: %(default)s)")
    score.add_argument("--output", "-o", help="JSON output path (default: FILE with .scores.json)")
    score.add_argument("--prediction-field", default="prediction")
    score.add_argument("--reference-field", default="reference")
    score.add_argument("--no-stemmer", action="store_true", help="ROUGE without Porter stemming")
    score.add_argument("--bertscore-model", help="local path or hub name of the BERTScore model")
    score.add_argument("--bertscore-num-layers", type=int, help="layer of --bertscore-model to use")
    score.add_argument("--device", help="BERTScore device (default: cuda if available, else cpu)")
    score.set_defaults(func=cmd_score)

    demo = commands.add_parser(
        "demo",
        help="the embedded demo: fine-tune a small GPT-2 on Python's docstrings (CPU, offline, a few minutes)",
        description="Fine-tunes a small GPT-2 on standard-library docstrings with OverfitGuard, BestCheckpointSaver "
        "and GenerationScorer (configs/demo.yaml): watch the gap-based early stop, the best checkpoint and the "
        "generation scores rise from the step-0 baseline. wandb logs offline unless you are logged in.",
    )
    demo.add_argument("--output-dir", default="runs/demo")
    demo.add_argument("--config", default="demo", help="config path or bundled name (default: %(default)s)")
    demo.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a config value")
    demo.add_argument("--report-to", default=None, help="'wandb' (default when installed) or 'none'")
    demo.set_defaults(func=cmd_demo)

    report = commands.add_parser(
        "report",
        help="pictures of a run: train vs validation loss with the gap shaded, best step, early stop, scores",
        description="Reads RUN_DIR/trainer_state.json (or the newest checkpoint's), OverfitGuard's record and "
        "BestCheckpointSaver's manifest, and writes RUN_DIR/report/report.png and a self-contained report.html. "
        "With save_strategy='no' call trainer.save_state() after training so trainer_state.json exists.",
    )
    report.add_argument("run_dir", help="the Trainer's output_dir")
    report.add_argument("--out-dir", help="where to write (default: RUN_DIR/report)")
    report.add_argument("--format", default="png,html", help="comma-separated: png, html (default: %(default)s)")
    report.set_defaults(func=cmd_report)

    check = commands.add_parser(
        "check",
        help="validate a config without training",
        description="Load a YAML/JSON config (or a bundled one by name: default, summarization, chat_sft, "
        "classification, demo), check every key, type and value, and build the callbacks. Exit code 2 and "
        "a message naming file, line and fix on a mistake.",
    )
    check.add_argument("config", help="path to a YAML/JSON config, or a bundled config name")
    check.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override a value (repeatable)")
    check.set_defaults(func=cmd_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigurationError as exc:
        print(f"ft-callbacks {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as exc:
        print(f"ft-callbacks {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
