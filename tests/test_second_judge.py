"""A second judge for already judged conversations (``turnrl rejudge``) and the two judges' agreement: the
statistics against values worked out by hand and by scipy, two real judges over HTTP on loopback (the ``openai``
backend against two OpenAI-compatible servers), the ``hf`` backend with a tiny model, resumption, the first judge's
scores left untouched, and the agreement in ``turnrl compare``'s output and the HTML report."""

from __future__ import annotations

import json
import math
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from turnrl.cli import main
from turnrl.records import Task, Trajectory, write_jsonl
from turnrl.stages.rejudge import judge_agreement, read_judged_log
from turnrl.stats import AGREEMENT_BLOCK, rater_agreement

# ------------------------------------------------------------------------------------------- the statistics


def test_perfect_agreement_is_one_with_a_degenerate_interval():
    scores = [1, 3, 3, 7, 9, 9, 4]
    got = rater_agreement(scores, scores, n_boot=500, seed=3)
    for stat in (got.spearman, got.kendall, got.kappa):
        assert stat.value == pytest.approx(1.0)
        # every resample agrees perfectly too (those where a judge is constant are undefined and left out)
        assert stat.low == pytest.approx(1.0) and stat.high == pytest.approx(1.0)
    assert got.mean_abs_diff == 0 and got.mean_diff == 0 and got.n == 7


def test_a_known_permutation():
    # Swapping two neighbours of 1..5: of the 10 pairs, 9 stay concordant and 1 turns discordant, so
    # tau = (9 - 1) / 10 = 0.8; the rank differences are (1, 1, 0, 0, 0), so rho = 1 - 6 * 2 / (5 * 24) = 0.9.
    # Kappa: the mean squared difference is 2 / 5; over all 25 (i, j) pairs of 1..5 it is 100 / 25 = 4
    # (sum over d = 1..4 of 2 (5 - d) d^2 = 100), so kappa = 1 - 0.4 / 4 = 0.9.
    got = rater_agreement([1, 2, 3, 4, 5], [2, 1, 3, 4, 5], n_boot=0)
    assert got.kendall.value == pytest.approx(0.8)
    assert got.spearman.value == pytest.approx(0.9)
    assert got.kappa.value == pytest.approx(0.9)
    assert math.isnan(got.kendall.low)  # no bootstrap asked for
    # Reversed: both correlations -1; mean squared difference (16 + 4 + 0 + 4 + 16) / 5 = 8, twice the 4 expected.
    rev = rater_agreement([1, 2, 3, 4, 5], [5, 4, 3, 2, 1], n_boot=0)
    assert rev.kendall.value == pytest.approx(-1) and rev.spearman.value == pytest.approx(-1)
    assert rev.kappa.value == pytest.approx(-1)


def test_kappa_is_cohens_quadratic_weighted_kappa():
    """Cohen's weighted kappa written out over categories 0, 1, 2 with quadratic weights (i - j)^2 / (K - 1)^2:
    kappa = 1 - sum w O / sum w E, O the confusion counts, E the counts independent raters with the same marginals
    would give."""
    a, b = [0, 1, 2, 2], [0, 2, 2, 1]
    observed = np.zeros((3, 3))
    for x, y in zip(a, b):
        observed[x, y] += 1  # [[1,0,0],[0,0,1],[0,1,1]]
    expected = np.outer(observed.sum(1), observed.sum(0)) / 4  # rows (1,1,2), columns (1,1,2)
    weights = np.array([[(i - j) ** 2 / 4 for j in range(3)] for i in range(3)])
    by_hand = 1 - (weights * observed).sum() / (weights * expected).sum()
    # (1/4 + 1/4) / 4 ... = 1 - 0.5 / (22 / 16) = 7 / 11
    assert by_hand == pytest.approx(7 / 11)
    assert rater_agreement(a, b, n_boot=0).kappa.value == pytest.approx(7 / 11)
    # Half points lie between their neighbours: the weights are the squared score differences themselves.
    half = rater_agreement([7.5, 2, 9], [7, 2, 9], n_boot=0)
    obs, exp = (0.5 ** 2) / 3, np.mean([(x - y) ** 2 for x in (7.5, 2, 9) for y in (7, 2, 9)])
    assert half.kappa.value == pytest.approx(1 - obs / exp)


def test_ties_and_undefined_statistics_match_scipy():
    a = [3, 5, 5, 7, 7, 7, 2, 9, 5, 6, 6.5, 8]
    b = [4, 5, 6, 6, 7, 8, 2, 8, 4, 6, 7, 9]
    got = rater_agreement(a, b, n_boot=0)
    assert got.spearman.value == pytest.approx(scipy_stats.spearmanr(a, b).statistic)
    assert got.kendall.value == pytest.approx(scipy_stats.kendalltau(a, b).statistic)  # tau-b
    assert got.mean_abs_diff == pytest.approx(np.mean(np.abs(np.subtract(a, b))))
    assert got.mean_diff == pytest.approx(np.mean(np.subtract(b, a)))
    constant = rater_agreement([5, 5, 5], [4, 5, 6], n_boot=200)
    assert math.isnan(constant.spearman.value) and math.isnan(constant.kendall.value)
    assert constant.spearman.fmt() == "n/a"
    assert constant.kappa.value == pytest.approx(0.0)  # the observed disagreement is exactly the expected one
    assert rater_agreement([], [], n_boot=10).n == 0
    one = rater_agreement([4], [4], n_boot=10)
    assert one.n == 1 and math.isnan(one.kappa.value)


def test_bootstrap_intervals_are_the_percentiles_of_the_resampled_statistics():
    rng = np.random.default_rng(7)
    a = rng.integers(0, 11, 30).astype(float)
    b = np.clip(a + rng.integers(-2, 3, 30), 0, 10)
    n_boot, seed = AGREEMENT_BLOCK + 44, 11
    got = rater_agreement(a, b, n_boot=n_boot, seed=seed)
    # The same resamples drawn by hand (blocks of AGREEMENT_BLOCK rows from one generator), scored by scipy.
    draw = np.random.default_rng(seed)
    index = np.concatenate([draw.integers(0, 30, size=(AGREEMENT_BLOCK, 30)), draw.integers(0, 30, size=(44, 30))])
    rho = np.array([scipy_stats.spearmanr(a[i], b[i]).statistic for i in index])
    tau = np.array([scipy_stats.kendalltau(a[i], b[i]).statistic for i in index])
    kap = np.array([1 - np.mean((a[i] - b[i]) ** 2) / np.mean((a[i][:, None] - b[i][None, :]) ** 2) for i in index])
    for stat, values in ((got.spearman, rho), (got.kendall, tau), (got.kappa, kap)):
        values = values[~np.isnan(values)]
        assert (stat.low, stat.high) == pytest.approx(tuple(np.quantile(values, [0.025, 0.975])))
        assert stat.low <= stat.value <= stat.high
    assert got.spearman.value == pytest.approx(scipy_stats.spearmanr(a, b).statistic)


# ------------------------------------------------------------------------ two judges over HTTP on loopback

METRIC_LINES = [("accuracy", "Accuracy"), ("reasoning", "Reasoning ability"),
                ("comprehensiveness", "Comprehensiveness"), ("pedagogical", "Pedagogical value"),
                ("confidence", "Confidence calibration"), ("overall", "Overall")]
# conversation i -> each judge's score per metric. Judge B cannot be read on conversation 5.
SCORES = {
    "judge-a": {"accuracy": [2, 4, 6, 8, 10, 3], "reasoning": [1, 2, 3, 4, 5, 6], "comprehensiveness": [5] * 6,
                "pedagogical": [3, 7, 4, 8, 6, 2], "confidence": [6, 6, 7, 8, 9, 0], "overall": [2, 4, 6, 8, 5, 7]},
    "judge-b": {"accuracy": [2, 4, 6, 8, 10, 3], "reasoning": [2, 1, 3, 4, 5, 6],
                "comprehensiveness": [4, 5, 6, 5, 5, 5], "pedagogical": [4, 6, 4, 9, 5, 1],
                "confidence": [7, 5, 7, 8, 8, 0], "overall": [1, 3, 5, 9, 5, 8]},
}
UNREADABLE = {("judge-b", 5)}
N = 6


def judge_answer(model: str, prompt: str) -> str:
    case = int(re.search(r"case (\d+)", prompt).group(1))
    if (model, case) in UNREADABLE:
        return "I would rather not grade this conversation."
    return "\n\n".join(f"{label}: {SCORES[model][m][case]}\nA justification." for m, label in METRIC_LINES)


class JudgeServer:
    """A minimal OpenAI-compatible chat-completions server on a free loopback port that answers as one judge."""

    def __init__(self, model: str):
        self.model, self.requests = model, []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                if body.get("model") != server.model:
                    return self._send(404, {"error": {"message": f"The model {body.get('model')!r} does not exist.",
                                                      "type": "invalid_request_error"}})
                text = judge_answer(server.model, body["messages"][-1]["content"])
                self._send(200, {"id": "c", "object": "chat.completion", "created": 0, "model": server.model,
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                              "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 10, "completion_tokens": 30, "total_tokens": 40}})

            def _send(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def judges():
    servers = {m: JudgeServer(m) for m in SCORES}
    yield servers
    for s in servers.values():
        s.close()


def task(i: int) -> Task:
    return Task(id=f"sciq-{i}", source="sciq", question=f"Which option is right in question {i}?", answer="B",
                choices=["one", "two", "three", "four"])


def conversation(i: int, name: str = "log", sample: int = 0) -> Trajectory:
    return Trajectory(id=f"sciq-{i}#{sample}", task_id=f"sciq-{i}", group_id=f"sciq-{i}", sample=sample,
                      messages=[{"role": "system", "content": "You are a helpful assistant."},
                                {"role": "user", "content": f"Which option is right in question {i}?"},
                                {"role": "assistant", "content": f"[{name}] Reasoning about case {i}. "
                                                                 f"The answer is {'B' if i % 2 else 'C'}."}],
                      policy={"model": "tiny"}, env={"name": "reasoning"})


def make_run(run: Path) -> Path:
    write_jsonl(run / "tasks" / "train.jsonl", [task(i) for i in range(N)])
    write_jsonl(run / "rollouts" / "trajectories.jsonl", [conversation(i) for i in range(N)])
    return run


def judge_flags(prefix: str, server: JudgeServer, cache: Path) -> list[str]:
    return [f"--{prefix}.backend", "openai", f"--{prefix}.model", server.model, f"--{prefix}.base_url",
            f"[{server.url}]", f"--{prefix}.cache_dir", str(cache), f"--{prefix}.max_retries", "0"]


def expected(metric: str, cases=range(5)) -> tuple[list[float], list[float]]:
    return ([SCORES["judge-a"][metric][i] for i in cases], [SCORES["judge-b"][metric][i] for i in cases])


def test_rejudge_a_scored_log_with_a_second_judge_on_loopback(tmp_path, judges, capsys):
    run, cache = make_run(tmp_path / "run"), tmp_path / "cache"
    assert main(["score", "--run_dir", str(run), "--reward.weights", "{judge_overall: 1.0}",
                 *judge_flags("reward.judge", judges["judge-a"], cache)]) == 0
    scored = run / "scored" / "trajectories.jsonl"
    before = scored.read_bytes()
    capsys.readouterr()

    assert main(["rejudge", "--run_dir", str(run), *judge_flags("judge", judges["judge-b"], cache),
                 "--chunk_size", "4", "--bootstrap_samples", "500"]) == 0
    printed = capsys.readouterr().out
    assert scored.read_bytes() == before  # the first judge's scores, rewards and records are untouched
    out = run / "scored" / "second_judge.jsonl"
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == [f"sciq-{i}#0" for i in range(N)]
    assert all(r["model"] == "judge-b" and r["backend"] == "openai" for r in records)
    assert records[3]["scores"] == {m: SCORES["judge-b"][m][3] for m in SCORES["judge-b"]}
    assert records[5]["ok"] is False and records[5]["failed"] == ["I would rather not grade this conversation."] * 3
    assert "scores" not in records[5]  # a failure has no scores, never 0
    settings = json.loads((run / "scored" / "second_judge.json").read_text())
    assert settings["model"] == "judge-b" and settings["backend"] == "openai" and "base_url" not in settings
    assert "6 conversations judged by judge-b (0 already were; 1 parse failures" in printed
    assert "Judge agreement on the conversations of scored/trajectories.jsonl: judge-a vs judge-b" in printed

    judged = read_judged_log(scored)
    assert judged.first["sciq-2#0"]["overall"] == pytest.approx(6.0)
    assert judged.first_models == ["judge-a"] and judged.second_models == ["judge-b"]
    result = judge_agreement("logged data", [judged], samples=500, seed=0)
    assert (result.conversations, result.second_records, result.failures) == (6, 6, 1)
    # Same scores: perfect agreement. Two neighbours swapped: tau 0.8, rho 0.9, kappa 0.9 (see above).
    assert result.metrics["accuracy"].kendall.value == pytest.approx(1.0)
    assert result.metrics["accuracy"].kappa.value == pytest.approx(1.0)
    reasoning = result.metrics["reasoning"]
    assert (reasoning.kendall.value, reasoning.spearman.value, reasoning.kappa.value) == \
        pytest.approx((0.8, 0.9, 0.9))
    assert reasoning.n == 5
    assert math.isnan(result.metrics["comprehensiveness"].spearman.value)  # judge A gave 5 throughout
    for metric in ("pedagogical", "confidence", "overall"):
        a, b = expected(metric)
        got = result.metrics[metric]
        assert got.spearman.value == pytest.approx(scipy_stats.spearmanr(a, b).statistic)
        assert got.kendall.value == pytest.approx(scipy_stats.kendalltau(a, b).statistic)
        x, y = np.array(a, float), np.array(b, float)
        assert got.kappa.value == pytest.approx(1 - np.mean((x - y) ** 2) / np.mean((x[:, None] - y[None, :]) ** 2))
        assert got.mean_abs_diff == pytest.approx(np.mean(np.abs(x - y)))
        assert got.n == 5
    assert f"| Reasoning ability | {reasoning.spearman.fmt()} | {reasoning.kendall.fmt()} |" in printed

    # Killed mid-run: the last records lost and a line left half written. The rerun writes exactly the missing
    # records (their answers come from the judge's cache), ending with the file an uninterrupted run writes.
    complete = out.read_bytes()
    lines = complete.decode().splitlines(keepends=True)
    out.write_text("".join(lines[:3]) + lines[3][:25])
    calls = len(judges["judge-b"].requests)
    assert main(["rejudge", "--run_dir", str(run), *judge_flags("judge", judges["judge-b"], cache),
                 "--chunk_size", "4", "--bootstrap_samples", "0"]) == 0
    assert out.read_bytes() == complete
    assert len(judges["judge-b"].requests) - calls == 3  # only the unreadable answer is asked again (3 tries)
    assert scored.read_bytes() == before

    # Another judge would mix two judges in one file: refused, unless --overwrite replaces it.
    capsys.readouterr()
    assert main(["rejudge", "--run_dir", str(run), *judge_flags("judge", judges["judge-a"], cache)]) == 2
    assert "holds the scores of another second judge (settings that differ: model)" in capsys.readouterr().err
    assert out.read_bytes() == complete

    # A conversation that changed since it was judged (here: rescored after an edit) is judged again.
    edited = [json.loads(line) for line in scored.read_text().splitlines()]
    edited[1]["messages"][-1]["content"] += " Final."
    scored.write_text("".join(json.dumps(r) + "\n" for r in edited))
    calls = len(judges["judge-b"].requests)
    assert main(["rejudge", "--run_dir", str(run), *judge_flags("judge", judges["judge-b"], cache),
                 "--bootstrap_samples", "0"]) == 0
    assert len(judges["judge-b"].requests) - calls == 1 + 3  # the edited one, and the unreadable one again
    assert "1 records were of conversations that changed" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == N


def test_an_evaluation_rejudged_shows_in_compare_and_the_report(tmp_path, judges):
    """Two evaluated methods judged by judge A; judge B rescores them; compare shows the agreement pooled over the
    test conversations, and the second judge's per-method means beside the first judge's."""
    from turnrl.stages.compare import CompareConfig, compare_run

    run = tmp_path / "run"
    write_jsonl(run / "tasks" / "test.jsonl", [task(i) for i in range(N)])
    halves = {"base": range(0, 3), "swift": range(3, 6)}
    for method, cases in halves.items():
        folder = run / "eval" / method
        convs, rows = [], []
        for i in cases:
            t = conversation(i, method)
            t.rewards = {"accuracy": float(i % 2), **{f"judge_{m}": v[i] / 10 for m, v in SCORES["judge-a"].items()}}
            t.reward = t.rewards["judge_overall"]
            t.meta = {"judge": {"model": "judge-a", "ok": True, "text": judge_answer("judge-a", f"case {i}")}}
            convs.append(t)
            rows.append({"task_id": t.task_id, "gold": "B", "runs": 1, "answers": ["B"], "accuracy": float(i % 2),
                         "format": 1.0, "reward": t.reward, **{k: v for k, v in t.rewards.items()
                                                               if k.startswith("judge_")}})
        write_jsonl(folder / "conversations.jsonl", convs)
        write_jsonl(folder / "per_question.jsonl", rows)

    comparison, report = compare_run(CompareConfig(run_dir=str(run), bootstrap_samples=200))
    assert comparison.agreement == [] and "Judge agreement" not in comparison.markdown
    assert 'id="judge-agreement"' not in report.read_text()

    before = {m: (run / "eval" / m / "conversations.jsonl").read_bytes() for m in halves}
    assert main(["rejudge", "--run_dir", str(run), *judge_flags("judge", judges["judge-b"], tmp_path / "cache"),
                 "--bootstrap_samples", "0"]) == 0
    assert {m: (run / "eval" / m / "conversations.jsonl").read_bytes() for m in halves} == before
    assert (run / "eval" / "swift" / "second_judge.jsonl").exists()

    comparison, report = compare_run(CompareConfig(run_dir=str(run), bootstrap_samples=300, bootstrap_seed=2))
    [agreement] = comparison.agreement
    assert agreement.label == "test conversations (Base, Swift)" and agreement.conversations == 6
    a, b = expected("overall")
    overall = agreement.metrics["overall"]
    assert overall.kendall.value == pytest.approx(scipy_stats.kendalltau(a, b).statistic)
    assert overall.n == 5
    assert agreement.metrics["reasoning"].kendall.value == pytest.approx(0.8)
    md = comparison.markdown
    assert "## Judge agreement on the test conversations (Base, Swift): judge-a vs judge-b" in md
    assert (f"| Overall | {overall.spearman.fmt()} | {overall.kendall.fmt()} | {overall.kappa.fmt()} | "
            f"{overall.mean_abs_diff:.2f} | {overall.mean_diff:+.2f} | 5 |") in md
    assert "| Comprehensiveness | n/a | n/a | 0.000" in md
    assert "300 resamples, seed 2" in md
    # The second judge's means per method, as the results table's "(2nd judge)" columns: Swift's overall from
    # judge B is the mean of conversations 3 and 4 (5 is unreadable), (9 + 5) / 2 = 7.00 with SE 2.00.
    assert "R-Overall (2nd judge)" in md
    swift = comparison.results["swift"].summary["judge_second_overall"]
    assert (swift.mean, swift.n) == (pytest.approx(0.7), 2)
    saved = json.loads((run / "comparison.json").read_text())
    assert saved["agreement"][0]["metrics"]["reasoning"]["kendall"]["value"] == pytest.approx(0.8)
    html = report.read_text()
    assert 'id="judge-agreement"' in html and 'href="#judge-agreement"' in html
    assert "Judge agreement on the test conversations (Base, Swift): judge-a vs judge-b" in html
    assert overall.kendall.fmt() in html
    data = json.loads(re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)[1])
    swift_run = data["conv"]["swift"]["sciq-3"][0]
    assert swift_run["c"]["judge_second_overall"] == pytest.approx(0.9)
    assert any(label.startswith("second judge (judge-b)") for label in swift_run["j"])


def test_the_components_of_reward_judge_second_count_as_a_second_judge(tmp_path):
    """A log scored with reward.judge.second holds judge_second_* itself; without a second_judge.jsonl beside it,
    those are the second judge's scores."""
    convs = []
    for i in range(5):
        t = conversation(i)
        t.rewards = {"judge_overall": SCORES["judge-a"]["overall"][i] / 10,
                     "judge_second_overall": SCORES["judge-b"]["overall"][i] / 10}
        t.meta = {"judge": {"model": "judge-a", "ok": True}, "judge_second": {"model": "judge-b", "ok": True}}
        convs.append(t)
    write_jsonl(tmp_path / "trajectories.jsonl", convs)
    judged = read_judged_log(tmp_path / "trajectories.jsonl")
    assert judged.source == "judge_second_* components" and judged.second_models == ["judge-b"]
    result = judge_agreement("log", [judged], samples=0)
    a, b = expected("overall")
    assert result.metrics["overall"].spearman.value == pytest.approx(scipy_stats.spearmanr(a, b).statistic)
    assert result.metrics["accuracy"].n == 0
    write_jsonl(tmp_path / "plain.jsonl", [conversation(0)])
    assert read_judged_log(tmp_path / "plain.jsonl") is None


def test_the_hf_backend_as_second_judge(tmp_path, tiny_model_dir, capsys):
    """A local model as the second judge (the ``hf`` backend, in-process): a tiny random model writes no
    readable scores, so every conversation is a recorded failure with its raw answer -- and the log is untouched."""
    run = tmp_path / "run"
    write_jsonl(run / "tasks" / "train.jsonl", [task(i) for i in range(2)])
    convs = []
    for i in range(2):
        t = conversation(i)
        t.rewards = {"judge_overall": 0.7}
        t.meta = {"judge": {"model": "judge-a", "ok": True}}
        convs.append(t)
    write_jsonl(run / "scored" / "trajectories.jsonl", convs)
    before = (run / "scored" / "trajectories.jsonl").read_bytes()
    assert main(["rejudge", "--run_dir", str(run), "--judge.backend", "hf", "--judge.model", str(tiny_model_dir),
                 "--judge.dtype", "float32", "--judge.max_new_tokens", "4", "--judge.retries", "0",
                 "--judge.cache_dir", str(tmp_path / "cache"), "--bootstrap_samples", "0"]) == 0
    assert (run / "scored" / "trajectories.jsonl").read_bytes() == before
    records = [json.loads(line) for line in (run / "scored" / "second_judge.jsonl").read_text().splitlines()]
    assert [r["backend"] for r in records] == ["hf", "hf"]
    assert all(r["ok"] is False and len(r["failed"]) == 1 and r["error"] for r in records)
    out = capsys.readouterr().out
    assert "2 parse failures" in out and "| Overall | n/a | n/a | n/a | n/a | n/a | 0 |" in out


def test_rejudge_input_errors(tmp_path, capsys):
    assert main(["rejudge", "--run_dir", str(tmp_path)]) == 2
    assert "no scored log" in capsys.readouterr().err
    assert main(["rejudge", "--run_dir", str(tmp_path), "--logs", "[eval/x/conversations.jsonl]"]) == 2
    assert "file not found" in capsys.readouterr().err
    assert main(["rejudge", "--run_dir", str(tmp_path), "--judge.second", "{model: b}"]) == 2
    assert "one judge" in capsys.readouterr().err
