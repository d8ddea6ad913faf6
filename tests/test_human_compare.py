"""The human check: a blind page a person clicks through in a real (headless) Chromium, the saved
choices imported, and the human win rate and judge-human agreement checked by hand."""

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from ft_callbacks.core.errors import ConfigurationError
from ft_callbacks.human_compare import (
    Pair,
    import_choices,
    read_human_results,
    score_choices,
    write_compare_page,
)

PAIRS = [
    Pair("What is 2+2?", base="5", current="4", judge="win"),
    Pair("Capital of France?", base="Paris", current="Lyon", judge="loss"),
    Pair("Say hi </script><script>alert(1)</script>", base="hi", current="hello", judge="tie"),
    Pair("Spell cat", base="c-a-t", current="cat", judge=None),  # the judge had no valid verdict
]


def side_of(key: dict, pair_id: str, model: str) -> str:
    return "A" if key["pairs"][pair_id]["a"] == model else "B"


def test_the_page_is_blind(tmp_path):
    page, key_file = write_compare_page(PAIRS, tmp_path, step=40, seed=3)
    text = page.read_text()
    key = json.loads(key_file.read_text())
    assert key["step"] == 40 and len(key["pairs"]) == 4
    # Which side is which lives only in the key file, never in the page.
    assert '"current"' not in text and '"base"' not in text and "judge" not in text.lower()
    # An answer cannot end the page's script (every "<" in the data is escaped).
    assert "</script><script>alert(1)" not in text
    # Sides are shuffled per pair (seeded here): not all current-first, not all base-first.
    assert {p["a"] for p in key["pairs"].values()} == {"current", "base"}


def test_win_rate_and_kappa_by_hand(tmp_path):
    _, key_file = write_compare_page(PAIRS, tmp_path, step=40, seed=3)
    key = json.loads(key_file.read_text())
    # The person: current wins p0, current wins p1 (judge said loss), tie on p2, base wins p3.
    choices = {"page": key["page"], "step": 40, "choices": {
        "p0": side_of(key, "p0", "current"), "p1": side_of(key, "p1", "current"), "p2": "tie",
        "p3": side_of(key, "p3", "base")}}  # fmt: skip
    result = score_choices(choices, key)
    assert (result.wins, result.losses, result.ties, result.pairs) == (2, 1, 1, 4)
    assert result.win_rate == pytest.approx((2 + 0.5) / 4)
    # Judge vs person on p0..p2 (p3 has no judge verdict): (win, win), (loss, win), (tie, tie).
    assert result.judge_pairs == 3 and result.judge_agreement == pytest.approx(2 / 3)
    # Cohen's kappa by hand: p_o = 2/3; person marginals win 2/3, tie 1/3; judge win, loss, tie 1/3 each.
    p_e = (2 / 3) * (1 / 3) + 0 * (1 / 3) + (1 / 3) * (1 / 3)
    assert result.judge_kappa == pytest.approx((2 / 3 - p_e) / (1 - p_e))


def test_bad_choice_files_are_refused(tmp_path):
    _, key_file = write_compare_page(PAIRS, tmp_path / "ft_callbacks" / "human", step=40, seed=3)
    key = json.loads(key_file.read_text())
    bad = tmp_path / "bad.json"
    for content, message in [
        ([1, 2], "not a choices file"),
        ({"page": key["page"], "step": 40, "choices": {"p0": "left"}}, "'A', 'B' or 'tie'"),
        ({"page": "other", "step": 40, "choices": {"p0": "A"}}, "no key for this page"),
        ({"page": key["page"], "step": 40, "choices": {}}, "has no choices"),
        ({"page": key["page"], "step": 40, "choices": {"p9": "A"}}, "unknown pair"),
    ]:
        bad.write_text(json.dumps(content))
        with pytest.raises(ConfigurationError, match=message):
            import_choices(tmp_path, bad)
    with pytest.raises(ConfigurationError, match="no judged pairs"):
        write_compare_page([], tmp_path, step=1)


def chromium_driver(download_dir: Path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not browser or not driver_path:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(download_dir),
                                              "download.prompt_for_download": False})  # fmt: skip
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver


def test_a_person_chooses_in_chromium_and_the_choices_import(tmp_path):
    run_dir = tmp_path / "run"
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    page, key_file = write_compare_page(PAIRS, run_dir / "ft_callbacks" / "human", step=40)
    key = json.loads(key_file.read_text())
    driver = chromium_driver(downloads)
    try:
        driver.get(page.as_uri())
        assert "0 of 4 chosen" in driver.find_element("id", "progress").text
        # The hostile prompt is shown as text, not run as a script.
        assert "alert(1)" in driver.find_element("id", "pair-p2").text
        wanted = {"p0": side_of(key, "p0", "current"), "p1": side_of(key, "p1", "base"), "p2": "tie",
                  "p3": side_of(key, "p3", "current")}  # fmt: skip
        driver.find_element("id", "choose-p0-tie").click()  # a change of mind: the last click counts
        for pair_id, choice in wanted.items():
            driver.find_element("id", f"choose-{pair_id}-{choice}").click()
        assert "4 of 4 chosen" in driver.find_element("id", "progress").text
        driver.find_element("id", "save").click()
        saved = downloads / "choices-step-40.json"
        deadline = time.monotonic() + 20
        while not saved.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert saved.is_file(), os.listdir(downloads)
        shown = json.loads(driver.find_element("id", "saved").get_attribute("value"))
    finally:
        driver.quit()
    assert json.loads(saved.read_text()) == shown and shown["choices"] == wanted
    result = import_choices(run_dir, saved)
    # Person: win, loss, tie, win -> (2 + 0.5) / 4; against the judge on p0..p2: agree, agree, agree.
    assert (result.wins, result.losses, result.ties) == (2, 1, 1)
    assert result.win_rate == pytest.approx(0.625)
    assert result.judge_pairs == 3 and result.judge_agreement == 1.0 and result.judge_kappa == pytest.approx(1.0)
    assert read_human_results(run_dir)[0]["win_rate"] == pytest.approx(0.625)
    # Importing again replaces, never duplicates.
    import_choices(run_dir, saved)
    assert len(read_human_results(run_dir)) == 1


def test_the_report_shows_the_human_check(tmp_path):
    from ft_callbacks.report import build_report

    run_dir = tmp_path / "run"
    _, key_file = write_compare_page(PAIRS, run_dir / "ft_callbacks" / "human", step=40, seed=1)
    key = json.loads(key_file.read_text())
    (run_dir / "trainer_state.json").write_text(json.dumps({"global_step": 40, "log_history": [
        {"loss": 2.0, "step": 20}, {"eval_loss": 2.5, "step": 40, "eval_runtime": 1.0}]}))  # fmt: skip
    choices = tmp_path / "choices.json"
    choices.write_text(json.dumps({"page": key["page"], "step": 40, "choices": {"p0": "tie", "p1": "tie"}}))
    import_choices(run_dir, choices)
    summary = build_report(run_dir, formats="html").summary
    assert "Human check at step 40: win rate 0.5 over 2 pairs (0 wins, 0 losses, 2 ties)" in summary
    assert "the judge agrees on 0 of 2 (Cohen's kappa" in summary


def test_pairs_come_from_the_judges_record(tmp_path):
    from ft_callbacks.human_compare import judged_pairs

    folder = tmp_path / "ft_callbacks" / "judge"
    folder.mkdir(parents=True)
    def line(step, index, prompt, base, current, verdict):
        return {"step": step, "index": index, "prompt": prompt, "base_output": base, "current_output": current,
                "final_verdict": verdict}  # fmt: skip

    lines = [
        line(10, 0, "p", "b0", "c0", "base"),
        line(20, 1, "q", "b1", "c1", "tie"),
        line(20, 0, "p", "b0", "c2", "invalid"),
        line(20, 0, "p", "b0", "c3", "current"),  # judged again after a resume: the later line wins
    ]
    (folder / "pairs.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + '\n{"step": 30, "ind')
    step, pairs = judged_pairs(tmp_path)
    assert step == 20 and pairs == [Pair("p", "b0", "c3", "win"), Pair("q", "b1", "c1", "tie")]
    assert judged_pairs(tmp_path, 10)[1] == [Pair("p", "b0", "c0", "loss")]
    with pytest.raises(ConfigurationError, match=r"judged steps: \[10, 20\]"):
        judged_pairs(tmp_path, 15)
    with pytest.raises(ConfigurationError, match="no judged pairs"):
        judged_pairs(tmp_path / "elsewhere")
