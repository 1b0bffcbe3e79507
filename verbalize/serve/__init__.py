"""``verbalize serve``: an HTTP classification service with dynamic micro-batching and hot reload.

Needs the optional extra: ``pip install 'verbalize[serve]'`` (FastAPI, uvicorn, prometheus_client, and
fastapi-offline for the ``/docs`` assets).
Importing this package needs none of them (the CLI registers ``serve`` without them); using
:func:`create_app` does.

>>> from verbalize.serve import create_app, ServeConfig  # doctest: +SKIP
>>> app = create_app(["templates/sst2.toml"], config=ServeConfig(window_ms=5))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeConfig", "create_app", "require_extra"]


def require_extra() -> None:
    """Raise an ImportError naming the extra when FastAPI, uvicorn, prometheus_client or fastapi-offline is missing."""
    try:
        import fastapi  # noqa: F401
        import fastapi_offline  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            f"verbalize serve needs the 'serve' extra ({exc.name} is not installed): pip install 'verbalize[serve]'"
        ) from exc


def __getattr__(name: str) -> Any:
    if name in ("ServeConfig", "create_app"):
        require_extra()
        from verbalize.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'verbalize.serve' has no attribute {name!r}")
