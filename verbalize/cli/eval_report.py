"""``verbalize eval --report FILE.html``: keep each row's probabilities while ``eval`` classifies, then write
:mod:`verbalize.report`'s self-contained page (atomically)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from verbalize.errors import InputError

SUFFIXES = (".html", ".htm")


def check_report_path(path: str, data: str) -> Path:
    """The report's path, refused before any work when it cannot be an HTML file to write."""
    out = Path(path)
    if out.suffix.lower() not in SUFFIXES:
        raise InputError(f"--report {path}: the report is an HTML page; name it with .html, e.g. --report report.html")
    if out.is_dir():
        raise InputError(f"--report {path}: is a directory; give a file name such as {out / 'report.html'}")
    if out.resolve() == Path(data).resolve():
        raise InputError(f"--report {path}: is the input file; choose another name")
    return out


def _key(text: Any) -> Hashable:
    return tuple(sorted(text.items())) if isinstance(text, Mapping) else text


class ProbaRecorder:
    """A classifier as ``classify_rows`` sees it (``classes_``, ``predict_proba``), keeping each text's
    probabilities."""

    def __init__(self, clf: Any):
        self.clf = clf
        self.classes_ = clf.classes_
        self.seen: dict[Hashable, np.ndarray] = {}

    def predict_proba(self, texts: Sequence[Any]) -> np.ndarray:
        proba = self.clf.predict_proba(texts)
        for text, p in zip(texts, proba, strict=True):
            self.seen[_key(text)] = np.asarray(p)
        return proba

    def proba_of(self, text: Any) -> np.ndarray:
        """The probabilities recorded for ``text`` (a str, or a mapping of fields)."""
        return self.seen[_key(text)]


def write_eval_report(
    path: Path, y: Sequence[str], proba: Sequence[np.ndarray], texts: Sequence[Any], classes: Sequence[str], what: str
) -> Path:
    """Summarize the rows and write the HTML report; returns its path."""
    from verbalize.report import summarize, write_report

    summary = summarize(y, np.vstack(proba), classes, texts)
    return write_report(path, summary, title="verbalize eval", subtitle=what)
