"""`ft-callbacks judge FILE`: saved outputs judged outside training with an in-process judge; the win rate
against a baseline column, the cache (a rerun makes no calls), bad input named."""

from __future__ import annotations

import json

import pytest

from ft_callbacks import toy
from ft_callbacks.cli import EXIT_BAD_INPUT, EXIT_OK, main


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("cli_judge")
    toy.tiny_gpt2(tokenizer, n_positions=1024, seed=5).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_judge_file_with_a_baseline_then_from_the_cache(judge_dir, tmp_path, capsys):
    rows = [{"prompt": f"question {i}", "prediction": f"answer {i} " * (i + 1), "baseline": f"base {i}",
             "reference": f"answer {i}"} for i in range(5)]  # fmt: skip
    data = tmp_path / "outputs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["judge", str(data), "--local", str(judge_dir), "--baseline-field", "baseline", "--reference-field",
            "reference", "--rubric", "helpfulness, tone", "--max-invalid-rate", "1"]  # fmt: skip
    assert main(argv) == EXIT_OK
    result = json.loads((tmp_path / "outputs.judge.json").read_text())
    metrics = result["metrics"]
    assert 1 <= metrics["judge_score"] <= 10 and 1 <= metrics["judge_helpfulness"] <= 10
    finals = [r["final_verdict"] for r in result["records"]]
    wins, ties = finals.count("current"), finals.count("tie")
    assert metrics["win_rate"] == pytest.approx((wins + 0.5 * ties) / 5)
    assert result["usage"] == {"calls": 5 + 10, "cached": 0}
    assert "win_rate" in capsys.readouterr().out
    assert main(argv) == EXIT_OK
    again = json.loads((tmp_path / "outputs.judge.json").read_text())
    assert again["usage"] == {"calls": 0, "cached": 15} and again["metrics"] == metrics
    assert "0 judge calls, 15 from the cache" in capsys.readouterr().out


def test_bad_input_is_named(judge_dir, tmp_path, capsys):
    data = tmp_path / "o.jsonl"
    data.write_text(json.dumps({"prompt": "p", "output": "x"}) + "\n")
    assert main(["judge", str(data), "--local", str(judge_dir)]) == EXIT_BAD_INPUT
    assert "missing field 'prediction'" in capsys.readouterr().err
    assert main(["judge", str(data)]) == EXIT_BAD_INPUT
    assert "--model NAME" in capsys.readouterr().err
    # The same reader as `ft-callbacks score`: a whole-file JSON array gets the command that converts it.
    data.write_text(json.dumps([{"prompt": "p", "prediction": "x"}], indent=1))
    assert main(["judge", str(data), "--local", str(judge_dir)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"{data}:1: the file is one JSON array" in err and "jq -c '.[]'" in err
