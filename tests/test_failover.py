"""Failover of the ``openai`` backend between endpoints: a real rollout whose policy is two ``turnrl serve``
processes on loopback, one of them killed (SIGKILL) while it holds requests; and, against a scripted server and
closed ports, the cool-down of a dead endpoint and the error when every endpoint is down."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest
from test_openai_backend import ScriptedServer
from test_serve import SERVED, ServeProcess, free_port

from turnrl.generation import BackendConfig, GenRequest, Sampling
from turnrl.generation.openai_backend import EndpointError, OpenAIGenerator


def _request(text: str = "Hello") -> GenRequest:
    return GenRequest([{"role": "user", "content": text}], Sampling())


class Reencoding:
    """The in-process hf backend with every prompt encoded afresh from its messages, as a server does."""

    name = "hf"

    def __init__(self, generator):
        self.generator = generator

    def generate(self, requests, desc=None):
        return self.generator.generate([GenRequest(r.messages, r.sampling) for r in requests], desc)


class KillWhenBusy(threading.Thread):
    """SIGKILLs a server as soon as its ``/health`` shows requests served and others in flight (queued or being
    generated), polling every 20 ms; ``seen`` is the counts it acted on."""

    def __init__(self, server: ServeProcess, served: int):
        super().__init__(daemon=True)
        self.server, self.served = server, served
        self.seen: dict | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                counts = self.server.health()
            except httpx.HTTPError:
                counts = None
            if counts and counts["served"] >= self.served and counts["waiting"] + counts["running"] > 0:
                self.server.proc.send_signal(signal.SIGKILL)
                self.seen = counts
                return
            self.done.wait(0.02)


def test_rollout_survives_a_killed_endpoint(tiny_model_dir, tmp_path):
    """Two servers behind one policy; the first is killed mid-run while requests wait in its batch window. The
    rollout finishes on the second, and the log holds every conversation once, exactly the conversations the
    model gives in-process."""
    from turnrl.envs import EnvConfig, make_env
    from turnrl.generation.hf import HFGenerator
    from turnrl.records import Task
    from turnrl.rollout import build_jobs, log_rollouts, run_episodes

    # The first server waits 1 s for company before each batch: requests sit in its queue long enough for the
    # killer to see them (deterministically, without timing the kill), and its first round is served before.
    doomed = ServeProcess(tiny_model_dir, flags=("--batch_window_ms", "1000"))
    survivor = ServeProcess(tiny_model_dir)
    try:
        doomed.wait_ready()
        survivor.wait_ready()
        env = make_env(EnvConfig(name="reasoning", mode="standard", max_new_tokens=8))
        tasks = [Task(id=f"q{i}", source="sciq", question=f"Which option is number {i}?", answer="A",
                      choices=["one", "two", "three", "four"]) for i in range(4)]
        # 8 conversations, 3 turns each, greedy: a sampled token can flip where two tokens' cumulative
        # probabilities straddle the draw, and the served batches are padded differently from the in-process ones
        # (at temperature 1.0, with the job seeds of option shuffling, 2 of 4 sampled conversations differed).
        jobs = build_jobs(tasks, env.settings(), 2, [0.0], 0.95, 0, 0)
        cfg = BackendConfig(backend="openai", model=SERVED, base_url=[doomed.base, survivor.base], concurrency=4,
                            timeout=60, max_retries=3)
        policy = OpenAIGenerator(cfg)
        policy.cooldown = 600.0  # the dead server stays marked down however slowly the rest runs
        killer = KillWhenBusy(doomed, served=2)
        killer.start()
        out = tmp_path / "rollouts" / "trajectories.jsonl"
        try:
            written = log_rollouts(out, env, jobs, cfg, chunk_size=4, desc="failover", generator=policy)
        finally:
            killer.done.set()
            killer.join(timeout=30)
        assert killer.seen is not None, "the first server was never seen busy"
        assert doomed.proc.wait(timeout=30) == -signal.SIGKILL
        # The requests it held failed over to the survivor, which then took every request.
        assert policy.failures[doomed.base] >= 1 and policy.failures[survivor.base] == 0
        assert policy.down() == [doomed.base]
    finally:
        doomed.stop()
        survivor.stop()

    records = [json.loads(line) for line in out.read_text().splitlines()]
    ids = [r["id"] for r in records]
    assert written == len(jobs) and len(records) == len(jobs)
    assert len(set(ids)) == len(ids) and set(ids) == {j.id for j in jobs}
    assert all(r["policy"]["backend"] == "openai" for r in records)
    by_id = {r["id"]: r for r in records}
    for r in records:
        assistant = [m for m in r["messages"] if m["role"] == "assistant"]
        assert len(assistant) == len(r["turns"]) == 3 and all(t["tokens"] > 0 for t in r["turns"])
    # Retried requests (same messages, same seeds) give what an uninterrupted run gives.
    local = Reencoding(HFGenerator(BackendConfig(model=str(tiny_model_dir), dtype="float32")))
    expected = run_episodes(env, jobs, local)
    assert [by_id[j.id]["messages"] for j in jobs] == [e.messages for e in expected]


@pytest.fixture(scope="module")
def scripted():
    server = ScriptedServer()
    yield server
    server.stop()


def test_a_dead_endpoint_is_passed_over_for_its_cool_down(scripted):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: connections are refused
    delays = []
    gen = OpenAIGenerator(BackendConfig(backend="openai", model="cool", base_url=[dead, scripted.url],
                                        concurrency=1, max_retries=2), sleep=delays.append)
    results = gen.generate([_request(f"r{i}") for i in range(6)])
    assert [r.text for r in results] == [f"ok {n}" for n in range(1, 7)]
    # The dead endpoint was tried once; its request failed over at once (no backoff), the rest passed it over.
    assert gen.failures == {dead: 1, scripted.url: 0} and delays == [] and scripted.calls["cool"] == 6
    assert gen.down() == [dead]
    # After the cool-down it is tried again (and passed over again).
    real = gen._clock
    gen._clock = lambda: real() + gen.cooldown + 1
    assert gen.down() == []
    gen.generate([_request(f"s{i}") for i in range(2)])
    assert gen.failures[dead] == 2 and scripted.calls["cool"] == 8 and delays == []


def test_every_endpoint_down_fails_after_the_retries_naming_each():
    dead = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]
    delays = []
    gen = OpenAIGenerator(BackendConfig(backend="openai", model="m", base_url=dead, max_retries=3),
                          sleep=delays.append)
    start = time.monotonic()
    with pytest.raises(EndpointError) as err:
        gen.generate([_request()])
    message = str(err.value)
    assert message.startswith("gave up after 4 attempts (max_retries 3); every endpoint failed")
    assert all(f"{url}: connection failed" in message for url in dead)
    # The first failure fails over at once; once both are down, the retries back off.
    assert len(delays) == 2 and gen.failures == {url: 2 for url in dead}
    assert time.monotonic() - start < 10
