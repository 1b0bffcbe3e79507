"""Progress of the steps that can take more than a few seconds: opt-in, on stderr, never on stdout.

An estimator shows it with ``progress=True`` and the CLI by default (``--no-progress`` turns it off). Steps
deep below them (a model's conversion in the engine, the cross-validation of ``calibration="auto"``) take
no ``progress`` argument: they ask :func:`enabled`, which :func:`shown` turns on for the block that runs
them (a context variable, as scikit-learn's ``config_context``: per thread and per asyncio task). A step
with a count shows a bar (:func:`bar`); one without, a line when it starts and one with its elapsed time
when it ends (:func:`stage`).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any

_SHOWN: ContextVar[bool] = ContextVar("verbalize_progress", default=False)


def enabled() -> bool:
    """Whether progress is shown in this context."""
    return _SHOWN.get()


@contextlib.contextmanager
def shown(on: bool = True) -> Iterator[None]:
    """Show progress (``on``), or not, while the block runs; the setting before is restored after."""
    token = _SHOWN.set(on)
    try:
        yield
    finally:
        _SHOWN.reset(token)


def shown_if(on: bool) -> contextlib.AbstractContextManager[None]:
    """``progress=True`` turns progress on for the block; ``False`` leaves the setting around it (the CLI's)."""
    return shown(True) if on else contextlib.nullcontext()


def bar(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str, unit: str = "it") -> Any:
    """A tqdm bar on stderr with a count and the elapsed time; a silent pass-through when progress is off."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled(), file=sys.stderr, dynamic_ncols=True)


@contextlib.contextmanager
def stage(what: str) -> Iterator[None]:
    """``what ...`` on stderr when the block starts and ``what: done in N s`` when it ends (progress on only).

    Written through tqdm, so a bar showing at the time is redrawn below the line, not broken by it.
    """
    if not enabled():
        yield
        return
    from tqdm.auto import tqdm

    tqdm.write(f"{what} ...", file=sys.stderr)
    start = time.perf_counter()
    yield
    tqdm.write(f"{what}: done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
