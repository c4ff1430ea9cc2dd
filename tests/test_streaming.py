"""``turnrl serve`` streams tokens as they are generated: a real ``turnrl serve`` process on loopback read with
httpx's streaming API (the deltas add up to the plain reply, stop strings held back, concurrent plain requests
unharmed), and the same app on loopback around a backend paused mid-generation until the client has received
text -- which it can only receive if the server streams before the generation is done."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from test_serve import SERVED, free_port, running_serve

MESSAGES = [{"role": "user", "content": "Tell me a long story about the sea."}]


def read_stream(url: str, payload: dict, on_content=None) -> tuple[list[dict], list[str]]:
    """POST a streaming request; the parsed chunks and the raw data lines (``[DONE]`` included), in order.
    ``on_content`` is called at the first content delta, while the stream is still open."""
    chunks, lines = [], []
    with httpx.stream("POST", f"{url}/chat/completions", json={**payload, "stream": True}, timeout=120) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if not line:
                continue
            assert line.startswith("data: ")
            data = line[len("data: "):]
            lines.append(data)
            if data == "[DONE]":
                continue
            chunk = json.loads(data)
            chunks.append(chunk)
            if on_content and any(c["delta"].get("content") for c in chunk["choices"]):
                on_content()
                on_content = None
    return chunks, lines


def contents(chunks: list[dict], index: int = 0) -> list[str]:
    return [c["delta"]["content"] for ch in chunks for c in ch["choices"]
            if c["index"] == index and c["delta"].get("content")]


def plain(url: str, payload: dict) -> dict:
    resp = httpx.post(f"{url}/chat/completions", json=payload, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()


# --------------------------------------------------------------------------- the turnrl serve process


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    with running_serve(tiny_model_dir) as base:
        yield base


def test_stream_adds_up_to_the_plain_reply(served):
    payload = {"model": SERVED, "messages": MESSAGES, "max_tokens": 48, "temperature": 0.0}
    reply = plain(served, payload)
    text, tokens = reply["choices"][0]["message"]["content"], reply["usage"]["completion_tokens"]
    assert text and reply["choices"][0]["finish_reason"] == "length" and tokens == 48
    chunks, lines = read_stream(served, {**payload, "stream_options": {"include_usage": True}})
    assert lines[-1] == "[DONE]" and lines.count("[DONE]") == 1
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == SERVED for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = contents(chunks)
    assert "".join(pieces) == text
    # One delta per sampled token, but for tokens that end inside a character (sent with the next one).
    assert tokens // 2 < len(pieces) <= tokens
    finals = [c for ch in chunks for c in ch["choices"] if c["finish_reason"] is not None]
    assert len(finals) == 1 and finals[0]["finish_reason"] == "length" and finals[0]["delta"] == {}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == tokens


def test_stream_holds_back_stop_strings_and_streams_each_choice(served):
    payload = {"model": SERVED, "messages": MESSAGES, "max_tokens": 32, "temperature": 1.0, "seed": 7}
    text = plain(served, payload)["choices"][0]["message"]["content"]
    stop = text[len(text) // 2: len(text) // 2 + 3]  # a string the model writes, mid-reply
    stopped = plain(served, {**payload, "stop": [stop]})["choices"][0]
    assert stopped["finish_reason"] == "stop" and stopped["stop_reason"] == stop
    chunks, _ = read_stream(served, {**payload, "stop": [stop]})
    assert "".join(contents(chunks)) == stopped["message"]["content"] == text[: text.index(stop)]
    final = [c for ch in chunks for c in ch["choices"] if c["finish_reason"]]
    assert [(c["finish_reason"], c["stop_reason"]) for c in final] == [("stop", stop)]
    # n = 2: each choice streams its own deltas, which add up to that choice of the plain reply.
    both = plain(served, {**payload, "n": 2})["choices"]
    chunks, _ = read_stream(served, {**payload, "n": 2})
    for k in range(2):
        assert len(contents(chunks, k)) > 1 and "".join(contents(chunks, k)) == both[k]["message"]["content"]


def test_plain_requests_keep_working_alongside_streams(served):
    prompts = [[{"role": "user", "content": f"Question number {i}: what is {i} plus {i}?"}] for i in range(3)]
    payloads = [{"model": SERVED, "messages": m, "max_tokens": 24, "temperature": 0.0} for m in prompts]
    alone = [plain(served, p)["choices"][0]["message"]["content"] for p in payloads]
    stream_payload = {"model": SERVED, "messages": MESSAGES, "max_tokens": 48, "temperature": 0.0}
    stream_alone = plain(served, stream_payload)["choices"][0]["message"]["content"]
    with ThreadPoolExecutor(max_workers=5) as pool:
        streams = [pool.submit(read_stream, served, stream_payload) for _ in range(2)]
        plains = [pool.submit(plain, served, p) for p in payloads]
        got = [f.result(timeout=120)["choices"][0]["message"]["content"] for f in plains]
        streamed = ["".join(contents(f.result(timeout=120)[0])) for f in streams]
    assert got == alone
    assert streamed == [stream_alone, stream_alone]
    assert httpx.get(served.removesuffix("/v1") + "/health", timeout=10).json()["running"] == 0


# --------------------------------------------------------------------------- a backend paused mid-generation


class PausedBackend:
    """The hf backend, paused after its ``pause_at``-th decoding step of a streamed batch until ``release`` is set
    (at most ``wait_s``); ``released`` records whether it was (True) or the wait ran out (False)."""

    def __init__(self, inner, pause_at: int, wait_s: float = 60.0):
        self.inner, self.pause_at, self.wait_s = inner, pause_at, wait_s
        self.tokenizer, self.model = inner.tokenizer, inner.model
        self.release = threading.Event()
        self.released: bool | None = None
        self.steps = 0

    def generate(self, requests, desc=None, on_step=None):
        if on_step is None:
            return self.inner.generate(requests, desc)

        def step(sampled):
            on_step(sampled)
            self.steps += 1
            if self.steps == self.pause_at:
                self.released = self.release.wait(self.wait_s)

        return self.inner.generate(requests, desc, on_step=step)


@pytest.fixture(scope="module")
def paused(tiny_model_dir):
    """The app of ``turnrl serve`` on loopback (uvicorn in a thread) around a :class:`PausedBackend`."""
    import uvicorn

    from turnrl.generation import BackendConfig
    from turnrl.generation.hf import HFGenerator
    from turnrl.serve import ServeConfig, create_app

    backend = PausedBackend(HFGenerator(BackendConfig(model=str(tiny_model_dir), dtype="float32")), pause_at=3)
    app = create_app(backend, SERVED, ServeConfig(model=str(tiny_model_dir), batch_window_ms=0))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1", backend
    backend.release.set()
    server.should_exit = True
    thread.join(timeout=30)


def test_first_text_arrives_while_the_generation_is_paused(paused):
    """The backend stops after 3 of 40 decoding steps and goes on only once the client holds a content chunk: the
    stream completes with ``released`` True only if text was sent before the generation finished."""
    url, backend = paused
    payload = {"model": SERVED, "messages": MESSAGES, "max_tokens": 40, "temperature": 0.0}
    seen_at_step = []

    def first_content():
        seen_at_step.append(backend.steps)
        backend.release.set()

    chunks, lines = read_stream(url, payload, on_content=first_content)
    assert backend.released is True, "no text reached the client while the generation was paused"
    assert seen_at_step and seen_at_step[0] <= backend.pause_at  # received at step 3 of 40 at the latest
    assert backend.steps == 40 and lines[-1] == "[DONE]"
    pieces = contents(chunks)
    assert len(pieces) > 1
    assert "".join(pieces) == plain(url, payload)["choices"][0]["message"]["content"]


# --------------------------------------------------------------------------- the deltas on their own


def test_deltas_hold_back_partial_characters_and_stop_string_prefixes(tokenizer):
    from turnrl.serve import _Deltas

    text = "Voilà 😀 — the sea, über alles 海 END tail"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    deltas = _Deltas(tokenizer, stop=[])
    sent = [deltas.push(t) for t in ids]
    assert "\ufffd" not in "".join(sent) and "".join(sent) + deltas.rest(text) == text
    assert sum(1 for s in sent if s) > len(ids) // 2
    # With a stop string: nothing of it (nor of a prefix that might become it) is ever sent.
    deltas = _Deltas(tokenizer, stop=[" END"])
    sent = []
    for t in ids:
        sent.append(deltas.push(t))
        assert " E" not in "".join(sent)
    content = text[: text.index(" END")]
    assert "".join(sent) == content and deltas.rest(content) == ""
