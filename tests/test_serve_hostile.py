"""`verbalize serve` against hostile and huge inputs (issue 20): no single request stalls or fools it.

Per-text cap, request deadline, read timeouts and a connection cap, an optional API key, no absolute
path shown to clients, symlinks out of the served folder refused. Servers run on loopback only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytest.register_assert_rewrite("serve_support")
from serve_support import (  # noqa: E402
    SENTIMENT,
    TEXTS,
    TIMEOUT,
    TOPIC,
    Running,
    call,
    files,  # noqa: F401  (a fixture, imported so pytest finds it)
    get,
    post,
    tiny,  # noqa: F401  (a fixture)
)

from verbalize import Verbalizer  # noqa: E402
from verbalize.errors import SavedClassifierError  # noqa: E402
from verbalize.serve import ServeConfig, create_app  # noqa: E402


@pytest.fixture(scope="module")
def guarded(tiny: Any, files: dict[str, Path]) -> Iterator[Running]:
    config = ServeConfig(window_ms=5, max_text_chars=100, request_timeout_s=1.0, read_timeout_s=0.5,
                         max_connections=4, reload_interval_s=0)  # fmt: skip
    from verbalize.serve.connections import server_options

    srv = Running(create_app([str(files["senti"])], model=tiny, config=config), **server_options(config)).start()
    yield srv
    srv.stop()


# -- 1. one long text, one slow request ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "location"),
    [
        ({"template": "senti", "texts": ["fine", "a" * 101]}, "texts[1]"),
        ({"template": "senti", "inputs": [{"text": "ok"}, {"text": "é" * 101}]}, "inputs[1].text"),
    ],
)
def test_a_text_over_the_cap_is_refused_413_with_its_location(guarded: Running, body: Any, location: str):
    status, _, answer = post(guarded, body)
    assert (status, answer["error"], answer["location"]) == (413, "text_too_long", location), answer
    assert "101 characters" in answer["message"] and "at most 100" in answer["message"]
    assert post(guarded, {"template": "senti", "texts": ["a" * 100]})[0] == 200  # at the cap: served


def test_a_request_past_its_deadline_gets_503_and_its_texts_are_dropped(guarded: Running):
    batcher = guarded.service.batcher
    dropped = _metric(guarded, "verbalize_abandoned_requests_total")
    with ThreadPoolExecutor(1) as pool, batcher.exclusive():  # the model is busy for longer than the deadline
        late = pool.submit(post, guarded, {"template": "senti", "texts": TEXTS[:2]})
        status, headers, answer = late.result(TIMEOUT)
        assert (status, answer["error"]) == (503, "deadline_exceeded"), answer
        assert "1 s" in answer["message"] and int(headers["retry-after"]) >= 1
    status, _, answer = post(guarded, {"template": "senti", "texts": ["the next one is served"]})
    assert status == 200, answer
    assert _metric(guarded, "verbalize_abandoned_requests_total") == dropped + 1  # never scored


def test_a_huge_request_is_batched_alone():
    """A request over the batch budget is scored in a batch of its own, never merged with others' requests."""
    import asyncio

    from verbalize.serve.batcher import Job, MicroBatcher, estimate_tokens
    from verbalize.serve.metrics import Metrics

    batcher = MicroBatcher(Metrics(), window_s=0.0, max_batch_tokens=200)
    loop = asyncio.new_event_loop()
    try:
        for text in ("small", "x" * 3000, "tiny"):
            job = Job(None, "senti", [text], loop.create_future(), loop, estimate_tokens([text]))
            batcher._queue.append(job)
            batcher._queued_texts += 1
            batcher._queued_tokens += job.tokens
        batches = [[len(j.texts[0]) for j in batcher._take() or []] for _ in range(3)]
    finally:
        loop.close()
    assert batches == [[5], [3000], [4]]


# -- 2. connections: half-sent requests, a flood, the log ---------------------------------------------------
def test_half_sent_requests_are_closed_and_cannot_crowd_out_health_checks(guarded: Running):
    held = []
    for _ in range(10):  # more than max_connections=4, each one half a request head
        sock = socket.create_connection(("127.0.0.1", guarded.port), timeout=TIMEOUT)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        held.append(sock)
    try:
        assert get(guarded, "/healthz") == (200, {"status": "ok"})
        deadline = time.monotonic() + TIMEOUT
        for sock in held:  # the server closes each one (evicted, or its head deadline passed)
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            assert _closed(sock)
    finally:
        for sock in held:
            sock.close()


def test_a_body_that_does_not_arrive_gets_408(guarded: Running):
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=TIMEOUT) as sock:
        head = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        sock.sendall(head + b'{"template": ')
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.endswith(b"}"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"] == "read_timeout"


def test_repeated_warnings_are_rate_limited():
    from verbalize.serve.connections import RepeatFilter

    log = logging.getLogger("test_serve_hostile.flood")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    log.addHandler(handler)
    log.propagate = False
    repeat = RepeatFilter(interval_s=0.3)
    log.addFilter(repeat)
    try:
        for _ in range(500):
            log.warning("Invalid HTTP request received.")
        log.warning("another problem")
        time.sleep(0.35)
        log.warning("Invalid HTTP request received.")
    finally:
        log.removeFilter(repeat)
        log.removeHandler(handler)
    assert seen[:2] == ["Invalid HTTP request received.", "another problem"]
    assert len(seen) == 3 and "and 499 more like it" in seen[2], seen


# -- 3. API key, paths, symlinks --------------------------------------------------------------------------------
def test_api_key_guards_every_route_but_health(tiny: Any, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch):
    from verbalize.serve import auth

    compared = []
    real = auth.hmac.compare_digest
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: compared.append(1) or real(a, b))
    config = ServeConfig(reload_interval_s=0, api_key="s3cret-key")
    srv = Running(create_app([str(files["senti"])], model=tiny, config=config)).start()
    body = json.dumps({"template": "senti", "texts": ["good"]}).encode()
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-key"}):
            for method, path, data in (("GET", "/v1/templates", None), ("POST", "/v1/classify", body),
                                       ("GET", "/metrics", None)):  # fmt: skip
                status, got, raw = call(srv, method, path, data, {"Content-Type": "application/json", **headers})
                assert (status, json.loads(raw)["error"]) == (401, "unauthorized"), (path, headers, raw)
                assert got["www-authenticate"].startswith("Bearer")
        key = {"Authorization": "Bearer s3cret-key", "Content-Type": "application/json"}
        assert call(srv, "GET", "/v1/templates", None, key)[0] == 200
        status, _, raw = call(srv, "POST", "/v1/classify", body, key)
        assert status == 200 and json.loads(raw)["predictions"], raw
        assert get(srv, "/healthz")[0] == 200 and get(srv, "/readyz")[0] == 200  # open for probes
        assert compared, "the key was not compared with hmac.compare_digest"
    finally:
        srv.stop()


def _serve_args(*argv: str) -> argparse.Namespace:
    from verbalize.cli.serve import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_non_loopback_bind_without_key_warns(files: dict[str, Path], tmp_path: Path, caplog: Any, monkeypatch: Any):
    from verbalize.cli.serve import prepare
    from verbalize.serve.connections import BoundedH11Protocol

    monkeypatch.delenv("VERBALIZE_API_KEY", raising=False)
    template = str(files["senti"])
    with caplog.at_level(logging.WARNING, logger="verbalize"):
        server = prepare(_serve_args(template, "--host", "0.0.0.0", "--max-connections", "9"))  # never started
    assert "without an API key" in caplog.text and "0.0.0.0" in caplog.text
    assert server.config.app.state.service.config.api_key is None
    assert issubclass(server.config.http, BoundedH11Protocol) and server.config.http.max_connections == 9
    assert server.config.timeout_keep_alive == 5 and server.config.h11_max_incomplete_event_size
    key_file = tmp_path / "key"
    key_file.write_text("from-a-file\n", encoding="utf-8")
    for argv, env, want in (
        (["--host", "127.0.0.1"], None, None),
        (["--host", "0.0.0.0", "--api-key-file", str(key_file)], None, "from-a-file"),
        (["--host", "::"], "from-the-env", "from-the-env"),
    ):
        if env is not None:
            monkeypatch.setenv("VERBALIZE_API_KEY", env)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="verbalize"):
            server = prepare(_serve_args(template, *argv))
        assert "without an API key" not in caplog.text, argv
        assert server.config.app.state.service.config.api_key == want
    key_file.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="API key is empty"):
        prepare(_serve_args(template, "--api-key-file", str(key_file)))


def test_dtype_option_sets_what_auto_means_for_the_served_classifiers(files: dict[str, Path], monkeypatch: Any):
    from verbalize.cli.serve import prepare
    from verbalize.engine.formats import ENV, forced

    monkeypatch.setenv(ENV, "float32")  # monkeypatch restores it after the test
    prepare(_serve_args(str(files["senti"])))  # never started
    assert forced() == "float32"  # no --dtype: the environment's choice stays
    prepare(_serve_args(str(files["senti"]), "--dtype", "bfloat16"))
    assert forced() == "bfloat16"
    prepare(_serve_args(str(files["senti"]), "--dtype", "auto"))
    assert forced() is None
    with pytest.raises(SystemExit):
        _serve_args(str(files["senti"]), "--dtype", "float64")


def test_templates_listing_shows_no_absolute_path(tiny: Any, tmp_path: Path):
    folder = tmp_path / "served"
    folder.mkdir()
    (folder / "senti.toml").write_text(SENTIMENT, encoding="utf-8")
    (folder / "broken.toml").write_text(TOPIC.replace("{text}", "{txt}"), encoding="utf-8")
    srv = Running(create_app([str(folder)], model=tiny, config=ServeConfig(reload_interval_s=0))).start()
    try:
        listing = get(srv, "/v1/templates")[1]
    finally:
        srv.stop()
    assert [t["source"] for t in listing["templates"]] == ["senti.toml"]
    assert listing["problems"][0]["source"] == "broken.toml"
    assert any("broken.toml: prompt: unknown placeholder" in i for i in listing["problems"][0]["issues"])
    text = json.dumps(listing)
    assert str(tmp_path) not in text and str(tmp_path.resolve()) not in text, text


def test_templates_through_symlinks_out_of_the_folder_are_refused(tiny: Any, tmp_path: Path):
    from verbalize.serve.registry import Registry, build_classifier, expand_sources

    folder, elsewhere = tmp_path / "served", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    (folder / "senti.toml").write_text(SENTIMENT, encoding="utf-8")
    (elsewhere / "topic.toml").write_text(TOPIC, encoding="utf-8")
    (folder / "topic.toml").symlink_to(elsewhere / "topic.toml")
    (folder / "zz-inside.toml").symlink_to(folder / "senti.toml")  # a link within the folder is fine...
    registry = Registry(expand_sources([str(folder)]), partial(build_classifier, model=tiny))
    registry.load()
    assert registry.names == ["senti"]  # ... (same name: reported as already served, not as outside)
    problems = registry.describe()["problems"]
    issues = {p["source"]: " ".join(p["issues"]) for p in problems}
    assert "resolves outside its served folder" in issues["topic.toml"], issues
    assert "resolves outside" not in issues["zz-inside.toml"] and "already served" in issues["zz-inside.toml"]
    # reload: the served file becomes a link to a file elsewhere: refused, the served version stays
    (elsewhere / "senti.toml").write_text(SENTIMENT.replace('"bad"', '"awful"'), encoding="utf-8")
    os.replace(_link(folder / "new-link", elsewhere / "senti.toml"), folder / "senti.toml")
    registry.poll()
    issues = {p["source"]: " ".join(p["issues"]) for p in registry.describe()["problems"]}
    assert "resolves outside its served folder" in issues["senti.toml"], issues
    assert registry.get("senti").version == 1 and registry.get("senti").clf.template_.labels["negative"] == ("bad",)


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:  # closed with our unread half request in its buffer
        return True


def _link(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


def test_saved_classifier_with_a_model_symlink_elsewhere_is_refused(tiny: Any, files: dict[str, Path], tmp_path: Path):
    saved = Verbalizer(template=str(files["senti"]), model=tiny).fit(["good", "bad"], ["positive", "negative"])
    assert saved.get_params()["model"] is tiny  # a Scorer: saved into the directory's model/
    path = saved.save(tmp_path / "clf")
    assert Verbalizer.load(path).predict(["good"]).shape == (1,)
    os.replace(path / "model", tmp_path / "weights-elsewhere")
    (path / "model").symlink_to(tmp_path / "weights-elsewhere")
    with pytest.raises(SavedClassifierError, match="outside the saved directory.*copy the model files"):
        Verbalizer.load(path)


def _metric(srv: Running, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(get(srv, "/metrics")[1]):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return 0.0


def test_the_heap_goes_back_to_the_os_after_a_long_text_only(monkeypatch):
    """Batches of short texts reuse their memory (a trim after each made the next forward fault its pages
    in again: ~10% of throughput under 32 clients); a long text's freed blocks are given back."""
    import asyncio

    from verbalize.serve import batcher as module
    from verbalize.serve.batcher import TRIM_TOKENS, Job, MicroBatcher, estimate_tokens
    from verbalize.serve.metrics import Metrics

    trims: list[int] = []
    monkeypatch.setattr(module, "trim_heap", lambda: trims.append(1))
    batcher = MicroBatcher(Metrics())
    monkeypatch.setattr(batcher, "_run", lambda jobs, out: None)
    loop = asyncio.new_event_loop()
    try:
        short = [Job(None, "senti", [t], loop.create_future(), loop, estimate_tokens([t])) for t in TEXTS * 40]
        assert sum(j.tokens for j in short) > TRIM_TOKENS  # many texts, each short
        batcher._batch(short)
        assert trims == []
        long_text = "word " * (3 * TRIM_TOKENS)
        batcher._batch([short[0], Job(None, "senti", [long_text], loop.create_future(), loop, 0)])
        assert trims == [1]
    finally:
        loop.close()
