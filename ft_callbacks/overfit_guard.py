"""OverfitGuard: exact validation perplexity, the train/validation gap, and early stopping on it."""

from __future__ import annotations

import math
import os
from typing import Any, Literal

import numpy as np
import torch
from transformers.trainer_callback import ExportableState

from ._compat import processing_class
from .base import ConfigurationError, FtCallback, _Hub, monitor_skipped, require_evaluations
from .core.modes import check_mode, is_improvement, normalize_metric_name
from .core.perplexity import TokenLossTotals, safe_exp
from .core.stopping import OverfitPolicy, StopDecision
from .distributed import broadcast_from_main, gather_eval_rows
from .records import read_json, write_record
from .reporting import EvaluationContext, _print, notice_once, report_event
from .token_loss import TokenLossProbe, mean_or_nan

STATE_DIR = "ft_callbacks"

# What OverfitGuard adds to each evaluation's metrics (with the evaluation's prefix, e.g. eval_).
METRICS = (
    "token_loss",
    "perplexity",
    "bits_per_token",
    "bits_per_byte",
    "train_loss",
    "train_sample_loss",
    "loss_gap",
    "loss_ratio",
)


class OverfitGuard(FtCallback, ExportableState):
    """Watch validation loss and stop training when the model starts to memorise.

    Add it with one line: `Trainer(..., callbacks=[OverfitGuard()])`. At every evaluation it adds:

    - `eval_token_loss`: mean NLL per target token over the whole eval set (token-weighted, computed
      from logits in float32, summed across ranks; no logits are kept);
    - `eval_perplexity` = exp(eval_token_loss), `eval_bits_per_token`, `eval_bits_per_byte`
      (bits over UTF-8 bytes of the target text: comparable across tokenizers);
    - `eval_train_loss`: training NLL per token over the window since the previous evaluation, from
      the raw per-step losses (train mode, weights moving); with `train_sample_size > 0` also
      `eval_train_sample_loss`, measured like the validation loss on a fixed sample of training data;
    - `eval_loss_gap` = validation − training loss (the sample's loss when there is one), and
      `eval_loss_ratio` = validation / training loss.

    Stopping rules (each can be turned off; the first that fires stops training on every rank):

    - gap rule, `patience` (default 3; None = off): the gap widened (by more than `gap_min_delta`)
      for `patience` evaluations in a row while validation loss did not reach a new best by more
      than `min_delta`;
    - plateau rule, `plateau_patience` (default 5; None = off): `monitor` (any eval metric, default
      `eval_loss`; `mode` min/max inferred from the name) did not improve by more than `min_delta`
      for that many evaluations;
    - non-finite (`stop_on_nonfinite`, default on) and `divergence_threshold` (default None): stop at
      once when a raw training step loss or the validation loss is NaN/inf or above the threshold;
    - warm-up: gap and plateau rules never stop before `min_steps` steps and `min_evals` evaluations.

    Works without `load_best_model_at_end` and `metric_for_best_model`. Its state is saved in every
    checkpoint and restored on `resume_from_checkpoint` even with the Trainer's
    `restore_callback_states_from_checkpoint=False`. Resuming a run that already stopped early raises
    a clear error unless `resume_after_stop="continue"`.
    """

    def __init__(
        self,
        patience: int | None = 3,
        min_delta: float = 0.0,
        gap_min_delta: float = 0.0,
        plateau_patience: int | None = 5,
        monitor: str = "eval_loss",
        mode: Literal["min", "max"] | None = None,
        divergence_threshold: float | None = None,
        stop_on_nonfinite: bool = True,
        min_steps: int = 0,
        min_evals: int = 0,
        train_sample_size: int = 0,
        train_sample_seed: int = 0,
        count_bytes: bool = True,
        resume_after_stop: Literal["error", "continue"] = "error",
    ) -> None:
        self._init_args = {
            "patience": patience,
            "min_delta": min_delta,
            "gap_min_delta": gap_min_delta,
            "plateau_patience": plateau_patience,
            "monitor": monitor,
            "mode": mode,
            "divergence_threshold": divergence_threshold,
            "stop_on_nonfinite": stop_on_nonfinite,
            "min_steps": min_steps,
            "min_evals": min_evals,
            "train_sample_size": train_sample_size,
            "train_sample_seed": train_sample_seed,
            "count_bytes": count_bytes,
            "resume_after_stop": resume_after_stop,
        }
        if not isinstance(monitor, str):
            raise ConfigurationError(f"monitor={monitor!r} is not valid: name an eval metric such as 'eval_loss'.")
        self.monitor = normalize_metric_name(monitor)
        try:
            self.mode = check_mode(mode, self.monitor)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        if patience is None and plateau_patience is None and mode is not None:
            raise ConfigurationError(
                "mode is set but both the gap rule (patience=None) and the plateau rule "
                "(plateau_patience=None) are off, so nothing uses it: set a patience, or drop mode."
            )
        if isinstance(train_sample_size, bool) or not isinstance(train_sample_size, int) or train_sample_size < 0:
            raise ConfigurationError(
                f"train_sample_size={train_sample_size!r} is not valid: use 0 (off) or a number of training examples."
            )
        if resume_after_stop not in ("error", "continue"):
            raise ConfigurationError(
                f"resume_after_stop={resume_after_stop!r} is not valid: use 'error' or 'continue'."
            )
        self.train_sample_size = train_sample_size
        self.train_sample_seed = int(train_sample_seed)
        self.resume_after_stop = resume_after_stop
        try:
            self.policy = self._new_policy()
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        self.probe = TokenLossProbe(count_bytes=count_bytes)
        self.history: list[dict[str, Any]] = []
        self.best_step: int | None = None
        self.best_token_loss: float | None = None  # tracked whatever rules are on
        self._restored_state: dict[str, Any] | None = None
        self._training = False
        self._monitor_checked = False
        self._sample_indices: list[int] | None = None
        self._reset_window()

    # -- state ---------------------------------------------------------------------------------
    def _new_policy(self) -> OverfitPolicy:
        a = self._init_args
        return OverfitPolicy(
            patience=a["patience"],
            min_delta=a["min_delta"],
            gap_min_delta=a["gap_min_delta"],
            plateau_patience=a["plateau_patience"],
            monitor=self.monitor,
            mode=self.mode,
            divergence_threshold=a["divergence_threshold"],
            stop_on_nonfinite=a["stop_on_nonfinite"],
            min_steps=a["min_steps"],
            min_evals=a["min_evals"],
        )

    def _reset_window(self) -> None:
        self._window_nll = 0.0
        self._window_tokens = 0.0
        self._logged_loss_sum = 0.0  # fallback: the Trainer's logged losses, step-weighted
        self._logged_loss_steps = 0
        self._last_log_step: int | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "history": list(self.history),
            "best_step": self.best_step,
            "best_token_loss": self.best_token_loss,
            "window": [self._window_nll, self._window_tokens, self._logged_loss_sum, self._logged_loss_steps],
            "sample_indices": self._sample_indices,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy = self._new_policy()
        self.policy.load_state_dict(state.get("policy", {}))
        self.history = list(state.get("history", []))
        self.best_step = state.get("best_step")
        self.best_token_loss = state.get("best_token_loss")
        window = state.get("window") or [0.0, 0.0, 0.0, 0]
        self._window_nll, self._window_tokens, self._logged_loss_sum, self._logged_loss_steps = window
        self._sample_indices = state.get("sample_indices")

    def state(self) -> dict[str, Any]:
        """ExportableState: written into every checkpoint's trainer_state.json by the Trainer."""
        return {"args": dict(self._init_args), "attributes": {"_restored_state": self.state_dict()}}

    @property
    def stopped(self) -> bool:
        return self.policy.stopped

    @property
    def stop_reason(self) -> str:
        return self.policy.stop_reason

    @property
    def stop_rule(self) -> str:
        """"gap", "plateau", "non_finite" or "divergence" once stopped; "" before."""
        return self.policy.stop_rule

    # -- events --------------------------------------------------------------------------------
    def produces(self) -> set[str]:
        return set(METRICS)

    def on_init_end(self, args, state, control, **kwargs):
        super().on_init_end(args, state, control, **kwargs)
        self.probe.attach(kwargs.get("model"), processing_class(kwargs))

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        require_evaluations(args, "OverfitGuard", "needs evaluations during training")
        self.probe.attach(kwargs.get("model"), processing_class(kwargs))
        self.probe.reset_eval()
        self._training = True
        self._monitor_checked = False
        if state.global_step > 0:
            self._restore(args, state)
        else:
            self.load_state_dict({})
            self._reset_window()

    def _restore(self, args: Any, state: Any) -> None:
        saved = self._restored_state
        if saved is None:
            entry = (state.stateful_callbacks or {}).get(type(self).__name__)
            if isinstance(entry, list):  # several OverfitGuards: the first with our settings
                entry = next((e for e in entry if e.get("args") == self._init_args), entry[0] if entry else None)
            if isinstance(entry, dict):
                saved = entry.get("attributes", {}).get("_restored_state")
        self._restored_state = None
        if saved:
            self.load_state_dict(saved)
            notice_once(
                "restored",
                f"OverfitGuard resumed at step {state.global_step}: {self.policy.evaluations} evaluations, "
                f"gap count {self.policy.gap.wait if self.policy.gap else '-'}, "
                f"plateau count {self.policy.plateau.wait if self.policy.plateau else '-'}.",
            )
        record = self._read_record(args)
        stop_step = self.policy.stop_step
        if record and record.get("stop_step") is not None and record["stop_step"] >= state.global_step:
            stop_step = record["stop_step"]
            self.policy.stop_rule = record.get("stop_rule", "")
            self.policy.stop_reason = record.get("stop_reason", "")
        if stop_step is None:
            return
        if self.resume_after_stop == "error":
            raise ConfigurationError(
                f"This run was already stopped early by OverfitGuard at step {stop_step} "
                f"({self.policy.stop_rule} rule: {self.policy.stop_reason}). Resuming from step {state.global_step} "
                "would train past that stop. To train on anyway pass OverfitGuard(resume_after_stop='continue'); "
                "to start over, use a new output_dir."
            )
        notice_once(
            "resume_after_stop",
            f"resuming past an earlier early stop at step {stop_step} ({self.policy.stop_reason}) because "
            "resume_after_stop='continue': the stopping counters start again from zero.",
        )
        best = self.policy.gap.best_eval_loss if self.policy.gap else None
        self.policy = self._new_policy()
        if self.policy.gap is not None:
            self.policy.gap.best_eval_loss = best

    def validate(self, args: Any, state: Any, hub: _Hub) -> None:
        known = {"eval_loss"} | hub.produced_metrics("eval")
        if self.policy.plateau is not None and self.monitor not in known and state.is_world_process_zero:
            # Could come from the user's compute_metrics, which only an evaluation reveals.
            notice_once(
                f"monitor:{self.monitor}",
                f"OverfitGuard monitors {self.monitor!r}, which none of the ft_callbacks callbacks produce; "
                "it must come from compute_metrics. It is checked at the first evaluation.",
            )

    def on_step_end(self, args, state, control, **kwargs):
        nll, tokens = self.probe.read_step()
        if tokens > 0 or not math.isfinite(nll):
            self._window_nll += nll
            self._window_tokens += tokens
            step_loss = nll / tokens if tokens else nll
            decision = self.policy.on_step(state.global_step, step_loss) if self._training else None
            if decision:
                self._stop(args, state, control, decision)
        self.probe.reset_eval()  # whatever ran in eval mode since the last evaluation is not the eval set

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs and isinstance(logs["loss"], (int, float)):
            steps = state.global_step - (self._last_log_step or 0)
            self._logged_loss_sum += float(logs["loss"]) * max(steps, 1)
            self._logged_loss_steps += max(steps, 1)
            self._last_log_step = state.global_step

    def on_predict(self, args, state, control, metrics=None, **kwargs):
        self.probe.reset_eval()

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False
        self.probe.reset_eval()
        if state.is_world_process_zero:
            self._write_record(args, state)
            summary = self._summary()
            if summary:
                report_event(args, state, summary=summary, message=self._final_message(state))
        super().on_train_end(args, state, control, **kwargs)

    # -- evaluation ----------------------------------------------------------------------------
    def compute(self, ctx: EvaluationContext) -> None:
        totals = self._eval_totals(ctx)
        eval_loss = ctx.metrics.get(f"{ctx.prefix}_loss")
        if totals.tokens:
            token_loss = totals.mean_nll
            ctx.add("token_loss", token_loss)
            ctx.add("perplexity", totals.perplexity)
            ctx.add("bits_per_token", totals.bits_per_token)
            ctx.add("bits_per_byte", totals.bits_per_byte)
        elif eval_loss is not None:
            token_loss = float(eval_loss)
            reason = (
                "the model output has neither logits nor per-token log-probabilities"
                if self.probe.labels_without_scores
                else "no evaluation batch carried labels"
            )
            notice_once(
                "ppl_fallback",
                f"OverfitGuard cannot see per-token losses ({reason}); eval_perplexity is exp(eval_loss), which "
                "is batch-weighted and not the exact corpus perplexity.",
            )
            ctx.add("token_loss", token_loss)
            ctx.add("perplexity", safe_exp(token_loss))
            ctx.add("bits_per_token", token_loss / math.log(2))
        else:
            token_loss = None
        self._token_loss = token_loss
        if not self._training:
            return
        train_loss = self._window_loss()
        ctx.add("train_loss", train_loss)
        compare = train_loss
        if self.train_sample_size:
            sample_loss = self._train_sample_loss(ctx)
            ctx.add("train_sample_loss", sample_loss)
            compare = sample_loss
        self._compare_loss = compare
        if token_loss is not None and compare is not None and math.isfinite(compare):
            ctx.add("loss_gap", token_loss - compare)
            ctx.add("loss_ratio", token_loss / compare if compare else math.inf)
        self._reset_window()
        self._last_log_step = ctx.step

    def _eval_totals(self, ctx: EvaluationContext) -> TokenLossTotals:
        totals = TokenLossTotals()
        rows = gather_eval_rows(self.probe.take("eval"), ctx.eval_dataloader, width=3)
        if rows is None:
            # Sums over part of the eval set would be silently wrong: fall back for this evaluation.
            notice_once("ppl_hole", "OverfitGuard could not read some evaluation batch on some rank; that "
                        "evaluation's perplexity falls back to exp(eval_loss).")  # fmt: skip
            return totals
        if len(rows):
            totals.add(rows[:, 0].sum(), int(rows[:, 1].sum()), int(rows[:, 2].sum()))
        return totals

    def _window_loss(self) -> float | None:
        if self._window_tokens > 0 or not math.isfinite(self._window_nll):
            return mean_or_nan(self._window_nll, self._window_tokens)
        if self._logged_loss_steps:
            notice_once(
                "train_loss_fallback",
                "OverfitGuard cannot see the model's training loss (e.g. label smoothing or a custom "
                "compute_loss); the gap uses the Trainer's logged training loss instead.",
            )
            return self._logged_loss_sum / self._logged_loss_steps
        return None

    def _train_sample_loss(self, ctx: EvaluationContext) -> float | None:
        loader = ctx.train_dataloader
        model = ctx.model
        dataset = getattr(loader, "dataset", None)
        if dataset is None or model is None or not hasattr(dataset, "__len__"):
            notice_once("sample", "train_sample_size needs a sized train dataset; the gap uses the window loss.")
            return None
        if self._sample_indices is None:
            size = min(self.train_sample_size, len(dataset))
            rng = np.random.default_rng(self.train_sample_seed)
            self._sample_indices = sorted(int(i) for i in rng.choice(len(dataset), size=size, replace=False))
        collate = getattr(loader, "collate_fn", None) or (lambda rows: rows)
        batch_size = max(1, int(ctx.args.per_device_eval_batch_size))
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        self.probe.ledger = "sample"
        try:
            with torch.no_grad():
                for start in range(0, len(self._sample_indices), batch_size):
                    chunk = self._sample_indices[start : start + batch_size]
                    inputs = collate([dataset[i] for i in chunk])
                    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
                    model(**inputs)
        finally:
            self.probe.ledger = "eval"
            model.train(was_training)
        rows = [r for r in self.probe.take("sample") if r is not None]
        if not rows:
            return None
        stacked = np.concatenate(rows, axis=0)
        return mean_or_nan(float(stacked[:, 0].sum()), float(stacked[:, 1].sum()))

    def decide(self, ctx: EvaluationContext) -> None:
        if not self._training or not self.monitor.startswith(f"{ctx.prefix}_"):
            return
        monitored = ctx.metrics.get(self.monitor)
        if self.policy.plateau is not None and monitored is None and not self._monitor_checked:
            monitor_skipped("OverfitGuard", self.monitor, ctx)  # raises unless one of ours skipped a round
        else:
            self._monitor_checked = True
        token_loss = self._token_loss
        decision = self.policy.on_evaluation(ctx.step, token_loss, self._compare_loss, monitored)
        # Every rank computed the same reduced numbers; rank 0's decision is made everyone's anyway,
        # since ranks that disagree about stopping hang in the next collective.
        decision = broadcast_from_main(decision)
        if is_improvement(token_loss, self.best_token_loss, "min"):  # strictly better: the earlier step keeps ties
            self.best_token_loss, self.best_step = token_loss, ctx.step
        gap = ctx.metrics.get(f"{ctx.prefix}_loss_gap")
        self.history.append({"step": ctx.step, "token_loss": token_loss, "train_loss": self._compare_loss, "gap": gap})
        parts = []
        if self.policy.gap is not None:
            parts.append(f"gap widening {self.policy.gap.wait}/{self.policy.gap.patience}")
        if self.policy.plateau is not None:
            parts.append(f"plateau {self.policy.plateau.wait}/{self.policy.plateau.patience}")
        ctx.console.append(", ".join(parts))
        for name, value in self._summary().items():
            ctx.add_summary(name, value)
        if decision:
            self._stop(ctx.args, ctx.state, ctx.control, decision, ctx=ctx)
        elif ctx.is_main:
            self._write_record(ctx.args, ctx.state)

    # -- stopping and records --------------------------------------------------------------------
    def _stop(self, args: Any, state: Any, control: Any, decision: StopDecision, ctx: EvaluationContext | None = None):
        control.should_training_stop = True
        if self.policy.stop_step is None:  # decided by rank 0 on a rank that saw it differently
            self.policy.stop_step, self.policy.stop_rule = state.global_step, decision.rule
            self.policy.stop_reason = decision.reason
        message = f"OverfitGuard stops training at step {state.global_step} ({decision.rule} rule): {decision.reason}"
        summary = self._summary()
        if ctx is not None:
            for name, value in summary.items():
                ctx.add_summary(name, value)
            ctx.console.append(f"STOP: {decision.rule} rule")
            if ctx.is_main:
                _print(f"[ft_callbacks] {message}")
        else:
            report_event(args, state, summary=summary, message=message)
        if state.is_world_process_zero:
            self._write_record(args, state)

    def _summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.best_token_loss is not None:
            out["best_eval_token_loss"] = self.best_token_loss
            out["best_eval_perplexity"] = safe_exp(self.best_token_loss)
        if self.best_step is not None:
            out["best_step"] = self.best_step
        if self.policy.plateau is not None and self.policy.plateau.best is not None:
            out[f"best_{self.monitor}"] = self.policy.plateau.best
        if self.policy.stopped:
            out["early_stop_step"] = self.policy.stop_step
            out["early_stop_rule"] = self.policy.stop_rule
            out["early_stop_reason"] = self.policy.stop_reason
        return out

    def _final_message(self, state: Any) -> str:
        if self.policy.stopped:
            return (
                f"OverfitGuard: stopped early at step {self.policy.stop_step} ({self.policy.stop_rule} rule); "
                f"best validation token loss {self.best_token_loss if self.best_token_loss is not None else '-'} "
                f"at step {self.best_step}."
            )
        return f"OverfitGuard: training ran to step {state.global_step} without an early stop."

    def _record_path(self, args: Any) -> str:
        return os.path.join(args.output_dir, STATE_DIR, "overfit_guard.json")

    def _write_record(self, args: Any, state: Any) -> None:
        path = self._record_path(args)
        payload = {
            "global_step": state.global_step,
            "stop_step": self.policy.stop_step,
            "stop_rule": self.policy.stop_rule,
            "stop_reason": self.policy.stop_reason,
            "state": self.state_dict(),
        }
        try:
            write_record(path, payload)  # atomic: a reader sees the old record or the new one
        except OSError as exc:
            notice_once("record", f"could not write {path} ({exc}); training continues.")

    def _read_record(self, args: Any) -> dict[str, Any] | None:
        return read_json(self._record_path(args))
