"""The service's API page, ``/docs`` (Swagger UI), with every asset served by the service itself.

FastAPI's own pages load their scripts, styles, favicon and fonts from public CDNs, so they are blank offline
or behind a firewall. Here the page references only the service's own URLs: the assets are Swagger UI 5 as
shipped in the ``fastapi-offline`` wheel (MIT; part of the ``serve`` extra), served from ``/docs/static/``.
(``swagger-ui-bundle`` ships Swagger UI 4, which cannot render the OpenAPI 3.1 document that FastAPI writes.)
Swagger UI's online validator is switched off: it would send the document away. There is no ``/redoc``:
ReDoc's page loads its logo from cdn.redoc.ly whatever its options (a browser test caught it).

With an API key, ``/docs`` and ``/openapi.json`` need the key, as every route but the health probes does
(they describe this service's routes and limits); the files under ``/docs/static/`` do not: they are the
same release files in every installation and say nothing about this service.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS = "/docs/static"
"""Where the page's script, style sheet and favicon are served (open without the API key)."""


def asset_dir() -> Path:
    """The folder of the Swagger UI files (from the ``fastapi-offline`` wheel).

    Raises
    ------
    ImportError
        When ``fastapi-offline`` is not installed, naming the extra that brings it.
    """
    try:
        import fastapi_offline
    except ImportError as exc:
        raise ImportError(
            "the service's /docs page needs the fastapi-offline package (its assets, served offline): "
            "pip install 'verbalize[serve]'"
        ) from exc
    return Path(fastapi_offline.__file__).parent / "static"


def add_docs(app: FastAPI) -> None:
    """Serve ``/docs`` (create ``app`` with ``docs_url=None, redoc_url=None``) and its assets."""
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
