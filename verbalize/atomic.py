"""Write-then-rename: a file or a directory appears whole under its name, or the earlier one stays.

Everything verbalize writes for later (a saved classifier, a converted model, a job's state, an output
part, a template file) is written to a hidden temporary sibling (``.NAME.tmp-*``) and renamed into
place: a crash or an error at any step leaves the earlier version or the new one, never half of one.
A failed write removes its temporary sibling.

A file is replaced in one ``os.replace``. A directory cannot be renamed over a non-empty one, so an
earlier directory is first moved aside (``.NAME.old-*``), the new one renamed in, and the old one
deleted only then; a failure between the two renames puts the old one back (a kill there leaves it in
the ``.old-*`` sibling, which the loader of a saved classifier points to).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

Checkpoint = Callable[[str], None]


def _no_checkpoint(step: str) -> None:
    """Default of ``checkpoint``: nothing (tests pass a function that crashes at a named step)."""


def temp_sibling(path: str | Path) -> Path:
    """A new, unused name for a hidden temporary file next to ``path`` (same directory, so renames are atomic)."""
    path = Path(path)
    return path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write (with any library); it replaces ``path`` when the block succeeds.

    On an exception the temporary file is removed and ``path`` is left as it was.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing (``mode`` "w" or "wb"); it replaces ``path`` on success.

    The file is closed before the rename; on an exception in the block ``path`` is left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file writes a new file: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, encoding=None if "b" in mode else encoding) as f:
        yield f  # the file is closed (the inner context ends first), then renamed


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_file(path, "w", encoding) as f:
        f.write(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_file(path, "wb") as f:
        f.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | Path, keep_existing: bool = False, checkpoint: Checkpoint | None = None) -> Iterator[Path]:
    """Yield a new temporary sibling directory to fill; when the block succeeds it takes ``path``'s place.

    Parameters
    ----------
    path : str or Path
        The directory to write.
    keep_existing : bool, default False
        When ``path`` exists by then (another process wrote it meanwhile), keep it and discard the new one
        (for caches: the first complete writer wins, and readers of ``path`` are never disturbed).
        Otherwise an earlier ``path`` is replaced (see :func:`replace_dir`).
    checkpoint : callable, optional
        Called with "rename" and "clean up" at those steps of the replacement (tests crash there).

    On an exception the temporary directory is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        yield tmp
        if not keep_existing:
            replace_dir(tmp, path, checkpoint)
        else:
            try:
                os.rename(tmp, path)  # onto nothing, or an empty directory
            except OSError:
                if not path.exists():  # lost a race to another writer: theirs is as good; anything else is an error
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(tmp: str | Path, path: str | Path, checkpoint: Checkpoint | None = None) -> None:
    """Rename the directory ``tmp`` to ``path``; an earlier ``path`` is moved aside first and deleted only after.

    A failure between the two renames puts the earlier directory back before the error propagates.
    """
    tmp, path, checkpoint = Path(tmp), Path(path), checkpoint or _no_checkpoint
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}" if path.exists() else None
    if old is not None:
        os.rename(path, old)
    try:
        checkpoint("rename")
        os.rename(tmp, path)
    except BaseException:
        if old is not None and not path.exists():
            os.rename(old, path)  # put the earlier one back
        raise
    try:
        checkpoint("clean up")
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
