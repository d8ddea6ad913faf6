"""The human check the judge stands in for: blind pairwise choices in a browser, and how often the judge
agrees with them.

    ft-callbacks compare RUN_DIR --step 200            # RUN_DIR/ft_callbacks/human/compare-step-200.html
    ft-callbacks compare RUN_DIR --import choices.json # human win rate + judge-human Cohen's kappa

The page is one self-contained HTML file (no network, no server): each pair shows the prompt and two
answers, the base model's and the fine-tuned model's at step N, in an order drawn at random per pair,
labelled only "A" and "B". Which side is which is kept out of the page, in a key file beside it
(`compare-step-N.key.json`), so the person choosing cannot see it, even in the page's source. The
choices save as a JSON file (a download, also shown on the page to copy); importing it maps each
choice back through the key and writes the results to `RUN_DIR/ft_callbacks/human_eval.json`, which
`ft-callbacks report` shows.

The pairs come from the judge's record of its rounds (`RUN_DIR/ft_callbacks/judge/pairs.jsonl`, one
line per judged pair), so the person sees exactly the answers the judge saw.
"""

from __future__ import annotations

import html
import json
import os
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .core.errors import ConfigurationError
from .records import read_json, write_record

HUMAN_FOLDER = os.path.join("ft_callbacks", "human")
RESULTS_FILE = os.path.join("ft_callbacks", "human_eval.json")
VERDICTS = ("win", "loss", "tie")  # of the fine-tuned model against the base


@dataclass
class Pair:
    """One prompt answered by the base model and by the fine-tuned model; `judge` is the judge's final
    verdict for the fine-tuned answer ("win", "loss", "tie") or None when it had no valid one."""

    prompt: str
    base: str
    current: str
    judge: str | None = None


@dataclass
class HumanResult:
    """What a person's choices say about one step."""

    step: int
    pairs: int
    wins: int
    losses: int
    ties: int
    win_rate: float
    judge_pairs: int  # pairs with both a human choice and a valid judge verdict
    judge_agreement: float | None  # share of those where they agree
    judge_kappa: float | None  # Cohen's kappa on those (None when undefined)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


PAIRS_FILE = os.path.join("ft_callbacks", "judge", "pairs.jsonl")
_JUDGE_VERDICTS = {"current": "win", "base": "loss", "tie": "tie"}  # pairs.jsonl's final_verdict -> ours


def judged_pairs(run_dir: str | os.PathLike, step: int | None = None) -> tuple[int, list[Pair]]:
    """The pairs the judge saw at `step` (default: the last judged step), from the run's
    `ft_callbacks/judge/pairs.jsonl`; returns (step, pairs). A round judged again after a resume
    replaces the earlier lines of its step.

    Raises:
        ConfigurationError: when the run has no judged pairs, or none at `step` (the message lists the
            steps it has).
    """
    path = Path(run_dir) / PAIRS_FILE
    by_step: dict[int, dict[int, Pair]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            record = json.loads(line)
            at, index = int(record["step"]), int(record["index"])
            pair = Pair(str(record["prompt"]), str(record["base_output"]), str(record["current_output"]),
                        _JUDGE_VERDICTS.get(record.get("final_verdict")))  # fmt: skip
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a crash mid-write
        by_step.setdefault(at, {})[index] = pair
    if not by_step:
        raise ConfigurationError(
            f"{path} has no judged pairs: run GenerationScorer(judge=..., win_rate=True) on this run first."
        )
    chosen = max(by_step) if step is None else step
    if chosen not in by_step:
        raise ConfigurationError(f"no judged pairs at step {step}; judged steps: {sorted(by_step)}.")
    return chosen, [by_step[chosen][i] for i in sorted(by_step[chosen])]


def write_compare_page(
    pairs: Sequence[Pair], out_dir: str | os.PathLike, step: int, seed: int | None = None
) -> tuple[Path, Path]:
    """Write the blind comparison page and its key file; returns (page, key).

    Args:
        pairs: the pairs to show, in any order (the page keeps it; only each pair's sides are shuffled).
        out_dir: where the page and the key go (created if missing).
        step: the training step the fine-tuned answers come from (named on the page and in the files).
        seed: seeds the side order (default: fresh randomness, so two pages for one step differ).

    Raises:
        ConfigurationError: when there are no pairs.

    Example:
        page, key = write_compare_page([Pair("2+2?", "5", "4")], "out/ft_callbacks/human", step=200)
    """
    if not pairs:
        raise ConfigurationError(f"there are no judged pairs at step {step} to compare.")
    rng = random.Random(seed)
    page_id = uuid.UUID(int=rng.getrandbits(128)).hex if seed is not None else uuid.uuid4().hex
    shown, key = [], {}
    for i, pair in enumerate(pairs):
        current_first = rng.random() < 0.5
        a, b = (pair.current, pair.base) if current_first else (pair.base, pair.current)
        pair_id = f"p{i}"
        shown.append({"id": pair_id, "prompt": pair.prompt, "a": a, "b": b})
        key[pair_id] = {"a": "current" if current_first else "base", "judge": pair.judge}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    page = out / f"compare-step-{step}.html"
    key_file = out / f"compare-step-{step}.key.json"
    write_record(key_file, {"page": page_id, "step": step, "pairs": key})
    page.write_text(_page_html(shown, page_id, step), encoding="utf-8")
    return page, key_file


def read_choices(path: str | os.PathLike) -> dict[str, Any]:
    """A saved choices file, checked.

    Raises:
        ConfigurationError: when the file is not a choices file this page wrote.
    """
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("choices"), dict) or "page" not in data:
        raise ConfigurationError(
            f"{path} is not a choices file saved from an ft-callbacks compare page (expected a JSON object with "
            "'page', 'step' and 'choices')."
        )
    bad = {k: v for k, v in data["choices"].items() if v not in ("A", "B", "tie")}
    if bad:
        raise ConfigurationError(f"{path}: choices must be 'A', 'B' or 'tie'; got {bad}.")
    return data


def score_choices(choices: dict[str, Any], key: dict[str, Any]) -> HumanResult:
    """The human win rate of the fine-tuned model and the judge's agreement with the person.

    Win rate = (wins + 0.5 * ties) / pairs chosen, the same formula as the judge's; agreement and
    Cohen's kappa (scikit-learn's) compare the person's verdict with the judge's on the pairs where
    both have one.

    Raises:
        ConfigurationError: when the choices were saved from another page than this key's.
    """
    from sklearn.metrics import cohen_kappa_score

    if choices["page"] != key["page"]:
        raise ConfigurationError(
            f"these choices come from another compare page (page {choices['page']}, this key is for page "
            f"{key['page']}): import them with the run whose page they were made on."
        )
    human, judged = [], []
    for pair_id, choice in choices["choices"].items():
        side = key["pairs"].get(pair_id)
        if side is None:
            raise ConfigurationError(f"choice for unknown pair {pair_id!r}: the file does not match its page.")
        if choice == "tie":
            verdict = "tie"
        else:
            chosen = side["a"] if choice == "A" else ("base" if side["a"] == "current" else "current")
            verdict = "win" if chosen == "current" else "loss"
        human.append(verdict)
        if side.get("judge") in VERDICTS:
            judged.append((verdict, side["judge"]))
    if not human:
        raise ConfigurationError("the choices file has no choices: choose on the page, then save.")
    wins, losses, ties = (human.count(v) for v in VERDICTS)
    agreement = kappa = None
    if judged:
        people, judge = zip(*judged, strict=True)
        agreement = sum(p == j for p, j in judged) / len(judged)
        # Kappa is undefined when both raters used a single, identical label for every pair.
        if len(set(people) | set(judge)) > 1:
            kappa = float(cohen_kappa_score(people, judge, labels=list(VERDICTS)))
    return HumanResult(
        step=int(key["step"]), pairs=len(human), wins=wins, losses=losses, ties=ties,
        win_rate=(wins + 0.5 * ties) / len(human), judge_pairs=len(judged), judge_agreement=agreement,
        judge_kappa=kappa,
    )  # fmt: skip


def import_choices(run_dir: str | os.PathLike, choices_file: str | os.PathLike) -> HumanResult:
    """Score a saved choices file against its page's key in `run_dir` and keep the result in
    `run_dir/ft_callbacks/human_eval.json` (one entry per page; importing again replaces it).

    Raises:
        ConfigurationError: when the file is not a choices file, or its key is not in `run_dir`.
    """
    choices = read_choices(choices_file)
    key_file = Path(run_dir) / HUMAN_FOLDER / f"compare-step-{choices.get('step')}.key.json"
    key = read_json(key_file)
    if not isinstance(key, dict) or key.get("page") != choices["page"]:
        raise ConfigurationError(
            f"no key for this page in {key_file.parent}: import the choices into the run directory the page was "
            "written for (`ft-callbacks compare RUN_DIR --import FILE`)."
        )
    result = score_choices(choices, key)
    results_path = Path(run_dir) / RESULTS_FILE
    entries = [e for e in read_human_results(run_dir) if e.get("page") != key["page"]]
    entries.append({"page": key["page"], **result.as_dict()})
    write_record(results_path, sorted(entries, key=lambda e: e.get("step", 0)))
    return result


def read_human_results(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The imported human results of a run (for the report), oldest step first."""
    saved = read_json(Path(run_dir) / RESULTS_FILE)
    return [e for e in saved if isinstance(e, dict)] if isinstance(saved, list) else []


def _page_html(shown: list[dict[str, str]], page_id: str, step: int) -> str:
    # The pairs travel as JSON inside the page; every "<" is escaped so an answer cannot end the script.
    data = json.dumps({"page": page_id, "step": step, "pairs": shown}, ensure_ascii=False).replace("<", "\\u003c")
    title = f"Which answer is better? (step {step}, {len(shown)} pairs)"
    return _TEMPLATE.replace("__TITLE__", html.escape(title)).replace("__DATA__", data)


_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body{font-family:system-ui,sans-serif;max-width:70rem;margin:1rem auto;padding:0 1rem;color:#222}
.pair{border:1px solid #ccc;border-radius:6px;padding:.8rem;margin:1rem 0}
.pair.done{border-color:#2a7}
.prompt{white-space:pre-wrap;background:#f4f4f4;padding:.5rem;border-radius:4px}
.answers{display:grid;grid-template-columns:1fr 1fr;gap:1rem;margin:.6rem 0}
.answer{white-space:pre-wrap;border:1px solid #ddd;padding:.5rem;border-radius:4px}
button{margin-right:.4rem;padding:.3rem .8rem}
button.chosen{background:#2a7;color:#fff}
#bar{position:sticky;top:0;background:#fff;padding:.5rem 0;border-bottom:1px solid #ddd}
textarea{width:100%;height:6rem}
</style></head><body>
<h1>__TITLE__</h1>
<p>Each pair shows one prompt and two answers in a random order. Choose the better answer, or a tie.
Nothing here says which model wrote which. When done, press <b>Save choices</b> and keep the file.</p>
<div id="bar"><span id="progress"></span> <button id="save">Save choices</button></div>
<div id="pairs"></div>
<p>Saved choices (also downloaded as a file):</p><textarea id="saved" readonly></textarea>
<script type="application/json" id="data">__DATA__</script>
<script>
const data = JSON.parse(document.getElementById("data").textContent);
const choices = {};
const root = document.getElementById("pairs");
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text; return e; }
function progress() { document.getElementById("progress").textContent =
  Object.keys(choices).length + " of " + data.pairs.length + " chosen"; }
data.pairs.forEach((p, i) => {
  const box = el("div", "pair"); box.id = "pair-" + p.id;
  box.appendChild(el("h3", "", "Pair " + (i + 1)));
  box.appendChild(el("div", "prompt", p.prompt));
  const answers = el("div", "answers");
  for (const side of ["a", "b"]) { const a = el("div", "answer");
    a.appendChild(el("b", "", "Answer " + side.toUpperCase())); a.appendChild(el("div", "", p[side]));
    answers.appendChild(a); }
  box.appendChild(answers);
  for (const [choice, label] of [["A", "A is better"], ["B", "B is better"], ["tie", "Tie"]]) {
    const b = el("button", "", label); b.id = "choose-" + p.id + "-" + choice;
    b.onclick = () => { choices[p.id] = choice; box.classList.add("done");
      box.querySelectorAll("button").forEach(x => x.classList.toggle("chosen", x === b)); progress(); };
    box.appendChild(b); }
  root.appendChild(box);
});
progress();
document.getElementById("save").onclick = () => {
  const text = JSON.stringify({page: data.page, step: data.step, choices: choices}, null, 1);
  document.getElementById("saved").value = text;
  const link = el("a"); link.href = URL.createObjectURL(new Blob([text], {type: "application/json"}));
  link.download = "choices-step-" + data.step + ".json"; document.body.appendChild(link); link.click();
};
</script></body></html>
"""
