"""Ray Data path (verbalize.io.ray): a local 2-CPU Ray instance started here; output equals the single-process job."""

from __future__ import annotations

import json

import pytest

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

from verbalize.cli.main import main  # noqa: E402


def test_ray_engine_output_equals_single_process_row_for_row(
    tmp_path, tmp_template, gpt2_model, gpt2_tokenizer, local_ray
):
    model_dir = tmp_path / "model"
    gpt2_model.save_pretrained(model_dir)
    gpt2_tokenizer.save_pretrained(model_dir)
    src = tmp_path / "in.jsonl"
    texts = [f"film {i} was {'good' if i % 3 else 'bad'} " * (1 + i % 5) for i in range(150)]
    texts[7] = "   "
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts)))
    tpl = str(tmp_template())
    common = ["predict", tpl, str(src), "--model", str(model_dir), "--chunk-size", "32", "--no-progress"]
    local = tmp_path / "local.parquet"
    assert main([*common, "-o", str(local)]) == 1  # one blank text
    out = tmp_path / "ray.parquet"
    assert main([*common, "-o", str(out), "--engine", "ray", "--concurrency", "2", "--cpus-per-actor", "0.5"]) == 0
    got = pq.read_table(out).to_pylist()
    want = pq.read_table(local).to_pylist()
    assert len(got) == len(want) == 150
    assert [r["id"] for r in got] == list(range(150))
    for g, w in zip(got, want, strict=True):
        assert (g["prediction"], g["probability"]) == (w["prediction"], w["probability"])
    assert got[7]["error"] == "text is empty or whitespace-only" and want[7]["error"].startswith(
        "line 8: text is empty"
    )


PAIR_TEMPLATE = """
name = "pair"
fields = ["first", "second"]
prompt = "A: {first}\\nB: {second}\\nSame?"
[labels]
same = ["good"]
different = ["bad"]
"""


def test_ray_engine_reads_a_template_s_fields_from_their_columns(
    tmp_path, tmp_template, gpt2_model, gpt2_tokenizer, local_ray
):
    """A two-field template on --engine ray: each row is {field: text} from its columns, as the local job reads it."""
    model_dir = tmp_path / "model"
    gpt2_model.save_pretrained(model_dir)
    gpt2_tokenizer.save_pretrained(model_dir)
    src = tmp_path / "in.jsonl"
    rows = [
        {"id": i, "first": f"film {i} was good", "other": f"it was {'bad' if i % 2 else 'fine'}"} for i in range(12)
    ]
    rows[3]["other"] = ""
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tpl = str(tmp_template(PAIR_TEMPLATE))
    common = ["predict", tpl, str(src), "--model", str(model_dir), "--field", "second=other", "--no-progress"]
    local = tmp_path / "local.parquet"
    assert main([*common, "-o", str(local)]) == 1  # one empty field
    out = tmp_path / "ray.parquet"
    assert main([*common, "-o", str(out), "--engine", "ray", "--concurrency", "1", "--cpus-per-actor", "0.5"]) == 0
    got, want = pq.read_table(out).to_pylist(), pq.read_table(local).to_pylist()
    assert [r["id"] for r in got] == list(range(12))
    for g, w in zip(got, want, strict=True):
        assert (g["prediction"], g["probability"]) == (w["prediction"], w["probability"])
    assert got[3]["error"] == "other is empty or whitespace-only" and got[3]["prediction"] is None
    assert len({g["prediction"] for g in got if g["prediction"]}) >= 1


def test_a_failing_ray_job_leaves_no_temporary_file_and_the_old_output(tmp_path, monkeypatch):
    """The blocks stream into a temporary sibling of the output; a failure after the first block removes it.

    Ray itself is replaced by a stand-in (no cluster started): the failure is the driver's, mid-stream.
    """
    from types import SimpleNamespace

    import pyarrow as pa

    from verbalize.io import ray as ray_io
    from verbalize.io.readers import open_source

    class Blocks:
        def iter_batches(self, **kwargs):
            yield pa.table({"text": ["a", "b"], "prediction": ["x", "y"]})
            raise RuntimeError("an actor died")

    context = SimpleNamespace(execution_options=SimpleNamespace(preserve_order=False))
    fake = SimpleNamespace(
        is_initialized=lambda: True, data=SimpleNamespace(DataContext=SimpleNamespace(get_current=lambda: context))
    )
    monkeypatch.setattr(ray_io, "_ray", lambda: fake)
    monkeypatch.setattr(ray_io, "read_dataset", lambda source: None)
    monkeypatch.setattr(ray_io, "classify_dataset", lambda *args, **kwargs: Blocks())
    src = tmp_path / "in.txt"
    src.write_text("a\nb\nc\n")
    out = tmp_path / "out.parquet"
    out.write_bytes(b"an earlier output")
    with pytest.raises(RuntimeError, match="an actor died"):
        ray_io.predict_file(open_source(src), out, template="t.toml")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.txt", "out.parquet"]
    assert out.read_bytes() == b"an earlier output"


@pytest.mark.parametrize("concurrency", [3, (1, 4)])
def test_the_actor_pool_is_asked_for_with_compute_not_the_deprecated_concurrency(concurrency):
    """Ray 2.51 deprecated map_batches(concurrency=...) (a warning among Ray's log lines on every run); the actor
    pool is a ``compute=ActorPoolStrategy``. A stand-in dataset records the call (no cluster started)."""
    from verbalize.io.ray import classify_dataset

    calls = []

    class Dataset:
        def repartition(self, **kwargs):
            return self

        def map_batches(self, fn, **kwargs):
            calls.append(kwargs)
            return self

    classify_dataset(Dataset(), template="t.toml", concurrency=concurrency, num_cpus=0.5)  # fits any Ray instance
    [kwargs] = calls
    assert "concurrency" not in kwargs
    pool = kwargs["compute"]
    assert isinstance(pool, ray.data.ActorPoolStrategy)
    want = (3, 3) if concurrency == 3 else concurrency
    assert (pool.min_size, pool.max_size) == want
    assert kwargs["num_cpus"] == 0.5
