"""Win-rate arithmetic, prompt parsing and judged rounds with deterministic judges written here:
plain numbers checked against hand computations (and scipy / a hand-written logistic fit)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.stats import binomtest

from ft_callbacks.judge.cache import VerdictCache
from ft_callbacks.judge.pairwise import combine_orders, length_controlled, side_of, wilson_interval, win_rate
from ft_callbacks.judge.prompts import parse_rubric, parse_score, parse_verdict, rationale_of
from ft_callbacks.judge.protocol import Judge, Score, Verdict
from ft_callbacks.judge.rounds import JudgeRound


class AlwaysA(Judge):
    """Position bias at its worst: always prefers whatever is shown first."""

    def compare_one(self, request):
        return Verdict("A", rationale="first is best")


class ReferenceWords(Judge):
    """Prefers the answer sharing more words with the reference (a tie when equal); scores 1 + 9 x overlap."""

    def __init__(self):
        self.asked = 0

    @staticmethod
    def overlap(text, reference):
        ref = set(reference.split())
        return len(ref & set(text.split())) / len(ref)

    def compare_one(self, request):
        self.asked += 1
        a, b = self.overlap(request.output_a, request.reference), self.overlap(request.output_b, request.reference)
        return Verdict("A" if a > b else "B" if b > a else "tie", rationale=f"{a:.2f} vs {b:.2f}")

    def score_one(self, request):
        self.asked += 1
        value = 1 + 9 * self.overlap(request.output, request.reference)
        return Score(value, criteria={c: value for c in request.rubric})


class Broken(Judge):
    def compare_one(self, request):
        if "bad" in request.output_a + request.output_b:
            raise ConnectionError("judge down")
        return Verdict("A")


def test_orders_combine_agreement_wins_disagreement_ties_invalid_leaves():
    assert side_of("A", current_is_a=True) == "current" and side_of("A", current_is_a=False) == "base"
    assert side_of("tie", True) == "tie" and side_of(None, True) is None and side_of("maybe", True) is None
    assert combine_orders("current", "current").outcome == "current"
    assert combine_orders("current", "base").outcome == "tie" and combine_orders("current", "base").flipped
    assert combine_orders("tie", "current").flipped
    assert combine_orders(None, "current").outcome is None


def test_always_prefers_a_is_a_coin_flip_with_flip_rate_one():
    judge_round = JudgeRound(AlwaysA(), win_rate=True)
    result = judge_round.run(3, ["p1", "p2", "p3", "p4"], ["x", "yy", "z", "w"], base_outputs=["a", "b", "c", "d"])
    m = result.metrics
    assert m["win_rate"] == 0.5 and m["judge_flip_rate"] == 1.0 and m["tie_rate"] == 1.0
    assert m["judge_invalid_rate"] == 0.0
    assert [r["final_verdict"] for r in result.records] == ["tie"] * 4
    assert result.calls == 8  # two orders per pair


def test_hand_computed_round_with_wins_losses_ties_and_invalids():
    # Per pair (order 1 with the current output as A, order 2 with it as B), as sides:
    first = ["current", "current", "base", "tie", "current", None, "current"]
    second = ["current", "base", "base", "tie", "current", "current", None]
    w = win_rate(first, second, [10, 20, 30, 40, 50, 60, 70], [10, 10, 10, 10, 10, 10, 10])
    # valid pairs 0-4: wins {0, 4}, loss {2}, ties {1 (flip), 3}; pairs 5 and 6 are invalid (not losses)
    assert (w.valid, w.wins, w.losses, w.ties, w.flips) == (5, 2, 1, 2, 1)
    assert w.win_rate == pytest.approx((2 + 0.5 * 2) / 5)
    assert w.tie_rate == pytest.approx(2 / 5) and w.flip_rate == pytest.approx(1 / 5)
    assert w.invalid_rate == pytest.approx(2 / 7)
    assert w.length_ratio == pytest.approx(40 / 10)
    # Wilson's interval by hand for p = 0.6, n = 5
    z, p, n = 1.959963984540054, 0.6, 5
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (w.ci_low, w.ci_high) == pytest.approx((centre - half, centre + half))


@pytest.mark.parametrize(("wins", "n"), [(7, 10), (0, 12), (30, 31), (50, 100)])
def test_wilson_equals_scipy_for_whole_counts(wins, n):
    ci = binomtest(wins, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(wins / n, n) == pytest.approx((ci.low, ci.high), abs=1e-9)


def _logistic_by_hand(y, d):
    """Weighted logistic log-likelihood maximised with scipy (independent of scikit-learn): P(win | d = 0)."""
    x = np.asarray(d, float) / np.std(d)
    y = np.asarray(y, float)

    def nll(theta):
        z = theta[0] + theta[1] * x
        return float(np.sum(np.logaddexp(0, z) - y * z))

    theta = minimize(nll, [0.0, 0.0], method="BFGS", options={"gtol": 1e-10}).x
    return 1 / (1 + math.exp(-theta[0]))


def test_length_controlled_win_rate():
    # The longer answer always wins and the lengths are symmetric: raw 0.75, but at equal length a coin flip.
    d = [5, 10, 15, -5, 3, -2, 8, 1]
    y = [1, 1, 1, 0, 1, 0, 1, 0]
    lc = length_controlled(y, d)
    assert lc == pytest.approx(_logistic_by_hand(y, d), abs=1e-4)
    assert lc < 0.75  # length explained part of the raw win rate
    # With ties (half a win each) the fit is the soft-label maximum likelihood.
    y2 = [1, 0.5, 1, 0, 0.5, 0, 1, 0]
    assert length_controlled(y2, d) == pytest.approx(_logistic_by_hand(y2, d), abs=1e-4)
    # No spread in length: nothing to control for; one outcome class: the raw rate.
    assert length_controlled([1, 0, 1], [4, 4, 4]) == pytest.approx(2 / 3)
    assert length_controlled([1, 1, 1], [1, 2, 3]) == 1.0


def test_invalid_verdicts_leave_the_denominator_and_skip_the_round(tmp_path):
    prompts, outputs, bases = ["p"] * 5, ["good", "bad", "good", "bad", "good"], ["base"] * 5
    result = JudgeRound(Broken(), win_rate=True, max_invalid_rate=0.5).run(1, prompts, outputs, base_outputs=bases)
    # Pairs 1 and 3 errored (invalid, 40%), the rest always-A -> ties: win rate 0.5 over 3 valid pairs
    assert result.metrics["judge_invalid_rate"] == pytest.approx(0.4)
    assert result.metrics["win_rate"] == 0.5
    assert result.records[1]["final_verdict"] == "invalid" and result.records[1]["errors"]
    strict = JudgeRound(Broken(), win_rate=True, max_invalid_rate=0.2).run(1, prompts, outputs, base_outputs=bases)
    assert "win_rate" not in strict.metrics and strict.metrics["judge_invalid_rate"] == pytest.approx(0.4)
    assert "40% of the judge's verdicts were invalid" in strict.warnings[0] and "judge down" in strict.warnings[0]


def test_reference_judge_pointwise_rubric_and_cache(tmp_path):
    judge = ReferenceWords()
    cache = VerdictCache(tmp_path / "cache.sqlite")
    judge_round = JudgeRound(judge, rubric=parse_rubric("helpfulness, tone"), win_rate=True, cache=cache)
    refs = ["the cat sat", "a dog ran", "red blue green"]
    outputs = ["the cat sat", "a cat", "red"]
    bases = ["cat", "a dog ran", "red"]
    result = judge_round.run(10, ["p1", "p2", "p3"], outputs, refs, bases)
    scores = [1 + 9 * 1, 1 + 9 * 1 / 3, 1 + 9 * 1 / 3]
    assert result.metrics["judge_score"] == pytest.approx(sum(scores) / 3)
    assert result.metrics["judge_helpfulness"] == pytest.approx(sum(scores) / 3)
    # pair 0: current wins both orders; pair 1: base wins; pair 2: tie
    assert [r["final_verdict"] for r in result.records] == ["current", "base", "tie"]
    assert result.metrics["win_rate"] == pytest.approx(0.5) and result.metrics["judge_flip_rate"] == 0
    assert judge.asked == 3 + 6 and result.calls == 9
    # The same round again: every answer from the cache, zero calls; a fresh cache object on the same file too.
    again = JudgeRound(judge, rubric=("helpfulness", "tone"), win_rate=True,
                       cache=VerdictCache(tmp_path / "cache.sqlite")).run(10, ["p1", "p2", "p3"], outputs, refs, bases)
    assert judge.asked == 9 and again.calls == 0 and again.cached == 9 and again.metrics == result.metrics
    # The key is the question as shown (which text is A): swapping current and base asks the same two
    # questions in the other order (both cached); the pointwise question without a rubric is new.
    swapped = JudgeRound(judge, win_rate=True, cache=cache).run(10, ["p1"], ["cat"], refs[:1], ["the cat sat"])
    assert judge.asked == 9 + 1 and swapped.cached == 2 and swapped.records[0]["final_verdict"] == "base"


def test_errors_are_never_cached(tmp_path):
    cache = VerdictCache(tmp_path / "c.sqlite")
    JudgeRound(Broken(), win_rate=True, cache=cache).run(1, ["p", "p"], ["good", "bad"], base_outputs=["x", "y"])
    assert len(cache) == 2  # the good pair's two orders; the failing pair's are asked again next time


def test_parsing():
    assert parse_verdict("A is fine but B is better. Verdict: [[B]]") == "B"
    assert parse_verdict("[[A]] ... on reflection [[C]]") == "tie"
    assert parse_verdict("I cannot judge this.") is None and parse_verdict(None) is None
    assert parse_score("Helpfulness: [[8]]\nTone: [[6]]\nRating: [[7]]", ("helpfulness", "tone")) == (
        7.0, {"helpfulness": 8.0, "tone": 6.0})
    assert parse_score("Rating: [[11]]") == (None, {})
    assert parse_score("no rating") == (None, {})
    assert rationale_of("Clear and right. Verdict: [[A]]") == "Clear and right."
    assert parse_rubric(" helpfulness, correctness ,tone,") == ("helpfulness", "correctness", "tone")


def test_user_judge_needs_only_one_method():
    assert AlwaysA().can_compare and not AlwaysA().can_score
    assert ReferenceWords().can_score and ReferenceWords().can_compare
    result = JudgeRound(AlwaysA(), win_rate=True).run(0, ["p"], ["x"])  # no base outputs: no win rate
    assert result.metrics == {}


def test_judges_from_a_config_mapping_never_take_a_key():
    from ft_callbacks.core.errors import ConfigurationError

    judge = Judge.from_config({"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1", "max_calls": 5})
    assert judge.identity()["model"] == "m" and judge.max_calls == 5
    with pytest.raises(ConfigurationError, match="api_key_env"):
        Judge.from_config({"backend": "openai", "model": "m", "base_url": "x", "api_key": "sk-..."})
    with pytest.raises(ConfigurationError, match="'openai' or 'local'"):
        Judge.from_config({"model": "m"})
    with pytest.raises(ConfigurationError, match="colour"):
        Judge.from_config({"backend": "local", "model": "path", "colour": 1})


def test_logprob_weighted_rating_from_an_openai_response():
    """G-Eval: the rating is the probability-weighted mean of the score tokens the server returned at the
    rating's position, renormalised over them (non-score alternatives ignored)."""
    from openai.types.chat import ChatCompletionTokenLogprob
    from openai.types.chat.chat_completion_token_logprob import TopLogprob

    from ft_callbacks.judge.openai_backend import _rating_logprobs, weighted_score

    def token(text, alternatives):
        tops = [TopLogprob(token=t, logprob=math.log(p), bytes=None) for t, p in alternatives]
        return ChatCompletionTokenLogprob(token=text, logprob=tops[0].logprob, bytes=None, top_logprobs=tops)

    text = "Fine. Rating: [[7]]"
    content = [token("Fine.", [("Fine.", 1.0)]), token(" Rating", [(" Rating", 1.0)]), token(":", [(":", 1.0)]),
               token(" [[", [(" [[", 1.0)]), token("7", [("7", 0.5), ("8", 0.3), ("x", 0.1), ("6", 0.1)]),
               token("]]", [("]]", 1.0)])]  # fmt: skip
    alternatives = _rating_logprobs(content, text)
    value, shares = weighted_score(alternatives)
    assert value == pytest.approx((7 * 0.5 + 8 * 0.3 + 6 * 0.1) / 0.9)
    assert shares == pytest.approx({"7": 0.5 / 0.9, "8": 0.3 / 0.9, "6": 0.1 / 0.9})
    assert weighted_score([("x", 0.0)]) is None
