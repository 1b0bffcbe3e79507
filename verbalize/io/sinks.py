"""Where a job's output rows go: JSONL / CSV / TSV appended to one file, Parquet as one part per chunk.

A sink writes into the job's partial folder and reports its ``position`` (a byte offset, or a count of
parts) after each chunk; the job stores that position in its state, so that a resumed sink first cuts
away whatever a killed process wrote past it. ``finish`` moves the complete result onto the output path
with a rename, and is safe to call again after a crash in the middle of it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

from verbalize.atomic import atomic_path
from verbalize.io.readers import dumps_row

logger = logging.getLogger(__name__)


class Sink(Protocol):
    def write(self, rows: list[dict[str, Any]]) -> None: ...
    def position(self) -> dict[str, int]: ...
    def close(self) -> None: ...
    def finish(self, output: Path) -> None: ...


def open_sink(
    kind: str, folder: Path | None, stream: Any, fields: list[str], state: dict[str, Any], schema: Any = None
) -> Sink:
    """A sink of ``kind`` ("jsonl", "csv", "tsv", "parquet") in ``folder``, or JSONL on ``stream`` without one.

    ``fields`` are the output's columns in order (CSV header; Parquet columns); ``state`` the job's
    state (its ``offset`` / ``parts`` say where a resumed sink continues); ``schema`` the input's Arrow
    schema when the input is Parquet (its column types are kept).
    """
    if folder is None:
        return _StreamSink(stream)
    folder.mkdir(exist_ok=True)
    if kind == "parquet":
        return _ParquetSink(folder, fields, int(state.get("parts", 0)), schema)
    return _FileSink(folder / "rows", kind, fields, int(state.get("offset", 0)))


class _StreamSink:
    def __init__(self, stream: Any):
        self._out = getattr(stream, "buffer", None)
        self._stream = stream

    def write(self, rows: list[dict[str, Any]]) -> None:
        text = "".join(dumps_row(r) for r in rows)
        if self._out is not None:
            self._stream.flush()
            self._out.write(text.encode("utf-8"))
            self._out.flush()
        else:
            self._stream.write(text)
            self._stream.flush()

    def position(self) -> dict[str, int]:
        return {}

    def close(self) -> None:
        pass

    def finish(self, output: Path) -> None:
        pass


class _FileSink:
    """Rows appended to one file; the CSV/TSV header is written once, at offset 0."""

    def __init__(self, path: Path, kind: str, fields: list[str], offset: int):
        self.path, self.kind, self.fields = path, kind, fields
        self._dropped: set[str] = set()
        self._f: Any
        if offset and path.exists():
            self._f = path.open("r+b")
            self._f.truncate(offset)  # whatever a killed run wrote after its last recorded chunk
            self._f.seek(offset)
        else:
            self._f = path.open("wb")
            if kind in ("csv", "tsv"):
                self._f.write(self._csv([dict(zip(fields, fields, strict=True))]))
            self._f.flush()

    def _csv(self, rows: list[dict[str, Any]]) -> bytes:
        buf = io.StringIO()
        writer = csv.DictWriter(
            buf, self.fields, extrasaction="ignore", delimiter="\t" if self.kind == "tsv" else ",", lineterminator="\n"
        )
        writer.writerows({k: _cell(v) for k, v in r.items()} for r in rows)
        return buf.getvalue().encode("utf-8", errors="backslashreplace")

    def write(self, rows: list[dict[str, Any]]) -> None:
        if self.kind in ("csv", "tsv"):
            extra = {k for r in rows for k in r}.difference(self.fields, self._dropped)
            if extra:
                self._dropped |= extra
                logger.warning("columns %s appear after the header was written; they are left out", sorted(extra))
            self._f.write(self._csv(rows))
        else:
            self._f.write("".join(dumps_row(r) for r in rows).encode("utf-8"))
        self._f.flush()

    def position(self) -> dict[str, int]:
        return {"offset": self._f.tell()}

    def close(self) -> None:
        self._f.close()

    def finish(self, output: Path) -> None:
        self.close()
        if self.path.exists():
            os.replace(self.path, output)


def _cell(v: Any) -> Any:
    return json.dumps(v, ensure_ascii=False) if isinstance(v, dict | list) else v


class _ParquetSink:
    """One Parquet file per chunk (each written to a temporary name, then renamed); merged at the end."""

    def __init__(self, folder: Path, fields: list[str], parts: int, schema: Any):
        import pyarrow as pa

        self.folder, self.parts = folder, parts
        base = [f for f in schema] if schema is not None else [pa.field(n, pa.string()) for n in fields]
        base = [f for f in base if f.name not in ("prediction", "probability", "error")]
        self.schema = pa.schema(
            [
                *base,
                pa.field("prediction", pa.string()),
                pa.field("probability", pa.float64()),
                pa.field("error", pa.string()),
            ]
        )
        self._typed = schema is not None
        for stale in folder.glob("part-*.parquet"):  # written by a killed run after its last recorded chunk
            if int(stale.stem.split("-")[1]) >= parts:
                stale.unlink()

    def _part(self, i: int) -> Path:
        return self.folder / f"part-{i:06d}.parquet"

    def write(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        names = self.schema.names
        cols = {
            n: [arrow_value(r.get(n), self._typed and n not in ("prediction", "error")) for r in rows] for n in names
        }
        table = pa.Table.from_pydict(cols, schema=self.schema)
        with atomic_path(self._part(self.parts)) as tmp:
            pq.write_table(table, tmp)
        self.parts += 1

    def position(self) -> dict[str, int]:
        return {"parts": self.parts}

    def close(self) -> None:
        pass

    def finish(self, output: Path) -> None:
        import pyarrow.parquet as pq

        merged = self.folder / "merged.parquet"
        if self._part(0).exists() or not merged.exists():
            with pq.ParquetWriter(merged, self.schema) as writer:
                for i in range(self.parts):
                    writer.write_table(pq.read_table(self._part(i), schema=self.schema))
                if self.parts == 0:
                    writer.write_table(self.schema.empty_table())
            for i in range(self.parts):
                self._part(i).unlink()
        if merged.exists():
            os.replace(merged, output)


def arrow_value(v: Any, typed: bool) -> Any:
    """A value Arrow accepts: text without lone surrogates; untyped (non-Parquet) inputs as strings."""
    if isinstance(v, str):
        return v.encode("utf-8", errors="backslashreplace").decode("utf-8")
    if typed or v is None or isinstance(v, float):
        return v
    return json.dumps(v, ensure_ascii=False)
