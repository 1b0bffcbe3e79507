"""Shared prefixes kept between calls: one text at a time must not pay for its template's words again.

Every call of a :class:`~verbalize.engine.scoring.Scorer` runs the tokens its prompts share (BOS, instruction,
demonstrations, the template's words before the text) once, as a prefix whose key/value cache every row then
reads. For a batch that costs one short forward; for a lone text (a service's request, ``predict([text])``)
it was a second pass through every layer, a third of the call's time on the embedded model. The
:class:`PrefixMemo` of a model keeps the last prefixes' key/value snapshots (bounded by bytes, least recently
used dropped first): the same prefix gives the same tensors, so scores are unchanged. The snapshots are
never written to (a cache layer replaces its tensors on update), so threads share them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import torch

MAX_BYTES = 256 * 1024**2
"""Most bytes of key/value snapshots a memo keeps (a 1,000-token prefix of the embedded model: 46 MB)."""


class PrefixMemo:
    """Values by key, least recently used dropped first once their tensors pass ``max_bytes``; thread-safe."""

    def __init__(self, max_bytes: int = MAX_BYTES):
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """The value kept under ``key``, or ``make()`` (kept when it fits)."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
        value = make()  # outside the lock: threads with other prefixes do not wait (a duplicate is harmless)
        size = _nbytes(value)
        with self._lock:
            if key not in self._items and size <= self.max_bytes:
                self._items[key] = (value, size)
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, (_, dropped) = self._items.popitem(last=False)
                    self._bytes -= dropped
        return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)


def _nbytes(value: Any) -> int:
    """Bytes of the tensors in ``value`` (nested tuples, lists, dataclass-like objects with ``__dict__``)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, list | tuple):
        return sum(_nbytes(v) for v in value)
    if hasattr(value, "__dict__"):
        return sum(_nbytes(v) for v in vars(value).values())
    return 0
