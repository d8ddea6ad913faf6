"""Run every benchmark and write benchmarks/RESULTS.md (plus each benchmark's results_*.json).

    python -m benchmarks                  # quick sizes: minutes on 2 CPU cores
    python -m benchmarks --full           # larger sizes, more repeats
    python -m benchmarks --only label_scorer text_scores
    python -m benchmarks --render         # no run: RESULTS.md from every committed results_*.json
    python -m benchmarks --gpu            # on a CUDA machine: benchmarks/gpu_check.py, then RESULTS.md

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


def _stamp(path: Path) -> tuple[int, int] | None:
    """What identifies one version of a results file: (mtime in ns, size); None when there is none."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def run_one(name: str, full: bool, timeout: float) -> dict:
    cmd = [sys.executable, str(HERE / f"bench_{name}.py"), *(["--full"] if full else [])]
    print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
    result_file = HERE / f"results_{name}.json"
    before = _stamp(result_file)
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=HERE.parent, timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    elapsed = time.perf_counter() - started
    results = json.loads(result_file.read_text()) if result_file.is_file() else {}
    # Fresh: the run rewrote the file. Comparing the file's mtime with this process's clock said "no fresh
    # results" for files written during the run where the two clocks differ (or the mtime is coarse).
    after = _stamp(result_file)
    fresh = after is not None and after != before
    return {"name": name, "exit": code, "elapsed_s": elapsed, "fresh": fresh, "results": results}


def committed(name: str) -> dict:
    """A benchmark as its committed JSON says, without running it."""
    result_file = HERE / f"results_{name}.json"
    results = json.loads(result_file.read_text()) if result_file.is_file() else {}
    return {"name": name, "exit": None, "elapsed_s": results.get("elapsed_s") or 0.0, "fresh": False,
            "results": results}  # fmt: skip


def result_table(results: dict) -> list[list]:
    """The benchmark's table; for a benchmark that writes a per-method summary instead (early_stopping),
    one row per method."""
    if results.get("table"):
        return results["table"]
    summary = results.get("summary")
    if not isinstance(summary, dict):
        return []
    keys = ("runs", "stopped", "steps_mean", "steps_ratio_vs_hf", "regret_mean", "regret_max")
    rows = [["method", *keys]]
    for method in summary.values():
        if isinstance(method, dict) and "label" in method:
            rows.append([method["label"], *(_short(method.get(k, "-")) for k in keys)])
    return rows


def _short(value: object) -> object:
    return f"{value:.4g}" if isinstance(value, float) else value


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").strip()


def _markdown(table: list[list]) -> list[str]:
    header, *rows = table
    return ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]]  # fmt: skip


def render(runs: list[dict], full: bool) -> str:
    lines = [
        "# Benchmark results",
        "",
        (f"`python -m benchmarks --render`: every benchmark's committed results, {time.strftime('%Y-%m-%d')}; "
         "each was measured on 2 CPU cores by `python -m benchmarks`. Every ratio is "
         if all(run["exit"] is None for run in runs) else
         f"`python -m benchmarks{' --full' if full else ''}` on {platform.platform()}, Python "
         f"{platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Every ratio is ")
        + "against a baseline measured in the same run. Each benchmark's script documents its method; its JSON "
        "(`benchmarks/results_<name>.json`) has every number.",
        "",
        "| benchmark | all targets | time | status |",
        "|---|---|---|---|",
    ]
    for run in runs:
        res = run["results"]
        passed = res.get("all_pass", (res.get("verdict") or {}).get("target_met"))
        verdict = "met" if passed else "**missed**" if res else "-"
        if run["exit"] is None:
            status = f"committed ({res.get('mode', '?')} run)" if res else "no results"
        elif run["exit"] == 0 and run["fresh"]:
            status = "ok"
        else:
            status = f"exit {run['exit']}" + ("" if run["fresh"] else ", no fresh results")
        lines.append(f"| {run['name']} | {verdict} | {run['elapsed_s']:.0f} s | {status} |")
    for run in runs:
        table = result_table(run["results"])
        lines += ["", f"## {run['name']}", ""]
        if not table:
            lines.append("No results.")
            continue
        if not run["fresh"]:
            lines += [f"The committed results ({run['results'].get('mode', '?')} run), not re-run by this command.", ""]
        verdict = run["results"].get("verdict")
        if isinstance(verdict, dict) and verdict.get("criterion"):
            met = "met" if verdict.get("target_met") else "missed"
            lines += [f"Target ({met}): {verdict['criterion']}.", ""]
        lines += _markdown(table)
        # Optional, for benchmarks that have them: sentences on what the numbers mean, and further tables.
        notes = run["results"].get("notes") or []
        if notes:
            lines += ["", *[f"- {note}" for note in notes]]
        for extra in run["results"].get("extra_tables") or []:
            lines += ["", f"{extra.get('title', '')}", "", *_markdown(extra.get("rows") or [[""]])]
    lines += gpu_section()
    return "\n".join(lines) + "\n"


def gpu_section() -> list[str]:
    """The GPU check (`benchmarks/gpu_check.sh`): its committed results, or that every figure is CPU-only."""
    lines = ["", "## gpu_check", ""]
    result_file = HERE / "results_gpu_check.json"
    if not result_file.is_file():
        return [*lines, "Not run yet: every figure above was measured on CPU. `bash benchmarks/gpu_check.sh` on a "
                "CUDA machine (under 8 minutes on one H200) runs bf16 training with the kit, the kit's overhead on "
                "GPU, batched generation and bf16 vs float32 perplexity, and writes "
                "`benchmarks/results_gpu_check.json`."]  # fmt: skip
    res = json.loads(result_file.read_text())
    train, gen, ppl = res.get("training_bf16_kit", {}), res.get("generation", {}), res.get("perplexity", {})
    rows = [
        ["device", res.get("device", "?")],
        ["all checks ok", res.get("all_ok")],
        ["kit vs bare Trainer, train() wall (bf16)", _short(train.get("kit_vs_bare_ratio_median"))],
        ["same, without time inside generation", _short(train.get("kit_minus_generation_vs_bare_ratio_median"))],
        ["generation tokens/s, batched / one at a time",
         f"{_short(gen.get('batched_tokens_per_s'))} / {_short(gen.get('single_tokens_per_s'))}"],
        ["eval_token_loss, bf16 vs float32 (relative)", _short(ppl.get("bf16_vs_float32_rel_diff"))],
        ["eval_token_loss, float32 vs float64 reference (relative)", _short(ppl.get("float32_vs_float64_rel_diff"))],
    ]  # fmt: skip
    lines += ["| what | value |", "|---|---|"]
    return lines + [f"| {_cell(a)} | {_cell(b)} |" for a, b in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="larger sizes and more repeats")
    parser.add_argument("--only", nargs="+", choices=discover(), help="run only these benchmarks")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per benchmark")
    parser.add_argument("--render", action="store_true", help="run nothing: RESULTS.md from the committed JSONs")
    parser.add_argument("--gpu", action="store_true", help="run the GPU check (gpu_check.py), then render")
    args = parser.parse_args(argv)
    out = HERE / "RESULTS.md"
    if args.gpu:
        code = subprocess.run([sys.executable, str(HERE / "gpu_check.py")], cwd=HERE.parent, timeout=600).returncode
        out.write_text(render([committed(name) for name in discover()], args.full))
        print(f"gpu_check exit {code}; wrote {out}")
        return code
    if args.render:
        out.write_text(render([committed(name) for name in discover()], args.full))
        print(f"wrote {out} from the committed results")
        return 0
    chosen = args.only or discover()
    # Benchmarks not run now still show their committed results: RESULTS.md always covers every one.
    runs = [run_one(name, args.full, args.timeout) if name in chosen else committed(name) for name in discover()]
    out.write_text(render(runs, args.full))
    runs = [r for r in runs if r["name"] in chosen]
    missed = [r["name"] for r in runs
              if not r["results"].get("all_pass", (r["results"].get("verdict") or {}).get("target_met"))
              or r["exit"] != 0 or not r["fresh"]]  # fmt: skip
    print(f"\nwrote {out}; " + (f"targets missed or failed: {missed}" if missed else "every target met"))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
