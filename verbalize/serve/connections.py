"""The uvicorn side of the service: read timeouts, a connection cap, and a bounded log.

uvicorn (0.5x, h11) times out only idle keep-alive connections after a response: a connection that
sends half a request head (or nothing) stays open for ever, and a flood of them exhausts the file
descriptors. :func:`bounded_protocol` makes uvicorn's h11 protocol close a connection whose request
head is not complete within ``read_timeout_s`` (from the connection's start or the previous answer),
and, past ``max_connections`` open connections, close the oldest one still waiting for its request
head, so that a new client is served (a slow-loris flood cannot crowd out ``/healthz``). Request
bodies are bounded by the app (``ServeConfig.read_timeout_s`` in :mod:`verbalize.serve.app`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from verbalize.serve.app import ServeConfig

logger = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024
"""Largest request head (request line and headers) accepted; h11 answers 400 beyond it."""


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request-head deadline and a cap on open connections (see the module)."""

    read_timeout_s: float = 10.0
    max_connections: int = 256
    waiting_since: float | None = None  # monotonic time since the connection waits for a request head
    _head_timer: asyncio.TimerHandle | None = None
    _head_cycle: Any = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm()
        if len(self.connections) > self.max_connections:
            self._evict_oldest_waiting()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not self._head_cycle:  # a request head arrived: it is being answered
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_cycle = self.cycle
        self.waiting_since = time.monotonic()
        self._head_timer = self.loop.call_later(self.read_timeout_s, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = None
        self.waiting_since = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            logger.debug("closing a connection that sent no complete request head in %s s", self.read_timeout_s)
            self.transport.close()

    def _evict_oldest_waiting(self) -> None:
        waiting = [
            c for c in self.connections if isinstance(c, BoundedH11Protocol) and c is not self and c.waiting_since
        ]
        if waiting:
            oldest = min(waiting, key=lambda c: c.waiting_since or 0.0)
            oldest._disarm()
            oldest.transport.close()


def bounded_protocol(read_timeout_s: float, max_connections: int) -> type[BoundedH11Protocol]:
    """:class:`BoundedH11Protocol` with these limits (uvicorn builds one protocol object per connection)."""
    limits = {"read_timeout_s": read_timeout_s, "max_connections": max_connections}
    return type("BoundedH11Protocol", (BoundedH11Protocol,), limits)


class RepeatFilter(logging.Filter):
    """Let the same message through at most once per ``interval_s``; the next one says how many were dropped.

    uvicorn logs a warning per bad connection or per request over its limits: a flood of them would
    grow the log without bound.
    """

    def __init__(self, interval_s: float = 10.0):
        super().__init__()
        self.interval_s = interval_s
        self._seen: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = f"{record.name}:{record.msg}"
        now = time.monotonic()
        with self._lock:
            last, dropped = self._seen.get(key, (-self.interval_s, 0))
            if now - last < self.interval_s:
                self._seen[key] = (last, dropped + 1)
                return False
            if len(self._seen) > 1000:  # many distinct messages: forget the old ones
                self._seen.clear()
            self._seen[key] = (now, 0)
        if dropped:
            record.msg = f"{record.msg} (and {dropped} more like it in the last {now - last:.0f} s)"
        return True


def bound_uvicorn_log(interval_s: float = 10.0) -> RepeatFilter:
    """Install a :class:`RepeatFilter` on uvicorn's loggers (call after uvicorn configured logging)."""
    repeat = RepeatFilter(interval_s)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        log = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in log.filters):
            log.addFilter(repeat)
    return repeat


def server_options(config: ServeConfig) -> dict[str, Any]:
    """The ``uvicorn.Config`` keyword arguments that bound what one client can hold (see the module)."""
    return {
        "http": bounded_protocol(config.read_timeout_s, config.max_connections),
        "timeout_keep_alive": max(1, round(config.keep_alive_s)),
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        # uvicorn answers 503 (plain text) beyond this many requests in flight at once
        "limit_concurrency": config.max_connections + 1,
        "backlog": 2048,
    }
