"""pass@k: the estimator against the closed form, and the runner's limits on real subprocesses (a loop
forever, a program that writes files, one that reads the environment, one that forks)."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest

from ft_callbacks.core.code_exec import ALLOW_ENV, PassAtK, extract_code, pass_at_k, run_program
from ft_callbacks.core.errors import ConfigurationError
from ft_callbacks.core.text_scores import TextScorer, score_texts


@pytest.fixture
def allowed(monkeypatch):
    monkeypatch.setenv(ALLOW_ENV, "1")


def closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def test_estimator_equals_the_closed_form():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(closed_form(n, c, k), abs=1e-12), (n, c, k)
    assert pass_at_k(200, 13, 1) == pytest.approx(13 / 200)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_off_unless_opted_in(monkeypatch):
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    with pytest.raises(ConfigurationError, match=ALLOW_ENV):
        PassAtK(k=(1,))
    monkeypatch.setenv(ALLOW_ENV, "0")
    with pytest.raises(ConfigurationError, match=ALLOW_ENV):
        score_texts(["x = 1"], ["assert x == 1"], metrics=({"pass_at_k": {"k": [1]}},))


def test_pass_at_k_on_hand_made_pass_counts(allowed):
    # Problem A: 2 of 5 samples pass; problem B: 0 of 5; problem C: 5 of 5.
    good, bad = "def f():\n    return 1", "def f():\n    return 0"
    predictions = [good, good, bad, bad, bad] + [bad] * 5 + [good] * 5
    tests = ["assert f() == 1"] * 5 + ["assert f() == 1  # B"] * 5 + ["assert f() == 1  # C"] * 5
    metric = PassAtK(k=(1, 2, 5, 6), timeout=10, workers=2)
    scores = score_texts(predictions, tests, metrics=(metric,), per_sample=True)
    counts = [(5, 2), (5, 0), (5, 5)]
    for k in (1, 2, 5):
        expected = sum(closed_form(n, c, k) for n, c in counts) / 3
        assert scores.corpus[f"pass@{k}"] == pytest.approx(expected)
    assert math.isnan(scores.corpus["pass@6"])  # fewer than 6 samples per problem
    assert scores.per_sample["passed"] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert scores.details["run"][2].startswith("failed") and "AssertionError" in scores.details["run"][2]


def test_tests_by_reference_position_and_fenced_code(allowed):
    metric = PassAtK(tests=["assert add(2, 3) == 5", "assert neg(4) == -4"], k=1, timeout=10)
    scorer = TextScorer((metric,), references=["add", "neg"])
    fenced = "Here is the code:\n```python\ndef neg(x):\n    return -x\n```\nIt negates."
    scores = scorer.score(["def add(a, b): return a - b", fenced], indices=[0, 1])
    assert scores.corpus["pass@1"] == 0.5
    assert scores.per_sample["passed"] == [0.0, 1.0]
    assert extract_code(fenced) == "def neg(x):\n    return -x"


@pytest.mark.serial  # asserts wall-clock bounds: run alone, not beside a parallel worker
def test_a_loop_forever_cannot_outlive_its_timeout(allowed):
    start = time.monotonic()
    result = run_program("while True:\n    pass\n", timeout=1.0)
    took = time.monotonic() - start
    assert result.status == "timeout" and not result.passed
    assert 1.0 <= took < 4.0
    # CPU time is limited too, whatever the wall-clock timeout.
    result = run_program("while True:\n    pass\n", timeout=30.0, cpu_seconds=1)
    assert result.status == "failed" and result.seconds < 10


def test_a_forked_child_dies_with_its_parent(allowed, tmp_path):
    pid_file = tmp_path / "child.pid"
    program = f"""
import os, time
pid = os.fork()
if pid == 0:
    time.sleep(300)
else:
    with open({str(pid_file)!r}, "w") as f:
        f.write(str(pid))
"""
    result = run_program(program, timeout=10)
    assert result.passed, result.stderr
    child = int(pid_file.read_text())
    assert not _alive(child), "the forked child outlived the program"


def _alive(pid: int, wait: float = 3.0) -> bool:
    """Whether pid runs (a zombie waiting for init to reap it counts as dead)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            state = re.search(r"State:\s+(\w)", Path(f"/proc/{pid}/status").read_text()).group(1)
        except (FileNotFoundError, ProcessLookupError):
            return False
        if state == "Z":
            return False
        time.sleep(0.05)
    return True


def test_the_environment_is_not_inherited(allowed, monkeypatch):
    monkeypatch.setenv("FT_TEST_SECRET_TOKEN", "hunter2")
    absent = 'import os\nassert "FT_TEST_SECRET_TOKEN" not in os.environ\nassert "hunter2" not in str(os.environ)\n'
    present = 'import os\nassert os.environ.get("FT_TEST_SECRET_TOKEN") == "hunter2"\n'
    assert run_program(absent).passed
    assert not run_program(present).passed
    # Nor does PYTHONPATH-style configuration reach it: only the minimal variables are there.
    listing = run_program("import os, sys\nsys.stderr.write(repr(sorted(os.environ)))\nraise SystemExit(1)")
    assert set(eval(listing.stderr)) <= {"PATH", "LANG", "HOME", "TMPDIR", "LC_CTYPE"}


def test_files_go_to_an_empty_directory_that_is_removed(allowed, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    program = (
        "import os, sys\n"
        "assert os.listdir('.') == ['program.py'], os.listdir('.')\n"
        "open('written.txt', 'w').write('x' * 100)\n"
        "sys.stderr.write(os.getcwd())\n"
    )
    result = run_program(program)
    assert result.passed, result.stderr
    workdir = Path(result.stderr.strip())
    assert workdir != tmp_path and not workdir.exists()
    assert not (tmp_path / "written.txt").exists()
    # A file larger than file_mb is refused (SIGXFSZ).
    big = run_program("open('big.bin', 'wb').write(b'0' * (3 * 2**20))\n", file_mb=1)
    assert not big.passed
    # Memory is limited.
    assert not run_program("x = bytearray(2 * 2**30)\n", memory_mb=512).passed


def test_bad_settings_fail_at_construction(allowed):
    for kwargs in ({"k": 0}, {"k": ()}, {"timeout": 0}, {"memory_mb": -1}, {"tests": "assert True"}, {"workers": 0}):
        with pytest.raises(ConfigurationError):
            PassAtK(**kwargs)
