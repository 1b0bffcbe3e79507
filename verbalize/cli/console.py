"""What the ``verbalize`` command prints on stderr besides its own output: one line per warning, and no noise
from optional extras it does not use. Set up by :func:`verbalize.cli.main.main` only; the library installs
no hook and configures no logging (house rule 15).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator
from typing import Any


class OneLineFormatter(logging.Formatter):
    """``warning: <message>`` (the level in lower case, as the CLI's ``error: ...`` lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return f"{record.levelname.lower()}: {record.message}"


def _one_line(
    message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
) -> str:
    """``warnings.formatwarning`` for the terminal: the message alone, without the file, line number and source."""
    return f"warning: {message}\n"


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """Show Python warnings as ``warning: <message>`` while the block runs.

    Only the format changes (``warnings.formatwarning``): where warnings go, and whether they are recorded
    (``warnings.catch_warnings(record=True)``, ``pytest.warns``), stays as it was.
    """
    before: Any = warnings.formatwarning
    warnings.formatwarning = _one_line
    try:
        yield
    finally:
        warnings.formatwarning = before


def configure_logging() -> None:
    """Log records at WARNING and above to stderr as ``warning: <message>`` (a no-op when logging is set up)."""
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter())
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(handler)
        root.setLevel(logging.WARNING)


def hide_unused_torchao() -> None:
    """Keep transformers from importing torchao, which the command does not use through it.

    transformers imports torchao with its model code whenever torchao is installed (the ``int8`` extra), to
    load checkpoints quantized by torchao, which the CLI never loads; the import printed two torch
    ``_pytree`` deprecation warnings on every command and, without CUDA, lines about GPU kernels it could not
    load. transformers caches its answer to "is torchao installed?": it is asked once here with torchao
    hidden, then torchao is importable again, for :func:`verbalize.engine.models.quantize` (int8 off CPU,
    the one use of torchao). Nothing changes when torchao is imported already.
    """
    if "torchao" in sys.modules:
        return
    sys.modules["torchao"] = None  # type: ignore[assignment]  # importlib.util.find_spec answers None
    try:
        from transformers.utils import import_utils

        import_utils.is_torchao_available()
    except (ImportError, AttributeError):  # another transformers: no harm, the import just stays as it was
        pass
    finally:
        if sys.modules.get("torchao", 0) is None:
            del sys.modules["torchao"]
