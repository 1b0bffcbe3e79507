"""The service's API pages, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), with every asset served by the service.

FastAPI's own pages load their scripts, styles, favicon and fonts from public CDNs, so they are blank offline
or behind a firewall. Here the pages reference only the service's own URLs: the assets are Swagger UI 5 and
ReDoc 2 as shipped in the ``fastapi-offline`` wheel (MIT; part of the ``serve`` extra), served from
``/docs/static/``. (``swagger-ui-bundle`` ships Swagger UI 4, which cannot render the OpenAPI 3.1 document
that FastAPI writes.) Swagger UI's online validator is switched off: it would send the document away.

With an API key, ``/docs``, ``/redoc`` and ``/openapi.json`` need the key, as every route but the health
probes does (they describe this service's routes and limits); the files under ``/docs/static/`` do not: they
are the same release files in every installation and say nothing about this service.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS = "/docs/static"
"""Where the pages' scripts, styles and favicon are served (open without the API key)."""


def asset_dir() -> Path:
    """The folder of the Swagger UI and ReDoc files (from the ``fastapi-offline`` wheel).

    Raises
    ------
    ImportError
        When ``fastapi-offline`` is not installed, naming the extra that brings it.
    """
    try:
        import fastapi_offline
    except ImportError as exc:
        raise ImportError(
            "the service's /docs pages need the fastapi-offline package (their assets, served offline): "
            "pip install 'verbalize[serve]'"
        ) from exc
    return Path(fastapi_offline.__file__).parent / "static"


def add_docs(app: FastAPI) -> None:
    """Serve ``/docs`` and ``/redoc`` (create ``app`` with ``docs_url=None, redoc_url=None``) and their assets."""
    app.mount(ASSETS, StaticFiles(directory=asset_dir()), name="docs-assets")
    title = f"{app.title}: API"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=title,
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=title,
            redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS}/favicon.png",
            with_google_fonts=False,
        )
