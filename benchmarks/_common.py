"""What every benchmark script shares: its environment, ROOT, and small helpers.

Importing this module sets the environment defaults the benchmarks run under (wandb disabled, Hugging Face
offline, quiet tokenizers and transformers), so a script imports it before anything imports transformers or
torch. Nothing here imports them at module level.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent

__all__ = [
    "ROOT",
    "CostMeter",
    "block_bootstrap_ci",
    "bootstrap_median_ci",
    "bootstrap_ratio_ci",
    "environment",
    "median",
    "noop_callback",
    "pass_fail",
    "print_rows",
    "print_verdict",
    "prompt_pairs",
    "quiet",
    "table_lines",
    "training_args",
    "tree_bytes",
    "write_json",
]


def quiet(verbose: bool):
    """Swallow the Trainer's and the callbacks' console lines unless `verbose` (errors still raise)."""
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def median(values: list[float]) -> float:
    """The median as a float; NaN for no values."""
    return float(statistics.median(values)) if values else math.nan


def pass_fail(flag: bool | None) -> str:
    """A table's result cell: "info" where there is no target, else "PASS" or "FAIL"."""
    return "info" if flag is None else ("PASS" if flag else "FAIL")


# ---------------------------------------------------------------------------------------------------
# bootstrap intervals (95%, percentile method, numpy's default_rng(seed))
# ---------------------------------------------------------------------------------------------------
def bootstrap_median_ci(values: list[float], *, seed: int, n_boot: int = 4000) -> list[float]:
    """95% interval of the median of independent values (e.g. one ratio per repeat); NaNs for fewer than 2."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    if len(data) < 2:
        return [math.nan, math.nan]
    rng = np.random.default_rng(seed)
    medians = np.median(data[rng.integers(0, len(data), size=(n_boot, len(data)))], axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return [float(low), float(high)]


def bootstrap_ratio_ci(a: list[float], b: list[float], *, seed: int, n_boot: int = 2000) -> list[float]:
    """95% interval of median(a) / median(b), a and b resampled independently; NaNs for fewer than 2 each."""
    import numpy as np

    if len(a) < 2 or len(b) < 2:
        return [math.nan, math.nan]
    xa, xb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    ma = np.median(xa[rng.integers(0, len(xa), size=(n_boot, len(xa)))], axis=1)
    mb = np.median(xb[rng.integers(0, len(xb), size=(n_boot, len(xb)))], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        low, high = np.percentile(ma / mb, [2.5, 97.5])
    return [float(low), float(high)]


def block_bootstrap_ci(
    pairs: list[list[tuple[float, ...]]], *, seed: int, block: int = 10, n_boot: int = 2000, on: int = 0, off: int = 1
) -> tuple[float, float]:
    """95% interval of the median of on/off ratios (columns `on` and `off`) over pairs, resampling blocks of
    consecutive pairs (the machine's load drifts, so neighbouring steps are not independent)."""
    import numpy as np

    blocks = [np.asarray(run[i : i + block]) for run in pairs for i in range(0, len(run), block)]
    blocks = [b for b in blocks if len(b)]
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(n_boot):
        sample = np.concatenate([blocks[i] for i in rng.integers(0, len(blocks), size=len(blocks))])
        ratios.append(float(np.median(sample[:, on] / sample[:, off])))
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


# ---------------------------------------------------------------------------------------------------
# Trainer set-up and measurement helpers
# ---------------------------------------------------------------------------------------------------
def training_args(output_dir: str, seed: int, /, **settings: Any):
    """CPU `TrainingArguments` for a benchmark run: no saving, no reporting, no progress bars, no dataloader
    workers, model and data order seeded with `seed`; `settings` add to or override these."""
    from transformers import TrainingArguments

    base: dict[str, Any] = {
        "output_dir": output_dir,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": seed,
        "data_seed": seed,
        "dataloader_num_workers": 0,
    }
    return TrainingArguments(**{**base, **settings})


class CostMeter:
    """Wall time spent inside the functions it wraps (`timed`), e.g. a callback's own event handlers."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def timed(self, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return wrapper


def noop_callback():
    """A TrainerCallback that does nothing, for harness checks (A/A) in the place of the callback under test."""
    from transformers import TrainerCallback

    class NoOpCallback(TrainerCallback):
        """Stands in for the callback under test in the harness check (A/A): switched the same way, does nothing."""

    return NoOpCallback()


def tree_bytes(root: str | os.PathLike) -> int:
    """Total size of the files below `root` (files that vanish meanwhile count 0)."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(dirpath, name))
    return total


def prompt_pairs(texts: list[str], count: int) -> tuple[list[str], list[str]]:
    """Prompts of 3 to 20 words (the start of a docstring) and references (the 14 words that follow)."""
    prompts, references = [], []
    for text in texts:
        words = text.split()
        k = 3 + (len(prompts) * 7) % 18
        if len(words) < k + 4:
            continue
        prompts.append(" ".join(words[:k]))
        references.append(" ".join(words[k : k + 14]))
        if len(prompts) == count:
            break
    assert len(prompts) == count, f"only {len(prompts)} docstrings are long enough for {count} prompts"
    return prompts, references


# ---------------------------------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------------------------------
def environment(torch_threads: int) -> dict[str, Any]:
    """The `environment` entry of a results file: Python, torch, transformers, CPUs, torch threads, platform."""
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch_threads,
        "platform": platform.platform(),
    }


def table_lines(rows: list[tuple[str, ...]] | list[list[str]]) -> list[str]:
    """A table of strings as aligned lines: the header (first row), a rule of dashes as wide, then the other rows;
    the first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def render(row: tuple[str, ...] | list[str]) -> str:
        pairs = zip(row, widths, strict=True)
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(pairs))

    lines = [render(r) for r in rows]
    return [lines[0], "-" * len(lines[0]), *lines[1:]]


def print_rows(rows: list[tuple[str, ...]] | list[list[str]]) -> None:
    """Print a blank line, then the table (see `table_lines`)."""
    print()
    print("\n".join(table_lines(rows)))


def write_json(results: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write `results` as indented JSON (numpy numbers as floats) to `path`, creating its folder; returns it."""
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2, default=float) + "\n")
    return output


def print_verdict(results: dict[str, Any], output: str | os.PathLike) -> None:
    """The closing line: whether every target was met (`all_pass`), the run's time and where the results went."""
    print(
        f"\nall targets {'PASS' if results['all_pass'] else 'NOT MET'}; {results['elapsed_s']:.0f} s; "
        f"results written to {output}"
    )
