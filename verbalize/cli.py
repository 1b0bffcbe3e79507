"""`verbalize check | predict | eval`: a thin command line over the public API."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

import numpy as np

from .errors import TemplateError, VerbalizeError
from .estimator import Verbalizer, _resolve_template
from .inputs import read_table, text_problem, write_table
from .scoring import Scorer

CHUNK = 512


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        return int(args.func(args))
    except TemplateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (VerbalizeError, FileNotFoundError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="verbalize", description="Prompt-based text classification with causal LMs.")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("template", help="template file (TOML)")
        sp.add_argument("--model", default=None, help="hub id, local directory or .gguf file (default: embedded)")

    c = sub.add_parser("check", help="validate a template, show its prompt and how label words tokenize")
    common(c)
    c.add_argument("--text", default=None, help="sample text to render (default: the template's sample_text)")
    c.set_defaults(func=_check)

    r = sub.add_parser("predict", help="classify the texts of a CSV / TSV / JSONL / plain-text file")
    common(r)
    r.add_argument("input", help="input file: .csv, .tsv, .jsonl, or one text per line")
    r.add_argument("--output", "-o", default=None, help="output file (.jsonl, .csv or .tsv; default: stdout)")
    r.add_argument("--column", default=None, help="text column (default: text, sentence, content, ...)")
    r.add_argument("--calibration", default=None, help="contextual, domain, batch (see docs)")
    r.add_argument("--batch-size", type=int, default=64)
    r.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    r.set_defaults(func=_predict)

    e = sub.add_parser("eval", help="accuracy and macro-F1 on a labeled JSONL/CSV file (columns text, label)")
    common(e)
    e.add_argument("data", help="labeled file")
    e.add_argument("--calibration", default=None)
    e.add_argument("--limit", type=int, default=None, help="use the first N rows")
    e.set_defaults(func=_eval)
    return p


def _check(args: argparse.Namespace) -> int:
    template = _resolve_template(args.template, None)
    text = args.text or template.sample_text
    print(f"template: {template.source}" + (f"  ({template.description})" if template.description else ""))
    print("prompt for a sample text (shown with escapes):")
    print("  " + json.dumps(template.render(text), ensure_ascii=False))
    scorer = Scorer.from_pretrained(args.model)
    tok = scorer.tokenizer
    try:
        tokens = template.labels.encode(tok, template.label_prefix, template.render(text))
    except TemplateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"label words with label_prefix {template.label_prefix!r}, as tokens of model {args.model or 'default'}:")
    firsts: dict[int, str] = {}
    notes = []
    for word, li, ids in zip(tokens.words, tokens.word_label, tokens.word_ids, strict=True):
        label = tokens.labels[li]
        pieces = tok.convert_ids_to_tokens(list(ids))
        flag = "  (several tokens: scored exactly, costs a short second pass)" if len(ids) > 1 else ""
        print(f"  {label:>14}  {word!r:20} -> {pieces}{flag}")
        if ids[0] in firsts and firsts[ids[0]] != label:
            notes.append(f"labels.{label}: {word!r} starts with the same token as a word of labels.{firsts[ids[0]]}")
        firsts.setdefault(ids[0], label)
    for note in notes:
        print(f"note: {note} (fine: words are scored over all their tokens)")
    print("ok: no problems found")
    return 0


def _predict(args: argparse.Namespace) -> int:
    texts, rows = read_table(args.input, args.column)
    clf = Verbalizer(
        template=args.template,
        model=args.model,
        calibration=args.calibration,
        batch_size=args.batch_size,
        progress=not args.no_progress and len(texts) > 64,
    )
    good = [i for i, t in enumerate(texts) if text_problem(t) is None]
    if clf.calibration in ("domain", "batch") and good:
        clf.fit([texts[i] for i in good])
    for i, row in enumerate(rows):
        problem = row.pop("_error", None) or (None if i in set(good) else f"text {text_problem(texts[i])}")
        if problem:
            row["error"] = f"row {i + 1}: {problem}"
    for start in range(0, len(good), CHUNK):
        chunk = good[start : start + CHUNK]
        try:
            proba = clf.predict_proba([texts[i] for i in chunk])
        except Exception as exc:  # one failed chunk must not lose the others: mark its rows, go on
            for i in chunk:
                rows[i]["error"] = f"row {i + 1}: {type(exc).__name__}: {exc}"
            continue
        for i, p in zip(chunk, proba, strict=True):
            rows[i]["prediction"] = str(clf.classes_[int(np.argmax(p))])
            rows[i]["probability"] = round(float(np.max(p)), 6)
    text = write_table(args.output, rows)
    if args.output is None:
        sys.stdout.write(text)
    failed = sum("error" in r for r in rows)
    if failed:
        print(f"{failed} of {len(rows)} rows could not be classified; see their 'error' field", file=sys.stderr)
    return 1 if failed else 0


def _eval(args: argparse.Namespace) -> int:
    from sklearn.metrics import accuracy_score, f1_score

    texts, rows = read_table(args.data)
    rows = rows[: args.limit] if args.limit else rows
    texts = texts[: len(rows)]
    y = [r.get("label") for r in rows]
    clf = Verbalizer(template=args.template, model=args.model, calibration=args.calibration, progress=True)
    if clf.calibration in ("domain", "batch"):
        clf.fit(texts)
    pred = clf.predict(texts)
    print(f"n={len(y)}  accuracy={accuracy_score(y, pred):.4f}  macro_f1={f1_score(y, pred, average='macro'):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
