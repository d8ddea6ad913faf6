"""Shared plumbing of our callbacks: order-independent evaluation and early validation.

The Trainer calls `on_evaluate` on each callback in list order, all sharing one `metrics` dict, so
a callback that reads a metric another one adds sees it only if it comes later in the list. Ours
must work in any order, so they do not act in their own `on_evaluate`: the first of them to be
called runs, for every ft_callbacks callback of this Trainer, first all `compute()` (producers add
metrics), then all `decide()` (stopping, saving), then one flush through the reporting path. The
others find the evaluation already handled.

Callbacks find each other through a small registry attached to the `TrainerState` (one per run):
every event registers the callback it reaches, and the eval loop's `on_prediction_step` reaches
all of them before the `on_evaluate` that follows.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ._compat import eval_strategy
from .core.errors import ConfigurationError
from .core.modes import infer_mode, normalize_metric_name
from .publish import (
    OURS_PREFIX,
    EvaluationContext,
    _print,
    begin_run,
    final_dashboard,
    flush_evaluation,
    notice_once,
)
from .records import read_json, write_record

__all__ = ["ConfigurationError", "FtCallback", "missing_monitor_error", "monitor_skipped"]

_HUB_ATTR = "_ft_callbacks_hub"
STATE_DIR = "ft_callbacks"  # output_dir/ft_callbacks/: every callback's run record
# The one argument our `state()` gives the Trainer to rebuild a callback with (see `FtCallback.__new__`).
RESTORE_IN_PLACE = "ft_callbacks_restore_in_place"

def producer_of(name: str) -> tuple[str, bool] | None:
    """(how to add the callback that produces the metric, whether only it can) for a metric name without
    prefix, from what each FtCallback class declares (`exclusive_metrics`, `shared_metrics`). A score's
    `<name>_delta` against its baseline is always ours."""
    base = name.removeprefix(OURS_PREFIX)
    stem = base.removesuffix("_delta")
    for cls in _all_subclasses(FtCallback):
        hint = cls.add_hint or f"{cls.__name__}()"
        if base in cls.exclusive_metrics:
            return hint, True
        if stem in (*cls.exclusive_metrics, *cls.shared_metrics) and cls.deltas:
            return hint, base != stem or stem in cls.exclusive_metrics
        if base in cls.shared_metrics:
            return hint, False
    return None


def _all_subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_all_subclasses(sub)]
    return found


def missing_monitor_error(owner: str, monitor: str, ctx: EvaluationContext) -> ConfigurationError:
    """The error for a monitored metric an evaluation did not produce, listing what it did produce."""
    available = sorted(k for k in ctx.metrics if k.startswith(f"{ctx.prefix}_"))
    if monitor == f"{ctx.prefix}_loss":
        # No eval_loss at all: the Trainer computes it only from labels, whatever compute_metrics does.
        return ConfigurationError(
            f"{owner} monitors {monitor!r}, but the evaluation at step {ctx.step} has no loss: its batches carry "
            f"no labels, so the Trainer computes none (it produced only {available}). Give the eval dataset a "
            "'labels' column (a data collator such as DataCollatorForLanguageModeling adds it for causal LMs), or "
            "set TrainingArguments(label_names=[...]) to the model's label keys."
        )
    return ConfigurationError(
        f"{owner} monitors {monitor!r}, but the evaluation at step {ctx.step} produced only "
        f"{available}. Pick one of those (or fix compute_metrics); pass eval_on_start=True to "
        "TrainingArguments to catch this before the first training step."
    )


def require_evaluations(args: Any, owner: str, what: str, alternative: str = "") -> None:
    """Refuse, before the first step, a run in which `owner` would never act (no evaluations)."""
    if eval_strategy(args) == "no":
        raise ConfigurationError(
            f"{owner} {what}, but eval_strategy='no'. Set TrainingArguments(eval_strategy='steps', eval_steps=N) "
            f"(or 'epoch') and pass an eval_dataset{alternative}."
        )


def monitor_skipped(owner: str, monitor: str, ctx: EvaluationContext) -> bool:
    """For a monitored metric missing from an evaluation: True (after a notice) when one of our
    callbacks produces it and only skipped this round (its generation or scoring failed, or it scores
    every n-th evaluation), so the caller leaves this evaluation out; otherwise the configuration is
    wrong and this raises."""
    if monitor in _Hub.of(ctx.state).produced_metrics(ctx.prefix):
        if ctx.is_main:
            _print(f"[ft_callbacks] step {ctx.step} | {owner}: {monitor} is missing this evaluation (its producer "
                   "skipped the round); this evaluation is not counted.")  # fmt: skip
        return True
    raise missing_monitor_error(owner, monitor, ctx)


def check_monitor_source(owner: str, monitor: str, hub: _Hub, is_main: bool) -> None:
    """Before the first step: a monitored metric that no evaluation will produce fails now, naming the
    callback that would add it; one that may come from the user's compute_metrics gets a notice."""
    prefix = hub.prefix_of(monitor)
    if monitor in {f"{prefix}_loss"} | hub.produced_metrics(prefix) or monitor in hub.seen_metrics:
        return
    name = monitor.removeprefix(f"{prefix}_")
    producer = producer_of(name)
    has_compute_metrics = hub.compute_metrics_set()
    nothing_else = has_compute_metrics is False and hub.trainer_is_plain()  # no compute_metrics, no subclass
    if producer is not None and producer[1]:
        raise ConfigurationError(
            f"{owner} monitors {monitor!r}, which {producer[0].split('(')[0]} adds at each evaluation, and none is "
            f"among the callbacks: add {producer[0]} to callbacks, or monitor a metric the evaluation has "
            "(e.g. 'eval_loss'). If your own compute_metrics returns it, set TrainingArguments(eval_on_start=True) "
            "so it is checked at step 0 instead."
        )
    if nothing_else:
        also = f", or add {producer[0]} to callbacks" if producer is not None else ""
        raise ConfigurationError(
            f"{owner} monitors {monitor!r}, but the Trainer has no compute_metrics and none of the callbacks "
            f"adds it, so no evaluation will produce it. Monitor 'eval_loss', give the Trainer a compute_metrics "
            f"returning {name!r}{also}."
        )
    if is_main:
        # Could come from the user's compute_metrics (or a Trainer subclass), which only an evaluation reveals.
        notice_once(
            f"monitor:{owner}:{monitor}",
            f"{owner} monitors {monitor!r}, which none of the ft_callbacks callbacks produce; it must come from "
            "compute_metrics. It is checked at the first evaluation (eval_on_start=True checks it before the first "
            "training step).",
        )


class _Hub:
    """The ft_callbacks callbacks of one Trainer run, and what they need to know of each other."""

    def __init__(self) -> None:
        self.members: list[FtCallback] = []
        self._handled: Any = None  # the metrics dict of the evaluation already handled
        self._ended: set[int] = set()
        self.training = False
        self.seen_metrics: set[str] = set()  # every key any evaluation of this run had
        self._trainer: Any = None  # weak reference to the Trainer, found from a callback event

    @staticmethod
    def of(state: Any) -> _Hub:
        hub = getattr(state, _HUB_ATTR, None)
        if hub is None:
            hub = _Hub()
            # A plain attribute, not a dataclass field: TrainerState.save_to_json never sees it.
            object.__setattr__(state, _HUB_ATTR, hub)
        return hub

    # -- the Trainer ---------------------------------------------------------------------------
    def attach_trainer(self, callback: FtCallback) -> None:
        if self.trainer is None:
            from .engines import find_trainer

            trainer = find_trainer(callback)
            self._trainer = weakref.ref(trainer) if trainer is not None else None

    @property
    def trainer(self) -> Any:
        return self._trainer() if self._trainer is not None else None

    def compute_metrics_set(self) -> bool | None:
        """Whether the Trainer has a compute_metrics (None: no Trainer found, unknown)."""
        trainer = self.trainer
        return None if trainer is None else getattr(trainer, "compute_metrics", None) is not None

    def trainer_is_plain(self) -> bool:
        """A plain `transformers.Trainer`/`Seq2SeqTrainer`: no subclass that could add eval metrics of its own."""
        from transformers import Seq2SeqTrainer, Trainer

        return type(self.trainer) in (Trainer, Seq2SeqTrainer)

    def eval_dataset_names(self) -> list[str] | None:
        """The names of a dict `eval_dataset` (the Trainer evaluates each as `eval_<name>_*`), else None."""
        dataset = getattr(self.trainer, "eval_dataset", None)
        return [str(name) for name in dataset] if isinstance(dataset, dict) else None

    def prefix_of(self, monitor: str) -> str:
        for name in self.eval_dataset_names() or ():
            if monitor.startswith(f"eval_{name}_"):
                return f"eval_{name}"
        return "eval"

    def resolve_monitor(self, owner: str, monitor: str, dataset_name: str | None, is_main: bool) -> str:
        """`monitor` as the evaluation names it: with a dict eval_dataset, the metric of the dataset the
        user names (`eval_dataset_name=`), by default the first one (said once)."""
        names = self.eval_dataset_names()
        if names is None:
            if dataset_name is not None:
                raise ConfigurationError(
                    f"{owner}(eval_dataset_name={dataset_name!r}) needs a dict eval_dataset "
                    "(Trainer(eval_dataset={'name': dataset, ...})); this Trainer has a single one: drop the option."
                )
            return monitor
        if dataset_name is not None and dataset_name not in names:
            raise ConfigurationError(
                f"{owner}(eval_dataset_name={dataset_name!r}) names no eval dataset; the Trainer's are {names}."
            )
        named = next((n for n in names if monitor.startswith(f"eval_{n}_")), None)
        if named is not None:
            if dataset_name is not None and named != dataset_name:
                raise ConfigurationError(
                    f"{owner} monitors {monitor!r} (eval dataset {named!r}) but eval_dataset_name={dataset_name!r}: "
                    "make them agree."
                )
            return monitor
        chosen = dataset_name or names[0]
        resolved = f"eval_{chosen}_{monitor.removeprefix('eval_')}"
        if dataset_name is None and is_main:
            notice_once(
                f"eval_dataset:{owner}:{monitor}",
                f"eval_dataset has {len(names)} datasets ({', '.join(names)}): {owner} decides on {resolved!r} "
                f"(the first dataset). Pass {owner}(eval_dataset_name=...) to choose another.",
            )
        return resolved

    # -- once per run --------------------------------------------------------------------------
    def check_training_arguments(self, args: Any) -> None:
        """Interplay with TrainingArguments that no single callback owns, once per training run."""
        metric = getattr(args, "metric_for_best_model", None)
        if not metric:
            return
        key = normalize_metric_name(metric)
        ours = key in self.produced_metrics("eval")
        if ours and infer_mode(key) == "min" and getattr(args, "greater_is_better", None):
            raise ConfigurationError(
                f"metric_for_best_model={metric!r} is lower-is-better, but greater_is_better=True (the Trainer's "
                "default for names that do not end in 'loss'), so the Trainer would keep the worst checkpoint. Set "
                "TrainingArguments(greater_is_better=False)."
            )

    def train_began(self, callback: FtCallback, args: Any) -> None:
        begin_run(args, new_run=not self.training)  # one-time notices: once per training run
        self.training = True
        self.attach_trainer(callback)

    def train_ended(self, callback: FtCallback, args: Any, state: Any) -> None:
        """Called by each member at train end; once all have finished, the run's overview goes out."""
        self._ended.add(id(callback))
        if all(id(m) in self._ended for m in self.members):
            self._ended = set()
            self.training = False
            final_dashboard(args, state)

    def register(self, callback: FtCallback) -> None:
        if not any(member is callback for member in self.members):
            self.members.append(callback)

    def produced_metrics(self, prefix: str = "eval") -> set[str]:
        names: set[str] = set()
        for member in self.members:
            names.update(f"{prefix}_{name}" for name in member.produces())
            names.update(f"{prefix}_{OURS_PREFIX}{name}" for name in member.produces())
        return names

    def run_evaluation(self, args: Any, state: Any, control: Any, metrics: dict[str, Any], kwargs: dict) -> None:
        if metrics is None or metrics is self._handled:
            return
        self._handled = metrics
        if not self.training:
            begin_run(args, new_run=False)  # a standalone evaluate(): follow this run's report_to too
        ctx = EvaluationContext(
            args=args,
            state=state,
            control=control,
            metrics=metrics,
            model=kwargs.get("model"),
            processing_class=kwargs.get("processing_class") or kwargs.get("tokenizer"),
            train_dataloader=kwargs.get("train_dataloader"),
            eval_dataloader=kwargs.get("eval_dataloader"),
            training=self.training,
        )
        members = list(self.members)
        for member in members:
            ctx.source = member.console_label
            member.compute(ctx)
        ctx.source = ""
        self.seen_metrics.update(metrics)
        for member in members:
            monitor = getattr(member, "monitor", None)
            if isinstance(monitor, str) and monitor in ctx.renamed and ctx.is_main:
                notice_once(
                    f"follows:{id(member)}:{monitor}",
                    f"{type(member).__name__} monitors {monitor!r}: it follows the value from compute_metrics; "
                    f"monitor {ctx.renamed[monitor]!r} to follow ft_callbacks' own.",
                )
        for member in members:
            member.decide(ctx)
        flush_evaluation(ctx, self.produced_metrics(ctx.prefix))


class _RestoredInPlace(TrainerCallback):
    """What the Trainer gets when it rebuilds one of our callbacks from a checkpoint
    (`restore_callback_states_from_checkpoint=True`): an inert stand-in. The Trainer then fails to
    remove the user's own instance (it removes by the stand-in's class) and that instance, the one the
    user holds, restores its state itself from the checkpoint, as it does with the flag off. So the
    callback keeps everything its constructor got (prompts, datasets, callables) and the user's handle
    stays the live object."""

    restores: str = ""


_stand_ins: dict[str, type] = {}


class FtCallback(TrainerCallback, ExportableState):
    """Base of every ft_callbacks callback: the lifecycle, the evaluation protocol and the state.

    A subclass implements only what it needs (docs/writing_a_callback.md shows a whole one):

    - `setup(args, state, model)`: at the start of `train()` (resumed or not), after `load_state_dict`;
    - `validate(args, state, hub)`: checks run once, after every callback's setup and before the first
      training step (raise `ConfigurationError` naming the fix);
    - `produces()`: metric names (without prefix) this callback adds at an evaluation;
    - `compute(ctx)`: add results with `ctx.add(name, value)`; every callback of ours computes before
      any decides, whatever the list order;
    - `decide(ctx)`: act on the complete metrics (`ctx.control.should_training_stop = True`, a save;
      say so with `ctx.console.append(...)` and `ctx.add_summary(...)`);
    - `teardown(args, state, model)`: at the end of `train()`; forward hooks added with
      `add_forward_hook` are removed right after it;
    - `state_dict()` / `load_state_dict(state)`: plain JSON values; the base writes them into every
      Trainer checkpoint and restores them on resume, in place, with either value of
      `restore_callback_states_from_checkpoint`.

    Subclasses that override a Trainer event handler (`on_train_begin`, ...) call `super()`."""

    console_label = ""  # the name of this callback's line in an evaluation's console block
    # What it adds at evaluations (names without prefix), so a monitor on a name only an absent callback
    # produces fails before step 1 naming `add_hint`: names nobody else makes, and names a user's
    # compute_metrics may return too (`accuracy`, `rougeL`); `deltas`: each also as `<name>_delta`.
    exclusive_metrics: tuple[str, ...] = ()
    shared_metrics: tuple[str, ...] = ()
    deltas = False
    add_hint = ""  # how to add it, e.g. "GenerationScorer(prompts=..., references=...)"; default "Name()"

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get(RESTORE_IN_PLACE):
            # One stand-in class per callback class: the Trainer warns when two of one class are added.
            stand_in = _stand_ins.get(cls.__name__)
            if stand_in is None:
                stand_in = type(f"{cls.__name__}RestoredInPlace", (_RestoredInPlace,), {"restores": cls.__name__})
                _stand_ins[cls.__name__] = stand_in
            return stand_in()
        return super().__new__(cls)

    def produces(self) -> set[str]:
        return set()

    def compute(self, ctx: EvaluationContext) -> None:
        pass

    def decide(self, ctx: EvaluationContext) -> None:
        pass

    def validate(self, args: Any, state: Any, hub: _Hub) -> None:
        pass

    def setup(self, args: Any, state: Any, model: Any) -> None:
        """At the start of `train()`, after this callback's state was restored on a resume."""

    def teardown(self, args: Any, state: Any, model: Any) -> None:
        """At the end of `train()` (an early stop included), before its forward hooks are removed."""

    # -- the run record: output_dir/ft_callbacks/<name>.json, rewritten atomically as the run goes ------
    record_name = ""  # e.g. "overfit_guard": a callback with a record sets it

    def record_path(self, args: Any) -> str:
        return os.path.join(args.output_dir, STATE_DIR, f"{self.record_name}.json")

    def write_record(self, args: Any, payload: dict[str, Any]) -> None:
        """Write this callback's record (a reader sees the old one or the new one, never a torn one); a
        failure is said once and training goes on."""
        path = self.record_path(args)
        try:
            write_record(path, payload)
        except OSError as exc:
            notice_once(f"record:{self.record_name}", f"could not write {path} ({exc}); training continues.")

    def read_record(self, args: Any) -> dict[str, Any] | None:
        """This callback's record in `args.output_dir`, or None (missing or unreadable)."""
        record = read_json(self.record_path(args))
        return record if isinstance(record, dict) else None

    def add_forward_hook(self, module: Any, hook: Any, **kwargs: Any) -> Any:
        """`module.register_forward_hook(hook, **kwargs)`, removed at the end of `train()`."""
        handle = module.register_forward_hook(hook, **kwargs)
        self.__dict__.setdefault("_forward_hooks", []).append(handle)
        return handle

    def _hub(self, state: Any) -> _Hub:
        hub = _Hub.of(state)
        hub.register(self)
        return hub

    # -- state kept in the Trainer's checkpoints ---------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What this callback needs to resume (plain JSON values); subclasses with state override it."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict()` returned."""

    def state(self) -> dict[str, Any]:
        """ExportableState, written into every checkpoint's trainer_state.json. The Trainer rebuilds a
        callback from `args` (with `restore_callback_states_from_checkpoint=True`); ours asks for an
        in-place restore instead (see `_RestoredInPlace`)."""
        settings = self._simple_settings()
        return {"args": {RESTORE_IN_PLACE: True}, "attributes": {"settings": settings, "state": self.state_dict()}}

    def _simple_settings(self) -> dict[str, Any]:
        """The constructor arguments that are plain values: enough to tell two callbacks of one class apart."""
        simple = (str, int, float, bool, type(None))
        return {k: v for k, v in getattr(self, "_init_args", {}).items() if isinstance(v, simple)}

    def saved_state(self, state: Any) -> dict[str, Any] | None:
        """This callback's entry in the checkpoint being resumed (`state.stateful_callbacks`), or None.
        With several callbacks of one class, the one with the same simple settings (else by position)."""
        entry = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(entry, list):
            mine = self._simple_settings()
            same = [e for e in entry if isinstance(e, dict) and e.get("attributes", {}).get("settings") == mine]
            peers = [m for m in _Hub.of(state).members if type(m) is type(self)]
            position = next((i for i, m in enumerate(peers) if m is self), 0)
            entry = same[0] if same else (entry[position] if position < len(entry) else None)
        if not isinstance(entry, dict):
            return None
        attributes = entry.get("attributes") or {}
        if "state" in attributes:
            return attributes["state"]
        # Checkpoints of earlier versions.
        return attributes.get("_restored_state") or attributes.get("_restored")

    # -- events ----------------------------------------------------------------------------------
    def on_init_end(self, args, state, control, **kwargs):
        self._hub(state)

    def on_train_begin(self, args, state, control, **kwargs):
        self._hub(state).train_began(self, args)
        self._validated = False
        if state.global_step > 0:
            saved = self.saved_state(state)
            if saved is not None:
                self.load_state_dict(saved)
        self.setup(args, state, kwargs.get("model"))

    def on_step_begin(self, args, state, control, **kwargs):
        if not getattr(self, "_validated", True):
            self._validated = True
            hub = self._hub(state)
            hub.check_training_arguments(args)
            self.validate(args, state, hub)

    def on_prediction_step(self, args, state, control, **kwargs):
        self._hub(state)

    def on_train_end(self, args, state, control, **kwargs):
        try:
            self.teardown(args, state, kwargs.get("model"))
        finally:
            for handle in self.__dict__.pop("_forward_hooks", []):
                handle.remove()
        self._hub(state).train_ended(self, args, state)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._hub(state).run_evaluation(args, state, control, metrics, kwargs)
