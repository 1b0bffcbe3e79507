"""schemathesis against the running service (issue 20, bar 4): no 5xx, and every answer as the OpenAPI document says.

A real uvicorn server with the tiny GPT-2 on a loopback port; its own ``/openapi.json`` is loaded and
schemathesis generates requests from it: data the document admits (positive), data it refuses (negative:
the server must refuse it too), and admitted bodies aimed at the served templates (so the model runs).
Each answer goes through schemathesis's checks; every failure is collected and listed at the end.
The figures (examples, status codes, failures) print with ``-s``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis import checks as st_checks  # noqa: E402
from schemathesis.core.failures import FailureGroup  # noqa: E402

pytest.register_assert_rewrite("serve_support")

from serve_support import Running, call, files, get, post, tiny  # noqa: E402, F401  (fixtures: files, tiny)

from verbalize.serve import ServeConfig, create_app  # noqa: E402
from verbalize.serve.schemas import NON_BLANK, classify_request_schema  # noqa: E402

MAX_TEXTS = 8
MAX_CHARS = 300
KEY = "a-test-key-7"
CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_schema_conformance,
    st_checks.response_headers_conformance,
    st_checks.negative_data_rejection,
]
# A refusal is a refusal: 413 (too many rows, a text too long, a body too large) joins schemathesis's default list.
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]
EXAMPLES = {"positive": 100, "negative": 100, "served": 200}


@pytest.fixture(scope="module")
def server(tiny: Any, files: dict[str, Path]) -> Iterator[Running]:  # noqa: F811
    config = ServeConfig(
        window_ms=5,
        max_request_texts=MAX_TEXTS,
        max_request_bytes=1 << 16,  # above any admitted body (8 texts of 300 characters, escaped)
        max_text_chars=MAX_CHARS,
        reload_interval_s=0,
    )
    srv = Running(create_app([str(p) for p in files.values()], model=tiny, config=config)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def keyed(tiny: Any, files: dict[str, Path]) -> Iterator[Running]:  # noqa: F811
    config = ServeConfig(
        window_ms=5, max_request_texts=MAX_TEXTS, max_text_chars=MAX_CHARS, reload_interval_s=0, api_key=KEY
    )
    srv = Running(create_app([str(p) for p in files.values()], model=tiny, config=config)).start()
    yield srv
    srv.stop()


def _schema(srv: Running, headers: dict[str, str]) -> Any:
    config = schemathesis.Config.from_dict(
        {
            "checks": {
                "negative_data_rejection": {"expected-statuses": REFUSALS},
                "positive_data_acceptance": {"expected-statuses": ["2xx"]},
            },
            "seed": 20,
        }
    )
    return schemathesis.openapi.from_url(f"{srv.url}/openapi.json", config=config, headers=headers)


class Run:
    """Sends cases, validates each answer, and keeps the figures and every failure (not only the first)."""

    def __init__(self, srv: Running, headers: dict[str, str]):
        self.srv, self.headers = srv, headers
        self.examples: Counter[str] = Counter()
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.failures: dict[str, str] = {}

    def send(self, kind: str, case: Any, extra: list[Any]) -> None:
        self.examples[kind] += 1
        response = case.call(base_url=self.srv.url, headers=self.headers, timeout=60)
        self.statuses[(case.operation.label, response.status_code)] += 1
        try:
            sent = {"base_url": self.srv.url, "headers": self.headers}
            case.validate_response(response, checks=CHECKS + extra, headers=self.headers, transport_kwargs=sent)
        except FailureGroup as group:
            for failure in group.exceptions:
                key = f"{case.operation.label}: {failure.title} ({response.status_code})"
                body = case.body if isinstance(case.body, dict | list | str) else None
                self.failures.setdefault(key, f"{failure.message[:300]} | body {str(body)[:300]}")

    def report(self) -> None:
        print(f"\nschemathesis {schemathesis.__version__}: examples {dict(self.examples)}, {len(CHECKS)} checks")
        print("statuses:", dict(sorted(self.statuses.items())))
        print(f"failures: {len(self.failures)}")
        for key, text in self.failures.items():
            print(f"  {key}: {text}")

    def explore(self, kind: str, strategy: Any, n: int, extra: tuple[Any, ...] = ()) -> None:
        @settings(
            max_examples=n,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def one(case: Any) -> None:
            self.send(kind, case, list(extra))

        one()


def test_the_document_states_what_the_server_refuses(server: Running) -> None:
    status, doc = get(server, "/openapi.json")
    assert status == 200
    body = doc["paths"]["/v1/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == classify_request_schema(MAX_TEXTS, MAX_CHARS)
    for key in ("texts", "inputs"):
        assert (body["properties"][key]["minItems"], body["properties"][key]["maxItems"]) == (1, MAX_TEXTS)
        assert body["properties"][key]["type"] == "array"  # not nullable
    assert body["oneOf"] == [{"required": ["texts"]}, {"required": ["inputs"]}]
    text = body["properties"]["texts"]["items"]
    assert (text["pattern"], text["maxLength"]) == (NON_BLANK, MAX_CHARS)
    assert body["properties"]["inputs"]["items"]["additionalProperties"] == text
    classify = doc["paths"]["/v1/classify"]["post"]["responses"]
    for code in ("400", "401", "404", "408", "413", "422", "429", "503"):
        assert classify[code]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"], metrics
    status, headers, _ = call(server, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")


def test_blank_pattern_is_python_whitespace() -> None:
    """The document's "not blank" is the server's: a character str.strip() keeps (every code point checked)."""
    pattern = re.compile(NON_BLANK)
    wrong = [
        hex(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000 and bool(pattern.search(chr(c))) == chr(c).isspace()
    ]
    assert wrong == []


def test_unknown_route_and_method_answer_the_error_shape(server: Running) -> None:
    """Every error answer is {"error", "message", "location"}; Starlette's own 404/405 said {"detail": ...}."""
    for method, path, status, code in (
        ("GET", "/v1/clasify", 404, "not_found"),
        ("GET", "/v1/classify", 405, "method_not_allowed"),
    ):
        got, headers, raw = call(server, method, path)
        answer = json.loads(raw)
        assert (got, answer.get("error")) == (status, code), answer
        assert path in answer["message"] and headers["content-type"] == "application/json"


def test_explicit_null_is_refused(server: Running) -> None:
    """The document says texts/inputs are arrays when present; the server took ``null`` beside the other key."""
    status, _, answer = post(server, {"template": "senti", "texts": None, "inputs": [{"text": "a good film"}]})
    assert (status, answer.get("error"), answer.get("location")) == (422, "invalid_request", "texts"), answer


def test_coverage_phase_finds_no_server_error_and_no_schema_violation(server: Running) -> None:
    """schemathesis's deterministic boundary cases (about 130 requests, seconds): in the default suite."""
    schema, run, names = _start(server)
    _coverage(schema, run, names)
    run.report()
    assert run.failures == {}, "\n".join(f"{k}: {v}" for k, v in run.failures.items())
    refused = {code for (label, code) in run.statuses if label == "POST /v1/classify"}
    assert {200, 404, 413, 422} <= refused, run.statuses  # admitted, unknown template, one row too many, bad data


def test_with_an_api_key_the_document_says_so_and_the_server_enforces_it(keyed: Running) -> None:
    """The document declares the bearer key on every route but the health probes; the coverage run with the key
    passes, ignored_auth included (schemathesis re-sends admitted requests with no key and a wrong one: 401)."""
    auth = {"Authorization": f"Bearer {KEY}"}
    assert call(keyed, "GET", "/openapi.json")[0] == 401
    status, _, raw = call(keyed, "GET", "/openapi.json", headers=auth)
    doc = json.loads(raw)
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "The server's API key (--api-key)",
    }
    secured = {path for path, ops in doc["paths"].items() if all(op.get("security") for op in ops.values())}
    assert secured == set(doc["paths"]) - {"/healthz", "/readyz"}
    schema, run, names = _start(keyed, auth)
    _coverage(schema, run, names, (st_checks.ignored_auth,))
    run.report()
    assert run.failures == {}, "\n".join(f"{k}: {v}" for k, v in run.failures.items())
    assert run.statuses[("POST /v1/classify", 200)] > 0, run.statuses


@pytest.mark.slow
def test_fuzzing_finds_no_server_error_and_no_schema_violation(server: Running) -> None:
    """Generated requests (seeded, derandomized; about 700): data the document admits, data it refuses, and
    both aimed at the served templates, where admitted data must be classified (200)."""
    schema, run, names = _start(server)
    for operation in schema.get_all_operations():
        op = operation.ok()
        is_classify = op.label == "POST /v1/classify"
        run.explore("positive", op.as_strategy(GenerationMode.POSITIVE), EXAMPLES["positive"] if is_classify else 5)
        if is_classify:
            run.explore("negative", op.as_strategy(GenerationMode.NEGATIVE), EXAMPLES["negative"])
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                served = st.tuples(op.as_strategy(mode), st.sampled_from(names), st.just(mode)).map(_aim)
                accept = (st_checks.positive_data_acceptance,) if mode == GenerationMode.POSITIVE else ()
                run.explore(f"served {mode.value}", served, EXAMPLES["served"], accept)
    run.report()
    ok = sum(n for (label, code), n in run.statuses.items() if label == "POST /v1/classify" and code == 200)
    assert ok >= 50, f"too few classified requests to have exercised the model: {run.statuses}"
    assert run.failures == {}, "\n".join(f"{k}: {v}" for k, v in run.failures.items())


def _start(server: Running, headers: dict[str, str] | None = None) -> tuple[Any, Run, list[str]]:
    status, ready = get(server, "/readyz")
    assert status == 200, ready
    return _schema(server, headers or {}), Run(server, headers or {}), ready["templates"]


def _coverage(schema: Any, run: Run, names: list[str], extra: tuple[Any, ...] = ()) -> None:
    """schemathesis's coverage phase: its fixed boundary cases (one past maxItems, empty lists, each required key
    left out, wrong types, unsupported methods and media types), positive and negative, aimed at served templates."""
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    for operation in schema.get_all_operations():
        op = operation.ok()
        generation = schema.config.generation_for(operation=op)
        for i, case in enumerate(schema.iter_coverage_cases(op, generation_modes=modes, generation_config=generation)):
            mode = case.meta.generation.mode
            _aim((case, names[i % len(names)], mode))
            accept = (st_checks.positive_data_acceptance,) if mode == GenerationMode.POSITIVE else ()
            run.send(f"coverage {mode.value}", case, [*accept, *extra])


def _aim(drawn: tuple[Any, str, GenerationMode]) -> Any:
    """An admitted body aimed at a served template (generated names hardly ever hit one); the served
    templates all have the one field "text", so each generated row object is keyed by it."""
    case, name, mode = drawn
    # A negative case whose template is a valid name has its mutation elsewhere: aiming it keeps it negative.
    if isinstance(case.body, dict) and isinstance(case.body.get("template"), str) and case.body["template"]:
        case.body["template"] = name
        rows = case.body.get("inputs")
        if mode == GenerationMode.POSITIVE and isinstance(rows, list) and all(isinstance(r, dict) and r for r in rows):
            case.body["inputs"] = [{"text": next(iter(row.values()))} for row in rows]
    return case
