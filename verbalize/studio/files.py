"""The studio's templates folder: list, read, save (valid only, atomic, refused when stale) and history.

Every name the page sends is one file name in the folder (``sst2.toml``): no separator, no ``..``, and the
resolved path must lie in the resolved folder, so the page never reads or writes outside it. A save keeps
the earlier text in ``.history/<stem>/`` beside the templates; the version of a text is its SHA-256 (first
16 hex digits), and a save names the version it was edited from: when the file changed since (another tab
saved), the save is refused.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from verbalize.atomic import write_text
from verbalize.errors import InputError, TemplateError
from verbalize.prompting.template import loads_template

HISTORY = ".history"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]*\.toml$")
_ENTRY = re.compile(r"^[0-9]{8}T[0-9]{6}-[0-9]{6}-[0-9a-f]{16}\.toml$")


def version_of(text: str) -> str:
    """The version of a template text: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class StaleSave(InputError):
    """The file changed on disk since the text being saved was loaded (another tab or editor saved it)."""


@dataclass(frozen=True)
class TemplateFolder:
    """A folder of template files that the studio lists, reads and writes."""

    root: Path
    lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)  # one save at a time

    def __post_init__(self) -> None:
        root = Path(self.root).resolve()
        if not root.is_dir():
            raise InputError(f"templates folder {self.root} is not a directory; pass a folder of .toml files")
        object.__setattr__(self, "root", root)

    def names(self) -> list[str]:
        """The template files of the folder, sorted."""
        return sorted(p.name for p in self.root.glob("*.toml") if p.is_file() and _NAME.match(p.name))

    def path(self, name: str) -> Path:
        """The file of ``name`` in the folder; refused when the name could reach outside it."""
        if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
            raise InputError(
                f"template name {name!r}: expected a file name in the templates folder ending in .toml "
                "(letters, digits, '.', '_', '-', no folder), e.g. sst2.toml"
            )
        path = (self.root / name).resolve()
        if path.parent != self.root:
            raise InputError(f"template name {name!r} points outside the templates folder {self.root}; refused")
        return path

    def read(self, name: str) -> tuple[str, str]:
        """A template file's text and version."""
        path = self.path(name)
        if not path.is_file():
            raise FileNotFoundError(f"template {name!r} not found in {self.root}; known: {', '.join(self.names())}")
        text = path.read_text(encoding="utf-8")
        return text, version_of(text)

    def save(self, name: str, text: str, base_version: str | None) -> str:
        """Write ``text`` to ``name`` if it is a valid template and the file is still at ``base_version``.

        ``base_version`` is the version the edit started from (None: a new file, which must not exist).
        The earlier text goes to the history first. Returns the new version.

        Raises
        ------
        TemplateError
            The text has problems (nothing is written).
        StaleSave
            The file is no longer at ``base_version``.
        """
        path = self.path(name)
        loads_template(text, name)  # every problem, before anything is written
        with self.lock:  # two tabs saving at once: the version check and the write are one step
            return self._save(name, path, text, base_version)

    def _save(self, name: str, path: Path, text: str, base_version: str | None) -> str:
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        now = version_of(current) if current is not None else None
        if now != base_version:
            raise StaleSave(
                f"{name} changed on disk since this text was loaded (version {base_version}, now {now}): another tab "
                "or editor saved it. Nothing was written; reload the file (your draft stays in the editor's history) "
                "and apply your edit again"
            )
        if current is not None:
            self._keep(name, current)
        write_text(path, text)
        return version_of(text)

    def _history_dir(self, name: str) -> Path:
        return self.root / HISTORY / Path(self.path(name).name).stem

    def _keep(self, name: str, text: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{time.time_ns() // 1000 % 1_000_000:06d}"
        write_text(self._history_dir(name) / f"{stamp}-{version_of(text)}.toml", text)

    def history(self, name: str) -> list[dict[str, str]]:
        """Earlier versions of ``name``, newest first: entry (file name), version, saved (UTC time)."""
        folder = self._history_dir(name)
        entries = sorted((p.name for p in folder.glob("*.toml") if _ENTRY.match(p.name)), reverse=True)
        return [{"entry": e, "version": e[-21:-5], "saved": _when(e)} for e in entries]

    def history_text(self, name: str, entry: str) -> str:
        """The text of one history entry of ``name``."""
        if not _ENTRY.match(entry or ""):
            raise InputError(f"history entry {entry!r}: not an entry name (as listed by the history)")
        path = self._history_dir(name) / entry
        if not path.is_file():
            raise FileNotFoundError(f"history entry {entry!r} of {name} not found")
        return path.read_text(encoding="utf-8")


def _when(entry: str) -> str:
    d, t = entry[:8], entry[9:15]
    return f"{d[:4]}-{d[4:6]}-{d[6:]} {t[:2]}:{t[2:4]}:{t[4:]} UTC"


def problems_of(text: str, name: str) -> list[str]:
    """Every problem of a template text (empty when valid), each ``name: key: message``."""
    try:
        loads_template(text, name)
    except TemplateError as exc:
        return list(exc.issues)
    return []
