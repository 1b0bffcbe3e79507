"""The studio's backend on the tiny GPT-2 (FastAPI's TestClient): checks with ``verbalize check``'s messages,
evaluations equal to ``verbalize eval``'s on the same rows, the cache, cancellation, saves (valid only,
history, stale ones refused) and paths that would leave the templates folder."""

from __future__ import annotations

import argparse
import json
import threading
import time

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from verbalize import Verbalizer  # noqa: E402
from verbalize.cli.main import main  # noqa: E402
from verbalize.cli.studio import build  # noqa: E402
from verbalize.engine.scoring import Scorer  # noqa: E402
from verbalize.studio.evaluation import calibration_names  # noqa: E402

TEMPLATE = """# sentiment
name = "t"
prompt = "Review: {text}\\nSentiment:"
sample_text = "a good film"

[labels]
negative = ["bad", "negative"]
positive = ["good", "positive"]
"""
WORDS = ["good film", "bad film", "a great review", "terrible and bad", "the plot was bad", "good good", "bad bad"]
WORDS += ["the acting is good", "the story is bad", "I liked this movie", "I hated it", "a terrible ending"]
ROWS = [(t, "positive" if i % 3 else "negative") for i, t in enumerate(WORDS)] * 2
H = {"X-Verbalize-Studio": "1"}


def _build(tmp_path, gpt2_model, gpt2_tokenizer):
    """The studio app over a folder holding TEMPLATE as t.toml and ROWS as data.jsonl; (app, folder, data)."""
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "t.toml").write_text(TEMPLATE, encoding="utf-8")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in ROWS), encoding="utf-8")
    args = argparse.Namespace(
        templates=str(folder), data=[str(data)], column=None, label_column="label", field=[], host="127.0.0.1"
    )
    return build(args, scorer=Scorer(gpt2_model, gpt2_tokenizer)), folder, data


@pytest.fixture
def studio(tmp_path, gpt2_model, gpt2_tokenizer):
    app, folder, data = _build(tmp_path, gpt2_model, gpt2_tokenizer)
    app.state.evaluator.calibrations = ["none", "contextual", "batch"]  # auto and the rest: test_all_calibrations
    with TestClient(app) as client:
        client.folder, client.data = folder, data
        yield client


def _wait(client, job, limit=60.0):
    end = time.monotonic() + limit
    while job["status"] in ("queued", "running"):
        assert time.monotonic() < end, job
        time.sleep(0.02)
        job = client.get(f"/api/evaluate/{job['id']}").json()
    return job


def _evaluate(client, text, size=200):
    r = client.post(
        "/api/evaluate", json={"name": "t.toml", "text": text, "data": "data.jsonl", "size": size}, headers=H
    )
    assert r.status_code == 200, r.text
    return _wait(client, r.json())


def _eval_cli(tmp_path, client, text, size, calibration=None):
    tpl = tmp_path / f"cli-{calibration}.toml"
    tpl.write_text(text, encoding="utf-8")
    report = tmp_path / f"report-{calibration}.html"
    args = [
        "eval",
        str(tpl),
        str(client.data),
        "--model",
        client.model_dir,
        "--limit",
        str(size),
        "--report",
        str(report),
        "--dtype",
        "float32",  # the studio's scorer here: the tiny model in float32
    ]
    assert main(args + (["--calibration", calibration] if calibration else [])) == 0
    page = report.read_text(encoding="utf-8")
    return json.loads(page.split('id="verbalize-report">', 1)[1].split("</script>", 1)[0])


@pytest.fixture
def model_dir(tmp_path_factory, gpt2_model, gpt2_tokenizer):
    path = tmp_path_factory.mktemp("tiny-gpt2")
    gpt2_model.save_pretrained(path)
    gpt2_tokenizer.save_pretrained(path)
    return str(path)


def test_lists_reads_and_checks_with_the_messages_of_verbalize_check(studio, capsys, tmp_path, model_dir):
    files = studio.get("/api/files").json()
    assert files["templates"] == ["t.toml"] and files["data"] == ["data.jsonl"] and files["size"] == 200
    got = studio.get("/api/templates/t.toml").json()
    assert got["text"] == TEMPLATE and len(got["version"]) == 16
    ok = studio.post("/api/check", json={"name": "t.toml", "text": TEMPLATE, "data": "data.jsonl"}, headers=H).json()
    assert ok["ok"] and ok["prompt"] == f"Review: {ROWS[0][0]}\nSentiment:"  # the data's first row
    assert [t["word"] for t in ok["tokens"]] == ["bad", "negative", "good", "positive"]
    assert all(t["fits"] for t in ok["tokens"]) and ok["context"]["window"] > 0
    bad = TEMPLATE.replace('positive = ["good", "positive"]', 'positive = ["good", "bad"]').replace("{text}", "{txt}")
    out = studio.post("/api/check", json={"name": "t.toml", "text": bad}, headers=H).json()
    assert not out["ok"] and {p["key"] for p in out["problems"]} == {"prompt", "labels.positive"}
    (tmp_path / "t.toml").write_text(bad, encoding="utf-8")
    assert main(["check", str(tmp_path / "t.toml"), "--model", model_dir]) == 2
    cli_lines = capsys.readouterr().err
    for p in out["problems"]:  # the same text, after the file name
        assert p["message"].split(": ", 1)[1] in cli_lines
    shared = TEMPLATE.replace('positive = ["good", "positive"]', 'positive = ["good", "bad"]')
    out = studio.post("/api/check", json={"name": "t.toml", "text": shared}, headers=H).json()
    assert [p["key"] for p in out["problems"]] == ["labels.positive"] and "'bad'" in out["problems"][0]["message"]


def test_evaluation_equals_verbalize_eval_on_the_same_rows(studio, tmp_path, model_dir):
    studio.model_dir = model_dir
    job = _evaluate(studio, TEMPLATE, size=20)
    assert job["status"] == "done" and list(job["results"]) == ["none", "contextual", "batch"]
    shares = {(w["label"], w["word"]): w["share"] for w in job["words"]}
    assert list(shares) == [
        ("negative", "bad"),
        ("negative", "negative"),
        ("positive", "good"),
        ("positive", "positive"),
    ]
    assert shares["negative", "bad"] + shares["negative", "negative"] == pytest.approx(1.0)
    assert 0 < shares["positive", "good"] < 1
    for calibration in ("none", "contextual", "batch"):
        cli = _eval_cli(tmp_path, studio, TEMPLATE, 20, None if calibration == "none" else calibration)
        got = job["results"][calibration]
        assert got["n"] == cli["n"] == 20
        assert got["predictions"] == cli["predictions"] and got["confusion"] == cli["confusion"]
        assert (got["accuracy"], got["macro_f1"]) == (cli["accuracy"], cli["macro_f1"])
        print(calibration, got["ece"], cli["ece"])
        assert got["ece"] == pytest.approx(cli["ece"], abs=1e-9) and got["per_class"] == pytest.approx(cli["per_class"])
    changed = TEMPLATE.replace('negative = ["bad", "negative"]', 'negative = ["terrible"]')
    other = _evaluate(studio, changed, size=20)
    cli = _eval_cli(tmp_path, studio, changed, 20)
    assert other["results"]["none"]["predictions"] == cli["predictions"]
    assert other["results"]["none"]["confusion"] == cli["confusion"]


def test_going_back_is_cached_and_compare_lists_the_changed_rows(studio):
    first = _evaluate(studio, TEMPLATE, size=12)
    changed = TEMPLATE.replace('negative = ["bad", "negative"]', 'negative = ["terrible"]')
    second = _evaluate(studio, changed, size=12)
    again = studio.post(
        "/api/evaluate", json={"name": "t.toml", "text": TEMPLATE, "data": "data.jsonl", "size": 12}, headers=H
    ).json()
    assert again["status"] == "done" and again["id"] == first["id"] and again["results"] == first["results"]
    held = studio.get(f"/api/evaluate/{first['id']}?have=none,batch").json()  # the page holds these: not resent
    assert list(held["results"]) == ["contextual"] and held["ready"] == ["none", "contextual", "batch"]
    out = studio.post("/api/compare", json={"a": first["id"], "b": second["id"]}, headers=H).json()
    pa, pb = first["results"]["none"]["predictions"], second["results"]["none"]["predictions"]
    assert [c["row"] for c in out["changed"]] == [i for i in range(12) if pa[i] != pb[i]]
    assert out["a"]["accuracy"] == first["results"]["none"]["accuracy"]
    for c in out["changed"]:
        assert (c["text"], c["label"]) == ROWS[c["row"]]
    r = studio.post("/api/compare", json={"a": first["id"], "b": "nope"}, headers=H)
    assert r.status_code == 409 and "evaluate both" in r.json()["message"]


def test_a_new_edit_cancels_the_running_evaluation(studio):
    evaluator = studio.app.state.evaluator
    gate = threading.Event()
    data = evaluator.data["data.jsonl"]

    class Gated(type(data)):
        def rows(self, template, size):
            gate.wait(10)
            return super().rows(template, size)

    evaluator.data["data.jsonl"] = Gated(data.path, data.column, data.label_column, data.fields)
    body = {"name": "t.toml", "text": TEMPLATE, "data": "data.jsonl", "size": 6}
    first = studio.post("/api/evaluate", json=body, headers=H).json()
    changed = TEMPLATE.replace('"bad", "negative"', '"terrible"')
    second = studio.post("/api/evaluate", json=body | {"text": changed}, headers=H).json()
    assert first["id"] != second["id"]
    gate.set()
    second = _wait(studio, second)
    assert second["status"] == "done"
    assert studio.get(f"/api/evaluate/{first['id']}").status_code == 404  # cancelled, dropped from the cache
    assert evaluator.jobs.get(first["id"]) is None


def test_save_valid_only_keeps_history_and_refuses_a_stale_tab(studio):
    path = studio.folder / "t.toml"
    v0 = studio.get("/api/templates/t.toml").json()["version"]
    invalid = TEMPLATE.replace("{text}", "")
    r = studio.post("/api/save", json={"name": "t.toml", "text": invalid, "version": v0}, headers=H)
    assert r.status_code == 422 and r.json()["problems"][0]["key"] == "prompt"
    assert path.read_text(encoding="utf-8") == TEMPLATE
    edited = TEMPLATE.replace('"good", "positive"', '"good", "great"')
    r = studio.post("/api/save", json={"name": "t.toml", "text": edited, "version": v0}, headers=H)
    assert r.status_code == 200, r.text
    assert path.read_text(encoding="utf-8") == edited
    history = studio.get("/api/history/t.toml").json()["history"]
    assert [h["version"] for h in history] == [v0]
    old = studio.get(f"/api/history/t.toml/{history[0]['entry']}").json()
    assert old["text"] == TEMPLATE
    stale = TEMPLATE.replace('"bad", "negative"', '"terrible"')  # a second tab, still at v0
    r = studio.post("/api/save", json={"name": "t.toml", "text": stale, "version": v0}, headers=H)
    assert r.status_code == 409 and "changed on disk" in r.json()["message"]
    assert r.json()["version"] == studio.get("/api/templates/t.toml").json()["version"]
    assert path.read_text(encoding="utf-8") == edited
    assert sorted(p.name for p in studio.folder.iterdir()) == [".history", "t.toml"]  # no temporary left


@pytest.mark.parametrize("name", ["../t.toml", "../../etc/passwd.toml", "/etc/x.toml", "sub/t.toml", ".history.toml"])
def test_paths_outside_the_folder_are_refused(studio, name):
    r = studio.post("/api/save", json={"name": name, "text": TEMPLATE, "version": None}, headers=H)
    assert r.status_code in (400, 404), r.text
    assert not (studio.folder.parent / "t.toml").exists()
    assert studio.get(f"/api/history/{name}").status_code in (400, 404)
    r = studio.post("/api/check", json={"name": name, "text": TEMPLATE}, headers=H)
    assert r.status_code == 400


def test_a_link_out_of_the_folder_is_refused(studio, tmp_path):
    outside = tmp_path / "outside.toml"
    outside.write_text(TEMPLATE, encoding="utf-8")
    (studio.folder / "link.toml").symlink_to(outside)
    r = studio.post("/api/save", json={"name": "link.toml", "text": TEMPLATE, "version": None}, headers=H)
    assert r.status_code == 400 and "outside" in r.json()["message"]
    assert studio.get("/api/templates/link.toml").status_code == 400
    assert outside.read_text(encoding="utf-8") == TEMPLATE


def test_writes_need_the_studio_header_and_a_local_host(studio):
    r = studio.post("/api/save", json={"name": "t.toml", "text": TEMPLATE, "version": None})
    assert r.status_code == 403 and "X-Verbalize-Studio" in r.json()["message"]
    r = studio.get("/api/files", headers={"Host": "evil.example:8765"})
    assert r.status_code == 403


def test_the_page_and_its_assets_are_served_without_any_url(studio):
    page = studio.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for name in ("studio.js", "studio.css"):
        asset = studio.get(f"/static/{name}")
        assert asset.status_code == 200 and "http://" not in asset.text and "https://" not in asset.text
    assert "http://" not in page.text and "https://" not in page.text
    assert studio.get("/static/..%2F__init__.py").status_code == 404


@pytest.mark.filterwarnings("ignore:calibration=.*collapsed:UserWarning")  # random tiny weights: some calibrations do
def test_all_calibrations_run(studio):
    studio.app.state.evaluator.calibrations = calibration_names()
    job = _evaluate(studio, TEMPLATE, size=24)
    assert job["status"] == "done", job["error"]
    assert set(job["results"]) >= {"none", "contextual", "domain", "batch", "temperature", "auto"}


def test_suggested_words_come_from_the_suggest_machinery(studio):
    body = {"name": "t.toml", "text": TEMPLATE, "data": "data.jsonl", "size": 24}
    out = studio.post("/api/suggest", json=body, headers=H).json()
    assert set(out["candidates"]) == {"negative", "positive"} and out["choice"] in ("input", "new", "input+new")
    assert set(out["chosen"]) == {"negative", "positive"} and 0 <= out["template_cv_accuracy"] <= 1
    own = {"bad", "negative", "good", "positive"}
    assert all(w not in own for words in out["candidates"].values() for w in words)  # only new words are offered
    assert any(out["candidates"].values())


def test_the_command_prints_its_url_and_serves_the_page(tmp_path, model_dir):
    import socket
    import subprocess
    import sys
    import urllib.request

    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "t.toml").write_text(TEMPLATE, encoding="utf-8")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "verbalize.cli", "studio", str(folder), "--model", model_dir, "--port", str(port)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "open http" in line:
                break
        assert f"verbalize studio: open http://127.0.0.1:{port}/" in "".join(lines)
        end = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/files", timeout=5) as r:
                    files = json.loads(r.read())
                break
            except OSError:
                assert time.monotonic() < end and proc.poll() is None, "".join(lines)
                time.sleep(0.1)
        assert files["templates"] == ["t.toml"] and files["data"] == []
    finally:
        proc.terminate()
        proc.wait(10)


def test_shutdown_cancels_the_running_evaluation_and_waits_for_it(tmp_path, gpt2_model, gpt2_tokenizer):
    app, _, _ = _build(tmp_path, gpt2_model, gpt2_tokenizer)
    evaluator = app.state.evaluator
    started, gate = threading.Event(), threading.Event()
    plain = evaluator.data["data.jsonl"]

    class Gated(type(plain)):
        def rows(self, template, size):
            started.set()
            gate.wait(10)
            return super().rows(template, size)

    evaluator.data["data.jsonl"] = Gated(plain.path, plain.column, plain.label_column, plain.fields)
    with TestClient(app) as client:
        body = {"name": "t.toml", "text": TEMPLATE, "data": "data.jsonl", "size": 6}
        job_id = client.post("/api/evaluate", json=body, headers=H).json()["id"]
        job = evaluator.jobs[job_id]
        assert started.wait(10)
        threading.Timer(0.3, gate.set).start()  # the worker is busy when the app shuts down
    assert job.status == "cancelled" and not any(
        t.is_alive() for t in threading.enumerate() if t.name.startswith("studio-")
    )


def test_the_label_distribution_shows_the_prior_estimate_beside_the_true_one(studio):
    """Issue 23: the studio shows the estimated label distribution beside the true and predicted ones."""
    studio.app.state.evaluator.calibrations = ["none", "prior"]
    job = _evaluate(studio, TEMPLATE, size=24)
    assert job["status"] == "done", job["error"]
    texts, labels = [t for t, _ in ROWS[:24]], [y for _, y in ROWS[:24]]
    for name in ("none", "prior"):
        d = job["results"][name]["label_distribution"]
        assert d["labels"] == ["negative", "positive"]
        assert d["true"] == pytest.approx([labels.count("negative") / 24, labels.count("positive") / 24])
        predictions = job["results"][name]["predictions"]
        assert d["predicted"] == pytest.approx([predictions.count(c) / 24 for c in ("negative", "positive")])
    assert job["results"]["none"]["label_distribution"]["estimated"] is None
    model = studio.app.state.evaluator.scorer
    template = str(studio.folder / "t.toml")
    clf = Verbalizer(template=template, model=model, calibration="prior", random_state=0).fit(texts, labels)
    clf.predict_proba(texts)
    want = clf.calibration_report_
    got = job["results"]["prior"]["label_distribution"]
    assert got["estimated"] == pytest.approx(want["estimated_prior"], abs=1e-4)
    assert got["n_estimated"] == 24 and got["shifted"] == want["shifted"]
