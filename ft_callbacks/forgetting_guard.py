"""ForgettingGuard: what the fine-tune costs the base model's general abilities, while training.

At every n-th evaluation it scores the live model on lm-evaluation-harness tasks (and/or measures the
perplexity of general text) and compares with the base model's scores from step 0: deltas in points,
`eval_forgetting` (the largest drop), and a rule that warns or stops when a drop is larger than
`max_drop` and beyond noise (a paired test on the same questions, `core/forgetting.py`).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from ._compat import processing_class
from .base import ConfigurationError, FtCallback, _Hub, require_evaluations
from .base_model import BaseResults, as_base_model, base_is_available, fingerprint, model_identity
from .bench_engine import BenchEngine, BenchRound, require_lm_eval, safe_name
from .core.forgetting import ForgettingRule, PairedComparison, compare_paired, compare_unpaired, largest_drop
from .core.perplexity import TokenLossTotals, safe_exp
from .distributed import all_reduce_sum, broadcast_from_main, rank, world_size
from .engines import find_trainer, is_peft, sharded_engine
from .publish import EvaluationContext, notice_once, report_event

OWNER = "ForgettingGuard"


@contextlib.contextmanager
def _live_eval(model: Any) -> Iterator[Any]:
    """The live model in eval mode without gradients; its training mode is restored afterwards."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def _texts(general_text: Any) -> list[str]:
    """A list of strings, or a dataset with a `text` column, as a list of non-empty strings."""
    if isinstance(general_text, str):
        raise ConfigurationError("general_text is one string: pass a list of texts or a dataset with a 'text' column.")
    column = getattr(general_text, "column_names", None)
    if column is not None:
        if "text" not in column:
            raise ConfigurationError(
                f"general_text is a dataset without a 'text' column (it has {column}): rename the column to 'text'."
            )
        general_text = general_text["text"]
    try:
        texts = [t for t in general_text if isinstance(t, str) and t.strip()]
    except TypeError:
        raise ConfigurationError(
            f"general_text={type(general_text).__name__} is not valid: pass a list of texts or a dataset with a "
            "'text' column."
        ) from None
    if not texts:
        raise ConfigurationError("general_text has no non-empty text: pass a list of texts.")
    return texts


def general_text_totals(
    model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 8, max_length: int = 512
) -> TokenLossTotals:
    """Summed next-token NLL (float32, from logits) and token count of `texts` under `model`, exact and
    token-weighted like OverfitGuard's; each rank takes every world_size-th text, then the sums are added.

    Args:
        model: a causal LM returning `logits`.
        tokenizer: its tokenizer.
        texts: the general texts.
        batch_size: texts per forward pass.
        max_length: tokens per text (capped at the model's positions).

    Example:
        >>> general_text_totals(model, tokenizer, ["Some general text.", "More of it."]).perplexity  # doctest: +SKIP
        311.2
    """
    import torch

    config = getattr(model, "config", None)
    for limit in (getattr(config, "n_positions", None), getattr(config, "max_position_embeddings", None),
                  getattr(tokenizer, "model_max_length", None)):  # fmt: skip
        if isinstance(limit, int) and 1 < limit < max_length:
            max_length = limit  # never past the model's positions
    with torch.no_grad():
        nll, tokens = _summed_nll(model, tokenizer, list(texts)[rank() :: world_size()], batch_size, max_length)
    summed = all_reduce_sum(torch.tensor([nll, float(tokens)], dtype=torch.float64))
    totals = TokenLossTotals()
    totals.add(float(summed[0]), int(summed[1]))
    return totals


def _summed_nll(model: Any, tokenizer: Any, mine: list[str], batch_size: int, max_length: int) -> tuple[float, int]:
    import torch

    device = next(model.parameters()).device
    nll, tokens = 0.0, 0
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for start in range(0, len(mine), batch_size):
        chunk = mine[start : start + batch_size]
        encoded = [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in chunk]
        encoded = [ids for ids in encoded if len(ids) > 1]
        if not encoded:
            continue
        width = max(len(ids) for ids in encoded)
        ids = torch.full((len(encoded), width), pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, row in enumerate(encoded):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        target = ids[:, 1:].to(device)
        keep = mask[:, 1:].to(device).bool()
        losses = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), target, reduction="none")
        nll += float(losses[keep].sum())
        tokens += int(keep.sum())
    return nll, tokens


def _tokenizer_identity(tokenizer: Any) -> str:
    """The tokenizer by its vocabulary (not its path: the same tokenizer loaded from elsewhere is the same)."""
    try:
        vocab = sorted(tokenizer.get_vocab().items())
    except Exception:  # a processor without get_vocab: its class and size
        vocab = [type(tokenizer).__name__, len(tokenizer)]
    return fingerprint(vocab=vocab, special=getattr(tokenizer, "all_special_tokens", []))


class ForgettingGuard(FtCallback):
    """Measure what fine-tuning costs the base model's general abilities, and warn or stop on it.

    At every `every_n_evals`-th evaluation it runs lm-evaluation-harness (`simple_evaluate` on an
    `HFLM` wrapping the live model and tokenizer: no copy, eval mode, no grad, training mode restored)
    on `tasks`, and compares with the base model's scores measured at step 0 (a PEFT model: the same
    model with its adapters disabled). The base scores are kept under `output_dir/ft_callbacks/base/`
    with a fingerprint and reused on resume. It adds, per task and metric:

    - `eval_bench_<task>_<metric>` (e.g. `acc`, `acc_norm`) and `eval_bench_<task>_<metric>_stderr`;
    - `eval_bench_<task>_<metric>_delta`: vs the base, in points for 0-1 scores (accuracy 0.61 -> 0.57
      is -4.0), in the metric's own units otherwise;
    - `eval_forgetting`: the largest drop in points across tasks and their 0-1 metrics (lower is better);
    - with `general_text`: `eval_general_perplexity` (exact, token-weighted) and
      `eval_general_perplexity_ratio` vs the base.

    The rule: a drop larger than `max_drop` points that is also beyond noise (McNemar's exact test on
    the questions answered differently, or a paired bootstrap for partial-credit scores, at
    `confidence`) warns once per task and metric, or with `action="stop"` stops training. With
    `base_scores=` given instead of measured, the comparison is unpaired (the base's answers are unknown).

    Args:
        tasks: lm-eval task or group names (hub tasks need the network; offline use `include_path`).
        include_path: a folder (or folders) of your own lm-eval task YAMLs.
        limit: questions per task, a fixed subset drawn with `seed` (None: every question).
        every_n_evals: run a round at every n-th evaluation (the others report nothing new).
        max_drop: points of drop tolerated.
        action: "warn" or "stop".
        batch_size: lm-eval's batch size (and general_text's).
        num_fewshot: few-shot examples (None: each task's own).
        confidence: of the paired test and the intervals.
        seed: the subset's and lm-eval's seeds.
        base_scores: `{task: {metric: value}}` measured elsewhere (0-1 like lm-eval reports; optional
            `<metric>_stderr`), used instead of a step-0 round.
        general_text: texts (a list, or a dataset with a `text` column) whose perplexity is the cheap proxy.
        general_max_length: tokens per general text (longer ones are truncated).
        bootstrap_iters: lm-eval's bootstrap resamples for standard errors of non-mean metrics.

    Raises:
        ConfigurationError: a setting that cannot work (message names the fix), lm-eval not installed
            with `tasks`, or (before step 1) a task that cannot load, a missing `include_path`, a sharded engine.

    Example:
        >>> Trainer(..., callbacks=[ForgettingGuard(tasks=["mmlu", "arc_easy"], limit=200, every_n_evals=2,
        ...                                         max_drop=2.0, action="warn")])
    """

    console_label = "forgetting"
    exclusive_metrics = ("forgetting", "general_perplexity", "general_perplexity_ratio")
    add_hint = "ForgettingGuard(tasks=[...])"
    record_name = "forgetting_guard"

    def __init__(
        self,
        tasks: Sequence[str] | None = None,
        include_path: str | Sequence[str] | None = None,
        limit: int | None = None,
        every_n_evals: int = 1,
        max_drop: float = 2.0,
        action: Literal["warn", "stop"] = "warn",
        batch_size: int = 8,
        num_fewshot: int | None = None,
        confidence: float = 0.95,
        seed: int = 0,
        base_scores: dict[str, dict[str, float]] | None = None,
        general_text: Any = None,
        general_max_length: int = 512,
        bootstrap_iters: int = 100000,
    ) -> None:
        self._init_args = {
            "tasks": ",".join(tasks) if isinstance(tasks, (list, tuple)) else tasks, "limit": limit,
            "every_n_evals": every_n_evals, "max_drop": max_drop, "action": action, "batch_size": batch_size,
            "num_fewshot": num_fewshot, "confidence": confidence, "seed": seed,
        }  # fmt: skip
        if tasks is None and general_text is None:
            raise ConfigurationError(
                "ForgettingGuard needs something to measure: tasks=['arc_easy', ...] (lm-eval tasks) and/or "
                "general_text=[...] (texts whose perplexity is the cheap proxy)."
            )
        if isinstance(tasks, str):
            tasks = [tasks]
        if tasks is not None:
            if not isinstance(tasks, (list, tuple)) or not tasks or not all(isinstance(t, str) and t for t in tasks):
                raise ConfigurationError(f"tasks={tasks!r} is not valid: use a list of lm-eval task names.")
            require_lm_eval()
        if include_path is None:
            include_path = []
        elif isinstance(include_path, str) or hasattr(include_path, "__fspath__"):
            include_path = [str(include_path)]
        include_path = [str(p) for p in include_path]
        if include_path and tasks is None:
            raise ConfigurationError(
                "include_path is set but tasks is not: name the tasks of your YAMLs in tasks=[...]."
            )
        whole_numbers = (
            ("limit", limit, 1, True), ("every_n_evals", every_n_evals, 1, False), ("batch_size", batch_size, 1, False),
            ("num_fewshot", num_fewshot, 0, True), ("general_max_length", general_max_length, 2, False),
            ("bootstrap_iters", bootstrap_iters, 0, False),
        )  # fmt: skip
        for name, value, low, allow_none in whole_numbers:
            if value is None and allow_none:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                extra = " or None (every question)" if name == "limit" else (" or None" if allow_none else "")
                raise ConfigurationError(f"{name}={value!r} is not valid: use a whole number >= {low}{extra}.")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigurationError(f"seed={seed!r} is not valid: use a whole number.")
        self.rule = ForgettingRule(max_drop=max_drop, action=action, confidence=confidence)
        if base_scores is not None and (
            not isinstance(base_scores, dict)
            or not all(isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values())
                       for v in base_scores.values())
        ):  # fmt: skip
            raise ConfigurationError(
                "base_scores is not valid: use {task: {metric: value}}, e.g. {'arc_easy': {'acc': 0.61, "
                "'acc_stderr': 0.01}}, with values as lm-eval reports them (0-1)."
            )
        if base_scores is not None and tasks is not None:
            missing = [t for t in tasks if t not in base_scores]
            if missing:
                raise ConfigurationError(f"base_scores has no scores for {missing}: give every task of tasks=.")
        self.tasks = list(tasks) if tasks is not None else []
        self.include_path = include_path
        self.limit = limit
        self.every_n_evals = every_n_evals
        self.max_drop = float(max_drop)
        self.action = action
        self.confidence = confidence
        self.batch_size = batch_size
        self.seed = seed
        self.given_base = base_scores
        self.general_texts = _texts(general_text) if general_text is not None else None
        self.general_max_length = general_max_length
        self.engine = (
            BenchEngine(self.tasks, include_path, limit, batch_size, num_fewshot, seed, bootstrap_iters)
            if self.tasks else None
        )  # fmt: skip
        self.base: BenchRound | None = None  # the base model's round (measured, reused, or given)
        self.base_general: float | None = None  # the base's general-text token loss
        self.base_source = ""  # "measured", "reused", "given" or "" (none)
        self.history: list[dict[str, Any]] = []
        self.evals_seen = 0
        self.rounds = 0  # benchmark rounds run in this process (the base's included)
        self._model: Any = None
        self._tokenizer: Any = None
        self._prepared = False
        self._comparisons: list[PairedComparison] | None = None

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"rule": self.rule.state_dict(), "history": list(self.history), "evals_seen": self.evals_seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rule.load_state_dict(state.get("rule") or {})
        self.history = list(state.get("history") or [])
        self.evals_seen = int(state.get("evals_seen") or 0)

    @property
    def stopped(self) -> bool:
        return self.rule.stop_step is not None

    def produces(self) -> set[str]:
        names = {"forgetting"} if self.engine is not None else set()
        if self.general_texts is not None:
            names |= {"general_perplexity", "general_perplexity_ratio"}
        for key in self._bench_keys():
            names |= {key, f"{key}_delta"} if not key.endswith("_stderr") else {key}
        return names

    def _bench_keys(self) -> list[str]:
        if self.base is None:
            return []
        return [f"bench_{safe_name(task)}_{label}" for task, scores in self.base.scores.items() for label in scores]

    # -- set-up: everything that can fail, before step 1 ----------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self._tokenizer = processing_class(kwargs) or self._tokenizer
        self._prepared = False
        super().on_train_begin(args, state, control, **kwargs)

    def setup(self, args: Any, state: Any, model: Any) -> None:
        require_evaluations(args, OWNER, "measures forgetting at evaluations")
        if state.global_step == 0:
            self.load_state_dict({})
        self._model = model
        self._prepare(args, state, model)

    def validate(self, args: Any, state: Any, hub: _Hub) -> None:
        self._prepare(args, state, self._model)

    def _prepare(self, args: Any, state: Any, model: Any) -> None:
        if self._prepared:
            return
        if model is None:
            raise ConfigurationError(f"{OWNER} needs the model: it is run by a Trainer, which hands it over.")
        if self._tokenizer is None:
            raise ConfigurationError(
                f"{OWNER} needs the tokenizer: pass Trainer(processing_class=tokenizer) so the benchmarks can encode "
                "their questions."
            )
        engine = sharded_engine(model, find_trainer(self))
        if engine is not None:
            raise ConfigurationError(
                f"{OWNER} cannot run under {engine}: no rank holds the whole model, and its forward passes (lm-eval's "
                "HFLM, the general-text perplexity) are not the engine's collective ones. Remove ForgettingGuard and "
                "score saved checkpoints after training with `lm-eval run --model hf --model_args "
                "pretrained=CHECKPOINT --tasks ...`, or train with DDP (one full copy of the model per process)."
            )
        if self.engine is not None:
            self.engine.check()
        self._prepared = True
        self._ensure_base(args, state, model)

    def _fingerprint(self, model: Any) -> str:
        general = ""
        if self.general_texts:
            general = fingerprint(texts=self.general_texts, max_length=self.general_max_length)
        return fingerprint(
            model=model_identity(model), engine=self.engine.settings() if self.engine is not None else None,
            general=general, tokenizer=_tokenizer_identity(self._tokenizer),
        )  # fmt: skip

    def _ensure_base(self, args: Any, state: Any, model: Any) -> None:
        """The base's scores: given, saved by an earlier session of this run, or measured now."""
        if self.base is not None or self.base_source:
            return
        store = BaseResults(args.output_dir, "forgetting_scores")
        key = self._fingerprint(model)
        saved = store.load(key)
        main = state.is_world_process_zero
        if self.given_base is not None:
            self.base = BenchRound(scores={t: {safe_name(m): float(v) for m, v in s.items()}
                                           for t, s in self.given_base.items()})  # fmt: skip
            self.base_source = "given"
        if saved is not None:
            if self.base is None and saved.get("bench") is not None:
                self.base = BenchRound.from_dict(saved["bench"])
            self.base_general = saved.get("general")
            self.base_source = self.base_source or "reused"
            if main:
                notice_once("forgetting:reused", f"{OWNER} reuses the base model's scores saved in {store.path} "
                            "(same model, tasks and settings).")  # fmt: skip
        need_bench = self.engine is not None and self.base is None
        need_general = self.general_texts is not None and self.base_general is None
        if not (need_bench or need_general):
            return
        if not base_is_available(model, state.global_step):
            self.base_source = self.base_source or "none"
            if main:
                notice_once("forgetting:no_base", f"{OWNER}: no base scores for this run (none saved in {store.path} "
                            f"with this model and these settings, and at step {state.global_step} the weights are no "
                            "longer the base's). Deltas and eval_forgetting are not reported; pass base_scores= with "
                            "numbers measured on the base model.")  # fmt: skip
            return
        start = time.perf_counter()
        with as_base_model(model) as base_model:
            if need_bench:
                self.base = self.engine.run(base_model, self._tokenizer)
                self.rounds += 1
            if need_general:
                self.base_general = self._general_totals(base_model).mean_nll
        self.base_source = self.base_source or "measured"
        if main:
            store.save(key, {"bench": self.base.to_dict() if self.base is not None else None,
                             "general": self.base_general, "step": state.global_step})  # fmt: skip
            summary = {f"base/{k}": v for k, v in self._flat(self.base).items()}
            if self.base_general is not None:
                summary["base/general_perplexity"] = safe_exp(self.base_general)
            what = "the base model (PEFT adapters disabled)" if is_peft(model) else "the base model (step 0)"
            shown = ", ".join(f"{k} {v:.4g}" for k, v in summary.items() if not k.endswith("_stderr"))
            report_event(args, state, summary=summary,
                         message=f"{OWNER}: {what} scored in {time.perf_counter() - start:.1f}s: {shown}")  # fmt: skip

    @staticmethod
    def _flat(round_: BenchRound | None) -> dict[str, float]:
        if round_ is None:
            return {}
        return {
            f"bench_{safe_name(task)}_{label}": value
            for task, scores in round_.scores.items()
            for label, value in scores.items()
        }

    def _general_totals(self, model: Any) -> TokenLossTotals:
        assert self.general_texts is not None
        return general_text_totals(model, self._tokenizer, self.general_texts, self.batch_size, self.general_max_length)

    # -- evaluations ---------------------------------------------------------------------------
    def compute(self, ctx: EvaluationContext) -> None:
        self._comparisons = None
        model = ctx.model if ctx.model is not None else self._model
        if ctx.processing_class is not None and self._tokenizer is None:
            self._tokenizer = ctx.processing_class
        if not self._prepared:  # a standalone evaluate() before any train()
            self._prepare(ctx.args, ctx.state, model)
        self.evals_seen += 1
        if (self.evals_seen - 1) % self.every_n_evals:
            return
        start = time.perf_counter()
        try:
            with _live_eval(model) as live:
                current = self.engine.run(live, self._tokenizer) if self.engine is not None else None
                general = self._general_totals(live) if self.general_texts is not None else None
        except Exception as exc:
            if isinstance(exc, ConfigurationError):
                raise
            message = f"benchmark round skipped ({type(exc).__name__}: {exc}); training continues."
            ctx.console.append(message)
            if ctx.is_main:
                notice_once(f"forgetting:skip:{type(exc).__name__}", f"{OWNER} at step {ctx.step}: {message}")
            return
        self.rounds += 1
        seconds = time.perf_counter() - start
        comparisons: list[PairedComparison] = []
        if current is not None:
            comparisons = self._report_bench(ctx, current)
        if general is not None:
            ctx.add("general_perplexity", general.perplexity)
            if self.base_general is not None and math.isfinite(self.base_general):
                ratio = safe_exp(general.mean_nll - self.base_general)
                ctx.add("general_perplexity_ratio", ratio)
        questions = f", {current.questions} questions" if current is not None else ""
        ctx.console.append(f"benchmark round {seconds:.1f}s{questions}")
        self._comparisons = comparisons
        worst = largest_drop(comparisons)
        kept = ("task", "metric", "drop", "low", "high", "p_value", "n", "method")
        self.history.append({
            "step": ctx.step, "forgetting": worst.drop if worst else None, "seconds": seconds,
            "comparisons": [{k: c.to_dict()[k] for k in kept} for c in comparisons],
        })  # fmt: skip

    def _report_bench(self, ctx: EvaluationContext, current: BenchRound) -> list[PairedComparison]:
        comparisons = []
        for task, scores in current.scores.items():
            stem = f"bench_{safe_name(task)}"
            proportions = set(current.proportions.get(task, []))
            base_scores = self.base.scores.get(task, {}) if self.base is not None else {}
            for label, value in scores.items():
                ctx.add(f"{stem}_{label}", value, show=label in proportions)
                if label.endswith("_stderr") or label not in base_scores:
                    continue
                delta = value - base_scores[label]
                ctx.add(f"{stem}_{label}_delta", delta * 100 if label in proportions else delta, show=False)
            for label in sorted(proportions & set(base_scores)):
                comparison = self._compare(task, label, current, base_scores)
                if comparison is not None:
                    comparisons.append(comparison)
        worst = largest_drop(comparisons)
        if worst is not None:
            ctx.add("forgetting", worst.drop)
        return comparisons

    def _compare(self, task: str, label: str, current: BenchRound, base_scores: dict[str, float]) -> PairedComparison:
        now = current.per_question.get(task, {}).get(label, {})
        before = (self.base.per_question.get(task, {}) if self.base is not None else {}).get(label, {})
        shared = sorted(set(now) & set(before))
        drop_points = (base_scores[label] - current.scores[task][label]) * 100
        if shared:
            result = compare_paired([before[k] for k in shared], [now[k] for k in shared], self.confidence,
                                    seed=self.seed, task=task, metric=label)  # fmt: skip
        else:  # base scores given as numbers: the base's per-question answers are unknown
            result = compare_unpaired(base_scores[label], base_scores.get(f"{label}_stderr"),
                                      current.scores[task][label], current.scores[task].get(f"{label}_stderr"),
                                      n=len(now), confidence=self.confidence, task=task, metric=label)  # fmt: skip
        # The drop reported is the aggregate's (a group's may weight its tasks); the test is the questions'.
        shift = drop_points - result.drop
        result.drop, result.low, result.high = drop_points, result.low + shift, result.high + shift
        return result

    def decide(self, ctx: EvaluationContext) -> None:
        comparisons, self._comparisons = self._comparisons, None
        if not comparisons:
            return
        decision = broadcast_from_main(self.rule.on_round(ctx.step, comparisons))
        if decision is None:
            return
        if decision.action == "stop" and not ctx.training:  # a standalone evaluate(): nothing to stop
            self.rule.stop_step, self.rule.stop_reason = None, ""
        if decision.action == "stop" and ctx.training:
            self.rule.stop_step, self.rule.stop_reason = ctx.step, decision.reason
            ctx.stop(OWNER, "forgetting", decision.reason,
                     summary={"early_stop_step": ctx.step, "early_stop_rule": "forgetting",
                              "early_stop_reason": decision.reason})  # fmt: skip
        else:
            ctx.warn(OWNER, decision.reason)
        if ctx.is_main:
            self.write_record(ctx.args, {"global_step": ctx.step, "base_source": self.base_source,
                                         "state": self.state_dict()})  # fmt: skip

    def teardown(self, args: Any, state: Any, model: Any) -> None:
        if state.is_world_process_zero and (self.history or self.base_source):
            self.write_record(args, {"global_step": state.global_step, "base_source": self.base_source,
                                     "state": self.state_dict()})  # fmt: skip


__all__ = ["ForgettingGuard", "general_text_totals"]
