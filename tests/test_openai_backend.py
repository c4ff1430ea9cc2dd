"""The ``openai`` backend against ``turnrl serve`` running for real on loopback (tiny model), and against small
scripted servers for round-robin, retries on 429 / 500 / timeouts / malformed 200s, errors on other 4xx, the API key
and the judge's cache."""

import asyncio
import threading
import time
from collections import defaultdict

import pytest
from test_serve import SERVED, free_port, running_serve

from turnrl.errors import ConfigError
from turnrl.generation import BackendConfig, GenRequest, Sampling
from turnrl.generation.openai_backend import BODY_EXCERPT, EndpointError, OpenAIGenerator

MALFORMED = {
    "notjson": ("application/json", "<html><body><h1>Welcome</h1>" + "<p>Please sign in to continue.</p>" * 40
                + "</body></html>"),
    "plain": ("text/plain", "upstream is warming up"),
    "empty": ("application/json", "{}"),
}
"""200 bodies that hold no chat completion: an HTML page (under a JSON content-type), plain text, an empty object."""

JUDGE_ANSWER = ("Accuracy: 9\nRight answer.\n\nReasoning ability: 8\nClear.\n\nComprehensiveness: 7\nCovers most.\n\n"
                "Pedagogical value: 8\nHelpful.\n\nConfidence calibration: 6\nA bit sure.\n\nOverall: 8\nGood.")


class ScriptedServer:
    """A small OpenAI-compatible server whose behaviour is chosen by the requested model name:

    ``flaky-429`` / ``flaky-500``: the first two calls fail with that status; ``slow``: the first call takes 3 s;
    ``bad``: always 400; ``down``: always 503; ``judge``: a well-formed judge answer; ``flaky-<kind>`` /
    ``broken-<kind>``: a 200 with the :data:`MALFORMED` body ``<kind>`` on the first two calls / on every call;
    anything else: "ok <n>".
    It counts calls per model and records the Authorization headers it received."""

    def __init__(self):
        import uvicorn
        from fastapi import FastAPI, Request
        from fastapi.responses import JSONResponse, Response

        self.calls: dict[str, int] = defaultdict(int)
        self.auth: list[str] = []
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            model = body["model"]
            self.calls[model] += 1
            n = self.calls[model]
            self.auth.append(request.headers.get("authorization", ""))
            if model == "flaky-429" and n <= 2:
                return JSONResponse({"error": {"message": "rate limit reached"}}, status_code=429,
                                    headers={"retry-after": "0"})
            if (model == "flaky-500" and n <= 2) or model == "down":
                return JSONResponse({"error": {"message": "overloaded"}}, status_code=500 if model != "down" else 503)
            if model == "bad":
                return JSONResponse({"error": {"message": "max_tokens is too large for this model",
                                               "type": "invalid_request_error"}}, status_code=400)
            kind = model.partition("-")[2]
            if kind in MALFORMED and (model.startswith("broken-") or (model.startswith("flaky-") and n <= 2)):
                media_type, content = MALFORMED[kind]
                return Response(content=content, media_type=media_type)
            if model == "slow" and n == 1:
                await asyncio.sleep(3)
            text = JUDGE_ANSWER if model == "judge" else f"ok {n}"
            return {"id": "x", "object": "chat.completion", "created": 0, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "scripted server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def scripted():
    servers = [ScriptedServer(), ScriptedServer()]
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    with running_serve(tiny_model_dir) as base:
        yield base


def _backend(url, model, **kw) -> BackendConfig:
    return BackendConfig(backend="openai", model=model, base_url=url if isinstance(url, list) else [url], **kw)


def _request(text="Hello", **sampling) -> GenRequest:
    return GenRequest([{"role": "user", "content": text}], Sampling(**sampling))


# --------------------------------------------------------------------------- against turnrl serve (tiny model)


class Reencoding:
    """The in-process backend with every prompt encoded afresh from its messages, as a server does (no
    per-conversation state carried between turns)."""

    name = "hf"

    def __init__(self, generator):
        self.generator = generator

    def generate(self, requests, desc=None):
        return self.generator.generate([GenRequest(r.messages, r.sampling) for r in requests], desc)


def test_rollout_through_serve_matches_in_process_generation(served, tiny_model_dir):
    """A clarify rollout -- policy and LLM teacher both behind the served endpoint -- gives exactly the
    conversations the hf backend gives in-process with the same model and seeds."""
    from turnrl.envs import EnvConfig, make_env
    from turnrl.generation.hf import HFGenerator
    from turnrl.records import Task
    from turnrl.rollout import run_episodes
    from turnrl.rollout import build_jobs

    env = make_env(EnvConfig(name="clarify", mode="thinking", max_new_tokens=6, teacher_max_new_tokens=6))
    tasks = [Task(id=f"q{i}", source="sciq", question=f"Which option is number {i}?", answer="A",
                  choices=["one", "two", "three", "four"]) for i in range(2)]
    jobs = build_jobs(tasks, env.settings(), 2, [0.0, 1.0], 0.95, 0, 0)
    remote = OpenAIGenerator(_backend(served, SERVED, concurrency=4))
    episodes = run_episodes(env, jobs, remote, teacher=remote, teacher_sampling=Sampling(temperature=0.0))
    local = Reencoding(HFGenerator(BackendConfig(model=str(tiny_model_dir), dtype="float32")))
    expected = run_episodes(env, jobs, local, teacher=local, teacher_sampling=Sampling(temperature=0.0))
    # The server batches requests as they arrive, so its batches (and the start their prompts share, encoded once)
    # differ from the in-process run's; float32 rounds differently with them, and one conversation of eight was
    # seen to flip on a near-tie in a full suite run. All but one must match exactly.
    same = [a.messages == b.messages and a.turns == b.turns for a, b in zip(episodes, expected)]
    assert sum(same) >= len(expected) - 1, [e.messages for e in episodes]
    assert all(len(e.turns) == 3 and e.turns[0].tokens > 0 for e in episodes)


def test_sampling_settings_and_stop_strings_match_in_process(served, tiny_model_dir):
    from turnrl.generation.hf import HFGenerator

    requests = [_request("Name a planet.", temperature=1.0, seed=5, max_new_tokens=24, stop=["e", "a"]),
                _request("Name a planet.", temperature=0.8, top_p=0.9, top_k=50, seed=6, max_new_tokens=5),
                _request("Name a planet.", temperature=0.0, max_new_tokens=4)]
    got = OpenAIGenerator(_backend(served, SERVED)).generate(requests)
    want = HFGenerator(BackendConfig(model=str(tiny_model_dir), dtype="float32")).generate(requests)
    assert got == want
    assert [r.finish for r in got] == ["stop_string", "length", "length"]
    assert got[0].text.endswith(("e", "a"))


def test_judge_through_serve_records_failures_and_asks_them_again_on_a_rerun(served, tmp_path):
    """The tiny random model cannot write a judgement: each conversation is asked 1 + retries times, recorded as a
    failure with the raw answers; unparseable answers are not reused, so a rerun asks them all again."""
    from turnrl.judge import Judge, JudgeConfig
    from turnrl.records import Task, Trajectory

    cfg = JudgeConfig(backend="openai", model=SERVED, base_url=[served], max_new_tokens=12, retries=1,
                      cache_dir=str(tmp_path))
    tasks = {"q": Task(id="q", source="sciq", question="Q?", answer="A", choices=["x", "y"])}
    trajectories = [Trajectory(id=f"t{i}", task_id="q", group_id="q", messages=[
        {"role": "user", "content": "Q?"}, {"role": "assistant", "content": f"The answer is A ({i})."}])
        for i in range(2)]
    judge = Judge(cfg)
    records = judge.judge(trajectories, tasks)
    assert judge.calls == 4
    assert all(not r["ok"] and r["attempts"] == 2 and len(r["failed"]) == 2 and r["failed"][0] for r in records)
    again = Judge(cfg)
    assert again.judge(trajectories, tasks) == records and again.calls == 4


# --------------------------------------------------------------------------- against scripted servers


def test_judge_call_and_cache_count_http_calls(scripted, tmp_path):
    from turnrl.judge import JudgeConfig, score_with_judges
    from turnrl.records import Task, Trajectory

    server = scripted[0]
    cfg = JudgeConfig(backend="openai", model="judge", base_url=[server.url], cache_dir=str(tmp_path))
    tasks = {"q": Task(id="q", source="sciq", question="Q?", answer="A", choices=["x", "y"])}

    def trajectories():
        return [Trajectory(id=f"t{i}", task_id="q", group_id="q", messages=[
            {"role": "user", "content": "Q?"}, {"role": "assistant", "content": f"Answer {i}"}]) for i in range(3)]

    before = server.calls["judge"]
    first = trajectories()
    score_with_judges(first, tasks, cfg)
    assert server.calls["judge"] - before == 3
    assert first[0].rewards["judge_overall"] == pytest.approx(0.8)
    assert first[0].rewards["judge_confidence"] == pytest.approx(0.6)
    second = trajectories()
    score_with_judges(second, tasks, cfg)
    assert server.calls["judge"] - before == 3  # zero HTTP calls on the rerun
    assert [t.rewards for t in second] == [t.rewards for t in first]


def test_round_robin_over_endpoints(scripted):
    a, b = scripted
    before = (a.calls["rr"], b.calls["rr"])
    gen = OpenAIGenerator(_backend([a.url, b.url], "rr", concurrency=3))
    results = gen.generate([_request(f"r{i}") for i in range(6)])
    assert (a.calls["rr"] - before[0], b.calls["rr"] - before[1]) == (3, 3)
    assert len(results) == 6 and all(r.finish == "stop" and r.tokens == 2 for r in results)


@pytest.mark.parametrize("model, expected_delays", [
    ("flaky-429", [(0.0, 0.0), (0.0, 0.0)]),      # the server's Retry-After: 0
    ("flaky-500", [(0.25, 0.5), (0.5, 1.0)]),     # exponential backoff 0.5 * 2^k, jittered by 0.5-1.0
])
def test_retries_until_success(scripted, model, expected_delays):
    server = scripted[0]
    delays = []
    gen = OpenAIGenerator(_backend(server.url, model, max_retries=3), sleep=delays.append)
    [result] = gen.generate([_request()])
    assert result.text == "ok 3" and server.calls[model] == 3
    assert len(delays) == 2 and all(lo <= d <= hi for d, (lo, hi) in zip(delays, expected_delays))


def test_timeout_is_retried(scripted):
    server = scripted[0]
    gen = OpenAIGenerator(_backend(server.url, "slow", timeout=0.5, max_retries=2), sleep=lambda s: None)
    [result] = gen.generate([_request()])
    assert result.text == "ok 2" and server.calls["slow"] == 2


def test_client_error_names_endpoint_status_and_message_without_retrying(scripted):
    server = scripted[0]
    gen = OpenAIGenerator(_backend(server.url, "bad", max_retries=5), sleep=lambda s: None)
    with pytest.raises(EndpointError) as err:
        gen.generate([_request()])
    message = str(err.value)
    assert server.url in message and "HTTP 400" in message and "max_tokens is too large" in message
    assert server.calls["bad"] == 1


def test_gives_up_after_max_retries(scripted):
    server = scripted[1]
    gen = OpenAIGenerator(_backend(server.url, "down", max_retries=2), sleep=lambda s: None)
    with pytest.raises(EndpointError, match="gave up after 3 attempts.*HTTP 503"):
        gen.generate([_request()])
    assert server.calls["down"] == 3


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_200_is_retried_on_the_5xx_schedule(scripted, kind):
    """A 200 that holds no chat completion (HTML, plain text, ``{}``) is retried with the 5xx backoff, not a crash."""
    server = scripted[0]
    model = f"flaky-{kind}"
    delays = []
    gen = OpenAIGenerator(_backend(server.url, model, max_retries=3), sleep=delays.append)
    [result] = gen.generate([_request()])
    assert result.text == "ok 3" and server.calls[model] == 3
    assert len(delays) == 2 and all(lo <= d <= hi for d, (lo, hi) in zip(delays, [(0.25, 0.5), (0.5, 1.0)]))


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_200_gives_up_with_one_error_naming_endpoint_and_body(scripted, kind):
    server = scripted[1]
    model = f"broken-{kind}"
    gen = OpenAIGenerator(_backend(server.url, model, max_retries=2), sleep=lambda s: None)
    with pytest.raises(EndpointError) as err:
        gen.generate([_request()])
    message = str(err.value)
    media_type, body = MALFORMED[kind]
    assert server.calls[model] == 3
    assert message.startswith("gave up after 3 attempts") and server.url in message
    assert "HTTP 200" in message and media_type in message and body[:BODY_EXCERPT] in message
    assert len(message) < BODY_EXCERPT + 300  # the body is truncated
    if len(body) > BODY_EXCERPT:
        assert body not in message and f"({len(body)} characters)" in message


def test_score_with_a_malformed_judge_endpoint_exits_2_with_one_line(scripted, tmp_path, capsys):
    """`turnrl score` with the judge behind an endpoint that answers ``{}``: status 2 and one line naming the
    endpoint and the body, instead of a traceback."""
    from turnrl.cli import main
    from turnrl.records import Task, Trajectory, write_jsonl

    server = scripted[0]
    write_jsonl(tmp_path / "tasks" / "train.jsonl",
                [Task(id="q", source="sciq", question="Q?", answer="A", choices=["x", "y"])])
    write_jsonl(tmp_path / "rollouts" / "trajectories.jsonl", [Trajectory(
        id="q#0", task_id="q", group_id="q",
        messages=[{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "The answer is A."}])])
    before = server.calls["broken-empty"]
    rc = main(["score", "--run_dir", str(tmp_path), "--reward.weights", "{judge_overall: 1.0}",
               "--reward.judge.backend", "openai", "--reward.judge.model", "broken-empty",
               "--reward.judge.base_url", f"[{server.url}]", "--reward.judge.max_retries", "1",
               "--reward.judge.cache_dir", str(tmp_path / "judge-cache")])
    err = capsys.readouterr().err
    assert rc == 2 and server.calls["broken-empty"] - before == 2
    errors = [line for line in err.splitlines() if "error" in line.lower()]  # besides the progress bar's lines
    assert len(errors) == 1 and "Traceback" not in err
    assert errors[0].startswith("turnrl score: error: gave up after 2 attempts")
    assert server.url in errors[0] and "without choices: '{}'" in errors[0]
    assert not (tmp_path / "scored" / "trajectories.jsonl").exists()


def test_api_key_comes_from_the_named_variable_and_is_never_shown(scripted, monkeypatch):
    server = scripted[0]
    monkeypatch.setenv("TURNRL_TEST_KEY", "sk-test-do-not-print")
    cfg = _backend(server.url, "keyed", api_key_env="TURNRL_TEST_KEY")
    OpenAIGenerator(cfg).generate([_request()])
    assert server.auth[-1] == "Bearer sk-test-do-not-print"
    with pytest.raises(EndpointError) as err:
        OpenAIGenerator(_backend(server.url, "bad", api_key_env="TURNRL_TEST_KEY")).generate([_request()])
    assert "sk-test" not in str(err.value) and "sk-test" not in repr(vars(OpenAIGenerator(cfg)))
    monkeypatch.delenv("TURNRL_TEST_KEY")
    with pytest.raises(ConfigError, match=r"\$TURNRL_TEST_KEY is not set"):
        OpenAIGenerator(BackendConfig(backend="openai", model="gpt-4o", api_key_env="TURNRL_TEST_KEY"))
