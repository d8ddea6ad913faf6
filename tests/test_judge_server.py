"""The OpenAI-compatible judge over real HTTP: `transformers serve` on a loopback port with a tiny model
trained to answer `[[A]] Rating: [[7]]` (always position A), started once for the module. Preflight,
pointwise and pairwise calls counted by the server's own access log (two per pair, zero when cached),
malformed answers counted invalid, 429s and timeouts through a fault-injecting proxy (backoff, then
success), a Trainer run whose files never hold the API key, and the server killed mid-round."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from ft_callbacks import GenerationScorer
from ft_callbacks.core.errors import ConfigurationError
from ft_callbacks.judge import Judge, PairRequest, ScoreRequest
from ft_callbacks.judge.cache import VerdictCache
from ft_callbacks.judge.rounds import JudgeRound

from .helpers import free_port, lm_trainer
from .judge_server import FaultProxy, Server, train_judge_model

pytestmark = pytest.mark.slow  # one server start (~10-30 s) for the module

SECRET = "sk-ftcb-test-7f3a9c1e5b2d4680-do-not-log"


@pytest.fixture(scope="module")
def server(tmp_path_factory, tokenizer, corpus):
    folder = tmp_path_factory.mktemp("judge_server")
    model_dir = train_judge_model(tokenizer, corpus, folder / "model")
    started = Server(model_dir, free_port(), folder / "server.log")
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


def openai_judge(server, **options):
    settings = {"max_tokens": 16, "backoff": 0.05, "max_retries": 2, "timeout": 30.0}
    settings.update(options)
    base_url = settings.pop("base_url", server.url)
    return Judge.openai(model=str(server.model_dir), base_url=base_url, **settings)


def prompt_pairs(corpus, count=8):
    prompts, references = [], []
    for text in corpus[:count]:
        words = text.split()
        prompts.append(" ".join(words[:6]))
        references.append(" ".join(words[6:20]) or words[-1])
    return prompts, references


def test_preflight_names_the_fix_before_step_one(server, tokenizer, corpus, tmp_path):
    with pytest.raises(ConfigurationError, match=r"could not reach the judge .* base_url"):
        openai_judge(server, base_url=f"http://127.0.0.1:{free_port()}/v1").preflight()
    before = server.requests()
    wrong_model = openai_judge(server)
    wrong_model.model = "no-such-model"
    scorer = GenerationScorer(*prompt_pairs(corpus), metrics=("rouge",), num_samples=2, max_new_tokens=4,
                              judge=wrong_model, win_rate=True, background=False)  # fmt: skip
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [scorer], max_steps=5, eval_steps=5, report_to="none")
    with pytest.raises(ConfigurationError, match=r"does not serve model 'no-such-model'.*Judge\.openai\(model"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert server.requests() == before + 1  # the preflight only


def test_two_calls_per_pair_zero_when_cached(server, tmp_path):
    judge = openai_judge(server, max_concurrency=4)
    prompts, outputs, bases = ["sort a list", "open a file", "join paths"], ["sorted(x)", "open(p)", "a / b"], \
        ["x.sort()", "io.open(p)", "os.path.join(a, b)"]  # fmt: skip
    before = server.requests()
    result = JudgeRound(judge, ("tone",), win_rate=True, cache=VerdictCache(tmp_path / "c.sqlite")).run(
        5, prompts, outputs, None, bases)
    assert server.requests() - before == 3 + 2 * 3  # a score per output, both orders per pair
    assert result.calls == 9 and judge.usage_summary()["calls"] == 9
    # A judge that always answers A: every pair flips, a tie; the rating parsed from the answer.
    assert result.metrics["win_rate"] == 0.5 and result.metrics["judge_flip_rate"] == 1.0
    assert result.metrics["judge_invalid_rate"] == 0.0 and result.metrics["judge_score"] == 7.0
    assert result.records[0]["verdict_current_first"] == "current" and result.records[0]["final_verdict"] == "tie"
    again = JudgeRound(openai_judge(server), ("tone",), win_rate=True,
                       cache=VerdictCache(tmp_path / "c.sqlite")).run(5, prompts, outputs, None, bases)  # fmt: skip
    assert server.requests() - before == 9 and again.calls == 0 and again.metrics == result.metrics


def test_malformed_answers_are_invalid_not_low(server):
    judge = openai_judge(server, max_tokens=2, pairwise=False)  # the answer cut before its rating
    result = JudgeRound(judge, max_invalid_rate=0.2).run(1, ["p", "q"], ["a", "b"])
    assert "judge_score" not in result.metrics
    assert "100% of the judge's scores were invalid" in result.warnings[0]
    score = judge.score([ScoreRequest("p", "a")])[0]
    assert score.value is None and score.error is None and score.raw.startswith("[[A]]")


@pytest.mark.serial  # asserts wall-clock bounds: run alone, not beside a parallel worker
def test_429s_and_timeouts_back_off_then_succeed(server):
    proxy = FaultProxy(server.port, fail=2)
    try:
        before = server.requests()
        judge = openai_judge(server, base_url=proxy.url, backoff=0.05)
        verdict = judge.compare([PairRequest("p", "a", "b")])[0]
        assert verdict.winner == "A" and verdict.error is None
        usage = judge.usage_summary()
        assert (usage["calls"], usage["attempts"], usage["retries"]) == (1, 3, 2)
        assert server.requests() - before == 1  # the 429s never reached the server
    finally:
        proxy.stop()
    slow = FaultProxy(server.port, slow=1, delay=3.0)
    try:
        judge = openai_judge(server, base_url=slow.url, timeout=1.0, backoff=0.05)
        started = time.monotonic()
        verdict = judge.compare([PairRequest("p", "a", "b")])[0]
        assert verdict.winner == "A" and judge.usage_summary()["retries"] == 1
        assert time.monotonic() - started < 3.0  # the slow answer was not waited for
    finally:
        slow.stop()
    gone = openai_judge(server, base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=1)
    verdict = gone.compare([PairRequest("p", "a", "b")])[0]
    assert verdict.winner is None and "Connection" in verdict.error  # invalid, not a loss


def test_budget_stops_judging_loudly(server):
    judge = openai_judge(server, max_calls=3, pairwise=True, pointwise=False)
    result = JudgeRound(judge, win_rate=True).run(1, ["p1", "p2", "p3"], ["a", "b", "c"], None, ["x", "y", "z"])
    assert judge.usage_summary()["calls"] == 3
    assert any("budget is spent" in w and "max_calls=3" in w for w in result.warnings)
    assert "win_rate" not in result.metrics  # 3 of 6 verdicts missing: invalid, not losses


def test_cost_budget_from_the_servers_token_counts(server):
    # One call at a time: with more in flight, those already sent when the cost is reached still finish.
    judge = openai_judge(server, pointwise=False, price_per_1k_input=1.0, price_per_1k_output=1.0, max_cost=1e-6,
                         max_concurrency=1)  # fmt: skip
    verdicts = judge.compare([PairRequest("p", "a", "b"), PairRequest("q", "c", "d")])
    usage = judge.usage_summary()
    assert usage["calls"] == 1 and usage["prompt_tokens"] > 0 and usage["cost"] > 1e-6  # the server's counts
    assert verdicts[0].winner == "A" and verdicts[1].error.startswith("budget: estimated cost")


def test_trainer_run_over_http_keeps_the_key_secret(server, tokenizer, corpus, tmp_path, monkeypatch, wandb_offline,
                                                     capsys):  # fmt: skip
    monkeypatch.setenv("FT_TEST_JUDGE_KEY", SECRET)
    judge = openai_judge(server, api_key_env="FT_TEST_JUDGE_KEY", max_concurrency=2)
    scorer = GenerationScorer(*prompt_pairs(corpus), metrics=("rouge",), num_samples=3, max_new_tokens=6,
                              judge=judge, rubric="tone", win_rate=True, background=False)  # fmt: skip
    before = server.requests()
    trainer = lm_trainer(tokenizer, corpus, tmp_path / "run", [scorer], max_steps=10, eval_steps=10,
                         save_strategy="steps", save_steps=10, report_to="wandb")  # fmt: skip
    trainer.train()
    entry = next(e for e in trainer.state.log_history if e.get("step") == 10 and "eval_win_rate" in e)
    assert entry["eval_win_rate"] == 0.5 and entry["eval_judge_flip_rate"] == 1.0 and entry["eval_judge_score"] == 7.0
    assert "eval_judge_tone" not in entry  # this judge rates overall only: a criterion it never rated is not made up
    usage = judge.usage_summary()
    assert server.requests() - before == usage["calls"] == 1 + 3 + 3 + 2 * 3  # preflight, 2 x scores, pairs
    import wandb

    wandb.finish()
    leaked = []
    for folder in (tmp_path, Path(os.environ["WANDB_DIR"])):
        for path in folder.rglob("*"):
            if path.is_file() and SECRET.encode() in path.read_bytes():
                leaked.append(str(path))
    assert not leaked, leaked
    assert SECRET not in repr(judge) and SECRET not in str(judge.identity())
    usage_file = json.loads((tmp_path / "run" / "ft_callbacks" / "judge" / "usage.json").read_text())
    assert usage_file["judge_calls"] == usage["calls"] and usage_file["judge_prompt_tokens"] > 0
    assert SECRET not in capsys.readouterr().out


def test_kill_and_resume_makes_no_new_judge_calls(server, tokenizer, tmp_path):
    """A run SIGKILLed right after its step-20 round (before checkpoint-20), resumed from checkpoint-10 in a
    new process: the base outputs come from the file, the step-20 round's questions from the cache, so the
    server sees only the resumed run's preflight."""
    import json
    import subprocess
    import sys

    tok_dir = tmp_path / "tokenizer"
    tokenizer.save_pretrained(str(tok_dir))
    script = Path(__file__).resolve().parent / "dist_scripts" / "judge_kill_resume.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # fmt: skip
    out = tmp_path / "run"

    def run(mode):
        return subprocess.run([sys.executable, str(script), str(tok_dir), str(out), server.url, str(server.model_dir),
                               mode], env=env, capture_output=True, text=True, timeout=240)  # fmt: skip

    before = server.requests()
    first = run("first")
    assert first.returncode == -9, first.stdout[-3000:] + first.stderr[-3000:]  # SIGKILL
    assert (out / "checkpoint-10").is_dir() and not (out / "checkpoint-20").exists()
    made = server.requests() - before
    assert made >= 1 + 4 + 8  # preflight, scores, both orders of 4 pairs (repeated questions come from the cache)
    pairs_before = (out / "ft_callbacks" / "judge" / "pairs.jsonl").read_text().splitlines()
    middle = server.requests()
    resumed = run("resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert server.requests() - middle == 1  # the resumed run's preflight only
    result = json.loads((out / "resumed.json").read_text())
    assert result["usage"]["calls"] == 1
    assert [r["step"] for r in result["rounds"] if "eval_win_rate" in r] == [10, 20]
    pairs_after = (out / "ft_callbacks" / "judge" / "pairs.jsonl").read_text().splitlines()
    assert pairs_after == pairs_before  # the step-20 round judged again from the cache, the same verdicts


def test_server_killed_mid_round_skips_the_round_and_training_goes_on(server, tokenizer, corpus, tmp_path, capsys):
    """Last in the module: it kills the module's server."""
    judge = openai_judge(server, max_concurrency=1, max_retries=1, pointwise=False)
    scorer = GenerationScorer(*prompt_pairs(corpus), metrics=("rouge",), num_samples=6, max_new_tokens=6,
                              judge=judge, win_rate=True, background=False)  # fmt: skip
    start = server.requests()

    def kill_after_three_pairs_calls():
        while server.requests() < start + 1 + 3:  # the preflight, then 3 of the first round's 12 calls
            time.sleep(0.01)
        server.stop()

    killer = threading.Thread(target=kill_after_three_pairs_calls, daemon=True)
    killer.start()
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [scorer], max_steps=20, eval_steps=10, report_to="none")
    trainer.train()
    killer.join(timeout=5)
    assert trainer.state.global_step == 20  # training went on
    rounds = [e for e in trainer.state.log_history if "eval_rougeL" in e and e["step"] > 0]
    assert [e["step"] for e in rounds] == [10, 20]
    assert all("eval_win_rate" not in e for e in rounds)
    assert "verdicts were invalid" in capsys.readouterr().out
