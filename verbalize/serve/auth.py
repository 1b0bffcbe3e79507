"""Optional API key: ``Authorization: Bearer KEY`` on every route but the health probes.

``/healthz`` and ``/readyz`` stay open (load balancers and orchestrators probe them without a
key); they show no template, path or label. So do the ``/docs`` page's static assets (``/docs/static/``:
the same Swagger UI release files in every installation); the page itself needs the key.
The key is compared with :func:`hmac.compare_digest` (constant time), so the answer's timing does not
reveal how much of a guess was right.
"""

from __future__ import annotations

import hmac
from typing import Any

from starlette.responses import JSONResponse

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
OPEN_PREFIX = "/docs/static/"


def is_open(path: str) -> bool:
    """Whether ``path`` is answered without the key: a health probe or a docs asset (never a path with '..')."""
    return path in OPEN_PATHS or (path.startswith(OPEN_PREFIX) and ".." not in path)


def key_matches(header: str | None, api_key: str) -> bool:
    """Whether an ``Authorization`` header value carries ``api_key`` as a bearer token (constant time)."""
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode("utf-8"), api_key.encode("utf-8"))


class ApiKeyGate:
    """ASGI middleware answering 401 JSON unless the request carries the key (health probes excepted)."""

    def __init__(self, app: Any, api_key: str):
        if not api_key:
            raise ValueError("the API key is empty; give a non-empty key, or none to serve without one")
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or is_open(scope["path"]):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization")
        if key_matches(header.decode("latin-1") if header is not None else None, self.api_key):
            await self.app(scope, receive, send)
            return
        what = "no Authorization header" if header is None else "a wrong or malformed Authorization header"
        body = {
            "error": "unauthorized",
            "message": f"{what}: this service needs an API key; send the header 'Authorization: Bearer KEY'",
            "location": "headers.authorization",
        }
        response = JSONResponse(body, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="verbalize"'})
        await response(scope, receive, send)
