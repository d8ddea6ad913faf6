"""Run every benchmark and write benchmarks/RESULTS.md (plus each benchmark's results_*.json).

    python -m benchmarks                  # quick sizes: minutes on 2 CPU cores
    python -m benchmarks --full           # larger sizes, more repeats
    python -m benchmarks --only label_scorer text_scores

Each `benchmarks/bench_<name>.py` runs in its own process (fixed seeds, its baselines measured in the
same run, medians and spread over interleaved repeats) and writes `results_<name>.json` with a
`table` of rows: what, ours, baseline, ratio, target, result. A target that is missed is reported
as missed; the benchmark's own output says why.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def run_one(name: str, full: bool, timeout: float) -> dict:
    cmd = [sys.executable, str(HERE / f"bench_{name}.py"), *(["--full"] if full else [])]
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=HERE.parent, timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    elapsed = time.perf_counter() - started
    result_file = HERE / f"results_{name}.json"
    results = json.loads(result_file.read_text()) if result_file.is_file() else {}
    fresh = result_file.is_file() and result_file.stat().st_mtime >= time.time() - elapsed - 1
    return {"name": name, "exit": code, "elapsed_s": elapsed, "fresh": fresh, "results": results}


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").strip()


def render(runs: list[dict], full: bool) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"`python -m benchmarks{' --full' if full else ''}` on {platform.platform()}, Python "
        f"{platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Every ratio is "
        "against a baseline measured in the same run. Each benchmark's script documents its method; its JSON "
        "(`benchmarks/results_<name>.json`) has every number.",
        "",
        "| benchmark | all targets | time | status |",
        "|---|---|---|---|",
    ]
    for run in runs:
        res = run["results"]
        verdict = "met" if res.get("all_pass") else "**missed**" if res else "-"
        if run["exit"] == 0 and run["fresh"]:
            status = "ok"
        else:
            status = f"exit {run['exit']}" + ("" if run["fresh"] else ", no fresh results")
        lines.append(f"| {run['name']} | {verdict} | {run['elapsed_s']:.0f} s | {status} |")
    for run in runs:
        table = run["results"].get("table") or []
        lines += ["", f"## {run['name']}", ""]
        if not table or not run["fresh"]:
            lines.append("No fresh results from this run.")
            continue
        header, *rows = table
        lines.append("| " + " | ".join(_cell(h) for h in header) + " |")
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="larger sizes and more repeats")
    parser.add_argument("--only", nargs="+", choices=discover(), help="run only these benchmarks")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark")
    args = parser.parse_args(argv)
    runs = [run_one(name, args.full, args.timeout) for name in (args.only or discover())]
    out = HERE / "RESULTS.md"
    out.write_text(render(runs, args.full))
    missed = [r["name"] for r in runs if not r["results"].get("all_pass") or r["exit"] != 0 or not r["fresh"]]
    print(f"\nwrote {out}; " + (f"targets missed or failed: {missed}" if missed else "every target met"))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
