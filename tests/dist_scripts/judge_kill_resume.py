"""Run as a plain process by tests/test_judge_server.py (the kill-and-resume test).

usage: judge_kill_resume.py TOKENIZER_DIR OUT_DIR SERVER_URL MODEL_NAME first|resume

`first`: a tiny GPT-2 trains toward step 20 with GenerationScorer judging over HTTP (evaluations at 10 and
20, checkpoints at 10 and 20); at step 20, right after the judged round and before checkpoint-20 is
written, the process kills itself with SIGKILL. `resume`: the same run resumed from checkpoint-10 in a new
process; it writes OUT_DIR/resumed.json (the judge's usage and the judged rounds).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from transformers import PreTrainedTokenizerFast, TrainerCallback

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS.parent))

from ft_callbacks import GenerationScorer, toy  # noqa: E402
from ft_callbacks.judge import Judge  # noqa: E402
from tests.helpers import lm_trainer  # noqa: E402


class KillAfterRound(TrainerCallback):
    def on_evaluate(self, args, state, control, **kwargs):
        if state.global_step == 20:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(sys.argv[1])
    out_dir, url, model_name, mode = Path(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    corpus = toy.stdlib_corpus()
    prompts = [" ".join(t.split()[:6]) for t in corpus[:4]]
    references = [" ".join(t.split()[6:16]) or "x" for t in corpus[:4]]
    judge = Judge.openai(model=model_name, base_url=url, max_tokens=16, backoff=0.05)
    scorer = GenerationScorer(prompts, references, metrics=("rouge",), max_new_tokens=6, background=False,
                              judge=judge, win_rate=True)  # fmt: skip
    callbacks = [scorer, KillAfterRound()] if mode == "first" else [scorer]
    trainer = lm_trainer(tokenizer, corpus, out_dir, callbacks, max_steps=20, eval_steps=10, save_strategy="steps",
                         save_steps=10, report_to="none")  # fmt: skip
    if mode == "first":
        trainer.train()
        raise SystemExit("not killed")
    trainer.train(resume_from_checkpoint=str(out_dir / "checkpoint-10"))
    rounds = [{k: v for k, v in e.items() if k.startswith(("eval_win", "eval_judge")) or k == "step"}
              for e in trainer.state.log_history if "eval_rougeL" in e]  # fmt: skip
    (out_dir / "resumed.json").write_text(json.dumps({"usage": judge.usage_summary(), "rounds": rounds}))


if __name__ == "__main__":
    main()
