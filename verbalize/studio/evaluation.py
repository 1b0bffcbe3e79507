"""Evaluate a template text on a labeled sample in the background: one job at a time, cancelled by the
next edit, cached per template version, so going back to an earlier text answers at once.

A job classifies the first ``size`` rows of a labeled file exactly as ``verbalize eval --limit size`` does
(the same reader, the same rows, the same estimator): first without calibration (its numbers come first,
with progress), then with each calibrator and ``auto``, each fitted as ``eval --calibration`` fits it
(``fit(X, y)`` on the evaluated rows). Each calibration's numbers are :func:`verbalize.report.summarize`'s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from verbalize.calibration.calibrators import calibration_choices
from verbalize.estimator import Verbalizer
from verbalize.io.jobs import field_columns
from verbalize.io.readers import labeled_rows
from verbalize.prompting.prompts import per_prefix
from verbalize.prompting.template import Template, loads_template
from verbalize.report import label_distribution, summarize, svg_confusion, svg_reliability
from verbalize.studio.files import version_of

logger = logging.getLogger(__name__)

WORDS_SHARE = 0.8  # of the progress bar: scoring the words; the calibrations take the rest
PROGRESS_CHUNK = 64  # rows scored between progress updates and cancellation checks (the default batch size)
CACHE_SIZE = 64  # finished jobs kept


class Cancelled(Exception):
    """The job was cancelled by a newer edit."""


@dataclass(frozen=True)
class LabeledData:
    """A labeled file and how its columns map (as ``eval``'s ``--column``, ``--label-column``, ``--field``)."""

    path: Path
    column: str | None = None
    label_column: str = "label"
    fields: tuple[str, ...] = ()

    def rows(self, template: Template, size: int) -> tuple[list[Any], list[str], list[str]]:
        """The first ``size`` rows' texts and labels, and one message per skipped row (``eval --limit``'s rows)."""
        fmap = field_columns(template.fields, list(self.fields))
        rows, problems = labeled_rows(self.path, self.column, self.label_column, list(template.labels), size, fmap)
        return [r.text for r in rows], [r.fields[self.label_column] for r in rows], problems


@dataclass
class Job:
    """One evaluation: its state is read by the page while the worker fills it."""

    id: str
    version: str
    data: str
    size: int
    status: str = "queued"  # queued, running, done, cancelled, failed
    progress: float = 0.0
    step: str = ""
    error: str | None = None
    seconds: float | None = None
    results: dict[str, Any] = field(default_factory=dict)  # calibration name ("none", ...) -> summary
    skipped: list[str] = field(default_factory=list)
    texts: list[Any] = field(default_factory=list, repr=False)
    y: list[str] = field(default_factory=list, repr=False)
    words: list[dict[str, Any]] = field(default_factory=list)  # each label word's share of its label's score
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def view(self, have: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
        """What the page is sent; ``have``: calibrations whose numbers it holds already (left out of ``results``)."""
        keys = ("id", "version", "data", "size", "status", "progress", "step", "error", "seconds", "words")
        results = {k: v for k, v in self.results.items() if k not in have}
        out = {k: getattr(self, k) for k in keys} | {"results": results, "ready": list(self.results)}
        return out | {"skipped": self.skipped[:20], "n_skipped": len(self.skipped)}


def calibration_names() -> list[str]:
    """Every calibration the studio evaluates: "none" first, then each registered calibrator (auto included)."""
    return ["none" if c is None else str(c) for c in calibration_choices()]


class Evaluator:
    """Runs evaluation jobs one at a time on one shared scorer, keeping finished ones per version."""

    def __init__(self, scorer: Any, data: dict[str, LabeledData], calibrations: Sequence[str] | None = None):
        self.scorer = scorer
        self.data = data
        self.calibrations = list(calibrations or calibration_names())
        self.jobs: dict[str, Job] = {}
        self.current: Job | None = None
        self._lock = threading.Lock()
        self.model_lock = threading.Lock()  # one job (or suggestion) uses the model at a time
        self._threads: list[threading.Thread] = []

    def start(self, text: str, name: str, data: str, size: int) -> Job:
        """The job for this text, data and size: the cached one, or a new one started in the background.

        Any other running job is cancelled. Raises TemplateError (invalid text) or KeyError (unknown data).
        """
        template = loads_template(text, name)
        if data not in self.data:
            raise KeyError(f"labeled file {data!r} is not one of the studio's: {', '.join(self.data) or 'none given'}")
        job_id = f"{version_of(text)}-{data}-{size}"
        with self._lock:
            job = self.jobs.get(job_id)
            if self.current is not None and self.current is not job and self.current.status in ("queued", "running"):
                self.current.cancel.set()
            if job is not None and job.status in ("queued", "running", "done"):
                self.current = job
                return job
            job = Job(job_id, version_of(text), data, size)
            self.jobs[job_id] = self.current = job
            self._trim()
        thread = threading.Thread(target=self._run, args=(job, template), daemon=True, name=f"studio-{job_id}")
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        return job

    def close(self, timeout: float = 300.0) -> None:
        """Cancel every job and wait for the workers (a worker still in torch at interpreter exit aborts it)."""
        with self._lock:
            for job in self.jobs.values():
                job.cancel.set()
        end = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(end - time.monotonic(), 0))

    def _trim(self) -> None:
        done = [k for k, j in self.jobs.items() if j.status not in ("queued", "running")]
        for k in done[: max(len(done) - CACHE_SIZE, 0)]:
            del self.jobs[k]

    def _run(self, job: Job, template: Template) -> None:
        with self.model_lock:
            started = time.perf_counter()
            try:
                if job.cancel.is_set():
                    raise Cancelled
                job.status = "running"
                self._evaluate(job, template)
                job.status, job.progress = "done", 1.0
            except Cancelled:
                job.status = "cancelled"
            except Exception as exc:  # shown on the page, never a dead worker
                logger.warning("studio evaluation %s failed: %s: %s", job.id, type(exc).__name__, exc)
                job.status, job.error = "failed", f"{type(exc).__name__}: {exc}"
            job.seconds = time.perf_counter() - started
            with self._lock:
                if job.status == "cancelled" and self.jobs.get(job.id) is job:
                    del self.jobs[job.id]  # a later request starts it afresh

    def _evaluate(self, job: Job, template: Template) -> None:
        texts, y, job.skipped = self.data[job.data].rows(template, job.size)
        job.texts, job.y = texts, y
        if not texts:
            raise ValueError(f"no usable labeled rows in {job.data} for this template's labels {list(template.labels)}")
        classes = list(template.labels)
        words, shares = self._words(template, texts, job)  # scored once: every calibration reuses them
        job.words = shares
        steps = len(self.calibrations)
        for i, name in enumerate(self.calibrations):
            if job.cancel.is_set():
                raise Cancelled
            job.step = f"calibration {name}"
            calibration = None if name == "none" else name
            # random_state=0: `verbalize eval`'s default --seed, so auto's folds and domain words are eval's
            clf = Verbalizer(template=template, model=self.scorer, calibration=calibration, random_state=0)
            if name != "none":  # fitted as `verbalize eval --calibration` fits it: fit(X, y) on the evaluated rows
                clf.fit(texts, y)
            proba = clf.calibrate_words(words, texts)  # equals clf.predict_proba(texts) (see Verbalizer.build_prompts)
            summary = summarize(y, proba, classes, texts)
            summary["svg"] = {"confusion": svg_confusion(summary), "reliability": svg_reliability(summary)}
            report = getattr(clf, "calibration_report_", None)  # None without a calibration that reports
            summary["label_distribution"] = label_distribution(classes, y, summary["predictions"], report)
            job.results = job.results | {name: summary}
            job.progress = WORDS_SHARE + (1 - WORDS_SHARE) * (i + 1) / steps

    def _words(self, template: Template, texts: list[Any], job: Job) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Each label word's log-probability after each text's prompt (n, n_words), scored in chunks (progress and
        cancellation between them), and each word's share of its label's probability (mean over the rows)."""
        clf = Verbalizer(template=template, model=self.scorer)
        job.step = "scoring the label words"
        parts = []
        for start in range(0, len(texts), PROGRESS_CHUNK):
            if job.cancel.is_set():
                raise Cancelled
            p = clf.build_prompts(texts[start : start + PROGRESS_CHUNK])
            [words] = per_prefix(p, lambda x, s, pre: [clf.scorer_.score_words(x, clf.label_tokens_, s, pre)])
            parts.append(words)  # (chunk, n_words)
            job.progress = WORDS_SHARE * min(start + PROGRESS_CHUNK, len(texts)) / len(texts)
        words = np.vstack(parts)
        return words, word_shares(words, clf.label_tokens_)

    def compare(self, a: str, b: str, calibration: str = "none") -> dict[str, Any]:
        """Two finished jobs side by side: each one's numbers and the rows whose predicted label differs."""
        ja, jb = self._done(a), self._done(b)
        if (ja.data, ja.size) != (jb.data, jb.size):
            raise ValueError("the two evaluations are on different samples; evaluate both on the same data and size")
        ra, rb = ja.results[calibration], jb.results[calibration]
        changed = [
            {"row": i, "text": ja.texts[i], "label": ja.y[i], "a": pa, "b": pb}
            for i, (pa, pb) in enumerate(zip(ra["predictions"], rb["predictions"], strict=True))
            if pa != pb
        ]
        return {"a": _headline(ra), "b": _headline(rb), "changed": changed, "calibration": calibration}

    def _done(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None or job.status != "done":
            raise KeyError(f"evaluation {job_id!r} is not finished; evaluate both versions first")
        return job


def word_shares(words: np.ndarray, tokens: Any) -> list[dict[str, Any]]:
    """Which words carry each label's score: a word's share of its label's probability (the label's score is the
    log of the sum of its words' probabilities), averaged over the rows."""
    out = []
    for li, label in enumerate(tokens.labels):
        cols = [j for j, owner in enumerate(tokens.word_label) if owner == li]
        w = words[:, cols]  # (n, words of this label)
        share = np.exp(w - np.logaddexp.reduce(w, axis=1, keepdims=True)).mean(axis=0)
        out += [{"label": label, "word": tokens.words[j], "share": float(v)} for j, v in zip(cols, share, strict=True)]
    return out


def _headline(s: dict[str, Any]) -> dict[str, Any]:
    keys = ("n", "accuracy", "accuracy_ci", "macro_f1", "macro_f1_ci", "ece", "confusion", "classes")
    return {k: s[k] for k in keys}
