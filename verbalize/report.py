"""An evaluation's numbers, plots and error table, as data and as one self-contained HTML file.

:func:`summarize` turns (true labels, probabilities, texts, classes) into a JSON-ready dict: accuracy with a
Wilson score interval, macro-F1 with a bootstrap percentile interval, the confusion matrix, per-class
precision/recall/F1, reliability bins with the expected calibration error, and the wrong texts sorted by
how confidently wrong. :func:`render_html` draws it as one HTML page (inline CSS, inline SVG, no script,
nothing fetched from the network); the numbers are also embedded as a JSON island
(``<script type="application/json" id="verbalize-report">``) that tools and tests read back.
``verbalize eval --report`` and the template studio both use these functions, so their numbers agree.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import f1_score, precision_recall_fscore_support

from verbalize.atomic import write_text
from verbalize.metrics import expected_calibration_error, reliability

Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval
CI_METHODS = {
    "accuracy": "Wilson score interval, 95%",
    "macro_f1": "bootstrap percentile interval, 95% (1,000 resamples of the rows, seed 0)",
}


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n`` (95% by default); (0, 1) when ``n`` is 0.

    Examples
    --------
    >>> [round(v, 4) for v in wilson_interval(8, 10)]
    [0.4902, 0.9433]
    """
    if n == 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


def _macro_f1_rows(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Macro-F1 of each row of (b, n) index arrays, over the classes present in its y or pred (sklearn's rule)."""
    b = y.shape[0]
    cells = (np.arange(b)[:, None] * k * k + y * k + pred).ravel()
    cm = np.bincount(cells, minlength=b * k * k).reshape(b, k, k)  # (b, true, pred)
    tp = np.diagonal(cm, axis1=1, axis2=2)  # (b, k)
    true_n, pred_n = cm.sum(axis=2), cm.sum(axis=1)  # (b, k) each
    denom = true_n + pred_n
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    present = denom > 0
    return f1.sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def bootstrap_macro_f1(
    y: np.ndarray, pred: np.ndarray, k: int, n_boot: int = 1000, random_state: int = 0
) -> tuple[float, float]:
    """A 95% bootstrap percentile interval of macro-F1 (rows resampled with replacement)."""
    n = len(y)
    if n == 0:
        return 0.0, 1.0
    idx = np.random.default_rng(random_state).integers(0, n, size=(n_boot, n))  # (n_boot, n)
    scores = _macro_f1_rows(y[idx], pred[idx], k)
    lo, hi = np.percentile(scores, [2.5, 97.5])
    return float(lo), float(hi)


def summarize(
    y_true: Sequence[str],
    proba: np.ndarray,
    classes: Sequence[str],
    texts: Sequence[Any] | None = None,
    *,
    n_bins: int = 10,
    max_errors: int = 200,
) -> dict[str, Any]:
    """The numbers of one evaluation, ready for JSON.

    Parameters
    ----------
    y_true : sequence of str
        The true label of each row (each one of ``classes``).
    proba : ndarray of shape (n, len(classes))
        Predicted probabilities, columns in the order of ``classes``; the prediction is the argmax.
    classes : sequence of str
        The labels.
    texts : sequence, optional
        Each row's text (a str or a mapping of fields), shown in the error table.
    n_bins : int, default 10
        Equal-width confidence bins of the reliability diagram and the ECE.
    max_errors : int, default 200
        The most confidently wrong rows kept in ``errors``.

    Returns
    -------
    dict
        ``n``, ``classes``, ``accuracy``, ``accuracy_ci``, ``macro_f1`` (over the labels present in the true
        or predicted labels, as scikit-learn's ``f1_score(average="macro")``), ``macro_f1_ci``, ``ci_methods``,
        ``confusion`` (rows: true, columns: predicted), ``per_class`` (precision, recall, f1, support),
        ``ece``, ``reliability`` (count, confidence, accuracy per bin), ``predictions``, ``errors``
        (text, label, prediction, confidence, probabilities; most confident first) and ``n_errors``.
    """
    classes = [str(c) for c in classes]
    proba = np.asarray(proba, dtype=float)  # (n, k)
    lookup = {c: i for i, c in enumerate(classes)}
    y = np.array([lookup[str(v)] for v in y_true], dtype=int)
    pred = proba.argmax(axis=1) if len(y) else np.zeros(0, dtype=int)
    k, n = len(classes), len(y)
    correct = int((y == pred).sum())
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=range(k), zero_division=0)
    bins = reliability(proba, y, n_bins) if n else {"count": np.zeros(n_bins)}
    cm = np.bincount(y * k + pred, minlength=k * k).reshape(k, k)  # (true, pred)
    return {
        "n": n,
        "classes": classes,
        "accuracy": correct / n if n else 0.0,
        "accuracy_ci": list(wilson_interval(correct, n)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)) if n else 0.0,
        "macro_f1_ci": list(bootstrap_macro_f1(y, pred, k)),
        "ci_methods": dict(CI_METHODS),
        "confusion": cm.tolist(),
        "per_class": [
            {"label": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        ],
        "ece": expected_calibration_error(proba, y, n_bins) if n else 0.0,
        "reliability": {key: np.asarray(v).tolist() for key, v in bins.items()},
        "predictions": [classes[i] for i in pred],
        "n_errors": n - correct,
        "errors": _errors(y, proba, classes, texts, max_errors),
    }


def label_distribution(
    classes: Sequence[str], y_true: Sequence[str], y_pred: Sequence[str], calibration_report: dict[str, Any] | None
) -> dict[str, Any]:
    """Each label's share of the rows: true, predicted, and the prior a label-prior calibration estimated.

    ``estimated`` (columns follow ``classes``) is ``calibration_report["estimated_prior"]`` (``"prior"``, or
    ``"auto"`` that chose it) or None; ``n_estimated`` the texts it was estimated on, ``shifted`` whether it
    moved the scores (it does not when within ``min_skew`` of uniform).
    """
    labels = [str(c) for c in classes]
    true, pred = [str(v) for v in y_true], [str(v) for v in y_pred]
    report = calibration_report or {}
    estimate = report.get("estimated_prior")
    return {
        "labels": labels,
        "true": [true.count(c) / max(len(true), 1) for c in labels],
        "predicted": [pred.count(c) / max(len(pred), 1) for c in labels],
        "estimated": None if estimate is None else [float(v) for v in estimate],
        "n_estimated": report.get("n_texts") if estimate is not None else None,
        "shifted": report.get("shifted") if estimate is not None else None,
    }


def _errors(y: np.ndarray, proba: np.ndarray, classes: list[str], texts: Sequence[Any] | None, most: int) -> list:
    pred = proba.argmax(axis=1) if len(y) else y
    wrong = np.flatnonzero(pred != y)
    order = wrong[np.argsort(-proba[wrong, pred[wrong]], kind="stable")][:most]  # most confidently wrong first
    return [
        {
            "row": int(i),
            "text": texts[i] if texts is not None else "",
            "label": classes[y[i]],
            "prediction": classes[pred[i]],
            "confidence": float(proba[i, pred[i]]),
            "probabilities": {c: float(proba[i, j]) for j, c in enumerate(classes)},
        }
        for i in order
    ]


# -- drawing ------------------------------------------------------------------------------------------
CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5rem auto;max-width:72rem;
padding:0 1rem;color:#1b1f24;background:#fff}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem}
table{border-collapse:collapse;margin:.4rem 0}td,th{border:1px solid #ccd;padding:.25rem .5rem;text-align:right}
th{background:#f2f4f8}td.text{text-align:left;max-width:40rem;white-space:pre-wrap}
.big{font-size:1.3rem;font-weight:600}.note{color:#555;font-size:.85rem}
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{border:1px solid #ccd;border-radius:6px;padding:.6rem 1rem}
svg text{font:12px system-ui,sans-serif}
"""


def _esc(value: Any) -> str:
    return html.escape(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


def svg_confusion(summary: dict[str, Any]) -> str:
    """The confusion matrix as an inline SVG heat map (rows: true label, columns: predicted label)."""
    classes, cm = summary["classes"], np.asarray(summary["confusion"])
    k, cell, left, top = len(classes), 48, 110, 80
    most = max(int(cm.max()) if cm.size else 0, 1)
    w, h = left + k * cell + 10, top + k * cell + 10
    parts = [f'<svg role="img" aria-label="confusion matrix" width="{w}" height="{h}">']
    parts.append(f'<text x="{left + k * cell / 2}" y="14" text-anchor="middle">predicted</text>')
    for j, c in enumerate(classes):
        x = left + j * cell + cell / 2
        parts.append(f'<text x="{x}" y="{top - 6}" transform="rotate(-40 {x} {top - 6})">{_esc(c[:14])}</text>')
    for i, c in enumerate(classes):
        y = top + i * cell
        parts.append(f'<text x="{left - 6}" y="{y + cell / 2 + 4}" text-anchor="end">{_esc(c[:14])}</text>')
        for j in range(k):
            v = int(cm[i, j])
            shade = 1 - 0.75 * v / most
            fill = (
                f"rgb({int(255 * shade)},{int(255 * shade)},255)"
                if i != j
                else f"rgb({int(255 * shade)},230,{int(255 * shade)})"
            )
            ink = "#fff" if v / most > 0.6 else "#000"
            parts.append(
                f'<rect x="{left + j * cell}" y="{y}" width="{cell}" height="{cell}" fill="{fill}" stroke="#fff"/>'
                f'<text x="{left + j * cell + cell / 2}" y="{y + cell / 2 + 4}" text-anchor="middle" fill="{ink}"'
                f' data-cell="{i},{j}">{v}</text>'
            )
    parts.append("</svg>")
    return "".join(parts)


def svg_reliability(summary: dict[str, Any]) -> str:
    """The reliability diagram as an inline SVG: accuracy per confidence bin against the diagonal."""
    rel = summary["reliability"]
    counts = rel.get("count", [])
    size, pad = 260, 36
    n_bins = max(len(counts), 1)
    bar = size / n_bins
    parts = [
        f'<svg role="img" aria-label="reliability diagram" width="{size + pad + 10}" height="{size + pad + 10}">',
        f'<rect x="{pad}" y="10" width="{size}" height="{size}" fill="#fafbfd" stroke="#99a"/>',
        f'<line x1="{pad}" y1="{10 + size}" x2="{pad + size}" y2="10" stroke="#c33" stroke-dasharray="4 3"/>',
    ]
    for b, count in enumerate(counts):
        if count <= 0:
            continue
        acc = rel["accuracy"][b]
        hgt = acc * size
        parts.append(
            f'<rect x="{pad + b * bar + 1}" y="{10 + size - hgt}" width="{bar - 2}" height="{hgt}" fill="#4a7bd0">'
            f"<title>confidence {rel['confidence'][b]:.2f}: accuracy {acc:.2f} on {int(count)} rows</title></rect>"
        )
    parts.append(f'<text x="{pad + size / 2}" y="{size + pad + 4}" text-anchor="middle">confidence</text>')
    parts.append(f'<text x="12" y="{10 + size / 2}" transform="rotate(-90 12 {10 + size / 2})">accuracy</text>')
    parts.append("</svg>")
    return "".join(parts)


def _metric_cards(s: dict[str, Any]) -> str:
    acc, f1 = s["accuracy_ci"], s["macro_f1_ci"]
    return (
        '<div class="cards">'
        f'<div class="card">accuracy<br><span class="big" data-metric="accuracy">{s["accuracy"]:.4f}</span>'
        f'<br><span class="note">95% CI {acc[0]:.3f} to {acc[1]:.3f}</span></div>'
        f'<div class="card">macro-F1<br><span class="big" data-metric="macro_f1">{s["macro_f1"]:.4f}</span>'
        f'<br><span class="note">95% CI {f1[0]:.3f} to {f1[1]:.3f}</span></div>'
        f'<div class="card">ECE<br><span class="big" data-metric="ece">{s["ece"]:.4f}</span>'
        f'<br><span class="note">{len(s["reliability"].get("count", []))} equal-width bins</span></div>'
        f'<div class="card">rows<br><span class="big" data-metric="n">{s["n"]}</span>'
        f'<br><span class="note">{s["n_errors"]} wrong</span></div></div>'
    )


def per_class_table(s: dict[str, Any]) -> str:
    """Per-class precision, recall, F1 and support as an HTML table."""
    rows = "".join(
        f"<tr><th scope=row>{_esc(c['label'])}</th><td>{c['precision']:.3f}</td><td>{c['recall']:.3f}</td>"
        f"<td>{c['f1']:.3f}</td><td>{c['support']}</td></tr>"
        for c in s["per_class"]
    )
    return f"<table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>{rows}</table>"


def errors_table(s: dict[str, Any]) -> str:
    """The wrong rows, most confidently wrong first, with each label's probability."""
    classes = s["classes"]
    head = "".join(f"<th>p({_esc(c)})</th>" for c in classes)
    rows = "".join(
        f'<tr><td>{e["row"] + 1}</td><td class="text">{_esc(e["text"])}</td><td>{_esc(e["label"])}</td>'
        f"<td>{_esc(e['prediction'])}</td>"
        + "".join(f"<td>{e['probabilities'][c]:.3f}</td>" for c in classes)
        + "</tr>"
        for e in s["errors"]
    )
    return f"<table><tr><th>row</th><th>text</th><th>label</th><th>predicted</th>{head}</tr>{rows}</table>"


def render_html(summary: dict[str, Any], title: str = "verbalize evaluation", subtitle: str = "") -> str:
    """One self-contained HTML page of :func:`summarize`'s numbers (no script runs, nothing is fetched)."""
    island = json.dumps(summary, ensure_ascii=False).replace("<", "\\u003c")  # no "</script>" inside
    shown = len(summary["errors"])
    more = f" (the {shown} most confident of {summary['n_errors']})" if shown < summary["n_errors"] else ""
    methods = summary["ci_methods"]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{_esc(title)}</h1><p class=note>{_esc(subtitle)}</p>"
        f"{_metric_cards(summary)}"
        f"<p class=note>Accuracy: {_esc(methods['accuracy'])}. Macro-F1: {_esc(methods['macro_f1'])}; over the labels"
        " that occur among the true or predicted labels. ECE: expected calibration error of the top probability.</p>"
        f"<h2>Confusion matrix</h2>{svg_confusion(summary)}"
        f"<h2>Per class</h2>{per_class_table(summary)}"
        f"<h2>Reliability</h2>{svg_reliability(summary)}"
        f"<h2>Wrong texts, most confidently wrong first{more}</h2>{errors_table(summary)}"
        f'<script type="application/json" id="verbalize-report">{island}</script>'
        "</body></html>\n"
    )


def write_report(
    path: str | Path, summary: dict[str, Any], title: str = "verbalize evaluation", subtitle: str = ""
) -> Path:
    """Write :func:`render_html`'s page to ``path`` atomically (the file appears whole, or not at all)."""
    return write_text(path, render_html(summary, title, subtitle))
