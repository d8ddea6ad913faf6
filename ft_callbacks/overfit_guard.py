"""OverfitGuard: exact validation perplexity, the train/validation gap, and early stopping on it."""

from __future__ import annotations

import math
import os
from typing import Any, Literal

import numpy as np
import torch

from ._compat import processing_class
from .base import ConfigurationError, FtCallback, _Hub, check_monitor_source, monitor_skipped, require_evaluations
from .core.modes import check_mode, is_improvement, normalize_metric_name
from .core.perplexity import TokenLossTotals, safe_exp
from .core.stopping import OverfitPolicy, StopDecision, format_number
from .distributed import broadcast_from_main, gather_eval_rows
from .engines import find_trainer, sharded_engine
from .publish import EvaluationContext, _print, notice_once, report_event
from .token_loss import TokenLossProbe, mean_or_nan

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

# Where restore_best_weights_max_bytes is None: the share of the host memory available when training
# starts that the copy of the best weights may take (over all processes on the machine).
MEMORY_FRACTION = 0.5


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


def available_memory() -> int | None:
    """Host memory available now (bytes), or None where it cannot be read."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


class BestWeights:
    """A host-memory copy of the weights training changes, taken at evaluations that improve.

    Only trainable parameters (`requires_grad`: a PEFT model's adapter, not its frozen base) and
    persistent buffers (which training may update, e.g. BatchNorm statistics) are kept; tied weights
    once. Copies go into buffers allocated at the first copy, so memory holds one copy, never two.

    Example:
        >>> keep = BestWeights()
        >>> keep.keep(model, step=30, loss=2.41)   # at an evaluation with a new best
        >>> keep.put_back(model)                   # at the end: the model holds step 30's weights
    """

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.step: int | None = None
        self.loss: float | None = None

    @staticmethod
    def tracked(model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The tensors that are kept, by name: trainable parameters and persistent buffers."""
        out: dict[str, torch.Tensor] = {name: p for name, p in model.named_parameters() if p.requires_grad}
        for module_name, module in model.named_modules():
            transient = getattr(module, "_non_persistent_buffers_set", set())
            for name, buffer in module.named_buffers(recurse=False):
                if buffer is not None and name not in transient:  # non-persistent ones are derived (masks, caches)
                    out.setdefault(f"{module_name}.{name}" if module_name else name, buffer)
        return out

    @staticmethod
    def size(tensors: dict[str, torch.Tensor]) -> int:
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def keep(self, model: torch.nn.Module, step: int, loss: float) -> None:
        """Copy the tracked tensors to host memory (one device-to-host copy each)."""
        live = self.tracked(model)
        if set(live) != set(self.tensors):  # first copy, or requires_grad changed since
            self.tensors = {}
        with torch.no_grad():
            for name, tensor in live.items():
                held = self.tensors.get(name)
                if held is None or held.shape != tensor.shape or held.dtype != tensor.dtype:
                    self.tensors[name] = tensor.detach().to("cpu", copy=True)
                else:
                    held.copy_(tensor.detach())
        self.step, self.loss = step, loss

    def put_back(self, model: torch.nn.Module) -> None:
        """Copy the kept tensors into `model`, in place.

        Raises:
            RuntimeError: the model no longer has a tensor that was kept.
        """
        live = self.tracked(model)
        live.update({n: t for n, t in model.named_parameters() if n in self.tensors and n not in live})
        missing = [name for name in self.tensors if name not in live]
        if missing:
            raise RuntimeError(f"the model no longer has {missing[:5]}; its best weights cannot be put back")
        with torch.no_grad():
            for name, held in self.tensors.items():
                live[name].copy_(held)


def _perplexity_note(perplexity: float, eval_loss: float) -> str:
    """Why eval_perplexity differs from the exp(eval_loss) a script prints (once, in the first block)."""
    naive = safe_exp(eval_loss)
    if not (math.isfinite(naive) and math.isfinite(perplexity)) or perplexity <= 0:
        return ""
    diff = (naive - perplexity) / perplexity * 100
    return (
        f"    note: eval_perplexity {perplexity:.4g} is exp of the mean NLL per target token over the whole eval set; "
        f"exp(eval_loss) = {naive:.4g} ({diff:+.1f}%) is what scripts print, from the Trainer's batch-weighted "
        "eval_loss (and for some models a loss divided by too many tokens)."
    )


class OverfitGuard(FtCallback):
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
    - warm-up: gap and plateau rules never stop before `min_steps` steps and `min_evals` evaluations;
    - `noise_test=True`: the gap and plateau rules judge each evaluation by a paired test on the loss of
      every validation sample (the same samples each time; per-sample sums gathered in dataset order
      across ranks): a rise counts only when the validation loss is above its best by more than the
      noise allows (one-sided, `confidence`), and the gap rule stops after `confirm` such evaluations
      in a row while the gap is wider than at the best; an improvement counts only beyond noise (or
      `min_delta`, whichever is larger). Each evaluation's block says why it waited or stopped, e.g.
      `val +0.042 ± 0.011 above best (z = 3.8)`. Where per-sample values do not exist the rules count
      evaluations as without it, said once.

    A rule counts only the evaluations where its input exists: the plateau rule skips an evaluation
    without `monitor` (a scorer that runs every few evaluations), the gap rule one without a training
    loss.

    Best weights, `restore_best_weights` (default "auto"): the trainable weights (a PEFT model's adapter
    only) of the evaluation with the lowest validation token loss are copied to host memory at each
    evaluation that improves on it, and put back into the model when training ends, early stop or not,
    so `trainer.save_model()` saves the best. "auto" does so wherever it can and otherwise says, before
    step 1, that the model will end with its last weights; True refuses (ConfigurationError) where it
    cannot: a sharded engine (FSDP, DeepSpeed ZeRO-3) or weights over `restore_best_weights_max_bytes`
    (None: half the memory available at the start, shared by the processes on the machine); False keeps
    the last weights. Where the Trainer (`load_best_model_at_end=True`) or a
    `BestCheckpointSaver(load_best_at_end=True)` loads a best checkpoint at the end, the guard leaves
    the weights to it and keeps no copy.

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
        restore_best_weights: bool | Literal["auto"] = "auto",
        restore_best_weights_max_bytes: int | None = None,
        eval_dataset_name: str | None = None,
        noise_test: bool = False,
        confidence: float = 0.95,
        confirm: int = 1,
        rise_from: Literal["best", "lowest"] = "best",
    ) -> None:
        """Set the rules; see the class docstring for each.

        Args:
            restore_best_weights: "auto" (default): put the best weights back at the end of training where
                they fit in host memory and the engine does not shard them, else keep the last ones and say
                so before step 1; True: the same, but refuse (ConfigurationError) where it cannot; False: the
                model keeps its last weights.
            restore_best_weights_max_bytes: the most host memory, in bytes per process, the copy may take;
                None: half the memory available when training starts, shared by the processes on the machine.
            noise_test: judge each evaluation by a paired test on the per-sample validation losses (same
                samples every evaluation): the gap rule stops once the validation loss has been above its
                best by more than the noise allows (one-sided, `confidence`) for `confirm` evaluations in a
                row while the gap is wider than at the best; the plateau rule counts only improvements
                beyond noise (or `min_delta`, whichever is larger). Where per-sample values do not exist
                (a monitor without them, a fall-back evaluation) the rules count as without it, said once.
            confidence: how sure a change must be to count (0.95: z = 1.645), with `noise_test`.
            confirm: evaluations in a row with a rise beyond noise before the gap rule stops, with `noise_test`.
            rise_from: with `noise_test`, the rise is measured from "best" (the last evaluation that improved
                beyond noise) or "lowest" (the lowest validation loss seen, within noise or not).
            eval_dataset_name: with a dict `eval_dataset` (`{"a": ..., "b": ...}`), the dataset whose
                evaluation the rules decide on (`monitor="eval_loss"` then reads `eval_a_loss`); default the
                first, said once. A monitor that names a dataset (`eval_b_loss`) decides on that one.

        Raises:
            ConfigurationError: a setting that cannot work, with the fix in the message.

        Example:
            >>> Trainer(..., callbacks=[OverfitGuard(patience=3, restore_best_weights=True)])
        """
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
            "restore_best_weights": restore_best_weights,
            "restore_best_weights_max_bytes": restore_best_weights_max_bytes,
            "eval_dataset_name": eval_dataset_name,
            "noise_test": noise_test,
            "confidence": confidence,
            "confirm": confirm,
            "rise_from": rise_from,
        }
        if not isinstance(monitor, str):
            raise ConfigurationError(f"monitor={monitor!r} is not valid: name an eval metric such as 'eval_loss'.")
        if eval_dataset_name is not None and not isinstance(eval_dataset_name, str):
            raise ConfigurationError(
                f"eval_dataset_name={eval_dataset_name!r} is not valid: name a key of the dict eval_dataset."
            )
        self.eval_dataset_name = eval_dataset_name
        self.monitor = normalize_metric_name(monitor)
        self._monitor_setting = self.monitor  # as given; `monitor` is resolved against the eval datasets
        self._decision_prefix = "eval"
        self._perplexity_explained = False
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
        if isinstance(train_sample_seed, bool) or not isinstance(train_sample_seed, (int, np.integer)):
            raise ConfigurationError(f"train_sample_seed={train_sample_seed!r} is not valid: use a whole number.")
        if not isinstance(count_bytes, bool):
            raise ConfigurationError(f"count_bytes={count_bytes!r} is not valid: use True or False.")
        if restore_best_weights not in (True, False, "auto") or not isinstance(restore_best_weights, (bool, str)):
            raise ConfigurationError(
                f"restore_best_weights={restore_best_weights!r} is not valid: use 'auto' (the best weights where "
                "they fit), True (the best weights, or an error before training where that cannot be), or False "
                "(the last weights)."
            )
        max_bytes = restore_best_weights_max_bytes
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
            raise ConfigurationError(
                f"restore_best_weights_max_bytes={max_bytes!r} is not valid: use a number of bytes (e.g. 8 * 2**30 "
                "for 8 GiB), or None for half the memory available when training starts."
            )
        if restore_best_weights is False and max_bytes is not None:
            raise ConfigurationError(
                "restore_best_weights_max_bytes is set but restore_best_weights=False keeps no copy: drop one of them."
            )
        self.restore_best_weights: bool | Literal["auto"] = restore_best_weights
        self.restore_best_weights_max_bytes = max_bytes
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
        self._best_weights: BestWeights | None = None  # None: no copy kept in this run
        self._weights_note = ""  # why the model will not get the best weights back, for the final message
        self._steps_in_window = 0
        self._trained_since_eval = False
        self._compare_loss: float | None = None
        self._restored_step: int | None = None
        self.last_samples: tuple[np.ndarray, np.ndarray] | None = None  # (summed NLL, tokens) per eval sample
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
            noise_test=a["noise_test"],
            confidence=a["confidence"],
            confirm=a["confirm"],
            rise_from=a["rise_from"],
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
    console_label = "loss"
    exclusive_metrics = METRICS
    record_name = "overfit_guard"

    def produces(self) -> set[str]:
        return set(METRICS)

    def on_init_end(self, args, state, control, **kwargs):
        super().on_init_end(args, state, control, **kwargs)
        self.probe.attach(kwargs.get("model"), processing_class(kwargs))

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        require_evaluations(args, "OverfitGuard", "needs evaluations during training")
        hub = self._hub(state)
        main = state.is_world_process_zero
        self.monitor = hub.resolve_monitor("OverfitGuard", self._monitor_setting, self.eval_dataset_name, main)
        self._decision_prefix = hub.prefix_of(self.monitor)
        self.probe.attach(kwargs.get("model"), processing_class(kwargs))
        self.probe.reset_eval()
        self._training = True
        self._monitor_checked = False
        if state.global_step > 0:
            self._restore(args, state)
        else:
            self.load_state_dict({})
            self._reset_window()
        self._steps_in_window = 0
        self._plan_best_weights(args, state, kwargs.get("model"))

    def _restore(self, args: Any, state: Any) -> None:
        # `_restored_state`: set by a Trainer that rebuilt us from a checkpoint of an earlier version.
        saved = self._restored_state or self.saved_state(state)
        self._restored_state = None
        if saved:
            self.load_state_dict(saved)
            notice_once(
                "restored",
                f"OverfitGuard resumed at step {state.global_step}: {self.policy.evaluations} evaluations, "
                f"gap count {self.policy.gap.wait if self.policy.gap else '-'}, "
                f"plateau count {self.policy.plateau.wait if self.policy.plateau else '-'}.",
            )
        record = self.read_record(args)
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
        if self.policy.plateau is not None:
            check_monitor_source("OverfitGuard", self.monitor, hub, state.is_world_process_zero)

    def on_step_end(self, args, state, control, **kwargs):
        self._steps_in_window += 1
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
        self._restored_step = None
        weights = self._put_back_best(kwargs.get("model"), state)  # every process: each holds its own copy
        if state.is_world_process_zero:
            self._write_record(args, state)
            summary = self._summary()
            if self._restored_step is not None:
                summary["restored_weights_step"] = self._restored_step
            if summary:
                report_event(args, state, summary=summary, message=f"{self._final_message(state)} {weights}")
            else:
                _print(f"[ft_callbacks] step {state.global_step} | OverfitGuard: {weights}")
        super().on_train_end(args, state, control, **kwargs)

    # -- evaluation ----------------------------------------------------------------------------
    def compute(self, ctx: EvaluationContext) -> None:
        totals = self._eval_totals(ctx)
        eval_loss = ctx.metrics.get(f"{ctx.prefix}_loss")
        if totals.tokens:
            token_loss = totals.mean_nll
            ctx.add("token_loss", token_loss)
            ctx.add("perplexity", totals.perplexity)
            if eval_loss is not None and not self._perplexity_explained and ctx.is_main:
                self._perplexity_explained = True
                note = _perplexity_note(totals.perplexity, float(eval_loss))
                if note:
                    ctx.blocks.append(note)
            ctx.add("bits_per_token", totals.bits_per_token, show=False)
            ctx.add("bits_per_byte", totals.bits_per_byte, show=False)
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
            ctx.add("bits_per_token", token_loss / math.log(2), show=False)
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
            ctx.add("loss_ratio", token_loss / compare if compare else math.inf, show=False)
        if ctx.prefix != self._decision_prefix:
            return  # one of several eval datasets: the training window belongs to the one the rules decide on
        self._trained_since_eval = self._steps_in_window > 0
        self._steps_in_window = 0
        self._reset_window()
        self._last_log_step = ctx.step

    def _eval_totals(self, ctx: EvaluationContext) -> TokenLossTotals:
        totals = TokenLossTotals()
        self.last_samples = None
        rows = gather_eval_rows(self.probe.take("eval"), ctx.eval_dataloader, width=3)
        if rows is None:
            # Sums over part of the eval set would be silently wrong: fall back for this evaluation.
            notice_once("ppl_hole", "OverfitGuard could not read some evaluation batch on some rank; that "
                        "evaluation's perplexity falls back to exp(eval_loss).")  # fmt: skip
            return totals
        if len(rows):
            totals.add(rows[:, 0].sum(), int(rows[:, 1].sum()), int(rows[:, 2].sum()))
            # One float pair per sample, in dataset order on every rank: the noise test pairs them
            # with the same samples of the best evaluation.
            self.last_samples = (rows[:, 0].copy(), rows[:, 1].copy())
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
        if not self._training or ctx.prefix != self._decision_prefix:
            return
        monitored = ctx.metrics.get(self.monitor)
        if self.policy.plateau is not None and monitored is None and not self._monitor_checked:
            monitor_skipped("OverfitGuard", self.monitor, ctx)  # raises unless one of ours skipped a round
        else:
            self._monitor_checked = True
        token_loss = self._token_loss
        samples = self.last_samples if token_loss is not None else None
        decision = self.policy.on_evaluation(
            ctx.step, token_loss, self._compare_loss, monitored, samples, self._monitored_samples(ctx, samples)
        )
        # Every rank computed the same reduced numbers; rank 0's decision is made everyone's anyway,
        # since ranks that disagree about stopping hang in the next collective.
        decision = broadcast_from_main(decision)
        if is_improvement(token_loss, self.best_token_loss, "min"):  # strictly better: the earlier step keeps ties
            self.best_token_loss, self.best_step = token_loss, ctx.step
        kept = self._best_weights
        if kept is not None and ctx.model is not None and is_improvement(token_loss, kept.loss, "min"):
            # The only device-to-host copy: at evaluations that improve (after a resume: on this session's best).
            kept.keep(ctx.model, ctx.step, token_loss)
        gap = ctx.metrics.get(f"{ctx.prefix}_loss_gap")
        self.history.append({"step": ctx.step, "token_loss": token_loss, "train_loss": self._compare_loss, "gap": gap})
        parts = []
        noise = self.policy.noise_test
        if noise:
            self._noise_console(ctx, parts)
        if self.policy.gap is not None and not (noise and self.policy.loss_obs is not None):
            if self.policy.gap.measured:
                parts.append(f"gap widening {self.policy.gap.wait}/{self.policy.gap.patience}")
            elif self._trained_since_eval and self._compare_loss is None and ctx.is_main:
                self._no_train_loss_notice(ctx)
        if self.policy.plateau is not None and not (noise and self.policy.monitor_obs is not None):
            counted = "" if self.policy.plateau.counted else f" ({self.monitor} missing: not counted)"
            parts.append(f"plateau {self.policy.plateau.wait}/{self.policy.plateau.patience}{counted}")
        ctx.console.append(", ".join(parts))
        for name, value in self._summary().items():
            ctx.add_summary(name, value)
        if decision:
            self._stop(ctx.args, ctx.state, ctx.control, decision, ctx=ctx)
        elif ctx.is_main:
            self._write_record(ctx.args, ctx.state)

    # Monitors that are the validation token loss in other units: the noise test pairs its samples.
    _TOKEN_LOSS_METRICS = ("loss", "token_loss", "perplexity", "bits_per_token")

    def _monitored_samples(self, ctx: EvaluationContext, samples: Any) -> Any:
        """Per-sample values of `monitor` for the noise test: the token-loss samples where the monitor is
        the validation loss (in any of its units), a member's `per_sample_values(metric, step)` where one
        offers them (values, weights or None), else None (the plateau rule then counts)."""
        if not self.policy.noise_test or self.policy.plateau is None:
            return None
        if self.monitor in {f"{ctx.prefix}_{name}" for name in self._TOKEN_LOSS_METRICS}:
            return samples
        for member in self._hub(ctx.state).members:
            provider = getattr(member, "per_sample_values", None)
            if member is not self and callable(provider):
                found = provider(self.monitor, ctx.step)
                if found is not None:
                    return found
        return None

    def _noise_console(self, ctx: EvaluationContext, parts: list[str]) -> None:
        """The noise test's part of the evaluation's console line, and the fall-back notice (once)."""
        policy = self.policy
        if policy.loss_obs is not None:
            parts.append(policy.loss_obs.describe())
            if policy.noise_gap is not None:
                parts.append(f"rise beyond noise {policy.loss_obs.rises}/{policy.confirm}")
        if policy.monitor_obs is not None and policy.plateau is not None:
            what = "" if policy.monitor_obs is policy.loss_obs else f"{policy.monitor_obs.describe(self.monitor)}; "
            parts.append(f"{what}no improvement beyond noise {policy.monitor_obs.wait}/{policy.plateau.patience}")
        if policy.noise_fallback and ctx.is_main:
            rules = " and ".join(f"the {rule} rule" for rule in policy.noise_fallback)
            why = (
                f"{self.monitor} has no per-sample values"
                if policy.noise_fallback == ["plateau"]
                else "the per-token validation losses could not be read"
            )
            notice_once(f"noise_fallback:{','.join(policy.noise_fallback)}", f"OverfitGuard's noise test: {why}, "
                        f"so {rules} count evaluations as without it (patience).")  # fmt: skip

    # -- best weights ----------------------------------------------------------------------------
    def _plan_best_weights(self, args: Any, state: Any, model: Any) -> None:
        """Before step 1: whether this run keeps a copy of the best weights; if not, why (said once)."""
        self._best_weights, self._weights_note = None, ""
        setting = self.restore_best_weights
        if setting is False or model is None:
            return
        main = state.is_world_process_zero
        trainer = find_trainer(self)
        loader = self._best_loader(args, trainer, state)
        if loader:
            # Two mechanisms putting weights back would make the end depend on the callback order.
            self._weights_note = f"{loader} puts its best checkpoint's weights into the model"
            if main:
                notice_once("best_weights_loader", "OverfitGuard keeps no copy of the best weights: at the end "
                            f"of training {self._weights_note}.")  # fmt: skip
            return
        saver = "BestCheckpointSaver(load_best_at_end=True)"
        engine = sharded_engine(model, trainer)
        if engine is not None:
            problem = f"under {engine} each process holds only a shard of the weights"
            if setting is True:
                raise ConfigurationError(
                    f"OverfitGuard(restore_best_weights=True) cannot keep the best weights: {problem}. Add {saver}, "
                    "which saves the best through the engine and loads it back at the end; or pass "
                    "restore_best_weights=False to end with the last weights."
                )
            fixes = f"add {saver}, which saves the best through the engine and loads it back at the end"
        else:
            size = BestWeights.size(BestWeights.tracked(model))
            budget, source = self._memory_budget()
            if budget is None or size <= budget:
                self._best_weights = BestWeights()
                self._resume_notice(state)
                return
            frozen = not all(p.requires_grad for p in model.parameters())
            what = "the trainable weights" if frozen else "the weights (the whole model is trained)"
            problem = f"{what} take {_bytes(size)} per process, over the budget of {_bytes(budget)} ({source})"
            fixes = (
                "train an adapter (PEFT: only its weights are kept), raise restore_best_weights_max_bytes, or add "
                f"{saver}, which keeps the best on disk"
            )
            if setting is True:
                raise ConfigurationError(
                    f"OverfitGuard(restore_best_weights=True) cannot keep the best weights in host memory: {problem}. "
                    f"To fix it, {fixes}; or pass restore_best_weights=False to end with the last weights."
                )
        self._weights_note = f"the model keeps its last weights: {problem}"
        if main:
            notice_once("best_weights_unavailable", f"OverfitGuard keeps no copy of the best weights ({problem}): "
                        f"the model will end with its last weights. For the best ones, {fixes}.")  # fmt: skip

    def _resume_notice(self, state: Any) -> None:
        if state.global_step == 0 or not state.is_world_process_zero:
            return
        before = ""
        if self.best_step is not None:
            before = (
                f" The best before the restart (step {self.best_step}, validation token loss "
                f"{format_number(self.best_token_loss)}) is not in memory; BestCheckpointSaver(load_best_at_end=True) "
                "keeps the best on disk, across restarts."
            )
        notice_once(
            "best_weights_resume",
            f"OverfitGuard resumed at step {state.global_step}: at the end of training the model gets the weights of "
            f"the best evaluation from step {state.global_step} on (its last weights if none has a finite loss)."
            + before,
        )

    def _memory_budget(self) -> tuple[int | None, str]:
        """(bytes the copy may take per process, where that number comes from); None: unknown, no limit."""
        if self.restore_best_weights_max_bytes is not None:
            return self.restore_best_weights_max_bytes, "restore_best_weights_max_bytes"
        available = available_memory()
        if available is None:
            return None, ""
        processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or 1))  # every process keeps its own copy
        share = f", shared by the {processes} processes on this machine" if processes > 1 else ""
        budget = int(available * MEMORY_FRACTION) // processes
        return budget, f"half of the {_bytes(available)} of memory available at the start{share}"

    @staticmethod
    def _best_loader(args: Any, trainer: Any, state: Any) -> str:
        """Who else puts a best checkpoint's weights into the model at the end of training, if anyone."""
        if getattr(args, "load_best_model_at_end", False):
            return "the Trainer (load_best_model_at_end=True)"
        from .best_checkpoint import BestCheckpointSaver

        callbacks = getattr(getattr(trainer, "callback_handler", None), "callbacks", None)
        if callbacks is None:
            from .base import _Hub

            callbacks = _Hub.of(state).members
        if any(isinstance(cb, BestCheckpointSaver) and cb.load_best_at_end for cb in callbacks):
            return "BestCheckpointSaver(load_best_at_end=True)"
        return ""

    def _put_back_best(self, model: Any, state: Any) -> str:
        """At the end of training, on every process: the best weights back into the model. Returns the
        sentence saying which weights the model now holds."""
        kept, self._best_weights = self._best_weights, None  # the copy is freed once used
        last = f"its last weights (step {state.global_step})"
        if self.restore_best_weights is False:
            if self.best_step is None or self.best_step == state.global_step:
                return f"The model keeps {last}."
            return (
                f"The model keeps {last}, not the best (step {self.best_step}): restore_best_weights=True puts "
                "those back."
            )
        if self._weights_note:
            return f"{self._weights_note[0].upper()}{self._weights_note[1:]}."
        if kept is None or kept.step is None or model is None:
            return f"The model keeps {last}: no evaluation of this run had a finite validation loss."
        kept.put_back(model)
        self._restored_step = kept.step
        sentence = (
            f"The model holds the best weights, from step {kept.step} (validation token loss "
            f"{format_number(kept.loss)}); trainer.save_model() saves those."
        )
        if self.best_step is not None and self.best_step != kept.step:
            sentence += f" The best of the whole run (step {self.best_step}) was before the restart."
        return sentence

    def _no_train_loss_notice(self, ctx: EvaluationContext) -> None:
        """Once: the gap rule had no training loss to compare with at this evaluation, why, and whether
        it ever will in this run."""
        if self.train_sample_size:
            return  # the training sample could not be measured: the "sample" notice says so
        args, state = ctx.args, ctx.state
        strategy = str(getattr(args.logging_strategy, "value", args.logging_strategy))
        every = int(getattr(state, "logging_steps", 0) or getattr(args, "logging_steps", 0) or 0)
        max_steps = int(getattr(state, "max_steps", 0) or 0)
        why = (
            "OverfitGuard cannot read a training loss from the model's output (it returns a tuple, has no `loss`, "
            "or the loss is computed outside the model), and the Trainer logged none since the previous evaluation"
        )
        fix = "return a ModelOutput with `loss`, set logging_steps <= eval_steps, or pass train_sample_size=N"
        if strategy == "no" or (strategy == "steps" and max_steps and every > max_steps):
            setting = "logging_strategy='no'" if strategy == "no" else f"logging_steps={every} > max_steps={max_steps}"
            notice_once("gap_off", f"OverfitGuard's gap rule is off for this run: {why} and will log none before "
                        f"an evaluation ({setting}). To use it, {fix}.")  # fmt: skip
            return
        eval_steps = getattr(state, "eval_steps", None) or args.eval_steps
        notice_once("gap_sometimes", f"OverfitGuard has no training loss at step {ctx.step}: {why} (logging_steps="
                    f"{every}, eval_steps={eval_steps}). The gap rule counts only evaluations with a training loss; "
                    f"to measure it at every one, {fix}.")  # fmt: skip

    # -- stopping and records --------------------------------------------------------------------
    def _stop(self, args: Any, state: Any, control: Any, decision: StopDecision, ctx: EvaluationContext | None = None):
        control.should_training_stop = True
        if self.policy.stop_step is None:  # decided by rank 0 on a rank that saw it differently
            self.policy.stop_step, self.policy.stop_rule = state.global_step, decision.rule
            self.policy.stop_reason = decision.reason
        summary = self._summary()
        if ctx is not None:  # in the evaluation's own block, after its numbers; with a wandb alert
            ctx.stop("OverfitGuard", decision.rule, decision.reason, summary)
        else:  # a training step (NaN, divergence)
            step, rule = state.global_step, decision.rule
            message = f"OverfitGuard stops training at step {step} ({rule} rule): {decision.reason}"
            report_event(args, state, summary=summary, message=message, alert="OverfitGuard stopped training")
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
            best = (
                f"best validation token loss {format_number(self.best_token_loss)} at step {self.best_step}"
                if self.best_step is not None
                else "no finite validation loss before it"
            )
            policy = self.policy
            return f"OverfitGuard: stopped early at step {policy.stop_step} ({policy.stop_rule} rule); {best}."
        return f"OverfitGuard: training ran to step {state.global_step} without an early stop."

    def _write_record(self, args: Any, state: Any) -> None:
        self.write_record(args, {
            "global_step": state.global_step,
            "stop_step": self.policy.stop_step,
            "stop_rule": self.policy.stop_rule,
            "stop_reason": self.policy.stop_reason,
            "state": self.state_dict(),
        })  # fmt: skip
