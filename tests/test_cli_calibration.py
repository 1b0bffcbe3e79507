"""`verbalize eval --calibration` fits as the API's ``fit(X, y)`` does (issue 21, bar 3)."""

from __future__ import annotations

import json

import pytest

from verbalize import Verbalizer
from verbalize.cli.main import main

TOPICS = """
name = "topics"
prompt = "Text: {text}\\nTopic:"
[labels]
world = ["world"]
sports = ["sports"]
business = ["business"]
technology = ["technology"]
"""
TEXTS = [
    "the team won the game",
    "world leaders met",
    "profits rose",
    "phones are faster",
    "the player scored a goal",
    "the market fell today",
    "new technology",
    "the economy",
    "a great film",
    "the plot was bad",
    "leaders discuss news",
    "business news today",
    "sports news",
    "faster phones",
    "the critic wrote",
    "the end",
]


def _write(path, texts, labels):
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels, strict=True)))
    return str(path)


def _accuracy(out: str) -> float:
    line = [x for x in out.splitlines() if x.startswith("n=")][-1]
    return float(dict(f.split("=") for f in line.split())["accuracy"])


def _chosen(err: str) -> str:
    line = [x for x in err.splitlines() if x.startswith("calibration auto chose ")][-1]
    return line.removeprefix("calibration auto chose ").split()[0].rstrip(":")


@pytest.mark.parametrize("labels_from", ["raw", "batch"])
def test_eval_auto_equals_the_api_fit_on_the_same_rows(tmp_path, tmp_template, model_dir, capsys, labels_from):
    """The CLI once fitted ``auto`` on the texts alone (batch calibration) where the API cross-validates on the
    labels: with labels the raw scores predict, the API keeps the raw ranking and the CLI lost accuracy."""
    template = str(tmp_template(TOPICS))
    base = Verbalizer(template=template, model=model_dir, calibration=None if labels_from == "raw" else "batch")
    labels = list(base.fit(TEXTS).predict(TEXTS))
    api = Verbalizer(template=template, model=model_dir, calibration="auto", random_state=0).fit(TEXTS, labels)
    api_chosen, api_accuracy = api.calibration_report_["chosen"], api.score(TEXTS, labels)
    data = _write(tmp_path / "data.jsonl", TEXTS, labels)
    assert main(["eval", template, data, "--model", model_dir, "--calibration", "auto"]) == 0
    captured = capsys.readouterr()
    assert _accuracy(captured.out) == round(api_accuracy, 4)
    assert _chosen(captured.err) == str(api_chosen)
    if labels_from == "raw":  # the labels decide: batch calibration (the choice without labels) is not the API's
        assert api_chosen != "batch"
    assert main(["eval", template, data, "--model", model_dir, "--calibration", "auto", "--seed", "0"]) == 0
    assert _accuracy(capsys.readouterr().out) == round(api_accuracy, 4)  # --seed is random_state


def test_eval_fit_file_fits_on_other_rows_as_the_api_does(tmp_path, tmp_template, model_dir, capsys):
    template = str(tmp_template(TOPICS))
    train, test = TEXTS[:12], TEXTS[12:] + TEXTS[:4]
    labels = list(Verbalizer(template=template, model=model_dir).predict(TEXTS))
    y_train, y_test = labels[:12], labels[12:] + labels[:4]
    api = Verbalizer(template=template, model=model_dir, calibration="auto", random_state=0).fit(train, y_train)
    fit_file = _write(tmp_path / "train.jsonl", train, y_train)
    data = _write(tmp_path / "test.jsonl", test, y_test)
    args = ["eval", template, data, "--model", model_dir, "--calibration", "auto", "--fit-file", fit_file]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert _chosen(captured.err) == str(api.calibration_report_["chosen"])
    assert f"rows of {fit_file}" in captured.err
    assert _accuracy(captured.out) == round(api.score(test, y_test), 4)


def test_eval_temperature_is_fitted_on_the_labels_and_none_is_accepted(tmp_path, tmp_template, model_dir, capsys):
    """temperature needs labels: eval once never fitted it (only calibrations that use unlabeled texts)."""
    template = str(tmp_template(TOPICS))
    labels = list(Verbalizer(template=template, model=model_dir).predict(TEXTS))
    data = _write(tmp_path / "data.jsonl", TEXTS, labels)
    with pytest.warns(UserWarning, match="temperature"):  # the tiny model's fitted temperature hits its bound
        assert main(["eval", template, data, "--model", model_dir, "--calibration", "temperature"]) == 0
    captured = capsys.readouterr()
    assert f"calibration temperature fitted on 16 labeled rows of {data}" in captured.err
    assert _accuracy(captured.out) == 1.0  # temperature keeps the raw ranking: the labels are the raw predictions
    assert main(["eval", template, data, "--model", model_dir, "--calibration", "none"]) == 0
    captured = capsys.readouterr()
    assert _accuracy(captured.out) == 1.0 and "calibration" not in captured.err
    bad = tmp_path / "missing.jsonl"
    args = ["eval", template, data, "--model", model_dir, "--calibration", "auto", "--fit-file", str(bad)]
    assert main(args) == 2
    assert "missing.jsonl" in capsys.readouterr().err


def test_predict_takes_calibration_none_as_no_calibration(tmp_path, tmp_template, model_dir, capsys):
    template = str(tmp_template(TOPICS))
    src = tmp_path / "in.txt"
    src.write_text("\n".join(TEXTS[:4]) + "\n")
    assert main(["predict", template, str(src), "--model", model_dir, "--calibration", "none", "--no-progress"]) == 0
    got = [json.loads(line)["prediction"] for line in capsys.readouterr().out.splitlines()]
    assert got == list(Verbalizer(template=template, model=model_dir).predict(TEXTS[:4]))


def test_fit_file_without_a_calibration_to_fit_is_refused(tmp_path, tmp_template, model_dir, capsys):
    template = str(tmp_template(TOPICS))
    data = _write(tmp_path / "data.jsonl", TEXTS[:2], ["world", "sports"])
    assert main(["eval", template, data, "--model", model_dir, "--fit-file", data]) == 2
    assert "no calibration is fitted here: give --calibration NAME" in capsys.readouterr().err
