"""``verbalize suggest TEMPLATE LABELED``: argparse set-up and runner over :mod:`verbalize.search`.

``verbalize/cli.py`` registers the command with :func:`add_parser`; the search (torch, scikit-learn)
is imported only when the command runs, so registering it costs the other commands nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from verbalize.cli.threads import add_threads_argument
from verbalize.io.jobs import field_columns
from verbalize.io.readers import open_source
from verbalize.prompting.template import load_template


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``verbalize suggest`` on the CLI's subparsers."""
    s = subparsers.add_parser(
        "suggest", help="search label words (and a prompt) on labeled examples; write a new template file"
    )
    s.add_argument("template", help="template file (TOML); never overwritten")
    s.add_argument("labeled", help="labeled file (.jsonl, .csv, .tsv) with a text and a label column")
    s.add_argument("--output", "-o", default=None, help="file to write (default: TEMPLATE's name + .suggested.toml)")
    s.add_argument("--model", default=None, help="hub id, local directory or .gguf file (default: embedded)")
    s.add_argument("--column", default=None, help="text column (default: text, sentence, content, ...)")
    s.add_argument("--label-column", default="label")
    s.add_argument(
        "--field", action="append", default=[], metavar="FIELD=COLUMN", help="column of a template field (repeatable)"
    )
    s.add_argument(
        "--prompt",
        action="append",
        default=None,
        help="a candidate prompt with the template's fields, e.g. {text} (repeatable)",
    )
    s.add_argument("--words-only", action="store_true", help="keep the template's prompt; search words only")
    s.add_argument("--n-words", type=int, nargs="+", default=None, help="words per label to try")
    s.add_argument("--calibration", default="contextual", choices=["none", "contextual", "batch"])
    s.add_argument("--cv", type=int, default=4, help="cross-validation folds")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--force", action="store_true", help="overwrite --output if it exists (never the input)")
    add_threads_argument(s)
    s.add_argument("--no-progress", action="store_true", help="show no progress on stderr")
    s.set_defaults(func=run_suggest)
    return s


def _labeled(args: argparse.Namespace, fields: tuple[str, ...]) -> tuple[list[Any], list[dict[str, Any]]]:
    """The labeled file's rows (a str, or {field: text} for several fields) and their columns (``_error``: why
    a row is unusable); columns map to fields as in ``predict`` (same names, or ``--field FIELD=COLUMN``)."""
    source = open_source(args.labeled, args.column, field_columns(fields, args.field))
    texts, rows = [], []
    for row in source.rows():
        texts.append(row.text)
        rows.append(row.fields | ({"_error": f"line {row.line}: {row.problem}"} if row.problem else {}))
    return texts, rows


def run_suggest(args: argparse.Namespace) -> int:
    """The ``suggest`` command: rank, print, write the best template; exit 0."""
    from verbalize.search import rank_templates, suggest_label_words, write_template

    template = load_template(args.template)
    out = Path(args.output or Path(args.template).with_suffix("").as_posix() + ".suggested.toml")
    if out.exists() and not args.force:
        print(f"error: {out} exists; pass --force to replace it or --output another file", file=sys.stderr)
        return 2
    if out.exists() and out.resolve() == Path(args.template).resolve():
        print(
            f"error: {out} is the input template; suggest never overwrites it: pass another --output", file=sys.stderr
        )
        return 2
    texts, rows = _labeled(args, template.fields)
    labels = list(template.labels)
    bad = [f"row {i + 1}: label {r.get(args.label_column)!r}" for i, r in enumerate(rows)
           if r.get(args.label_column) not in labels or r.get("_error")]  # fmt: skip
    if bad:
        raise ValueError(
            f"{args.labeled}: {len(bad)} rows have no usable text or a label not in {labels} "
            f"({'; '.join(bad[:5])}); fix or drop them"
        )
    calibration = None if args.calibration == "none" else args.calibration
    search: dict[str, Any] = {"cv": args.cv, "random_state": args.seed, "calibration": calibration}
    search["progress"] = not args.no_progress  # the vocabulary's scores over the examples: the long part
    if args.n_words:  # else the search's own default
        search["n_words"] = args.n_words
    y = [r[args.label_column] for r in rows]
    if args.words_only:
        ranked = [suggest_label_words(texts, y, template, args.model, **search)]
    else:
        ranked = rank_templates(texts, y, template, args.model, prompts=args.prompt, **search)
    same = [s for s in ranked if (s.template.prompt, s.template.instruction) == (template.prompt, template.instruction)]
    base = same[0].template_cv_accuracy  # the input template as it is: its prompt and its words, on the same folds
    print(f"{len(texts)} labeled examples, {args.cv}-fold cross-validated accuracy ({args.calibration} calibration):")
    for s in ranked:
        t = s.template
        print(
            f"  {s.cv_accuracy:.3f} {s.choice} words (the template's own words, this prompt: "
            f"{s.template_cv_accuracy:.3f})"
            f"  instruction={t.instruction!r} prompt={t.prompt!r}"
        )
        print("        " + "; ".join(f"{k}: {', '.join(v)}" for k, v in t.labels.items()))
    best = ranked[0]
    if best.cv_accuracy > base:
        verdict = f"better than the input template in cross-validation: {best.cv_accuracy:.3f} vs {base:.3f}"
    else:  # ties and worse: the input template is ranked first and written as it is
        verdict = (
            f"NOT better than the input template in cross-validation ({best.cv_accuracy:.3f} vs {base:.3f}): "
            "its own prompt and words are kept"
        )
    print(verdict)
    header = (
        f"Suggested by `verbalize suggest {Path(args.template).name} {Path(args.labeled).name}`: "
        f"{len(texts)} examples,\n{args.cv}-fold CV accuracy ({args.calibration} calibration), {best.choice} words: "
        f"{verdict}"
    )
    write_template(best.template, out, args.template, header)
    print(f"wrote {out} (passes the template checks; verbalize check {out} shows its tokens)")
    return 0
