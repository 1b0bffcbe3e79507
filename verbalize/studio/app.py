"""The studio's ASGI application (FastAPI, as ``verbalize serve``): the page, and a JSON API over the
templates folder, the checks and the background evaluations.

Routes: ``GET /`` (the page) and ``/static/{studio.js,studio.css}``; ``GET /api/files`` (templates and
labeled files); ``GET /api/templates/{name}`` (text and version); ``POST /api/check``; ``POST /api/evaluate``
and ``GET /api/evaluate/{job}`` (progress, then numbers); ``POST /api/compare``; ``POST /api/save``;
``GET /api/history/{name}`` and ``GET /api/history/{name}/{entry}``; ``POST /api/suggest``.
Errors answer ``{"error": code, "message": ...}``. Every ``POST`` must carry the header ``X-Verbalize-Studio``
(a page on another site cannot send it without the browser asking first, which is never allowed), and the
``Host`` header must name the loopback address (DNS rebinding), so only the studio's own page can write.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from verbalize.errors import InputError, TemplateError
from verbalize.prompting.template import loads_template
from verbalize.studio.checks import check_text, problem
from verbalize.studio.evaluation import Evaluator, calibration_names
from verbalize.studio.files import StaleSave, TemplateFolder, version_of

STATIC = Path(__file__).parent / "static"
PAGES = {"studio.js": "text/javascript", "studio.css": "text/css"}
HEADER = "X-Verbalize-Studio"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "testserver"}
DEFAULT_SIZE = 200


class CheckBody(BaseModel):
    name: str
    text: str
    data: str | None = None


class EvaluateBody(BaseModel):
    name: str
    text: str
    data: str
    size: int = Field(DEFAULT_SIZE, ge=1, le=100_000)


class CompareBody(BaseModel):
    a: str
    b: str
    calibration: str = "none"


class SaveBody(BaseModel):
    name: str
    text: str
    version: str | None = None  # the version the edit started from; None for a new file


class SuggestBody(BaseModel):
    name: str
    text: str
    data: str
    size: int = Field(DEFAULT_SIZE, ge=1, le=100_000)


@dataclass
class Studio:
    """What the routes work on: the folder, the evaluator (scorer and labeled files) and the bound host."""

    folder: TemplateFolder
    evaluator: Evaluator
    hosts: frozenset[str] = frozenset(LOCAL_HOSTS)

    @property
    def tokenizer(self) -> Any:
        return self.evaluator.scorer.tokenizer

    def sample_row(self, text: str, name: str, data: str | None) -> Any:
        """The first usable row of ``data`` for this template (None: the template's sample_text)."""
        if not data or data not in self.evaluator.data:
            return None
        try:
            texts, _, _ = self.evaluator.data[data].rows(loads_template(text, name), 1)
        except (TemplateError, InputError, FileNotFoundError, ValueError):
            return None
        return texts[0] if texts else None


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status)


def create_app(studio: Studio) -> FastAPI:
    """The studio's FastAPI application over ``studio``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(studio.evaluator.close)  # cancel the background evaluation and wait for it

    app = FastAPI(title="verbalize studio", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.studio, app.state.evaluator = studio, studio.evaluator

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        host = request.url.hostname or ""
        if host not in studio.hosts:
            return _error(403, "forbidden_host", f"the studio answers on its own address only, not Host {host!r}")
        if request.method == "POST" and request.headers.get(HEADER) != "1":
            return _error(403, "forbidden", f"POST needs the header {HEADER}: 1 (sent by the studio's page)")
        return await call_next(request)

    _page_routes(app)
    _file_routes(app, studio)
    _evaluation_routes(app, studio)
    return app


def _page_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in PAGES:
            return _error(404, "not_found", f"no static file {name!r}")
        return FileResponse(STATIC / name, media_type=PAGES[name], headers={"Cache-Control": "no-cache"})


def _file_routes(app: FastAPI, studio: Studio) -> None:
    folder = studio.folder

    @app.get("/api/files")
    def files() -> dict[str, Any]:
        return {
            "templates": folder.names(),
            "data": list(studio.evaluator.data),
            "calibrations": studio.evaluator.calibrations,
            "size": DEFAULT_SIZE,
        }

    @app.get("/api/templates/{name}")
    def read(name: str) -> Any:
        try:
            text, version = folder.read(name)
        except InputError as exc:
            return _error(400, "bad_name", str(exc))
        except FileNotFoundError as exc:
            return _error(404, "not_found", str(exc))
        return {"name": name, "text": text, "version": version}

    @app.post("/api/check")
    def check(body: CheckBody) -> Any:
        try:
            folder.path(body.name)
        except InputError as exc:
            return _error(400, "bad_name", str(exc))
        row = studio.sample_row(body.text, body.name, body.data)
        window = getattr(studio.evaluator.scorer, "context_length", None)
        return check_text(body.text, body.name, studio.tokenizer, row, window) | {"version": version_of(body.text)}

    @app.post("/api/save")
    def save(body: SaveBody) -> Any:
        try:
            version = folder.save(body.name, body.text, body.version)
        except TemplateError as exc:
            problems = [problem(m, body.name) for m in exc.issues]
            return _error(422, "invalid_template", "not saved: the template has problems", problems=problems)
        except StaleSave as exc:
            return _error(409, "stale", str(exc), version=_current_version(folder, body.name))
        except InputError as exc:
            return _error(400, "bad_name", str(exc))
        return {"name": body.name, "version": version, "history": folder.history(body.name)}

    @app.get("/api/history/{name}")
    def history(name: str) -> Any:
        try:
            return {"name": name, "history": folder.history(name)}
        except InputError as exc:
            return _error(400, "bad_name", str(exc))

    @app.get("/api/history/{name}/{entry}")
    def history_text(name: str, entry: str) -> Any:
        try:
            text = folder.history_text(name, entry)
        except InputError as exc:
            return _error(400, "bad_name", str(exc))
        except FileNotFoundError as exc:
            return _error(404, "not_found", str(exc))
        return {"name": name, "entry": entry, "text": text, "version": version_of(text)}


def _current_version(folder: TemplateFolder, name: str) -> str | None:
    try:
        return folder.read(name)[1]
    except (FileNotFoundError, InputError):
        return None


def _evaluation_routes(app: FastAPI, studio: Studio) -> None:
    evaluator = studio.evaluator

    @app.post("/api/evaluate")
    def evaluate(body: EvaluateBody) -> Any:
        try:
            studio.folder.path(body.name)
            job = evaluator.start(body.text, body.name, body.data, body.size)
        except TemplateError as exc:
            problems = [problem(m, body.name) for m in exc.issues]
            return _error(422, "invalid_template", "not evaluated: the template has problems", problems=problems)
        except InputError as exc:
            return _error(400, "bad_name", str(exc))
        except KeyError as exc:
            return _error(404, "unknown_data", str(exc.args[0]))
        return job.view()

    @app.get("/api/evaluate/{job_id}")
    def job(job_id: str, have: str = "") -> Any:
        """The job's state; ``have``: comma-separated calibrations the page holds already (not sent again)."""
        found = evaluator.jobs.get(job_id)
        if found is None:
            return _error(404, "unknown_job", f"no evaluation {job_id!r} (cancelled by a newer edit, or never started)")
        return found.view(set(have.split(",")) if have else set())

    @app.post("/api/compare")
    def compare(body: CompareBody) -> Any:
        if body.calibration not in calibration_names():
            return _error(
                400, "bad_calibration", f"calibration {body.calibration!r} is not one of {calibration_names()}"
            )
        try:
            return evaluator.compare(body.a, body.b, body.calibration)
        except KeyError as exc:
            return _error(409, "not_evaluated", str(exc.args[0]))
        except ValueError as exc:
            return _error(400, "different_samples", str(exc))

    @app.post("/api/suggest")
    def suggest(body: SuggestBody) -> Any:
        from verbalize.studio.suggestions import suggest_words

        try:
            return suggest_words(studio.evaluator, body.text, body.name, body.data, body.size)
        except TemplateError as exc:
            problems = [problem(m, body.name) for m in exc.issues]
            return _error(422, "invalid_template", "no suggestions: the template has problems", problems=problems)
        except KeyError as exc:
            return _error(404, "unknown_data", str(exc.args[0]))
