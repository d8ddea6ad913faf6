"""A judge that is an in-process Hugging Face causal LM: no server, probabilities for free.

The judge prompt (the same versioned templates as the API judge) is followed by the start of the
answer, `Rating: [[` or `Verdict: [[`, and one batched forward pass gives the next-token distribution:

- pointwise: the probability-weighted mean of the score tokens 1-10, renormalised over them (G-Eval);
  each rubric criterion the same way after `<criterion>: [[`;
- pairwise: the probabilities of `A`, `B` and `C` (tie), renormalised; the verdict is the likeliest.

The model loads lazily (at the first question), runs batched with left padding, and goes back to the
CPU after each round (`release()`), so it never holds accelerator memory during training steps.
"""

from __future__ import annotations

import inspect
import threading
from typing import Any

from ..core.errors import ConfigurationError
from .prompts import SCORE_PREFIX, VERDICT_PREFIX, pairwise_messages, pointwise_messages
from .protocol import Judge, PairRequest, Score, ScoreRequest, Verdict

__all__ = ["LocalJudge"]


class LocalJudge(Judge):
    """An in-process causal LM as the judge.

    Args:
        model: a path or hub name (loaded with `AutoModelForCausalLM` on first use) or a loaded model.
        tokenizer: its tokenizer (default: loaded from `model`'s path).
        device: where it runs during a round ("cuda", "cpu"; default: CUDA when available).
        batch_size: prompts per forward pass.
        max_length: prompts longer than this many tokens are cut from the left (default: the model's context).

    Raises:
        ConfigurationError: a tokenizer without single-token digits or letters A/B/C (it cannot read the
            judge's answer), a model that cannot be loaded.

    Example:
        >>> judge = Judge.local("Qwen/Qwen2.5-0.5B-Instruct", batch_size=16)
        >>> GenerationScorer(prompts, refs, judge=judge, rubric="helpfulness, correctness", win_rate=True)
    """

    def __init__(
        self, model: Any, tokenizer: Any = None, *, device: str | None = None, batch_size: int = 8,
        max_length: int | None = None,
    ) -> None:  # fmt: skip
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"Judge.local(batch_size={batch_size!r}): use a positive whole number.")
        if not isinstance(model, str) and not hasattr(model, "forward"):
            raise ConfigurationError(f"Judge.local(model={type(model).__name__}): give a path or a loaded causal LM.")
        self._source = model
        self._model: Any = model if not isinstance(model, str) else None
        self._tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self._lock = threading.Lock()
        self.forward_passes = 0

    # -- loading ------------------------------------------------------------------------------------
    def _load(self) -> tuple[Any, Any]:
        with self._lock:
            if self._model is None:
                from transformers import AutoModelForCausalLM

                try:
                    self._model = AutoModelForCausalLM.from_pretrained(self._source)
                except (OSError, ValueError) as exc:
                    raise ConfigurationError(f"Judge.local could not load {self._source!r} ({exc}).") from None
            if self._tokenizer is None:
                from transformers import AutoTokenizer

                source = self._source if isinstance(self._source, str) else self._model.config._name_or_path
                self._tokenizer = AutoTokenizer.from_pretrained(source)
            self._model.eval()
            return self._model, self._tokenizer

    def _device(self) -> str:
        if self.device is not None:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def identity(self) -> dict[str, Any]:
        from ..base_model import model_identity

        model, _ = self._load()
        return {"backend": "local", **model_identity(model)}

    def release(self) -> None:
        """Back to the CPU between rounds (no accelerator memory held during training steps)."""
        model = self._model
        if model is None:
            return
        import torch

        if next(model.parameters()).device.type != "cpu":
            model.to("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # -- the prompts ---------------------------------------------------------------------------------
    def prompt_text(self, messages: list[dict], answer_start: str) -> str:
        """The judge prompt as text, followed by the start of the answer."""
        _, tokenizer = self._load()
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:  # a base model: a plain transcript
            text = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages) + "Assistant: "
        return text + answer_start

    def candidate_ids(self, candidates: list[str]) -> dict[str, int]:
        """The token id of each candidate that is one token (others cannot be read in one step)."""
        _, tokenizer = self._load()
        ids = {}
        for candidate in candidates:
            encoded = tokenizer.encode(candidate, add_special_tokens=False)
            if len(encoded) == 1:
                ids[candidate] = encoded[0]
        return ids

    def next_token_probabilities(self, texts: list[str]) -> Any:
        """Softmax of the next-token logits after each text (rows in order), batched with left padding."""
        import torch

        model, tokenizer = self._load()
        device = self._device()
        if next(model.parameters()).device.type != torch.device(device).type:
            model.to(device)
        limit = self.max_length or getattr(model.config, "max_position_embeddings", None) or \
            getattr(model.config, "n_positions", None)  # fmt: skip
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        takes_positions = "position_ids" in inspect.signature(model.forward).parameters
        rows = []
        for start in range(0, len(texts), self.batch_size):
            encoded = [tokenizer.encode(t, add_special_tokens=False) for t in texts[start : start + self.batch_size]]
            encoded = [ids[-limit:] if limit else ids for ids in encoded]
            width = max(len(ids) for ids in encoded)
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded], device=device)
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=device)
            inputs = {"input_ids": input_ids, "attention_mask": mask}
            if takes_positions:  # left padding must not shift the real tokens' positions
                inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                logits = model(**inputs).logits[:, -1, :].float()
            self.forward_passes += 1
            rows.append(torch.softmax(logits, dim=-1).cpu())
        return torch.cat(rows)

    # -- questions -----------------------------------------------------------------------------------
    def score(self, requests: list[ScoreRequest]) -> list[Score]:
        digits = self.candidate_ids([str(n) for n in range(1, 11)])
        if not digits:
            raise ConfigurationError("Judge.local: the tokenizer has no single-token digits 1-10 to read a rating.")
        texts, where = [], []
        for i, request in enumerate(requests):
            messages = pointwise_messages(request.prompt, request.output, request.reference, request.rubric)
            texts.append(self.prompt_text(messages, SCORE_PREFIX))
            where.append((i, None))
            for criterion in request.rubric:
                texts.append(self.prompt_text(messages, f"{criterion}: [["))
                where.append((i, criterion))
        probabilities = self.next_token_probabilities(texts)
        results = [Score(None) for _ in requests]
        for row, (i, criterion) in enumerate(where):
            mass = {d: float(probabilities[row, token]) for d, token in digits.items()}
            total = sum(mass.values())
            if total <= 0:
                continue
            value = sum(int(d) * p for d, p in mass.items()) / total
            if criterion is None:
                results[i].value = value
                results[i].probabilities = {d: p / total for d, p in mass.items()}
            else:
                results[i].criteria[criterion] = value
        return results

    def compare(self, requests: list[PairRequest]) -> list[Verdict]:
        letters = self.candidate_ids(["A", "B", "C"])
        if len(letters) < 3:
            raise ConfigurationError("Judge.local: the tokenizer has no single tokens 'A', 'B', 'C' to read a verdict.")
        texts = [self.prompt_text(pairwise_messages(r.prompt, r.output_a, r.output_b, r.reference), VERDICT_PREFIX)
                 for r in requests]  # fmt: skip
        probabilities = self.next_token_probabilities(texts)
        verdicts = []
        for row in range(len(requests)):
            mass = {name: float(probabilities[row, letters[letter]])
                    for name, letter in (("A", "A"), ("B", "B"), ("tie", "C"))}  # fmt: skip
            total = sum(mass.values())
            if total <= 0:
                verdicts.append(Verdict(None, error="no probability on A, B or C"))
                continue
            shares = {k: v / total for k, v in mass.items()}
            verdicts.append(Verdict(max(shares, key=shares.get), probabilities=shares))
        return verdicts
