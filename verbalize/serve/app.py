"""The ASGI application: FastAPI routes over the registry and the micro-batcher.

Routes: ``POST /v1/classify``, ``GET /v1/templates``, ``GET /healthz``, ``GET /readyz``,
``GET /metrics`` (Prometheus text), ``GET /docs`` (the OpenAPI document's page, with its assets served from
``/docs/static/``: it works offline; see :mod:`verbalize.serve.docs`). Every error answer is JSON
``{"error": code, "message": ..., "location": ...}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from verbalize.engine.scoring import Scorer
from verbalize.errors import InputError, did_you_mean
from verbalize.estimator import Verbalizer
from verbalize.rows import check_rows, text_problem
from verbalize.serve.auth import OPEN_PATHS, ApiKeyGate
from verbalize.serve.batcher import MicroBatcher, Overloaded
from verbalize.serve.docs import add_docs
from verbalize.serve.metrics import Metrics
from verbalize.serve.registry import Entry, Registry, Source, build_classifier, expand_sources, hide_paths
from verbalize.serve.schemas import (
    RETRY_AFTER,
    ClassifyRequest,
    ClassifyResponse,
    ErrorResponse,
    Health,
    Readiness,
    TemplatesResponse,
    classify_request_schema,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """Limits and timings of the service (the CLI's options).

    ``window_ms``: longest wait for more requests after the oldest queued one; ``max_batch_tokens``:
    estimated tokens that close a batch early; ``max_queue_texts``: texts waiting before 429;
    ``max_request_texts`` / ``max_request_bytes``: per request (413 beyond); ``reload_interval_s``:
    how often template files are checked for edits (0 turns hot reload off).
    ``max_text_chars``: characters per text (per field value) at most (413 ``text_too_long`` beyond: a
    long text would hold the one model thread for everyone); ``request_timeout_s``: seconds a request
    may wait for its answer (503 ``deadline_exceeded`` beyond; texts not yet scored are dropped);
    ``read_timeout_s``: seconds to send a request head or body (408 / connection closed beyond);
    ``keep_alive_s``: idle keep-alive connections are closed after it; ``max_connections``: open
    connections at most (beyond it the oldest one that has not sent a complete request is closed);
    ``api_key``: when set, every route but ``/healthz`` and ``/readyz`` needs ``Authorization: Bearer KEY``.
    """

    window_ms: float = 5.0
    max_batch_tokens: int = 8192
    max_queue_texts: int = 4096
    max_request_texts: int = 256
    max_request_bytes: int = 1 << 20
    reload_interval_s: float = 1.0
    batch_size: int = 64
    max_text_chars: int = 4_000
    request_timeout_s: float = 30.0
    read_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    max_connections: int = 256
    api_key: str | None = field(default=None, repr=False)


class ServeError(Exception):
    """An error answer: HTTP status, code, message (what, where, fix) and the request location."""

    def __init__(self, status: int, code: str, message: str, location: str | None = None, retry_after: int = 0):
        super().__init__(message)
        self.status, self.code, self.message, self.location = status, code, message, location
        self.headers = {"Retry-After": str(retry_after)} if retry_after else None

    def response(self) -> JSONResponse:
        body = {"error": self.code, "message": self.message, "location": self.location}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


class Service:
    """The parts one app holds: config, metrics, micro-batcher and registry."""

    def __init__(self, sources: list[Source], model: Any, config: ServeConfig):
        self.config = config
        self.metrics = Metrics()
        self.batcher = MicroBatcher(
            self.metrics, config.window_ms / 1000, config.max_batch_tokens, config.max_queue_texts
        )
        build = partial(build_classifier, model=model, batch_size=config.batch_size, note=self.note)
        self.registry = Registry(
            sources, build, self.batcher.exclusive, lambda result: self.metrics.reloads.labels(result).inc()
        )
        self.model, self.sources = model, sources
        self.load_error: str | None = None
        self.stage = "starting"
        self.started = time.monotonic()

    def note(self, stage: str, what: str = "") -> None:
        """Say what loading does now: ``stage`` in ``/readyz``'s detail (open: no name or path there), and a
        log line with ``what`` (a file, a model) and the time since start. Quiet once ready (a hot reload
        logs its own line)."""
        if self.stage == "ready":
            return
        self.stage = stage
        logger.info("%s%s (%.1f s after start)", stage, f": {what}" if what else "", time.monotonic() - self.started)

    def load(self) -> None:
        """Load the model, build every served classifier, then watch the files; each stage logged."""
        try:
            if not isinstance(self.model, Scorer) and any(s.kind == "template" for s in self.sources):
                self.note("loading the model", str(self.model or "the embedded default"))
                served = Verbalizer()  # the device and dtype build_classifier's classifiers load the model with
                # once per process (same name, device and dtype): the template files' classifiers share it
                Scorer.from_pretrained(self.model, served.device, served.dtype)
            self.registry.load()
        except Exception as exc:  # e.g. the model cannot be loaded: stay alive, not ready, and say why
            logger.exception("loading the served templates failed")
            self.load_error = hide_paths(f"{type(exc).__name__}: {exc}")  # /readyz is open: no absolute path
            return
        if not self.registry.ready:
            self.load_error = "no template could be loaded: " + "; ".join(
                i for issues in self.registry.problems.values() for i in issues
            )
            logger.error("%s", self.load_error)
        else:
            self.note("ready", f"serving {', '.join(self.registry.names)}")
        if self.config.reload_interval_s > 0:
            self.registry.start_polling(self.config.reload_interval_s)


def create_app(paths: list[str], model: Any = None, config: ServeConfig | None = None) -> FastAPI:
    """The service as an ASGI app; run it with uvicorn (``verbalize serve`` does).

    Parameters
    ----------
    paths : list of str
        Template files, directories of ``*.toml`` templates, or directories written by ``Verbalizer.save``.
    model : str, Scorer or None
        The model of the template files (None: the embedded default); shared by all of them.
    config : ServeConfig, optional
    """
    service = Service(expand_sources(paths), model, config or ServeConfig())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.batcher.start()
        threading.Thread(target=service.load, name="verbalize-load", daemon=True).start()
        yield
        # uvicorn runs this after in-flight requests have been answered (graceful shutdown).
        service.registry.stop_polling()
        await asyncio.to_thread(service.batcher.stop)

    summary = "Prompt-based text classification service"
    app = FastAPI(title="verbalize", summary=summary, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    add_docs(app)  # /docs with its assets served here, not from a CDN
    if service.config.api_key is not None:
        app.add_middleware(ApiKeyGate, api_key=service.config.api_key)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, exc: ServeError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = _http_error(request, exc).response()
        response.headers.update(exc.headers or {})  # e.g. Allow with 405
        return response

    _routes(app, service)
    if service.config.api_key is not None:
        _declare_bearer(app)
    return app


def _declare_bearer(app: FastAPI) -> None:
    """With an API key the document says so: a bearer scheme, required by every route but the health probes."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        doc = plain()  # built once and cached by FastAPI; the additions below are idempotent
        schemes = doc.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes["bearer"] = {"type": "http", "scheme": "bearer", "description": "The server's API key (--api-key)"}
        for path, operations in doc["paths"].items():
            for operation in operations.values() if path not in OPEN_PATHS else ():
                operation["security"] = [{"bearer": []}]
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _routes(app: FastAPI, service: Service) -> None:
    registry, metrics = service.registry, service.metrics
    errors: dict[int | str, dict[str, Any]] = {
        s: {"model": ErrorResponse} for s in (400, 401, 404, 408, 413, 422, 429, 503)
    }
    for status in (429, 503):
        errors[status]["headers"] = RETRY_AFTER
    cfg = service.config
    body_schema = classify_request_schema(cfg.max_request_texts, cfg.max_text_chars)
    body_doc = {"content": {"application/json": {"schema": body_schema}}, "required": True}

    @app.post(
        "/v1/classify",
        responses={200: {"model": ClassifyResponse}, **errors},
        openapi_extra={"requestBody": body_doc},
        summary="Classify texts with a served template",
    )
    async def classify(request: Request) -> JSONResponse:
        start = time.perf_counter()
        name = "-"
        try:
            entry, texts = await _admit(request, service)
            name = entry.name
            left = service.config.request_timeout_s - (time.perf_counter() - start)
            try:
                # On timeout the job's future is cancelled: the worker drops its texts unless already scoring them.
                proba = await asyncio.wait_for(service.batcher.submit(entry.clf, entry.name, texts), max(left, 1e-3))
            except Overloaded as exc:
                metrics.rejected.labels("stopping" if exc.stopping else "queue_full").inc()
                status, code = (503, "stopping") if exc.stopping else (429, "queue_full")
                raise ServeError(status, code, str(exc), retry_after=exc.retry_after) from None
            except TimeoutError:
                metrics.rejected.labels("deadline").inc()
                raise _deadline(service) from None
            body = _answer(entry, proba)
        except ServeError as exc:
            metrics.requests.labels(name, str(exc.status)).inc()
            return exc.response()
        metrics.requests.labels(name, "200").inc()
        metrics.texts.labels(name).inc(len(texts))
        metrics.latency.observe(time.perf_counter() - start)
        return JSONResponse(body)

    @app.get(
        "/v1/templates",
        response_model=None,
        responses={200: {"model": TemplatesResponse}, 401: errors[401]},
        summary="Served templates with their labels and words, and reload problems",
    )
    async def templates() -> dict[str, Any]:
        return registry.describe()

    @app.get("/healthz", response_model=Health, summary="The process is up (always 200 while it answers)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        responses={200: {"model": Readiness}, 503: {"model": Readiness, "headers": RETRY_AFTER}},
        summary="200 once the model and templates are loaded, else 503",
    )
    async def readyz() -> JSONResponse:
        if registry.ready:
            return JSONResponse({"status": "ready", "templates": registry.names})
        elapsed = time.monotonic() - service.started
        detail = service.load_error or f"{service.stage} ({elapsed:.0f} s after start)"
        return JSONResponse({"status": "not ready", "detail": detail}, status_code=503, headers={"Retry-After": "2"})

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={
            200: {
                "description": "Prometheus text exposition format (version 0.0.4)",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            # Spelled out: with "model", FastAPI would file the error under the route's text/plain.
            401: {
                "description": "Unauthorized",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
            },
        },
        summary="Prometheus text exposition",
    )
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)


def _http_error(request: Request, exc: StarletteHTTPException) -> ServeError:
    """Starlette's own refusals (no such route, a method the route lacks) in the service's error shape."""
    where = f"{request.method} {request.url.path[:200]}"
    if exc.status_code == 404:
        routes = "POST /v1/classify, GET /v1/templates, /healthz, /readyz, /metrics, /docs, /openapi.json"
        return ServeError(404, "not_found", f"{where}: no such route; the routes are {routes}", location="path")
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "the documented method")
        return ServeError(405, "method_not_allowed", f"{where}: method not allowed; use {allowed}", "method")
    return ServeError(exc.status_code, "http_error", f"{where}: {exc.detail}")


def _deadline(service: Service) -> ServeError:
    cfg, queued = service.config, service.batcher.queued_texts
    wait = max(1, round(queued / max(service.batcher.rate, 1.0)))
    return ServeError(
        503,
        "deadline_exceeded",
        f"no answer within {cfg.request_timeout_s:g} s (the server's --request-timeout; {queued} texts queued): "
        f"the service is busy; retry after {wait} s, or send fewer or shorter texts per request",
        retry_after=wait,
    )


async def _admit(request: Request, service: Service) -> tuple[Entry, list[Any]]:
    """Read and check a classify request: the served entry and the rows, or a ServeError."""
    cfg, registry = service.config, service.registry
    if not registry.ready:
        detail = service.load_error or "the model and templates are still loading"
        service.metrics.rejected.labels("not_ready").inc()
        raise ServeError(503, "not_ready", f"not ready: {detail}; retry later (GET /readyz)", retry_after=2)
    try:
        raw = await asyncio.wait_for(_read_body(request, cfg.max_request_bytes), cfg.read_timeout_s)
    except TimeoutError:
        service.metrics.rejected.labels("read_timeout").inc()
        raise ServeError(
            408,
            "read_timeout",
            f"the body did not arrive within {cfg.read_timeout_s:g} s (the server's --read-timeout); send it at once",
            location="body",
        ) from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise ServeError(
            400,
            "malformed_json",
            f'the body is not valid JSON: {exc.msg} at {where}; send {{"template": NAME, "texts": ["...", ...]}}',
            location=where,
        ) from None
    except UnicodeDecodeError:
        raise ServeError(400, "malformed_json", "the body is not UTF-8 JSON; send UTF-8", location="body") from None
    except RecursionError:  # JSON nested deeper than the parser goes
        raise ServeError(
            400, "malformed_json", 'the body is nested too deeply; send {"template": NAME, "texts": [...]}', "body"
        ) from None
    try:
        req = ClassifyRequest.model_validate(data)
    except RecursionError:
        raise ServeError(422, "invalid_request", "the body is nested too deeply for a request", "body") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _location(first["loc"])
        raise ServeError(
            422,
            "invalid_request",
            f"{where or 'body'}: {first['msg']} ({exc.error_count()} problem(s) in all); "
            'expected {"template": NAME, "texts": ["...", ...]}',
            location=where or None,
        ) from None
    entry = registry.get(req.template)
    if entry is None:
        served = registry.names
        raise ServeError(
            404,
            "unknown_template",
            f"template {req.template!r} is not served.{did_you_mean(req.template, served)} "
            f"Served templates: {', '.join(served)} (GET /v1/templates)",
            location="template",
        )
    return entry, _rows(req, entry, cfg.max_request_texts, cfg.max_text_chars)


def _rows(req: ClassifyRequest, entry: Entry, limit: int, max_chars: int) -> list[Any]:
    """The request's rows, from ``texts`` or ``inputs``, checked against the template's fields.

    The shape (which keys each object has) is checked here, to answer with its location; the texts
    go through :func:`verbalize.rows.check_rows`, the gate of every other entry point.
    """
    if (req.texts is None) == (req.inputs is None):
        raise ServeError(
            422, "invalid_request", 'give exactly one of "texts" (list of strings) or "inputs"', location="texts"
        )
    key = "texts" if req.texts is not None else "inputs"
    items: list[Any] = req.texts if req.texts is not None else req.inputs  # type: ignore[assignment]
    fields = list(entry.clf.template_.fields)
    has = f"template {entry.name!r} has the fields {fields}"
    if not items:
        raise ServeError(422, "empty_request", f"{key} is empty; send at least one row", location=key)
    if len(items) > limit:
        raise ServeError(
            413,
            "too_many_texts",
            f"{key} has {len(items)} items; at most {limit} per request: split it into several requests",
            location=key,
        )
    if key == "texts" and len(fields) > 1:
        example = json.dumps({f: "..." for f in fields})
        raise ServeError(
            422, "fields_needed", f'{has}: send "inputs": [{example}, ...] instead of "texts"', location=key
        )
    for i, item in enumerate(items if key == "inputs" else ()):
        unknown = [k for k in item if k not in fields]
        missing = [f for f in fields if f not in item]
        if unknown:
            hint = did_you_mean(unknown[0], fields)
            raise ServeError(
                422, "unknown_field", f"{key}[{i}] has the field {unknown[0]!r}, but {has}.{hint}", f"{key}[{i}]"
            )
        if missing:
            raise ServeError(422, "missing_field", f"{key}[{i}] has no field {missing[0]!r}; {has}", f"{key}[{i}]")
    _check_lengths(items, key, max_chars)
    try:
        return check_rows(items, fields, key)
    except (InputError, TypeError) as exc:
        where, problem = _first_bad(items, fields, key)
        code = "empty_text" if "empty" in problem else "invalid_text"
        raise ServeError(422, code, f"{exc} ({has})", location=where) from None


def _check_lengths(items: list[Any], key: str, max_chars: int) -> None:
    """413 ``text_too_long`` for the first text longer than ``max_chars`` (before any tokenizer sees it)."""
    for i, item in enumerate(items):
        values = item.items() if isinstance(item, dict) else [(None, item)]
        for name, value in values:
            if isinstance(value, str) and len(value) > max_chars:
                where = f"{key}[{i}]" + (f".{name}" if name is not None else "")
                raise ServeError(
                    413,
                    "text_too_long",
                    f"{where} has {len(value)} characters; at most {max_chars} per text are served "
                    "(the server's --max-text-chars): shorten or split the text",
                    location=where,
                )


def _first_bad(items: list[Any], fields: list[str], key: str) -> tuple[str, str]:
    """Where the first unusable text of a request lies (``texts[3]``, ``inputs[0].premise``) and why."""
    for i, item in enumerate(items):
        values = item.items() if isinstance(item, dict) else [(None, item)]
        for name, value in values:
            if name in fields or name is None:
                problem = text_problem(value)
                if problem:
                    return f"{key}[{i}]" + (f".{name}" if name is not None else ""), problem
    return key, ""


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it exceeds ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ServeError(
            413,
            "body_too_large",
            f"the body has {declared} bytes; at most {limit} per request: send fewer or shorter texts per request",
            location="body",
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ServeError(
                413,
                "body_too_large",
                f"the body exceeds {limit} bytes; send fewer or shorter texts per request",
                location="body",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _answer(entry: Entry, proba: np.ndarray) -> dict[str, Any]:
    labels = [str(c) for c in entry.clf.classes_]
    predictions = [
        {"label": labels[int(np.argmax(row))], "probabilities": dict(zip(labels, map(float, row), strict=True))}
        for row in proba
    ]
    return {"template": entry.name, "version": entry.version, "labels": labels, "predictions": predictions}
