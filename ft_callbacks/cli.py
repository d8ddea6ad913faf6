"""The `ft-callbacks` command.

    ft-callbacks score predictions.jsonl [--metrics rouge bleu bertscore] [--output scores.json]
    ft-callbacks judge outputs.jsonl (--model M [--base-url URL] | --local PATH) [--baseline-field base] [--rubric ...]
    ft-callbacks check configs/default.yaml [--set overfit_guard.patience=5]
    ft-callbacks demo [--output-dir runs/demo]
    ft-callbacks report RUN_DIR [--out-dir DIR] [--format png,html]

Exit codes: 0 success, 2 bad input (file, fields, options: the message names the fix), 1 anything
else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .core.errors import ConfigurationError

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT = 0, 1, 2


def _read_jsonl(path: Path, prediction_field: str, reference_field: str) -> tuple[list[str], list[Any]]:
    from .config import _kind, json_object_lines

    example = f'{{"{prediction_field}": "...", "{reference_field}": "..."}}'
    predictions: list[str] = []
    references: list[Any] = []
    for number, row in json_object_lines(path, example):
        missing = [k for k in (prediction_field, reference_field) if k not in row]
        if missing:
            raise ConfigurationError(
                f"{path}:{number}: missing field(s) {missing}; the line has {sorted(row)}. Name the fields with "
                "--prediction-field/--reference-field."
            )
        predictions.append(_text(row[prediction_field], prediction_field, f"{path}:{number}"))
        reference = row[reference_field]
        if isinstance(reference, list):
            if not reference:
                raise ConfigurationError(
                    f"{path}:{number}: {reference_field} is an empty list; give at least one reference text."
                )
            bad = [r for r in reference if not isinstance(r, str)]
            if bad:
                raise ConfigurationError(
                    f"{path}:{number}: {reference_field} is a list with {_kind(bad[0])} in it; every reference "
                    "must be a JSON string."
                )
            references.append(reference)
        else:
            references.append(_text(reference, reference_field, f"{path}:{number}"))
    if not predictions:
        raise ConfigurationError(f"{path} has no rows.")
    return predictions, references


def _text(value: Any, name: str, where: str) -> str:
    """`value` if it is a string; anything else would be scored as its printed form (null as "None")."""
    from .config import _kind

    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        fix = f"write it as {json.dumps(str(value))}"
    elif value is None:
        fix = 'write "" for an empty text, or delete the line'
    else:
        fix = "write the text as one JSON string"
    raise ConfigurationError(f"{where}: {name} is {_kind(value)}, not a string: {fix}.")


def _check_output(output: Path) -> None:
    """Refuse an output path that cannot be written, before any scoring (BERTScore can take minutes)."""
    folder = output.parent
    if output.is_dir():
        raise ConfigurationError(f"--output {output} is a folder; give a file path, e.g. {output / 'scores.json'}.")
    if not folder.is_dir():
        raise ConfigurationError(
            f"--output {output}: the folder {folder} does not exist; create it (`mkdir -p {folder}`) or choose "
            "another path."
        )
    if not os.access(folder, os.W_OK):
        raise ConfigurationError(f"--output {output}: the folder {folder} is not writable; choose another path.")


def _table(scores: dict[str, float]) -> str:
    width = max(len(k) for k in scores) if scores else 6
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
    lines += [f"{name:<{width}}  {value:.4f}" for name, value in scores.items()]
    return "\n".join(lines)


def cmd_score(args: argparse.Namespace) -> int:
    from .core.text_scores import TextScorer

    predictions, references = _read_jsonl(Path(args.file), args.prediction_field, args.reference_field)
    output = Path(args.output) if args.output else Path(args.file).with_suffix(".scores.json")
    _check_output(output)
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


def cmd_judge(args: argparse.Namespace) -> int:
    from .judge import Judge
    from .judge.files import judge_file

    if bool(args.model) == bool(args.local):
        raise ConfigurationError("give the judge: --model NAME (an OpenAI-compatible endpoint, with --base-url for a "
                                 "local server) or --local PATH (an in-process Hugging Face model).")  # fmt: skip
    output = Path(args.output) if args.output else Path(args.file).with_suffix(".judge.json")
    _check_output(output)
    if args.local:
        judge = Judge.local(args.local)
    else:
        options = {"api_key_env": args.api_key_env, "max_concurrency": args.max_concurrency}
        if args.max_calls:
            options["max_calls"] = args.max_calls
        judge = Judge.openai(model=args.model, base_url=args.base_url, **options)
    result = judge_file(
        args.file, judge, rubric=args.rubric, prompt_field=args.prompt_field, prediction_field=args.prediction_field,
        baseline_field=args.baseline_field, reference_field=args.reference_field,
        max_invalid_rate=args.max_invalid_rate, cache=args.cache,
    )  # fmt: skip
    output.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(_table(result["metrics"]))
    for warning in result["warnings"]:
        print(f"WARNING: {warning}", file=sys.stderr)
    print(f"{result['usage']['calls']} judge calls, {result['usage']['cached']} from the cache; wrote {output}")
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from .human_compare import HUMAN_FOLDER, import_choices, judged_pairs, write_compare_page

    if args.import_file:
        result = import_choices(args.run_dir, args.import_file)
        print(f"step {result.step}: human win rate {result.win_rate:.3f} over {result.pairs} pairs "
              f"({result.wins} wins, {result.losses} losses, {result.ties} ties)")  # fmt: skip
        if result.judge_pairs:
            kappa = "undefined" if result.judge_kappa is None else f"{result.judge_kappa:.3f}"
            print(f"judge agrees on {result.judge_agreement:.3f} of {result.judge_pairs} pairs (Cohen's kappa {kappa})")
        print(f"saved to {Path(args.run_dir) / 'ft_callbacks' / 'human_eval.json'}; `ft-callbacks report` shows it")
        return EXIT_OK
    step, pairs = judged_pairs(args.run_dir, args.step)
    page, _ = write_compare_page(pairs, args.out_dir or Path(args.run_dir) / HUMAN_FOLDER, step)
    print(f"wrote {page} ({len(pairs)} pairs, base vs step {step}, sides shuffled). Open it in a browser, choose, "
          f"save the choices, then: ft-callbacks compare {args.run_dir} --import CHOICES.json")  # fmt: skip
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
                       help="rouge, bleu, chrf, bertscore, exact_match, task metrics without options (json_valid, "
                       "distinct, self_bleu, repetition, length, empty), or an evaluate metric name "
                       "(default: %(default)s)")
    score.add_argument("--output", "-o", help="JSON output path (default: FILE with .scores.json)")
    score.add_argument("--prediction-field", default="prediction")
    score.add_argument("--reference-field", default="reference")
    score.add_argument("--no-stemmer", action="store_true", help="ROUGE without Porter stemming")
    score.add_argument("--bertscore-model", help="local path or hub name of the BERTScore model")
    score.add_argument("--bertscore-num-layers", type=int, help="layer of --bertscore-model to use")
    score.add_argument("--device", help="BERTScore device (default: cuda if available, else cpu)")
    score.set_defaults(func=cmd_score)

    judge = commands.add_parser(
        "judge",
        help="LLM-as-judge over saved outputs: rubric scores, and the win rate against a baseline column",
        description="Judge a JSON-lines file of {prompt, prediction[, baseline][, reference]} objects with the same "
        "prompts, cache and numbers as GenerationScorer(judge=...) during training. With --baseline-field, each "
        "pair is judged in both orders (win rate, ties, flip rate, length control). Verdicts are cached beside "
        "FILE, so a rerun makes no new calls. The API key is read from --api-key-env.",
    )
    judge.add_argument("file", help="JSON-lines file, one object per line")
    judge.add_argument("--model", help="model name at an OpenAI-compatible endpoint")
    judge.add_argument("--base-url", help="endpoint, e.g. http://127.0.0.1:8000/v1 (default: OpenAI)")
    judge.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable with the API key")
    judge.add_argument("--local", help="path of a Hugging Face causal LM to judge in-process instead")
    judge.add_argument("--rubric", help='criteria for the pointwise score, e.g. "helpfulness, correctness, tone"')
    judge.add_argument("--prompt-field", default="prompt")
    judge.add_argument("--prediction-field", default="prediction")
    judge.add_argument("--baseline-field", help="field with the baseline model's output (enables the win rate)")
    judge.add_argument("--reference-field", help="field with a reference answer the judge sees")
    judge.add_argument("--max-concurrency", type=int, default=4)
    judge.add_argument("--max-calls", type=int, help="stop judging after this many calls")
    judge.add_argument("--max-invalid-rate", type=float, default=0.2)
    judge.add_argument("--cache", help="verdict cache file (default: FILE.judge_cache.sqlite beside FILE)")
    judge.add_argument("--output", "-o", help="JSON output path (default: FILE with .judge.json)")
    judge.set_defaults(func=cmd_judge)

    compare = commands.add_parser(
        "compare",
        help="the human check: a blind A/B page of base vs fine-tuned answers, and importing the choices",
        description="Write one self-contained HTML page of the pairs the judge saw at --step (default: the last "
        "judged step), each in a random order and labelled only A and B, for a person to choose in a browser; the "
        "key of which side is which stays beside the page, not in it. --import FILE adds the saved choices: the "
        "human win rate and the judge-human agreement (Cohen's kappa) go to RUN_DIR/ft_callbacks/human_eval.json "
        "and the `report`.",
    )
    compare.add_argument("run_dir", help="output_dir of a run with GenerationScorer(judge=..., win_rate=True)")
    compare.add_argument("--step", type=int, help="the judged step to compare (default: the last)")
    compare.add_argument("--import", dest="import_file", metavar="FILE", help="a choices file saved from the page")
    compare.add_argument("--out-dir", help="where the page goes (default: RUN_DIR/ft_callbacks/human)")
    compare.set_defaults(func=cmd_compare)

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
