"""Client of ``verbalize serve`` (standard library only: no extra needed to call a service).

>>> from verbalize import Client
>>> client = Client("http://127.0.0.1:8000")                              # doctest: +SKIP
>>> client.predict(["a charming film", "a dull mess"], template="sst2")    # doctest: +SKIP
array(['positive', 'negative'], dtype=object)
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from verbalize.errors import VerbalizeError

logger = logging.getLogger(__name__)

RETRY_STATUSES = (429, 503)


class ServiceError(VerbalizeError):
    """The service answered with an error: ``status`` (HTTP), ``code``, ``message``, ``location``."""

    def __init__(self, status: int, code: str, message: str, location: str | None = None):
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code, self.message, self.location = status, code, message, location


class Client:
    """Calls a running ``verbalize serve`` over HTTP; one keep-alive connection per thread.

    Parameters
    ----------
    url : str
        Base address, e.g. ``"http://127.0.0.1:8000"``.
    timeout : float, default 60
        Seconds to wait for one answer.
    retries : int, default 8
        How many times a 429 (queue full) or 503 (not ready, stopping) is retried, waiting the
        ``Retry-After`` the service sends (at most ``max_wait`` seconds each).
    max_wait : float, default 10
    """

    def __init__(self, url: str, timeout: float = 60.0, retries: int = 8, max_wait: float = 10.0):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"Client url must look like 'http://HOST:PORT', got {url!r}")
        self.url = url
        self.host, self.port = parts.hostname, parts.port or 80
        self.base = parts.path.rstrip("/")
        self.timeout, self.retries, self.max_wait = timeout, retries, max_wait
        self._local = threading.local()
        self.n_retried = 0

    # -- API ---------------------------------------------------------------------------------
    def classify(self, texts: Sequence[Any], template: str) -> dict[str, Any]:
        """The service's full answer: template, version, labels, one prediction per row.

        ``texts`` holds str rows, or, for a template with several fields, dicts {field: text} (sent as
        ``"inputs"``; ``GET /v1/templates`` lists each template's fields).
        """
        if isinstance(texts, str | bytes):
            raise TypeError("texts must be a list of str, got a single str; wrap it in a list: [text]")
        rows = list(texts)
        keyed = [isinstance(r, Mapping) for r in rows]
        if any(keyed) and not all(keyed):
            raise TypeError(
                f"texts mix str rows and {{field: text}} rows (row {keyed.index(not keyed[0])} differs from row 0); "
                "give every row as a dict keyed by the template's fields, or every row as a str"
            )
        body = {"inputs": [dict(r) for r in rows]} if any(keyed) else {"texts": rows}
        return self.request("POST", "/v1/classify", {"template": template, **body})

    def predict_proba(self, texts: Sequence[Any], template: str) -> np.ndarray:
        """Probabilities (n, n_labels), columns in the template's label order (as ``Verbalizer.classes_``)."""
        answer = self.classify(texts, template)
        labels = answer["labels"]
        return np.array([[p["probabilities"][c] for c in labels] for p in answer["predictions"]], dtype=np.float64)

    def predict(self, texts: Sequence[Any], template: str) -> np.ndarray:
        """The most probable label of each row, as an array of label names."""
        answer = self.classify(texts, template)
        return np.array([p["label"] for p in answer["predictions"]], dtype=object)

    def templates(self) -> dict[str, Any]:
        """``GET /v1/templates``: served templates (labels, words, versions) and reload problems."""
        return self.request("GET", "/v1/templates")

    def ready(self) -> bool:
        """Whether ``GET /readyz`` answers 200 (model and templates loaded)."""
        try:
            self.request("GET", "/readyz", retry=False)
        except (ServiceError, OSError, http.client.HTTPException):
            return False
        return True

    # -- transport -----------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None, retry: bool = True) -> Any:
        """Send one request (retrying 429/503 as configured); return the decoded JSON answer.

        Raises
        ------
        ServiceError
            For an error answer (after the retries, for 429/503).
        """
        data = json.dumps(body).encode("utf-8") if body is not None else None
        for attempt in range(self.retries + 1):
            status, headers, raw = self._send(method, self.base + path, data)
            if status < 400:
                return json.loads(raw)
            if retry and status in RETRY_STATUSES and attempt < self.retries:
                self.n_retried += 1
                time.sleep(min(self.max_wait, _seconds(headers.get("retry-after"))))
                continue
            break
        try:
            err = json.loads(raw)
        except ValueError:
            err = {}
        if not isinstance(err, dict):
            err = {}
        message = err.get("message") or str(err.get("detail") or raw[:200].decode("utf-8", "replace"))
        raise ServiceError(status, str(err.get("error", "http_error")), message, err.get("location"))

    def _send(self, method: str, path: str, data: bytes | None) -> tuple[int, dict[str, str], bytes]:
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (0, 1):  # a kept-alive connection the server closed is re-opened once
            conn = self._connection()
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, raw
            except (OSError, http.client.HTTPException) as exc:
                conn.close()  # a failed exchange leaves the connection unusable: open a fresh one next time
                self._local.conn = None
                stale = isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError | BrokenPipeError)
                if attempt or not stale:
                    raise
        raise AssertionError("unreachable")

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _seconds(value: str | None) -> float:
    try:
        return max(0.05, float(value)) if value else 1.0
    except ValueError:
        return 1.0
