"""`pass@k` for generated code: each program run with the user's tests in a limited subprocess.

Running model-written code is dangerous, so it is off unless the user opts in with the environment
variable `FT_CALLBACKS_ALLOW_CODE_EXEC=1` (as Hugging Face `evaluate`'s `code_eval` asks for
`HF_ALLOW_CODE_EVAL=1`). Each program (the generated code, then the tests) runs in a fresh
`python -I` subprocess:

* in its own session, killed with its whole process group when it ends or at the timeout (a forked
  child that outlives its parent dies with the group);
* with `resource` limits on address space (memory), CPU seconds, file size and core dumps;
* in an empty temporary working directory, removed afterwards;
* with a minimal environment (PATH, LANG, HOME=the temporary directory): none of the parent's variables
  (API keys, tokens) reach it.

This limits accidents, it is no security boundary: the program runs as the same user and can read and
write what that user can by absolute path, and a child that calls `setsid()` leaves the group. Run
untrusted models' code in a container or VM. The estimator is the unbiased one of the Codex paper
(Chen et al. 2021), the same formula as `evaluate`'s `code_eval`; the runner is written here because
`code_eval` runs programs in-process-forked workers that see the parent's environment and cwd.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .errors import ConfigurationError
from .task_metrics import RoundInput, TaskMetric, TaskResult, check_positive_int, read_json_file

ALLOW_ENV = "FT_CALLBACKS_ALLOW_CODE_EXEC"
_FENCED_CODE = r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)"


def code_exec_allowed() -> bool:
    return os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes")


def require_code_exec() -> None:
    """Raise unless the user opted in to running generated code."""
    if not code_exec_allowed():
        raise ConfigurationError(
            f"pass@k runs the code the model generates on this machine. It is off unless you opt in: set the "
            f"environment variable {ALLOW_ENV}=1 (ideally inside a container or VM). The runner limits time, memory "
            "and CPU, starts in an empty directory and passes no environment variables, but it is no sandbox."
        )


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimator: 1 - C(n-c, k) / C(n, k), computed as the Codex paper's stable product.

    Args:
        n: samples generated for the problem; c: how many passed; k: the k of pass@k (k <= n).

    Raises:
        ValueError: k > n, c > n or negative counts.

    Example:
        >>> round(pass_at_k(5, 2, 2), 6)  # 1 - C(3, 2) / C(5, 2)
        0.7
    """
    if n < 0 or c < 0 or k < 1 or c > n or k > n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


@dataclass
class RunResult:
    """One program's run: passed (exit status 0 in time), status ("passed", "failed", "timeout"), the
    exit code (None at a timeout), seconds taken and the tail of its stderr."""

    passed: bool
    status: str
    returncode: int | None
    seconds: float
    stderr: str = ""


# Sets the limits, then replaces itself with the program's interpreter: no preexec_fn, which is unsafe in a
# process with threads (the workers here are threads).
_BOOT = (
    "import os, resource, sys\n"
    "mem, cpu, fsize = (int(x) for x in sys.argv[1:4])\n"
    "if mem > 0: resource.setrlimit(resource.RLIMIT_AS, (mem, mem))\n"
    "resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))\n"
    "resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n"
    "os.execv(sys.argv[4], [sys.argv[4], '-I', 'program.py'])\n"
)


def run_program(
    program: str,
    timeout: float = 5.0,
    memory_mb: int | None = 1024,
    cpu_seconds: int | None = None,
    file_mb: int = 16,
    python: str | None = None,
) -> RunResult:
    """Run `program` with `python -I` in a limited subprocess (see the module docstring).

    Args:
        program: Python source (the generated code followed by its tests).
        timeout: wall-clock seconds before the process group is killed.
        memory_mb: address-space limit (None: none; sanitizers and some runtimes need more).
        cpu_seconds: CPU-time limit (default: ceil(timeout) + 1).
        file_mb: the largest file it may write.
        python: the interpreter (default: this one).

    Returns:
        A `RunResult`; passed means exit status 0 before the timeout.

    Example:
        >>> run_program("assert 1 + 1 == 2").passed
        True
    """
    workdir = tempfile.mkdtemp(prefix="ft_callbacks_code_")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir}
    cpu = int(cpu_seconds if cpu_seconds is not None else math.ceil(timeout) + 1)
    memory = None if memory_mb is None else int(memory_mb) * 2**20
    start = time.monotonic()
    err_file = tempfile.TemporaryFile()
    try:
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as f:
            f.write(program)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-I",
                "-c",
                _BOOT,
                str(memory or 0),
                str(cpu),
                str(int(file_mb) * 2**20),
                python or sys.executable,
            ],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err_file,  # a file, not a pipe: a forked child holding it open cannot keep us waiting
            start_new_session=True,  # its own process group: killed as a whole below
            close_fds=True,
        )
        try:
            ended = _wait_unreaped(proc.pid, timeout)
        finally:
            # While the program is still an unreaped zombie its pid (the group's id) cannot be reused, so
            # this kills exactly its group: the children it forked, whether it ended or not.
            _kill_group(proc.pid)
            proc.wait()
        status = "timeout" if not ended else ("passed" if proc.returncode == 0 else "failed")
        code: int | None = proc.returncode if ended else None
        err_file.seek(0, os.SEEK_END)
        err_file.seek(max(0, err_file.tell() - 4000))
        tail = err_file.read().decode("utf-8", "replace")[-2000:]
        return RunResult(status == "passed", status, code, time.monotonic() - start, tail)
    finally:
        err_file.close()
        shutil.rmtree(workdir, ignore_errors=True)  # we created it


def _wait_unreaped(pid: int, timeout: float) -> bool:
    """Wait until process `pid` exits (True) or `timeout` passes (False), leaving it unreaped."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
                return True
        except ChildProcessError:  # pragma: no cover - already reaped
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.05)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def extract_code(text: str) -> str:
    """The body of the first ```python fenced block, or the text itself when it has none."""
    import re

    match = re.search(_FENCED_CODE, text, re.S)
    return match.group(1) if match else text


class PassAtK(TaskMetric):
    """`pass@k` for each k: the chance that at least one of k samples passes the tests, estimated without
    bias from n samples per problem and averaged over problems. Per sample: `passed` (0/1).

    Outputs are grouped into problems by their tests: outputs whose tests are the same text are n samples
    of one problem (generate n samples per prompt by repeating the prompt). With fewer than k samples for
    some problem, pass@k is NaN (as `code_eval` leaves it out).

    Args:
        tests: None: each output's reference is its test code; a list: the test code of each reference,
            by position (`tests[i]` for reference i); or `tests_file`, a JSON list / JSONL of strings
            (or of objects with a "test" key).
        k: the k values, e.g. (1, 5).
        timeout: seconds each program may run (wall clock) before its process group is killed.
        memory_mb / cpu_seconds / file_mb: limits per program (see `run_program`).
        workers: programs run at once.
        extract: run the body of a ```python fence when the output has one (default True).
        name: the keys' stem (default "pass" -> `pass@1`).

    Raises:
        ConfigurationError: code execution not allowed (names FT_CALLBACKS_ALLOW_CODE_EXEC), bad k or
            limits, tests of the wrong form.

    Example:
        >>> # FT_CALLBACKS_ALLOW_CODE_EXEC=1
        >>> PassAtK(k=(1,))(["def f(): return 1"], ["assert f() == 1"])
        {'pass@1': 1.0}
    """

    name = "pass"
    needs_references = True

    def __init__(
        self,
        tests: Sequence[str] | None = None,
        k: int | Sequence[int] = (1,),
        timeout: float = 5.0,
        memory_mb: int | None = 1024,
        cpu_seconds: int | None = None,
        file_mb: int = 16,
        workers: int = 4,
        extract: bool = True,
        tests_file: str | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name)
        require_code_exec()
        if tests is not None and tests_file is not None:
            raise ConfigurationError("pass either tests= or tests_file=, not both.")
        if tests_file is not None:
            loaded = read_json_file(tests_file, "tests_file")
            if not isinstance(loaded, list):
                raise ConfigurationError(f"tests_file={tests_file!r} must hold a list of test programs.")
            tests = [t.get("test") if isinstance(t, dict) else t for t in loaded]
        if tests is not None:
            if isinstance(tests, str) or not all(isinstance(t, str) for t in tests):
                raise ConfigurationError(
                    "tests must be a list of test programs (strings), one per reference, or None to use the references."
                )
            tests = list(tests)
            if not tests:
                raise ConfigurationError("tests is empty: give one test program per reference.")
        self.tests: list[str] | None = tests
        self.needs_references = tests is None
        ks = [k] if isinstance(k, int) else list(k)
        if not ks:
            raise ConfigurationError("k is empty: give the k values of pass@k, e.g. (1, 5).")
        for value in ks:
            check_positive_int(value, "k")
        self.k = sorted(set(ks))
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
            raise ConfigurationError(f"timeout={timeout!r} is not valid: use seconds between 0 and 3600.")
        self.timeout = float(timeout)
        self.memory_mb = check_positive_int(memory_mb, "memory_mb", allow_none=True)
        self.cpu_seconds = check_positive_int(cpu_seconds, "cpu_seconds", allow_none=True)
        self.file_mb = check_positive_int(file_mb, "file_mb")
        self.workers = check_positive_int(workers, "workers")
        if not isinstance(extract, bool):
            raise ConfigurationError(f"extract={extract!r} is not valid: use True or False.")
        self.extract = extract

    def keys(self) -> tuple[str, ...]:
        return tuple(f"{self.name}@{k}" for k in self.k)

    def _tests_of(self, round: RoundInput) -> list[str]:
        n = len(round.predictions)
        if self.tests is None:
            if round.references is None:
                raise ConfigurationError(
                    "pass@k with tests=None reads each output's tests from its reference: pass references."
                )
            return ["\n".join(group) for group in round.references]
        positions = round.positions if round.positions is not None else list(range(n))
        bad = [p for p in positions if p >= len(self.tests)]
        if bad:
            raise ConfigurationError(
                f"pass@k has {len(self.tests)} tests but an output belongs to reference {bad[0]}: give one test "
                "program per reference."
            )
        return [self.tests[p] for p in positions]

    def run(self, predictions: Sequence[str], tests: Sequence[str]) -> list[RunResult]:
        """Run every (program, tests) pair, `workers` at once, in order."""
        programs = [
            f"{extract_code(p) if self.extract else p}\n\n{t}\n" for p, t in zip(predictions, tests, strict=True)
        ]

        def one(program: str) -> RunResult:
            return run_program(program, self.timeout, self.memory_mb, self.cpu_seconds, self.file_mb)

        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            return list(pool.map(one, programs))

    def score(self, round: RoundInput) -> TaskResult:
        require_code_exec()  # also at scoring: the variable may have been unset since
        tests = self._tests_of(round)
        results = self.run(round.predictions, tests)
        problems: dict[str, list[bool]] = {}
        for test, result in zip(tests, results, strict=True):
            problems.setdefault(test, []).append(result.passed)
        corpus = {}
        for k in self.k:
            if any(len(runs) < k for runs in problems.values()):
                corpus[f"{self.name}@{k}"] = float("nan")
                continue
            values = [pass_at_k(len(runs), sum(runs), k) for runs in problems.values()]
            corpus[f"{self.name}@{k}"] = sum(values) / len(values)
        return TaskResult(
            corpus,
            {"passed": [1.0 if r.passed else 0.0 for r in results]},
            {"run": [r.status if r.passed else f"{r.status}: {r.stderr.strip()[-300:]}" for r in results]},
        )

    def __repr__(self) -> str:
        return f"PassAtK(k={self.k}, timeout={self.timeout})"


__all__ = ["ALLOW_ENV", "PassAtK", "RunResult", "code_exec_allowed", "extract_code", "pass_at_k", "run_program"]
