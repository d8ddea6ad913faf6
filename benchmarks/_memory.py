"""Peak-memory measurement shared by the benchmarks that compare evaluation memory.

The kernel's RSS high-water mark (VmHWM) is reset just before the measured call via
/proc/self/clear_refs and read after it; a thread sampling RSS every 2 ms cross-checks it.
Each measurement runs in a fresh subprocess of the benchmark script: `run_worker` starts it and reads
back the result the worker printed with `print_worker_result`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

__all__ = ["RssSampler", "print_worker_result", "read_status_kib", "reset_peak_rss", "run_worker"]

WORKER_MARKER = "MEMORY_RESULT "


def read_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssSampler(threading.Thread):
    def __init__(self, interval_s: float = 0.002) -> None:
        super().__init__(daemon=True)
        import psutil

        self.process = psutil.Process()
        self.interval_s = interval_s
        self.peak = self.process.memory_info().rss
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self.samples += 1
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def print_worker_result(result: dict[str, Any]) -> None:
    """In the worker process: print `result` on one marked line for `run_worker` to read."""
    print(WORKER_MARKER + json.dumps(result), flush=True)


def run_worker(script: str | Path, args: list[str], tag: str, cwd: str | Path) -> dict[str, Any]:
    """Run `python script *args` in a fresh process (in `cwd`, 30 min at most) and return the result it printed
    with `print_worker_result`; `tag` names the run in errors."""
    cmd = [sys.executable, str(Path(script).resolve()), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(cwd), timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(
            f"memory worker {tag} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(WORKER_MARKER)]
    if not lines:
        raise RuntimeError(f"memory worker {tag} printed no result:\n{proc.stdout[-3000:]}")
    return json.loads(lines[-1][len(WORKER_MARKER) :])
