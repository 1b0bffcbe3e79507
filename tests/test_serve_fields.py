"""`verbalize serve` with templates of several fields: rows as JSON objects keyed by the template's fields.

A pair template (two fields, one- and multi-token label words) is served over real HTTP (uvicorn on a
loopback port) next to a one-field template, from a folder: it warms up, ``/v1/templates`` shows its
fields, and its answers equal offline ``Verbalizer.predict_proba`` on the same rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
from serve_support import tiny  # noqa: E402, F401  (fixture, imported so pytest finds it)

pytest.register_assert_rewrite("serve_support")

from serve_support import SENTIMENT, Running, get, post, proba_of  # noqa: E402

from verbalize import Client, Verbalizer  # noqa: E402
from verbalize.client import ServiceError  # noqa: E402
from verbalize.serve import ServeConfig, create_app  # noqa: E402

PAIR = (
    'name = "pair"\nfields = ["review1", "review2"]\n'
    'prompt = "Review: {review1}\\nReview: {review2}\\nSentiment:"\nsample_text = "a film"\n'
    '[labels]\nnegative = ["bad", "bad film"]\npositive = ["good"]\n'
)
ROWS = [
    {"review1": "the acting is good", "review2": "the story is bad"},
    {"review1": "a great film", "review2": "I hated it"},
    {"review1": "the team won", "review2": "profits rose"},
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pair_folder")
    (root / "pair.toml").write_text(PAIR, encoding="utf-8")
    (root / "senti.toml").write_text(SENTIMENT, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def pair_server(tiny: Any, folder: Path) -> Iterator[Running]:
    config = ServeConfig(window_ms=10, reload_interval_s=0)
    srv = Running(create_app([str(folder)], model=tiny, config=config)).start()
    yield srv
    srv.stop()


def test_a_folder_holding_a_pair_template_warms_up_and_lists_its_fields(pair_server: Running):
    status, listing = get(pair_server, "/v1/templates")
    assert status == 200 and listing["problems"] == [], listing["problems"]
    fields = {t["name"]: t["fields"] for t in listing["templates"]}
    assert fields == {"pair": ["review1", "review2"], "senti": ["text"]}


def test_pair_rows_over_http_equal_offline(pair_server: Running, folder: Path, tiny: Any):
    status, _, answer = post(pair_server, {"template": "pair", "inputs": ROWS})
    assert status == 200, answer
    want = Verbalizer(template=str(folder / "pair.toml"), model=tiny).predict_proba(ROWS)
    np.testing.assert_allclose(proba_of(answer), want, atol=1e-5, rtol=0)
    assert [p["label"] for p in answer["predictions"]] == list(np.array(answer["labels"])[want.argmax(1)])
    # a one-field template in the same service still takes texts and {"text": ...} objects
    assert post(pair_server, {"template": "senti", "texts": ["a great film"]})[0] == 200
    assert post(pair_server, {"template": "senti", "inputs": [{"text": "a great film"}]})[0] == 200


def test_client_sends_rows_keyed_by_field(pair_server: Running, folder: Path, tiny: Any):
    want = Verbalizer(template=str(folder / "pair.toml"), model=tiny).predict_proba(ROWS)
    client = Client(pair_server.url)
    np.testing.assert_allclose(client.predict_proba(ROWS, template="pair"), want, atol=1e-5, rtol=0)
    with pytest.raises(ServiceError, match=r"has no field 'review2'; template 'pair' has the fields") as info:
        client.predict([{"review1": "only one"}], template="pair")
    assert (info.value.code, info.value.location) == ("missing_field", "inputs[0]")
    with pytest.raises(TypeError, match="mix"):
        client.predict([ROWS[0], "a text"], template="pair")


BAD_ROWS = [
    ({"template": "pair", "inputs": [ROWS[0], {"review1": "x"}]}, "missing_field", "inputs[1]", "'review2'"),
    ({"template": "pair", "inputs": [{"review1": "x", "review2": "  "}]}, "empty_text", "inputs[0].review2", None),
    ({"template": "pair", "texts": ["only one text"]}, "fields_needed", "texts", "'review1', 'review2'"),
    ({"template": "senti", "inputs": [{"txt": "b"}]}, "unknown_field", "inputs[0]", "Did you mean 'text'"),
    ({"template": "senti", "inputs": [{"text": "a"}, {}]}, "missing_field", "inputs[1]", "no field 'text'"),
]


@pytest.mark.parametrize(("body", "code", "location", "named"), BAD_ROWS)
def test_bad_rows_name_the_field_and_the_templates_fields(
    pair_server: Running, body: Any, code: str, location: str, named: str | None
):
    status, _, answer = post(pair_server, body)
    assert (status, answer["error"]) == (422, code), answer
    assert answer["location"] == location
    if named is not None:
        assert named in answer["message"], answer["message"]
    fields = "['review1', 'review2']" if body["template"] == "pair" else "['text']"
    assert fields in answer["message"], answer["message"]


def test_openapi_documents_rows_keyed_by_field(pair_server: Running):
    spec = get(pair_server, "/openapi.json")[1]
    schema = spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    inputs = schema["properties"]["inputs"]
    assert "field" in inputs["description"] and "/v1/templates" in inputs["description"]
    assert any("review1" in str(e) for e in schema.get("examples", [])), schema


def test_a_saved_few_shot_pair_classifier_is_served_with_its_demonstrations(tiny: Any, tmp_path: Path):
    template = tmp_path / "pair.toml"
    template.write_text(PAIR, encoding="utf-8")
    clf = Verbalizer(template=str(template), model=tiny, demos_per_class=1, random_state=0)
    clf.fit(ROWS[:2], ["positive", "negative"])
    assert clf.demos_, "no demonstrations were chosen"
    saved = clf.save(tmp_path / "fewshot")
    srv = Running(create_app([str(saved)], config=ServeConfig(window_ms=1, reload_interval_s=0))).start()
    try:
        assert get(srv, "/v1/templates")[1]["templates"][0]["fields"] == ["review1", "review2"]
        status, _, answer = post(srv, {"template": "fewshot", "inputs": ROWS})
        assert status == 200, answer
        np.testing.assert_allclose(proba_of(answer), clf.predict_proba(ROWS), atol=1e-5, rtol=0)
    finally:
        srv.stop()
