"""The process's loaded models: one owner, evictable.

Loading a model takes seconds and its weights take memory, so every classifier of a process that
names the same model (a hub id, a local directory, a ``.gguf`` file, or None for the embedded default)
with the same device and dtype shares one loaded copy, held by :data:`MODELS`. A local directory is
also keyed by its inode and modification time: a classifier saved again to the same path (an atomic
rename puts a new directory there) gets the new weights, and the copy of the replaced directory is
evicted then, as nobody can ask for it again. A long-running process (the service's hot reload) evicts
what it replaced with :meth:`ModelCache.evict`; anyone can empty the cache with :func:`clear_model_cache`.

Evicting never breaks a classifier that is still in use: it holds its own reference to the model,
and the weights are freed when the last such reference goes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

from verbalize.engine.formats import AUTO, forced, load_auto
from verbalize.engine.models import load_model

logger = logging.getLogger(__name__)

Key = tuple[str, str, str, Any]
"""(name, device, dtype, (inode, mtime_ns) of a local directory or None)."""


class ModelCache:
    """Loaded ``(model, tokenizer)`` pairs by name, device and dtype; thread-safe.

    Parameters
    ----------
    load : callable, optional
        ``load(name, device, dtype) -> (model, tokenizer)``; default :func:`verbalize.engine.models.load_model`
        (looked up at each load, so a test can count loads by replacing this module's ``load_model``).

    Examples
    --------
    >>> cache = ModelCache()
    >>> model, tokenizer = cache.get("path/to/saved_model", "cpu")  # doctest: +SKIP
    >>> cache.get("path/to/saved_model", "cpu")[0] is model  # doctest: +SKIP
    True
    >>> cache.clear()  # doctest: +SKIP
    1
    """

    def __init__(self, load: Callable[[Any, str, str], tuple[Any, Any]] | None = None):
        self._load = load
        self._entries: dict[Key, tuple[Any, Any]] = {}
        self._lock = threading.Lock()

    def get(
        self,
        name: str | os.PathLike[str] | None,
        device: str = "auto",
        dtype: str = "auto",
        exact: Callable[[Any, Any], object] | None = None,
    ) -> tuple[Any, Any]:
        """The loaded ``(model, tokenizer)`` for ``name``, loading it on first use (see :func:`load_model`).

        ``dtype="auto"`` loads the format measured fastest here that passes ``exact(model, tokenizer)``
        (see :mod:`verbalize.engine.formats`); ``$VERBALIZE_DTYPE`` names the format it means instead.

        Raises
        ------
        ModelLoadError
            When the model cannot be loaded (nothing is cached then).
        """
        dtype = (forced() or dtype) if dtype == AUTO else dtype
        key = _key(name, device, dtype)
        with self._lock:  # one load per key, even when threads ask at once
            if key not in self._entries:
                stale = [k for k in self._entries if k[:3] == key[:3]]  # the directory was replaced
                for k in stale:
                    del self._entries[k]
                if stale:
                    logger.info("evicted the model of %s: its directory was replaced", key[0])
                load = self._load or load_model
                got = load_auto(name, device, load, exact) if dtype == AUTO else load(name, device, dtype)
                self._entries[key] = got
            return self._entries[key]

    def evict(self, model: Any) -> bool:
        """Drop the entry holding ``model`` (a loaded model object); True when there was one.

        Its memory is freed once no classifier or scorer holds the model any more.
        """
        with self._lock:
            keys = [k for k, (m, _) in self._entries.items() if m is model]
            for k in keys:
                del self._entries[k]
        if keys:
            logger.info("evicted the model of %s", keys[0][0])
        return bool(keys)

    def clear(self) -> int:
        """Drop every entry; returns how many there were."""
        with self._lock:
            n = len(self._entries)
            self._entries.clear()
        return n

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, model: Any) -> bool:
        """Whether ``model`` (a loaded model object) is held by the cache."""
        return any(m is model for m, _ in list(self._entries.values()))


def _key(name: str | os.PathLike[str] | None, device: str, dtype: str) -> Key:
    where = os.path.expanduser(os.fspath(name)) if name is not None else ""
    stamp = None
    if where and os.path.isdir(where):
        st = os.stat(where)
        stamp = (st.st_ino, st.st_mtime_ns)
    return (str(name), str(device), str(dtype), stamp)


MODELS = ModelCache()
"""The process-wide cache that :meth:`Scorer.from_pretrained <verbalize.engine.scoring.Scorer.from_pretrained>` uses."""


def clear_model_cache() -> int:
    """Forget every model loaded by name in this process; returns how many were held.

    A model's memory is freed once no classifier holds it any more (drop those classifiers too).
    The next use of a name loads it again.

    Examples
    --------
    >>> from verbalize import clear_model_cache
    >>> clear_model_cache()  # doctest: +SKIP
    1
    """
    return MODELS.clear()
