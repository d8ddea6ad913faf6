"""Hostile input, round two: configs that used to pass wrong, and `ft-callbacks score` lines that used
to be scored as something they are not. Every mistake is refused with file, line and the fix."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rouge_score import rouge_scorer

from ft_callbacks import ConfigurationError, GenerationScorer, OverfitGuard
from ft_callbacks.cli import EXIT_BAD_INPUT, main
from ft_callbacks.config import callbacks_from_config, check_config, training_arguments_from_config

PROMPTS = {"prompts": ["def add(a, b):"], "references": ["return a + b"]}
CLI = Path(sys.executable).with_name("ft-callbacks")


def write(tmp_path: Path, text: str, name: str = "c.yaml", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def refused(path: Path, **kwargs) -> str:
    """The message callbacks_from_config refuses `path` with."""
    with pytest.raises(ConfigurationError) as err:
        callbacks_from_config(path, **kwargs)
    return str(err.value)


def check_refuses(path: Path, capsys) -> str:
    """`ft-callbacks check PATH` exits 2; its message."""
    capsys.readouterr()
    assert main(["check", str(path)]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert "OK" not in captured.out
    return captured.err


# -- duplicate keys and sections -------------------------------------------------------------------
def test_a_duplicate_key_is_refused_with_both_lines(tmp_path, capsys):
    path = write(tmp_path, "overfit_guard:\n  patience: 3\n  min_delta: 0.0\n  patience: 5\n")
    for message in (refused(path), check_refuses(path, capsys)):
        assert f"{path}:4: duplicate key overfit_guard.patience (first at line 2)" in message
        assert "keep one" in message
    # A YAML merge key (`<<`) overriding a merged value is no duplicate.
    path = write(tmp_path, "overfit_guard:\n  <<: {patience: 3, min_evals: 1}\n  patience: 4\n", "merge.yaml")
    (guard,) = callbacks_from_config(path)
    assert guard.policy.gap.patience == 4


def test_a_duplicate_section_is_refused(tmp_path, capsys):
    text = "overfit_guard:\n  patience: 3\nbest_checkpoint:\n  keep: 1\noverfit_guard:\n  patience: 9\n"
    path = write(tmp_path, text)
    for message in (refused(path), check_refuses(path, capsys)):
        assert f"{path}:5: duplicate section 'overfit_guard' (first at line 1)" in message


def test_a_duplicate_key_in_a_json_config_is_refused_with_its_line(tmp_path, capsys):
    text = '{\n  "overfit_guard": {\n    "patience": 3,\n    "patience": 5\n  },\n  "best_checkpoint": false\n}\n'
    path = write(tmp_path, text, "c.json")
    for message in (refused(path), check_refuses(path, capsys)):
        assert f"{path}:4: duplicate key overfit_guard.patience (first at line 3)" in message
    # A valid JSON config now has lines in its messages too.
    path = write(tmp_path, '{\n  "overfit_guard": {\n    "patince": 3\n  }\n}\n', "d.json")
    assert f"{path}:3: unknown key overfit_guard.patince (did you mean 'patience'?)" in refused(path)


# -- nested settings: generation (GenerationConfig) and scorer_options (TextScorer) ------------------
def test_generation_typos_the_issue_quotes_are_refused(tmp_path, capsys):
    path = write(
        tmp_path,
        "generation_scorer:\n  metrics: [rouge]\n  generation: {max_new_tokns: 5, do_smaple: true}\n",
    )
    message = check_refuses(path, capsys)
    assert f"{path}:3: unknown key generation_scorer.generation.max_new_tokns (did you mean 'max_new_tokens'?)" in (
        message
    )
    assert "transformers.GenerationConfig" in message
    message = refused(path, **PROMPTS)
    assert "generation.max_new_tokns" in message

    path = write(tmp_path, "generation_scorer:\n  generation:\n    do_sample: true\n    do_smaple: true\n", "b.yaml")
    assert f"{path}:4: unknown key generation_scorer.generation.do_smaple (did you mean 'do_sample'?)" in refused(
        path, **PROMPTS
    )
    # Good settings still build (an int where GenerationConfig documents a float is fine).
    text = "generation_scorer:\n  generation:\n    do_sample: true\n    temperature: 1\n    top_k: 5\n"
    path = write(tmp_path, text, "g.yaml")
    (scorer,) = callbacks_from_config(path, **PROMPTS)
    assert isinstance(scorer, GenerationScorer) and scorer.generation_config.top_k == 5


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ('do_sample: "yes"', "generation_scorer.generation.do_sample = 'yes' has the wrong type: expected bool"),
        ("max_new_tokens: many", "generation_scorer.generation.max_new_tokens = 'many' has the wrong type"),
        ("temperature: hot", "generation.temperature = 'hot' has the wrong type: expected float"),
        ("max_new_tokens: 0", "[generation_scorer.generation] `max_new_tokens` must be greater than 0"),
    ],
)
def test_generation_values_of_the_wrong_type_or_range_are_refused(tmp_path, setting, expected):
    path = write(tmp_path, f"generation_scorer:\n  generation:\n    {setting}\n")
    message = refused(path, **PROMPTS)
    assert f"{path}:3: " in message and expected in message


def test_scorer_options_typo_is_refused_with_its_line(tmp_path):
    path = write(tmp_path, "generation_scorer:\n  metrics: [rouge]\n  scorer_options:\n    use_stemer: false\n")
    message = refused(path, **PROMPTS)
    assert f"{path}:4: unknown key generation_scorer.scorer_options.use_stemer (did you mean 'use_stemmer'?)" in message
    assert "bertscore_model" in message  # the allowed keys are listed


# -- training: types, ranges, choices, and TrainingArguments' own checks ---------------------------
@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ('learning_rate: "fast"', "training.learning_rate = 'fast' has the wrong type: expected float"),
        ("learning_rate: 3e-4", "write 3.0e-4"),  # YAML 1.1 reads an exponent without a point as text
        ("learning_rate: 0", "training.learning_rate = 0 is out of range: it must be > 0"),
        ("num_train_epochs: -3", "training.num_train_epochs = -3 is out of range: it must be > 0"),
        ("max_steps: 0", "-1 to train for num_train_epochs"),
        ("per_device_train_batch_size: 0", "must be >= 1"),
        ("learning_rate: .nan", "out of range"),
        ("eval_strategy: stpes", "eval_strategy = 'stpes' is not one of ['no', 'steps', 'epoch'] (did you mean"),
        ("bf16: maybe", "training.bf16 = 'maybe' has the wrong type: expected bool"),
    ],
)
def test_training_values_of_the_wrong_type_or_range_are_refused(tmp_path, capsys, setting, expected):
    path = write(tmp_path, f"overfit_guard:\n  patience: 3\ntraining:\n  seed: 1\n  {setting}\n")
    for message in (refused(path), check_refuses(path, capsys)):
        assert f"{path}:5: " in message and expected in message


def test_training_arguments_own_checks_run_in_check(tmp_path, capsys):
    path = write(
        tmp_path,
        "training:\n  eval_strategy: steps\n  save_strategy: epoch\n  load_best_model_at_end: true\n",
    )
    message = check_refuses(path, capsys)
    assert f"{path}:4: [training]" in message
    assert "load_best_model_at_end requires the save and eval strategy" in message
    # A good training section still passes and builds.
    path = write(tmp_path, "training:\n  learning_rate: 3.0e-4\n  num_train_epochs: 2\n  max_steps: -1\n", "ok.yaml")
    assert check_config(path) == ["TrainingArguments overrides: ['learning_rate', 'max_steps', 'num_train_epochs']"]
    args = training_arguments_from_config(path, output_dir=str(tmp_path))
    assert args.learning_rate == pytest.approx(3e-4) and args.num_train_epochs == 2
    # A complaint only about this machine's hardware is a note, not an error: the config may be for a GPU.
    path = write(tmp_path, "training:\n  bf16: true\n", "gpu.yaml")
    lines = check_config(path)
    if not torch.cuda.is_available():
        assert any(line.startswith("note: on this machine TrainingArguments says:") for line in lines)


# -- a section with every key commented out -----------------------------------------------------------
def test_a_section_with_every_key_commented_out_is_refused(tmp_path, capsys):
    path = write(tmp_path, "best_checkpoint:\n  keep: 1\noverfit_guard:\n  # patience: 3\n  # min_delta: 0.1\n")
    for message in (refused(path), check_refuses(path, capsys)):
        assert f"{path}:3: section 'overfit_guard' has no settings" in message
        assert "OverfitGuard would be off" in message
        assert "overfit_guard: {}" in message and "overfit_guard: false" in message
    # Said explicitly, null and false still turn a callback off; {} is the defaults.
    path = write(tmp_path, "best_checkpoint: null\noverfit_guard: {}\n", "ok.yaml")
    (guard,) = callbacks_from_config(path)
    assert isinstance(guard, OverfitGuard)


def test_a_key_with_no_value_is_refused(tmp_path):
    path = write(tmp_path, "overfit_guard:\n  patience: 3\n  plateau_patience:\n")
    message = refused(path)
    assert f"{path}:3: overfit_guard.plateau_patience has no value" in message and "plateau_patience: null" in message


# -- file encodings ---------------------------------------------------------------------------------------
def test_a_utf16_config_with_a_bom_is_read(tmp_path):
    path = write(tmp_path, "# réglages\noverfit_guard:\n  patience: 7\n", encoding="utf-16")
    (guard,) = callbacks_from_config(path)
    assert guard.policy.gap.patience == 7


def test_a_latin1_config_is_refused_with_the_fix_not_a_traceback(tmp_path):
    path = write(tmp_path, "overfit_guard:\n  # café au lait\n  patience: 3\n", encoding="latin-1")
    message = refused(path)
    assert f"{path}:2: not UTF-8" in message and "Latin-1" in message and "iconv -f latin1 -t utf-8" in message
    out = subprocess.run([str(CLI), "check", str(path)], capture_output=True, text=True)
    assert out.returncode == EXIT_BAD_INPUT
    assert "Traceback" not in out.stderr and "UnicodeDecodeError" not in out.stderr
    assert f"{path}:2: not UTF-8" in out.stderr


def test_utf16_without_a_bom_is_named(tmp_path):
    path = write(tmp_path, "overfit_guard:\n  patience: 3\n", encoding="utf-16-le")
    message = refused(path)
    assert str(path) in message and "UTF-16" in message and "save it as UTF-8" in message


# -- prompts_file: relative to the config, any encoding mistake named ---------------------------------
def test_a_relative_prompts_file_is_found_next_to_the_config(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "p.jsonl").write_text('{"prompt": "a", "reference": "b"}\n', encoding="utf-8")
    path = write(folder, "generation_scorer:\n  metrics: [rouge]\n  prompts_file: p.jsonl\n")
    monkeypatch.chdir(tmp_path)  # the current directory has no p.jsonl
    (scorer,) = callbacks_from_config(path)
    assert scorer._raw_prompts == ["a"]
    # Given on the command line (an override), a relative path is relative to the current directory.
    (scorer,) = callbacks_from_config(path, overrides=["generation_scorer.prompts_file=configs/p.jsonl"])
    assert scorer._raw_prompts == ["a"]
    missing = write(folder, "generation_scorer:\n  metrics: [rouge]\n  prompts_file: q.jsonl\n", "m.yaml")
    message = refused(missing)
    assert f"{missing}:3:" in message and str(folder / "q.jsonl") in message and "next to the config" in message


def test_a_latin1_prompts_file_is_named(tmp_path):
    (tmp_path / "p.jsonl").write_bytes('{"prompt": "é", "reference": "b"}\n'.encode("latin-1"))
    path = write(tmp_path, "generation_scorer:\n  metrics: [rouge]\n  prompts_file: p.jsonl\n")
    message = refused(path)
    assert f"{tmp_path / 'p.jsonl'}:1: not UTF-8" in message and "iconv" in message


# -- ft-callbacks score ---------------------------------------------------------------------------------
GOOD = {"prediction": "the cat sat", "reference": "a cat sat"}


def write_lines(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def score_refuses(args: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(["score", *args]) == EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert "written to" not in captured.out
    return captured.err


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"prediction": None, "reference": "None"}, "prediction is null, not a string"),
        ({"prediction": ["a", "b"], "reference": "a b"}, "prediction is an array, not a string"),
        ({"prediction": {"text": "a"}, "reference": "a"}, "prediction is an object, not a string"),
        ({"prediction": 42, "reference": "42"}, 'prediction is a number, not a string: write it as "42"'),
        ({"prediction": "a", "reference": None}, "reference is null"),
        ({"prediction": "a", "reference": []}, "reference is an empty list"),
        ({"prediction": "a", "reference": ["a", None]}, "reference is a list with null in it"),
    ],
)
def test_score_refuses_a_prediction_or_reference_that_is_not_text(tmp_path, capsys, row, expected):
    src = write_lines(tmp_path / "p.jsonl", [json.dumps(GOOD), json.dumps(row)])
    message = score_refuses([str(src), "--metrics", "exact_match"], capsys)
    assert f"{src}:2: " in message and expected in message
    assert not (tmp_path / "p.scores.json").exists()


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('"the cat sat"', "line is a string, not an object"),
        ('[{"prediction": "a", "reference": "a"}]', "line is an array, not an object"),
        ("42", "line is a number, not an object"),
        ("null", "line is null, not an object"),
    ],
)
def test_score_refuses_a_line_that_is_not_an_object(tmp_path, capsys, line, expected):
    src = write_lines(tmp_path / "p.jsonl", [json.dumps(GOOD), line])
    message = score_refuses([str(src), "--metrics", "exact_match"], capsys)
    assert f"{src}:2: {expected}" in message and '{"prediction": ' in message


def test_score_names_a_whole_file_json_array_and_how_to_convert_it(tmp_path, capsys):
    src = tmp_path / "p.json"
    src.write_text(json.dumps([GOOD, GOOD], indent=2), encoding="utf-8")
    message = score_refuses([str(src), "--metrics", "exact_match"], capsys)
    assert f"{src}:1: " in message and "one JSON array" in message and "jq -c '.[]'" in message


def test_score_reads_utf16_with_a_bom_and_names_latin1(tmp_path, capsys):
    rows = [json.dumps({"prediction": "café au lait", "reference": "un café au lait"}, ensure_ascii=False)]
    src = write_lines(tmp_path / "u16.jsonl", rows, encoding="utf-16")
    assert main(["score", str(src), "--metrics", "rouge"]) == 0
    out = json.loads((tmp_path / "u16.scores.json").read_text(encoding="utf-8"))
    expected = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score("un café au lait", "café au lait")
    assert out["scores"]["rougeL"] == pytest.approx(expected["rougeL"].fmeasure, abs=1e-12)

    src = write_lines(tmp_path / "l1.jsonl", [json.dumps(GOOD), rows[0]], encoding="latin-1")
    message = score_refuses([str(src), "--metrics", "rouge"], capsys)
    assert f"{src}:2: not UTF-8" in message and "iconv -f latin1 -t utf-8" in message


def test_score_output_into_a_missing_folder_fails_before_scoring(tmp_path, capsys):
    src = write_lines(tmp_path / "p.jsonl", [json.dumps(GOOD)])
    missing = tmp_path / "no" / "such"
    # An unknown metric would fail when the scorer is built: the folder is named first, before any scoring.
    message = score_refuses([str(src), "--metrics", "rogue", "-o", str(missing / "s.json")], capsys)
    assert f"folder {missing} does not exist" in message and "mkdir -p" in message and "rogue" not in message
    message = score_refuses([str(src), "--metrics", "rouge", "-o", str(tmp_path)], capsys)
    assert f"{tmp_path} is a folder" in message
