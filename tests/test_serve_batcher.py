"""The micro-batcher's timing rule, with the model replaced by a fixed delay (no server, no model).

Clients that wait for their answer before sending again (the common case: one request at a time
per client) must end up in one batch even when they arrived at different moments: the batch after
a busy one waits for the clients it answered to come back.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest

pytest.importorskip("prometheus_client")

from verbalize.serve.batcher import MicroBatcher  # noqa: E402
from verbalize.serve.metrics import Metrics  # noqa: E402

MODEL_SECONDS = 0.08


def closed_loop(
    batcher: MicroBatcher, clients: int, requests_each: int, stagger: float, waits: list[float] | None = None
) -> list[int]:
    """Texts per batch while ``clients`` send one text at a time, starting ``stagger`` seconds apart
    (``waits``: filled with how long each batch's oldest request waited for the model)."""
    sizes: list[int] = []

    def fake_run(jobs: list[Any], out: list[Any]) -> None:  # the model: a fixed time per batch
        sizes.append(sum(len(j.texts) for j in jobs))
        if waits is not None:
            waits.append(time.perf_counter() - min(j.enqueued for j in jobs))
        time.sleep(MODEL_SECONDS)
        out.extend((job, np.zeros((len(job.texts), 2)), None) for job in jobs)

    batcher._run = fake_run  # type: ignore[method-assign]

    async def client(i: int) -> None:
        await asyncio.sleep(i * stagger)
        for _ in range(requests_each):
            out = await asyncio.wait_for(batcher.submit(None, "t", ["a text"]), 10)
            assert out.shape == (1, 2)

    async def main() -> None:
        await asyncio.gather(*(client(i) for i in range(clients)))

    batcher.start()
    try:
        asyncio.run(main())
    finally:
        batcher.stop()
    return sizes


def test_staggered_clients_merge_into_full_batches() -> None:
    sizes = closed_loop(MicroBatcher(Metrics(), window_s=0.005), clients=8, requests_each=12, stagger=0.03)
    assert sum(sizes) == 8 * 12
    # Arrivals 30 ms apart fill the first batches unevenly (and clients that started late finish
    # late); once every client has arrived, the batch after each answer waits for the answered
    # clients: the middle batches hold all eight (counted from the oldest request alone, the clients
    # split into two cohorts of four that alternate for the whole run).
    middle = sizes[len(sizes) // 3 : 2 * len(sizes) // 3]
    assert middle and set(middle) == {8}, sizes


def test_a_lone_client_is_not_held_back() -> None:
    """One client: each request waits about one window, not the four kept for answered clients' return."""
    window, waits = 0.2, []
    sizes = closed_loop(MicroBatcher(Metrics(), window_s=window), clients=1, requests_each=5, stagger=0.0, waits=waits)
    assert sizes == [1] * 5
    assert all(w < 2.5 * window for w in waits), waits  # four windows would be 0.8 s
