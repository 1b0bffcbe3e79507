"""This session's features on a two-field template: calibration="prior" (fit, save/load), ``eval --report``
and the studio's check and evaluation. A text is a {field: value} row; each must work as with one field."""

from __future__ import annotations

import argparse
import json
import re
import time

import numpy as np
import pytest

from verbalize import Verbalizer
from verbalize.cli.main import main
from verbalize.engine.scoring import Scorer

PAIR_TOML = """fields = ["first", "second"]
prompt = "A: {first}\\nB: {second}\\nSame?"
[labels]
same = ["good", "yes"]
different = ["bad", "no"]
"""
WORDS = ["a good film", "a bad film", "great acting", "terrible plot", "fine music", "awful ending", "nice", "poor"]
ROWS = [{"first": a, "second": b} for a in WORDS[:4] for b in WORDS[4:]]
LABELS = ["same" if (i + j) % 2 else "different" for i in range(4) for j in range(4)]


def _data(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r | {"label": y}) + "\n" for r, y in zip(ROWS, LABELS, strict=True)))
    return path


def test_prior_calibration_fits_predicts_saves_and_loads_with_two_fields(tmp_path, tmp_template, model_dir):
    clf = Verbalizer(template=str(tmp_template(PAIR_TOML)), model=model_dir, calibration="prior").fit(ROWS, LABELS)
    proba = clf.predict_proba(ROWS)
    assert proba.shape == (len(ROWS), 2) and np.allclose(proba.sum(axis=1), 1)
    prior = clf.calibration_report_["estimated_prior"]
    assert prior is not None and len(prior) == 2 and clf.calibration_report_["n_texts"] == len(ROWS)
    back = Verbalizer.load(clf.save(tmp_path / "saved"))
    assert np.allclose(back.predict_proba(ROWS), proba, atol=1e-6)


def test_eval_report_on_a_two_field_file_equals_predict(tmp_path, tmp_template, model_dir, capsys):
    template, out = str(tmp_template(PAIR_TOML)), tmp_path / "report.html"
    assert main(["eval", template, str(_data(tmp_path)), "--model", model_dir, "--report", str(out)]) == 0
    island = re.search(r'<script type="application/json"[^>]*>(.*?)</script>', out.read_text(encoding="utf-8"), re.S)
    assert island is not None
    data = json.loads(island.group(1))
    want = Verbalizer(template=template, model=model_dir).predict(ROWS).tolist()
    assert data["n"] == len(ROWS) and data["predictions"] == want


def test_studio_checks_and_evaluates_a_two_field_template(tmp_path, gpt2_model, gpt2_tokenizer):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from verbalize.cli.studio import build

    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "pair.toml").write_text(PAIR_TOML, encoding="utf-8")
    data = _data(tmp_path)
    args = argparse.Namespace(
        templates=str(folder), data=[str(data)], column=None, label_column="label", field=[], host="127.0.0.1"
    )
    app = build(args, scorer=Scorer(gpt2_model, gpt2_tokenizer))
    app.state.evaluator.calibrations = ["none"]
    h = {"X-Verbalize-Studio": "1"}
    with TestClient(app) as client:
        body = {"name": "pair.toml", "text": PAIR_TOML, "data": data.name}
        ok = client.post("/api/check", json=body, headers=h).json()
        assert ok["ok"] and ok["prompt"] == f"A: {ROWS[0]['first']}\nB: {ROWS[0]['second']}\nSame?", ok
        job = client.post("/api/evaluate", json=body | {"size": 200}, headers=h).json()
        end = time.monotonic() + 60
        while job["status"] in ("queued", "running"):
            assert time.monotonic() < end, job
            time.sleep(0.02)
            job = client.get(f"/api/evaluate/{job['id']}").json()
    assert job["status"] == "done", job
    want = Verbalizer(template=str(folder / "pair.toml"), model=Scorer(gpt2_model, gpt2_tokenizer)).predict(ROWS)
    accuracy = float(np.mean(want == np.array(LABELS)))
    result = job["results"]["none"]
    assert result["n"] == len(ROWS) and result["accuracy"] == pytest.approx(accuracy)
