"""`verbalize serve`: the real uvicorn server on a free loopback port, every endpoint and error case.

Each server runs in a thread of the test process on the tiny random GPT-2 from conftest.py; every
request is bounded by a timeout. Answers are compared with offline ``Verbalizer.predict_proba``.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
from serve_support import files, server, tiny  # noqa: E402, F401  (fixtures, imported so pytest finds them)

pytest.register_assert_rewrite("serve_support")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from serve_support import (  # noqa: E402
    TEXTS,
    TIMEOUT,
    Running,
    call,
    get,
    offline,
    post,
    proba_of,
    wait_for,
)

from verbalize import Client, Verbalizer  # noqa: E402
from verbalize.client import ServiceError  # noqa: E402
from verbalize.serve import ServeConfig, create_app  # noqa: E402


# -- answers ------------------------------------------------------------------------------------
def test_concurrent_requests_across_templates_equal_offline(server: Running, files: dict[str, Path], tiny: Any):
    """Requests of three templates from eight clients, batched together, get offline's numbers."""
    jobs = [(name, TEXTS[i : i + 2]) for i in range(0, 6, 2) for name in files] * 2
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda job: post(server, {"template": job[0], "texts": job[1]}), jobs))
    for (name, texts), (status, _, answer) in zip(jobs, answers, strict=True):
        assert status == 200, answer
        assert answer["template"] == name and answer["version"] == 1
        np.testing.assert_allclose(proba_of(answer), offline(files[name], tiny, texts), atol=1e-5, rtol=0)
        want = Verbalizer(template=str(files[name]), model=tiny).predict(texts)
        assert [p["label"] for p in answer["predictions"]] == list(want)
    metrics = {m.name: m for m in text_string_to_metric_families(get(server, "/metrics")[1])}
    per_batch = {s.labels["le"]: s.value for s in metrics["verbalize_batch_requests"].samples if "le" in s.labels}
    assert per_batch["1.0"] < per_batch["+Inf"], "no micro-batch ever held two requests"


def test_templates_sharing_a_start_share_one_scorer_call(files: dict[str, Path], tiny: Any):
    """Fusion across templates (merged label words, one score_words call) gives each its own numbers."""
    from verbalize.serve.adapter import scoring_plan
    from verbalize.serve.batcher import score_together

    clfs = {n: Verbalizer(template=str(files[n]), model=tiny) for n in ("senti", "verdict")}
    for clf in clfs.values():
        clf.predict_proba(["warm"])
    plans = [scoring_plan(clfs["senti"], TEXTS[:3]), scoring_plan(clfs["verdict"], TEXTS[2:])]
    assert plans[0].key == plans[1].key is not None
    calls = []
    for plan in plans:
        real = type(plan.scorer).score_words
        plan.scorer.score_words = lambda *a, _real=real, _s=plan.scorer, **k: calls.append(1) or _real(_s, *a, **k)
    try:
        got = score_together(plans)
    finally:
        for plan in plans:
            vars(plan.scorer).pop("score_words", None)
    assert len(calls) == 1  # one forward for both templates' prompts
    np.testing.assert_allclose(got[0], clfs["senti"].predict_proba(TEXTS[:3]), atol=1e-5, rtol=0)
    np.testing.assert_allclose(got[1], clfs["verdict"].predict_proba(TEXTS[2:]), atol=1e-5, rtol=0)


def test_client_and_inputs_form(server: Running, files: dict[str, Path], tiny: Any):
    client = Client(server.url)
    want = offline(files["topic"], tiny, TEXTS[:3])
    np.testing.assert_allclose(client.predict_proba(TEXTS[:3], template="topic"), want, atol=1e-5, rtol=0)
    assert list(client.predict(TEXTS[:3], template="topic")) == list(np.array(["sports", "business"])[want.argmax(1)])
    status, _, answer = post(server, {"template": "topic", "inputs": [{"text": t} for t in TEXTS[:3]]})
    assert status == 200
    np.testing.assert_allclose(proba_of(answer), want, atol=1e-5, rtol=0)
    with pytest.raises(ServiceError, match="not served.*Did you mean 'topic'") as info:
        client.predict(["x"], template="topik")
    assert info.value.status == 404 and info.value.location == "template"
    with pytest.raises(TypeError, match="wrap it in a list"):
        client.predict("one text", template="topic")  # type: ignore[arg-type]


def test_curl(server: Running):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    body = json.dumps({"template": "senti", "texts": ["the acting is good"]})
    out = subprocess.run(
        ["curl", "-s", "-m", "20", "-H", "Content-Type: application/json", "-d", body, f"{server.url}/v1/classify"],
        capture_output=True, text=True, timeout=TIMEOUT, check=True,
    )  # fmt: skip
    assert json.loads(out.stdout)["predictions"][0]["label"] in ("negative", "positive")


# -- the other endpoints --------------------------------------------------------------------------
def test_templates_health_metrics_docs(server: Running):
    status, listing = get(server, "/v1/templates")
    assert status == 200 and listing["problems"] == []
    by_name = {t["name"]: t for t in listing["templates"]}
    assert set(by_name) == {"senti", "verdict", "topic"}
    assert by_name["verdict"]["labels"] == [
        {"label": "no", "words": ["negative", "bad film"]},
        {"label": "yes", "words": ["positive", "great film"]},
    ]
    assert by_name["senti"]["version"] == 1 and by_name["senti"]["fields"] == ["text"]
    assert by_name["senti"]["dtype"] == {"requested": "auto", "dtype": "float32"}  # a model object: nothing measured
    assert get(server, "/healthz") == (200, {"status": "ok"})
    assert get(server, "/readyz")[0] == 200
    status, text = get(server, "/metrics")
    assert status == 200
    names = {m.name for m in text_string_to_metric_families(text)}
    for want in ("verbalize_requests", "verbalize_texts", "verbalize_batch_texts", "verbalize_queue_depth_texts",
                 "verbalize_request_latency_seconds", "verbalize_batch_requests"):  # fmt: skip
        assert want in names
    status, html = get(server, "/docs")
    assert status == 200 and "swagger" in html.lower()
    spec = get(server, "/openapi.json")[1]
    schema = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"template", "texts", "inputs"} <= set(schema["properties"])


# -- bad input -----------------------------------------------------------------------------------------
BAD = [
    (b'{"template": "senti", "texts": ["a",]}', 400, "malformed_json", "line 1 column"),
    (b"\xff\xfe not utf-8", 400, "malformed_json", None),
    ([1, 2], 422, "invalid_request", None),
    ({"texts": ["a"]}, 422, "invalid_request", "template"),
    ({"template": "senti", "texts": ["a"], "extra": 1}, 422, "invalid_request", "extra"),
    ({"template": "nope", "texts": ["a"]}, 404, "unknown_template", "template"),
    ({"template": "senti"}, 422, "invalid_request", "texts"),
    ({"template": "senti", "texts": ["a"], "inputs": [{"text": "a"}]}, 422, "invalid_request", "texts"),
    ({"template": "senti", "texts": []}, 422, "empty_request", "texts"),
    ({"template": "senti", "texts": ["a", "b", "  "]}, 422, "empty_text", "texts[2]"),
    ({"template": "senti", "texts": ["a", 5]}, 422, "invalid_request", "texts[1]"),
    ({"template": "senti", "texts": "a"}, 422, "invalid_request", "texts"),
    ({"template": "senti", "inputs": [{"text": "a"}, {"txt": "b"}]}, 422, "unknown_field", "inputs[1]"),
    ({"template": "senti", "inputs": [{"text": ""}]}, 422, "empty_text", "inputs[0].text"),
    ({"template": "senti", "texts": ["a"] * 9}, 413, "too_many_texts", "texts"),
    ({"template": "senti", "texts": ["a" * 5000]}, 413, "body_too_large", "body"),
    # a lone surrogate (valid JSON, no tokenizer can encode it) and JSON nested past the parser's depth once
    # answered HTTP 500 in plain text
    (b'{"template": "senti", "texts": ["a \\ud800 b"]}', 422, "invalid_text", "texts[0]"),
    (b'{"template": "senti", "inputs": [{"text": "\\udfff"}]}', 422, "invalid_text", "inputs[0].text"),
    (b'{"template": "senti", "texts": ' + b"[" * 1000 + b"]" * 1000 + b"}", 400, "malformed_json", None),
]


@pytest.mark.parametrize(("body", "status", "code", "location"), BAD)
def test_bad_requests_get_located_4xx(server: Running, body: Any, status: int, code: str, location: str | None):
    got, _, answer = post(server, body)
    assert (got, answer["error"]) == (status, code), answer
    assert answer["message"]
    if location is not None:
        assert location in (answer["location"] or ""), answer


def test_streamed_body_over_the_limit_is_refused(server: Running):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
    chunks = [b'{"template": "senti", "texts": ["', b"a" * 3000, b"a" * 3000, b'"]}']
    conn.request("POST", "/v1/classify", body=iter(chunks), encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["error"] == "body_too_large"
    conn.close()


# -- overload, disconnects, readiness, shutdown -------------------------------------------------------
@pytest.fixture
def small_queue(tiny: Any, files: dict[str, Path]) -> Iterator[Running]:
    config = ServeConfig(window_ms=1, max_queue_texts=4, reload_interval_s=0)
    srv = Running(create_app([str(files["senti"])], model=tiny, config=config)).start()
    yield srv
    srv.stop()


def test_full_queue_answers_429_and_client_retries(small_queue: Running, files: dict[str, Path], tiny: Any):
    srv, texts = small_queue, TEXTS[:4]
    with ThreadPoolExecutor(3) as pool, srv.service.batcher.exclusive():  # the model is busy
        first = pool.submit(post, srv, {"template": "senti", "texts": texts})
        wait_for(lambda: srv.service.batcher.queued_texts == 4, "a full queue")
        status, headers, answer = post(srv, {"template": "senti", "texts": ["one more"]})
        assert (status, answer["error"]) == (429, "queue_full") and int(headers["retry-after"]) >= 1
        client = Client(srv.url, max_wait=0.2)
        retried = pool.submit(client.predict_proba, ["one more"], "senti")
        wait_for(lambda: client.n_retried >= 1, "the client to retry")
    want = offline(files["senti"], tiny, texts)
    status, _, answer = first.result(TIMEOUT)
    assert status == 200
    np.testing.assert_allclose(proba_of(answer), want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(retried.result(TIMEOUT), offline(files["senti"], tiny, ["one more"]), atol=1e-5)


def test_a_client_that_disconnects_does_not_break_the_batch(small_queue: Running, files: dict[str, Path], tiny: Any):
    srv = small_queue
    with ThreadPoolExecutor(1) as pool:
        with srv.service.batcher.exclusive():
            gone = socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT)
            body = json.dumps({"template": "senti", "texts": ["the story is bad"]}).encode()
            head = "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            head += f"Content-Length: {len(body)}"
            gone.sendall(head.encode() + b"\r\n\r\n" + body)
            wait_for(lambda: srv.service.batcher.queued_texts == 1, "the abandoned request to queue")
            gone.close()
            other = pool.submit(post, srv, {"template": "senti", "texts": TEXTS[:2]})
            wait_for(lambda: srv.service.batcher.queued_texts == 3, "the other request to queue")
        status, _, answer = other.result(TIMEOUT)
    assert status == 200
    np.testing.assert_allclose(proba_of(answer), offline(files["senti"], tiny, TEXTS[:2]), atol=1e-5, rtol=0)
    assert post(srv, {"template": "senti", "texts": ["still serving"]})[0] == 200


def test_not_ready_until_loaded(tiny: Any, files: dict[str, Path]):
    app = create_app([str(files["senti"])], model=tiny, config=ServeConfig(reload_interval_s=0))
    service, gate = app.state.service, threading.Event()
    load = service.load
    service.load = lambda: (gate.wait(TIMEOUT), load())
    srv = Running(app).start(ready=False)
    try:
        assert get(srv, "/healthz")[0] == 200
        status, headers, _ = call(srv, "GET", "/readyz")
        assert status == 503 and headers["retry-after"]
        status, headers, answer = post(srv, {"template": "senti", "texts": ["a"]})
        assert (status, answer["error"]) == (503, "not_ready") and headers["retry-after"]
        gate.set()
        wait_for(lambda: get(srv, "/readyz")[0] == 200, "readiness")
        assert post(srv, {"template": "senti", "texts": ["a"]})[0] == 200
    finally:
        gate.set()
        srv.stop()


def test_graceful_shutdown_finishes_in_flight_requests(tiny: Any, files: dict[str, Path]):
    srv = Running(create_app([str(files["senti"])], model=tiny, config=ServeConfig(reload_interval_s=0))).start()
    with ThreadPoolExecutor(1) as pool:
        with srv.service.batcher.exclusive():
            pending = pool.submit(post, srv, {"template": "senti", "texts": TEXTS[:3]})
            wait_for(lambda: srv.service.batcher.queued_texts == 3, "the request to queue")
            srv.server.should_exit = True  # what uvicorn's SIGTERM / Ctrl-C handler does
            time.sleep(0.3)
            assert srv.thread.is_alive()
        status, _, answer = pending.result(TIMEOUT)
    assert status == 200
    np.testing.assert_allclose(proba_of(answer), offline(files["senti"], tiny, TEXTS[:3]), atol=1e-5, rtol=0)
    srv.stop()
