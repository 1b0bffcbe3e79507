"""`verbalize check | predict | eval | finetune`: a thin command line over the public API."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import TemplateError, VerbalizeError
from .estimator import Verbalizer, _resolve_template
from .finetune import FineTuneConfig
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
        sp.add_argument("template", help="template file (TOML), or a classifier directory written by finetune / save")
        sp.add_argument("--model", default=None, help="hub id, local directory or .gguf file (default: embedded)")
        sp.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16", "int8"], help="weights")

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

    f = sub.add_parser("finetune", help="prompt-based fine-tuning on a labeled file; saves a classifier directory")
    common(f)
    f.add_argument("train", help="labeled file (.jsonl, .csv, .tsv) with a text and a label column")
    f.add_argument("--output", "-o", required=True, help="directory to write (classifier + Hugging Face model/)")
    f.add_argument("--column", default=None, help="text column (default: text, sentence, content, ...)")
    f.add_argument("--label-column", default="label")
    f.add_argument("--method", choices=["full", "lora"], default="full")
    f.add_argument("--epochs", type=int, default=FineTuneConfig.epochs)
    f.add_argument("--learning-rate", type=float, default=None, help="default 2e-5 (full), 5e-4 (lora)")
    f.add_argument("--batch-size", type=int, default=FineTuneConfig.batch_size)
    f.add_argument("--validation-fraction", type=float, default=FineTuneConfig.validation_fraction)
    f.add_argument("--lm-weight", type=float, default=0.0, help="mix in the LM loss to keep generation intact")
    f.add_argument("--lm-texts", default=None, help="file of unlabeled plain text for the LM loss")
    f.add_argument("--calibration", default=None)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--no-progress", action="store_true")
    f.set_defaults(func=_finetune)
    return p


def _classifier(args: argparse.Namespace, **params: object) -> Verbalizer:
    """A saved classifier directory (``finetune --output``, ``Verbalizer.save``) or a template file."""
    path = Path(args.template)
    if path.is_dir() and (path / "verbalize.json").is_file():
        overrides = {k: v for k, v in params.items() if k in ("batch_size", "progress")}
        return Verbalizer.load(path, **overrides, **_dtype(args))
    return Verbalizer(template=args.template, model=args.model, **params, **_dtype(args))  # type: ignore[arg-type]


def _dtype(args: argparse.Namespace) -> dict[str, str]:
    """``--dtype`` when given (a saved classifier keeps its own otherwise)."""
    return {"dtype": args.dtype} if getattr(args, "dtype", None) else {}


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
    clf = _classifier(
        args,
        calibration=args.calibration,
        batch_size=args.batch_size,
        progress=not args.no_progress and len(texts) > 64,
    )
    good = [i for i, t in enumerate(texts) if text_problem(t) is None]
    if clf.calibration in ("domain", "batch") and good:
        clf.fit([texts[i] for i in good])
    usable = set(good)
    for i, row in enumerate(rows):
        problem = row.pop("_error", None) or (None if i in usable else f"text {text_problem(texts[i])}")
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
    clf = _classifier(args, calibration=args.calibration, progress=True)
    if clf.calibration in ("domain", "batch"):
        clf.fit(texts)
    pred = clf.predict(texts)
    print(f"n={len(y)}  accuracy={accuracy_score(y, pred):.4f}  macro_f1={f1_score(y, pred, average='macro'):.4f}")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    texts, rows = read_table(args.train, args.column)
    template = _resolve_template(args.template, None)
    labels = list(template.labels)
    good, problems = [], []
    for i, (text, row) in enumerate(zip(texts, rows, strict=True)):
        label = row.get(args.label_column)
        problem = row.get("_error") or (f"text {bad}" if (bad := text_problem(text)) else None)
        if problem is None and label not in labels:
            problem = f"{args.label_column} {label!r} is not one of the template's labels {labels}"
        if problem:
            problems.append(f"row {i + 1}: {problem}")
        else:
            good.append(i)
    for p in problems:
        print(f"skipped {p}", file=sys.stderr)
    if not good:
        print(f"error: no usable rows in {args.train}", file=sys.stderr)
        return 2
    lm_texts = None
    if args.lm_texts:
        lm_texts = tuple(t for t in read_table(args.lm_texts)[0] if text_problem(t) is None)
    config = FineTuneConfig(
        method=args.method,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        validation_fraction=args.validation_fraction,
        lm_weight=args.lm_weight,
        lm_texts=lm_texts,
        progress=not args.no_progress,
    )
    clf = Verbalizer(
        template=template,
        model=args.model,
        calibration=args.calibration,
        fine_tuning=config,
        random_state=args.seed,
    )
    clf.fit([texts[i] for i in good], [rows[i][args.label_column] for i in good])
    out = clf.save(args.output)
    history = clf.training_.history
    best = history[clf.training_.best_epoch - 1] if history else {}
    print(
        f"fine-tuned on {len(good)} rows in {clf.training_.seconds:.0f} s "
        f"({len(history)} epochs, best epoch {clf.training_.best_epoch}"
        + (f", validation accuracy {best['val_accuracy']:.3f}" if "val_accuracy" in best else "")
        + f"); saved to {out} (Hugging Face model in {out / 'model'})"
    )
    if problems:
        print(f"{len(problems)} of {len(rows)} rows were skipped; see above", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
