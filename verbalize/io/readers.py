"""Reading CSV / TSV / JSONL / plain-text / Parquet files row by row (row validation: :mod:`verbalize.rows`).

Files are read as a stream (:class:`Source`), one row per physical line for text and JSONL: lines are
split on ``\\n`` (a ``\\r`` before it is dropped) and on nothing else, so that U+2028, form feed or NEL
inside a text never change the row count. A UTF-8 byte-order mark is accepted. Bytes that are not UTF-8
are kept as surrogate escapes and reported on their row.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verbalize.errors import InputError, did_you_mean
from verbalize.rows import text_problem

TEXT_COLUMNS = ("text", "sentence", "content", "review", "question")
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
SCAN_ROWS = 1000  # JSONL rows read at setup to find the text column
_JSON_UNSAFE = re.compile("[\u2028\u2029\x85\ud800-\udfff]")
csv.field_size_limit(2**31 - 1)


@dataclass
class Row:
    """One input row: ``line`` is where it starts in the file (1-based; the row number for Parquet)."""

    line: int
    text: Any
    fields: dict[str, Any]
    problem: str | None = None
    unit: str = "line"


@dataclass
class Source:
    """An input file opened for streaming: its format, text column and columns (checked at setup).

    Use :func:`open_source` to build one; :meth:`rows` reads it again from the start each call.
    """

    path: Path
    kind: str
    column: str | None
    columns: list[str] = field(default_factory=list)
    field_map: dict[str, str] | None = None  # template field -> column, for a template with several fields

    def rows(self) -> Iterator[Row]:
        """Every row of the file, in order, each with its text (possibly unusable) and problem."""
        reader = {"jsonl": _jsonl_rows, "csv": _csv_rows, "tsv": _csv_rows, "parquet": _parquet_rows}
        for row in reader.get(self.kind, _text_rows)(self):
            if row.problem is None and self.field_map:
                row.text = {f: row.fields.get(c) for f, c in self.field_map.items()}
                bad = [f"{c} {p}" for f, c in self.field_map.items() if (p := text_problem(row.text[f]))]
                row.problem = "; ".join(bad) or None
            elif row.problem is None:
                row.text = row.fields.get(self.column) if self.column else None
                bad1 = text_problem(row.text)
                row.problem = f"{self.column or 'text'} {bad1}" if bad1 else None
            yield row

    def schema(self) -> Any:
        """The Arrow schema of a Parquet input (its column types are kept in Parquet output), else None."""
        if self.kind != "parquet":
            return None
        import pyarrow.parquet as pq

        return pq.ParquetFile(self.path).schema_arrow

    def count(self) -> int:
        """Number of rows (fast: newlines for text/JSONL, metadata for Parquet, a parse for CSV)."""
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            return int(pq.ParquetFile(self.path).metadata.num_rows)
        if self.kind in ("csv", "tsv"):
            return sum(1 for _ in _csv_rows(self))
        n, last = 0, b"\n"
        with self.path.open("rb") as f:
            while block := f.read(1 << 20):
                n += block.count(b"\n")
                last = block[-1:]
        return n + (last != b"\n")


def open_source(path: str | Path, column: str | None = None, fields: Mapping[str, str] | None = None) -> Source:
    """Open ``path`` for streaming and settle its text column, or raise naming the file and the fix.

    ``fields`` maps a template's fields to columns (several fields): each row's text is then a dict
    {field: value}, and every column must exist.

    Raises
    ------
    FileNotFoundError
        The file does not exist (or is a directory).
    InputError
        An unknown ``column`` (the message lists the columns found), no text column, or an unreadable header.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"input file {str(path)!r} not found" + (" (it is a directory)" if path.is_dir() else "")
        )
    kind = FORMATS.get(path.suffix.lower(), "text")
    source = Source(path, kind, None)
    if kind == "text":
        if column not in (None, "text"):
            raise InputError(
                f"{path}: --column {column!r} does not apply to a plain-text file (one text per line); "
                "drop --column, or use a .csv / .tsv / .jsonl / .parquet file"
            )
        source.column, source.columns = "text", ["text"]
        return source
    source.columns = _columns(source)
    if fields:
        missing = {f: c for f, c in fields.items() if c not in source.columns}
        if missing:
            f, c = next(iter(missing.items()))
            raise InputError(
                f"{path}: no column {c!r} for the template's field {{{f}}}; found {source.columns}."
                f"{did_you_mean(c, source.columns)} Fix: add that column, or map one with --field {f}=COLUMN"
            )
        source.field_map, source.column = dict(fields), next(iter(fields.values()))
        return source
    if column is not None:
        if column not in source.columns:
            where = f"in the first {SCAN_ROWS} rows" if kind == "jsonl" else "in the header"
            raise InputError(
                f"{path}: no column {column!r} {where}; found {source.columns}.{did_you_mean(column, source.columns)}"
                " Fix: pass one of those to --column"
            )
        source.column = column
    else:
        source.column = next((c for c in TEXT_COLUMNS if c in source.columns), None)
        if source.column is None and source.columns:
            raise InputError(
                f"{path}: no text column; found columns {source.columns}. Name one with --column, "
                f"or call it one of {TEXT_COLUMNS}"
            )
    return source


def _columns(source: Source) -> list[str]:
    if source.kind == "parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(source.path).schema_arrow.names)
    if source.kind in ("csv", "tsv"):
        with source.path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
            header = next(csv.reader(f, delimiter="\t" if source.kind == "tsv" else ","), [])
        return list(dict.fromkeys(header))
    keys: dict[str, None] = {}
    for n, (_, line) in enumerate(_lines(source.path)):
        if n >= SCAN_ROWS:
            break
        try:
            value = json.loads(line)
        except ValueError:
            continue
        keys.update(dict.fromkeys(value if isinstance(value, dict) else ["text"]))
    return list(keys)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) split on b"\\n" only, "\\r\\n" accepted, BOM dropped, bad bytes kept as escapes."""
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            end = len(raw) - (2 if raw.endswith(b"\r\n") else 1 if raw.endswith(b"\n") else 0)
            start = 3 if n == 1 and raw.startswith(b"\xef\xbb\xbf") else 0
            # decoded from a view, not a sliced copy; neither the bytes nor the str stay in this frame while
            # the caller uses the line (a 200 MB line is held once, by the caller)
            line = [str(memoryview(raw)[start:end], "utf-8", "surrogateescape")]
            del raw
            yield n, line.pop()


def _text_rows(source: Source) -> Iterator[Row]:
    for n, line in _lines(source.path):
        yield Row(n, line, {"text": line})


def _jsonl_rows(source: Source) -> Iterator[Row]:
    for n, line in _lines(source.path):
        if not line or line.isspace():  # (not line.strip(): a copy of a huge line)
            yield Row(n, None, {}, "blank line (expected one JSON object per line)")
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            yield Row(n, None, {}, f"not valid JSON ({getattr(exc, 'msg', exc)})")
            continue
        del line  # the parsed row holds the text; the raw line need not stay while the row is used
        yield Row(n, None, value if isinstance(value, dict) else {"text": value})


def _csv_rows(source: Source) -> Iterator[Row]:
    with source.path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, delimiter="\t" if source.kind == "tsv" else ",")
        header = next(reader, None)
        if header is None:
            return
        start = reader.line_num + 1
        for values in reader:
            row = Row(start, None, dict(zip(header, values, strict=False)))
            if not values:
                row.problem = "blank line"
            elif len(values) != len(header):
                row.problem = f"has {len(values)} fields where the header has {len(header)}"
            start = reader.line_num + 1
            yield row


def _parquet_rows(source: Source) -> Iterator[Row]:
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(source.path).iter_batches(batch_size=1024):
        for fields in batch.to_pylist():
            n += 1
            yield Row(n, None, fields, unit="row")


def dumps_row(row: dict[str, Any]) -> str:
    """One JSON line that any JSON reader, and verbalize's own line splitter, reads back as one row.

    U+2028/U+2029/NEL (line breaks to some readers) and lone surrogates (not encodable in UTF-8) are
    written as ``\\uXXXX`` escapes, which decode to the same string.
    """
    text = json.dumps(row, ensure_ascii=False, default=str)
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


def read_table(path: str | Path, column: str | None = None) -> tuple[list[Any], list[dict[str, Any]]]:
    """Read a whole (small, labeled) file: ``(texts, rows)``, a row's problem in its ``_error`` key."""
    source = open_source(path, column)
    texts, rows = [], []
    for row in source.rows():
        texts.append(row.text)
        rows.append(row.fields | ({"_error": f"line {row.line}: {row.problem}"} if row.problem else {}))
    return texts, rows


def labeled_rows(
    path: str | Path,
    column: str | None,
    label_column: str,
    labels: Sequence[str],
    limit: int | None = None,
    fields: Mapping[str, str] | None = None,
) -> tuple[list[Row], list[str]]:
    """Usable rows of a labeled file, and one message per skipped row (the CLI's per-row policy).

    A row is skipped when its text is unusable (see :func:`text_problem`) or its ``label_column`` value is
    not one of ``labels``; ``limit`` stops after that many rows, usable or not. ``fields`` maps a template's
    fields to columns, as in :func:`open_source`.

    Raises
    ------
    FileNotFoundError, InputError
        From :func:`open_source`.
    """
    source = open_source(path, column, fields)
    good: list[Row] = []
    problems: list[str] = []
    for row in source.rows():
        if limit is not None and row.line > 0 and len(good) + len(problems) >= limit:
            break
        label = row.fields.get(label_column)
        problem = row.problem
        if problem is None and label not in labels:
            problem = f"{label_column} {label!r} is not one of the template's labels {list(labels)}"
        if problem:
            problems.append(f"{row.unit} {row.line}: {problem}")
        else:
            good.append(row)
    return good, problems
