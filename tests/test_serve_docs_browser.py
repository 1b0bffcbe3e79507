"""``/docs`` renders in a real browser with every request off the service blocked (issue 21, bar 4).

Debian's chromium (``apt-get install chromium``, see .ci/setup) driven by Playwright for Python (the
``studio-test`` extra); skipped where either is missing. FastAPI's default pages stayed blank here: their
scripts came from cdn.jsdelivr.net. (ReDoc, tried too, loads its logo from cdn.redoc.ly: /redoc is not served.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = os.environ.get("VERBALIZE_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).is_file():
    pytest.skip(f"no chromium at {CHROMIUM}: apt-get install -y chromium (see .ci/setup)", allow_module_level=True)

from serve_support import files, server, tiny  # noqa: E402, F401  (fixtures, imported so pytest finds them)

pytest.register_assert_rewrite("serve_support")

from serve_support import Running  # noqa: E402

TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def offline_browser(server: Running) -> Iterator[tuple[Any, list[str]]]:  # noqa: F811
    """A chromium context that lets through requests to the service only, and records the others."""
    blocked: list[str] = []

    def route(r: Any) -> None:
        url = r.request.url
        if url == server.url or url.startswith(server.url + "/"):
            r.continue_()
        else:
            blocked.append(url)
            r.abort()

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context()
        context.route("**/*", route)
        try:
            yield context, blocked
        finally:
            browser.close()


def test_swagger_ui_renders_every_route_offline(server: Running, offline_browser):  # noqa: F811
    context, blocked = offline_browser
    page = context.new_page()
    page.goto(f"{server.url}/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=TIMEOUT_MS)
    assert "verbalize" in page.inner_text(".swagger-ui .info .title")
    page.wait_for_selector(".opblock-summary-path", timeout=TIMEOUT_MS)
    paths = {p.strip().replace("\u200b", "") for p in page.locator(".opblock-summary-path").all_inner_texts()}
    assert {"/v1/classify", "/v1/templates", "/readyz"} <= paths, paths
    assert blocked == []
