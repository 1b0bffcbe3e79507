"""Option values shared by the commands (kept free of torch: the parsers are built before any command runs)."""

from __future__ import annotations

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16", "int8")
"""``--dtype``: ``auto`` (measured, see :mod:`verbalize.engine.formats`) or a format of
:data:`verbalize.engine.models.DTYPES`."""
