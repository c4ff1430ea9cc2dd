"""The plots and the HTML report of a run directory, and the page as headless Chromium renders it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from turnrl.cli import main
from turnrl.stages.compare import CompareConfig, compare_run

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
QUESTIONS = {
    "sciq-1": ("What gas do plants take in for photosynthesis?", ["oxygen", "carbon dioxide", "nitrogen", "helium"],
               "B"),
    "sciq-2": ("Which organ pumps blood?", ["lung", "liver", "heart", "kidney"], "C"),
    "sciq-3": ("What is the boiling point of water at sea level?", ["50 C", "100 C", "150 C", "0 C"], "B"),
    "sciq-4": ("Which planet is known as the red planet?", ["Mars", "Venus", "Jupiter", "Mercury"], "A"),
}
# method -> the option each method picks per question, and (feedback environment) success within k turns
ANSWERS = {"base": ["A", "C", "A", "B"], "star-gate": ["B", "C", "A", "A"], "swift": ["B", "C", "B", "A"]}
MULTI = {"base": [[0, 1, 0, 0], [0, 1, 1, 0]], "star-gate": [[1, 1, 0, 0], [1, 1, 0, 1]],
         "swift": [[1, 1, 0, 1], [1, 1, 1, 1]]}
SWIFT_WEIGHTS = [1.1547, -0.57735, -0.57735, 0.0, 0.0, 0.0, 0.70711, -0.70711, 0.0, 0.0, 0.0, 0.0]
TRICKY = "Careful: </script><b>not bold</b> & <!-- no comment -->"


def conversation(method: str, task_id: str, letter: str, correct: bool, reward: float) -> dict:
    question, choices, _ = QUESTIONS[task_id]
    options = " ".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(choices))
    first = f"[{method}] Let me think about {task_id}: the key idea is in option {letter}."
    if method == "swift" and task_id == "sciq-1":
        first = TRICKY
    return {
        "id": f"{task_id}#0", "task_id": task_id, "group_id": task_id, "sample": 0,
        "messages": [{"role": "system", "content": "You are a helpful assistant."},
                     {"role": "user", "content": f"{question}\n{options}\nExplain why the options are incorrect."},
                     {"role": "assistant", "content": first},
                     {"role": "user", "content": "What is your final answer?"},
                     {"role": "assistant", "content": f"The answer is {letter}."}],
        "turns": [{"tokens": 20, "truncated": method == "base"}, {"tokens": 6, "truncated": False}],
        "rewards": {"accuracy": float(correct), "format": 1.0, "judge_overall": 0.7 if correct else 0.3},
        "reward": reward, "env": {"name": "feedback"},
        "meta": {"judge": {"model": "gpt-4o", "ok": True, "scores": {"overall": 7.0 if correct else 3.0},
                           "text": f"Accuracy: {7 if correct else 3}\nThe {method} answer to {task_id} is "
                                   f"{'right' if correct else 'wrong'}.\n\nOverall: {7 if correct else 3}\nFine."}},
    }


def make_run(run: Path) -> Path:
    tasks = [{"id": t, "source": "sciq", "question": q, "choices": c, "answer": a}
             for t, (q, c, a) in QUESTIONS.items()]
    (run / "tasks").mkdir(parents=True)
    (run / "tasks" / "test.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    logged = [{"id": f"train-{g}#{s}", "task_id": f"train-{g}", "group_id": f"train-{g}", "sample": s,
               "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
               "rewards": {"accuracy": float((g + s) % 2)}, "reward": 0.25 * ((g + s) % 4)}
              for g in range(4) for s in range(3)]
    (run / "scored").mkdir()
    (run / "scored" / "trajectories.jsonl").write_text("".join(json.dumps(t) + "\n" for t in logged))
    for m, answers in ANSWERS.items():
        folder = run / "eval" / m
        folder.mkdir(parents=True)
        convs, rows = [], []
        for i, (task_id, letter) in enumerate(zip(QUESTIONS, answers)):
            correct = letter == QUESTIONS[task_id][2]
            reward = 0.8 * correct + 0.05 * i
            convs.append(conversation(m, task_id, letter, correct, reward))
            rows.append({"task_id": task_id, "gold": QUESTIONS[task_id][2], "runs": 1, "answers": [letter],
                         "accuracy": float(correct), "format": 1.0, "accuracy_formatted": float(correct),
                         "thinking": 0.0, "reward": reward, "judge_overall": 0.7 if correct else 0.3,
                         "multi@1": float(MULTI[m][0][i]), "multi@2": float(MULTI[m][1][i]), "multi@3": 1.0})
        (folder / "conversations.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs))
        (folder / "per_question.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / "metrics.json").write_text(json.dumps({"name": m, "runs": 1, "metrics": {}}))
    for algo in ("star-gate", "swift"):
        folder = run / "train" / algo
        folder.mkdir(parents=True)
        (folder / "train_log.jsonl").write_text("".join(
            json.dumps({"step": s + 1, "loss": 2.0 / (s + 1), "grad_norm": 1.0 + 0.1 * s}) + "\n" for s in range(30)))
    # No "ess" recorded: the report computes it from the weights.
    (run / "train" / "swift" / "diagnostics.json").write_text(json.dumps({
        "algorithm": "swift", "trajectories": 12, "groups": 4, "zero_signal_groups": 2, "weights": SWIFT_WEIGHTS}))
    (run / "train" / "drift").mkdir()
    (run / "train" / "drift" / "diagnostics.json").write_text(json.dumps({
        "algorithm": "drift", "groups": 4, "groups_all_fail": 1, "groups_all_success": 1, "groups_mixed": 2,
        "group_sizes": {"3": 4}, "group_ess_mean": 2.25, "group_ess_median": 2.5, "group_ess_min": 1.0, "ess": 9.0,
        "weights": [1.0, 1.0, 1.0, 2.5, 0.25, 0.25, 1.0, 1.0, 1.0, 0.1, 0.1, 2.8]}))
    (run / "run_config.json").write_text(json.dumps({"model": "smollm2-135m-instruct",
                                                     "algorithms": ["star-gate", "swift"]}))
    return run


@pytest.fixture()
def run_dir(tmp_path) -> Path:
    return make_run(tmp_path / "run")


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> tuple[Path, Path]:
    """A run directory and its report, made once for the tests that only read them."""
    run_dir = make_run(tmp_path_factory.mktemp("reported") / "run")
    _, report = compare_run(CompareConfig(run_dir=str(run_dir)))
    return run_dir, report


def test_plots_and_self_contained_page(reported):
    run_dir, report = reported
    assert report == run_dir / "report.html"
    import matplotlib.image

    for name in ("accuracy", "rewards", "multi_at_k", "training", "weights"):
        png = run_dir / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        height, width, _ = matplotlib.image.imread(png).shape
        assert height > 100 and width > 100
    page = report.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched from a network
    assert "<link" not in page
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == 5 and all(src.startswith("data:image/png;base64,") for src in images)
    # The conversation data cannot end its <script> element early: "</script>" in a message is escaped.
    assert page.count("</script>") == 2
    data = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)[1])
    assert TRICKY in data["strings"] and [m["key"] for m in data["methods"]] == ["base", "star-gate", "swift"]
    prompts = [s for s in data["strings"] if s.startswith("Which organ pumps blood?\n")]
    assert len(prompts) == 1  # the prompt all three methods saw is stored once
    # Weight diagnostics, by hand: ESS = (sum |w|)^2 / sum w^2; two of four groups had equal rewards.
    w = np.abs(SWIFT_WEIGHTS)
    ess = w.sum() ** 2 / (w ** 2).sum()
    assert f"{ess:.1f} ({100 * ess / 12:.1f}%)" in page
    assert "zero signal groups: 2 (50.0% of groups)" in page
    assert "9.0 (75.0%)" in page  # DRIFT's recorded ESS, as a share of its 12 trajectories
    for count in ("groups all fail: 1 (25.0% of groups)", "groups all success: 1 (25.0% of groups)",
                  "groups mixed: 2 (50.0% of groups)"):
        assert count in page
    assert "2.25 / 2.50 / 1.00" in page
    assert "&#34;algorithms&#34;" in page or "&quot;algorithms&quot;" in page  # the run's config


def test_no_optional_sections_without_their_files(run_dir):
    shutil.rmtree(run_dir / "train")
    shutil.rmtree(run_dir / "scored")
    for m in ANSWERS:
        path = run_dir / "eval" / m / "per_question.jsonl"
        rows = [{k: v for k, v in json.loads(line).items() if not k.startswith("multi@")}
                for line in path.read_text().splitlines()]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    compare_run(CompareConfig(run_dir=str(run_dir)))
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == ["accuracy.png", "rewards.png"]
    page = (run_dir / "report.html").read_text()
    assert 'id="weights"' not in page and 'id="logged"' not in page


def test_a_report_without_matplotlib_says_so(run_dir, monkeypatch, capsys):
    from turnrl.stages import report

    monkeypatch.setattr(report, "has_extra", lambda extra: extra != "plots")
    compare_run(CompareConfig(run_dir=str(run_dir)))
    assert "report: no plots (matplotlib is not installed: pip install 'turnrl[plots]')" in capsys.readouterr().out
    page = (run_dir / "report.html").read_text()
    assert "No plots: matplotlib is not installed" in page and "<img" not in page
    assert not list((run_dir / "plots").glob("*.png"))


def test_the_optional_parts_name_their_install_command(monkeypatch):
    import importlib.util

    from turnrl import errors

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert errors.has_extra("plots") and not errors.has_extra("serve")
    with pytest.raises(errors.ConfigError, match=r"turnrl serve needs turnrl's optional 'serve' packages "
                                                 r"\(fastapi, uvicorn\): pip install 'turnrl\[serve\]'"):
        errors.require_extra("serve", "turnrl serve")


def test_cli_prints_the_report_path(run_dir, capsys):
    assert main(["compare", "--run_dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"report: {run_dir / 'report.html'}" in out
    assert main(["compare", "--run_dir", str(run_dir), "--methods", "[base, dpo]"]) == 2
    assert "eval/dpo/per_question.jsonl: missing" in capsys.readouterr().err


def _text(html: str) -> str:
    """The visible text of an HTML fragment, whitespace collapsed."""
    import html as html_lib

    return " ".join(html_lib.unescape(re.sub(r"<[^>]+>", " ", html)).split())


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install -y chromium; "
                                             "scripts/setup.sh --test installs it where it can)")
def test_report_renders_in_headless_chromium(reported, tmp_path):
    _, report = reported
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    screenshot = artifacts / "report.png"
    screenshot.unlink(missing_ok=True)
    result = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1400,5200", f"--screenshot={screenshot}", "--dump-dom", report.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    dom = result.stdout
    assert result.returncode == 0 and "</html>" in dom, result.stderr[-2000:]
    assert screenshot.exists() and screenshot.stat().st_size > 10_000

    table = re.search(r'<table class="data" id="results-table">(.*?)</table>', dom, re.S)[1]
    rows = [_text(r) for r in re.findall(r"<tr>(.*?)</tr>", table, re.S)]
    assert rows[0].startswith("Method Accuracy % Thinking % R-Overall")
    assert [r.split()[0] for r in rows[1:]] == ["Base", "STaR-GATE", "Swift"]
    assert "75.0 ± 21.7" in rows[2]  # STaR-GATE: 3 of 4 right, sqrt(0.75 * 0.25 / 4) = 0.2165
    assert len(re.findall(r'<img src="data:image/png;base64,', dom)) == 5

    # After the scripts ran: the question picker is filled and the first question's conversations are shown.
    options = re.findall(r"<option value=\"(sciq-\d)\"", dom)
    assert options == list(QUESTIONS)
    view = re.search(r'<div id="conversation-view">(.*?)</section>', dom, re.S)[1]
    columns = re.findall(r'<div class="column" data-method="([^"]+)">', view)
    assert columns == ["base", "star-gate", "swift"]
    text = _text(view)
    assert "What gas do plants take in for photosynthesis?" in text
    assert "[base] Let me think about sciq-1: the key idea is in option A." in text
    assert "[star-gate] Let me think about sciq-1: the key idea is in option B." in text
    assert TRICKY in text  # shown as text, not markup
    assert "The swift answer to sciq-1 is right." in text  # the judge's justification
    assert "hit the token cap" in text  # Base's first turn was capped
    assert text.count("reward 0.800") == 2 and "reward 0.000" in text
