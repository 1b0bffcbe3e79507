"""Shared by the serve tests: a real uvicorn server in a thread, loopback HTTP helpers, tiny-model fixtures.

Test modules import the fixtures (``tiny``, ``files``, ``server``) and the helpers from here.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import uvicorn

from verbalize import Verbalizer
from verbalize.serve import ServeConfig, create_app

TIMEOUT = 30
SENTIMENT = (
    'name = "senti"\nprompt = "Review: {text}\\nSentiment:"\n'
    '[labels]\nnegative = ["bad"]\npositive = ["good", "good film"]\n'
)
# Same prompt start as "senti", other label words (one of several tokens): fused into senti's scorer calls.
VERDICT = (
    'name = "verdict"\nprompt = "Review: {text}\\nAnswer:"\n'
    '[labels]\nno = ["negative", "bad film"]\nyes = ["positive", "great film"]\n'
)
TOPIC = 'name = "topic"\nprompt = "Text: {text} Topic:"\n[labels]\nsports = ["sports"]\nbusiness = ["business"]\n'
TEXTS = ["the acting is good", "the story is bad", "a great film", "I hated it", "the team won", "profits rose"]


class Running:
    """A uvicorn server in a thread, on a socket bound to a free loopback port."""

    def __init__(self, app: Any, **options: Any):
        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=TIMEOUT, **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self, ready: bool = True) -> Running:
        self.thread.start()
        deadline = time.monotonic() + TIMEOUT
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        while ready and get(self, "/readyz")[0] != 200:
            assert time.monotonic() < deadline, f"server not ready: {get(self, '/readyz')}"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "server did not stop"

    @property
    def service(self) -> Any:
        return self.app.state.service


def call(
    srv: Running, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get(srv: Running, path: str) -> tuple[int, Any]:
    status, _, raw = call(srv, "GET", path)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def post(srv: Running, body: Any) -> tuple[int, dict[str, str], Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, headers, out = call(srv, "POST", "/v1/classify", raw, {"Content-Type": "application/json"})
    return status, headers, json.loads(out)


def proba_of(answer: dict[str, Any]) -> np.ndarray:
    return np.array([[p["probabilities"][c] for c in answer["labels"]] for p in answer["predictions"]])


def wait_for(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def tiny(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The tiny GPT-2 scorer, on one torch thread for the module (shared busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield request.getfixturevalue("gpt2").scorer()
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("served")
    out = {}
    for name, text in (("senti", SENTIMENT), ("verdict", VERDICT), ("topic", TOPIC)):
        out[name] = root / f"{name}.toml"
        out[name].write_text(text, encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def server(tiny: Any, files: dict[str, Path]) -> Iterator[Running]:
    config = ServeConfig(window_ms=30, max_request_texts=8, max_request_bytes=4096, reload_interval_s=0)
    srv = Running(create_app([str(p) for p in files.values()], model=tiny, config=config)).start()
    yield srv
    srv.stop()


def offline(path: Path, tiny: Any, texts: list[str]) -> np.ndarray:
    return Verbalizer(template=str(path), model=tiny).predict_proba(texts)


def write_atomically(path: Path, text: str) -> None:
    """Save as editors do (never a half-written file), with a fresh modification time."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    now = time.time_ns()
    os.utime(path, ns=(now, now))
