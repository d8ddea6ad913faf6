"""Peak-memory measurement shared by the benchmarks that compare evaluation memory.

The kernel's RSS high-water mark (VmHWM) is reset just before the measured call via
/proc/self/clear_refs and read after it; a thread sampling RSS every 2 ms cross-checks it.
"""

from __future__ import annotations

import threading

__all__ = ["RssSampler", "read_status_kib", "reset_peak_rss"]


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
