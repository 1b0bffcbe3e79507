"""Scale-out on Ray Data (optional extra: ``pip install verbalize[ray]``).

:func:`classify_dataset` adds ``prediction``, ``probability`` and ``error`` columns to any
``ray.data.Dataset`` (read from Parquet / CSV / JSONL, local or object-store paths) with ``map_batches``
over a pool of actors; each actor loads the model once. :func:`predict_file` is what
``verbalize predict --engine ray`` runs: read a file, classify, write one Parquet file (one row per input
row, in input order).

The dataset is cut into blocks of exactly ``chunk_size`` rows in input order and each actor classifies one
block at a time with :func:`verbalize.io.jobs.classify_rows`, so every text is scored in the same group of
texts as ``verbalize predict`` (engine local, same ``--chunk-size``) scores it: the two outputs are
equal row for row. Error messages carry no line number here (a row's position is its place in the output).

On an existing cluster, call ``ray.init(address="ray://head:10001")`` (or set ``RAY_ADDRESS``) before
:func:`classify_dataset`; the CLI connects to ``RAY_ADDRESS`` when it is set and otherwise starts a local
Ray instance.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from verbalize.atomic import atomic_path
from verbalize.io.readers import FORMATS, Row, Source
from verbalize.rows import text_problem

logger = logging.getLogger(__name__)


def _ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError("--engine ray needs Ray Data: pip install 'verbalize[ray]'") from None
    return ray


class _Predictor:
    """A Ray actor: builds the classifier once, then classifies one Arrow block per call."""

    def __init__(
        self,
        params: dict[str, Any],
        column: str,
        fit_texts: list[Any] | None,
        threads: int,
        fields: dict[str, str] | None = None,
    ):
        import torch

        from verbalize.estimator import Verbalizer

        torch.set_num_threads(max(1, threads))
        template = Path(str(params["template"]))
        if template.is_dir():
            self.clf = Verbalizer.load(template, batch_size=params["batch_size"])
        else:
            self.clf = Verbalizer(**params)
        if fit_texts:
            self.clf.fit(fit_texts)
        self.column, self.fields = column, fields

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        from verbalize.io.jobs import classify_rows
        from verbalize.io.sinks import arrow_value

        rows = [_row_of(values, self.column, self.fields) for values in table.to_pylist()]
        out = classify_rows(self.clf, rows)
        base = [f for f in table.schema if f.name not in ("prediction", "probability", "error")]
        schema = pa.schema(
            [
                *base,
                pa.field("prediction", pa.string()),
                pa.field("probability", pa.float64()),
                pa.field("error", pa.string()),
            ]
        )
        cols = {n: [arrow_value(r.get(n), True) for r in out] for n in schema.names}
        return pa.Table.from_pydict(cols, schema=schema)


def check_resources(
    concurrency: int | tuple[int, int], num_cpus: float, num_gpus: float, available: dict[str, float], where: str
) -> None:
    """Refuse an actor pool that ``available`` (Ray's resource names: ``"CPU"``, ``"GPU"``) cannot hold.

    Ray would wait forever for actors it cannot place, among hundreds of log lines; here the request is
    refused before anything runs, with the numbers. ``concurrency`` as ``(min, max)`` needs ``min`` actors.

    Raises
    ------
    ValueError
        When the actors need more CPUs or GPUs than ``available`` has (``where``: the cluster's description).
    """
    actors = concurrency[0] if isinstance(concurrency, tuple) else concurrency
    for kind, each, flag in (("CPU", num_cpus, "--cpus-per-actor"), ("GPU", num_gpus, "--gpus-per-actor")):
        have, need = float(available.get(kind, 0.0)), actors * each
        if need <= have:
            continue
        fit = int(have // each) if each else 0
        raise ValueError(
            f"Ray: {actors} actors x {each:g} {kind} each (concurrency={concurrency}, num_{kind.lower()}s={each:g}; "
            f"CLI: --concurrency, {flag}{', default --threads-per-actor' if kind == 'CPU' else ''}) need "
            f"{need:g} {kind}s, and {where} has {have:g}: Ray would wait for them forever. Use "
            + (f"{fit} actor{'s' if fit > 1 else ''} or fewer, or " if fit else "")
            + f"fewer {kind}s per actor (actors x {kind}s each <= {have:g}), or a larger cluster (RAY_ADDRESS)"
        )


def available_resources() -> tuple[dict[str, float], str] | None:
    """The CPUs and GPUs the actors can get, and where: the Ray instance this process is connected to, or
    this machine when Ray will start locally (no ``RAY_ADDRESS``); None when a cluster is yet to be joined."""
    ray = _ray()
    if ray.is_initialized():
        return {k: float(v) for k, v in ray.cluster_resources().items()}, "the Ray cluster"
    if os.environ.get("RAY_ADDRESS"):
        return None
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}, "this machine"


def _row_of(values: dict[str, Any], column: str, fields: dict[str, str] | None) -> Row:
    """An input row for :func:`classify_rows`: the ``column``'s text, or {field: text} from the mapped columns."""
    if fields:
        row = {f: values.get(c) for f, c in fields.items()}
        bad = [f"{c} {p}" for f, c in fields.items() if (p := text_problem(row[f]))]
        return Row(0, row, values, "; ".join(bad) or None)
    text = values.get(column)
    problem = text_problem(text)
    return Row(0, text, values, f"{column} {problem}" if problem else None)


def classify_dataset(
    ds: Any,
    *,
    template: str | Path,
    model: str | None = None,
    calibration: str | None = None,
    column: str = "text",
    batch_size: int = 64,
    chunk_size: int = 512,
    concurrency: int | tuple[int, int] = 2,
    threads: int = 1,
    num_cpus: float | None = None,
    num_gpus: float = 0,
    fit_texts: list[Any] | None = None,
    fields: dict[str, str] | None = None,
) -> Any:
    """Classify the ``column`` (or the ``fields``' columns) of a Ray dataset; returns a dataset with the
    input's columns plus ``prediction``, ``probability`` and ``error``, one row per input row, in input order.

    Parameters
    ----------
    ds : ray.data.Dataset
    template : str or Path
        A template file (or shipped template name), or a classifier directory written by ``save``.
    model, calibration, batch_size
        As for :class:`~verbalize.Verbalizer` (ignored for a classifier directory, which has its own).
    column : str, default "text"
        The text column of a template with one field.
    fields : dict of str to str, optional
        Template field -> column, for a template with several fields (as ``verbalize predict --field``);
        each row is then {field: text}, as :class:`~verbalize.Verbalizer` takes it.
    chunk_size : int, default 512
        Rows per block; each block is one call of :func:`verbalize.io.jobs.classify_rows`.
    concurrency : int or (min, max), default 2
        Number of actors (each holds one copy of the model).
    threads : int, default 1
        Torch threads per actor.
    num_cpus, num_gpus : float
        Ray resources reserved per actor (``num_cpus`` defaults to ``threads``). Leave CPUs for the read
        tasks: with ``concurrency * num_cpus`` equal to all of the cluster's CPUs, nothing is read.
    fit_texts : list of rows, optional
        Unlabeled rows (str, or {field: text}) that domain / batch calibration are fitted on (in every actor).

    Examples
    --------
    >>> import ray  # doctest: +SKIP
    >>> ds = ray.data.read_parquet("s3://bucket/reviews/")  # doctest: +SKIP
    >>> out = classify_dataset(ds, template="templates/sst2.toml", concurrency=8)  # doctest: +SKIP
    >>> out.write_parquet("s3://bucket/predictions/")  # doctest: +SKIP
    """
    ray = _ray()
    # Chunks equal to the local job's need blocks in input order. A Dataset binds the DataContext current
    # when it was created, so set the flag there too (no public setter in Ray 2.60).
    for ctx in (ray.data.DataContext.get_current(), getattr(ds, "_context", None)):
        if ctx is not None:
            ctx.execution_options.preserve_order = True
    found = available_resources() if ray.is_initialized() else None  # else Ray starts on first use
    if found is not None:
        check_resources(concurrency, threads if num_cpus is None else num_cpus, num_gpus, *found)
    params = {"template": str(template), "model": model, "calibration": calibration, "batch_size": batch_size}
    blocks = ds.repartition(target_num_rows_per_block=chunk_size, strict=True)
    return blocks.map_batches(
        _Predictor,
        fn_constructor_kwargs={
            "params": params,
            "column": column,
            "fit_texts": fit_texts,
            "threads": threads,
            "fields": fields,
        },
        batch_size=chunk_size,
        batch_format="pyarrow",
        compute=_actor_pool(ray, concurrency),
        num_cpus=threads if num_cpus is None else num_cpus,
        num_gpus=num_gpus,
    )


def _actor_pool(ray: Any, concurrency: int | tuple[int, int]) -> Any:
    """A fixed pool of ``concurrency`` actors, or an autoscaling one between ``(min, max)`` actors (the
    ``compute`` argument: ``map_batches(concurrency=...)`` is deprecated since Ray 2.51)."""
    if isinstance(concurrency, tuple):
        return ray.data.ActorPoolStrategy(min_size=concurrency[0], max_size=concurrency[1])
    return ray.data.ActorPoolStrategy(size=concurrency)


def read_dataset(source: Source) -> Any:
    """A Ray dataset of an input file: Ray's own readers for Parquet / CSV / JSONL; plain text through
    verbalize's line reader (split on newlines only), which holds the file in the driver's memory."""
    ray = _ray()
    kind, path = source.kind, str(source.path)
    if kind == "parquet":
        return ray.data.read_parquet(path)
    if kind in ("csv", "tsv"):
        from pyarrow import csv as pacsv

        parse = pacsv.ParseOptions(delimiter="\t" if kind == "tsv" else ",", newlines_in_values=True)
        convert = pacsv.ConvertOptions(column_types={c: "string" for c in source.columns})
        return ray.data.read_csv(path, parse_options=parse, convert_options=convert)
    if kind == "jsonl":
        return ray.data.read_json(path, lines=True)
    return ray.data.from_items([{"text": r.fields["text"]} for r in source.rows()])


def predict_file(source: Source, output: str | Path, **options: Any) -> int:
    """Read ``source`` with Ray Data, classify it (see :func:`classify_dataset`) and write one Parquet file
    ``output`` in input order (streamed through the driver into a temporary sibling, renamed when complete);
    returns the number of rows written."""
    import pyarrow.parquet as pq

    ray = _ray()
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()  # join the cluster that RAY_ADDRESS names
        else:
            ray.init(include_dashboard=False, log_to_driver=False)
    if source.kind not in FORMATS.values():
        logger.info("plain-text input is read in the driver; use Parquet or JSONL for large inputs")
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    fields = source.field_map
    out = classify_dataset(read_dataset(source), column=source.column or "text", fields=fields, **options)
    output = Path(output)
    writer, n = None, 0
    with atomic_path(output) as tmp:
        try:
            for table in out.iter_batches(batch_size=None, batch_format="pyarrow"):
                writer = writer or pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
                n += table.num_rows
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise ValueError(f"{source.path}: no rows to classify")
    return n
