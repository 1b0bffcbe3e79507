"""Named fields: templates with several placeholders, filled from dicts, tuples, DataFrames and file columns;
the {text} rules hold for each field (only fields are cut, longest first; values are data; content-free
calibration inputs replace the fields' content, never the template's words)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from verbalize import Template, Verbalizer
from verbalize.cli.main import main
from verbalize.engine.batching import encode_prompts
from verbalize.errors import InputError, TemplateError
from verbalize.prompting.template import load_template

PAIR = "Premise: {premise}\nHypothesis: {hypothesis}\nAnswer:"
LABELS = {"yes": ["yes"], "no": ["no"]}
ROWS = [
    {"premise": "A man plays {guitar}.", "hypothesis": "A man makes music."},
    {"premise": "The cat sleeps.", "hypothesis": "The cat runs fast."},
]
PAIR_TOML = f"""
fields = ["premise", "hypothesis"]
prompt = {json.dumps(PAIR)}
[labels]
yes = ["yes"]
no = ["no"]
"""


def pair_template() -> Template:
    return Template(prompt=PAIR, labels=LABELS, fields=("premise", "hypothesis"))


def test_fields_render_as_data_in_their_places():
    t = pair_template()
    want = "Premise: A man plays {guitar}.\nHypothesis: A man makes music.\nAnswer:"
    assert t.render(ROWS[0]) == want
    assert t.render(("A man plays {guitar}.", "A man makes music.")) == want  # a tuple in field order
    prompts, spans = t.spans(ROWS)
    for prompt, row, where in zip(prompts, ROWS, spans, strict=True):
        assert [prompt[a:b] for a, b in where] == [row["premise"], row["hypothesis"]]


def test_a_str_fills_every_field_keeping_the_template_words():  # how content-free inputs are rendered
    assert pair_template().render("N/A") == "Premise: N/A\nHypothesis: N/A\nAnswer:"


def test_a_missing_field_is_an_error_that_names_it():
    with pytest.raises(InputError, match="no field 'hypothesis'"):
        pair_template().render({"premise": "x"})
    with pytest.raises(InputError, match="2 fields"):
        pair_template().render(("only one",))


def test_fields_in_a_file_and_undeclared_placeholders(tmp_template):
    t = load_template(tmp_template(PAIR_TOML))
    assert t.fields == ("premise", "hypothesis")
    undeclared = PAIR_TOML.replace('fields = ["premise", "hypothesis"]', "")
    with pytest.raises(TemplateError, match=r"unknown placeholder \{premise\}.*Declare it: fields"):
        load_template(tmp_template(undeclared))
    twice = PAIR_TOML.replace("Answer:", "{premise} Answer:")
    with pytest.raises(TemplateError, match=r"must contain \{premise\} exactly once, found it 2 times"):
        load_template(tmp_template(twice))


def test_demonstrations_render_every_field():
    t = pair_template()
    assert t.render_demo(ROWS[1], "no") == "Premise: The cat sleeps.\nHypothesis: The cat runs fast.\nAnswer: no"


def test_truncation_cuts_the_longest_field_first_and_never_the_template(gpt2_tokenizer):
    tok, t = gpt2_tokenizer, pair_template()
    long_p = " ".join(f"word{i}" for i in range(60))
    short_h = "a short hypothesis"
    prompts, spans = t.spans([{"premise": long_p, "hypothesis": short_h}])
    n = len(tok(prompts[0])["input_ids"])
    ids = encode_prompts(tok, prompts, spans, max_length=n - 20).ids[0]
    assert len(ids) <= n - 20
    text = tok.decode(ids)
    assert text.startswith("Premise: word0 word1") and "\nHypothesis: a short hypothesis\nAnswer:" in text
    # Both long: both are cut, each keeps its start, the template's words all stay.
    prompts, spans = t.spans([{"premise": long_p, "hypothesis": long_p.replace("word", "term")}])
    n = len(tok(prompts[0])["input_ids"])
    text = tok.decode(encode_prompts(tok, prompts, spans, max_length=n // 2).ids[0])
    assert text.startswith("Premise: word0") and "\nHypothesis: term0" in text and text.endswith("\nAnswer:")
    assert "word59" not in text and "term59" not in text


def make(gpt2, **kw):
    return Verbalizer(**(dict(template=pair_template(), model=gpt2.scorer(batch_size=4)) | kw))


def test_dicts_tuples_and_dataframes_give_the_same_scores(gpt2):
    pd = pytest.importorskip("pandas")
    clf = make(gpt2)
    by_dict = clf.predict_log_proba(ROWS)
    by_tuple = clf.predict_log_proba([(r["premise"], r["hypothesis"]) for r in ROWS])
    by_frame = clf.predict_log_proba(pd.DataFrame(ROWS).assign(other=1))
    np.testing.assert_allclose(by_dict, by_tuple)
    np.testing.assert_allclose(by_dict, by_frame)
    with pytest.raises(InputError, match="no column 'hypothesis'"):
        clf.predict(pd.DataFrame([{"premise": "x"}]))
    with pytest.raises(InputError, match=r"X\[0\] is a str; the template's fields"):
        clf.predict(["a bare text"])


def test_contextual_calibration_keeps_the_template_words(gpt2, monkeypatch):
    clf = make(gpt2, calibration="contextual")
    seen = []
    original = clf._prompts

    def spy(texts, leave_out_same=False, demos=None):
        p = original(texts, leave_out_same, demos)
        seen.extend(p.prefix + x for x in p.prompts)
        return p

    monkeypatch.setattr(clf, "_prompts", spy)
    clf.fit()
    clf.predict(ROWS)
    content_free = [p for p in seen if "N/A" in p or "[MASK]" in p]
    assert content_free == [f"Premise: {x}\nHypothesis: {x}\nAnswer:" for x in ("N/A", "[MASK]")]
    assert "Premise: \nHypothesis: \nAnswer:" in seen  # the empty content-free input, template words kept
    assert all(p.startswith("Premise: ") and "\nHypothesis: " in p and p.endswith("\nAnswer:") for p in seen)


def test_few_shot_with_fields(gpt2):
    y = ["yes", "no"]
    clf = make(gpt2, demos_per_class=1, random_state=0).fit(ROWS, y)
    assert sorted(label for _, label in clf.demos_) == ["no", "yes"]
    assert clf.predict(ROWS).shape == (2,)


@pytest.fixture
def model_dir(tmp_path_factory, gpt2_model, gpt2_tokenizer):
    path = tmp_path_factory.mktemp("tiny-gpt2-fields")
    gpt2_model.save_pretrained(path)
    gpt2_tokenizer.save_pretrained(path)
    return str(path)


def test_cli_eval_uses_both_columns(tmp_path, tmp_template, model_dir, gpt2, capsys):
    data = tmp_path / "pairs.jsonl"
    rows = [r | {"label": y} for r, y in zip(ROWS * 3, ["yes", "no"] * 3, strict=True)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    template = str(tmp_template(PAIR_TOML))
    assert main(["eval", template, str(data), "--model", model_dir, "--calibration", "contextual"]) == 0
    out = capsys.readouterr().out
    want = (make(gpt2, calibration="contextual").predict(ROWS * 3) == np.array(["yes", "no"] * 3)).mean()
    assert f"n=6  accuracy={want:.4f}" in out
    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text("".join(json.dumps({"sentence1": r["premise"], **r}) + "\n" for r in rows))
    args = ["eval", template, str(renamed), "--model", model_dir, "--calibration", "contextual"]
    assert main([*args, "--field", "premise=sentence1"]) == 0
    assert f"n=6  accuracy={want:.4f}" in capsys.readouterr().out
    missing = tmp_path / "missing.jsonl"
    missing.write_text("".join(json.dumps({"premise": r["premise"], "label": "yes"}) + "\n" for r in rows))
    assert main(["eval", template, str(missing), "--model", model_dir]) != 0
    assert "no column 'hypothesis' for the template's field {hypothesis}" in capsys.readouterr().err


def test_cli_predict_maps_columns_to_fields(tmp_path, tmp_template, model_dir, gpt2, capsys):
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(json.dumps({"id": i, "p": r["premise"], "h": r["hypothesis"]}) + "\n" for i, r in enumerate(ROWS))
    )
    template, out = str(tmp_template(PAIR_TOML)), tmp_path / "out.jsonl"
    args = ["predict", template, str(data), "--model", model_dir, "--no-progress", "-o", str(out)]
    assert main([*args, "--field", "premise=p"]) != 0  # hypothesis has no column of its name
    assert "no column 'hypothesis' for the template's field {hypothesis}" in capsys.readouterr().err
    assert not out.exists()  # a setup error, before any row
    assert main([*args, "--field", "premise=p", "--field", "hypothesis=h"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1] and [r["p"] for r in rows] == [r["premise"] for r in ROWS]
    want = make(gpt2).predict_proba(ROWS)
    labels = make(gpt2).fit().classes_
    for row, p in zip(rows, want, strict=True):
        assert row["prediction"] == labels[p.argmax()]
        assert abs(row["probability"] - p.max()) < 1e-5
