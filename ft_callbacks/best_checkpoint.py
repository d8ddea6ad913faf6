"""BestCheckpointSaver: write a checkpoint only when the monitored metric improves, atomically, top-k.

Layout in `output_dir` (the Trainer's, unless `output_dir=` is given):

    best_checkpoints.json                        the manifest: the truth scripts and resumed runs read
    best_checkpoints.lock                        the process writing here (PID, host), while it trains
    best-step000040-eval_loss=3.1416/            one kept checkpoint (weights, config, tokenizer, info)
    .tmp-best-<step>-<pid>/                      a save in progress (removed at the next start)

A checkpoint is written into a `.tmp-best-*` folder, every file fsync'ed, then renamed to its final
name in one `os.replace` (the manifest names it under `"pending"` first, so a folder renamed just
before a kill is known to be ours); only then is the manifest rewritten (tmp file + fsync +
`os.replace`), and only after that are pruned checkpoints deleted (they are listed under `"pruning"`
until gone). A kill at any moment leaves the previous manifest and every checkpoint it lists intact.

The manifest is a file anyone can edit, so nothing it names is trusted: a folder is loaded or deleted
only if it is one this saver created (`_not_ours`): a `best-step…` name directly inside the directory,
not a symbolic link, holding the `best_checkpoint.json` this saver writes into every checkpoint before
it appears. One saver per directory: a second in the same Trainer is refused, and a lock file keeps a
second process out while the first trains.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from .base import ConfigurationError, FtCallback, _Hub, check_monitor_source, monitor_skipped, require_evaluations
from .core.modes import Mode, check_mode, is_finite, is_improvement, normalize_metric_name
from .distributed import all_gather_objects, broadcast_from_main, is_distributed
from .engines import Engine, find_trainer, full_state_dict, load_full_state_dict, sharded_engine, zero3_config_error
from .records import LOCK_STALE_SECONDS, LockHeld, RunLock, describe_holder, fsync_path, read_json, write_json_atomic
from .reporting import SINK, EvaluationContext, _print, notice_once, report_event, warn

MANIFEST = "best_checkpoints.json"
TMP_PREFIX = ".tmp-best-"
INFO_FILE = "best_checkpoint.json"  # inside every checkpoint; also the marker that the folder is ours
LOCK_FILE = "best_checkpoints.lock"
MANIFEST_VERSION = 1
PROBE_BYTES = 64 * 1024  # the start-up write test: big enough that a full disk refuses it
# What `checkpoint_name` produces (plus the "-2" of a name taken by an earlier run): one path component.
_CHECKPOINT_NAME = re.compile(r"best-step(\d+)-[A-Za-z0-9_.-]+=-?\d+\.\d{4}(?:-\d+)?")
_TMP_NAME = re.compile(r"\.tmp-best-(?:\d+|probe)-\d+")
_MISSING = "missing"


# -- ranking: plain numbers, no framework ---------------------------------------------------------
@dataclass
class RankedCheckpoint:
    step: int
    value: float
    path: str = ""  # folder name, relative to the output dir
    time: str = ""
    seconds: float = 0.0
    bytes: int = 0


@dataclass
class RankingDecision:
    saved: bool
    pruned: list[RankedCheckpoint] = field(default_factory=list)


class CheckpointRanking:
    """Which checkpoints to keep: the `keep` best by value; a value counts only if it beats the best
    so far by more than `min_delta` (NaN/inf never do). The best is never pruned."""

    def __init__(self, mode: Mode = "min", keep: int = 1, min_delta: float = 0.0) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ValueError(f"keep={keep!r} is not valid: keep at least 1 checkpoint (the best).")
        if not isinstance(min_delta, (int, float)) or not math.isfinite(min_delta) or min_delta < 0:
            raise ValueError(f"min_delta={min_delta!r} is not valid: use a finite number >= 0.")
        self.mode = check_mode(mode, "metric")
        self.keep = keep
        self.min_delta = float(min_delta)
        self.entries: list[RankedCheckpoint] = []  # kept, best first
        self.best_value: float | None = None
        self.best_step: int | None = None

    @property
    def best(self) -> RankedCheckpoint | None:
        return self.entries[0] if self.entries else None

    def improves(self, value: float | None) -> bool:
        return is_improvement(value, self.best_value, self.mode, self.min_delta)

    def _sort(self) -> None:
        sign = 1.0 if self.mode == "min" else -1.0
        # Best value first; among equal values the earlier step (it was the best first).
        self.entries.sort(key=lambda e: (sign * e.value, e.step))

    def add(self, step: int, value: float | None, path: str = "", **info: Any) -> RankingDecision:
        """Offer an evaluation's value. Saved (and ranked) only if it improves; returns the entries
        that fall out of the top `keep` (never the best)."""
        if not self.improves(value):
            return RankingDecision(saved=False)
        entry = RankedCheckpoint(step=int(step), value=float(value), path=path, **info)  # type: ignore[arg-type]
        self.entries.append(entry)
        self.best_value, self.best_step = entry.value, entry.step
        return RankingDecision(saved=True, pruned=self.prune())

    def prune(self) -> list[RankedCheckpoint]:
        self._sort()
        best = self.entries[0] if self.entries else None
        dropped = [e for e in self.entries[self.keep :] if e is not best]
        self.entries = [e for e in self.entries if e not in dropped]
        return dropped

    def remove(self, path: str) -> None:
        self.entries = [e for e in self.entries if e.path != path]

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_value": self.best_value,
            "best_step": self.best_step,
            "entries": [asdict(e) for e in self.entries],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.entries = [RankedCheckpoint(**e) for e in state.get("entries", [])]
        self.best_value = state.get("best_value")
        self.best_step = state.get("best_step")
        self._sort()
        if self.best_value is None and self.entries:
            self.best_value, self.best_step = self.entries[0].value, self.entries[0].step


# -- manifest and files ---------------------------------------------------------------------------
def checkpoint_name(step: int, monitor: str, value: float) -> str:
    metric = re.sub(r"[^A-Za-z0-9_.-]", "_", monitor)
    return f"best-step{int(step):06d}-{metric}={value:.4f}"


def _fsync_tree(root: str | os.PathLike) -> int:
    """fsync every file and folder under `root`; returns the bytes in it."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            total += os.path.getsize(path)
            fsync_path(path)
        fsync_path(dirpath, directory=True)
    return total


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _manifest_problem(data: Any) -> str | None:
    """Why a parsed manifest cannot be used (a field of the wrong type), or None."""
    if not isinstance(data, dict):
        return f"it holds {_json_type(data)}, not an object"
    for key in ("checkpoints", "pruning", "pending"):
        if not isinstance(data.get(key, []), list):
            return f'"{key}" is {_json_type(data[key])}, not a list'
    for key in ("pruning", "pending"):
        if not all(isinstance(name, str) for name in data.get(key, [])):
            return f'"{key}" holds something other than folder names'
    for key in ("best", "monitor", "mode"):
        if data.get(key) is not None and not isinstance(data[key], str):
            return f'"{key}" is {_json_type(data[key])}, not a string'
    step, value = data.get("best_step"), data.get("best_value")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
        return f'"best_step" is {_json_type(step)}, not a whole number'
    finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if value is not None and not finite:
        return f'"best_value" is {value!r}, not a finite number'
    return None


def _load_manifest(output_dir: str | os.PathLike) -> tuple[dict[str, Any] | None, str | None]:
    """(manifest, None), (None, why it is unusable), or (None, None) when there is none."""
    path = os.path.join(output_dir, MANIFEST)
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        return None, f"it cannot be read ({exc})"
    try:
        data = json.loads(text)
    except ValueError as exc:
        return None, f"it is not valid JSON ({exc})"
    problem = _manifest_problem(data)
    return (None, problem) if problem else (data, None)


def read_manifest(output_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of `output_dir`, or None when there is none, it cannot be parsed, or a field has the
    wrong type (a hand-edited `"pruning": 5`): a resumed run then treats it as lost."""
    return _load_manifest(output_dir)[0]


def _not_ours(output_dir: str | os.PathLike, name: Any) -> str | None:
    """None when `name` is a checkpoint folder this saver created directly inside `output_dir`;
    otherwise why not (`_MISSING` when such a name is simply not on disk). Only folders that pass are
    ever loaded or deleted: the manifest is a file anyone can edit."""
    match = _CHECKPOINT_NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None:  # "", ".", "..", absolute paths, anything with a separator, the Trainer's checkpoint-N
        return "not a best-step… folder name of this saver"
    path = os.path.join(output_dir, name)
    if os.path.islink(path):
        return "a symbolic link"
    if not os.path.lexists(path):
        return _MISSING
    if not os.path.isdir(path):
        return "not a folder"
    if os.path.realpath(path) != os.path.join(os.path.realpath(output_dir), name):
        return "outside the directory"
    marker = os.path.join(path, INFO_FILE)
    info = None if os.path.islink(marker) or not os.path.isfile(marker) else read_json(marker)
    if not isinstance(info, dict) or info.get("step") != int(match.group(1)):
        return f"a folder without this saver's {INFO_FILE} marker"
    return None


def best_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """Path of the best checkpoint the manifest of `output_dir` lists, or None.

    Only a folder the saver created is returned (a `best-step…` folder directly inside `output_dir`,
    not a symbolic link, with its `best_checkpoint.json`); a manifest naming anything else gives None
    and a warning."""
    manifest = read_manifest(output_dir)
    if not manifest or not manifest.get("best"):
        return None
    reason = _not_ours(output_dir, manifest["best"])
    if reason is not None:
        warn(f"{MANIFEST} in {output_dir} names {manifest['best']!r} as the best checkpoint, but that is {reason}; "
             "it is not returned.")  # fmt: skip
        return None
    return Path(output_dir) / manifest["best"]


def last_complete_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest of the Trainer's own `checkpoint-N` folders that is complete: what to pass to
    `trainer.train(resume_from_checkpoint=...)` after a crash or kill.

    transformers' `get_last_checkpoint` returns the highest-numbered folder even when a kill cut its
    writing short, and resuming from that one fails (or loses the optimizer state). The Trainer writes
    a checkpoint in place with `trainer_state.json` last, so complete means: that file parses and
    records step N. None when no checkpoint is complete (start afresh)."""
    found = []
    for folder in Path(output_dir).glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", folder.name)
        if match is None or not folder.is_dir():
            continue
        state = read_json(folder / "trainer_state.json")
        if isinstance(state, dict) and state.get("global_step") == int(match.group(1)):
            found.append((int(match.group(1)), folder))
    return max(found)[1] if found else None


def _remove_tree(path: str | os.PathLike) -> None:
    """Delete a folder this saver wrote (callers check that it is ours). Its marker goes last, so a
    deletion a kill cuts short leaves a folder that the next start still recognises and finishes."""
    path = str(path)
    if os.path.islink(path) or not os.path.isdir(path):  # never follow a link out of the directory
        return
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        if name == INFO_FILE:
            continue
        child = os.path.join(path, name)
        if os.path.isdir(child) and not os.path.islink(child):
            shutil.rmtree(child, ignore_errors=True)
        else:
            try:
                os.remove(child)
            except OSError:
                pass
    try:
        if os.listdir(path) == [INFO_FILE]:  # all the rest is gone (or the marker stays, and so it is ours)
            os.remove(os.path.join(path, INFO_FILE))
        os.rmdir(path)
    except OSError:
        pass


def _is_peft(model: Any) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def read_saved_weights(folder: str | os.PathLike) -> dict[str, Any]:
    """The weights `save_pretrained` wrote in `folder` (one file or an index of shards)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.exists():
        files = [single]
    elif index.exists():
        shard_names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [folder / name for name in shard_names]
    else:
        raise FileNotFoundError(f"{folder} has no model.safetensors")
    state: dict[str, Any] = {}
    for path in files:
        state.update(load_file(str(path)))
    return state


def load_weights_into(model: Any, folder: str | os.PathLike) -> None:
    """Put the weights saved in `folder` (by `save_pretrained`) back into `model`, in place (a model
    whose parameters are whole on this process: single process, DDP, ZeRO-1/2)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if _is_peft(model):
        from peft import set_peft_model_state_dict

        adapter = folder / "adapter_model.safetensors"
        if not adapter.exists():
            raise FileNotFoundError(f"{folder} has no adapter_model.safetensors")
        set_peft_model_state_dict(model, load_file(str(adapter)))
        return
    result = model.load_state_dict(read_saved_weights(folder), strict=False)
    # save_pretrained leaves out tied weights (e.g. lm_head = embeddings); anything else is an error.
    tied = set()
    for getter in ("all_tied_weights_keys", "_tied_weights_keys"):
        keys = getattr(model, getter, None)
        if isinstance(keys, dict):
            tied.update(keys)
        elif isinstance(keys, (list, tuple, set)):
            tied.update(keys)
    missing = [k for k in result.missing_keys if k not in tied and not k.endswith("lm_head.weight")]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"the checkpoint in {folder} does not match the model: missing {missing[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]}"
        )


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
      seconds, bytes) and the best one (`best_checkpoint(output_dir)` returns its path);
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
        self._lock: RunLock | None = None  # rank 0, while training

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
        out = self._dir(args)
        self._check_one_saver_per_dir(args, state)
        error = None
        if state.is_world_process_zero:
            error = self._check_writable(out) or self._take_lock(out)
        error = broadcast_from_main(error)
        if error:
            raise ConfigurationError(error)
        self._training = True
        self._monitor_checked = False
        saved = self._restored_state
        self._restored_state = None
        if state.global_step > 0:
            manifest = read_manifest(out)
            if manifest is None and saved is None:
                saved = self.saved_state(state)
            if manifest is not None:
                saved = self._state_from_manifest(manifest)
            self.ranking = CheckpointRanking(self.mode, self.keep, self.min_delta)
            if saved:
                try:
                    self.ranking.load_state_dict(saved)
                except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a hand-edited trainer_state.json
                    warn(f"the ranking stored in the Trainer checkpoint is malformed ({exc!r}); starting a new one.")
                    self.ranking = CheckpointRanking(self.mode, self.keep, self.min_delta)
        else:
            self.ranking = CheckpointRanking(self.mode, self.keep, self.min_delta)
        if state.is_world_process_zero:
            self._recover(out, fresh=state.global_step == 0)
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
        if self.load_best_at_end and _is_peft(model):
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

    @staticmethod
    def _check_writable(out: str) -> str | None:
        probe = os.path.join(out, f"{TMP_PREFIX}probe-{os.getpid()}")
        try:
            os.makedirs(out, exist_ok=True)
            # Some KB of random bytes (no filesystem compresses them away), fsync'ed: a full disk or quota
            # fails here, before the first step, instead of at every save.
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                data = memoryview(os.urandom(PROBE_BYTES))
                while data:
                    data = data[os.write(fd, data) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.remove(probe)
        except OSError as exc:
            try:
                os.remove(probe)
            except OSError:
                pass
            full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
            return (
                f"BestCheckpointSaver cannot write to the output directory {out!r} ({exc})"
                + (": the disk (or your quota) is full, so every checkpoint save would fail. Free some space or pick "
                   "another output_dir" if full else ". Pick a writable output_dir")
                + " (TrainingArguments(output_dir=...) or BestCheckpointSaver(output_dir=...))."
            )  # fmt: skip
        return None

    def _take_lock(self, out: str) -> str | None:
        """Rank 0: hold the directory's lock for the run, or say who holds it."""
        if self._lock is not None:  # an earlier train() of this saver that never reached its end
            self._lock.release()
            self._lock = None
        lock = RunLock(os.path.join(out, LOCK_FILE))
        try:
            stale = lock.acquire()
        except LockHeld as exc:
            return (
                f"BestCheckpointSaver: another run is writing into {out!r}: {describe_holder(exc.holder)} holds "
                f"{exc.path}. Two runs in one directory overwrite each other's manifest and prune each other's "
                "checkpoints. Wait for that run to finish, or give this one its own directory "
                "(TrainingArguments(output_dir=...) or BestCheckpointSaver(output_dir=...)). If that process is no "
                f"longer running, delete {exc.path} (a lock from another host counts as stale on its own after "
                f"{LOCK_STALE_SECONDS / 60:.0f} minutes without its heartbeat)."
            )
        except OSError as exc:
            return f"BestCheckpointSaver cannot create its lock file in {out!r} ({exc}). Pick a writable output_dir."
        self._lock = lock
        if stale is not None:
            notice_once(
                f"best_lock:{lock.path}",
                f"BestCheckpointSaver took over the stale lock {lock.path} of {describe_holder(stale)}, which is no "
                "longer running.",
            )
        return None

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _state_from_manifest(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        if manifest.get("monitor") not in (None, self.monitor) or manifest.get("mode") not in (None, self.mode):
            warn(
                f"the manifest in the output dir ranks {manifest.get('monitor')!r} ({manifest.get('mode')}), "
                f"this saver {self.monitor!r} ({self.mode}): starting a new ranking."
            )
            return None
        entries = []
        for e in manifest.get("checkpoints", []):
            try:
                if not isinstance(e, dict) or not math.isfinite(float(e["value"])):
                    raise ValueError(e)
                entries.append(
                    asdict(
                        RankedCheckpoint(
                            step=int(e["step"]),
                            value=float(e["value"]),
                            path=str(e["path"]),
                            time=str(e.get("time", "")),
                            seconds=float(e.get("seconds", 0.0)),
                            bytes=int(e.get("bytes", 0)),
                        )
                    )
                )
            except (KeyError, TypeError, ValueError):
                warn(f"ignoring a malformed manifest entry: {e!r}")
        return {"best_value": manifest.get("best_value"), "best_step": manifest.get("best_step"), "entries": entries}

    def _recover(self, out: str, fresh: bool) -> None:
        """Rank 0, at the start: drop unfinished saves, finish pending deletions, repair the manifest.

        Deletes and keeps only folders this saver created (`_not_ours`); whatever else the manifest
        names is reported once and left on disk."""
        for name in os.listdir(out):
            path = os.path.join(out, name)
            if _TMP_NAME.fullmatch(name) and not os.path.islink(path):
                if os.path.isdir(path):
                    _remove_tree(path)
                else:  # the write probe of a run killed at its start
                    try:
                        os.remove(path)
                    except OSError:
                        pass
        refused: dict[str, str] = {}
        manifest, problem = _load_manifest(out)
        if problem is not None:
            self._set_aside_malformed(out, problem, fresh)
        if manifest is not None:
            entries = manifest.get("checkpoints", [])
            listed = {e["path"] for e in entries if isinstance(e, dict) and isinstance(e.get("path"), str)}
            # A deletion cut off, or a save renamed into place but never listed: both are ours (if verified).
            for name in [*manifest.get("pruning", []), *manifest.get("pending", [])]:
                if name in listed:
                    continue
                reason = _not_ours(out, name)
                if reason is None:
                    _remove_tree(os.path.join(out, name))
                elif reason != _MISSING:
                    refused[name] = reason
        if fresh:
            self._report_refused(out, refused)
            if manifest is not None and manifest.get("checkpoints"):
                archive = os.path.join(out, f"best_checkpoints.{int(time.time())}.json")
                os.replace(os.path.join(out, MANIFEST), archive)
                warn(
                    f"{MANIFEST} in {out} is from an earlier run; it was moved to {os.path.basename(archive)} and its "
                    "checkpoints are left on disk untouched. This run starts a new ranking."
                )
            return
        missing = []
        for e in list(self.ranking.entries):
            reason = _not_ours(out, e.path)
            if reason is None:
                continue
            self.ranking.remove(e.path)
            if reason == _MISSING:
                missing.append(e.path)
            else:
                refused[e.path] = reason
        self._report_refused(out, refused)
        if missing:
            warn(
                f"{MANIFEST} listed checkpoints that no longer exist ({', '.join(missing)}); "
                "removed them from the ranking."
            )
        if missing or refused:
            if not self.ranking.entries:
                self.ranking.best_value = self.ranking.best_step = None
            else:
                best = self.ranking.entries[0]
                self.ranking.best_value, self.ranking.best_step = best.value, best.step
        lost = manifest is None and bool(self.ranking.entries)  # restored from trainer_state.json
        dirty = manifest is not None and (manifest.get("pruning") or manifest.get("pending"))
        if missing or refused or lost or dirty:
            self._write_manifest(out)

    @staticmethod
    def _report_refused(out: str, refused: dict[str, str]) -> None:
        if refused:
            listing = "; ".join(f"{name!r}: {reason}" for name, reason in refused.items())
            warn(
                f"{MANIFEST} in {out} names folders this saver did not create ({listing}). They are left untouched "
                "and dropped from the manifest: only best-step… folders directly inside the directory, holding the "
                f"saver's {INFO_FILE}, are ever loaded or deleted."
            )

    @staticmethod
    def _set_aside_malformed(out: str, problem: str, fresh: bool) -> None:
        """A manifest that cannot be used is kept for the user under another name, never deleted."""
        path = os.path.join(out, MANIFEST)
        aside = os.path.join(out, f"best_checkpoints.malformed-{int(time.time())}.json")
        try:
            os.replace(path, aside)
            where = f"it was moved to {os.path.basename(aside)}"
        except OSError as exc:
            where = f"it could not be moved aside ({exc}) and will be overwritten"
        then = "This run starts a new ranking" if fresh else "The ranking comes from the Trainer checkpoint (if any)"
        warn(f"{MANIFEST} in {out} is malformed ({problem}); {where}. {then}; no checkpoint folder was deleted.")

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
        out = self._dir(ctx.args)
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
                result = self._write_checkpoint(ctx, out, step, value, weights)
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
            _print(f"[ft_callbacks] {message}")

    def _write_checkpoint(
        self, ctx: EvaluationContext, out: str, step: int, value: float, weights: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        start = time.monotonic()
        model = ctx.model
        if model is None:
            raise RuntimeError("the Trainer passed no model to the callback")
        name = checkpoint_name(step, self.monitor, value)
        final = os.path.join(out, name)
        suffix = 1
        while os.path.exists(final):  # left by an earlier run into the same output_dir: never overwritten
            suffix += 1
            final = os.path.join(out, f"{name}-{suffix}")
        name = os.path.basename(final)
        tmp = os.path.join(out, f"{TMP_PREFIX}{step}-{os.getpid()}")
        _remove_tree(tmp)
        try:
            # PEFT models write their adapter only; `weights` are the gathered ones of a sharded model.
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
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            info = {"step": step, "metric": self.monitor, "value": value, "mode": self.mode, "time": now}
            with open(os.path.join(tmp, INFO_FILE), "w") as f:
                json.dump(info, f, indent=2)
            size = _fsync_tree(tmp)
            self._write_manifest(out, pending=[name])  # whatever happens next, `name` is known to be ours
            os.replace(tmp, final)  # the checkpoint appears complete, or not at all
            fsync_path(out, directory=True)
        except Exception:  # a kill or KeyboardInterrupt leaves the folder aside; the next start removes it
            _remove_tree(tmp)
            raise
        seconds = time.monotonic() - start
        before = self.ranking.state_dict()
        decision = self.ranking.add(step, value, path=name, time=now, seconds=round(seconds, 4), bytes=size)
        pruned = [e.path for e in decision.pruned]
        try:
            self._write_manifest(out, pruning=pruned)  # the manifest lists the new best before anything is deleted
        except Exception:  # disk full: the manifest on disk is the previous one; the new folder is not listed
            self.ranking.load_state_dict(before)
            _remove_tree(final)  # it is under "pending" there, should this fail too
            raise
        for path in pruned:
            reason = _not_ours(out, path)  # checked again: the folder may have been replaced since it was listed
            if reason is None:
                _remove_tree(os.path.join(out, path))
            elif reason != _MISSING:
                self._report_refused(out, {path: reason})
        if pruned:
            try:
                self._write_manifest(out)
            except OSError:  # the manifest written above is valid; its "pruning" list is finished at the next start
                pass
        return {
            "step": step,
            "path": name,
            "seconds": round(time.monotonic() - start, 4),
            "bytes": size,
            "pruned": pruned,
            "ranking": self.ranking.state_dict(),
        }

    def _write_manifest(self, out: str, pruning: list[str] | None = None, pending: list[str] | None = None) -> None:
        best = self.ranking.best
        payload = {
            "version": MANIFEST_VERSION,
            "monitor": self.monitor,
            "mode": self.mode,
            "min_delta": self.min_delta,
            "keep": self.keep,
            "best": best.path if best else None,
            "best_step": self.ranking.best_step,
            "best_value": self.ranking.best_value,
            "checkpoints": [
                {
                    "path": e.path,
                    "step": e.step,
                    "metric": self.monitor,
                    "value": e.value,
                    "time": e.time,
                    "seconds": e.seconds,
                    "bytes": e.bytes,
                    "best": e is best,
                }
                for e in self.ranking.entries
            ],
            "pruning": list(pruning or []),
            "pending": list(pending or []),
        }
        write_json_atomic(os.path.join(out, MANIFEST), payload)

    # -- end of training -----------------------------------------------------------------------
    def on_train_end(self, args, state, control, **kwargs):
        super().on_train_end(args, state, control, **kwargs)
        self._training = False
        trainer, self._trainer = self._trainer, None  # no reference cycle kept past training
        try:
            self._finish(args, state, kwargs.get("model"), trainer)
        finally:
            self._release_lock()

    def _finish(self, args: Any, state: Any, model: Any, trainer: Any) -> None:
        out = self._dir(args)
        best = self.ranking.best
        if best is None:
            if state.is_world_process_zero:
                report_event(args, state, message=self._nothing_saved_message(out))
            return
        folder = os.path.join(out, best.path)
        # Rank 0 looks (its disk is the one written); every rank follows, so collective loads stay in step.
        refused = broadcast_from_main(_not_ours(out, best.path) if state.is_world_process_zero else None)
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
        run = SINK.run(getattr(args, "run_name", None))
        if run is None:
            return
        try:
            import wandb

            name = self.artifact_name or f"{run.id}-best"
            artifact = wandb.Artifact(
                re.sub(r"[^A-Za-z0-9_.-]", "-", name),
                type="model",
                metadata={"step": best.step, "metric": self.monitor, "value": best.value, "mode": self.mode},
            )
            artifact.add_dir(folder)
            run.log_artifact(artifact, aliases=["best", f"step-{best.step}"])
            self._uploaded = folder
        except Exception as exc:
            notice_once("best_artifact", f"could not log the best checkpoint to wandb ({type(exc).__name__}: {exc}).")
