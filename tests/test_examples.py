"""Each example runs end to end offline on tiny models."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_causal_lm_example_stops_early(tmp_path):
    example = _load("causal_lm_overfit_guard")
    trainer = example.main(["--output-dir", str(tmp_path / "run"), "--max-steps", "300"])
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    stops = [e for e in state["log_history"] if "ft_callbacks/early_stop_step" in e]
    assert stops, "the demo should end with an early stop"
    assert trainer.state.global_step == stops[-1]["ft_callbacks/early_stop_step"] < 300
    assert any("eval_perplexity" in e for e in state["log_history"])
