"""The service's ``/docs`` works offline, and its start-up says what it is loading (issue 21, item 8).

FastAPI's default pages load Swagger UI, ReDoc, a favicon and Google Fonts from the internet: blank offline.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
from serve_support import files, server, tiny  # noqa: E402, F401  (fixtures, imported so pytest finds them)

pytest.register_assert_rewrite("serve_support")

from serve_support import Running, call, get, wait_for  # noqa: E402

from verbalize.serve import ServeConfig, create_app  # noqa: E402

KEY = "docs-test-key"
# Every attribute or script option that makes a browser fetch something.
URL_ATTRIBUTES = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|\burl:\s*["']([^"']+)["']""")


def _page_urls(html: str) -> list[str]:
    return [a or b for a, b in URL_ATTRIBUTES.findall(html)]


def test_docs_page_references_only_the_service_and_every_asset_is_served(server: Running):  # noqa: F811
    page = "/docs"
    status, _, raw = call(server, "GET", page)
    assert status == 200
    html = raw.decode()
    urls = _page_urls(html)
    assert any(u.endswith(".js") for u in urls) and "/openapi.json" in urls, urls
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and url.startswith("/"), f"{page} loads {url} from elsewhere"
        status, headers, body = call(server, "GET", url)
        assert status == 200 and body, f"{url}: {status}, {len(body)} bytes"
    assert "fonts.googleapis" not in html and "cdn." not in html
    assert '"validatorUrl": null' in html  # Swagger UI would send the document to validator.swagger.io
    assert call(server, "GET", "/redoc")[0] == 404  # ReDoc's page loads its logo from cdn.redoc.ly: not served


@pytest.fixture(scope="module")
def keyed(tiny: Any, files: dict[str, Path]) -> Iterator[Running]:  # noqa: F811
    config = ServeConfig(window_ms=5, reload_interval_s=0, api_key=KEY)
    srv = Running(create_app([str(files["senti"])], model=tiny, config=config)).start()
    yield srv
    srv.stop()


def test_with_an_api_key_the_pages_need_it_and_their_static_assets_do_not(keyed: Running):
    auth = {"Authorization": f"Bearer {KEY}"}
    assert call(keyed, "GET", "/docs")[0] == 401
    status, _, raw = call(keyed, "GET", "/docs", headers=auth)
    assert status == 200
    assets = [u for u in _page_urls(raw.decode()) if u.startswith("/docs/static/")]
    assert len(assets) == 3  # script, style sheet, favicon
    for url in assets:
        status, _, body = call(keyed, "GET", url)
        assert status == 200 and body, url
    assert call(keyed, "GET", "/docs/static/../openapi.json")[0] == 401
    assert call(keyed, "GET", "/openapi.json")[0] == 401


def test_start_up_logs_each_stage_and_readyz_says_what_it_waits_for(
    tmp_path: Path,
    gpt2_model: Any,
    gpt2_tokenizer: Any,
    files: dict[str, Path],
    caplog: Any,
    monkeypatch: Any,  # noqa: F811
):
    """The server said nothing between "Uvicorn running" and ready, and /readyz only 'loading the model and
    templates' for 40 s."""
    from verbalize.serve import app as serve_app

    model_dir = tmp_path / "tiny-gpt2"
    gpt2_model.save_pretrained(model_dir)
    gpt2_tokenizer.save_pretrained(model_dir)
    release = threading.Event()
    load = serve_app.Scorer.from_pretrained

    def slow_load(*args: Any, **kwargs: Any) -> Any:
        release.wait(30)
        return load(*args, **kwargs)

    monkeypatch.setattr(serve_app.Scorer, "from_pretrained", slow_load)
    caplog.set_level(logging.INFO, logger="verbalize")
    config = ServeConfig(reload_interval_s=0)
    srv = Running(create_app([str(files["senti"]), str(files["topic"])], model=str(model_dir), config=config))
    srv.start(ready=False)
    try:
        wait_for(lambda: "loading the model" in str(get(srv, "/readyz")[1]), "/readyz to name the model load")
        status, body = get(srv, "/readyz")
        assert status == 503 and re.fullmatch(r"loading the model \(\d+ s after start\)", body["detail"]), body
        assert str(model_dir) not in body["detail"]  # /readyz is open: no path
        release.set()
        wait_for(lambda: get(srv, "/readyz")[0] == 200, "ready")
    finally:
        release.set()
        srv.stop()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("verbalize.serve")]
    stages = [re.sub(r"[:(].*", "", line).strip() for line in lines if "s after start)" in line]
    assert stages == [
        "loading the model",
        "reading a template",
        "warming up a classifier",
        "reading a template",
        "warming up a classifier",
        "ready",
    ], lines
    assert any(str(model_dir) in line for line in lines) and any("topic.toml" in line for line in lines)
