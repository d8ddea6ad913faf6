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

from typing import Any

from transformers import TrainerCallback

from ._compat import eval_strategy
from .core.errors import ConfigurationError
from .core.modes import infer_mode, normalize_metric_name
from .reporting import EvaluationContext, _print, final_dashboard, flush_evaluation

__all__ = ["ConfigurationError", "FtCallback", "missing_monitor_error", "monitor_skipped"]

_HUB_ATTR = "_ft_callbacks_hub"


def missing_monitor_error(owner: str, monitor: str, ctx: EvaluationContext) -> ConfigurationError:
    """The error for a monitored metric an evaluation did not produce, listing what it did produce."""
    available = sorted(k for k in ctx.metrics if k.startswith(f"{ctx.prefix}_"))
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
    callbacks produces it and only skipped this round (its generation or scoring failed), so the
    caller treats it as "no improvement this time"; otherwise the configuration is wrong and this raises."""
    if monitor in _Hub.of(ctx.state).produced_metrics(ctx.prefix):
        if ctx.is_main:
            _print(f"[ft_callbacks] step {ctx.step} | {owner}: {monitor} is missing this evaluation (its producer "
                   "skipped the round); it counts as no improvement this time.")  # fmt: skip
        return True
    raise missing_monitor_error(owner, monitor, ctx)


class _Hub:
    def __init__(self) -> None:
        self.members: list[FtCallback] = []
        self._handled: Any = None  # the metrics dict of the evaluation already handled

    @staticmethod
    def of(state: Any) -> _Hub:
        hub = getattr(state, _HUB_ATTR, None)
        if hub is None:
            hub = _Hub()
            # A plain attribute, not a dataclass field: TrainerState.save_to_json never sees it.
            object.__setattr__(state, _HUB_ATTR, hub)
        return hub

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

    def train_ended(self, callback: FtCallback, args: Any, state: Any) -> None:
        """Called by each member at train end; once all have finished, the run's overview goes out."""
        self._ended = getattr(self, "_ended", set()) | {id(callback)}
        if all(id(m) in self._ended for m in self.members):
            self._ended = set()
            final_dashboard(args, state)

    def register(self, callback: FtCallback) -> None:
        if not any(member is callback for member in self.members):
            self.members.append(callback)

    def produced_metrics(self, prefix: str = "eval") -> set[str]:
        names: set[str] = set()
        for member in self.members:
            names.update(f"{prefix}_{name}" for name in member.produces())
        return names

    def run_evaluation(self, args: Any, state: Any, control: Any, metrics: dict[str, Any], kwargs: dict) -> None:
        if metrics is None or metrics is self._handled:
            return
        self._handled = metrics
        ctx = EvaluationContext(
            args=args,
            state=state,
            control=control,
            metrics=metrics,
            model=kwargs.get("model"),
            processing_class=kwargs.get("processing_class") or kwargs.get("tokenizer"),
            train_dataloader=kwargs.get("train_dataloader"),
            eval_dataloader=kwargs.get("eval_dataloader"),
        )
        members = list(self.members)
        for member in members:
            member.compute(ctx)
        for member in members:
            member.decide(ctx)
        flush_evaluation(ctx)


class FtCallback(TrainerCallback):
    """Base of every ft_callbacks callback. Subclasses implement:

    - `produces()`: metric names (without prefix) this callback adds at an evaluation;
    - `compute(ctx)`: add results with `ctx.add(name, value)`;
    - `decide(ctx)`: act on the complete metrics (stop, save);
    - `validate(args, state, hub)`: checks run once, after every callback's `on_train_begin` and
      before the first training step.
    Subclasses that override an event handler call `super()` so the registry stays complete."""

    def produces(self) -> set[str]:
        return set()

    def compute(self, ctx: EvaluationContext) -> None:
        pass

    def decide(self, ctx: EvaluationContext) -> None:
        pass

    def validate(self, args: Any, state: Any, hub: _Hub) -> None:
        pass

    def _hub(self, state: Any) -> _Hub:
        hub = _Hub.of(state)
        hub.register(self)
        return hub

    def on_init_end(self, args, state, control, **kwargs):
        self._hub(state)

    def on_train_begin(self, args, state, control, **kwargs):
        self._hub(state)
        self._validated = False

    def on_step_begin(self, args, state, control, **kwargs):
        if not getattr(self, "_validated", True):
            self._validated = True
            hub = self._hub(state)
            hub.check_training_arguments(args)
            self.validate(args, state, hub)

    def on_prediction_step(self, args, state, control, **kwargs):
        self._hub(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._hub(state).train_ended(self, args, state)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self._hub(state).run_evaluation(args, state, control, metrics, kwargs)
