"""MetricThreshold: stop (or warn) when an evaluation metric leaves the range a user allows."""

from __future__ import annotations

from typing import Any, Literal

from .base import ConfigurationError, FtCallback, _Hub, check_monitor_source, monitor_skipped, require_evaluations
from .core.thresholds import ACTIONS, ThresholdRule
from .distributed import broadcast_from_main
from .publish import EvaluationContext


class MetricThreshold(FtCallback):
    """Stop training (or warn) when an evaluation metric crosses a bound for `patience` evaluations in a row.

    Any metric an evaluation reports works: ours (`eval_json_valid_rate`, `eval_toxicity_rate`,
    `eval_perplexity`), the Trainer's (`eval_loss`) or the user's `compute_metrics`. A metric no
    evaluation will produce fails before the first training step, naming the callback that would add it.
    A stop is told like every stop of ours: `STOP: threshold rule` and the reason in the evaluation's
    console block, `early_stop_step` / `early_stop_rule` / `early_stop_reason` in the wandb summary and
    `log_history`, and a `wandb.alert`; a warning goes to the console block and a `wandb.alert`. NaN or
    inf counts as a breach; an evaluation without the metric (its producer skipped the round) is not
    counted. Several thresholds: add one MetricThreshold per metric.

    Args:
        metric: the metric as the evaluation names it ("eval_json_valid_rate"; without the prefix,
            "eval_" is added).
        above: act when the value rises above this.
        below: act when the value falls below this.
        patience: evaluations in a row outside the range before acting.
        action: "stop" (end training after this evaluation) or "warn" (say so and go on).
        eval_dataset_name: with a dict `eval_dataset`, the dataset whose evaluation is watched (default the first).

    Raises:
        ConfigurationError: no bound, a bound that is no finite number, above < below, a bad patience or
            action (here); no evaluations, or a metric nothing produces (before step 1).

    Example:
        >>> Trainer(..., callbacks=[GenerationScorer(prompts, references, metrics=("json_valid",)),
        ...                         MetricThreshold("eval_json_valid_rate", below=0.9, patience=2)])
    """

    console_label = "threshold"

    def __init__(
        self,
        metric: str,
        above: float | None = None,
        below: float | None = None,
        patience: int = 1,
        action: Literal["stop", "warn"] = "stop",
        eval_dataset_name: str | None = None,
    ) -> None:
        self._init_args = {
            "metric": metric, "above": above, "below": below, "patience": patience, "action": action,
            "eval_dataset_name": eval_dataset_name,
        }  # fmt: skip
        if action not in ACTIONS:
            raise ConfigurationError(f"action={action!r} is not valid: use 'stop' or 'warn'.")
        if eval_dataset_name is not None and not isinstance(eval_dataset_name, str):
            raise ConfigurationError(
                f"eval_dataset_name={eval_dataset_name!r} is not valid: name a key of the dict eval_dataset."
            )
        self.rule = self._new_rule()
        self.action = action
        self.eval_dataset_name = eval_dataset_name
        self.monitor = self.rule.metric
        self._decision_prefix = "eval"
        self._monitor_checked = False
        self._training = False
        self.stop_step: int | None = None
        self.stop_reason = ""
        self.warnings: list[dict[str, Any]] = []

    def _new_rule(self) -> ThresholdRule:
        a = self._init_args
        return ThresholdRule(a["metric"], above=a["above"], below=a["below"], patience=a["patience"])

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule.state_dict(), "stop_step": self.stop_step, "stop_reason": self.stop_reason,
            "warnings": list(self.warnings),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rule = self._new_rule()
        self.rule.load_state_dict(state.get("rule") or {})
        self.stop_step = state.get("stop_step")
        self.stop_reason = state.get("stop_reason", "")
        self.warnings = list(state.get("warnings") or [])

    @property
    def stopped(self) -> bool:
        return self.stop_step is not None

    # -- lifecycle -------------------------------------------------------------------------------
    def setup(self, args: Any, state: Any, model: Any) -> None:
        if state.global_step == 0:
            self.load_state_dict({})
        require_evaluations(args, "MetricThreshold", f"watches {self.rule.metric!r} at evaluations")
        hub = self._hub(state)
        self.monitor = hub.resolve_monitor(
            "MetricThreshold", self.rule.metric, self.eval_dataset_name, state.is_world_process_zero
        )
        self._decision_prefix = hub.prefix_of(self.monitor)
        self._monitor_checked = False
        self._training = True

    def teardown(self, args: Any, state: Any, model: Any) -> None:
        self._training = False

    def validate(self, args: Any, state: Any, hub: _Hub) -> None:
        check_monitor_source("MetricThreshold", self.monitor, hub, state.is_world_process_zero)

    def decide(self, ctx: EvaluationContext) -> None:
        if not self._training or ctx.prefix != self._decision_prefix:
            return
        value = ctx.metrics.get(self.monitor)
        if value is None and not self._monitor_checked:
            monitor_skipped("MetricThreshold", self.monitor, ctx)  # raises unless one of ours skipped a round
        elif value is not None:
            self._monitor_checked = True
        decision = self.rule.on_value(ctx.step, value)
        # Every rank saw the same reduced metrics; rank 0's decision is made everyone's anyway.
        decision = broadcast_from_main(decision)
        if not decision:
            if self.rule.wait:
                ctx.console.append(f"{self.monitor} out of range {self.rule.wait}/{self.rule.patience}")
            return
        if self.action == "warn":
            self.warnings.append({"step": ctx.step, "reason": decision.reason})
            ctx.warn("MetricThreshold", f"step {ctx.step}: {decision.reason}")
            ctx.add_summary("threshold_warning", decision.reason)
            return
        self.stop_step, self.stop_reason = ctx.step, decision.reason
        ctx.stop(
            "MetricThreshold",
            decision.rule,
            decision.reason,
            summary={
                "early_stop_step": ctx.step,
                "early_stop_rule": decision.rule,
                "early_stop_reason": decision.reason,
            },
        )


__all__ = ["MetricThreshold"]
