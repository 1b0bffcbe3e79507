"""``--threads N``: torch's CPU threads for the commands that run the model, and their default on a busy machine.

torch starts one thread per physical core whatever else runs there; on a machine already busy, its threads
wait on each other: ``predict`` ran 3.5 rows/s with torch's default on two loaded cores, 12 rows/s with one
thread (issue 21's report). The default here is the CPUs this process may use (its affinity) less the work
already running on them (the 1-minute load average), at least one.
"""

from __future__ import annotations

import argparse
import logging
import os

logger = logging.getLogger(__name__)

HELP = (
    "torch CPU threads (default: the CPUs this process may use, less the 1-minute load average, at least 1: "
    "{default} now; at most {cpus})"
)


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; the CPU count where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and others without affinity
        return os.cpu_count() or 1


def default_threads() -> int:
    """The CPUs this process may use less the 1-minute load average (rounded), at least 1."""
    cpus = available_cpus()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average (Windows): all the CPUs
        return cpus
    return max(1, min(cpus, round(cpus - load)))


def threads_value(value: str) -> int:
    """``--threads``: an integer from 1 to the CPUs this process may use."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value!r}") from None
    cpus = available_cpus()
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    if n > cpus:
        raise argparse.ArgumentTypeError(
            f"{n} threads, but this process may use {cpus} CPU{'s' if cpus > 1 else ''} (os.sched_getaffinity); "
            f"more threads than CPUs only wait on each other: use --threads {cpus} or fewer"
        )
    return n


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--threads N`` (default: :func:`default_threads`, computed when the command runs)."""
    parser.add_argument(
        "--threads",
        type=threads_value,
        default=None,
        metavar="N",
        help=HELP.format(default=default_threads(), cpus=available_cpus()),
    )


def set_threads(threads: int | None) -> int:
    """Set torch's CPU threads to ``threads`` (None: :func:`default_threads`); returns the number set."""
    import torch

    n = default_threads() if threads is None else threads
    torch.set_num_threads(n)
    logger.info("torch CPU threads: %d", n)
    return n
