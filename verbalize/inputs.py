"""User input: validating texts and labels, reading and writing CSV / JSONL / plain-text files.

Policy for empty text: a text that is empty or whitespace-only is rejected (there is nothing to
classify). The Python API raises one error listing every bad position; the CLI writes such rows
with an ``error`` column and still classifies all the others.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence, Set
from pathlib import Path
from typing import Any

from .errors import InputError

TEXT_COLUMNS = ("text", "sentence", "content", "review", "question")


def text_problem(x: Any) -> str | None:
    """Why ``x`` cannot be classified, or None when it is a usable text."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "is missing (None/NaN)"
    if not isinstance(x, str):
        return f"is a {type(x).__name__}, not a str"
    if not x.strip():
        return "is empty or whitespace-only"
    return None


def check_texts(X: Any, name: str = "X") -> list[str]:
    """Return ``X`` as a list of str, or raise one error that lists every bad item.

    Raises
    ------
    TypeError
        For a bare string, a non-sequence, a 2-D array, or items that are not strings.
    InputError
        For empty or whitespace-only texts.
    """
    if isinstance(X, str | bytes):
        raise TypeError(f"{name} must be a list of texts, got a single {type(X).__name__}; wrap it in a list: [text]")
    if isinstance(X, Set | Mapping):
        raise TypeError(
            f"{name} must be an ordered sequence of texts (list, tuple, array), got a {type(X).__name__}: its "
            "order is not the order of the predictions. Pass list(...) of the texts in the order you want"
        )
    if hasattr(X, "ndim") and X.ndim != 1:
        raise TypeError(f"{name} must be 1-D (one text per row), got an array of shape {X.shape}")
    if hasattr(X, "tolist"):
        X = X.tolist()
    if not isinstance(X, Sequence):
        try:
            X = list(X)
        except TypeError:
            raise TypeError(f"{name} must be a sequence of str, got {type(X).__name__}") from None
    X = list(X)
    bad = [(i, p) for i, x in enumerate(X) if (p := text_problem(x))]
    if bad:
        shown = "; ".join(f"{name}[{i}] {p}" for i, p in bad[:5]) + (
            f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        )
        fix = "drop those rows or replace them with text (the CLI skips them and reports each)"
        cls = InputError if all(p.startswith("is empty") for _, p in bad) else TypeError
        raise cls(f"{len(bad)} of {len(X)} texts cannot be classified: {shown}. Fix: {fix}")
    return X


def check_labels(y: Any, labels: Sequence[str]) -> list[str]:
    """Return ``y`` as a list of label names, or raise listing unknown values and the template's labels."""
    if isinstance(y, str):
        raise TypeError("y must be a list of labels, got a single str; wrap it in a list")
    ys = list(y.tolist() if hasattr(y, "tolist") else y)
    unknown = sorted({repr(v) for v in ys if v not in labels})
    if unknown:
        raise InputError(
            f"y has labels that the template does not define: {', '.join(unknown[:10])}. "
            f"The template's labels are {list(labels)}; map y to them or add them under [labels]"
        )
    return ys


def read_table(path: str | Path, column: str | None = None) -> tuple[list[Any], list[dict[str, Any]]]:
    """Read texts from .csv, .tsv, .jsonl or plain text (one text per line).

    Returns ``(texts, rows)``: the text of each row (possibly unusable, to be reported per row)
    and the full rows, which are written back with the predictions.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file {str(path)!r} not found")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                row = {"_error": f"line {n}: not valid JSON ({exc.msg})"}
            rows.append(row if isinstance(row, dict) else {"text": row})
    elif suffix in (".csv", ".tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    else:
        rows = [{"text": line} for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        return [], []
    keys = [k for r in rows for k in r]
    col = column or next((c for c in TEXT_COLUMNS if c in keys), None)
    if col is None:
        raise InputError(
            f"{path}: no text column; found columns {sorted(set(keys))}. Name one with --column, "
            f"or call it one of {TEXT_COLUMNS}"
        )
    return [r.get(col) for r in rows], rows


def write_table(path: str | Path | None, rows: list[dict[str, Any]]) -> str:
    """Write rows as .jsonl/.csv/.tsv by the file's suffix; with no path return JSONL text."""
    if path is None or Path(path).suffix.lower() not in (".csv", ".tsv"):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with Path(path).open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, delimiter="\t" if str(path).endswith(".tsv") else ",")
        writer.writeheader()
        writer.writerows(rows)
    return ""
