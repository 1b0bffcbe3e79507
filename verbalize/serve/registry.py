"""What the service serves: template files and saved classifiers, and their hot reload.

Each served source becomes an immutable :class:`Entry` (name, version, a ready classifier). A
reload builds and warms up a complete new classifier first and only then swaps the entry in one
assignment, so a request holds either the old version or the new one, never half of either. An
edit that fails validation keeps the previous version serving; its problems (``file: key: ...``)
are kept for ``GET /v1/templates`` and logged.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verbalize.engine.cache import MODELS
from verbalize.errors import TemplateError
from verbalize.estimator import Verbalizer
from verbalize.prompting.template import Template, load_template, shipped_templates

logger = logging.getLogger(__name__)

SAVED_FILE = "verbalize.json"


@dataclass(frozen=True)
class Source:
    """A template file (``kind="template"``) or a directory written by ``Verbalizer.save`` (``"classifier"``)."""

    path: Path
    kind: str
    root: Path | None = None  # the served folder the watched file must resolve inside (None: no check)
    shown: str = ""  # what clients see instead of the path: relative to the served folder, never absolute

    @property
    def file(self) -> Path:
        """The file whose edits are watched."""
        return self.path / SAVED_FILE if self.kind == "classifier" else self.path

    @property
    def shown_file(self) -> str:
        """The watched file as clients see it (``sst2.toml``, ``my_clf/verbalize.json``)."""
        shown = self.shown or self.path.name
        return f"{shown}/{SAVED_FILE}" if self.kind == "classifier" else shown

    def escape(self) -> str | None:
        """Why the watched file resolves outside the served folder (a symlink elsewhere), or None."""
        if self.root is None:
            return None
        try:
            target, root = self.file.resolve(), self.root.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            return f"{self.shown_file}: cannot be resolved (a symlink loop?); not served"
        if target.is_relative_to(root):
            return None
        return (
            f"{self.shown_file}: resolves outside its served folder (a symlink to a file elsewhere); not served: "
            "copy the file into the folder, or serve it by its own path"
        )

    def hide_paths(self, text: str) -> str:
        """``text`` with this source's paths shown relative (clients never see absolute paths)."""
        pairs = [(self.file, self.shown_file), (self.path, self.shown or self.path.name)]
        for path, shown in pairs:
            for full in sorted({str(path.absolute()), str(path.resolve()), str(path)}, key=len, reverse=True):
                text = text.replace(full, shown)
        return hide_paths(text)

    def stamp(self) -> tuple[int, int] | None:
        """(mtime_ns, size) of the watched file, None when it is missing."""
        try:
            st = self.file.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size


def expand_sources(paths: list[str]) -> list[Source]:
    """Template files, shipped template names, saved-classifier directories and directories of ``*.toml``
    files -> sources.

    Raises
    ------
    FileNotFoundError
        A path does not exist.
    ValueError
        A directory holds neither ``verbalize.json`` nor ``*.toml`` files.
    """
    out: list[Source] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():  # named by the operator: its own folder is the served one
            out.append(Source(path, "template", path.absolute().parent, path.name))
        elif (path / SAVED_FILE).is_file():
            out.append(Source(path, "classifier", path, path.absolute().name))
        elif path.is_dir():
            files = sorted(path.glob("*.toml"))
            if not files:
                raise ValueError(
                    f"{raw}: directory holds no *.toml template and no {SAVED_FILE}; "
                    "pass template files, a directory of them, or a directory written by Verbalizer.save"
                )
            out += [Source(f, "template", path, f.relative_to(path).as_posix()) for f in files]
        elif raw in shipped_templates():  # a shipped template by name, as predict and check take it
            file = shipped_templates()[raw]
            out.append(Source(file, "template", file.parent, file.name))
        else:
            raise FileNotFoundError(
                f"{raw}: no such template file or directory, nor a shipped template name "
                f"({', '.join(shipped_templates())})"
            )
    return out


@dataclass(frozen=True)
class Entry:
    """One served version of a source: never modified, replaced as a whole on reload."""

    name: str
    source: Source
    clf: Verbalizer
    version: int
    digest: str
    loaded_at: float

    def describe(self) -> dict[str, Any]:
        """The entry as ``GET /v1/templates`` lists it."""
        template = self.clf.template_
        return {
            "name": self.name,
            "source": self.source.shown or self.source.path.name,
            "version": self.version,
            "digest": self.digest,
            "loaded_at": self.loaded_at,
            "fields": list(template.fields),
            "labels": [{"label": str(c), "words": list(template.labels[str(c)])} for c in self.clf.classes_],
            "prompt": template.prompt,
            "dtype": describe_dtype(self.clf),
        }


def describe_dtype(clf: Verbalizer) -> dict[str, Any]:
    """The format the classifier's model runs in, and for ``dtype="auto"`` the rates measured to choose it."""
    scorer = clf.scorer_
    out: dict[str, Any] = {"requested": str(clf.dtype), "dtype": scorer.dtype}
    choice = scorer.dtype_choice
    if choice is not None:
        out |= {
            "gflops": {k: round(v, 1) for k, v in choice.rates.items()},
            "not_taken": choice.refused,
            "recorded": choice.recorded,
            "machine": choice.machine,
        }
    return out


def sample_row(template: Template) -> dict[str, str]:
    """A row for a warm-up: the template's ``sample_text`` in each of its fields."""
    return dict.fromkeys(template.fields, template.sample_text)


def build_classifier(
    source: Source, model: Any, batch_size: int = 64, note: Callable[[str, str], None] | None = None
) -> Verbalizer:
    """A ready classifier for ``source``, warmed up once (which also checks its label words' tokens).

    ``note(stage, what)`` is told each stage (reading, warming up) as it starts, for the service's log.

    Raises
    ------
    TemplateError
        With every problem of the file, each ``file: key: ...``.
    """
    note = note or (lambda stage, what: None)
    if source.kind == "classifier":
        note("loading a saved classifier and its model", source.shown_file)
        clf = Verbalizer.load(source.path)
        template = clf.template_
    else:
        note("reading a template", source.shown_file)
        template = load_template(source.path)
        clf = Verbalizer(template=template, model=model, batch_size=batch_size)
    note("warming up a classifier", source.shown_file)
    clf.predict_proba([sample_row(template)])
    if getattr(clf, "heads_", None):
        raise TemplateError([f"{source.path}: heads: classifiers with heads are not served yet; serve the template"])
    return clf


class Registry:
    """Served entries by name, the problems of sources that failed to (re)load, and the polling thread.

    Parameters
    ----------
    sources : list of Source
    build : callable
        ``build(source) -> Verbalizer``, raising :class:`TemplateError` for a bad file.
    exclusive : callable
        A context manager factory that holds the model while a classifier warms up.
    on_reload : callable, optional
        Called with ``"ok"`` or ``"invalid"`` after each reload attempt (metrics).
    """

    def __init__(
        self,
        sources: list[Source],
        build: Callable[[Source], Verbalizer],
        exclusive: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
        on_reload: Callable[[str], None] | None = None,
    ):
        self.sources = sources
        self._build = build
        self._exclusive = exclusive
        self._on_reload = on_reload or (lambda result: None)
        self._entries: dict[str, Entry] = {}  # replaced, never mutated: readers need no lock
        self._by_source: dict[Source, str] = {}
        self._stamps: dict[Source, tuple[int, int] | None] = {}
        self.problems: dict[str, list[str]] = {}  # replaced, never mutated, as _entries; no absolute path
        self._shown: dict[str, str] = {str(s.file): s.shown_file for s in sources}
        self.ready = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def get(self, name: str) -> Entry | None:
        return self._entries.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def load(self) -> None:
        """Build every source once (startup); a source that fails is reported, the others served."""
        for source in self.sources:
            self._refresh(source)
        self.ready = bool(self._entries)

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/templates`` returns: served entries and current problems."""
        return {
            "templates": [e.describe() for e in self._entries.values()],
            "problems": [{"source": self._shown.get(s, s), "issues": list(i)} for s, i in self.problems.items()],
        }

    def poll(self) -> None:
        """Reload every source whose watched file changed since the last look."""
        for source in self.sources:
            if source.stamp() != self._stamps.get(source):
                self._refresh(source)

    def start_polling(self, interval_s: float) -> None:
        """Poll file modification times every ``interval_s`` seconds in a daemon thread."""

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.poll()
                except Exception:  # keep watching whatever one reload did
                    logger.exception("template reload failed")

        self._thread = threading.Thread(target=loop, name="verbalize-reload", daemon=True)
        self._thread.start()

    def stop_polling(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _refresh(self, source: Source) -> None:
        """(Re)build one source; on success swap its entry in, otherwise keep the old one and report."""
        key = str(source.file)
        self._stamps[source] = source.stamp()
        escape = source.escape()
        if escape is not None:
            self._report(source, [escape])
            return
        try:
            data = source.file.read_bytes()
        except OSError as exc:
            self._report(source, [f"{key}: cannot read: {exc.strerror or exc}; the previous version stays served"])
            return
        digest = _digest(source, data)
        old_name = self._by_source.get(source)
        old = self._entries.get(old_name) if old_name else None
        if old is not None and old.digest == digest:
            self._clear(key)  # edited back to the served content
            return
        try:
            with self._exclusive():
                clf = self._build(source)
        except TemplateError as exc:
            self._report(source, exc.issues)
            return
        except Exception as exc:
            self._report(source, [f"{key}: {type(exc).__name__}: {exc}"])
            return
        if _digest(source) != digest:  # edited again while building: build the newest content next poll
            self._stamps[source] = None
            return
        name = old_name or self._name(source, clf)
        if name is None:
            return
        entry = Entry(name, source, clf, (old.version + 1) if old else 1, digest, time.time())
        self._entries = {**self._entries, name: entry}
        self._by_source[source] = name
        self._clear(key)
        if old is not None:
            self._evict_model(old.clf)
            del old
            _release_memory()
            logger.info("reloaded %s from %s (version %d)", name, key, entry.version)
            self._on_reload("ok")

    def _evict_model(self, replaced: Verbalizer) -> None:
        """Drop the replaced version's model from the model cache unless a served entry still reads it
        (a re-saved classifier's old ``model/`` directory; template files share one model and keep it)."""
        scorer = replaced.__dict__.get("scorer_")
        if scorer is None:
            return
        if not any(
            e.clf.__dict__.get("scorer_") and e.clf.scorer_.model is scorer.model for e in self._entries.values()
        ):
            MODELS.evict(scorer.model)

    def _name(self, source: Source, clf: Verbalizer) -> str | None:
        name = clf.template_.name or source.path.stem
        if source.kind == "classifier":
            name = source.path.name
        if name in self._entries:
            other = self._entries[name].source.file
            self._report(source, [f"{source.file}: name: {name!r} is already served from {other}; rename one"])
            return None
        return name

    def _report(self, source: Source, issues: list[str]) -> None:
        served = source in self._by_source
        self.problems = {**self.problems, str(source.file): [source.hide_paths(i) for i in issues]}
        for issue in issues:
            logger.warning("template problem: %s", issue)
        if served:
            logger.warning("%s: invalid edit; version %d stays served", source.file, self._version(source))
            self._on_reload("invalid")

    def _clear(self, key: str) -> None:
        self.problems = {k: v for k, v in self.problems.items() if k != key}

    def _version(self, source: Source) -> int:
        entry = self._entries.get(self._by_source.get(source, ""))
        return entry.version if entry else 0


_ABSOLUTE = re.compile(r"(?<![\w.])(?:/[^\s/:'\"()]+){2,}")


def hide_paths(text: str) -> str:
    """``text`` with every absolute path (two parts or more) cut to its last part."""
    return _ABSOLUTE.sub(lambda m: m.group(0).rsplit("/", 1)[-1], text)


def _release_memory() -> None:
    """Free what the replaced version held and hand glibc's unused heap back to the OS (RSS stays flat)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _digest(source: Source, data: bytes | None = None) -> str:
    """Short hash of the watched file's content ("" when it cannot be read); for a saved classifier,
    also of its other files' names, sizes and times (a classifier fine-tuned again and saved has the
    same ``verbalize.json`` but other weights)."""
    if data is None:
        try:
            data = source.file.read_bytes()
        except OSError:
            return ""
    digest = hashlib.sha256(data)
    if source.kind == "classifier":
        digest.update(_file_stamps(source.path).encode())
    return digest.hexdigest()[:12]


def _file_stamps(root: Path) -> str:
    """Every file under ``root`` as ``path:size:mtime_ns``, one per line, in path order."""
    lines = []
    for path in sorted(root.rglob("*")):
        with contextlib.suppress(OSError):  # a file removed meanwhile (a save in progress): the next poll sees it
            if path.is_file():
                st = path.stat()
                lines.append(f"{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}")
    return "\n".join(lines)
