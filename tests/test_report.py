"""``verbalize.report`` and ``verbalize eval --report``: the numbers in the HTML equal scikit-learn's on the same
predictions, and the page is self-contained (no URL, no script source, no external style)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import numpy as np
import pytest
import reference
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from verbalize.cli.main import main
from verbalize.report import render_html, summarize, wilson_interval

LABELS = {"negative": ["bad", "negative"], "positive": ["good", "positive"]}
TEXTS = ["good film", "bad film", "a great review", "terrible and bad", "the plot was bad", "good good", "fine"]
GOLD = ["positive", "negative", "negative", "negative", "positive", "positive", "negative"]


class _Page(HTMLParser):
    """The JSON island, every data-metric's text, and every attribute value (to look for URLs)."""

    def __init__(self) -> None:
        super().__init__()
        self.island, self.metrics, self.attrs, self.tags = "", {}, [], []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        d = dict(attrs)
        self.attrs += [v or "" for v in d.values()]
        if d.get("id") == "verbalize-report":
            self._in = "island"
        elif "data-metric" in d:
            self._in = d["data-metric"]

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "island":
            self.island += data
        elif self._in:
            self.metrics[self._in] = data


def _parse(page: str) -> tuple[dict, _Page]:
    parser = _Page()
    parser.feed(page)
    return json.loads(parser.island), parser


def _assert_self_contained(page: str, parser: _Page) -> None:
    assert not re.search(r"https?:", page, re.IGNORECASE)
    assert "link" not in parser.tags and "img" not in parser.tags and "iframe" not in parser.tags
    assert "@import" not in page and "url(" not in page
    assert page.count("<script") == 1 and '<script type="application/json"' in page  # data, never code


def _random_case(seed: int, n: int = 300, k: int = 4):
    rng = np.random.default_rng(seed)
    classes = [f"c{i}" for i in range(k)]
    logits = rng.normal(size=(n, k)) * 2
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y_idx = np.where(rng.random(n) < 0.6, proba.argmax(axis=1), rng.integers(0, k, n))  # ~70% right
    return classes, proba, [classes[i] for i in y_idx], [f"text {i} <b>&" for i in range(n)]


def _ece(proba, y_idx, n_bins=10):
    conf, right = proba.max(axis=1), proba.argmax(axis=1) == y_idx
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (conf >= lo) & ((conf < hi) if b < n_bins - 1 else (conf <= hi))
        if inside.any():
            total += inside.mean() * abs(right[inside].mean() - conf[inside].mean())
    return total


@pytest.mark.parametrize("seed", [0, 1])
def test_summary_and_page_equal_sklearn(seed):
    classes, proba, y, texts = _random_case(seed)
    pred = [classes[i] for i in proba.argmax(axis=1)]
    data, parser = _parse(render_html(summarize(y, proba, classes, texts)))
    assert data["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert data["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-12)
    assert data["confusion"] == confusion_matrix(y, pred, labels=classes).tolist()
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=classes, zero_division=0)
    for i, row in enumerate(data["per_class"]):
        assert (row["label"], row["support"]) == (classes[i], s[i])
        assert [row["precision"], row["recall"], row["f1"]] == pytest.approx([p[i], r[i], f[i]], abs=1e-12)
    y_idx = np.array([classes.index(v) for v in y])
    assert data["ece"] == pytest.approx(_ece(proba, y_idx), abs=1e-9)
    assert float(parser.metrics["accuracy"]) == pytest.approx(accuracy_score(y, pred), abs=5e-5)
    assert float(parser.metrics["macro_f1"]) == pytest.approx(f1_score(y, pred, average="macro"), abs=5e-5)
    lo, hi = data["macro_f1_ci"]
    assert lo < data["macro_f1"] < hi and hi - lo < 0.25
    assert data["accuracy_ci"] == pytest.approx(
        list(wilson_interval(int(sum(a == b for a, b in zip(y, pred, strict=True))), 300))
    )
    _assert_self_contained(render_html(summarize(y, proba, classes, texts)), parser)


def test_errors_are_the_wrong_rows_most_confident_first():
    classes, proba, y, texts = _random_case(2, n=50)
    data = summarize(y, proba, classes, texts)
    wrong = [i for i in range(50) if classes[proba[i].argmax()] != y[i]]
    assert sorted(e["row"] for e in data["errors"]) == wrong and data["n_errors"] == len(wrong)
    conf = [e["confidence"] for e in data["errors"]]
    assert conf == sorted(conf, reverse=True) and conf[0] == pytest.approx(max(proba[wrong].max(axis=1)))
    first = data["errors"][0]
    assert first["text"] == texts[first["row"]] and first["probabilities"]["c0"] == proba[first["row"], 0]
    page = render_html(data)
    assert f"text {first['row']} &lt;b&gt;&amp;" in page and "<b>" not in page  # texts are escaped, never markup


def test_wilson_interval_known_values():
    # Textbook values (Newcombe 1998, Table I): 81/263 -> 0.2553 to 0.3662; 0/10 -> 0 to 0.2775.
    assert [round(v, 4) for v in wilson_interval(81, 263)] == [0.2553, 0.3662]
    assert [round(v, 4) for v in wilson_interval(0, 10)] == [0.0, 0.2775]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, gpt2_model, gpt2_tokenizer):
    path = tmp_path_factory.mktemp("tiny-gpt2")
    gpt2_model.save_pretrained(path)
    gpt2_tokenizer.save_pretrained(path)
    return str(path)


def test_eval_report_numbers_equal_sklearn_on_the_reference_predictions(
    tmp_path, tmp_template, model_dir, gpt2_model, gpt2_tokenizer, capsys
):
    data_file = tmp_path / "data.jsonl"
    data_file.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(TEXTS, GOLD, strict=True)))
    out = tmp_path / "out" / "report.html"
    args = ["eval", str(tmp_template()), str(data_file), "--model", model_dir, "--report", str(out)]
    assert main(args) == 0
    assert f"report written to {out}" in capsys.readouterr().err
    scores = reference.label_scores(gpt2_model, gpt2_tokenizer, [f"Review: {t}\nSentiment:" for t in TEXTS], LABELS)
    proba = np.exp(reference.log_softmax(scores))
    pred = [list(LABELS)[i] for i in proba.argmax(axis=1)]
    page = out.read_text(encoding="utf-8")
    data, parser = _parse(page)
    assert data["n"] == len(TEXTS) and data["predictions"] == pred
    assert data["accuracy"] == accuracy_score(GOLD, pred)
    assert data["macro_f1"] == pytest.approx(f1_score(GOLD, pred, average="macro"), abs=1e-12)
    assert data["confusion"] == confusion_matrix(GOLD, pred, labels=list(LABELS)).tolist()
    wrong = {e["text"]: e for e in data["errors"]}
    assert wrong and set(wrong) == {t for t, g, p in zip(TEXTS, GOLD, pred, strict=True) if g != p}
    for i, t in enumerate(TEXTS):
        if t in wrong:
            assert list(wrong[t]["probabilities"].values()) == pytest.approx(proba[i], abs=1e-4)
    _assert_self_contained(page, parser)
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # written whole: no temporary left


def test_eval_report_path_is_refused_before_the_model_loads(tmp_path, tmp_template, capsys):
    data_file = tmp_path / "data.jsonl"
    data_file.write_text('{"text": "good", "label": "positive"}\n')
    args = ["eval", str(tmp_template()), str(data_file), "--model", str(tmp_path / "no-such-model")]
    assert main([*args, "--report", str(tmp_path / "report.txt")]) == 2
    assert "name it with .html" in capsys.readouterr().err
    (tmp_path / "folder.html").mkdir()
    assert main([*args, "--report", str(tmp_path / "folder.html")]) == 2
    assert "is a directory" in capsys.readouterr().err
