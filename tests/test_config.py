"""Configs: every bundled config builds its callbacks; mistakes are errors that name file, line and fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ft_callbacks import BestCheckpointSaver, ConfigurationError, GenerationScorer, OverfitGuard
from ft_callbacks.config import (
    CONFIG_DIR,
    SECTIONS,
    callbacks_from_config,
    check_config,
    training_arguments_from_config,
)

BUNDLED = sorted(CONFIG_DIR.glob("*.yaml"))
PROMPTS = {"prompts": ["def add(a, b):"], "references": ["return a + b"]}


def test_the_promised_configs_exist():
    assert {p.stem for p in BUNDLED} >= {"default", "summarization", "chat_sft", "classification", "demo"}


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_every_bundled_config_builds_in_a_fixed_order(path):
    callbacks = callbacks_from_config(path, **PROMPTS)
    assert callbacks
    order = [name for _, name in SECTIONS.values()]
    names = [type(cb).__name__ for cb in callbacks]
    assert names == sorted(names, key=order.index)  # producers first, deciders last
    assert check_config(path)  # also validates without prompts


def test_callbacks_get_the_configured_values_and_a_bundled_name_works():
    guard, scorer, saver = callbacks_from_config("default", **PROMPTS)
    assert isinstance(guard, OverfitGuard) and isinstance(saver, BestCheckpointSaver)
    assert isinstance(scorer, GenerationScorer)
    assert saver.monitor == "eval_perplexity" and saver.ranking.keep == 1
    assert scorer.num_samples == 32 and scorer.max_new_tokens == 64


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_misspelt_key_names_file_line_and_the_allowed_keys(tmp_path):
    path = write(tmp_path, "overfit_guard:\n  patience: 3\n  min_detla: 0.1\n")
    with pytest.raises(ConfigurationError) as err:
        callbacks_from_config(path)
    message = str(err.value)
    assert f"{path}:3" in message and "overfit_guard.min_detla" in message
    assert "did you mean 'min_delta'" in message and "plateau_patience" in message


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("overfit_guard:\n  patience: three\n", r":2: overfit_guard.patience = 'three' has the wrong type: expected"),
        ("best_checkpoint:\n  mode: biggest\n", r"expected 'min' \| 'max' \| null"),
        ("best_checkpoint:\n  keep: 0\n", r":1: \[best_checkpoint\] keep=0 is not valid"),
        ("overfit_gaurd:\n  patience: 3\n", r":1: unknown section 'overfit_gaurd' \(did you mean 'overfit_guard'\?\)"),
        ("training:\n  learning_rte: 0.1\n", r":2: 'learning_rte' is not a TrainingArguments field \(did you mean"),
        ("overfit_guard: 3\n", "must be a mapping"),
        ("generation_scorer:\n  metrics: [rouge]\n", "needs prompts"),
        ("generation_scorer:\n  metrics: [rogue]\n  prompts_file: p.jsonl\n", "does not exist"),
        ("label_scorer:\n  ece_bins: 0\n", r"\[label_scorer\] ece_bins=0"),
        ("- a list\n", "top level must be a mapping"),
    ],
)
def test_bad_values_are_errors_before_training(tmp_path, text, match):
    with pytest.raises(ConfigurationError, match=match):
        callbacks_from_config(write(tmp_path, text))


def test_overrides_json_and_a_section_turned_off(tmp_path):
    path = write(tmp_path, json.dumps({"overfit_guard": {"patience": 3}, "best_checkpoint": False}), "c.json")
    (guard,) = callbacks_from_config(path, overrides=["overfit_guard.patience=7"])
    assert guard.policy.gap.patience == 7
    with pytest.raises(ConfigurationError, match=r"section\.key=value"):
        callbacks_from_config(path, overrides=["patience=7"])
    with pytest.raises(ConfigurationError, match=r"does not exist\. Bundled configs"):
        callbacks_from_config(tmp_path / "nope.yaml")


def test_prompts_file_and_generation_config(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a", "reference": "b"}\n{"prompt": "c", "reference": "d"}\n')
    path = write(tmp_path, f"generation_scorer:\n  metrics: [rouge]\n  prompts_file: {prompts}\n"
                 "  generation:\n    do_sample: false\n    max_new_tokens: 5\n")  # fmt: skip
    (scorer,) = callbacks_from_config(path)
    assert scorer._raw_prompts == ["a", "c"] and scorer._raw_references == ["b", "d"]
    assert scorer.generation_config.max_new_tokens == 5


def test_training_section_builds_training_arguments(tmp_path):
    args = training_arguments_from_config("demo", output_dir=str(tmp_path), use_cpu=True)
    assert args.eval_steps == 20 and args.learning_rate == pytest.approx(0.003) and args.output_dir == str(tmp_path)


def test_cli_check(tmp_path, capsys):
    from ft_callbacks.cli import EXIT_BAD_INPUT, main

    assert main(["check", "classification"]) == 0
    assert "LabelScorer(" in capsys.readouterr().out
    bad = write(tmp_path, "best_checkpoint:\n  kep: 2\n")
    assert main(["check", str(bad)]) == EXIT_BAD_INPUT
    assert f"{bad}:2" in capsys.readouterr().err
    assert main(["check", "default", "--set", "overfit_guard.patience=0"]) == EXIT_BAD_INPUT


def test_next_wave_sections_task_metric_specs_and_thresholds(tmp_path):
    from ft_callbacks.core.structured import Regex
    from ft_callbacks.forgetting_guard import ForgettingGuard
    from ft_callbacks.thresholds import MetricThreshold

    (tmp_path / "tasks").mkdir()
    (tmp_path / "p.jsonl").write_text('{"prompt": "a", "reference": "1"}\n')
    config = tmp_path / "c.yaml"
    body = """generation_scorer:
  prompts_file: p.jsonl
  metrics: [rouge, json_valid, {regex: "^\\\\d+$"}, distinct]
forgetting_guard:
  tasks: [my_task]
  include_path: tasks
  limit: 20
thresholds:
  - {metric: eval_json_valid_rate, below: 0.9, patience: 2}
  - {metric: eval_loss, above: 10.0, action: warn}
"""
    config.write_text(body)
    callbacks = callbacks_from_config(config)
    assert [type(c) for c in callbacks] == [GenerationScorer, ForgettingGuard, MetricThreshold, MetricThreshold]
    scorer, guard, low_json, high_loss = callbacks
    assert any(isinstance(m, Regex) for m in scorer.metrics)
    assert [Path(p) for p in guard.include_path] == [tmp_path / "tasks"]  # relative to the config's folder
    assert (low_json.monitor, low_json.rule.below, low_json.rule.patience) == ("eval_json_valid_rate", 0.9, 2)
    assert (high_loss.rule.above, high_loss.action) == (10.0, "warn")
    assert len(check_config(config)) == 4
    for wrong, match in [
        ('{regex: "^\\\\d+$"}', None),
        ('{regex: "(unclosed"}', r"c.yaml:3: \[generation_scorer.metrics\[2\]\] regex '\(unclosed' does not compile"),
        ("{json_schema: {schema: {type: objekt}}}", r"generation_scorer.metrics\[2\]"),
        ("[1, 2]", r"generation_scorer.metrics\[2\] must be a metric name"),
    ]:
        config.write_text(body.replace('{regex: "^\\\\d+$"}', wrong))
        if match is None:
            check_config(config)
        else:
            with pytest.raises(ConfigurationError, match=match):
                check_config(config)
    config.write_text(body.replace("patience: 2", "patiense: 2"))
    with pytest.raises(ConfigurationError, match=r"unknown key thresholds\[0\].patiense \(did you mean 'patience'\?\)"):
        check_config(config)
    config.write_text("thresholds: eval_loss\n")
    with pytest.raises(ConfigurationError, match="must be a list of settings, one MetricThreshold each"):
        check_config(config)


def test_a_judge_from_a_config_never_takes_its_key_from_the_file(tmp_path):
    from ft_callbacks.judge.openai_backend import OpenAIJudge

    (tmp_path / "p.jsonl").write_text('{"prompt": "a", "reference": "1"}\n')
    config = tmp_path / "c.yaml"
    judged = """generation_scorer:
  prompts_file: p.jsonl
  win_rate: true
  judge: {backend: openai, model: judge-model, base_url: "http://127.0.0.1:9/v1", max_calls: 100}
"""
    config.write_text(judged)
    (scorer,) = callbacks_from_config(config)
    assert isinstance(scorer._judging.judge, OpenAIJudge)
    config.write_text(judged.replace("max_calls: 100", "api_key: sk-secret"))
    with pytest.raises(ConfigurationError, match=r"c.yaml:4: \[generation_scorer.judge\] .*api_key_env"):
        check_config(config)
    config.write_text(judged.replace("backend: openai", "backend: anthropic"))
    with pytest.raises(ConfigurationError, match="use 'openai' or 'local'"):
        check_config(config)


def test_slice_by_a_column_of_the_prompts_file(tmp_path):
    rows = [{"prompt": f"p{i}", "reference": f"r{i}", "source": "a" if i % 2 else "b"} for i in range(6)]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tmp_path / "c.yaml"
    config.write_text("generation_scorer:\n  prompts_file: p.jsonl\n  slice_by: source\n  metrics: [exact_match]\n")
    (scorer,) = callbacks_from_config(config)
    assert scorer.slice_by == "source"
    config.write_text("generation_scorer:\n  prompts_file: p.jsonl\n  slice_by: topic\n  metrics: [exact_match]\n")
    with pytest.raises(ConfigurationError, match="topic"):
        check_config(config)
