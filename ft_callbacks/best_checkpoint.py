"""BestCheckpointSaver: write a checkpoint only when the monitored metric improves, atomically, top-k.

The callback decides: whether an evaluation improves on the best (`checkpoints.ranking`), what a failed
save does (`on_save_error`), which weights end the run (`load_best_at_end`) and what goes to wandb.
Writing, the manifest, recovery at start, pruning only what it created and the one-writer lock belong
to the directory's `CheckpointStore` (`checkpoints.store`); reading weights back to `engines`. The
names users import from this module (`best_checkpoint`, `read_manifest`, `last_complete_checkpoint`,
`CheckpointRanking`, `checkpoint_name`, `MANIFEST`, ...) are re-exported here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from . import checkpoints
from .base import ConfigurationError, FtCallback, _Hub, check_monitor_source, monitor_skipped, require_evaluations
from .checkpoints import *  # noqa: F403  (re-exported: `from ft_callbacks.best_checkpoint import MANIFEST` keeps working)
from .checkpoints import CheckpointRanking, CheckpointStore, RankedCheckpoint
from .core.modes import Mode, check_mode, is_finite, normalize_metric_name
from .distributed import all_gather_objects, broadcast_from_main, is_distributed
from .engines import (
    Engine,
    find_trainer,
    full_state_dict,
    is_peft,
    load_full_state_dict,
    load_weights_into,
    read_saved_weights,
    sharded_engine,
    zero3_config_error,
)
from .publish import EvaluationContext, _print, log_model_artifact, notice_once, report_event, warn

__all__ = ["BestCheckpointSaver", *checkpoints.__all__, "load_weights_into", "read_saved_weights"]


# -- the callback ---------------------------------------------------------------------------------
class BestCheckpointSaver(FtCallback):
    """Save a checkpoint only when `monitor` improves; keep the `keep` best; atomic; manifest in JSON.

    `BestCheckpointSaver(monitor="eval_loss", mode=None, min_delta=0.0, keep=1)`:

    - after each evaluation during training, saves when `monitor` (any eval metric, including those
      other ft_callbacks callbacks add in the same evaluation, whatever the list order) beats the
      best so far by more than `min_delta` (`mode` "min"/"max", inferred from the name when None);
      NaN/inf never count;
    - keeps the `keep` best checkpoints it wrote (named `best-step{step:06d}-{monitor}={value:.4f}`)
      and deletes the others it wrote, never the best and never anything it did not write (the
      Trainer's `checkpoint-*` rotation is untouched);
    - `best_checkpoints.json` in the output dir lists the kept checkpoints (step, metric, value, time,
      seconds, bytes) and the best one (`find_best_checkpoint(output_dir)` returns its path);
    - `save_optimizer=False`: weights (adapter only for PEFT models), config and tokenizer only;
      True also writes `optimizer.pt` and `scheduler.pt`;
    - `load_best_at_end=True`: the best weights are loaded back into the model when training ends
      (works with `save_strategy="no"`);
    - `upload_to_wandb=True` (or "end"): the best checkpoint is logged as a wandb Artifact (type
      "model", aliases "best" and "step-N") when training ends, offline runs included (`wandb sync`
      uploads it later); "every_best" logs each new best as a new version of that artifact right after
      it is saved (the "best" alias moves to it), so a run that dies later still has its best in wandb;
    - `on_save_error="continue"`: a save that fails (disk full, permissions) leaves the previous best
      and the manifest as they were, removes its partial files, is reported once per distinct error
      (console, `best/save_error` in log_history and the wandb summary) and training goes on; the next
      improvement is saved normally. `"stop"` stops training at that evaluation instead, with the reason;
    - under DDP (and DeepSpeed ZeRO-1/2) rank 0 writes the one copy and every rank waits for it (and
      learns whether it failed, so all ranks continue or stop together). Under FSDP and DeepSpeed
      ZeRO-3 (sharded parameters) every rank first joins the engine's own gather of the full weights
      (`ft_callbacks.engines`; ZeRO-3 needs `stage3_gather_16bit_weights_on_model_save: true`, checked
      before training), then rank 0 writes the same files; `load_best_at_end` spreads rank 0's copy
      back through the engine.

    Args:
        monitor: the eval metric to rank by (the `eval_` prefix is added when missing).
        mode: "min" or "max"; None infers it from the name (whole tokens: `eval_answer_f1` is "max").
        min_delta: how much a value must beat the best by to count.
        keep: how many best checkpoints to keep (the best is never pruned).
        save_optimizer: also write the optimizer and scheduler state.
        load_best_at_end: load the best weights back into the model when training ends.
        upload_to_wandb: False, True/"end" or "every_best" (only when report_to names wandb).
        artifact_name: the wandb artifact's name (default `<run id>-best`).
        output_dir: where the checkpoints and the manifest go (default the Trainer's output_dir); one
            saver per directory.
        on_save_error: "continue" or "stop" when a save fails.
        eval_dataset_name: with a dict eval_dataset, the dataset whose metric is ranked (default the
            first, said once).

    Raises:
        ConfigurationError: at construction for settings that cannot work; before the first step for
            an unwritable or full output directory, a second saver in the same directory, a directory
            another live run holds (its lock names the PID), a monitor that no evaluation will produce,
            or a sharded-engine setup that cannot save.

    Example:
        >>> Trainer(..., callbacks=[OverfitGuard(), BestCheckpointSaver(monitor="eval_perplexity", keep=2)])
    """

    def __init__(
        self,
        monitor: str = "eval_loss",
        mode: Literal["min", "max"] | None = None,
        min_delta: float = 0.0,
        keep: int = 1,
        save_optimizer: bool = False,
        load_best_at_end: bool = False,
        upload_to_wandb: bool | Literal["end", "every_best"] = False,
        artifact_name: str | None = None,
        output_dir: str | None = None,
        on_save_error: Literal["continue", "stop"] = "continue",
        eval_dataset_name: str | None = None,
    ) -> None:
        self._init_args = {
            "monitor": monitor,
            "mode": mode,
            "min_delta": min_delta,
            "keep": keep,
            "save_optimizer": save_optimizer,
            "load_best_at_end": load_best_at_end,
            "upload_to_wandb": upload_to_wandb,
            "artifact_name": artifact_name,
            "output_dir": output_dir,
            "on_save_error": on_save_error,
            "eval_dataset_name": eval_dataset_name,
        }
        if not isinstance(monitor, str) or not monitor:
            raise ConfigurationError(f"monitor={monitor!r} is not valid: name an eval metric such as 'eval_loss'.")
        if on_save_error not in ("continue", "stop"):
            raise ConfigurationError(f"on_save_error={on_save_error!r} is not valid: use 'continue' or 'stop'.")
        if eval_dataset_name is not None and not isinstance(eval_dataset_name, str):
            raise ConfigurationError(
                f"eval_dataset_name={eval_dataset_name!r} is not valid: name a key of the dict eval_dataset."
            )
        self.eval_dataset_name = eval_dataset_name
        self.monitor = normalize_metric_name(monitor)
        self._monitor_setting = self.monitor  # as given; `monitor` is resolved against the eval datasets
        self._decision_prefix = "eval"
        try:
            self.mode: Mode = check_mode(mode, self.monitor)
            self.ranking = CheckpointRanking(self.mode, keep, min_delta)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        self.keep = keep
        self.min_delta = float(min_delta)
        self.save_optimizer = bool(save_optimizer)
        self.load_best_at_end = bool(load_best_at_end)
        if upload_to_wandb not in (True, False, "end", "every_best"):
            raise ConfigurationError(
                f"upload_to_wandb={upload_to_wandb!r} is not valid: use False, True (same as 'end'), 'end' or "
                "'every_best'."
            )
        # "end": once, when training ends; "every_best": each new best as soon as it is saved.
        self.upload_to_wandb: Literal["end", "every_best"] | None = (
            "end" if upload_to_wandb is True else (upload_to_wandb or None)
        )
        self._uploaded: str | None = None  # the folder last logged as an artifact
        self.artifact_name = artifact_name
        self.output_dir = output_dir
        self.on_save_error = on_save_error
        self.save_errors: list[dict[str, Any]] = []  # every failed save of this run: step, error
        self.saves: list[dict[str, Any]] = []  # every save of this process: step, seconds, bytes
        self._restored_state: dict[str, Any] | None = None
        self._training = False
        self._monitor_checked = False
        self._optimizer: Any = None
        self._scheduler: Any = None
        self._resolved_dir: str | None = None
        self._trainer: Any = None  # the Trainer running us, under sharded engines
        self._engine: Engine | None = None
        self.store: CheckpointStore | None = None  # the directory, known once training starts

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The ranking (kept in the Trainer's checkpoints by the base; the manifest has the same)."""
        return self.ranking.state_dict()

    @property
    def best_value(self) -> float | None:
        return self.ranking.best_value

    @property
    def best_step(self) -> int | None:
        return self.ranking.best_step

    @property
    def best_path(self) -> Path | None:
        """The best checkpoint's folder (known once training has started)."""
        best = self.ranking.best
        if best is None or self._resolved_dir is None:
            return None
        return Path(self._resolved_dir) / best.path

    def _dir(self, args: Any) -> str:
        self._resolved_dir = str(self.output_dir or args.output_dir)
        return self._resolved_dir

    def _store(self, args: Any) -> CheckpointStore:
        """The store of this run's directory and monitor (the same object for the whole run)."""
        out = self._dir(args)
        store = self.store
        if store is None or (store.directory, store.monitor) != (out, self.monitor):
            if store is not None:  # an earlier train() into another directory that never reached its end
                store.release_lock()
            self.store = store = CheckpointStore(out, self.monitor, self.mode)
        return store

    # -- start / resume ------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        require_evaluations(args, "BestCheckpointSaver", "saves after evaluations")
        hub = self._hub(state)
        main = state.is_world_process_zero
        self.monitor = hub.resolve_monitor("BestCheckpointSaver", self._monitor_setting, self.eval_dataset_name, main)
        self._decision_prefix = hub.prefix_of(self.monitor)
        self._check_engine(kwargs.get("model"))
        if self.save_optimizer and getattr(args, "deepspeed", None):
            raise ConfigurationError(
                "save_optimizer=True is not supported under DeepSpeed (its optimizer state is partitioned); "
                "use save_optimizer=False (weights only) or the Trainer's own checkpoints for resuming."
            )
        if self.load_best_at_end and getattr(args, "load_best_model_at_end", False) and state.is_world_process_zero:
            notice_once(
                "best_load_twice",
                "both load_best_model_at_end (Trainer) and BestCheckpointSaver(load_best_at_end=True) are set; the "
                "saver runs last, so the model ends with the weights of the saver's best checkpoint.",
            )
        self._capture(kwargs)
        store = self._store(args)
        self._check_one_saver_per_dir(args, state)
        error = None
        if state.is_world_process_zero:
            error = store.check_writable() or store.acquire_lock()
        error = broadcast_from_main(error)
        if error:
            raise ConfigurationError(error)
        self._training = True
        self._monitor_checked = False
        saved, self._restored_state = self._restored_state, None  # set when rebuilt from an older checkpoint
        self.ranking = CheckpointRanking(self.mode, self.keep, self.min_delta)
        if state.global_step > 0:
            store.resume(self.ranking, lambda: saved if saved is not None else self.saved_state(state))
        if state.is_world_process_zero:
            store.recover(self.ranking, fresh=state.global_step == 0)
        # Every rank ranks alike: rank 0's view (after the repair) is everyone's.
        ranking_state = broadcast_from_main(self.ranking.state_dict())
        self.ranking.load_state_dict(ranking_state)
        if state.global_step > 0 and state.is_world_process_zero and self.ranking.best is not None:
            notice_once(
                "best_restored",
                f"BestCheckpointSaver resumed at step {state.global_step}: best {self.monitor} "
                f"{self.ranking.best_value:.6g} at step {self.ranking.best_step}, {len(self.ranking.entries)} kept.",
            )

    def _check_engine(self, model: Any) -> None:
        """Sharded parameters (FSDP, ZeRO-3): every save and load is a collective through the engine."""
        self._trainer = find_trainer(self)
        self._engine = sharded_engine(model, self._trainer)
        if self._engine is None:
            return
        if self._trainer is None:
            raise ConfigurationError(
                f"BestCheckpointSaver under {self._engine} must be run by a transformers Trainer (trainer.train()): "
                "the sharded weights are gathered through the Trainer's engine."
            )
        if self._engine == "DeepSpeed ZeRO-3":
            error = zero3_config_error(self._trainer)
            if error:
                raise ConfigurationError(f"BestCheckpointSaver: {error}")
        if self.save_optimizer:
            raise ConfigurationError(
                f"save_optimizer=True is not supported under {self._engine} (the optimizer state is sharded); use "
                "save_optimizer=False (weights only) and the Trainer's own checkpoints for resuming."
            )
        if self.load_best_at_end and is_peft(model):
            raise ConfigurationError(
                f"load_best_at_end=True is not supported for a PEFT model under {self._engine}; load the best adapter "
                "after training: PeftModel.from_pretrained(base_model, best_checkpoint(output_dir))."
            )

    def _check_one_saver_per_dir(self, args: Any, state: Any) -> None:
        """Two savers in one directory overwrite each other's manifest: refuse before the first step."""
        trainer_callbacks = getattr(getattr(self._trainer, "callback_handler", None), "callbacks", None)
        peers = trainer_callbacks if trainer_callbacks is not None else _Hub.of(state).members
        mine = os.path.realpath(self._dir(args))
        for other in peers:
            if other is self or not isinstance(other, BestCheckpointSaver):
                continue
            if os.path.realpath(str(other.output_dir or args.output_dir)) != mine:
                continue
            effect = (
                "every checkpoint would be written twice"
                if other.monitor == self.monitor
                else "the manifest would keep only the last writer's list and best_checkpoint() would return the "
                "other one's best"
            )
            raise ConfigurationError(
                f"two BestCheckpointSavers (monitor={self.monitor!r} and monitor={other.monitor!r}) write into the "
                f"same directory {self._resolved_dir!r}: {effect}. Give each its own directory, e.g. "
                f"BestCheckpointSaver(monitor={other.monitor!r}, "
                f"output_dir={os.path.join(self._resolved_dir or '', 'best_' + other.monitor)!r})."
            )

    # -- events --------------------------------------------------------------------------------
    def _capture(self, kwargs: dict[str, Any]) -> None:
        self._optimizer = kwargs.get("optimizer") or self._optimizer
        self._scheduler = kwargs.get("lr_scheduler") or self._scheduler

    def on_step_begin(self, args, state, control, **kwargs):
        super().on_step_begin(args, state, control, **kwargs)
        self._capture(kwargs)

    def validate(self, args: Any, state: Any, hub: _Hub) -> None:
        check_monitor_source("BestCheckpointSaver", self.monitor, hub, state.is_world_process_zero)

    def decide(self, ctx: EvaluationContext) -> None:
        if not self._training or ctx.prefix != self._decision_prefix:
            return
        value = ctx.metrics.get(self.monitor)
        if value is None and not self._monitor_checked:
            monitor_skipped("BestCheckpointSaver", self.monitor, ctx)  # raises unless one of ours skipped a round
        else:
            self._monitor_checked = True
        if value is not None and not isinstance(value, (int, float)):
            return
        value = None if value is None else float(value)
        # Metrics are reduced across ranks already; rank 0's reading is made everyone's all the same.
        improves = broadcast_from_main(self.ranking.improves(value))
        if value is not None and not is_finite(value) and ctx.is_main:
            ctx.console.append(f"{self.monitor} is {value}: not a best")
        if not improves:
            return
        record = self._save(ctx, value)  # type: ignore[arg-type]
        if record is None:
            return
        ctx.add_summary(f"best/{self.monitor}", value)
        ctx.add_summary("best/step", ctx.step)
        ctx.add_summary("best/checkpoint", record["path"])
        ctx.add_summary("best/save_seconds", record["seconds"])
        ctx.add_summary("best/save_bytes", record["bytes"])
        if self.upload_to_wandb == "every_best" and ctx.is_main and self.ranking.best is not None:
            self._upload(ctx.args, os.path.join(self._dir(ctx.args), record["path"]), self.ranking.best)
        ctx.console.append(
            f"saved {record['path']} ({record['bytes'] / 1e6:.2f} MB in {record['seconds']:.2f}s)"
            + (f", pruned {', '.join(record['pruned'])}" if record["pruned"] else "")
        )

    # -- saving --------------------------------------------------------------------------------
    def _save(self, ctx: EvaluationContext, value: float) -> dict[str, Any] | None:
        step = ctx.step
        result: dict[str, Any] | None = None
        weights = None
        if self._engine is not None:
            # Sharded parameters: every rank joins the engine's gather; rank 0 receives the full weights.
            error = None
            try:
                weights = full_state_dict(self._engine, ctx.model, self._trainer)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            errors = [e for e in all_gather_objects(error) if e]
            if errors:
                self._save_failed(ctx, step, {"error": errors[0], "kind": f"gather:{errors[0]}"})
                return None
        if ctx.is_main:
            try:
                result = self._write_checkpoint(ctx, step, value, weights)
            except Exception as exc:  # disk full, permissions: keep the previous best
                # One kind per distinct error: the errno, not the file name, tells two failures apart.
                kind = f"{type(exc).__name__}:{getattr(exc, 'errno', None) or exc}"
                result = {"error": f"{type(exc).__name__}: {exc}", "kind": kind}
        # Rank 0 has written (or failed); every rank waits here and learns the outcome.
        result = broadcast_from_main(result) if is_distributed() else result
        if not result or "error" in result:
            self._save_failed(ctx, step, result or {"error": "unknown error", "kind": "unknown"})
            return None
        if not ctx.is_main:  # follow rank 0's ranking
            self.ranking.load_state_dict(result["ranking"])
        self.saves.append({k: result[k] for k in ("step", "path", "seconds", "bytes")})
        return result

    def _save_failed(self, ctx: EvaluationContext, step: int, result: dict[str, Any]) -> None:
        """Every rank, from rank 0's outcome: the same decision (go on or stop) everywhere."""
        error = result["error"]
        first = not any(e["kind"] == result["kind"] for e in self.save_errors)
        self.save_errors.append({"step": step, "error": error, "kind": result["kind"]})
        ctx.add_summary("best/save_error", f"step {step}: {error}")
        if self.on_save_error == "stop":
            if ctx.control is not None:
                ctx.control.should_training_stop = True
            message = (
                f"BestCheckpointSaver stops training at step {step}: could not save the best checkpoint ({error}); "
                "the previous best is kept (on_save_error='stop')."
            )
            ctx.add_summary("best/stop_reason", message)
            ctx.console.append("STOP: best checkpoint not saved")
        else:
            message = (
                f"BestCheckpointSaver could not save the best checkpoint at step {step} ({error}); the previous best "
                "is kept and training continues (on_save_error='continue'; 'stop' stops instead)."
            )
            ctx.console.append("best checkpoint not saved")
        if ctx.is_main and (first or self.on_save_error == "stop"):
            ctx.blocks.append(f"    {message}")  # in the evaluation's own block, after its numbers

    def _write_checkpoint(
        self, ctx: EvaluationContext, step: int, value: float, weights: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Rank 0: one save through the store, whose `save_fn` writes the weights (PEFT models: the adapter
        only; `weights`: the gathered ones of a sharded model), config, tokenizer, optimizer and scheduler."""
        model = ctx.model
        if model is None:
            raise RuntimeError("the Trainer passed no model to the callback")

        def write(tmp: str) -> None:
            model.save_pretrained(tmp, **({"state_dict": weights} if weights is not None else {}))
            processor = ctx.processing_class
            if processor is not None and hasattr(processor, "save_pretrained"):
                processor.save_pretrained(tmp)
            if self.save_optimizer:
                import torch

                if self._optimizer is not None:
                    torch.save(self._optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
                if self._scheduler is not None:
                    torch.save(self._scheduler.state_dict(), os.path.join(tmp, "scheduler.pt"))

        return self._store(ctx.args).save(self.ranking, step, value, write)

    # -- end of training -----------------------------------------------------------------------
    def on_train_end(self, args, state, control, **kwargs):
        super().on_train_end(args, state, control, **kwargs)
        self._training = False
        trainer, self._trainer = self._trainer, None  # no reference cycle kept past training
        try:
            self._finish(args, state, kwargs.get("model"), trainer)
        finally:
            if self.store is not None:
                self.store.release_lock()

    def _finish(self, args: Any, state: Any, model: Any, trainer: Any) -> None:
        store = self._store(args)
        out = store.directory
        best = self.ranking.best
        if best is None:
            if state.is_world_process_zero:
                report_event(args, state, message=self._nothing_saved_message(out))
            return
        folder = os.path.join(out, best.path)
        # Rank 0 looks (its disk is the one written); every rank follows, so collective loads stay in step.
        refused = broadcast_from_main(store.not_ours(best.path) if state.is_world_process_zero else None)
        if refused is not None:
            if state.is_world_process_zero:
                warn(f"the best checkpoint {folder} is {refused} now; it is neither loaded nor uploaded.")
            return
        if self.load_best_at_end:
            if self._engine is None:
                load_weights_into(model, folder)  # every rank: all must hold the same weights
            else:  # collective: rank 0 reads the file, the engine spreads it
                weights = read_saved_weights(folder) if state.is_world_process_zero else {}
                load_full_state_dict(self._engine, model, weights, trainer)
            if state.is_world_process_zero:
                _print(f"[ft_callbacks] BestCheckpointSaver loaded the best weights from {best.path}.")
        if state.is_world_process_zero:
            if self.upload_to_wandb and self._uploaded != folder:  # "every_best" did, unless that failed
                self._upload(args, folder, best)
            failed = ""
            if self.save_errors:
                failed = f" ({len(self.save_errors)} save(s) failed: {self.save_errors[-1]['error']})"
            report_event(
                args,
                state,
                summary={f"best/{self.monitor}": best.value, "best/step": best.step, "best/checkpoint": best.path},
                message=f"BestCheckpointSaver: best {self.monitor} {best.value:.6g} at step {best.step} in {folder}"
                + failed,
            )

    def _nothing_saved_message(self, out: str) -> str:
        if not self.save_errors:
            return f"BestCheckpointSaver: no finite {self.monitor}, nothing saved."
        errors = list(dict.fromkeys(e["error"] for e in self.save_errors))  # distinct, in order
        n = len(self.save_errors)
        return (
            f"BestCheckpointSaver: nothing saved: {f'all {n} saves' if n > 1 else 'the save'} of an improved "
            f"{self.monitor} failed ({'; '.join(errors[:3])}). Fix the cause (disk space, permissions) in {out!r} or "
            "pick another directory (TrainingArguments(output_dir=...) or BestCheckpointSaver(output_dir=...))."
        )

    def _upload(self, args: Any, folder: str, best: RankedCheckpoint) -> None:
        metadata = {"step": best.step, "metric": self.monitor, "value": best.value, "mode": self.mode}
        if log_model_artifact(folder, self.artifact_name, metadata, aliases=["best", f"step-{best.step}"]):
            self._uploaded = folder
