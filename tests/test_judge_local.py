"""Judge.local: an in-process causal LM judge. Its probability-weighted ratings and verdict probabilities
equal a hand computation from the model's next-token probabilities (unbatched, unpadded), it loads
lazily, and it judges a real Trainer run."""

from __future__ import annotations

import pytest
import torch

from ft_callbacks import GenerationScorer, toy
from ft_callbacks.judge import Judge, PairRequest, ScoreRequest
from ft_callbacks.judge.prompts import pairwise_messages, pointwise_messages

from .helpers import lm_trainer


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("local_judge")
    model = toy.tiny_gpt2(tokenizer, n_positions=1024, seed=3)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def by_hand(model, tokenizer, messages, answer_start, candidates):
    """Next-token probabilities of `candidates` after the plain transcript, one example, no padding."""
    text = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages) + "Assistant: " + answer_start
    ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
    with torch.no_grad():
        probabilities = torch.softmax(model(input_ids=ids).logits[0, -1].float(), -1)
    return {c: float(probabilities[tokenizer.encode(c, add_special_tokens=False)[0]]) for c in candidates}


def test_weighted_scores_and_verdicts_equal_a_hand_computation(judge_dir):
    judge = Judge.local(str(judge_dir), batch_size=2)
    assert judge._model is None  # lazy: nothing loaded until the first question
    requests = [ScoreRequest("Sort a list", "sorted(x)", "use sorted()", ("tone",)),
                ScoreRequest("Open a file in Python and read it", "open(p).read()"),
                ScoreRequest("x", "a much longer answer that pads the others in its batch", None, ("tone",))]
    scores = judge.score(requests)
    model, tokenizer = judge._load()
    digits = [str(n) for n in range(1, 11) if len(tokenizer.encode(str(n), add_special_tokens=False)) == 1]
    assert len(digits) >= 9
    for request, score in zip(requests, scores, strict=True):
        messages = pointwise_messages(request.prompt, request.output, request.reference, request.rubric)
        mass = by_hand(model, tokenizer, messages, "Rating: [[", digits)
        expected = sum(int(d) * p for d, p in mass.items()) / sum(mass.values())
        assert score.value == pytest.approx(expected, rel=1e-5)
        assert 1 <= score.value <= 10 and sum(score.probabilities.values()) == pytest.approx(1)
        for criterion in request.rubric:
            mass = by_hand(model, tokenizer, messages, f"{criterion}: [[", digits)
            assert score.criteria[criterion] == pytest.approx(sum(int(d) * p for d, p in mass.items())
                                                              / sum(mass.values()), rel=1e-5)  # fmt: skip
    assert judge.forward_passes == 3  # 5 texts in batches of 2
    pairs = [PairRequest("Sort a list", "sorted(x)", "x.sort()"), PairRequest("p", "a", "a longer answer b")]
    verdicts = judge.compare(pairs)
    for request, verdict in zip(pairs, verdicts, strict=True):
        mass = by_hand(model, tokenizer, pairwise_messages(request.prompt, request.output_a, request.output_b),
                       "Verdict: [[", ["A", "B", "C"])  # fmt: skip
        total = sum(mass.values())
        expected = {"A": mass["A"] / total, "B": mass["B"] / total, "tie": mass["C"] / total}
        assert verdict.probabilities == pytest.approx(expected, rel=1e-5)
        assert verdict.winner == max(expected, key=expected.get)
    judge.release()
    assert next(model.parameters()).device.type == "cpu"


def test_local_judge_in_a_trainer_run(judge_dir, tokenizer, corpus, tmp_path):
    words = [t.split() for t in corpus[:8]]
    prompts, references = [" ".join(w[:6]) for w in words], [" ".join(w[6:16]) or w[-1] for w in words]
    scorer = GenerationScorer(prompts, references, metrics=("rouge",), num_samples=4, max_new_tokens=6,
                              judge=Judge.local(str(judge_dir)), rubric="tone", win_rate=True, background=False)
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [scorer], max_steps=10, eval_steps=10, report_to="none")
    trainer.train()
    entry = next(e for e in trainer.state.log_history if "eval_win_rate" in e)
    assert 1 <= entry["eval_judge_score"] <= 10 and 1 <= entry["eval_judge_tone"] <= 10
    assert 0 <= entry["eval_win_rate"] <= 1 and entry["eval_judge_invalid_rate"] == 0
