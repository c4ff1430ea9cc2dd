"""The ``openai`` backend: any OpenAI-compatible chat-completions endpoint (``vllm serve``, ``turnrl serve``, a
hosted API), through the official ``openai`` client.

- **Endpoints.** ``base_url`` lists one or more endpoints; requests are dealt to them round-robin, so a rollout
  scales over many ``vllm serve`` instances. An empty list means the client's default (``$OPENAI_BASE_URL`` or
  https://api.openai.com/v1).
- **Failover.** An endpoint that cannot be reached (connection refused or dropped, no connection within
  :data:`CONNECT_TIMEOUT_S`) or that times out is marked down for :data:`COOLDOWN_S` seconds: requests pass it over
  while another endpoint is up, and the failed request is sent again at once to the next endpoint that is up.
  After the cool-down the endpoint gets requests again (the first success clears the mark; another failure
  renews it). When every endpoint is down, requests still try the one whose cool-down ends first, with backoff,
  so a server that comes back is found; after ``max_retries`` retries the error lists each endpoint's last
  failure.
- **Key.** Read from the environment variable named by ``api_key_env``; it is handed to the client and never
  logged, stored or put in an error message. Local servers need none (a placeholder is sent).
- **Concurrency.** At most ``concurrency`` requests are in flight; results come back in request order.
- **Retries.** A timeout, a failed connection, HTTP 408/409/429/5xx, or a malformed success (a 200 whose body is
  not JSON -- an HTML page, ``text/plain`` -- or is JSON without a completion in it, such as ``{}``) is retried up
  to ``max_retries`` times with exponential backoff (or the server's ``Retry-After``; none before a failover to an
  endpoint that is up), each retry on the next endpoint; after the last one the run stops with an error naming the
  endpoint and what came back (the body truncated to :data:`BODY_EXCERPT` characters). Any other 4xx is a mistake
  in the request or the setup (unknown model, bad key); it stops the run at once with an error naming the
  endpoint, the status and the server's message.
- **Sampling.** temperature, top_p, max_tokens, seed and stop strings come from each request's
  :class:`~turnrl.generation.Sampling` (top_k, which the OpenAI API lacks, is sent as vLLM's extra ``top_k``
  field only when set).
- **Finish.** ``length`` -> "length". ``stop`` -> "stop_string" when the server reports the stop string that ended
  the turn (vLLM and ``turnrl serve`` return it as ``stop_reason``); the string is then appended to the text, since
  the API drops it and the hf backend keeps it. Otherwise "stop". Hosted APIs that do not report the matched stop
  string give "stop" for both.
- **Roles.** ``tool`` messages are sent as ``user`` messages: logged tool observations carry no ``tool_call_id``,
  which the API requires of a tool message.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Callable

from tqdm.auto import tqdm

from turnrl.errors import ConfigError, TurnrlError
from turnrl.generation.base import BackendConfig, GenRequest, GenResult, Sampling

RETRYABLE_STATUS = {408, 409, 429}
"""Besides every 5xx: request timeout, conflict, rate limit."""
BACKOFF_BASE, BACKOFF_MAX = 0.5, 30.0
COOLDOWN_S = 30.0
"""Seconds an endpoint that could not be reached or timed out is passed over (while another one is up)."""
CONNECT_TIMEOUT_S = 10.0
"""Seconds to wait for a connection (at most ``timeout``): a dead host fails over quickly, not after ``timeout``."""
BODY_EXCERPT = 200
"""Characters of a malformed body quoted in the error."""


class EndpointError(TurnrlError):
    """An endpoint refused a request (a 4xx other than 408/409/429) or kept failing (or answering malformed
    bodies) after every retry."""


class OpenAIGenerator:
    name = "openai"

    def __init__(self, cfg: BackendConfig, sleep: Callable[[float], None] = time.sleep):
        import openai

        if cfg.concurrency < 1:
            raise ConfigError(f"concurrency: {cfg.concurrency}; expected at least 1 request in flight")
        if cfg.max_retries < 0:
            raise ConfigError(f"max_retries: {cfg.max_retries}; expected 0 or more")
        key = os.environ.get(cfg.api_key_env, "")
        if not key:
            if not cfg.base_url:
                raise ConfigError(f"backend openai: no base_url and ${cfg.api_key_env} is not set; export your API key "
                                  f"in {cfg.api_key_env}, or point base_url at a local server (vllm serve, turnrl serve)")
            key = "EMPTY"  # local servers accept any key unless started with one
        self.cfg = cfg
        self.revision = ""
        self._sleep = sleep
        self._clock = time.monotonic
        # openai's own Timeout: the HTTP library under the client changed (httpx, later httpx2) between releases.
        timeout = openai.Timeout(cfg.timeout, connect=min(cfg.timeout, CONNECT_TIMEOUT_S))
        self._clients = [openai.OpenAI(api_key=key, base_url=url, timeout=timeout, max_retries=0)
                         for url in (cfg.base_url or [None])]
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self.cooldown = COOLDOWN_S
        """Seconds an unreachable endpoint is passed over (see the module's docstring)."""
        self._down_until = [0.0] * len(self._clients)
        self.failures: dict[str, int] = {e: 0 for e in self.endpoints}
        """Failed attempts per endpoint so far (unreachable, timed out, retryable status, malformed body)."""

    @property
    def endpoints(self) -> list[str]:
        return [str(c.base_url).rstrip("/") for c in self._clients]

    def down(self) -> list[str]:
        """The endpoints marked down now (unreachable or timed out within the last ``cooldown`` seconds)."""
        now = self._clock()
        with self._lock:
            return [e for e, until in zip(self.endpoints, self._down_until) if until > now]

    def _pick(self, start: int) -> int:
        """The first endpoint from ``start`` on (round-robin order) that is not marked down; when all are, the one
        whose cool-down ends first."""
        n = len(self._clients)
        now = self._clock()
        with self._lock:
            order = [(start + k) % n for k in range(n)]
            up = [i for i in order if self._down_until[i] <= now]
            return up[0] if up else min(order, key=lambda i: self._down_until[i])

    def _is_up(self, index: int) -> bool:
        with self._lock:
            return self._down_until[index] <= self._clock()

    def _mark(self, index: int, ok: bool, unreachable: bool = False) -> None:
        with self._lock:
            if ok:
                self._down_until[index] = 0.0
                return
            self.failures[self.endpoints[index]] += 1
            if unreachable:
                self._down_until[index] = self._clock() + self.cooldown

    def generate(self, requests: list[GenRequest], desc: str | None = None) -> list[GenResult]:
        if not requests:
            return []
        bar = tqdm(total=len(requests), desc=desc or "generate", unit="req", leave=False, disable=desc is None)
        pool = ThreadPoolExecutor(max_workers=min(self.cfg.concurrency, len(requests)))
        try:
            futures = [pool.submit(self._complete, r) for r in requests]
            for f in futures:
                f.add_done_callback(lambda _: bar.update(1))
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f in done and f.exception() is not None), None)
            if failed is not None:
                raise failed.exception()  # type: ignore[misc]
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()

    def _complete(self, request: GenRequest) -> GenResult:
        import openai

        with self._lock:
            position = next(self._turn)
        params = self._params(request)
        last: dict[str, str] = {}  # endpoint -> its latest failure for this request, oldest first
        for attempt in range(self.cfg.max_retries + 1):
            index = self._pick(position)
            position = index + 1  # a retry goes on to the next endpoint
            client = self._clients[index]
            endpoint = self.endpoints[index]
            retry_after, unreachable = None, False
            try:
                raw = client.chat.completions.with_raw_response.create(**params)
                result = _to_result(raw.http_response, request.sampling)
                if isinstance(result, GenResult):
                    self._mark(index, ok=True)
                    return result
                failure = f"{endpoint}: {result}"
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status not in RETRYABLE_STATUS and status < 500:
                    raise EndpointError(f"{endpoint}: HTTP {status} for model {self.cfg.model!r}: "
                                        f"{_server_message(exc)}") from None
                failure = f"HTTP {status} from {endpoint}: {_server_message(exc)}"
                retry_after = _retry_after(exc.response.headers)
            except openai.APITimeoutError:
                failure, unreachable = f"{endpoint}: no answer within {self.cfg.timeout:g} s", True
            except openai.APIConnectionError as exc:
                failure, unreachable = f"{endpoint}: connection failed ({exc.__cause__ or exc})", True
            self._mark(index, ok=False, unreachable=unreachable)
            last.pop(endpoint, None)
            last[endpoint] = failure
            if attempt < self.cfg.max_retries:
                if unreachable and self._is_up(self._pick(position)):
                    continue  # fail over at once: the next endpoint is up
                self._sleep(retry_after if retry_after is not None else
                            min(BACKOFF_MAX, BACKOFF_BASE * 2 ** attempt) * random.uniform(0.5, 1.0))
        failures = list(last.values())
        if len(failures) > 1 and len(failures) == len(self._clients):
            what = f"every endpoint failed; the last failure of each: {'; '.join(failures)}"
        else:
            what = f"last: {failures[-1]}"
        raise EndpointError(f"gave up after {self.cfg.max_retries + 1} attempts (max_retries "
                            f"{self.cfg.max_retries}); {what}")

    def _params(self, request: GenRequest) -> dict[str, Any]:
        s = request.sampling
        params: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": [{"role": "user" if m["role"] == "tool" else m["role"], "content": m["content"]}
                         for m in request.messages],
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_new_tokens,
            "seed": s.seed,
        }
        if s.stop:
            params["stop"] = list(s.stop)
        if s.top_k > 0:
            params["extra_body"] = {"top_k": s.top_k}
        return params


def _to_result(http: Any, sampling: Sampling) -> GenResult | str:
    """The result in a successful response's body, or, when the body holds no chat completion, what came back
    instead (for the error message; such a response is retried like a 5xx)."""
    body = http.text
    what = f"HTTP {http.status_code} ({http.headers.get('content-type') or 'no content-type'})"
    try:
        data = json.loads(body)
    except ValueError:
        return f"{what} whose body is not JSON: {_excerpt(body)}"
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        return f"{what} without choices: {_excerpt(body)}"
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, dict) else None
    # content may be null (a refusal, say: an empty text), but not missing or other than text
    if not isinstance(message, dict) or not isinstance(message.get("content", 0), (str, type(None))):
        return f"{what} without a message in choices[0]: {_excerpt(body)}"
    text = message["content"] or ""
    usage = data.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    tokens = tokens if isinstance(tokens, int) else 0
    if choice.get("finish_reason") == "length":
        return GenResult(text=text, tokens=tokens, finish="length")
    matched = choice.get("stop_reason")
    if isinstance(matched, str) and matched in sampling.stop:
        return GenResult(text=text + matched, tokens=tokens, finish="stop_string")
    return GenResult(text=text, tokens=tokens, finish="stop")


def _excerpt(body: str) -> str:
    if not body.strip():
        return "(an empty body)"
    return repr(body[:BODY_EXCERPT]) + (f" ... ({len(body)} characters)" if len(body) > BODY_EXCERPT else "")


def _server_message(exc: Any) -> str:
    body = exc.body
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    if isinstance(body, dict) and isinstance(body.get("detail"), str):
        return body["detail"]
    return str(body) if body else exc.response.reason_phrase


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after")
    try:
        return min(BACKOFF_MAX, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None
