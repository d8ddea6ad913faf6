"""`ft-callbacks score`: a JSON-lines file in, a table and JSON out, numbers equal to the libraries'."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from ft_callbacks.cli import EXIT_BAD_INPUT, main

ROWS = [
    {"prediction": "the cat sat on the mat", "reference": "a cat sat on the mat"},
    {"prediction": "Returns the number of items.", "reference": "Return the number of items in the list."},
    {"prediction": "café déjà vu", "reference": ["cafe deja vu", "café déjà vu"]},
]


def write(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def test_score_prints_a_table_and_writes_json(tmp_path, capsys):
    src = write(tmp_path / "preds.jsonl", ROWS)
    assert main(["score", str(src), "--metrics", "rouge", "bleu", "exact_match"]) == 0
    out = json.loads((tmp_path / "preds.scores.json").read_text())
    assert out["samples"] == 3 and "nrefs" in out["signatures"]["bleu"]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = [
        scorer.score_multi(r["reference"] if isinstance(r["reference"], list) else [r["reference"]], r["prediction"])
        for r in ROWS
    ]
    assert out["scores"]["rougeL"] == pytest.approx(sum(e["rougeL"].fmeasure for e in expected) / 3, abs=1e-12)
    first = [r["reference"] if isinstance(r["reference"], str) else r["reference"][0] for r in ROWS]
    second = [r["reference"][1] if isinstance(r["reference"], list) else None for r in ROWS]  # ragged: None
    streams = [first, second]
    bleu = sacrebleu.corpus_bleu([r["prediction"] for r in ROWS], streams)
    assert out["scores"]["bleu"] == pytest.approx(bleu.score, abs=1e-9)
    assert out["scores"]["exact_match"] == pytest.approx(1 / 3)
    assert len(out["per_sample"]["rougeL"]) == 3
    printed = capsys.readouterr().out
    assert "rougeL" in printed and "written to" in printed


def test_bad_input_exits_2_with_a_message(tmp_path, capsys):
    assert main(["score", str(tmp_path / "missing.jsonl")]) == EXIT_BAD_INPUT
    assert "does not exist" in capsys.readouterr().err
    src = write(tmp_path / "bad.jsonl", [{"pred": "x", "reference": "y"}])
    assert main(["score", str(src), "--metrics", "rouge"]) == EXIT_BAD_INPUT
    assert "--prediction-field" in capsys.readouterr().err
    src = write(tmp_path / "ok.jsonl", ROWS)
    assert main(["score", str(src), "--metrics", "rogue"]) == EXIT_BAD_INPUT
    assert "rouge" in capsys.readouterr().err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "ft_callbacks.cli", "score", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "JSON-lines" in out.stdout
