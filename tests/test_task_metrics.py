"""Structured-output, diversity and degeneration metrics against independent computations on tricky cases,
their config form (`metric_from_spec`), and how TextScorer / score_texts carry them."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest
import regex
import sacrebleu
from nltk.util import ngrams as nltk_ngrams

from ft_callbacks.core.diversity import Distinct, Length, Repetition, SelfBleu
from ft_callbacks.core.errors import ConfigurationError
from ft_callbacks.core.structured import JsonSchema, JsonValid, Regex, extract_json
from ft_callbacks.core.task_metrics import TASK_METRIC_KEYS, TaskMetric, metric_from_spec, task_metric_keys
from ft_callbacks.core.text_scores import TextScorer, score_texts

# (generated text, the substring a user's parser would hand to json.loads, or None when nothing parses)
JSON_CASES = [
    ('{"a": 1}', '{"a": 1}'),
    ('```json\n{"a": {"b": [1, 2, {"c": "d"}]}}\n```', '{"a": {"b": [1, 2, {"c": "d"}]}}'),
    ('```\n[1, 2, 3]\n```', "[1, 2, 3]"),  # a fence without a language tag
    ('Sure! Here it is:\n```JSON\n{"k": "v"}\n```\nAnything else?', '{"k": "v"}'),
    ('```python\nprint(1)\n```\n```json\n{"x": 2}\n```', '{"x": 2}'),  # the json-tagged block wins
    (
        'The answer is {"name": "Zoë", "emoji": "\\ud83d\\ude00"} as requested.',
        '{"name": "Zoë", "emoji": "\\ud83d\\ude00"}',
    ),
    ('{"quote": "he said \\"}\\" and left", "n": -1.5e3}', '{"quote": "he said \\"}\\" and left", "n": -1.5e3}'),
    ('{"a": 1,}', None),  # trailing comma
    ("{'a': 1}", None),  # single quotes
    ('{"a": NaN}', None),  # not RFC 8259 JSON although Python's json accepts it
    ("", None),
    ("   \n ", None),
    ("```json\n```", None),
    ('```json\n{"truncated": [1, 2', None),  # generation stopped mid-value, fence never closed
    ("42", "42"),
    ('"just a string"', '"just a string"'),
    ("null", "null"),
    ('prose [1, "two"] more prose {"late": true}', '[1, "two"]'),
    ('{"unicode": "日本語", "escaped\\u0041": "\\n"}', '{"unicode": "日本語", "escaped\\u0041": "\\n"}'),
]


def test_json_valid_against_hand_extracted_values():
    for text, extracted in JSON_CASES:
        ok, value, error = extract_json(text)
        if extracted is None:
            assert not ok and error, text
        else:
            assert ok, (text, error)
            assert value == json.loads(extracted), text
    scores = score_texts([t for t, _ in JSON_CASES], metrics=("json_valid",), per_sample=True)
    expected = [0.0 if e is None else 1.0 for _, e in JSON_CASES]
    assert scores.per_sample["json_valid"] == expected
    assert scores.corpus["json_valid_rate"] == pytest.approx(sum(expected) / len(expected))
    # extract="none": only a whole-text JSON value counts.
    strict = JsonValid(extract="none")([t for t, _ in JSON_CASES])["json_valid_rate"]
    assert strict == pytest.approx(sum(_whole_json(t) for t, _ in JSON_CASES) / len(JSON_CASES))


def _whole_json(text: str) -> float:
    try:
        json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except ValueError:
        return 0.0
    return 1.0


SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$defs": {
        "person": {
            "type": "object",
            "properties": {"name": {"type": "string", "minLength": 1}, "age": {"type": "integer", "minimum": 0}},
            "required": ["name", "age"],
            "additionalProperties": False,
        }
    },
    "type": "object",
    "properties": {"people": {"type": "array", "items": {"$ref": "#/$defs/person"}}, "tag": {"enum": ["a", "b"]}},
    "required": ["people"],
}


def test_json_schema_with_refs_and_the_failing_rule():
    outputs = [
        '{"people": [{"name": "Ann", "age": 3}], "tag": "a"}',
        '```json\n{"people": [{"name": "Ann", "age": -1}]}\n```',
        '{"people": [{"name": "", "age": 3}]}',
        '{"people": [{"name": "Bo", "age": 3, "extra": 1}]}',
        '{"tag": "c", "people": []}',
        '{"folks": []}',
        "no json here",
        "",
    ]
    scores = score_texts(outputs, metrics=(JsonSchema(SCHEMA),), per_sample=True)
    validator = jsonschema.Draft202012Validator(SCHEMA)
    expected = [1.0 if ok and validator.is_valid(value) else 0.0 for ok, value, _ in map(extract_json, outputs)]
    assert expected == [1, 0, 0, 0, 0, 0, 0, 0]
    assert scores.per_sample["json_schema_valid"] == expected
    assert scores.corpus["json_schema_valid_rate"] == pytest.approx(1 / 8)
    assert scores.corpus["json_valid_rate"] == pytest.approx(6 / 8)
    why = scores.details["json_schema_error"]
    assert why[0] == ""
    assert why[1].startswith("minimum at $.people[0].age")
    assert why[2].startswith("minLength at $.people[0].name")
    assert why[3].startswith("additionalProperties at $.people[0]")
    assert why[4].startswith("enum at $.tag")
    assert why[5].startswith("required at $")
    assert why[6].startswith("invalid JSON") and why[7] == "invalid JSON: empty output"


def test_bad_schemas_fail_at_construction(tmp_path):
    with pytest.raises(ConfigurationError, match="not valid at type"):
        JsonSchema({"type": "objekt"})
    with pytest.raises(ConfigurationError, match="cannot be resolved"):
        JsonSchema({"$ref": "#/$defs/missing"})
    with pytest.raises(ConfigurationError, match="cannot be resolved"):
        JsonSchema({"$ref": "https://example.com/remote.json"})
    with pytest.raises(ConfigurationError, match="exactly one"):
        JsonSchema()
    path = tmp_path / "schema.json"
    path.write_text("{not json")
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        JsonSchema(schema_file=str(path))
    path.write_text(json.dumps(SCHEMA))
    assert JsonSchema(schema_file=str(path))(['{"people": []}'])["json_schema_valid_rate"] == 1.0


REGEX_OUTPUTS = ["123", "123\n", " 42 ", "12a", "", "٣٤", "abc\n123", "007", "1\n2"]


@pytest.mark.parametrize(
    "patterns, require, options",
    [
        (r"^\d+$", "any", {}),
        (r"\d+", "any", {}),
        (r"[0-9]+", "any", {"strip": False}),
        (r"^[a-z]+$", "any", {"ignore_case": True}),
        ([r"\d+", r"[a-z]+\n\d+"], "any", {}),
        ([r"\d+", r"0\d*"], "all", {}),
        (r"^\d$", "any", {"multiline": True, "strip": False}),
    ],
)
def test_regex_full_match_against_the_regex_engine(patterns, require, options):
    metric = Regex(patterns, require=require, **options)
    pats = [patterns] if isinstance(patterns, str) else patterns
    flags = regex.IGNORECASE if options.get("ignore_case") else 0
    flags |= regex.MULTILINE if options.get("multiline") else 0
    test = all if require == "all" else any
    expected = []
    for text in REGEX_OUTPUTS:
        text = text if options.get("strip") is False else text.strip()
        expected.append(1.0 if test(regex.fullmatch(p, text, flags=flags | regex.V0) for p in pats) else 0.0)
    scores = score_texts(REGEX_OUTPUTS, metrics=(metric,), per_sample=True)
    assert scores.per_sample["regex_match"] == expected
    assert scores.corpus["regex_match_rate"] == pytest.approx(sum(expected) / len(expected))


def test_regex_anchors_do_not_let_a_trailing_newline_through():
    assert Regex(r"^\d+$", strip=False)(["123\n"])["regex_match_rate"] == 0.0  # re.search would accept it
    assert Regex(r"^\d+$")(["123\n"])["regex_match_rate"] == 1.0  # stripped
    with pytest.raises(ConfigurationError, match="does not compile"):
        Regex(r"(\d+")
    with pytest.raises(ConfigurationError):
        Regex([])


def tokens_of(texts):
    return [t.split() for t in texts]


DIVERSE = [
    "the cat sat on the mat",
    "the cat sat on the mat",
    "a dog ran in the park and the dog ran again",
    "",
    "zoë mange une pomme 🍎",
    "go go go go go go go go go",
]


def test_distinct_n_against_nltk_ngrams():
    scores = score_texts(DIVERSE, metrics=(Distinct(orders=(1, 2, 3)),))
    for n in (1, 2, 3):
        grams = [g for tokens in tokens_of(DIVERSE) for g in nltk_ngrams(tokens, n)]
        assert scores[f"distinct_{n}"] == pytest.approx(len(set(grams)) / len(grams))
    assert Distinct()([""])["distinct_1"] == 0.0


def test_repetition_4_against_a_hand_count():
    values = score_texts(DIVERSE, metrics=("repetition",), per_sample=True).per_sample["repetition_4"]
    # "a dog ran in the park and the dog ran again": 8 4-grams, all distinct; "go" x9: 6 4-grams, 1 distinct.
    assert values == pytest.approx([0, 0, 0, 0, 0, 5 / 6])
    assert Repetition()(["a b c d a b c d a b c d"])["repetition_4"] == pytest.approx(1 - 4 / 9)


def test_length_empty_and_truncated():
    scores = score_texts(DIVERSE, metrics=("mean_length", "empty", "truncated"), per_sample=True,
                         truncated=[False, True, True, False, False, True])  # fmt: skip
    lengths = [len(t.split()) for t in DIVERSE]
    assert scores.corpus["mean_length"] == pytest.approx(sum(lengths) / len(lengths))
    assert scores.corpus["empty_rate"] == pytest.approx(1 / 6)
    assert scores.corpus["truncated_rate"] == 0.5
    assert Length(tokenize=list)(["abc", "de"])["mean_length"] == 2.5  # characters as tokens
    with pytest.raises(ConfigurationError, match="truncated="):
        score_texts(DIVERSE, metrics=("truncated",))
    with pytest.raises(ConfigurationError, match="one per prediction"):
        score_texts(DIVERSE, metrics=("truncated",), truncated=[True])


@pytest.mark.parametrize("make, message", [
    (lambda: Distinct(orders=(0,)), "orders entry=0 is not valid"),
    (lambda: Distinct(orders=()), "orders is empty"),
    (lambda: Repetition(n=0), "n=0 is not valid"),
    (lambda: Repetition(n="4"), "n='4' is not valid"),
    (lambda: SelfBleu(max_samples=0), "max_samples=0 is not valid"),
    (lambda: SelfBleu(seed="x"), "seed='x' is not valid"),
])  # fmt: skip
def test_diversity_settings_fail_at_construction(make, message):
    with pytest.raises(ConfigurationError, match=message):
        make()


def test_self_bleu_against_sacrebleu_pairwise():
    texts = [t for t in DIVERSE if t]
    expected = sum(sacrebleu.sentence_bleu(h, texts[:i] + texts[i + 1 :]).score for i, h in enumerate(texts))
    assert SelfBleu()(texts)["self_bleu"] == pytest.approx(expected / len(texts))
    assert SelfBleu()(["same words here", "same words here"])["self_bleu"] == pytest.approx(100.0)
    assert SelfBleu()(["alpha beta gamma delta", "one two three four"])["self_bleu"] == pytest.approx(0.0)


def test_self_bleu_statistics_equal_the_sentence_score_loop():
    # Duplicates (an n-gram's top count held by two outputs), equal lengths, an empty output, unicode,
    # punctuation the 13a tokenizer splits, and a text whose top counts it alone holds.
    rng = random.Random(7)
    vocab = ["the", "cat", "sat", "on", "mat", "Zoë", "ñ", "!", "dog,", "ran.", "a", "a"]
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 14))) for _ in range(30)]
    texts += [texts[0], texts[3], "", "the the the the the the the the", "cat sat", "sat cat"]
    bleu = sacrebleu.BLEU(effective_order=True)
    for sample in (None, 7):
        metric = SelfBleu(max_samples=sample, seed=2)
        chosen = metric.hypotheses(len(texts))
        loop = [bleu.sentence_score(texts[i], texts[:i] + texts[i + 1 :]).score for i in chosen]
        assert metric(texts)["self_bleu"] == pytest.approx(sum(loop) / len(loop), abs=1e-9)


def test_self_bleu_sampled_above_max_samples():
    rng = random.Random(1)
    words = [f"w{i}" for i in range(50)]
    texts = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(60)]
    metric = SelfBleu(max_samples=10, seed=3)
    chosen = metric.hypotheses(len(texts))
    assert len(chosen) == 10 and chosen == metric.hypotheses(len(texts))  # seeded: the same sample each round
    expected = [sacrebleu.sentence_bleu(texts[i], texts[:i] + texts[i + 1 :]).score for i in chosen]
    assert metric(texts)["self_bleu"] == pytest.approx(sum(expected) / 10)
    full = SelfBleu(max_samples=None)(texts)["self_bleu"]
    assert abs(metric(texts)["self_bleu"] - full) < 10  # a sample estimates the full value


def test_metric_from_spec_reads_the_config_form(tmp_path):
    schema_file = tmp_path / "s.json"
    schema_file.write_text(json.dumps({"type": "object"}))
    specs = [
        "json_valid",
        {"json_schema": {"schema_file": str(schema_file)}},
        {"regex": r"^\d+$"},
        {"regex": {"patterns": ["a+", "b+"], "require": "any", "name": "ab"}},
        "distinct",
        {"self_bleu": {"max_samples": 50}},
        "repetition_4",
        "mean_length",
        "empty_rate",
        "rouge",
    ]
    metrics = [metric_from_spec(s) for s in specs]
    assert metrics[-1] == "rouge"
    keys = [k for m in metrics if isinstance(m, TaskMetric) for k in m.keys()]
    assert keys == ["json_valid_rate", "json_schema_valid_rate", "json_valid_rate", "regex_match_rate",
                    "ab_match_rate", "distinct_1", "distinct_2", "self_bleu", "repetition_4", "mean_length",
                    "empty_rate"]  # fmt: skip
    assert metrics[5].max_samples == 50
    for bad, match in [
        ({"regex": "(unclosed"}, "does not compile"),
        ({"json_schema": {"schema": {"type": 3}}}, "not valid"),
        ({"regex": "a", "json_valid": {}}, "exactly one key"),
        ({"rouge": {"use_stemmer": True}}, "not a task metric"),
        ({"self_bleu": {"max_sample": 5}}, "not valid"),
        ({"self_bleu": 5}, "mapping"),
        ("json_schema", "needs options"),
        (3, "not valid"),
    ]:
        with pytest.raises(ConfigurationError, match=match):
            metric_from_spec(bad)
    # The same specs straight into TextScorer (a config's metrics list).
    scores = score_texts(['{"a": 1}', "12"], metrics=specs[:4])
    assert scores == {"json_valid_rate": 1.0, "json_schema_valid_rate": 0.5, "regex_match_rate": 0.5,
                      "ab_match_rate": 0.0}  # fmt: skip
    assert set(TASK_METRIC_KEYS) >= {"json_valid", "regex", "self_bleu", "toxicity", "pass_at_k"}
    # What a callback declares before any scoring: the same keys the metrics then report.
    declared = task_metric_keys(["rouge", *metrics])
    assert declared == set(keys)
    for name in TASK_METRIC_KEYS:
        if name in ("json_schema", "regex", "pass_at_k", "toxicity"):
            continue  # need options
        assert set(metric_from_spec(name).keys()) == set(TASK_METRIC_KEYS[name]), name


def test_text_scorer_mixes_task_and_overlap_metrics():
    refs = ["42", "the cat", "x"]
    preds = ["42", "the dog", "```json\n[1]\n```"]
    scorer = TextScorer(("exact_match", "bleu", "json_valid", Regex(r"\d+"), "distinct", "self_bleu"), references=refs)
    scores = scorer.score(preds)
    assert scores.signatures["self_bleu"].startswith("self-nrefs:2|")
    assert scores.corpus["exact_match"] == pytest.approx(1 / 3)
    assert scores.corpus["json_valid_rate"] == pytest.approx(2 / 3)  # "42" is JSON too
    assert scores.corpus["regex_match_rate"] == pytest.approx(1 / 3)
    assert "bleu" in scores.signatures
    subset = scorer.score(["42"], indices=[0])
    assert subset.corpus["exact_match"] == 1.0 and subset.corpus["json_valid_rate"] == 1.0
    # Reference-free metrics need no references; reference metrics still say so.
    assert TextScorer(("json_valid",)).score(["{}"]).corpus == {"json_valid_rate": 1.0}
    with pytest.raises(ConfigurationError, match="no references"):
        TextScorer(("json_valid", "exact_match")).score(["{}"])


def test_clashing_keys_and_typos_fail_at_construction():
    with pytest.raises(ConfigurationError, match="name="):
        TextScorer((Regex("a"), Regex("b")))
    TextScorer((Regex("a"), Regex("b", name="regex_b")))
    TextScorer(("json_valid", JsonSchema({"type": "object"})))  # both report json_valid_rate: the same number
    with pytest.raises(ConfigurationError, match="did you mean 'json_valid'"):
        TextScorer(("json_vaild",))
    with pytest.raises(ConfigurationError, match="listed twice"):
        TextScorer(("distinct", "distinct_1"))
