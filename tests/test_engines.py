"""Sharded engines, for real on this CPU machine (2 processes, gloo).

1. DeepSpeed ZeRO-3 (DeepSpeed's CPU accelerator): the whole generative kit of
   tests/dist_scripts/kit_ddp.py (OverfitGuard + BestCheckpointSaver(load_best_at_end=True) +
   GenerationScorer) trains a tiny GPT-2 whose parameters are partitioned across the two ranks. The
   saver joins DeepSpeed's gather (through the Trainer's accelerator) at each improvement and rank 0
   writes one copy; generation runs with synced_gpus. Checked against a single process: the best
   checkpoint reproduces the logged token loss and the texts generated at its step, and the weights
   each rank holds after training are the best checkpoint's.
2. FSDP: accelerate starts FSDP only on accelerator backends, so the Trainer cannot run it here.
   torch's FSDP2 (`fully_shard`) runs on CPU: tests/dist_scripts/fsdp2_engine.py drives our FSDP
   code paths (gather for saving, load for load_best_at_end, synced generation with uneven shards)
   on a really sharded model. FSDP1 (`FullyShardedDataParallel`) crashes in torch on CPU (SIGSEGV in
   the state-dict gather), so its one extra step (generation inside `summon_full_params`, as
   Seq2SeqTrainer does) is correct by construction only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from ft_callbacks import GenerationScorer, toy
from ft_callbacks.best_checkpoint import read_saved_weights

from .helpers import lm_trainer, run_torchrun
from .test_kit_distributed import (
    KIT,
    PROMPTS,
    SCRIPTS,
    Run,
    _launch,
    assert_generation_sharded_and_scored_once,
    assert_one_set_of_checkpoints,
    assert_one_wandb_run_each_evaluation_once,
    assert_ranks_agree_and_stop_together,
    improving_steps,
    records,
    training_evals,
)

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def tok_dir(tokenizer, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("engine_tokenizer")
    tokenizer.save_pretrained(str(path))
    return path


def require_deepspeed() -> None:
    """`make test` installs DeepSpeed and sets FT_CALLBACKS_REQUIRE_DEEPSPEED=1: there a missing
    DeepSpeed is a failure, not a silent skip. Elsewhere these tests skip without it."""
    if os.environ.get("FT_CALLBACKS_REQUIRE_DEEPSPEED") == "1":
        import deepspeed  # noqa: F401
    else:
        pytest.importorskip("deepspeed", reason="`make setup` installs DeepSpeed for these tests")


# -- 1. DeepSpeed ZeRO-3 --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def zero3_kit(tok_dir, tmp_path_factory) -> Run:
    require_deepspeed()
    return _launch(tmp_path_factory, "kit_zero3", tok_dir, KIT, "engine=zero3", "load_best=1", "background=off",
                   "monitor=eval_perplexity")  # fmt: skip


def test_zero3_kit_partitions_the_weights_and_the_ranks_agree(zero3_kit):
    r0, r1 = zero3_kit.ok()
    # Really sharded: each rank held about half of the weights (small biases stay whole, by design).
    assert r0["held_fraction"] < 0.6 and r1["held_fraction"] < 0.6
    assert_ranks_agree_and_stop_together(r0, r1, wrapper="DeepSpeedEngine")


def test_zero3_kit_generates_sharded_with_synced_gpus_and_scores_once(zero3_kit):
    r0, r1 = zero3_kit.ok()
    assert_generation_sharded_and_scored_once(r0, r1)


def test_zero3_kit_writes_one_copy_per_improvement(zero3_kit):
    r0, r1 = zero3_kit.ok()
    assert len(improving_steps(r0, "eval_perplexity", "min")) >= 2
    assert_one_set_of_checkpoints(zero3_kit, r0, r1, "eval_perplexity", "min")
    assert_one_wandb_run_each_evaluation_once(zero3_kit, r0, r1)


def _token_loss(model, dataset, tokenizer) -> float:
    """Mean NLL per target token over `dataset`, one sample at a time (no padding at all)."""
    from transformers import DataCollatorForLanguageModeling

    collate = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for example in dataset:
            batch = collate([example])
            n = int((batch["labels"][:, 1:] != -100).sum())
            total += float(model(**batch).loss) * n
            count += n
    return total / count


def test_zero3_best_checkpoint_reproduces_its_step_in_one_process(zero3_kit, tok_dir):
    """The gathered weights are the trained ones: loaded in a single process, the best checkpoint gives
    the token loss logged at its step and generates the very texts generated there under ZeRO-3."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    r0, _ = zero3_kit.ok()
    manifest = json.loads((zero3_kit.out / "trainer" / "best_checkpoints.json").read_text())
    best, step = zero3_kit.out / "trainer" / manifest["best"], manifest["best_step"]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    model = AutoModelForCausalLM.from_pretrained(str(best))
    corpus = toy.stdlib_corpus()
    evaluation = toy.causal_lm_dataset(corpus[200:230], tokenizer, 48)  # kit_ddp's eval set
    logged = next(e for e in training_evals(r0) if e["step"] == step)
    assert _token_loss(model, evaluation, tokenizer) == pytest.approx(logged["eval_token_loss"], rel=1e-5)

    from tests.dist_scripts.kit_ddp import prompt_pairs

    prompts, references = prompt_pairs(corpus, PROMPTS)
    scorer = GenerationScorer(prompts, references, metrics=("rouge",), max_new_tokens=8, batch_size=4)
    scorer._prepare(model, tokenizer)
    alone = scorer.generate(model, tokenizer, show_progress=False)
    at_step = {row[1]: row[3] for row in r0["samples"] if row[0] == step}
    assert len(at_step) == PROMPTS
    assert [at_step[p] for p in prompts] == alone


def test_zero3_load_best_at_end_leaves_the_best_weights_on_every_rank(zero3_kit):
    r0, r1 = zero3_kit.ok()
    manifest = json.loads((zero3_kit.out / "trainer" / "best_checkpoints.json").read_text())
    assert manifest["best_step"] < r0["global_step"]  # training went past the best: a load was needed
    weights = read_saved_weights(zero3_kit.out / "trainer" / manifest["best"])
    saved = sum(float(v.double().sum()) for v in weights.values())  # tied lm_head is not in the file
    assert r0["weights_checksum"] == pytest.approx(saved, rel=1e-12)
    assert r1["weights_checksum"] == r0["weights_checksum"]
    assert "BestCheckpointSaver loaded the best weights from " + manifest["best"] in zero3_kit.output


def test_zero2_kit_saves_the_ddp_way(tok_dir, tmp_path_factory):
    """ZeRO-2 partitions the optimizer state and gradients, not the weights: rank 0 writes from the
    whole model it holds, with no gather, and the ranks agree as under DDP."""
    require_deepspeed()
    run = _launch(tmp_path_factory, "kit_zero2", tok_dir, KIT, "engine=zero2", "background=off",
                  "monitor=eval_perplexity")  # fmt: skip
    r0, r1 = run.ok()
    assert r0["held_fraction"] == r1["held_fraction"] == 1.0
    assert_ranks_agree_and_stop_together(r0, r1, wrapper="DeepSpeedEngine")
    assert_one_set_of_checkpoints(run, r0, r1, "eval_perplexity", "min")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no_gather", '"stage3_gather_16bit_weights_on_model_save": true'),
        ("peft_load_best", "load_best_at_end=True is not supported for a PEFT model under DeepSpeed ZeRO-3"),
        ("guard_restore", "under DeepSpeed ZeRO-3 each process holds only a shard of the weights. Add "
                          "BestCheckpointSaver(load_best_at_end=True)"),
    ],
)
def test_zero3_mistakes_fail_before_the_first_step(case, message, tok_dir, tmp_path):
    require_deepspeed()
    rc, output, _ = run_torchrun(SCRIPTS / "zero3_cases.py", tok_dir, tmp_path, case, timeout=300)
    assert rc != 0
    assert "ConfigurationError" in output and message in output, output[-6000:]
    assert not (tmp_path / "steps.json").exists()  # not one training step



def test_zero3_peft_saves_the_adapter_only_and_it_reproduces_its_step(tok_dir, tmp_path):
    """LoRA under ZeRO-3: DeepSpeed gathers the whole model, PEFT's save_pretrained keeps the adapter.
    On the (seeded) base model in a single process, the best adapter gives the logged token loss."""
    from peft import PeftModel
    from transformers import PreTrainedTokenizerFast

    require_deepspeed()
    rc, output, _ = run_torchrun(SCRIPTS / "zero3_cases.py", tok_dir, tmp_path, "peft_save", timeout=300)
    assert rc == 0, output[-6000:]
    r0, r1 = records(tmp_path)
    assert r0["saves"] == r1["saves"] and len(r0["saves"]) >= 2 and r0["evals"] == r1["evals"]
    out = tmp_path / "trainer"
    manifest = json.loads((out / "best_checkpoints.json").read_text())
    best = out / manifest["best"]
    assert (best / "adapter_model.safetensors").is_file() and not (best / "model.safetensors").exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("best-")) == sorted(
        e["path"] for e in manifest["checkpoints"]
    )
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tok_dir))
    model = PeftModel.from_pretrained(toy.tiny_gpt2(tokenizer), str(best))
    evaluation = toy.causal_lm_dataset(toy.stdlib_corpus()[200:264], tokenizer, 48)  # lm_trainer's eval set
    logged = next(e for e in r0["evals"] if e["step"] == manifest["best_step"])
    assert _token_loss(model, evaluation, tokenizer) == pytest.approx(logged["eval_token_loss"], rel=1e-5)

# -- 2. FSDP2 -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fsdp2(tok_dir, tmp_path_factory) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("fsdp2")
    rc, output, _ = run_torchrun(SCRIPTS / "fsdp2_engine.py", tok_dir, out)
    assert rc == 0, output[-6000:]
    r0, r1 = records(out)
    return r0, r1


def test_fsdp2_is_detected_and_shards_the_weights(fsdp2):
    for r in fsdp2:
        assert r["engine_before"] is None and r["engine"] == "FSDP"
        assert r["held_fraction"] == pytest.approx(0.5, abs=0.05)


def test_fsdp2_generation_is_synced_and_equals_the_whole_model(fsdp2):
    """7 prompts in batches of 2: rank 0 has 4 prompts (2 calls), rank 1 three (2 calls, one padded)."""
    r0, r1 = fsdp2
    assert r0["whole_texts"] == r0["sharded_texts"] == r1["sharded_texts"]
    assert all(isinstance(t, str) for t in r0["sharded_texts"]) and len(r0["sharded_texts"]) == PROMPTS
    assert r0["generate_calls_whole"] == r1["generate_calls_whole"] == [0, 0]  # not sharded: not synced
    assert r0["generate_calls_sharded"] == r1["generate_calls_sharded"] == [1, 1]  # equal counts, synced


def test_fsdp2_gather_save_and_load_round_trip(fsdp2):
    r0, r1 = fsdp2
    assert r0["gathered_keys"] > 0 and r0["gathered_equal"]  # rank 0 receives the full weights
    assert r1["gathered_keys"] == 0  # the others hold nothing extra
    assert r0["loaded_equal"] and r1["loaded_equal"]  # save_pretrained of the gathered weights
    assert r0["zeroed_checksum"] == 0.0  # the load really changed the sharded weights...
    assert r0["restored_equal"]  # ...and the saved file put every one of them back



# -- 3. finding the Trainer -----------------------------------------------------------------------
def test_find_trainer_reaches_the_trainer_running_the_callback_and_nothing_else(tokenizer, corpus, tmp_path):
    """The sharded paths need the Trainer (its accelerator, its wrapped model), which a callback is not
    handed: found from inside an event of a real Trainer; None for a callback driven by hand."""
    from transformers import TrainerCallback

    from ft_callbacks.engines import find_trainer, sharded_engine

    seen = []

    class Finder(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen.append((find_trainer(self), find_trainer(object()), sharded_engine(model, find_trainer(self))))

    finder = Finder()
    trainer = lm_trainer(tokenizer, corpus, tmp_path, [finder], max_steps=1)
    other = lm_trainer(tokenizer, corpus, tmp_path / "other", [], max_steps=1)  # alive, not running
    trainer.train()
    assert len(seen) == 1 and seen[0][0] is trainer and seen[0][0] is not other
    assert seen[0][1] is None and seen[0][2] is None  # another object; not a sharded engine
    assert find_trainer(finder) is None  # outside any event
