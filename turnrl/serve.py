"""``turnrl serve``: serve a model over the OpenAI-compatible chat-completions API (FastAPI + uvicorn).

Any model :func:`turnrl.models.resolve` knows is served -- an alias, a folder, a fine-tuned checkpoint or a PEFT
adapter folder -- through the ``hf`` backend. Endpoints:

- ``POST /v1/chat/completions``: OpenAI's request and response, with ``stream: true`` answered as server-sent
  events in OpenAI's ``chat.completion.chunk`` format. Supported fields: messages, model, temperature, top_p,
  max_tokens / max_completion_tokens, n, seed, stop, stream, stream_options.include_usage, and vLLM's extra
  ``top_k``. A choice that ended on a stop string reports it as ``stop_reason`` (as vLLM does); the string itself
  is not part of the content (as in OpenAI's API).
- ``GET /v1/models``: the one served model.
- ``GET /health``: ``{"status": "ok", "waiting": ..., "running": ..., "served": ...}``, counting sequences
  (choices) queued, being generated now, and finished since the start.

Concurrent requests are batched: the generation thread takes the first waiting request, waits up to
``batch_window_ms`` for others, and runs all of them (up to ``batch_size``) as one batch; whatever arrives during a
batch forms the next one (see docs/judge-and-endpoints.md for the measurements behind the defaults). A streamed
request shares batches with the others; its tokens are sent as they are sampled: the backend reports every
decoding step's tokens, and each choice's text delta goes out as one ``chat.completion.chunk`` event. Only text
the finished answer is sure to begin with is sent: an incomplete UTF-8 character, and a tail that could be the
start of a stop string, wait for the next token; the final chunk of a choice carries whatever is left and its
finish_reason.
"""

import asyncio
import inspect
import json
import queue
import secrets
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Literal

from turnrl.errors import require_extra
from turnrl.models import DEFAULT_MODEL
from turnrl.log import get_logger

logger = get_logger(__name__)


@dataclass
class ServeConfig:
    """Serve a model over the OpenAI-compatible API."""

    model: str = DEFAULT_MODEL
    """Model alias, GGUF path, folder, fine-tuned checkpoint or PEFT adapter folder."""
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str = "auto"
    """Weights' dtype: auto (bfloat16 where it runs natively, else float32), float32, bfloat16, float16."""
    served_name: str = ""
    """The model name clients send (default: --model as given)."""
    batch_size: int = 32
    """Most sequences generated together."""
    batch_window_ms: float = 20.0
    """How long a request waits for others to share its batch (0: batch only what is already waiting)."""
    max_tokens: int = 512
    """Token cap of a request that names none."""


class _Job:
    def __init__(self, requests: list, on_tokens: Callable[[list[tuple[int, int]]], None] | None = None):
        self.requests = requests
        self.on_tokens = on_tokens
        self.future: Future = Future()


class Batcher:
    """One generation thread that groups waiting requests into batches for the backend."""

    def __init__(self, generator: Any, batch_size: int, window_s: float):
        self.generator, self.batch_size, self.window_s = generator, batch_size, window_s
        self.queue: queue.Queue[_Job | None] = queue.Queue()
        self.batches: list[int] = []
        """Sizes of the batches run so far (for measurements)."""
        self.streams = "on_step" in inspect.signature(generator.generate).parameters
        """Whether the backend reports each decoding step's tokens (else a stream gets its text at the end)."""
        self.waiting = self.running = self.served = 0
        """Requests (sequences) queued, being generated, finished."""
        self._count = threading.Lock()
        self.thread = threading.Thread(target=self._loop, name="turnrl-serve-generate", daemon=True)
        self.thread.start()

    def submit(self, requests: list, on_tokens: Callable[[list[tuple[int, int]]], None] | None = None) -> Future:
        """Queue ``requests`` for the next batch. ``on_tokens`` (called in the generation thread) receives each
        decoding step's new tokens of these requests as ``[(index into requests, token id), ...]``."""
        job = _Job(requests, on_tokens)
        with self._count:
            self.waiting += len(requests)
        self.queue.put(job)
        return job.future

    def counts(self) -> dict[str, int]:
        with self._count:
            return {"waiting": self.waiting, "running": self.running, "served": self.served}

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=60)

    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            jobs, size = [job], len(job.requests)
            deadline = time.monotonic() + self.window_s
            while size < self.batch_size:
                try:
                    nxt = self.queue.get(timeout=max(0.0, deadline - time.monotonic())) \
                        if time.monotonic() < deadline else self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.put(None)
                    break
                jobs.append(nxt)
                size += len(nxt.requests)
            self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        flat = [r for j in jobs for r in j.requests]
        self.batches.append(len(flat))
        with self._count:
            self.waiting -= len(flat)
            self.running += len(flat)
        kwargs: dict[str, Any] = {}
        if self.streams and any(j.on_tokens is not None for j in jobs):
            owners = [(j, k) for j in jobs for k in range(len(j.requests))]  # flat index -> (job, its index)

            def on_step(sampled: list[tuple[int, int]]) -> None:
                per_job: dict[int, tuple[_Job, list[tuple[int, int]]]] = {}
                for i, token in sampled:
                    job, k = owners[i]
                    if job.on_tokens is not None:
                        per_job.setdefault(id(job), (job, []))[1].append((k, token))
                for job, items in per_job.values():
                    job.on_tokens(items)  # type: ignore[misc]

            kwargs["on_step"] = on_step
        try:
            results = self.generator.generate(flat, **kwargs)
        except Exception as exc:  # every waiting request gets the error; the server keeps running
            for j in jobs:
                j.future.set_exception(exc)
            return
        finally:
            with self._count:
                self.running -= len(flat)
        with self._count:
            self.served += len(flat)
        start = 0
        for j in jobs:
            j.future.set_result(results[start: start + len(j.requests)])
            start += len(j.requests)


def create_app(generator: Any, served_name: str, cfg: ServeConfig) -> Any:
    """The FastAPI application around a loaded backend (``generator`` needs ``generate`` and ``tokenizer``).

    (This module does without ``from __future__ import annotations``: FastAPI reads the request models below from
    their annotations at runtime.)"""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field

    from turnrl.chat import encode_prompt
    from turnrl.errors import InputError
    from turnrl.generation import GenRequest, Sampling, derive_seed

    class Message(BaseModel):
        model_config = ConfigDict(extra="allow")
        role: Literal["system", "developer", "user", "assistant", "tool"]
        content: str | list[dict[str, Any]] | None = None

    class StreamOptions(BaseModel):
        include_usage: bool = False

    class ChatRequest(BaseModel):
        # NaN and infinity (which JSON parsers accept) are refused as what they are, not as out of range.
        model_config = ConfigDict(extra="allow", allow_inf_nan=False)
        model: str
        messages: list[Message] = Field(min_length=1)
        temperature: float = Field(1.0, ge=0.0, le=2.0)
        top_p: float = Field(1.0, gt=0.0, le=1.0)
        top_k: int = -1
        max_tokens: int | None = Field(None, ge=1)
        max_completion_tokens: int | None = Field(None, ge=1)
        n: int = Field(1, ge=1, le=16)
        seed: int | None = None
        stop: str | list[str] | None = None
        stream: bool = False
        stream_options: StreamOptions | None = None

    batcher = Batcher(generator, cfg.batch_size, cfg.batch_window_ms / 1000.0)
    tokenizer = generator.tokenizer
    context = getattr(getattr(generator, "model", None), "config", None)
    max_positions = getattr(context, "max_position_embeddings", None)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        batcher.close()

    app = FastAPI(title="turnrl serve", lifespan=lifespan)
    app.state.batcher = batcher
    app_started = int(time.time())

    def error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None,
              param: str | None = None) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind,
                                                                   "param": param, "code": code}})

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error(400, f"{where}: {first.get('msg')}", param=where or None)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": served_name, "object": "model", "created": app_started,
                                            "owned_by": "turnrl"}]}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", **batcher.counts()}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest):
        if body.model != served_name:
            return error(404, f"The model `{body.model}` does not exist; this server serves `{served_name}`.",
                         code="model_not_found", param="model")
        unsupported = [k for k in ("tools", "functions", "response_format", "logprobs") if (body.model_extra or {})
                       .get(k) not in (None, False, [])]
        if unsupported:
            return error(400, f"{unsupported[0]}: not supported by turnrl serve", param=unsupported[0])
        messages = []
        for m in body.messages:
            content = m.content if isinstance(m.content, str) else "".join(
                part.get("text", "") for part in (m.content or []) if part.get("type") == "text")
            messages.append({"role": {"developer": "system"}.get(m.role, m.role), "content": content})
        try:
            prompt_tokens = len(encode_prompt(tokenizer, messages))
        except InputError as exc:
            return error(400, str(exc), param="messages")
        max_new = body.max_completion_tokens or body.max_tokens or cfg.max_tokens
        if max_positions and prompt_tokens + max_new > max_positions:
            return error(400, f"This model's maximum context length is {max_positions} tokens; the messages take "
                              f"{prompt_tokens} and max_tokens asks for {max_new}.", param="max_tokens")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        base_seed = body.seed if body.seed is not None else secrets.randbits(63)
        requests = [GenRequest(messages=messages, sampling=Sampling(
            temperature=body.temperature, top_p=body.top_p, top_k=max(0, body.top_k), max_new_tokens=max_new,
            stop=stop, seed=base_seed if k == 0 else derive_seed(base_seed, k))) for k in range(body.n)]
        created, rid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_stream(batcher, requests, stop, tokenizer, rid, created, served_name,
                                             prompt_tokens, include_usage), media_type="text/event-stream")
        try:
            results = await asyncio.wrap_future(batcher.submit(requests))
        except Exception as exc:
            return error(500, f"generation failed: {exc}", kind="server_error")
        choices = _choices(results, stop)
        usage = _usage(prompt_tokens, choices)
        return {
            "id": rid, "object": "chat.completion", "created": created, "model": served_name,
            "choices": [{"index": c["index"], "message": {"role": "assistant", "content": c["text"]},
                         "finish_reason": c["finish_reason"], "stop_reason": c["stop_reason"], "logprobs": None}
                        for c in choices],
            "usage": usage,
        }

    return app


def _split_stop(text: str, stop: list[str]) -> tuple[str, str | None]:
    """The hf backend keeps the stop string that ended a turn; the API reports it apart from the content."""
    matched = max((s for s in stop if text.endswith(s)), key=len, default=None)
    return (text[: len(text) - len(matched)], matched) if matched else (text, None)


def _choices(results: list, stop: list[str]) -> list[dict[str, Any]]:
    choices = []
    for k, res in enumerate(results):
        text, matched = _split_stop(res.text, stop) if res.finish == "stop_string" else (res.text, None)
        choices.append({"index": k, "text": text, "tokens": res.tokens, "stop_reason": matched,
                        "finish_reason": "length" if res.finish == "length" else "stop"})
    return choices


def _usage(prompt_tokens: int, choices: list[dict[str, Any]]) -> dict[str, int]:
    usage = {"prompt_tokens": prompt_tokens * len(choices),
             "completion_tokens": sum(c["tokens"] for c in choices)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return usage


class _Deltas:
    """The text of one streamed choice, from its tokens as they are sampled: :meth:`push` returns the new text
    that the finished answer is sure to begin with. An incomplete UTF-8 character (decoded as U+FFFD) and a tail
    that could be the start of a stop string are held back until later tokens settle them (a stop string itself is
    never sent: the API reports it apart from the content)."""

    def __init__(self, tokenizer: Any, stop: list[str]):
        self.tokenizer, self.stop = tokenizer, stop
        self.tokens: list[int] = []
        self.sent = ""

    def push(self, token: int) -> str:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True).rstrip("\ufffd")
        found = [text.find(s) for s in self.stop if s and s in text]
        if found:
            text = text[: min(found)]
        else:
            hold = max((k for s in self.stop for k in range(1, min(len(s) - 1, len(text)) + 1)
                        if text.endswith(s[:k])), default=0)
            text = text[: len(text) - hold]
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta

    def rest(self, final: str) -> str:
        """What is left to send of the finished choice's content."""
        return final[len(self.sent):] if final.startswith(self.sent) else ""


async def _stream(batcher: Batcher, requests: list, stop: list[str], tokenizer: Any, rid: str, created: int,
                  model: str, prompt_tokens: int, include_usage: bool):
    """Server-sent events of a streamed request: a role chunk per choice, then each choice's text deltas as the
    generation thread samples them, then per choice the rest and its finish_reason, the usage if asked, [DONE]."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def on_tokens(items: list[tuple[int, int]]) -> None:  # the generation thread
        loop.call_soon_threadsafe(events.put_nowait, items)

    future = batcher.submit(requests, on_tokens=on_tokens)
    future.add_done_callback(lambda _: loop.call_soon_threadsafe(events.put_nowait, None))

    def event(choice_list: list[dict[str, Any]], **extra: Any) -> str:
        chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": choice_list, **extra}
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    def content(k: int, text: str) -> str:
        return event([{"index": k, "delta": {"content": text}, "finish_reason": None}])

    deltas = [_Deltas(tokenizer, stop) for _ in requests]
    for k in range(len(requests)):
        yield event([{"index": k, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    while (items := await events.get()) is not None:
        for k, token in items:
            if text := deltas[k].push(token):
                yield content(k, text)
    try:
        results = future.result()
    except Exception as exc:  # the status line has gone out: report the failure in the stream
        failure = {"message": f"generation failed: {exc}", "type": "server_error", "param": None, "code": None}
        yield f"data: {json.dumps({'error': failure}, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"
        return
    choices = _choices(results, stop)
    for c in choices:
        if text := deltas[c["index"]].rest(c["text"]):
            yield content(c["index"], text)
        yield event([{"index": c["index"], "delta": {}, "finish_reason": c["finish_reason"],
                      "stop_reason": c["stop_reason"]}])
    if include_usage:
        yield event([], usage=_usage(prompt_tokens, choices))
    yield "data: [DONE]\n\n"


def serve(cfg: ServeConfig) -> None:
    require_extra("serve", "turnrl serve")
    import uvicorn

    from turnrl.generation import BackendConfig
    from turnrl.generation.hf import HFGenerator

    generator = HFGenerator(BackendConfig(backend="hf", model=cfg.model, dtype=cfg.dtype, batch_size=cfg.batch_size))
    name = cfg.served_name or cfg.model
    app = create_app(generator, name, cfg)
    logger.info(f"turnrl serve: {cfg.model} as {name!r} on http://{cfg.host}:{cfg.port}/v1")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning")
