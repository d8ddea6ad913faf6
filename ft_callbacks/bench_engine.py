"""lm-evaluation-harness on the live model: the benchmark rounds ForgettingGuard runs.

`BenchEngine` runs `lm_eval.simple_evaluate` on an `HFLM` that wraps the model being trained (no copy,
no save and reload) and returns, per task the user named, the aggregate scores with their standard
errors and the per-question scores (`log_samples=True`) that the paired test needs.

Several processes: lm-eval shards the questions by `lm.rank`/`lm.world_size` (each rank builds the
requests of every world_size-th document, pads its request list so every rank runs as many, and
gathers the per-question results to rank 0), but `HFLM` given a model object assumes one process and
its collectives go through an `accelerate.Accelerator` it never creates in that case. `_LiveHFLM`
gives lm-eval the rank and world size of the process group the Trainer runs in and plain
`torch.distributed` collectives, so each rank scores its share and the results are combined once
(rank 0's are then broadcast so every rank decides the same).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .core.errors import ConfigurationError
from .distributed import broadcast_from_main, is_distributed, rank, world_size

INSTALL_HINT = "pip install 'ft-callbacks[bench]'"
_TASK_MANAGERS: dict[tuple[str, ...], Any] = {}


def require_lm_eval() -> Any:
    """The `lm_eval` module, or a ConfigurationError naming the extra that installs it.

    Raises:
        ConfigurationError: lm-evaluation-harness is not installed.

    Example:
        >>> lm_eval = require_lm_eval()  # doctest: +SKIP
    """
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            f"ForgettingGuard(tasks=...) runs benchmarks with lm-evaluation-harness, which is not installed "
            f"({exc}). Install it with `{INSTALL_HINT}`, or use ForgettingGuard(general_text=...) alone."
        ) from None
    return lm_eval


def task_manager(include_path: Sequence[str], defaults: bool = True) -> Any:
    """One `TaskManager` per set of include paths, kept for the process: indexing lm-eval's own few
    thousand task YAMLs takes seconds, so `defaults=False` indexes only the user's folders."""
    key = (*include_path, str(defaults))
    if key not in _TASK_MANAGERS:
        from lm_eval.tasks import TaskManager

        with quiet():
            _TASK_MANAGERS[key] = TaskManager(include_path=list(include_path) or None, include_defaults=defaults)
    return _TASK_MANAGERS[key]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """lm-eval's and datasets' own logging and progress bars off for the block (ours says one line)."""
    names = ("lm-eval", "lm_eval", "lm_eval.evaluator", "lm_eval.models.huggingface", "lm_eval.api.task")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    before = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    try:
        import datasets

        bars = datasets.utils.logging.is_progress_bar_enabled()
        datasets.utils.logging.disable_progress_bar()
    except Exception:  # pragma: no cover - datasets ships with lm-eval
        datasets, bars = None, False
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    # The harness also prints (bootstrapping notes) and draws bars with disable=False: swallowed here.
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if before is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = before
        if datasets is not None and bars:
            datasets.utils.logging.enable_progress_bar()


def safe_name(name: str) -> str:
    """A task or metric name as part of a metric key: letters, digits and `_`."""
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_") or "task"


def _leaves(task_dict: dict[Any, Any]) -> dict[str, Any]:
    """Leaf task name -> Task object of a (possibly nested) lm-eval task dict."""
    out: dict[str, Any] = {}
    for key, value in task_dict.items():
        if isinstance(value, dict):
            out.update(_leaves(value))
        elif value is not None:
            out[getattr(key, "group_name", None) or str(key)] = value
    return out


def _top_level(task_dict: dict[Any, Any]) -> dict[str, list[str]]:
    """Each name the user gave (a task or a group) -> its leaf tasks."""
    out: dict[str, list[str]] = {}
    for key, value in task_dict.items():
        name = getattr(key, "group_name", None) or str(key)
        out[name] = list(_leaves(value)) if isinstance(value, dict) else [name]
    return out


@dataclass
class BenchRound:
    """One benchmark round, the same on every rank.

    `scores[task]["acc"]`, `scores[task]["acc_stderr"]`; `per_question[task][metric]`: "leaf/doc_id" ->
    score; `proportions[task]`: the metrics whose per-question scores are 0-1 and higher-is-better (their
    deltas are in points, the paired test applies)."""

    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    per_question: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    proportions: dict[str, list[str]] = field(default_factory=dict)
    questions: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"scores": self.scores, "per_question": self.per_question, "proportions": self.proportions,
                "questions": self.questions, "seconds": self.seconds}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchRound:
        return cls(
            scores=data.get("scores") or {}, per_question=data.get("per_question") or {},
            proportions=data.get("proportions") or {}, questions=int(data.get("questions") or 0),
            seconds=float(data.get("seconds") or 0.0),
        )  # fmt: skip


def _live_hflm(model: Any, tokenizer: Any, batch_size: int) -> Any:
    from lm_eval.models.huggingface import HFLM

    class _LiveHFLM(HFLM):
        """HFLM on the live model, with the rank of the Trainer's process group and torch.distributed collectives."""

        def __init__(self) -> None:
            with quiet():
                super().__init__(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
            self._rank, self._world_size = rank(), world_size()
            self.requests_here = 0  # log-likelihood requests this process ran (its share, padding included)

        def all_gather(self, tensor: Any) -> Any:
            if self.world_size <= 1:
                return tensor
            import torch
            import torch.distributed as dist

            tensor = tensor.reshape(-1) if tensor.dim() == 0 else tensor
            parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
            dist.all_gather(parts, tensor.contiguous())
            return torch.cat(parts)

        def gather_object(self, obj: Any, dst: int = 0) -> Any:
            # lm-eval gives rank r the documents r, r + W, r + 2W, ... and concatenates the ranks' lists; put
            # them back in document order, so the per-question lists (and the bootstrap standard errors
            # computed from them) are exactly one process's.
            parts = super().gather_object(obj, dst)
            if parts is None or self.world_size <= 1:
                return parts
            merged = _interleave(parts)
            return parts if merged is None else [merged]

        def barrier(self) -> None:
            if self.world_size > 1:
                import torch.distributed as dist

                dist.barrier()

        # The harness's own progress bars stay off: one line per round says how long it took.
        def loglikelihood(self, requests, disable_tqdm: bool = False):
            self.requests_here += len(requests)
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=True)

    return _LiveHFLM()


def _interleave(parts: list[Any]) -> Any:
    """Per-rank {task: [per-document values]} (or {task: {metric: [values]}}) in document order, or None
    for any other shape."""
    if all(isinstance(p, list) for p in parts):
        longest = max(len(p) for p in parts)
        if any(len(p) not in (longest, longest - 1) for p in parts):
            return None
        return [p[i] for i in range(longest) for p in parts if i < len(p)]
    if all(isinstance(p, dict) for p in parts) and all(p.keys() == parts[0].keys() for p in parts):
        out = {}
        for key in parts[0]:
            merged = _interleave([p[key] for p in parts])
            if merged is None:
                return None
            out[key] = merged
        return out
    return None


class BenchEngine:
    """lm-eval tasks scored on a live model.

    Args:
        tasks: lm-eval task or group names ("arc_easy", "mmlu", or a task of `include_path`).
        include_path: folders of the user's own task YAMLs.
        limit: questions per (leaf) task: a fixed subset drawn with `seed` (None: all).
        batch_size: HFLM's batch size.
        num_fewshot: few-shot examples (None: each task's own setting).
        seed: lm-eval's seeds and the subset's.
        bootstrap_iters: lm-eval's bootstrap resamples for standard errors of non-mean metrics.

    Example:
        engine = BenchEngine(["my_task"], include_path=["my_tasks/"], limit=200)
        engine.check()
        scores = engine.run(model, tokenizer).scores
    """

    def __init__(
        self,
        tasks: Sequence[str],
        include_path: Sequence[str] = (),
        limit: int | None = None,
        batch_size: int = 8,
        num_fewshot: int | None = None,
        seed: int = 0,
        bootstrap_iters: int = 100000,
    ) -> None:
        self.tasks = list(tasks)
        self.include_path = list(include_path)
        self.limit = limit
        self.batch_size = batch_size
        self.num_fewshot = num_fewshot
        self.seed = seed
        self.bootstrap_iters = bootstrap_iters
        self.groups: dict[str, list[str]] = {}
        self.sizes: dict[str, int] = {}
        self.samples: dict[str, list[int]] | None = None
        self._manager: Any = None
        self._lm: Any = None
        self._tokenizer_copy: tuple[Any, Any] | None = None
        self.requests_here = 0  # log-likelihood requests the last round ran in this process

    def check(self) -> None:
        """Load every task (its config and data) now, so a name or data file that cannot load fails
        before training; draw the fixed subset.

        Raises:
            ConfigurationError: lm-eval missing, an unknown task, or a task whose data cannot be read.
        """
        require_lm_eval()
        for folder in self.include_path:
            if not os.path.isdir(folder):
                raise ConfigurationError(
                    f"ForgettingGuard(include_path={folder!r}): no such folder. Point it at the folder of your "
                    "lm-eval task YAMLs."
                )
        # The user's own tasks alone when they name only those (seconds faster), else lm-eval's too.
        manager = task_manager(self.include_path, defaults=False) if self.include_path else None
        if manager is None or not set(self.tasks) <= set(manager.all_tasks):
            manager = task_manager(self.include_path)
        unknown = [t for t in self.tasks if t not in set(manager.all_tasks)]
        if unknown:
            where = (
                f" or in include_path={self.include_path}" if self.include_path
                else " (pass include_path= for your own task YAMLs)"
            )  # fmt: skip
            raise ConfigurationError(
                f"ForgettingGuard: lm-eval knows no task {unknown} among its tasks{where}. List them with "
                "`lm-eval ls tasks`; check the `task:` name in your YAML."
            )
        from lm_eval.tasks import get_task_dict

        try:
            try:
                with quiet():
                    task_dict = get_task_dict(self.tasks, manager)
            except Exception:
                if manager is task_manager(self.include_path):
                    raise
                manager = task_manager(self.include_path)  # a YAML may include one of lm-eval's templates
                with quiet():
                    task_dict = get_task_dict(self.tasks, manager)
        except Exception as exc:
            raise ConfigurationError(
                f"ForgettingGuard could not load the tasks {self.tasks} ({type(exc).__name__}: {exc}). Offline, hub "
                "datasets cannot be downloaded: use local task YAMLs with local data files (include_path=...)."
            ) from None
        self._manager = manager
        self.groups = _top_level(task_dict)
        leaves = _leaves(task_dict)
        self.sizes = {name: len(task.eval_docs) for name, task in leaves.items()}
        if self.limit is None:
            self.samples = None
            return
        self.samples = {}
        for name, size in self.sizes.items():
            rng = np.random.default_rng([self.seed, zlib.crc32(name.encode())])
            chosen = rng.choice(size, size=min(self.limit, size), replace=False)
            self.samples[name] = sorted(int(i) for i in chosen)

    def settings(self) -> dict[str, Any]:
        """What the rounds depend on (for the base scores' fingerprint)."""
        import lm_eval

        return {
            "tasks": self.tasks, "include_path": [os.path.abspath(p) for p in self.include_path],
            "sizes": self.sizes, "samples": self.samples, "num_fewshot": self.num_fewshot, "seed": self.seed,
            "lm_eval": getattr(lm_eval, "__version__", ""),
        }  # fmt: skip

    def run(self, model: Any, tokenizer: Any) -> BenchRound:
        """One round on `model` as it is (the caller sets eval mode and no grad). Collective under
        several processes: every rank calls it, each scores its share; every rank gets the result.

        Raises:
            Exception: whatever lm-eval raised (on rank 0; other ranks raise RuntimeError).
        """
        import lm_eval

        start = time.perf_counter()
        error: str | None = None
        round_: BenchRound | None = None
        try:
            lm = _live_hflm(model, self._own_copy(tokenizer), self.batch_size)
            self._lm = lm
            seed = self.seed
            with quiet():
                results = lm_eval.simple_evaluate(
                    model=lm, tasks=list(self.tasks), task_manager=self._manager or task_manager(self.include_path),
                    num_fewshot=self.num_fewshot, samples=self.samples, log_samples=True,
                    bootstrap_iters=self.bootstrap_iters, random_seed=seed, numpy_random_seed=seed,
                    torch_random_seed=seed, fewshot_random_seed=seed,
                )  # fmt: skip
            if results is not None:  # rank 0
                round_ = self._collect(results)
        except Exception as exc:
            if not is_distributed():
                raise
            error = f"{type(exc).__name__}: {exc}"
        if is_distributed():
            # Rank 0's round (or the first error) on every rank, so every rank decides the same.
            errors = [e for e in _all_errors(error) if e]
            if errors:
                raise RuntimeError(errors[0])
            round_ = broadcast_from_main(round_)
        assert round_ is not None
        self.requests_here = getattr(self._lm, "requests_here", 0)
        self._lm = None  # the HFLM holds the model: not kept between rounds
        round_.seconds = time.perf_counter() - start
        return round_

    def _own_copy(self, tokenizer: Any) -> Any:
        """A copy of the user's tokenizer for lm-eval, which sets a missing pad token on the one it gets
        (the training's collator must not see a pad token appear mid-run)."""
        if self._tokenizer_copy is None or self._tokenizer_copy[0] is not tokenizer:
            import copy

            self._tokenizer_copy = (tokenizer, copy.deepcopy(tokenizer))
        return self._tokenizer_copy[1]

    def _collect(self, results: dict[str, Any]) -> BenchRound:
        out = BenchRound()
        samples = results.get("samples") or {}
        higher = results.get("higher_is_better") or {}
        for name, leaves in self.groups.items():
            aggregate = (results.get("results") or {}).get(name, {})
            scores: dict[str, float] = {}
            for key, value in aggregate.items():
                if "," not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                    continue
                metric, filter_name = key.split(",", 1)
                label = metric if filter_name == "none" else f"{metric}_{filter_name}"
                stderr = metric.endswith("_stderr")
                base_label = label.replace("_stderr", "", 1) if stderr else label
                scores[f"{safe_name(base_label)}_stderr" if stderr else safe_name(label)] = float(value)
            per_question: dict[str, dict[str, float]] = {}
            raw_metric: dict[str, str] = {}
            for leaf in leaves:
                for sample in samples.get(leaf, []):
                    filter_name = sample.get("filter", "none")
                    for metric in sample.get("metrics", []):
                        value = sample.get(metric)
                        if isinstance(value, bool) or not isinstance(value, (int, float)):
                            continue
                        label = safe_name(metric if filter_name == "none" else f"{metric}_{filter_name}")
                        per_question.setdefault(label, {})[f"{leaf}/{sample['doc_id']}"] = float(value)
                        raw_metric[label] = metric
            proportions = []
            for label, values in per_question.items():
                metric = raw_metric[label]
                better = higher.get(leaves[0], {}).get(metric, higher.get(name, {}).get(metric, True))
                array = np.fromiter(values.values(), dtype=float)
                if label in scores and better and array.size and np.all((array >= 0) & (array <= 1)):
                    proportions.append(label)
            out.scores[name] = scores
            out.per_question[name] = {k: v for k, v in per_question.items() if k in proportions}
            out.proportions[name] = proportions
            out.questions += sum(len(samples.get(leaf, [])) for leaf in leaves) // max(1, _filters(samples, leaves))
        return out


def _filters(samples: dict[str, list[dict[str, Any]]], leaves: list[str]) -> int:
    names = {s.get("filter", "none") for leaf in leaves for s in samples.get(leaf, [])}
    return max(1, len(names))


def _all_errors(error: str | None) -> list[str | None]:
    from .distributed import all_gather_objects

    return all_gather_objects(error)
