"""``turnrl serve`` running for real (a subprocess on a free loopback port) with the tiny model, read with the
official ``openai`` client and raw HTTP; and the request batcher on its own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

SERVED = "tiny-llama"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``turnrl serve`` as a subprocess on a free loopback port: started by the constructor (so that several start
    at once), ready after :meth:`wait_ready`; ``proc`` is the process, ``base`` its base URL."""

    def __init__(self, model_dir: Path, served_name: str = SERVED, flags: tuple[str, ...] = ()):
        self.port = free_port()
        self.log = Path(tempfile.NamedTemporaryFile(prefix="turnrl-serve-", suffix=".log", delete=False).name)
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "turnrl.cli", "serve", "--model", str(model_dir), "--port", str(self.port),
                 "--dtype", "float32", "--served_name", served_name, "--batch_window_ms", "20", *flags],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        self.base = f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self, timeout: float = 300.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"turnrl serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.base}/models", timeout=2).status_code == 200:
                    return self.base
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"turnrl serve did not start in {timeout:.0f} s:\n{self.log.read_text()}")
            time.sleep(0.5)

    def health(self) -> dict:
        """``GET /health``: the queued, running and finished request counts."""
        return httpx.get(self.base.removesuffix("/v1") + "/health", timeout=10).json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.unlink(missing_ok=True)


@contextmanager
def running_serve(model_dir: Path, served_name: str = SERVED, startup_timeout: float = 300.0):
    """Start ``turnrl serve`` on a free port and yield its base URL; stop it afterwards."""
    server = ServeProcess(model_dir, served_name)
    try:
        yield server.wait_ready(startup_timeout)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    with running_serve(tiny_model_dir) as base:
        yield base


@pytest.fixture(scope="module")
def client(served):
    from openai import OpenAI

    return OpenAI(base_url=served, api_key="EMPTY", max_retries=0, timeout=120)


MESSAGES = [{"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "Which gas do plants absorb for photosynthesis?"}]


def test_models_lists_the_served_name(client):
    assert [m.id for m in client.models.list().data] == [SERVED]


@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 1.0, "seed": 11}])
def test_stream_concatenates_to_the_plain_answer(client, sampling):
    plain = client.chat.completions.create(model=SERVED, messages=MESSAGES, max_tokens=24, **sampling)
    text = plain.choices[0].message.content
    assert text and plain.usage.completion_tokens == 24 and plain.choices[0].finish_reason == "length"
    chunks = list(client.chat.completions.create(model=SERVED, messages=MESSAGES, max_tokens=24, stream=True,
                                                 stream_options={"include_usage": True}, **sampling))
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 1  # sent in several events, not one
    assert "".join(pieces) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 24 and all(c.object == "chat.completion.chunk" for c in chunks)


def test_stop_string_is_reported_apart_from_the_content(served, tiny_model_dir):
    from turnrl.generation import BackendConfig, GenRequest, Sampling
    from turnrl.generation.hf import HFGenerator

    # What the model writes in-process, to pick a stop string it will produce.
    local = HFGenerator(BackendConfig(model=str(tiny_model_dir), dtype="float32"))
    text = local.generate([GenRequest(MESSAGES, Sampling(temperature=1.0, seed=5, max_new_tokens=24))])[0].text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    body = httpx.post(f"{served}/chat/completions", timeout=120, json={
        "model": SERVED, "messages": MESSAGES, "max_tokens": 24, "temperature": 1.0, "seed": 5, "stop": [stop]}).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == stop
    assert choice["message"]["content"] == text[: text.index(stop)]


def test_n_choices_and_seeds(client):
    one = client.chat.completions.create(model=SERVED, messages=MESSAGES, max_tokens=8, temperature=1.0, seed=3)
    two = client.chat.completions.create(model=SERVED, messages=MESSAGES, max_tokens=8, temperature=1.0, seed=3, n=2)
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].message.content == one.choices[0].message.content
    assert two.choices[1].message.content != one.choices[0].message.content
    assert two.usage.completion_tokens == 16


def test_request_errors(client):
    import openai

    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model=SERVED, messages=[])
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model=SERVED, messages=MESSAGES, temperature=3.0)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.chat.completions.create(model=SERVED, messages=MESSAGES, max_tokens=10_000_000)


@pytest.mark.parametrize("field, value", [("temperature", "NaN"), ("top_p", "NaN"), ("temperature", "Infinity"),
                                          ("top_p", "-Infinity")])
def test_a_sampling_value_that_is_not_a_finite_number_is_named_as_such(field, value):
    """NaN and infinity (Python's JSON parser accepts them) are refused as not finite, not as out of range; the
    request never reaches the model."""
    from fastapi.testclient import TestClient

    from turnrl.serve import ServeConfig, create_app

    class NoModel:
        tokenizer = None

        def generate(self, requests, desc=None):
            raise AssertionError("an invalid request reached the model")

    body = '{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "%s": %s}' % (SERVED, field, value)
    with TestClient(create_app(NoModel(), SERVED, ServeConfig())) as http:
        response = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == f"{field}: Input should be a finite number"
    assert response.json()["error"]["param"] == field


def test_batcher_groups_concurrent_requests():
    from turnrl.generation import GenResult
    from turnrl.serve import Batcher

    class Recorder:
        def __init__(self):
            self.calls = []

        def generate(self, requests, desc=None):
            self.calls.append(list(requests))
            return [GenResult(text=f"reply to {r}", tokens=1, finish="stop") for r in requests]

    gen = Recorder()
    batcher = Batcher(gen, batch_size=8, window_s=0.5)
    futures = []
    threads = [threading.Thread(target=lambda k=k: futures.append((k, batcher.submit([f"r{k}a", f"r{k}b"]))))
               for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results = {k: f.result(timeout=10) for k, f in futures}
    assert len(gen.calls) == 1 and sorted(gen.calls[0]) == sorted(f"r{k}{s}" for k in range(3) for s in "ab")
    for k in range(3):  # each caller gets its own results, in its own order
        assert [r.text for r in results[k]] == [f"reply to r{k}a", f"reply to r{k}b"]
    # The batch size caps a batch: 5 requests of 2 with a cap of 4 make batches of at most 4 requests.
    capped, gen2 = [], Recorder()
    b2 = Batcher(gen2, batch_size=4, window_s=0.2)
    capped = [b2.submit([k, k]) for k in range(5)]
    [f.result(timeout=10) for f in capped]
    assert max(len(c) for c in gen2.calls) <= 4 and sum(len(c) for c in gen2.calls) == 10
    batcher.close()
    b2.close()


def test_cli_reports_a_missing_model(tmp_path, capsys):
    from turnrl.cli import main

    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
