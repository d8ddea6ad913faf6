"""GenerationScorer with task metrics (#17) in real tiny-model runs: JSON validity and JSON Schema
failures (their reasons in the samples table, read back from the offline wandb run), `truncated_rate`
from the generated token ids (compared with a hand count over `model.generate`), and the task metric keys
declared before step 1 (a threshold on one passes the check; without GenerationScorer it fails naming it)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import torch
from transformers import DataCollatorForLanguageModeling, Trainer

from ft_callbacks import toy
from ft_callbacks.core.errors import ConfigurationError
from ft_callbacks.core.structured import Regex
from ft_callbacks.generation_scorer import GenerationScorer
from ft_callbacks.thresholds import MetricThreshold

from .helpers import lm_args, lm_trainer, wandb_history

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta"]
PROMPTS = [f"Record {w}:" for w in WORDS]
# "size" is a string in every training text: a model that learns the format fails this schema's type rule.
SCHEMA = {"type": "object", "properties": {"size": {"type": "integer"}}, "required": ["name", "size"]}
NEW_TOKENS = 26  # after 60 steps some records end (EOS) within this budget and some do not


def json_trainer(tokenizer, output_dir, callbacks, **overrides) -> Trainer:
    """A tiny GPT-2 learning `Record <w>: {"name": "<w>", "size": "big"}` (the eval set: the same texts)."""
    texts = [f'Record {w}: {{"name": "{w}", "size": "big"}}' for w in WORDS] * 3
    data = toy.causal_lm_dataset(texts, tokenizer, 48)
    settings = {"max_steps": 60, "eval_steps": 60, "logging_steps": 60, **overrides}
    return Trainer(
        model=toy.tiny_gpt2(tokenizer), args=lm_args(output_dir, **settings), train_dataset=data,
        eval_dataset=data.select(range(8)), data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer, callbacks=callbacks,
    )  # fmt: skip


def hand_truncated(model, tokenizer, prompts: list[str], new_tokens: int) -> list[bool]:
    """One prompt at a time (no padding), greedy: ran the whole budget without ending in EOS."""
    flags = []
    model.eval()
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([tokenizer(prompt)["input_ids"]])
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
            new = out[0, ids.shape[1] :].tolist()
            flags.append(len(new) == new_tokens and new[-1] != tokenizer.eos_token_id)
    return flags


def table_rows(wandb_dir: Path, key: str, step: int) -> tuple[list[str], list[list]]:
    """The wandb table logged under `key` at `step`, read back from the offline run's files."""
    row = next(r for r in wandb_history(wandb_dir) if r.get("train/global_step") == step and f"{key}.path" in r)
    run = sorted(Path(wandb_dir).glob("wandb/offline-run-*"))[-1]
    table = json.loads((run / "files" / row[f"{key}.path"]).read_text())
    return table["columns"], table["data"]


def test_task_metrics_truncated_and_schema_reasons_in_a_real_run(tokenizer, tmp_path, wandb_offline):
    scorer = GenerationScorer(
        PROMPTS, ["-"] * len(PROMPTS),
        metrics=("json_valid", {"json_schema": {"schema": SCHEMA}}, "truncated", "distinct"),
        max_new_tokens=NEW_TOKENS, background=False,
    )  # fmt: skip
    trainer = json_trainer(tokenizer, tmp_path, [scorer], report_to="wandb")
    trainer.train()
    baseline, last = (e for e in trainer.state.log_history if "eval_json_valid_rate" in e)
    assert (baseline["step"], last["step"]) == (0, 60)
    # Truncated: the untrained model (the same seeded init) never says EOS within the budget: all of them.
    untrained = hand_truncated(toy.tiny_gpt2(tokenizer), tokenizer, PROMPTS, NEW_TOKENS)
    assert all(untrained) and baseline["eval_truncated_rate"] == 1.0
    # After training: some end in EOS, some run out; the same share as generating each prompt by hand.
    trained = hand_truncated(trainer.model, tokenizer, PROMPTS, NEW_TOKENS)
    assert 0 < sum(trained) < len(trained)
    assert last["eval_truncated_rate"] == pytest.approx(sum(trained) / len(trained))
    assert last["eval_truncated_rate_delta"] == pytest.approx(last["eval_truncated_rate"] - 1.0)
    # JSON validity and the schema, recounted with json / jsonschema on the very generations.
    columns = {"generation", "json_valid", "json_valid_error", "json_schema_valid", "json_schema_error", "truncated"}
    rows = [r for r in scorer.table_rows if r[0] == 60]
    generations = [r[3] for r in rows]

    def parses(text: str) -> bool:
        try:
            json.loads(text)
        except ValueError:
            return False
        return True

    valid = [parses(g) for g in generations]
    schema_ok = [v and jsonschema.Draft202012Validator(SCHEMA).is_valid(json.loads(g))
                 for v, g in zip(valid, generations, strict=True)]  # fmt: skip
    assert last["eval_json_valid_rate"] == pytest.approx(sum(valid) / len(valid))
    assert last["eval_json_schema_valid_rate"] == pytest.approx(sum(schema_ok) / len(schema_ok))
    assert any(valid) and not any(schema_ok)  # the model writes JSON, with "size" a string
    # The samples table names each failing rule: read back from the offline wandb run.
    import wandb

    wandb.finish()
    got_columns, data = table_rows(wandb_offline, "eval/generation_samples", 60)
    assert columns <= set(got_columns)
    error = got_columns.index("json_schema_error")
    last_rows = [r for r in data if r[0] == 60]
    assert len(last_rows) == len(PROMPTS)
    for row, is_valid in zip(last_rows, valid, strict=True):
        if is_valid:  # valid JSON that breaks the type rule: the rule and the path
            assert "$.size" in row[error] and "is not of type 'integer'" in row[error], row
        else:
            assert row[error].startswith("invalid JSON"), row
    assert [r[got_columns.index("truncated")] for r in last_rows] == [float(t) for t in trained]


def test_task_metric_keys_are_declared_before_step_one():
    scorer = GenerationScorer(
        PROMPTS, ["-"] * len(PROMPTS),
        metrics=("rouge", "json_valid", {"regex": r"^\{"}, Regex(r"\d", name="digits"), "distinct", "truncated"),
    )  # fmt: skip
    produced = scorer.produces()
    for key in ("json_valid_rate", "regex_match_rate", "digits_match_rate", "distinct_1", "distinct_2",
                "truncated_rate", "rougeL", "json_valid_rate_delta"):  # fmt: skip
        assert key in produced, key
    # A mapping in code is turned into its metric object, as a config's is.
    assert isinstance(scorer.metrics[2], Regex)
    with pytest.raises(ConfigurationError, match="needs options"):
        GenerationScorer(PROMPTS, ["-"] * len(PROMPTS), metrics=("regex",))
    with pytest.raises(ConfigurationError, match="not a task metric"):
        GenerationScorer(PROMPTS, ["-"] * len(PROMPTS), metrics=({"rouge": {}},))


def test_a_task_metric_threshold_without_generation_scorer_names_it(tokenizer, corpus, tmp_path):
    threshold = MetricThreshold("eval_json_valid_rate", below=0.5)
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [threshold], max_steps=20, eval_steps=10, report_to="none")
    with pytest.raises(ConfigurationError, match="GenerationScorer"):
        trainer.train()
    assert trainer.state.global_step == 0


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_gather_truncated_flags_in_prompt_order(tokenizer, tmp_path):
    from .helpers import run_torchrun

    tok_dir = tmp_path / "tokenizer"
    tokenizer.save_pretrained(str(tok_dir))
    script = Path(__file__).resolve().parent / "dist_scripts" / "generation_truncated_ddp.py"
    rc, output, _ = run_torchrun(script, tok_dir, tmp_path / "out")
    assert rc == 0, output[-6000:]
    r0, r1 = (json.loads((tmp_path / "out" / f"rank{r}.json").read_text()) for r in range(2))
    # Both ranks hold every prompt's flag, in prompt order: each one as generating it alone says.
    assert r0["flags"] == r1["flags"] == r0["hand"]
    assert 0 < sum(r0["hand"]) < len(PROMPTS)  # some of each, so the order is checked
    assert r0["rounds"] == r1["rounds"] and [r["step"] for r in r0["rounds"]] == [0, 60]
    assert r0["rounds"][0]["eval_truncated_rate"] == 1.0
    assert r0["rounds"][-1]["eval_truncated_rate"] == pytest.approx(sum(r0["hand"]) / len(PROMPTS))
    column = r0["columns"].index("truncated")
    assert [row[column] for row in r0["table"] if row[0] == 60] == [float(f) for f in r0["hand"]]
