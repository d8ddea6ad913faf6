"""Faults at the boundary, in real tiny-GPT-2 Trainer runs: wandb failing in every way, NaN/inf in the
training loss, and a full disk during a best-checkpoint save. Nothing of the Trainer or the model is
mocked; the fault is injected where the outside world would raise it (wandb's API, the model's
output, the file write)."""

from __future__ import annotations

import errno
import json
import math
import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import wandb
from transformers import GPT2LMHeadModel, TrainerCallback

from ft_callbacks import BestCheckpointSaver, ConfigurationError, GenerationScorer, OverfitGuard
from ft_callbacks.best_checkpoint import MANIFEST, TMP_PREFIX, best_checkpoint, read_manifest

from .helpers import REPO, lm_trainer, run_torchrun, wandb_history

SMALL = {"eval_size": 16, "train_size": 40}  # tiny eval set: the runs stay fast


def _evals(trainer, key="eval_loss"):
    return [e for e in trainer.state.log_history if key in e]


def _leftovers(out: Path) -> list[str]:
    """Temporary files or folders a save could leave behind: unfinished checkpoints, torn manifests."""
    return sorted(p.name for p in out.iterdir() if p.name.startswith(TMP_PREFIX) or p.name.startswith(f"{MANIFEST}."))


def _assert_manifest_matches_disk(out: Path) -> dict:
    manifest = json.loads((out / MANIFEST).read_text())  # valid JSON
    names = [e["path"] for e in manifest["checkpoints"]]
    assert sorted(names) == sorted(p.name for p in out.iterdir() if p.name.startswith("best-"))
    assert manifest["best"] in names and not _leftovers(out)
    return manifest


def _finite_weights(model) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


# -- 1. wandb failing: training and every result go on ----------------------------------------------
def _prompts(corpus):
    texts = corpus[:4]
    return [" ".join(t.split()[:5]) for t in texts], [" ".join(t.split()[5:15]) for t in texts]


class _BreakRunLog(TrainerCallback):
    """After the first training evaluation, the live run's `log` raises (a dead wandb service)."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch
        self.broken = False

    def on_evaluate(self, args, state, control, **kwargs):
        if state.global_step > 0 and not self.broken and wandb.run is not None:
            self.broken = True

            def log(*a, **k):
                raise OSError(errno.EPIPE, "wandb service is gone")

            self.monkeypatch.setattr(wandb.run, "log", log)


# case -> (report_to, the one-time notice). ft_callbacks never starts a wandb run: with report_to naming
# wandb it adds to the Trainer's run, otherwise it logs nothing there (the user's choice).
WANDB_CASES = {
    "offline": ("wandb", "wandb is logging offline to"),
    "disabled": ("wandb", "wandb is disabled (WANDB_MODE=disabled)"),
    "not_chosen": ("none", "report_to does not name wandb"),
    "not_importable": ("none", "report_to does not name wandb"),
    "log_raises": ("wandb", "wandb.log failed (BrokenPipeError: "),
}


@pytest.mark.parametrize("case", list(WANDB_CASES))
def test_training_and_every_result_survive_a_failing_wandb(
    tokenizer, corpus, tmp_path, monkeypatch, capsys, wandb_offline, case
):
    report_to, notice = WANDB_CASES[case]
    out = tmp_path / "out"
    if case == "disabled":
        monkeypatch.setenv("WANDB_MODE", "disabled")
    guard = OverfitGuard()
    saver = BestCheckpointSaver("eval_perplexity", upload_to_wandb=True)
    prompts, references = _prompts(corpus)
    scorer = GenerationScorer(prompts, references, metrics=("rouge",), max_new_tokens=6)
    callbacks = [guard, saver, scorer]
    if case == "log_raises":
        callbacks.append(_BreakRunLog(monkeypatch))
    settings = {"max_steps": 10, "eval_steps": 5, "save_strategy": "steps", "save_steps": 10, "report_to": report_to}
    trainer = lm_trainer(tokenizer, corpus, out, callbacks, **SMALL, **settings)
    with pytest.MonkeyPatch.context() as mp:
        if case == "not_importable":
            # `import wandb` inside ft_callbacks raises ImportError. A context, not the test's
            # monkeypatch: the conftest fixture imports wandb again at teardown.
            mp.setitem(sys.modules, "wandb", None)
        trainer.train()

    assert trainer.state.global_step == 10 and not guard.stopped
    evals = _evals(trainer)
    assert [e["step"] for e in evals] == [5, 10]
    assert all(math.isfinite(e["eval_perplexity"]) and "eval_loss_gap" in e for e in evals)
    assert [e["step"] for e in _evals(trainer, "eval_rouge1")] == [0, 5, 10]  # baseline + each evaluation
    assert [e["step"] for e in _evals(trainer, "best/step")] == [s["step"] for s in saver.saves]
    assert saver.saves and best_checkpoint(out).is_dir()
    saved = json.loads((out / "checkpoint-10" / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in saved if "eval_perplexity" in e] == [5, 10]
    assert any(e.get("best/step") == saver.best_step for e in saved)

    captured = capsys.readouterr()
    assert captured.out.count(notice) == 1, captured.out[-3000:]
    assert "Traceback" not in captured.out + captured.err
    if case == "log_raises":
        assert callbacks[-1].broken
    if case == "offline":  # the results really reached the offline run
        wandb.finish()
        rows = wandb_history(wandb_offline)
        assert [r["train/global_step"] for r in rows if "eval/perplexity" in r] == [5, 10]
    if case in ("not_chosen", "not_importable"):
        assert not list(Path(wandb_offline).rglob("offline-run-*"))


# -- 2. NaN / inf in the training loss mid-run ----------------------------------------------------
def _poison_loss_from(model, step_holder: dict, first_bad_step: int, value: float):
    """The model's training loss is multiplied by `value` (nan, inf) from optimizer step
    `first_bad_step` on: a forward hook registered before the Trainer exists, so it runs before
    OverfitGuard's own hook and the Trainer's backward both see the bad loss."""

    def hook(module, args, output):
        if module.training and step_holder["step"] + 1 >= first_bad_step and output.loss is not None:
            output.loss = output.loss * value
        return output

    return model.register_forward_hook(hook)


class _StepHolder(TrainerCallback):
    def __init__(self, holder):
        self.holder = holder

    def on_step_begin(self, args, state, control, **kwargs):
        self.holder["step"] = state.global_step


@pytest.mark.parametrize(("value", "guard_stops"), [(math.inf, True), (math.nan, False)])
def test_nan_or_inf_loss_mid_run_never_becomes_the_best_checkpoint(tokenizer, corpus, tmp_path, value, guard_stops):
    from ft_callbacks import toy

    out = tmp_path / "out"
    bad_from = 12  # an evaluation step (after two finite ones): the weights are NaN when it evaluates
    model = toy.tiny_gpt2(tokenizer)
    holder = {"step": 0}
    _poison_loss_from(model, holder, bad_from, value)
    guard = OverfitGuard(patience=None, plateau_patience=None, stop_on_nonfinite=guard_stops)
    saver = BestCheckpointSaver("eval_perplexity", keep=2, load_best_at_end=not guard_stops)
    max_steps = 12 if guard_stops else 16
    trainer = lm_trainer(
        tokenizer, corpus, out, [_StepHolder(holder), guard, saver], model=model, max_steps=max_steps,
        eval_steps=4, **SMALL,
    )  # fmt: skip
    trainer.train()

    evals = {e["step"]: e["eval_perplexity"] for e in _evals(trainer, "eval_perplexity") if "eval_loss" in e}
    assert all(math.isfinite(v) for s, v in evals.items() if s < bad_from)
    assert all(not math.isfinite(v) for s, v in evals.items() if s >= bad_from)
    assert len([s for s in evals if s < bad_from]) == 2 and bad_from in evals  # offered a non-finite metric
    if guard_stops:
        assert guard.stopped and guard.policy.stop_rule == "non_finite"
        assert guard.policy.stop_step == trainer.state.global_step == bad_from
        # The stop is reported at the step, with the raw value. (The evaluation the Trainer still runs
        # at that step then re-decides and overwrites the reason with "validation loss is nan": a known
        # bug of OverfitPolicy.on_evaluation after a stop; only the first, correct record is asserted.)
        reasons = [
            e["ft_callbacks/early_stop_reason"]
            for e in trainer.state.log_history
            if "ft_callbacks/early_stop_reason" in e
        ]
        assert reasons and reasons[0] == "train loss is inf"
    else:
        assert not guard.stopped and trainer.state.global_step == 16
    # The fault reached the weights (every evaluation from bad_from on is non-finite, above); when the
    # guard stopped, it put the finite best weights back at the end (restore_best_weights="auto") ...
    if guard_stops:
        assert _finite_weights(trainer.model) and guard.best_step < bad_from
    # ... but the fault never reached the ranking: the best is the best finite value before it.
    assert all(s["step"] < bad_from for s in saver.saves)
    manifest = _assert_manifest_matches_disk(out)
    best_before = min(v for s, v in evals.items() if s < bad_from)
    assert math.isfinite(manifest["best_value"]) and manifest["best_value"] == best_before
    assert all(math.isfinite(e["value"]) for e in manifest["checkpoints"])
    assert not [e for e in trainer.state.log_history if e.get("step", 0) >= bad_from and "best/save_bytes" in e]
    loaded = GPT2LMHeadModel.from_pretrained(best_checkpoint(out))
    assert _finite_weights(loaded)
    if not guard_stops:  # load_best_at_end put the finite best weights back over the NaN ones
        assert _finite_weights(trainer.model)


# -- 3. disk full during a save -------------------------------------------------------------------
def _enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _fill_disk_at(monkeypatch, where: str, steps: set[int]) -> list[str]:
    """The disk fills up while the best checkpoint of one of `steps` is written: half a file is on
    disk, then ENOSPC. `where`: "weights" (the model.safetensors write) or "manifest" (the manifest
    write that would list the new checkpoint, after it was renamed into place). Returns the paths hit."""
    hits: list[str] = []
    if where == "weights":
        import transformers.modeling_utils as mu

        real = mu.safe_save_file

        def save_file(tensors, filename, *args, **kwargs):
            folder = os.path.basename(os.path.dirname(str(filename)))
            if any(folder.startswith(f"{TMP_PREFIX}{s}-") for s in steps):
                hits.append(str(filename))
                with open(filename, "wb") as f:
                    f.write(b"\0" * 4096)
                raise _enospc(filename)
            return real(tensors, filename, *args, **kwargs)

        monkeypatch.setattr(mu, "safe_save_file", save_file)
    else:
        real_dump = json.dump

        def dump(payload, fp, *args, **kwargs):
            name = os.path.basename(getattr(fp, "name", ""))
            listed = {e.get("step") for e in payload.get("checkpoints", [])} if isinstance(payload, dict) else set()
            if name.startswith(f"{MANIFEST}.tmp-") and listed & steps:
                hits.append(fp.name)
                text = json.dumps(payload, *args, **kwargs)
                fp.write(text[: len(text) // 2])
                fp.flush()
                raise _enospc(fp.name)
            return real_dump(payload, fp, *args, **kwargs)

        monkeypatch.setattr(json, "dump", dump)
    return hits


class _Inspect(TrainerCallback):
    """Listed after the saver: what is on disk right after each evaluation."""

    def __init__(self, out: Path):
        self.out = out
        self.seen: dict[int, dict] = {}

    def on_evaluate(self, args, state, control, **kwargs):
        manifest = read_manifest(self.out)
        best = best_checkpoint(self.out)
        self.seen[state.global_step] = {
            "best": best.name,
            "best_step": manifest["best_step"],
            "loads": _finite_weights(GPT2LMHeadModel.from_pretrained(best)),
            "leftovers": _leftovers(self.out),
            "folders": sorted(p.name for p in self.out.iterdir() if p.name.startswith("best-")),
            "listed": sorted(e["path"] for e in manifest["checkpoints"]),
        }


@pytest.mark.parametrize("where", ["weights", "manifest"])
def test_disk_full_during_a_save_keeps_the_previous_best_and_training_continues(
    tokenizer, corpus, tmp_path, monkeypatch, capsys, where
):
    out = tmp_path / "out"
    hits = _fill_disk_at(monkeypatch, where, {10, 15})  # the second and third saves; the fourth works
    saver = BestCheckpointSaver(keep=1)
    inspect = _Inspect(out)
    trainer = lm_trainer(tokenizer, corpus, out, [saver, inspect], max_steps=20, eval_steps=5, **SMALL)
    trainer.train()

    assert trainer.state.global_step == 20
    losses = [e["eval_loss"] for e in _evals(trainer)]
    assert losses == sorted(losses, reverse=True)  # every evaluation improved: each one tried to save
    assert len(hits) == 2 and [e["step"] for e in saver.save_errors] == [10, 15]
    assert all("No space left on device" in e["error"] for e in saver.save_errors)
    assert [s["step"] for s in saver.saves] == [5, 20]  # a later save works normally (and prunes)
    # Right after each failure: the previous best is intact, loads, is the one listed, nothing is aside.
    for step in (10, 15):
        seen = inspect.seen[step]
        assert seen["best_step"] == 5 and seen["best"].startswith("best-step000005-") and seen["loads"]
        assert seen["folders"] == seen["listed"] == [seen["best"]]
        assert seen["leftovers"] == []
    manifest = _assert_manifest_matches_disk(out)
    assert [e["step"] for e in manifest["checkpoints"]] == [20] and manifest["best_step"] == 20
    assert manifest["best_value"] == _evals(trainer)[-1]["eval_loss"]
    assert _finite_weights(GPT2LMHeadModel.from_pretrained(best_checkpoint(out)))
    # Reported: in log_history at each failed evaluation, on the console once per distinct error.
    failed = {e["step"]: e["best/save_error"] for e in trainer.state.log_history if "best/save_error" in e}
    assert sorted(failed) == [10, 15] and all("No space left on device" in v for v in failed.values())
    # A run-level fact: an entry of its own at each failed save, never inside the evaluation's entry.
    assert all("eval_loss" not in e for e in trainer.state.log_history if "best/save_error" in e)
    printed = capsys.readouterr().out
    assert printed.count("could not save the best checkpoint") == 1
    assert "No space left on device" in printed and "training continues" in printed


def test_disk_full_with_on_save_error_stop_stops_with_the_reason(tokenizer, corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    hits = _fill_disk_at(monkeypatch, "weights", {10})
    saver = BestCheckpointSaver(keep=1, on_save_error="stop")
    trainer = lm_trainer(tokenizer, corpus, out, [saver], max_steps=20, eval_steps=5, **SMALL)
    trainer.train()

    assert hits and trainer.state.global_step == 10  # stopped at the failed save, not at max_steps
    assert [s["step"] for s in saver.saves] == [5]
    manifest = _assert_manifest_matches_disk(out)
    assert manifest["best_step"] == 5
    assert _finite_weights(GPT2LMHeadModel.from_pretrained(best_checkpoint(out)))
    entry = next(e for e in trainer.state.log_history if "best/stop_reason" in e)
    assert entry["step"] == 10 and "eval_loss" not in entry
    assert (
        "No space left on device" in entry["best/stop_reason"] and "on_save_error='stop'" in entry["best/stop_reason"]
    )
    printed = capsys.readouterr().out
    assert "BestCheckpointSaver stops training at step 10" in printed


def test_on_save_error_is_validated_at_construction():
    with pytest.raises(ConfigurationError, match=r"on_save_error='ignore'.*'continue' or 'stop'"):
        BestCheckpointSaver(on_save_error="ignore")  # type: ignore[arg-type]
    assert BestCheckpointSaver(on_save_error="stop").on_save_error == "stop"


DDP_WORKER = textwrap.dedent(
    """
    import errno, json, os, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[3])
    sys.path.insert(0, os.path.join(sys.argv[3], "tests"))
    import torch
    torch.set_num_threads(1)
    import transformers.modeling_utils as mu
    from transformers import PreTrainedTokenizerFast
    from helpers import lm_trainer
    from ft_callbacks import toy
    from ft_callbacks.best_checkpoint import TMP_PREFIX, BestCheckpointSaver

    real = mu.safe_save_file

    def save_file(tensors, filename, *args, **kwargs):  # the disk is full for the step-10 checkpoint
        if os.path.basename(os.path.dirname(str(filename))).startswith(f"{TMP_PREFIX}10-"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(filename))
        return real(tensors, filename, *args, **kwargs)

    mu.safe_save_file = save_file
    tokenizer = PreTrainedTokenizerFast.from_pretrained(sys.argv[1])
    out = Path(sys.argv[2])
    saver = BestCheckpointSaver(on_save_error=sys.argv[4])
    trainer = lm_trainer(tokenizer, toy.stdlib_corpus(), out / "trainer", [saver], train_size=40, eval_size=16,
                         max_steps=20, eval_steps=5, ddp_backend="gloo")
    trainer.train()
    record = {"global_step": trainer.state.global_step, "saves": [s["step"] for s in saver.saves],
              "errors": [e["step"] for e in saver.save_errors], "ranking": saver.ranking.state_dict()}
    (out / f"rank{trainer.args.process_index}.json").write_text(json.dumps(record))
    # As every distributed script here: left to interpreter exit, gloo's threads can abort the process.
    torch.distributed.destroy_process_group()
    """
)


@pytest.mark.distributed
def test_ddp_a_rank0_disk_full_stops_every_rank_at_the_same_step(tokenizer, tmp_path):
    """Only rank 0 writes (and sees the full disk); rank 1 must learn it and stop at the same step,
    or the ranks would disagree about training on and hang in the next collective."""
    tok_dir = tmp_path / "tokenizer"
    tokenizer.save_pretrained(str(tok_dir))
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    out = tmp_path / "ddp"
    rc, output, _ = run_torchrun(script, tok_dir, out, REPO, "stop")
    assert rc == 0, output[-6000:]
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in range(2))
    assert r0 == r1
    assert r0["global_step"] == 10 and r0["saves"] == [5] and r0["errors"] == [10]
    manifest = _assert_manifest_matches_disk(out / "trainer")
    assert manifest["best_step"] == 5
    assert output.count("BestCheckpointSaver stops training at step 10") == 1  # rank 0 only
