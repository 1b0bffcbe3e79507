"""Streaming batch jobs (verbalize.io.jobs): one output row per input row, per-row errors, interrupt and resume.

Most tests use a toy classifier (deterministic probabilities from the text, fails on "BOOM") so that they
test the job's logic in milliseconds; test_cli.py runs the same path with a real tiny model.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from verbalize.errors import InputError
from verbalize.io.jobs import Job, run
from verbalize.io.readers import dumps_row, open_source


class Toy:
    """predict_proba from a hash of each text; a chunk holding "BOOM" fails as a whole, as a tokenizer would."""

    classes_ = np.array(["neg", "pos"], dtype=object)

    def __init__(self, interrupt_after: int | None = None):
        self.calls: list[list[str]] = []
        self.interrupt_after = interrupt_after

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        if self.interrupt_after is not None and len(self.calls) > self.interrupt_after:
            os.kill(os.getpid(), signal.SIGINT)
        if any("BOOM" in t for t in texts):
            raise RuntimeError("cannot encode BOOM")
        p = np.array([(sum(map(ord, t)) % 97) / 97 for t in texts])
        return np.stack([1 - p, p], axis=1)


def _job(src: Path, out: Path | None, chunk_size: int = 4, **kw: object) -> Job:
    return Job(open_source(src), out, {"model": "toy"}, chunk_size, **kw)  # type: ignore[arg-type]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().decode("utf-8").split("\n") if line]


def test_text_lines_split_on_newline_only_and_every_line_gets_a_row(tmp_path):
    src = tmp_path / "in.txt"
    raw = "\ufeffone\r\n\ntwo\u2028half\nthree\x0cfour\x85five\n   \nsix"
    src.write_bytes(raw.encode("utf-8") + b"\n\xff bad bytes\n")
    out = tmp_path / "out.jsonl"
    result = run(_job(src, out), Toy())
    got = _read_jsonl(out)
    assert result.rows == len(got) == 7 and result.failed == 3
    assert got[0]["text"] == "one" and got[2]["text"] == "two\u2028half" and got[3]["text"] == "three\x0cfour\x85five"
    assert got[1]["error"].startswith("line 2: text is empty") and got[4]["error"].startswith("line 5:")
    assert got[6]["error"].startswith("line 7: text holds U+DCFF")
    assert "\u2028" not in out.read_text(encoding="utf-8")  # escaped, so line-based readers see one row


def test_own_jsonl_output_reads_back_row_for_row(tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [{"id": 1, "text": "a\u2028b"}, {"id": 2, "text": "\ud800"}, {"id": 3, "text": "c\u2029\x85d"}]
    src.write_text("".join(dumps_row(r) for r in rows), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    run(_job(src, out), Toy())
    back = [r.fields for r in open_source(out).rows()]
    assert [r["text"] for r in back] == [r["text"] for r in rows]
    assert "lone surrogate" in back[1]["error"] and "prediction" in back[0] and "prediction" in back[2]


def test_a_failing_text_never_takes_its_neighbours_down(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("fine\nBOOM here\nalso fine\nfine\n")
    out = tmp_path / "out.jsonl"
    result = run(_job(src, out, chunk_size=8), Toy())
    got = _read_jsonl(out)
    assert result.failed == 1 and "RuntimeError: cannot encode BOOM" in got[1]["error"]
    assert got[1]["error"].startswith("line 2:") and all("prediction" in got[i] for i in (0, 2, 3))


def test_identical_texts_are_scored_once_per_chunk(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("same\n" * 6 + "other\n")
    toy = Toy()
    run(_job(src, tmp_path / "out.jsonl", chunk_size=100), toy)
    assert toy.calls == [["same", "other"]]


def test_interrupt_keeps_finished_rows_and_old_output_then_resume_is_byte_identical(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"text": f"text {i}", "k": i}) + "\n" for i in range(23)))
    whole = tmp_path / "whole.jsonl"
    run(_job(src, whole), Toy())
    out = tmp_path / "out.jsonl"
    out.write_text("an earlier run's output\n")
    result = run(_job(src, out), Toy(interrupt_after=2))
    assert result.interrupted == signal.SIGINT and result.rows == 8
    assert out.read_text() == "an earlier run's output\n"  # untouched until the job completes
    with (tmp_path / "out.jsonl.partial" / "rows").open("ab") as f:
        f.write(b'{"text": "half a row written when the process was kil')
    with pytest.raises(InputError, match="Add --resume to continue it"):
        run(_job(src, out), Toy())
    resumed = run(_job(src, out, resume=True), Toy())
    assert resumed.resumed_from == 8 and resumed.rows == 23 and resumed.interrupted is None
    assert out.read_bytes() == whole.read_bytes() and not (tmp_path / "out.jsonl.partial").exists()


def test_resume_refuses_a_changed_input_or_options(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("".join(f"t{i}\n" for i in range(20)))
    out = tmp_path / "out.csv"
    assert run(_job(src, out), Toy(interrupt_after=1)).interrupted
    with pytest.raises(InputError, match="chunk_size: 4 then, 5 now"):
        run(_job(src, out, chunk_size=5, resume=True), Toy())
    src.write_text("".join(f"t{i}\n" for i in range(21)))
    with pytest.raises(InputError, match="input_sha256"):
        run(_job(src, out, resume=True), Toy())


def test_csv_with_bom_keeps_columns_and_resumes_with_one_header(tmp_path):
    src = tmp_path / "in.csv"
    body = "".join(f'{i},"review, {i}\nsecond line"\n' for i in range(10))
    src.write_bytes("\ufeffid,review\n".encode() + body.encode())
    whole, out = tmp_path / "whole.csv", tmp_path / "out.csv"
    run(_job(src, whole), Toy())
    assert run(_job(src, out), Toy(interrupt_after=1)).interrupted
    run(_job(src, out, resume=True), Toy())
    assert out.read_bytes() == whole.read_bytes()
    rows = [r.fields for r in open_source(out).rows()]
    assert len(rows) == 10 and rows[3]["id"] == "3" and rows[3]["review"] == "review, 3\nsecond line"
    assert open_source(src).rows().__next__().line == 2 and [r.line for r in open_source(src).rows()][1] == 4


def test_parquet_in_and_out_keeps_other_columns_and_their_types(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": list(range(9)), "text": [f"t{i}" for i in range(8)] + [""]}), src)
    out = tmp_path / "out.parquet"
    assert run(_job(src, out), Toy(interrupt_after=1)).interrupted
    run(_job(src, out, resume=True), Toy())
    table = pq.read_table(out)
    assert table.num_rows == 9 and table.schema.field("id").type == pa.int64()
    assert table.column("id").to_pylist() == list(range(9))
    assert table.column("error").to_pylist()[8].startswith("row 9: text is empty")
    assert None not in table.column("prediction").to_pylist()[:8]


def test_unknown_column_is_a_setup_error_naming_the_columns(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"review": "x", "id": 1}\n')
    with pytest.raises(InputError, match=r"no column 'reveiw'.*\['review', 'id'\].*Did you mean 'review'"):
        open_source(src, "reveiw")


def test_a_failing_chunk_logs_its_cause_once_at_warning(tmp_path, caplog):
    src = tmp_path / "in.txt"
    src.write_text("fine\nBOOM here\nalso fine\nfine\nBOOM again\nok\n")
    with caplog.at_level(logging.WARNING, logger="verbalize.io.jobs"):
        run(_job(src, tmp_path / "out.jsonl", chunk_size=4), Toy())
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "chunk" in r.getMessage()]
    assert len(warned) == 2  # once per failing chunk (rows 1-4 and 5-6), not once per row
    assert all("RuntimeError: cannot encode BOOM" in r.getMessage() for r in warned)


class _Crash(Exception):
    pass


def test_an_error_closes_the_sink_and_keeps_the_finished_rows_and_the_old_output(tmp_path, monkeypatch):
    """Not an interrupt: a failure writing the output (disk full) after two chunks."""
    from verbalize.io import jobs

    src = tmp_path / "in.txt"
    src.write_text("".join(f"t{i}\n" for i in range(20)))
    out = tmp_path / "out.jsonl"
    out.write_text("an earlier run's output\n")
    sinks, open_sink = [], jobs.open_sink

    def failing_sink(*args, **kwargs):
        sink = open_sink(*args, **kwargs)
        write, calls = sink.write, []

        def write_or_fail(rows):
            calls.append(rows)
            if len(calls) > 2:
                raise _Crash("No space left on device")
            write(rows)

        sink.write = write_or_fail
        sinks.append(sink)
        return sink

    monkeypatch.setattr(jobs, "open_sink", failing_sink)
    with pytest.raises(_Crash):
        run(_job(src, out), Toy())
    assert sinks[0]._f.closed  # the partial rows file is closed, not left open until garbage collection
    assert out.read_text() == "an earlier run's output\n"
    monkeypatch.undo()
    resumed = run(_job(src, out, resume=True), Toy())  # the two finished chunks were kept
    assert resumed.resumed_from == 8 and resumed.rows == 20
    assert [r["text"] for r in _read_jsonl(out)] == [f"t{i}" for i in range(20)]


def test_a_second_run_on_the_same_output_is_refused_while_the_first_runs(tmp_path):
    """Two `--resume` jobs on one output shared one .partial folder with no lock (the second died with a raw error
    or interleaved its rows); the second is now refused by name, and the first finishes as if alone."""
    src = tmp_path / "in.txt"
    src.write_text("".join(f"t{i}\n" for i in range(12)))
    out, alone = tmp_path / "out.jsonl", tmp_path / "alone.jsonl"
    run(_job(src, alone), Toy())
    seen: list[Exception] = []

    class Meddler(Toy):
        def predict_proba(self, texts):
            if not seen:
                for resume in (True, False):
                    try:
                        run(_job(src, out, resume=resume), Toy())
                    except InputError as exc:
                        seen.append(exc)
            return super().predict_proba(texts)

    assert run(_job(src, out), Meddler()).rows == 12
    assert len(seen) == 2 and all("another run is writing" in str(e) for e in seen), seen
    assert out.read_bytes() == alone.read_bytes()
