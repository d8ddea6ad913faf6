"""BestCheckpointSaver: the ranking on plain numbers, then real tiny-GPT-2 Trainer runs, kills and DDP."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import wandb
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel, TrainerCallback, TrainerState

from ft_callbacks import ConfigurationError, OverfitGuard
from ft_callbacks.best_checkpoint import (
    MANIFEST,
    TMP_PREFIX,
    BestCheckpointSaver,
    CheckpointRanking,
    CheckpointStore,
    best_checkpoint,
    checkpoint_name,
    last_complete_checkpoint,
    read_manifest,
)
from ft_callbacks.core.modes import is_improvement

from .helpers import lm_trainer, run_torchrun, wandb_records

REPO = Path(__file__).resolve().parents[1]
DDP_SCRIPT = REPO / "tests" / "dist_scripts" / "best_checkpoint_ddp.py"
KILL_REPEATS = int(os.environ.get("FT_CALLBACKS_KILL_REPEATS", "5"))


# -- the ranking, on plain numbers ---------------------------------------------------------------
def test_ranking_saves_only_improvements_and_keeps_the_top_k():
    ranking = CheckpointRanking("min", keep=2, min_delta=0.1)
    decisions = {
        step: ranking.add(step, value, path=f"s{step}")
        for step, value in [(1, 5.0), (2, 4.95), (3, 4.8), (4, float("nan")), (5, 4.0), (6, 4.5), (7, 3.0)]
    }
    assert [s for s, d in decisions.items() if d.saved] == [1, 3, 5, 7]  # 4.95 is within min_delta; NaN never
    assert [e.path for e in decisions[5].pruned] == ["s1"]
    assert [e.path for e in decisions[7].pruned] == ["s3"]
    assert [e.path for e in ranking.entries] == ["s7", "s5"]
    assert (ranking.best_value, ranking.best_step) == (3.0, 7)


def test_ranking_max_mode_keep_one_never_prunes_the_best_and_round_trips():
    ranking = CheckpointRanking("max", keep=1)
    assert ranking.add(1, float("inf")).saved is False
    assert ranking.add(2, 0.5).saved
    assert [e.path for e in ranking.add(3, 0.7, path="b").pruned] == [""]
    assert ranking.add(4, 0.7).saved is False  # equal is not better
    assert ranking.best.path == "b" and ranking.prune() == []
    copy = CheckpointRanking("max", keep=1)
    copy.load_state_dict(json.loads(json.dumps(ranking.state_dict())))
    assert copy.state_dict() == ranking.state_dict()
    assert not copy.improves(0.6) and copy.improves(0.71)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"keep": 0}, "keep=0"),
        ({"mode": "up"}, "mode='up'"),
        ({"monitor": 3}, "monitor=3"),
        ({"min_delta": -1.0}, "min_delta=-1.0"),
        ({"upload_to_wandb": "always"}, "upload_to_wandb='always'"),
    ],
)
def test_bad_settings_fail_at_construction(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        BestCheckpointSaver(**kwargs)


def test_mode_is_inferred_and_explicit_mode_wins():
    assert BestCheckpointSaver("eval_loss").mode == "min"
    assert BestCheckpointSaver("perplexity").monitor == "eval_perplexity"
    assert BestCheckpointSaver("eval_rougeL").mode == "max"
    assert BestCheckpointSaver("eval_loss", mode="max").mode == "max"
    assert checkpoint_name(40, "eval_loss", 3.14159) == "best-step000040-eval_loss=3.1416"


# -- one real run, shared: top-k, manifest, from_pretrained, load_best_at_end ---------------------
def _evals(trainer, key="eval_loss"):
    return [(e["step"], e[key]) for e in trainer.state.log_history if key in e]


def _improving(evals, mode="min", min_delta=0.0):
    best, out = None, []
    for step, value in evals:
        if is_improvement(value, best, mode, min_delta):
            best = value
            out.append(step)
    return out


def _assert_manifest_matches_disk(out: Path) -> dict:
    manifest = json.loads((out / MANIFEST).read_text())
    names = [e["path"] for e in manifest["checkpoints"]]
    on_disk = sorted(p.name for p in out.iterdir() if p.name.startswith("best-"))
    assert sorted(names) == on_disk
    assert not [p for p in out.iterdir() if p.name.startswith(TMP_PREFIX)]
    best = [e for e in manifest["checkpoints"] if e["best"]]
    assert len(best) == 1 and best[0]["path"] == manifest["best"]
    return manifest


class _StopAt(TrainerCallback):
    """Stops training at a given step, as a crash after the Trainer's checkpoint would."""

    def __init__(self, stop_at):
        self.stop_at = stop_at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.stop_at:
            control.should_training_stop = True


@pytest.fixture(scope="module")
def topk_run(tokenizer, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("topk") / "out"
    saver = BestCheckpointSaver(keep=2, load_best_at_end=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        # report_to="none": the tests below evaluate this Trainer again, after its wandb run is gone.
        trainer = lm_trainer(tokenizer, corpus, out, [saver], train_size=40, max_steps=50, eval_steps=5,
                             report_to="none")  # fmt: skip
        trainer.train()
    return trainer, saver, out


def test_exactly_the_improving_evaluations_save_and_the_top_k_are_kept(topk_run):
    trainer, saver, out = topk_run
    evals = _evals(trainer)
    improving = _improving(evals)
    assert [s["step"] for s in saver.saves] == improving
    assert 3 <= len(improving) < len(evals), evals  # some evaluations did not improve, several did
    manifest = _assert_manifest_matches_disk(out)
    values = dict(evals)
    top2 = sorted(improving, key=lambda s: values[s])[:2]
    assert [e["step"] for e in manifest["checkpoints"]] == top2
    assert manifest["best_step"] == top2[0] and manifest["best_value"] == values[top2[0]]
    for entry in manifest["checkpoints"]:
        assert entry["metric"] == "eval_loss" and entry["value"] == values[entry["step"]]
        assert entry["bytes"] > 0 and entry["seconds"] >= 0 and entry["time"]
        assert entry["path"] == checkpoint_name(entry["step"], "eval_loss", entry["value"])
    # Weights only by default: no optimizer state.
    assert not list(out.glob("best-*/optimizer.pt"))
    # Reported through the reporting path: a run-level entry of its own at each save (never inside the
    # evaluation's entry, which the model card reads).
    saved_entries = [e for e in trainer.state.log_history if "best/step" in e]
    assert [e["step"] for e in saved_entries] == improving
    assert all("eval_loss" not in e and e["best/step"] == e["step"] for e in saved_entries)
    assert not [e for e in trainer.state.log_history if "eval_loss" in e and any(k.startswith("best/") for k in e)]


def test_best_checkpoint_loads_with_from_pretrained_and_reproduces_its_eval_loss(topk_run, tokenizer, corpus, tmp_path):
    _, _, out = topk_run
    path = best_checkpoint(out)
    model = GPT2LMHeadModel.from_pretrained(path)
    fresh = lm_trainer(tokenizer, corpus, tmp_path / "eval", [], model=model, train_size=40)
    logged = read_manifest(out)["best_value"]
    assert fresh.evaluate()["eval_loss"] == pytest.approx(logged, rel=1e-6)
    assert (path / "tokenizer.json").exists() and (path / "best_checkpoint.json").exists()


def test_load_best_at_end_restores_the_best_weights(topk_run):
    trainer, saver, out = topk_run
    best = load_file(str(best_checkpoint(out) / "model.safetensors"))
    live = trainer.model.state_dict()
    assert all(torch.equal(live[k], v) for k, v in best.items())
    assert trainer.state.global_step == 50 and saver.best_step < 50
    assert trainer.evaluate()["eval_loss"] == pytest.approx(saver.best_value, rel=1e-6)


# -- other metrics, list order, Trainer checkpoints alongside, optimizer state, wandb artifact ----
@pytest.mark.parametrize("saver_first", [True, False])
def test_monitors_another_callbacks_metric_beside_the_trainers_rotation(
    tokenizer, corpus, tmp_path, wandb_offline, saver_first
):
    out = tmp_path / "out"
    saver = BestCheckpointSaver("eval_perplexity", keep=1, save_optimizer=True, upload_to_wandb=saver_first)
    guard = OverfitGuard(patience=None, plateau_patience=None)
    callbacks = [saver, guard] if saver_first else [guard, saver]
    trainer = lm_trainer(
        tokenizer,
        corpus,
        out,
        callbacks,
        max_steps=30,
        save_strategy="steps",
        save_steps=10,
        save_total_limit=1,
        report_to="wandb" if saver_first else "none",
    )
    trainer.train()
    evals = _evals(trainer, "eval_perplexity")
    assert [s["step"] for s in saver.saves] == _improving(evals)
    manifest = _assert_manifest_matches_disk(out)
    assert manifest["best_value"] == min(v for _, v in evals)
    assert len(manifest["checkpoints"]) == 1
    # The Trainer's own rotation ran alongside and left our folder alone.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-30"]
    best = best_checkpoint(out)
    assert (best / "optimizer.pt").exists() and (best / "scheduler.pt").exists()
    if saver_first:
        wandb.finish()
        records = wandb_records(wandb_offline)
        # (tables, like the run overview at train end, are artifacts too, of type run_table)
        artifacts = [r["artifact"] for r in records if r.get("type") == "artifact" and r["artifact"]["type"] == "model"]
        assert len(artifacts) == 1 and "best" in artifacts[0]["aliases"]
        files = {c["path"] for c in artifacts[0]["manifest"]["contents"]}
        assert {"model.safetensors", "config.json", "best_checkpoint.json"} <= files
        summary: dict = {}
        for r in records:
            if r.get("type") == "summary":
                summary.update(r["summary"].get("update", {}))
        assert summary["best/eval_perplexity"] == manifest["best_value"]
        assert summary["best/step"] == manifest["best_step"]


# -- resume ---------------------------------------------------------------------------------------
def test_every_best_uploads_each_new_best_as_it_is_saved(tokenizer, corpus, tmp_path, wandb_offline):
    """upload_to_wandb="every_best": one artifact version per save, logged at that save (so a run that
    dies later keeps its best in wandb), the files of that checkpoint; nothing more at train end."""
    out = tmp_path / "out"
    saver = BestCheckpointSaver("eval_loss", keep=1, upload_to_wandb="every_best")
    trainer = lm_trainer(tokenizer, corpus, out, [saver], max_steps=30, report_to="wandb")
    trainer.train()
    wandb.finish()
    assert len(saver.saves) >= 2  # pruned locally (keep=1), every version stays in wandb
    records = wandb_records(wandb_offline)
    artifacts = [r["artifact"] for r in records if r.get("type") == "artifact" and r["artifact"]["type"] == "model"]
    steps = [int(next(a for a in art["aliases"] if a.startswith("step-"))[5:]) for art in artifacts]
    assert steps == [s["step"] for s in saver.saves]
    assert all("best" in art["aliases"] for art in artifacts)
    assert len({art["name"] for art in artifacts}) == 1  # versions of one artifact
    # Each version holds the checkpoint saved at its step (its info file names that step).
    for art, step in zip(artifacts, steps, strict=True):
        files = {c["path"] for c in art["manifest"]["contents"]}
        assert {"model.safetensors", "config.json", "best_checkpoint.json"} <= files
        assert art["metadata"] and json.loads(art["metadata"])["step"] == step


def test_resume_keeps_the_ranking_and_repairs_a_manifest_pointing_to_a_deleted_dir(tokenizer, corpus, tmp_path):
    out = tmp_path / "out"
    settings = {"max_steps": 40, "save_strategy": "steps", "save_steps": 20, "eval_steps": 5, "train_size": 40}
    first = BestCheckpointSaver(keep=3)
    lm_trainer(tokenizer, corpus, out, [first, _StopAt(20)], **settings).train()
    assert len(first.ranking.entries) >= 2
    before = read_manifest(out)
    deleted = before["checkpoints"][-1]["path"]  # a kept one that is not the best
    shutil.rmtree(out / deleted)
    (out / f"{TMP_PREFIX}20-999").mkdir()  # a save that was cut off

    resumed = BestCheckpointSaver(keep=3)
    trainer = lm_trainer(tokenizer, corpus, out, [resumed], **settings)
    assert trainer.args.restore_callback_states_from_checkpoint is False
    with pytest.warns(UserWarning, match="no longer exist"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-20"))
    # The ranking carried over: only evaluations better than the restored best saved anything.
    evals = [(s, v) for s, v in _evals(trainer) if s > 20]
    best_before = before["best_value"]
    expected = _improving([(0, best_before), *evals])[1:]
    assert [s["step"] for s in resumed.saves] == expected
    manifest = _assert_manifest_matches_disk(out)
    assert deleted not in [e["path"] for e in manifest["checkpoints"]]
    # Kept: the top 3 of the restored survivors and the new saves.
    values = dict(evals)
    pool = [(e["value"], e["step"]) for e in before["checkpoints"] if e["path"] != deleted]
    pool += [(values[s["step"]], s["step"]) for s in resumed.saves]
    assert [e["step"] for e in manifest["checkpoints"]] == [step for _, step in sorted(pool)[:3]]


def test_a_new_run_into_the_same_output_dir_starts_a_new_ranking_and_overwrites_nothing(tokenizer, corpus, tmp_path):
    out = tmp_path / "out"
    settings = {"max_steps": 10, "eval_steps": 5}
    lm_trainer(tokenizer, corpus, out, [BestCheckpointSaver(keep=5)], **settings).train()
    with pytest.warns(UserWarning, match="from an earlier run"):  # the same seed again: the same names
        lm_trainer(tokenizer, corpus, out, [BestCheckpointSaver(keep=5)], **settings).train()
    archived = list(out.glob("best_checkpoints.*.json"))
    assert len(archived) == 1
    old = json.loads(archived[0].read_text())
    new = read_manifest(out)
    assert [e["step"] for e in new["checkpoints"]] == [e["step"] for e in old["checkpoints"]]
    for entry_old, entry_new in zip(old["checkpoints"], new["checkpoints"], strict=True):
        assert entry_new["path"] == entry_old["path"] + "-2"
        assert (out / entry_old["path"]).is_dir() and (out / entry_new["path"]).is_dir()


def test_without_manifest_the_ranking_comes_from_trainer_state(tokenizer, corpus, tmp_path):
    out = tmp_path / "out"
    first = BestCheckpointSaver(keep=2)
    trainer = lm_trainer(tokenizer, corpus, out, [first], max_steps=20, save_strategy="steps", save_steps=20)
    trainer.train()
    assert len(first.ranking.entries) == 2
    before = read_manifest(out)
    (out / MANIFEST).unlink()  # lost: the ranking saved in the Trainer's checkpoint takes over
    state = TrainerState.load_from_json(str(out / "checkpoint-20" / "trainer_state.json"))
    again = BestCheckpointSaver(keep=2)
    again.on_train_begin(trainer.args, state, None)
    assert again.ranking.state_dict() == first.ranking.state_dict()
    assert read_manifest(out)["checkpoints"] == before["checkpoints"]  # and the manifest is written again


def test_last_complete_checkpoint_skips_trainer_checkpoints_a_kill_cut_short(tokenizer, corpus, tmp_path):
    """The Trainer writes checkpoint-N in place, trainer_state.json last. A kill while writing leaves a
    folder without it (or with it torn); transformers' get_last_checkpoint still picks that folder."""
    from transformers.trainer_utils import get_last_checkpoint

    out = tmp_path / "out"
    trainer = lm_trainer(tokenizer, corpus, out, [], max_steps=10, eval_steps=5, save_strategy="steps", save_steps=5)
    trainer.train()
    assert last_complete_checkpoint(out) == out / "checkpoint-10"
    state = out / "checkpoint-10" / "trainer_state.json"
    state.write_text(state.read_text()[: len(state.read_text()) // 2])  # torn mid-write
    shutil.copytree(out / "checkpoint-5", out / "checkpoint-15")
    (out / "checkpoint-15" / "trainer_state.json").unlink()  # killed before its last file
    assert get_last_checkpoint(str(out)) == str(out / "checkpoint-15")
    assert last_complete_checkpoint(out) == out / "checkpoint-5"
    assert last_complete_checkpoint(tmp_path / "empty") is None
    resumed = lm_trainer(tokenizer, corpus, out, [], max_steps=10, eval_steps=5, save_strategy="no")
    resumed.train(resume_from_checkpoint=str(last_complete_checkpoint(out)))
    assert resumed.state.global_step == 10


# -- bad input before training --------------------------------------------------------------------
def test_eval_strategy_no_is_refused_before_the_first_step(tokenizer, corpus, tmp_path):
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [BestCheckpointSaver()], eval_strategy="no")
    with pytest.raises(ConfigurationError, match="eval_strategy='no'"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_unwritable_output_dir_is_refused_before_the_first_step(tokenizer, corpus, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    saver = BestCheckpointSaver(output_dir=str(blocker / "best"))
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [saver])
    with pytest.raises(ConfigurationError, match="cannot write to the output directory"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_missing_monitor_lists_the_keys_that_exist(tokenizer, corpus, tmp_path):
    saver = BestCheckpointSaver("eval_accuracy")
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [saver], eval_on_start=True)
    with pytest.raises(ConfigurationError, match=r"eval_accuracy.*\['eval_loss'.*eval_on_start=True"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert not list((tmp_path / "out").glob("best-*"))


def test_nan_metric_never_becomes_best(tokenizer, corpus, tmp_path):
    class NanFirst(TrainerCallback):
        """Listed before the saver; sets eval_loss to NaN at the first evaluation."""

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if state.global_step == 5:
                metrics["eval_loss"] = float("nan")

    saver = BestCheckpointSaver()
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [NanFirst(), saver], max_steps=10, eval_steps=5)
    trainer.train()
    assert [s["step"] for s in saver.saves] == [10]
    assert math.isfinite(read_manifest(tmp_path / "out")["best_value"])


# -- PEFT: adapter only ---------------------------------------------------------------------------
def test_peft_model_saves_the_adapter_only_and_loads_it_back(tokenizer, corpus, tmp_path):
    peft = pytest.importorskip("peft")
    from ft_callbacks import toy

    model = peft.get_peft_model(
        toy.tiny_gpt2(tokenizer), peft.LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True)
    )
    saver = BestCheckpointSaver(load_best_at_end=True)
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "out", [saver], model=model, max_steps=15, eval_steps=5)
    trainer.train()
    best = best_checkpoint(tmp_path / "out")
    assert (best / "adapter_model.safetensors").exists() and not (best / "model.safetensors").exists()
    saved = load_file(str(best / "adapter_model.safetensors"))
    live = peft.get_peft_model_state_dict(trainer.model)
    assert saved.keys() == live.keys() and all(torch.equal(saved[k], live[k]) for k in saved)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(saver.best_value, rel=1e-6)


# -- a crash at each point of a save, deterministically --------------------------------------------
class _Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, no cleanup handler catches it."""


@pytest.mark.parametrize("crash_at", ["fsync", "pending_manifest", "rename", "listed_manifest", "prune", "final"])
def test_a_crash_at_any_point_of_a_save_leaves_a_valid_manifest_and_recovers(
    tokenizer, tmp_path, monkeypatch, crash_at
):
    from types import SimpleNamespace

    import ft_callbacks.checkpoints.store as store_module
    from ft_callbacks import toy
    from ft_callbacks.publish import EvaluationContext

    model = toy.tiny_gpt2(tokenizer)
    out = tmp_path / "out"
    out.mkdir()
    args = SimpleNamespace(output_dir=str(out), run_name=None)
    state = TrainerState()
    saver = BestCheckpointSaver(keep=1)
    saver._dir(args)
    saver._training = True

    def evaluate(step, loss):
        state.global_step = step
        metrics = {"eval_loss": loss, "eval_runtime": 0.1}
        saver.decide(EvaluationContext(args, state, None, metrics, model=model, processing_class=tokenizer))

    evaluate(1, 5.0)
    evaluate(2, 4.0)  # step 1 pruned
    assert [e.step for e in saver.ranking.entries] == [2]

    writes = {"n": 0}
    real_write, real_fsync, real_remove, real_replace = (
        saver.store.write_manifest,
        store_module._fsync_tree,
        store_module._remove_tree,
        os.replace,
    )

    def write(*a, **k):
        writes["n"] += 1
        if (crash_at, writes["n"]) in (("pending_manifest", 1), ("listed_manifest", 2), ("final", 3)):
            raise _Killed
        return real_write(*a, **k)

    def fsync(path):
        if crash_at == "fsync":
            raise _Killed
        return real_fsync(path)

    def remove(path):
        if crash_at == "prune" and os.path.basename(path).startswith("best-"):
            (Path(path) / "config.json").unlink()  # half deleted
            raise _Killed
        return real_remove(path)

    def replace(src, dst):
        if crash_at == "rename" and os.path.basename(str(src)).startswith(TMP_PREFIX):
            raise _Killed
        return real_replace(src, dst)

    monkeypatch.setattr(saver.store, "write_manifest", write)
    monkeypatch.setattr(store_module, "_fsync_tree", fsync)
    monkeypatch.setattr(store_module, "_remove_tree", remove)
    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(_Killed):
        evaluate(3, 3.0)
    monkeypatch.undo()

    manifest = read_manifest(out)
    names = [e["path"] for e in manifest["checkpoints"]]
    assert manifest["best"] in names
    for name in names:
        GPT2LMHeadModel.from_pretrained(out / name)
    # The next start cleans up whatever the crash left and agrees with the disk.
    again = BestCheckpointSaver(keep=1)
    store = CheckpointStore(out, again.monitor, again.mode)
    again.ranking.load_state_dict(store.state_from_manifest(manifest))
    store.recover(again.ranking, fresh=False)
    final = _assert_manifest_matches_disk(out)
    assert final["best_step"] == (3 if crash_at in ("prune", "final") else 2)
    assert len(final["checkpoints"]) == 1


# -- SIGKILL during saves -------------------------------------------------------------------------
KILL_WORKER = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, sys.argv[3])
    sys.path.insert(0, os.path.join(sys.argv[3], "tests"))
    import torch
    torch.set_num_threads(1)
    from transformers import PreTrainedTokenizerFast
    from helpers import lm_trainer
    from ft_callbacks import toy
    from ft_callbacks.best_checkpoint import BestCheckpointSaver

    tokenizer = PreTrainedTokenizerFast.from_pretrained(sys.argv[1])
    # A large train set underfits: eval_loss improves at nearly every evaluation, so it saves at
    # nearly every step and a kill lands in a save most of the time.
    trainer = lm_trainer(tokenizer, toy.stdlib_corpus(), sys.argv[2], [BestCheckpointSaver(keep=2)],
                         train_size=200, eval_size=4, max_steps=2000, eval_steps=1, logging_steps=1000,
                         learning_rate=5e-4)
    trainer.train()
    """
)


def test_sigkill_at_random_moments_leaves_a_loadable_best_and_a_valid_manifest(tokenizer, tmp_path):
    tok_dir = tmp_path / "tokenizer"
    tokenizer.save_pretrained(str(tok_dir))
    script = tmp_path / "worker.py"
    script.write_text(KILL_WORKER)
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    rng = random.Random(int(os.environ.get("FT_CALLBACKS_KILL_SEED", "0")))
    cut_off = 0  # kills that landed inside a save (a folder set aside or a deletion pending)
    for attempt in range(KILL_REPEATS):
        out = tmp_path / f"run{attempt}"
        proc = subprocess.Popen(
            [sys.executable, str(script), str(tok_dir), str(out), str(REPO)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 120
            while not (read_manifest(out) or {}).get("best"):  # the first best is on disk
                assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
                assert time.monotonic() < deadline, "no first save within 120 s"
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 1.5))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            proc.stderr.close()
        manifest = json.loads((out / MANIFEST).read_text())  # valid JSON, never torn
        cut_off += bool(list(out.glob(f"{TMP_PREFIX}*")) or manifest["pruning"] or manifest["pending"])
        names = [e["path"] for e in manifest["checkpoints"]]
        assert names and manifest["best"] in names
        assert not [n for n in names if n.startswith(TMP_PREFIX)]
        for name in names:
            model = GPT2LMHeadModel.from_pretrained(out / name)
            assert model.config.n_embd == 64
        # What the next start does: unfinished saves and pending deletions are cleaned up.
        saver = BestCheckpointSaver(keep=2)
        store = CheckpointStore(out, saver.monitor, saver.mode)
        saver.ranking.load_state_dict(store.state_from_manifest(manifest))
        store.recover(saver.ranking, fresh=False)
        _assert_manifest_matches_disk(out)
    print(f"{cut_off} of {KILL_REPEATS} kills landed inside a save")


# -- DDP ------------------------------------------------------------------------------------------
@pytest.mark.distributed
def test_two_process_torchrun_writes_one_checkpoint_per_improvement(tokenizer, tmp_path):
    tok_dir = tmp_path / "tokenizer"
    tokenizer.save_pretrained(str(tok_dir))
    out = tmp_path / "ddp"
    rc, output, _ = run_torchrun(DDP_SCRIPT, tok_dir, out)
    assert rc == 0, output[-6000:]
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["eval_loss"] == r1["eval_loss"]
    improving = _improving(list(zip(r0["eval_steps"], r0["eval_loss"], strict=True)))
    assert [s["step"] for s in r0["saves"]] == [s["step"] for s in r1["saves"]] == improving
    assert r0["ranking"] == r1["ranking"]
    # One copy per improvement, written once: exactly the kept ones are on disk, nothing left aside.
    manifest = _assert_manifest_matches_disk(out / "trainer")
    assert [e["path"] for e in manifest["checkpoints"]] == [e["path"] for e in r0["ranking"]["entries"]]
    assert "saved best-step" in output and output.count(f"saved {manifest['best']}") == 1
    # load_best_at_end gave both ranks the best weights.
    best = load_file(str(out / "trainer" / manifest["best"] / "model.safetensors"))
    reference = GPT2LMHeadModel.from_pretrained(out / "trainer" / manifest["best"])
    assert set(best) <= set(reference.state_dict())
    expected = sum(float(p.detach().double().sum()) for p in reference.parameters())
    assert r0["weights_checksum"] == pytest.approx(expected, rel=1e-9)
    assert r1["weights_checksum"] == pytest.approx(expected, rel=1e-9)
