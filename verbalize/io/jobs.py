"""Streaming, resumable batch prediction over files: one output row per input row, in input order.

A job reads its :class:`~verbalize.io.readers.Source` in chunks of ``chunk_size`` rows, classifies each
chunk (identical texts once, unusable rows reported on their own line, a failing chunk retried row by
row), and appends the chunk's rows to ``OUTPUT.partial/`` together with a small ``state.json`` that
records how many rows are done. Only a finished job moves the result onto ``OUTPUT`` (a rename), so an
earlier output is never destroyed by a failed or interrupted run. ``resume=True`` continues an
interrupted job from its last chunk, after checking that the input file and the options are the same.

Chunks always start at multiples of ``chunk_size`` (counted from the first row), so a resumed job
classifies exactly the same groups of texts as an uninterrupted one and writes the same bytes.

Exit codes used by the CLI: :data:`EXIT_OK`, :data:`EXIT_ROWS_FAILED`, :data:`EXIT_SETUP`, and
128 + the signal number when interrupted (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from verbalize.atomic import write_text
from verbalize.errors import InputError
from verbalize.io.readers import FORMATS, Row, Source
from verbalize.io.sinks import Sink, open_sink

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_ROWS_FAILED, EXIT_SETUP = 0, 1, 2
PREDICTION_FIELDS = ("prediction", "probability", "error")
STATE_VERSION = 1


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived; ``signum`` says which (a BaseException, as KeyboardInterrupt: no
    ``except Exception`` in the per-row fallback may swallow it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class JobResult:
    """What a job did: rows written in all (``rows``), how many hold an error, where it started."""

    rows: int = 0
    failed: int = 0
    resumed_from: int = 0
    seconds: float = 0.0
    interrupted: int | None = None  # the signal number
    partial: Path | None = None


@dataclass
class Job:
    """A batch prediction: ``source`` → ``output`` (None: stdout, JSONL) with ``options`` for resume checks.

    ``options`` holds whatever changes the output (template digest, model, calibration, column...);
    a resumed job must have the same options and the same input file (size and SHA-256).
    """

    source: Source
    output: Path | None
    options: dict[str, Any] = field(default_factory=dict)
    chunk_size: int = 512
    resume: bool = False
    progress: bool = False

    @property
    def partial(self) -> Path | None:
        return None if self.output is None else self.output.with_name(self.output.name + ".partial")

    @property
    def kind(self) -> str:
        return "jsonl" if self.output is None else FORMATS.get(self.output.suffix.lower(), "jsonl")


def check_output(path: str | Path | None, input: str | Path | None = None) -> Path | None:
    """The output path, checked before any work: a format this job writes (by its suffix; none is JSONL),
    not the input file, not a folder, in a folder that exists and is writable.

    Raises
    ------
    InputError
        Naming the path and what to change.
    """
    if path is None or str(path) == "-":
        return None
    out = Path(path)
    kinds = sorted(k for k in FORMATS if k != ".ndjson")
    if out.suffix and out.suffix.lower() not in FORMATS:
        raise InputError(
            f"output {str(out)!r}: cannot write {out.suffix!r} files; the output is one row per text in "
            f"{', '.join(kinds)} (by the suffix), e.g. {str(out.with_suffix('.jsonl'))!r}"
        )
    if input is not None and out.exists() and Path(input).exists() and out.samefile(input):
        raise InputError(f"output {str(out)!r} is the input file: it would be replaced; give another --output")
    if out.is_dir():
        raise InputError(
            f"output {str(out)!r} is a directory; give a file name such as {str(out / 'predictions.jsonl')!r}"
        )
    parent = out.parent
    if not parent.is_dir():
        raise InputError(f"output folder {str(parent)!r} does not exist; create it first (mkdir -p {parent})")
    if not os.access(parent, os.W_OK):
        raise InputError(f"output folder {str(parent)!r} is not writable; choose another --output")
    return out


def check_model_dir(path: str | Path) -> Path:
    """``finetune --output``: a new or empty folder, or an earlier classifier; checked before training.

    Raises
    ------
    InputError
        Naming the path and what to change.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"--output {out} is a file; finetune writes a folder: give a new folder name")
    if out.is_dir() and any(out.iterdir()) and not (out / "verbalize.json").is_file():
        raise InputError(f"--output {out} is a folder holding other files; give a new or empty folder")
    parent = next(p for p in (out, *out.parents) if p.exists())
    if not (parent.is_dir() and os.access(parent, os.W_OK)):
        raise InputError(f"--output {out}: {parent} is not a writable folder; choose another --output")
    return out


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def sample_texts(source: Source, n: int) -> list[str]:
    """The first ``n`` usable texts of the input (what domain and batch calibration are fitted on)."""
    return [r.text for r in islice((r for r in source.rows() if r.problem is None), n)]


def _key(text: Any) -> Any:
    """A hashable key of a row's text: the str itself, or a dict's (field, value) items."""
    return tuple(text.items()) if isinstance(text, dict) else text


def classify_rows(clf: Any, rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Output rows for input rows: the input's fields plus ``prediction`` and ``probability``, or ``error``.

    Identical texts are scored once. A row that cannot be classified gets ``error`` (with its line number)
    and never takes its neighbours down: if scoring the chunk fails, each text is scored alone.
    """
    by_key = {_key(r.text): r.text for r in rows if r.problem is None}  # a dict row (fields) keys by its items
    unique = list(by_key.values())
    scores: dict[Any, np.ndarray | str] = {}
    if unique:
        try:
            scores = dict(zip(by_key, clf.predict_proba(unique), strict=True))
        except Exception as exc:  # one bad text must not fail the chunk: retry each alone
            # WARNING: the rows' own errors may all read alike; the chunk's cause must show where the CLI logs
            logger.warning(
                "a chunk of %d texts failed (%s: %s); scoring its texts one by one",
                len(unique),
                type(exc).__name__,
                exc,
            )
            scores = {k: _score_one(clf, t) for k, t in by_key.items()}
    classes = [str(c) for c in clf.classes_]
    out = []
    for r in rows:
        row = dict(r.fields)
        got = scores.get(_key(r.text)) if r.problem is None else f"{r.problem}"
        if isinstance(got, np.ndarray):
            best = int(np.argmax(got))
            row["prediction"], row["probability"] = classes[best], round(float(got[best]), 6)
            row.pop("error", None)
        else:
            row.pop("prediction", None), row.pop("probability", None)  # e.g. verbalize's own output read back
            row["error"] = f"{r.unit} {r.line}: {got}" if r.line else str(got)  # line 0: position unknown (Ray)
        out.append(row)
    return out


def _score_one(clf: Any, text: str) -> np.ndarray | str:
    try:
        return np.asarray(clf.predict_proba([text])[0])
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def run(job: Job, clf: Any) -> JobResult:
    """Run ``job`` with the classifier ``clf`` (anything with ``predict_proba`` and ``classes_``).

    Returns a :class:`JobResult`; an interrupt (SIGINT/SIGTERM) ends the job cleanly with
    ``interrupted`` set and every finished chunk kept for ``resume``. Any other error closes the
    partial output and propagates; the finished chunks are kept for ``resume`` as well, and an
    earlier ``output`` is only ever replaced by a finished job.

    Raises
    ------
    InputError
        ``resume`` of a job whose input or options differ, or a partial output in the way without ``resume``.
    """
    with _exclusive(job):
        return _run(job, clf)


def _run(job: Job, clf: Any) -> JobResult:
    start = time.perf_counter()
    state = _open_state(job)
    result = JobResult(rows=state["rows_done"], failed=state["failed"], resumed_from=state["rows_done"])
    fields = list(dict.fromkeys([*job.source.columns, *PREDICTION_FIELDS]))
    sink = open_sink(job.kind, job.partial, sys.stdout, fields, state, job.source.schema())
    bar, guard = None, _SignalGuard()
    try:
        _save_state(job, state)
        bar = _bar(job, state["rows_done"])
        with guard:
            rows = islice(job.source.rows(), state["rows_done"], None) if not state["complete"] else iter(())
            for chunk in _chunks(rows, job.chunk_size):
                out = classify_rows(clf, chunk)
                with guard.critical(), _above_the_bar(bar, job.output is None):
                    sink.write(out)
                    result.rows += len(out)
                    result.failed += sum("error" in r for r in out)
                    state |= sink.position() | {"rows_done": result.rows, "failed": result.failed}
                    _save_state(job, state)
                bar.update(len(out))
            with guard.critical():
                _finish(job, sink, state)
    except Interrupted as stop:
        result.interrupted, result.partial = stop.signum, job.partial
    finally:
        sink.close()  # on every way out (finish closed it already: closing again is harmless)
        if bar is not None:
            bar.close()
    result.seconds = time.perf_counter() - start
    return result


@contextlib.contextmanager
def _exclusive(job: Job) -> Iterator[None]:
    """Hold an exclusive lock on the job's output for the whole run: a second run (``--resume`` or not) on the
    same output is refused while one runs, instead of both writing ``OUTPUT.partial``."""
    if job.output is None:
        yield
        return
    lock = job.output.with_name(f".{job.output.name}.lock")
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            who = handle.read().strip() or "another process"
            raise InputError(
                f"another run is writing {job.output} now ({who}); wait for it to finish or stop it, "
                "then rerun (with --resume to continue what it finished)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                lock.unlink()  # removed while still held: no lock file is left beside the output


def _chunks(rows: Iterator[Row], size: int) -> Iterator[list[Row]]:
    while chunk := list(islice(rows, size)):
        yield chunk


@contextlib.contextmanager
def _above_the_bar(bar: Any, to_stdout: bool) -> Iterator[None]:
    """Rows written to stdout go above the progress bar (stderr: the same terminal): the bar is cleared first and
    drawn again once the rows are flushed, so no row starts on the bar's line."""
    if not to_stdout or bar.disable:
        yield
        return
    bar.clear()
    try:
        yield
        sys.stdout.flush()
    finally:
        bar.refresh()


def _bar(job: Job, done: int) -> Any:
    from tqdm.auto import tqdm

    total = job.source.count() if job.progress else None
    return tqdm(total=total, initial=done, unit="row", disable=not job.progress, file=sys.stderr, dynamic_ncols=True)


def _open_state(job: Job) -> dict[str, Any]:
    """A fresh state, or the interrupted job's state when resuming (checked against this job)."""
    fingerprint = job.options | {
        "input": str(job.source.path.resolve()),
        "input_bytes": job.source.path.stat().st_size,
        "input_sha256": file_digest(job.source.path),
        "chunk_size": job.chunk_size,
        "format": job.kind,
        "state_version": STATE_VERSION,
    }
    fresh = {"fingerprint": fingerprint, "rows_done": 0, "failed": 0, "complete": False}
    partial = job.partial
    if partial is None or not partial.exists():
        return fresh
    if not job.resume:
        raise InputError(
            f"{partial} holds the finished rows of an interrupted run of this output. "
            f"Add --resume to continue it, or delete {partial} to start over"
        )
    if not (partial / "state.json").exists():  # killed before its first state: nothing was done
        shutil.rmtree(partial)
        return fresh
    try:
        state = json.loads((partial / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{partial / 'state.json'} is unreadable ({exc}); delete {partial} to start over") from None
    changed = [
        k
        for k in sorted(fingerprint.keys() | state.get("fingerprint", {}).keys())
        if fingerprint.get(k) != state["fingerprint"].get(k)
    ]
    if changed:
        before = state["fingerprint"]
        shown = "; ".join(f"{k}: {before.get(k)!r} then, {fingerprint.get(k)!r} now" for k in changed)
        flags = " ".join(f"{_FLAGS[k]} {before[k]}" for k in changed if k in _FLAGS and before.get(k) is not None)
        raise InputError(
            f"--resume: {partial} was written by a different run ({shown}), and one output must not mix the two. "
            f"Rerun with the same input file and options{f' ({flags})' if flags else ''} to continue it, or delete "
            f"{partial} and rerun without --resume to start over with the new ones"
        )
    logger.info("resuming %s after %d rows", partial, state["rows_done"])
    return dict(state)


# fingerprint key -> the CLI option that sets it (named in a refused resume's message)
_FLAGS = {
    "dtype": "--dtype",
    "model": "--model",
    "calibration": "--calibration",
    "column": "--column",
    "batch_size": "--batch-size",
    "chunk_size": "--chunk-size",
}


def _save_state(job: Job, state: dict[str, Any]) -> None:
    """Replace state.json atomically (write a sibling, then rename)."""
    if job.partial is None:
        return
    write_text(job.partial / "state.json", json.dumps(state))


def _finish(job: Job, sink: Sink, state: dict[str, Any]) -> None:
    """Mark the job complete, move the result onto the output, drop the partial folder (each step idempotent)."""
    if job.output is None or job.partial is None:
        sink.close()
        return
    _save_state(job, state | {"complete": True})
    sink.finish(job.output)
    shutil.rmtree(job.partial)


class _SignalGuard:
    """Turn SIGINT/SIGTERM into :class:`Interrupted`, deferred while a chunk and its state are written."""

    def __init__(self) -> None:
        self._busy = False
        self._pending: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum: int, frame: Any) -> None:
        if self._busy:
            self._pending = signum
        else:
            raise Interrupted(signum)

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        self._busy = True
        try:
            yield
        finally:
            self._busy = False
        if self._pending is not None:
            raise Interrupted(self._pending)


def field_columns(fields: Sequence[str], given: Sequence[str] | None) -> dict[str, str] | None:
    """Template field -> column: same-named columns, overridden by ``FIELD=COLUMN`` items of ``given``
    (the CLI's ``--field``); None for a template of one field with nothing given.

    Raises
    ------
    InputError
        An item without ``=``, or naming a field the template does not have.
    """
    given = list(given or [])
    pairs = dict(g.split("=", 1) for g in given if "=" in g)
    bad = [g for g in given if "=" not in g] + [f for f in pairs if f not in fields]
    if bad:
        raise InputError(
            f"--field {bad[0]!r}: expected FIELD=COLUMN with FIELD one of the template's fields {list(fields)}"
        )
    if len(fields) == 1 and not pairs:
        return None
    return {f: pairs.get(f, f) for f in fields}
