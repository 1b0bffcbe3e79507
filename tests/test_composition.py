"""Composition: every entry point takes every template shape, through every persistence route, in every dtype.

The matrix is generated, not listed: ``ENTRIES`` (entry points, each with the routes it has: the Python
estimators, the CLI, the service over real HTTP and ``--engine ray``) x ``SHAPES`` (one field, two fields,
multi-token label words, demonstrations) x ``DTYPES`` x the two tiny model families.
Every cell equals, within 1e-5, the in-process ``predict_proba`` of a fresh classifier on the same
template, rows and dtype (a fresh :class:`Verbalizer`; for kNN a fresh :class:`KNNPrompting`), or is
refused up front by a named message (a dtype whose exactness probe fails: the reference is refused too,
and the cell must raise the same kind of error before predicting anything). The matrix is printed at the
end of the module (cell -> "ok" / "refused: ...").
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from verbalize import KNNPrompting, Template, TemplateEnsemble, Verbalizer, load_template, rank_templates
from verbalize.cli.main import main
from verbalize.engine.scoring import Scorer
from verbalize.errors import VerbalizeError
from verbalize.prompting.template_toml import to_toml

ATOL = 1e-5
DTYPES = ("float32", "bfloat16", "int8")
FAMILIES = ("gpt2", "llama")
ROUTES = ("fresh", "saved", "pickled")
RESULTS: dict[str, str] = {}


# -- template shapes ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    """A template with labeled rows to fit on and rows to predict; ``params`` go to every classifier."""

    template: Template
    fit_rows: list[Any]
    fit_y: list[str]
    rows: list[Any]
    params: dict[str, Any] = field(default_factory=dict)


ONE = Template(prompt="Review: {text}\nSentiment:", labels={"negative": ["bad"], "positive": ["good"]})
TWO = Template(
    prompt="A: {first}\nB: {second}\nSame?", labels={"same": ["good"], "different": ["bad"]}, fields=("first", "second")
)
MULTI = Template(
    prompt="Review: {text}\nSentiment:",
    labels={"negative": ["bad plot", "terrible"], "positive": ["good film", "great"]},
)
TEXTS = ["good film", "bad plot", "a great film", "the story is bad", "good and great", "a terrible ending"]
TEXT_Y = ["positive", "negative", "positive", "negative", "positive", "negative"]
PAIRS = [{"first": a, "second": b} for a, b in zip(TEXTS, TEXTS[1:] + TEXTS[:1], strict=True)]
PAIR_Y = ["different", "same", "different", "same", "different", "same"]
TEST_TEXTS = ["the film was good", "bad", "great plot", "the ending"]
TEST_PAIRS = [{"first": "good", "second": "bad"}, {"first": "a film", "second": "a film"}, ("great", "plot")]

SHAPES: dict[str, Shape] = {
    "one field": Shape(ONE, TEXTS, TEXT_Y, TEST_TEXTS),
    "two fields": Shape(TWO, PAIRS, PAIR_Y, TEST_PAIRS),
    "multi-token words": Shape(MULTI, TEXTS, TEXT_Y, TEST_TEXTS),
    "demonstrations": Shape(TWO, PAIRS, PAIR_Y, TEST_PAIRS, {"n_demos": 2, "random_state": 0}),
}


def as_frame(shape: Shape, rows: list[Any]) -> pd.DataFrame:
    """The same rows as a DataFrame with one column per field (what a fresh classifier is given)."""
    fields = shape.template.fields
    return (
        pd.DataFrame([dict(zip(fields, r, strict=True)) if isinstance(r, tuple) else r for r in rows])
        if len(fields) > 1
        else pd.DataFrame({fields[0]: rows})
    )


# -- the context of one cell --------------------------------------------------------------------------------
@dataclass
class Cell:
    shape: Shape
    dtype: str
    model_dir: Path
    tmp: Path

    def verbalizer(self, template: Template | str | None = None, **kw: Any) -> Verbalizer:
        params = {"template": template or self.shape.template, "model": str(self.model_dir), "dtype": self.dtype}
        clf = Verbalizer(**(params | self.shape.params | kw))
        return clf.fit(self.shape.fit_rows, self.shape.fit_y) if self.shape.params else clf

    def knn(self) -> KNNPrompting:
        per_class = self.shape.params.get("n_demos", 0) // len(self.shape.template.labels)
        params = {"template": self.shape.template, "model": str(self.model_dir), "dtype": self.dtype, "k": 3}
        clf = KNNPrompting(**params, demos_per_class=per_class, random_state=0)
        return clf.fit(self.shape.fit_rows, self.shape.fit_y)

    def write(self, name: str, rows: list[Any], labels: list[str] | None = None) -> Path:
        """Rows as a JSONL file with one column per field (and a label column)."""
        fields = self.shape.template.fields
        path = self.tmp / name
        lines = []
        for i, r in enumerate(rows):
            values = dict(zip(fields, r, strict=True)) if isinstance(r, tuple) else r
            record = dict(values) if isinstance(values, dict) else {fields[0]: values}
            lines.append(json.dumps(record | ({"label": labels[i]} if labels else {})))
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    def template_file(self) -> Path:
        path = self.tmp / "t.toml"
        path.write_text(to_toml(self.shape.template), encoding="utf-8")
        return path


# -- entry points: each returns what it predicts for the shape's rows, compared with the reference -----------
def run_verbalizer(cell: Cell, route: str, capsys: Any) -> np.ndarray:
    clf = cell.verbalizer()
    if route == "fresh":
        return clf.predict_proba(as_frame(cell.shape, cell.shape.rows))
    if route == "saved":
        return Verbalizer.load(clf.save(cell.tmp / "clf")).predict_proba(cell.shape.rows)
    return pickle.loads(pickle.dumps(clf)).predict_proba(cell.shape.rows)


def run_ensemble(cell: Cell, route: str, capsys: Any) -> np.ndarray:
    """A one-template ensemble without calibration is its template's Verbalizer."""
    params = {"model": str(cell.model_dir), "dtype": cell.dtype, "calibration": None}
    ens = TemplateEnsemble([cell.shape.template], **params, **cell.shape.params)
    ens.fit(cell.shape.fit_rows, cell.shape.fit_y)
    if route == "pickled":
        ens = pickle.loads(pickle.dumps(ens))
    rows = as_frame(cell.shape, cell.shape.rows) if route == "fresh" else cell.shape.rows
    return ens.predict_proba(rows)


def run_knn(cell: Cell, route: str, capsys: Any) -> np.ndarray:
    clf = cell.knn()
    if route == "pickled":
        clf = pickle.loads(pickle.dumps(clf))
    rows = as_frame(cell.shape, cell.shape.rows) if route == "fresh" else cell.shape.rows
    return clf.predict_proba(rows)


def run_search(cell: Cell, route: str, capsys: Any) -> np.ndarray:
    """A classifier on the search's best template, found from a DataFrame (fresh) or written by
    ``verbalize suggest`` (saved); that template equals the in-process search's (the reference's template)."""
    shape = cell.shape
    if route == "fresh":
        got = _searched(cell, as_frame(shape, shape.fit_rows))
    else:
        out = cell.tmp / "suggested.toml"
        args = ["suggest", str(cell.template_file()), str(cell.write("labeled.jsonl", shape.fit_rows, shape.fit_y))]
        cli([*args, "--model", str(cell.model_dir), "-o", str(out), "--n-words", "1", "--cv", "2"], capsys)
        got = load_template(out)
    assert got == _searched(cell, shape.fit_rows) and got.fields == shape.template.fields
    return cell.verbalizer(got).predict_proba(shape.rows)


_SEARCHED: dict[tuple[Any, ...], Template] = {}


def _searched(cell: Cell, rows: Any) -> Template:
    """The best template of the in-process search (float32 whatever the cell's dtype, as `verbalize suggest`
    searches: so it is searched once per shape, model and form of the rows)."""
    key = (cell.shape.template, tuple(cell.shape.params), cell.model_dir, type(rows))
    if key not in _SEARCHED:
        model = Scorer.from_pretrained(str(cell.model_dir))
        found = rank_templates(rows, cell.shape.fit_y, cell.shape.template, model, n_words=(1,), cv=2)
        _SEARCHED[key] = found[0].template
    return _SEARCHED[key]


def run_cli_predict(cell: Cell, route: str, capsys: Any) -> tuple[list[str], np.ndarray]:
    """``verbalize predict`` on a JSONL file: labels and their probabilities (rounded to 6 digits)."""
    source = cell.write("in.jsonl", cell.shape.rows)
    out = cell.tmp / "out.jsonl"
    if route == "saved":
        args = [str(cell.verbalizer().save(cell.tmp / "clf")), str(source), "--dtype", cell.dtype]
    else:
        args = [str(cell.template_file()), str(source), "--model", str(cell.model_dir), "--dtype", cell.dtype]
    cli(["predict", *args, "-o", str(out), "--no-progress"], capsys)
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    return [g["prediction"] for g in got], np.array([g["probability"] for g in got])


def run_cli_eval(cell: Cell, route: str, capsys: Any) -> float:
    """``verbalize eval``: the accuracy it prints."""
    data = cell.write("eval.jsonl", cell.shape.rows, _eval_labels(cell.shape))
    if route == "saved":
        args = [str(cell.verbalizer().save(cell.tmp / "clf")), str(data), "--dtype", cell.dtype]
    else:
        args = [str(cell.template_file()), str(data), "--model", str(cell.model_dir), "--dtype", cell.dtype]
    printed = cli(["eval", *args], capsys)
    return float(re.search(r"accuracy=([0-9.]+)", printed).group(1))


def run_serve(cell: Cell, route: str, capsys: Any) -> np.ndarray:
    """``verbalize serve`` over real HTTP (uvicorn on a loopback port): the template file with the cell's model
    and dtype (fresh), or the saved classifier directory (saved); rows sent as objects keyed by field."""
    from serve_support import Running, get, post, proba_of

    from verbalize.serve import ServeConfig, create_app

    if route == "saved":
        paths, model = [str(cell.verbalizer().save(cell.tmp / "clf"))], None
    else:
        paths, model = [str(cell.template_file())], Scorer.from_pretrained(str(cell.model_dir), dtype=cell.dtype)
    srv = Running(create_app(paths, model=model, config=ServeConfig(window_ms=1, reload_interval_s=0))).start()
    try:
        status, listing = get(srv, "/v1/templates")
        (served,) = listing["templates"]
        fields = list(cell.shape.template.fields)
        assert status == 200 and served["fields"] == fields, listing
        rows = [dict(zip(fields, r, strict=True)) if isinstance(r, tuple) else r for r in cell.shape.rows]
        inputs = [r if isinstance(r, dict) else {fields[0]: r} for r in rows]
        status, _, answer = post(srv, {"template": served["name"], "inputs": inputs})
        assert status == 200, answer
        return proba_of(answer)
    finally:
        srv.stop()


def run_ray(cell: Cell, route: str, capsys: Any) -> tuple[list[str], np.ndarray]:
    """``verbalize predict --engine ray`` (a local Ray instance; Parquet in and out)."""
    import pyarrow.parquet as pq

    source = cell.tmp / "in.parquet"
    fields = cell.shape.template.fields
    rows = [dict(zip(fields, r, strict=True)) if isinstance(r, tuple) else r for r in cell.shape.rows]
    pd.DataFrame([r if isinstance(r, dict) else {fields[0]: r} for r in rows]).to_parquet(source)
    out = cell.tmp / "out.parquet"
    if route == "saved":
        args = [str(cell.verbalizer().save(cell.tmp / "clf")), str(source), "--dtype", cell.dtype]
    else:
        args = [str(cell.template_file()), str(source), "--model", str(cell.model_dir), "--dtype", cell.dtype]
    cli(["predict", *args, "-o", str(out), "--engine", "ray", "--concurrency", "1", "--no-progress"], capsys)
    got = pq.read_table(out).to_pylist()
    return [g["prediction"] for g in got], np.array([g["probability"] for g in got])


class CliRefused(Exception):
    """The CLI exited with the setup status (2); the message is what it wrote to stderr."""


def cli(argv: list[str], capsys: Any) -> str:
    """Run ``verbalize ARGV`` in process: its stdout, or :class:`CliRefused` with its stderr."""
    capsys.readouterr()
    status = main(argv)
    printed = capsys.readouterr()
    if status == 2:
        raise CliRefused(printed.err)
    assert status == 0, printed.err
    return printed.out


def _eval_labels(shape: Shape) -> list[str]:
    names = list(shape.template.labels)
    return [names[i % len(names)] for i in range(len(shape.rows))]


@dataclass(frozen=True)
class Entry:
    run: Callable[..., Any]
    routes: tuple[str, ...]
    needs_fit: bool = False  # a route from a template file cannot pick demonstrations: only a saved classifier
    needs: tuple[str, ...] = ()  # optional extras; the entry's cells are skipped without them
    dtypes: tuple[str, ...] = DTYPES
    families: tuple[str, ...] = FAMILIES


def _have(*modules: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


ENTRIES: dict[str, Entry] = {
    "Verbalizer": Entry(run_verbalizer, ROUTES),
    "TemplateEnsemble": Entry(run_ensemble, ("fresh", "pickled")),
    "KNNPrompting": Entry(run_knn, ("fresh", "pickled")),
    "rank_templates/suggest": Entry(run_search, ("fresh", "saved")),
    "cli predict": Entry(run_cli_predict, ("fresh", "saved"), needs_fit=True),
    "cli eval": Entry(run_cli_eval, ("fresh", "saved"), needs_fit=True),
    "serve": Entry(run_serve, ("fresh", "saved"), needs_fit=True, needs=("fastapi", "uvicorn", "prometheus_client")),
    # each Ray job starts a local instance and an actor that loads the model (~10 s on 2 cores): every shape
    # and route, float32, one family (the dtypes and families are the local job's, which the rows above cover)
    "cli predict --engine ray": Entry(
        run_ray, ("fresh", "saved"), needs_fit=True, needs=("ray", "pyarrow"), dtypes=("float32",), families=("llama",)
    ),
}
CELLS = [
    pytest.param(e, s, r, d, f, marks=[] if _have(*entry.needs) else pytest.mark.skip(f"needs {entry.needs}"))
    for e, entry in ENTRIES.items()
    for s, shape in SHAPES.items()
    for r in entry.routes
    if not (entry.needs_fit and shape.params and r == "fresh")
    for d in entry.dtypes
    for f in entry.families
]


# -- the test -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dirs(gpt2: Any, llama: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for fam in (gpt2, llama):
        out[fam.name] = tmp_path_factory.mktemp(fam.name)
        fam.model.save_pretrained(out[fam.name])
        fam.tokenizer.save_pretrained(out[fam.name])
    return out


@pytest.fixture(scope="module", autouse=True)
def _print_matrix(request: pytest.FixtureRequest) -> Any:
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    lines = ["", f"composition matrix ({len(RESULTS)} cells):"]
    lines += [f"  {cell} -> {result}" for cell, result in sorted(RESULTS.items())]
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        for line in lines:
            (reporter.write_line if reporter is not None else print)(line)


_REFERENCES: dict[tuple[str, str, str, str], Any] = {}


def reference(cell: Cell, entry: str, family: str, shape: str) -> Any:
    """The in-process predict_proba of a fresh classifier (list rows) and its classes, or the refusal it raised."""
    kind = {"KNNPrompting": "knn", "rank_templates/suggest": "search"}.get(entry, "verbalizer")
    key = (kind, shape, cell.dtype, family)
    if key not in _REFERENCES:
        try:
            if kind == "knn":
                clf = cell.knn()
            else:  # the search's reference: a classifier on the in-process search's best template
                clf = cell.verbalizer(_searched(cell, cell.shape.fit_rows) if kind == "search" else None)
            _REFERENCES[key] = (clf.predict_proba(cell.shape.rows), np.asarray(clf.classes_).tolist())
        except VerbalizeError as exc:  # e.g. a dtype that fails the Scorer's exactness probe
            _REFERENCES[key] = exc
    return _REFERENCES[key]


@pytest.mark.parametrize(("entry", "shape", "route", "dtype", "family"), CELLS)
def test_every_entry_point_takes_every_template_shape(
    entry, shape, route, dtype, family, model_dirs, tmp_path, capsys, request
):
    if "ray" in ENTRIES[entry].needs:
        request.getfixturevalue("local_ray")  # one bounded local instance, shared with test_ray.py
    cell = Cell(SHAPES[shape], dtype, model_dirs[family], tmp_path)
    name = f"{entry} | {shape} | {route} | {dtype} | {family}"
    ref = reference(cell, entry, family, shape)
    run = ENTRIES[entry].run
    if isinstance(ref, Exception):  # refused for the fresh classifier: refused here too, by the same message
        kind = (CliRefused, type(ref)) if entry.startswith("cli") else type(ref)  # saved: refused making the classifier
        with pytest.raises(kind, match=re.escape(str(ref).split(";")[0])):
            run(cell, route, capsys)
        RESULTS[name] = f"refused: {str(ref).splitlines()[0][:100]}"
        return
    want, classes = ref
    got = run(cell, route, capsys)
    if entry.startswith("cli predict"):
        labels, p = got
        assert labels == [classes[i] for i in want.argmax(1)]
        np.testing.assert_allclose(p, want.max(1), atol=ATOL)
    elif entry == "cli eval":
        truth = _eval_labels(cell.shape)
        assert got == pytest.approx(
            np.mean([classes[i] == t for i, t in zip(want.argmax(1), truth, strict=True)]), abs=1e-4
        )
    else:
        np.testing.assert_allclose(got, want, atol=ATOL)
    RESULTS[name] = "ok"


def test_the_shapes_are_what_they_claim(gpt2: Any, llama: Any, model_dirs) -> None:
    """Guards of the matrix: multi-token words have several tokens, and demonstrations are in the prompt
    (they change the scores; a prompt budget that dropped them would make that shape zero-shot)."""
    for fam in (gpt2, llama):
        tokens = MULTI.labels.encode(fam.tokenizer, MULTI.label_prefix, MULTI.render("x"))
        assert max(len(ids) for ids in tokens.word_ids) > 1
        shape = SHAPES["demonstrations"]
        cell = Cell(shape, "float32", model_dirs[fam.name], Path("."))
        with_demos = cell.verbalizer()
        assert len(with_demos.demos_) == 2
        zero_shot = Verbalizer(template=shape.template, model=str(model_dirs[fam.name]))
        assert np.abs(with_demos.predict_proba(shape.rows) - zero_shot.predict_proba(shape.rows)).max() > 1e-3


def test_scorer_with_settings_shares_the_model_and_keeps_what_is_not_given(gpt2: Any) -> None:
    base = gpt2.scorer(batch_size=4, max_length=40, max_tokens=256)
    small = base.with_settings(batch_size=2)
    assert (small.model, small.tokenizer, small.io) == (base.model, base.tokenizer, base.io)
    assert (small.batch_size, small.context_length, small.max_tokens) == (2, 40, 256)
    assert base.batch_size == 4
    assert base.with_settings(max_length=None).context_length == 64  # the model's window
    assert base.with_settings(max_length=1000).context_length == 64
    assert Scorer.resolve(base, batch_size=8).model is base.model
