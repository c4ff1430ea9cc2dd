"""Model names that are neither an alias nor a local path: with the hub offline, unreachable, silent, or without
such a model they fail at once with the accepted names; a hub id the hub has still resolves. The hub is a small
``http.server`` on loopback (``huggingface_hub``'s endpoint pointed at it)."""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from turnrl import models
from turnrl.errors import InputError
from turnrl.models import resolve

UNKNOWN = "smollm3-tiny"


def _assert_lists_accepted_names(message: str) -> None:
    assert f"model {UNKNOWN!r}" in message or "model 'org/" in message
    assert all(alias in message for alias in models.ALIASES)
    assert ".gguf" in message and "config.json" in message and "adapter_config.json" in message


@pytest.fixture()
def online(monkeypatch):
    """The hub counts as online (conftest puts the suite offline); nothing found on it earlier is remembered."""
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(models, "_found_on_hub", set(), raising=False)

    def point_at(url: str) -> None:
        monkeypatch.setattr(constants, "ENDPOINT", url)

    return point_at


@contextmanager
def fake_hub(models_on_hub: set[str], delay: float = 0.0):
    """A hub API that knows ``models_on_hub`` (GET /api/models/<id>); others are 404 RepoNotFound, as on the hub."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(delay)
            repo = self.path.split("?")[0].removeprefix("/api/models/")
            found = repo in models_on_hub
            body = json.dumps({"id": repo, "sha": "0" * 40, "siblings": []} if found else
                              {"error": "Repository not found"}).encode()
            self.send_response(200 if found else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            if not found:
                self.send_header("X-Error-Code", "RepoNotFound")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("value", ["1", "true"])
def test_unknown_alias_offline_fails_at_once_listing_the_accepted_names(monkeypatch, value):
    from transformers import AutoTokenizer  # noqa: F401  (imported before the clock: the check must be quick)

    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    start = time.monotonic()
    with pytest.raises(InputError) as err:
        resolve(UNKNOWN)
    with pytest.raises(InputError):
        models.load_tokenizer(UNKNOWN)
    assert time.monotonic() - start < 2.0
    message = str(err.value)
    _assert_lists_accepted_names(message)
    assert "offline (HF_HUB_OFFLINE is set)" in message


def test_unknown_alias_with_the_hub_unreachable_fails_at_once(online):
    with socket.socket() as sock:  # a loopback port with nothing listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    online(f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(InputError, match="the hub is unreachable") as err:
        resolve(UNKNOWN)
    assert time.monotonic() - start < 2.0
    _assert_lists_accepted_names(str(err.value))


def test_a_hub_that_does_not_answer_counts_as_unreachable(online, monkeypatch):
    monkeypatch.setattr(models, "HUB_CHECK_TIMEOUT", 0.5, raising=False)
    with fake_hub(set(), delay=5.0) as url:
        online(url)
        start = time.monotonic()
        with pytest.raises(InputError, match="the hub (is unreachable|did not answer)") as err:
            resolve(UNKNOWN)
        assert time.monotonic() - start < 2.0
    _assert_lists_accepted_names(str(err.value))


def test_hub_ids_resolve_when_the_hub_has_them_and_fail_at_once_when_it_does_not(online):
    with fake_hub({"org/tiny-model"}) as url:
        online(url)
        resolved = resolve("org/tiny-model")
        assert resolved.path == "org/tiny-model" and resolved.adapter is None
        start = time.monotonic()
        with pytest.raises(InputError, match="the hub has no such model") as err:
            resolve("org/no-such-model")
        assert time.monotonic() - start < 2.0
    assert "model 'org/no-such-model'" in str(err.value)
    _assert_lists_accepted_names(str(err.value))
    # Found once, the id resolves again in this process without another look-up (the fake hub is gone now).
    assert resolve("org/tiny-model").path == "org/tiny-model"


def test_empty_turnrl_cache_means_the_default_folder(monkeypatch):
    monkeypatch.setenv("TURNRL_CACHE", "")
    assert models.cache_dir() == Path.home() / ".cache" / "turnrl"
    monkeypatch.setenv("TURNRL_CACHE", "/tmp/elsewhere")
    assert models.cache_dir() == Path("/tmp/elsewhere")
