"""Dynamic micro-batching: requests from many clients, scored together in one model worker thread.

The event loop only enqueues work and awaits a future; one worker thread runs the model (torch
releases the GIL in its kernels, so the loop keeps answering while the model runs). The worker
waits at most ``window_s`` after the later of the oldest queued request and the previous batch's
answers (a little longer for the clients it answered to come back), or until ``max_batch_tokens``
fill, then scores every queued request in as few ``Scorer.score_words`` calls as the requests
allow: one per (model, template start, prefix), across clients and across templates. A request
whose client has gone is skipped; a failure is delivered to the requests it concerns only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from verbalize.prompting.prompts import Prompts, per_prefix
from verbalize.serve.adapter import Plan, merge_label_tokens, n_words, scoring_plan
from verbalize.serve.metrics import Metrics

logger = logging.getLogger(__name__)

RETURN_WINDOWS = 4
"""After a batch, windows to wait for as many texts as it answered to be queued again, at most..."""
RETURN_SHARE = 0.05
"""... or this share of the batch's own time, if longer (the wait costs at most that share of throughput)."""


TRIM_TOKENS = 1024
"""After a batch with a text of more estimated tokens than this, unused heap goes back to the OS (RSS stays
near idle: a long prompt's attention leaves large freed blocks). Not after batches of short texts: their
memory is reused by the next batch, and giving it back made every next forward fault its pages in again
(32 closed-loop clients of one short text each: 53-55 texts/s with a trim after every batch, 60-61 without)."""


def trim_heap() -> None:
    """Hand glibc's unused heap back to the OS (a no-op elsewhere: macOS, musl)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Overloaded(Exception):
    """The queue is full (or the batcher is stopping); ``retry_after`` is a hint in seconds."""

    def __init__(self, message: str, retry_after: int, stopping: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.stopping = stopping


@dataclass
class Job:
    """One request's rows for one served template version, and where its answer goes.

    ``texts`` holds the rows: str for a one-field template, dicts {field: text} for several fields.
    """

    clf: Any
    template: str
    texts: list[Any]
    future: asyncio.Future[np.ndarray]
    loop: asyncio.AbstractEventLoop
    tokens: int
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def longest(self) -> int:
        """The estimated tokens of its longest text."""
        return max((estimate_tokens([row]) for row in self.texts), default=0)


Outcome = tuple[Job, "np.ndarray | None", "BaseException | None"]
"""A job and its result or its error, handed to the job's event loop by :func:`_deliver`."""


def estimate_tokens(rows: list[Any]) -> int:
    """A cheap upper-side token estimate for the batch budget (UTF-8 bytes / 3, plus template words)."""
    values = (v for row in rows for v in (row.values() if isinstance(row, dict) else (row,)))
    return sum(len(v.encode("utf-8")) // 3 for v in values) + 16 * len(rows)


class MicroBatcher:
    """Collects requests and scores them together in one worker thread.

    Parameters
    ----------
    metrics : Metrics
    window_s : float, default 0.005
        Wait after the oldest queued request before its batch is scored. After a batch, the next one
        also waits ``window_s`` after its answers went out, and up to ``RETURN_WINDOWS`` windows
        (or ``RETURN_SHARE`` of the batch's own time, if longer: at most that share of throughput)
        for as many texts as it answered to come back (clients that were answered send their next
        request at once, and join the requests that queued while the model ran; without this, a
        busy server splits its clients into cohorts that alternate in half-size batches).
    max_batch_tokens : int, default 8192
        Estimated tokens (see :func:`estimate_tokens`) that close a batch before the window ends.
    max_queue_texts : int, default 4096
        Texts waiting at most; beyond it :meth:`submit` raises :class:`Overloaded` (HTTP 429).
    """

    def __init__(
        self, metrics: Metrics, window_s: float = 0.005, max_batch_tokens: int = 8192, max_queue_texts: int = 4096
    ):
        self.metrics = metrics
        self.window_s = window_s
        self.max_batch_tokens = max_batch_tokens
        self.max_queue_texts = max_queue_texts
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._queued_texts = 0
        self._queued_tokens = 0
        self._exclusive_waiting = 0  # reloads waiting for the model: the worker takes no new batch
        self._stopping = False
        self._model_lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="verbalize-model", daemon=True)
        self._rate = 50.0  # texts/s, refreshed after every batch (for Retry-After)
        self._answered = 0.0  # perf_counter() when the previous batch's answers were handed over
        self._expected = 0  # queued texts that would mean the previous batch's clients are back
        self._last_seconds = 0.0  # the previous batch's model time

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new work, finish everything queued, and join the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the model between batches (template reloads warm up on the same model and tokenizer).

        A waiting holder goes first: the worker finishes its batch and takes no new one until the
        holder is done, so a reload is never starved by a saturated queue.
        """
        with self._cond:
            self._exclusive_waiting += 1
        try:
            with self._model_lock:
                yield
        finally:
            with self._cond:
                self._exclusive_waiting -= 1
                self._cond.notify_all()

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    @property
    def rate(self) -> float:
        """Texts scored per second, a moving average over recent batches (for Retry-After hints)."""
        return self._rate

    async def submit(self, clf: Any, template: str, texts: list[Any]) -> np.ndarray:
        """Queue ``texts`` (rows) for ``clf`` and wait for their probabilities (n, n_classes).

        Raises
        ------
        Overloaded
            When the queue holds ``max_queue_texts`` already, or the service is stopping.
        """
        loop = asyncio.get_running_loop()
        job = Job(clf, template, texts, loop.create_future(), loop, estimate_tokens(texts))
        with self._cond:
            if self._stopping:
                raise Overloaded("the service is shutting down", retry_after=5, stopping=True)
            if self._queued_texts + len(texts) > self.max_queue_texts:
                wait = max(1, round(self._queued_texts / max(self._rate, 1.0)))
                raise Overloaded(
                    f"queue full: {self._queued_texts} texts waiting (limit {self.max_queue_texts}); "
                    f"retry after {wait} s",
                    retry_after=wait,
                )
            self._queue.append(job)
            self._queued_texts += len(texts)
            self._queued_tokens += job.tokens
            self.metrics.queue_depth.set(self._queued_texts)
            self._cond.notify()
        return await job.future

    # -- worker thread -------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            self._batch(jobs)
            # Hold nothing of this batch while waiting for the next one: its jobs reference the classifier
            # version they were queued for, which a hot reload may have replaced (its model must be freed).
            del jobs

    def _batch(self, jobs: list[Job]) -> None:
        """Score one batch, then hand every job its answer or its error."""
        start = time.perf_counter()
        n = sum(len(j.texts) for j in jobs)
        out: list[Outcome] = []
        with self._model_lock:
            try:
                self._run(jobs, out)
            except Exception as exc:  # never let the worker die: fail this batch's requests only
                logger.exception("batch of %d requests failed", len(jobs))
                for job in jobs:  # a job answered already keeps its answer (the first one settles)
                    out.append((job, None, exc))
        with self._cond:  # before any answer goes out: none of its clients can be back yet
            self._answered = time.perf_counter()
            self._expected = self._queued_texts + n
            seconds = self._last_seconds = self._answered - start
        for job, result, error in out:
            _deliver(job, result, error)
        self._rate = 0.8 * self._rate + 0.2 * (n / max(seconds, 1e-6))
        self.metrics.batch_seconds.observe(seconds)
        if max(j.longest for j in jobs) > TRIM_TOKENS:  # a long prompt left large freed blocks: give them back
            trim_heap()

    def _take(self) -> list[Job] | None:
        """Wait for a batch (see ``window_s``) or a full token budget; None when stopped."""
        with self._cond:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait(0.5)
            deadline = max(self._queue[0].enqueued, self._answered) + self.window_s
            returns = self._answered + max(RETURN_WINDOWS * self.window_s, RETURN_SHARE * self._last_seconds)
            while not self._stopping and self._queued_tokens < self.max_batch_tokens:
                until = deadline if self._queued_texts >= self._expected else max(deadline, returns)
                left = until - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._expected = 0
            while self._exclusive_waiting:  # a reload is waiting for the model: let it go first
                self._cond.wait(0.1)
            jobs: list[Job] = []
            tokens = 0
            while self._queue and (not jobs or tokens + self._queue[0].tokens <= self.max_batch_tokens):
                job = self._queue.popleft()
                jobs.append(job)
                tokens += job.tokens
                self._queued_texts -= len(job.texts)
                self._queued_tokens -= job.tokens
            self.metrics.queue_depth.set(self._queued_texts)
        return jobs

    def _run(self, jobs: list[Job], out: list[Outcome]) -> None:
        """Score ``jobs``, putting each one's result or error in ``out`` (delivered by the caller)."""
        live = [j for j in jobs if not j.future.done()]  # a client that went away cancelled its future
        if len(live) < len(jobs):
            self.metrics.abandoned.inc(len(jobs) - len(live))
        groups: dict[Any, list[tuple[Job, Plan]]] = defaultdict(list)
        for job in live:
            try:
                plan = scoring_plan(job.clf, job.texts)
            except Exception as exc:
                out.append((job, None, exc))
                continue
            groups[plan.key if plan.key is not None else ("alone", id(job))].append((job, plan))
        self.metrics.batch_requests.observe(len(live))
        for members in groups.values():
            self.metrics.batch_texts.observe(sum(len(j.texts) for j, _ in members))
            try:
                if members[0][1].key is None:
                    job = members[0][0]
                    out.append((job, np.asarray(job.clf.predict_proba(job.texts)), None))
                    continue
                for (job, _), proba in zip(members, score_together([p for _, p in members]), strict=True):
                    out.append((job, proba, None))
            except Exception as exc:
                logger.exception("scoring %d requests failed", len(members))
                for job, _ in members:
                    out.append((job, None, exc))


def score_together(plans: list[Plan]) -> list[np.ndarray]:
    """Probabilities for each plan, from one ``score_words`` call over all their prompts.

    All plans share a key: the same model, settings and template start. Their prompts go through
    one call per distinct prefix (usually one: the same instruction and demonstrations).
    """
    tokens, offsets = merge_label_tokens(plans)
    prompts = [p for plan in plans for p in plan.prompts]
    spans = [s for plan in plans for s in plan.spans]
    prefixes = [x for plan in plans for x in plan.prefixes]
    scorer = plans[0].scorer
    [words] = per_prefix(  # (n_all, n_merged_words)
        Prompts(prompts, spans, prefixes), lambda x, s, prefix: [scorer.score_words(x, tokens, s, prefix)]
    )
    out, row = [], 0
    for plan, col in zip(plans, offsets, strict=True):
        n = len(plan.prompts)
        out.append(plan.finish(words[row : row + n, col : col + n_words(plan)]))  # (n, n_words of plan)
        row += n
    return out


def _deliver(job: Job, result: np.ndarray | None, exc: BaseException | None) -> None:
    """Hand a result to the job's event loop (the future belongs to the loop's thread)."""

    def settle() -> None:
        if job.future.done():  # cancelled: the client disconnected
            return
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)  # type: ignore[arg-type]

    with contextlib.suppress(RuntimeError):  # the loop has closed (shutdown): nobody is waiting
        job.loop.call_soon_threadsafe(settle)
