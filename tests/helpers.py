"""Shared test helpers: tiny real Trainer runs and reading back what wandb recorded offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

from ft_callbacks import toy

REPO = Path(__file__).resolve().parents[1]


def wandb_executable() -> str:
    exe = shutil.which("wandb")
    if exe is None:  # the venv's bin may not be on PATH when pytest is run by full path
        import sys

        exe = str(Path(sys.executable).with_name("wandb"))
    return exe


def wandb_records(wandb_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Every record of the newest offline run under `wandb_dir`, via `wandb leet inspect --json`."""
    runs = sorted(Path(wandb_dir).glob("wandb/offline-run-*"))
    assert runs, f"no offline wandb run under {wandb_dir}"
    out = subprocess.run(
        [wandb_executable(), "leet", "inspect", "--json", str(runs[-1])],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def wandb_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The run summary as the records left it (later updates win)."""
    summary: dict[str, Any] = {}
    for record in records:
        if record.get("type") == "summary":
            summary.update(record["summary"].get("update") or {})
    return summary


def wandb_alerts(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The alerts the run raised (title, text, level)."""
    return [r["alert"] for r in records if r.get("type") == "alert"]


def wandb_history(wandb_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The logged history rows (one dict per wandb.log call)."""
    return [r["history"]["item"] for r in wandb_records(wandb_dir) if r.get("type") == "history"]


def lm_args(output_dir: str | os.PathLike, **overrides: Any) -> TrainingArguments:
    settings: dict[str, Any] = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 16,
        "max_steps": 200,
        "eval_strategy": "steps",
        "eval_steps": 10,
        "logging_steps": 10,
        "save_strategy": "no",
        "report_to": "wandb",
        "learning_rate": 3e-3,
        "use_cpu": True,
        "disable_tqdm": True,
        "seed": 0,
        "dataloader_num_workers": 0,
    }
    settings.update(overrides)
    return TrainingArguments(**settings)


def lm_trainer(
    tokenizer,
    corpus: list[str],
    output_dir,
    callbacks: list,
    train_size: int = 24,
    eval_size: int = 64,
    max_length: int = 48,
    model=None,
    **arg_overrides: Any,
) -> Trainer:
    """A tiny GPT-2 causal-LM Trainer on standard-library docstrings. A small train set overfits fast."""
    train = toy.causal_lm_dataset(corpus[:train_size], tokenizer, max_length)
    evaluation = toy.causal_lm_dataset(corpus[200 : 200 + eval_size], tokenizer, max_length)
    return Trainer(
        model=model if model is not None else toy.tiny_gpt2(tokenizer),
        args=lm_args(output_dir, **arg_overrides),
        train_dataset=train,
        eval_dataset=evaluation,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
        callbacks=callbacks,
    )


def load_example(name: str):
    """An examples/<name>.py script as a module (its `main(argv)` runs it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(script: str | os.PathLike, *script_args: str | os.PathLike) -> list[str]:
    """`torchrun --nproc_per_node 2` on this machine (CPU, gloo), on a free port."""
    import sys

    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(script), *map(str, script_args),
    ]  # fmt: skip



def run_launcher(
    command: list[str], wandb_dir: str | os.PathLike | None = None, hf_home: str | os.PathLike | None = None,
    timeout: float = 240,
) -> tuple[int, str, float]:
    """Run a launcher command (torchrun, accelerate launch) in its own process group, offline wandb in
    `wandb_dir` (or wandb disabled), HF_HOME in `hf_home` when given (so no accelerate config of the
    machine is read). On timeout the whole group is killed and the test fails: a hang is a failure,
    never a stuck suite. Returns (exit code, combined output, seconds)."""
    import signal
    import time

    import pytest

    skip = ("WANDB_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_", "ACCELERATE_", "HF_HOME")
    env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
    env.update({"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_SILENT": "true"})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    if hf_home is not None:
        env["HF_HOME"] = str(hf_home)
    elif "HF_HOME" in os.environ:
        env["HF_HOME"] = os.environ["HF_HOME"]
    if wandb_dir is None:
        env["WANDB_MODE"] = "disabled"
    else:
        env.update({"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir)})
    start = time.monotonic()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{command[2]} did not finish within {timeout:.0f}s (hang?). Output tail:\n{out[-6000:]}")
    return proc.returncode, out, time.monotonic() - start


def run_torchrun(
    script: str | os.PathLike, *script_args: str | os.PathLike, wandb_dir: str | os.PathLike | None = None,
    timeout: float = 240,
) -> tuple[int, str, float]:
    """`run_launcher` for `torchrun --nproc_per_node 2` on a script."""
    return run_launcher(torchrun_command(script, *script_args), wandb_dir=wandb_dir, timeout=timeout)
