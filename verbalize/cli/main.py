"""`verbalize check | predict | eval | finetune | serve | suggest`: a thin command line over the public API.

Commands import what they need (torch, scikit-learn) when they run, so that ``verbalize check`` and
``--help`` start fast; ``check``, ``serve`` and ``suggest`` live in their own modules.

Exit codes: 0 every row done; 1 some rows could not be classified (each has an ``error`` field, or is
listed on stderr for ``eval``/``finetune``); 2 a setup or usage error (template, model, calibration,
options, input or output path), found before the first row; 128 + signal number when interrupted
(130 for Ctrl-C, 143 for SIGTERM), with finished rows kept and a note on how to ``--resume``; 141 when the
reader of stdout went away (``| head``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from verbalize import __version__
from verbalize.cli.check import check
from verbalize.cli.console import configure_logging, hide_unused_torchao, one_line_warnings
from verbalize.cli.eval_report import ProbaRecorder, check_report_path, write_eval_report
from verbalize.cli.options import DTYPE_CHOICES
from verbalize.cli.serve import add_parser as _add_serve  # `verbalize serve` (needs the [serve] extra to run)
from verbalize.cli.studio import add_parser as _add_studio  # `verbalize studio` (the [serve] extra too)
from verbalize.cli.suggest import add_parser as _add_suggest
from verbalize.cli.threads import add_threads_argument, set_threads
from verbalize.errors import InputError, VerbalizeError
from verbalize.io.jobs import (
    EXIT_OK,
    EXIT_ROWS_FAILED,
    EXIT_SETUP,
    Job,
    check_model_dir,
    check_output,
    classify_rows,
    field_columns,
    file_digest,
    run,
    sample_texts,
)
from verbalize.io.readers import Source, labeled_rows, open_source, read_table
from verbalize.progress import bar as progress_bar
from verbalize.progress import shown as progress_shown
from verbalize.prompting.prompts import resolve_template
from verbalize.rows import text_problem

if TYPE_CHECKING:
    from verbalize.estimator import Verbalizer

CHUNK = 512
CALIBRATION_SAMPLE = 1000  # the first usable texts that domain and batch calibration are fitted on
CALIBRATION_HELP = (
    f"none (default), auto, contextual, domain, batch, temperature or prior; auto, domain, batch and prior are fitted "
    f"on the first {CALIBRATION_SAMPLE} usable texts of the input (auto without labels: batch calibration; prior "
    "estimates the label distribution of each chunk of texts)"
)
EVAL_CALIBRATION_HELP = (
    "none (default), auto, contextual, domain, batch, temperature or prior, fitted as the API's fit(X, y) is: on the "
    "evaluated rows with their labels (auto: a cross-validated choice), or on --fit-file"
)
FIT_FILE_HELP = (
    "labeled file the calibration is fitted on (same columns as DATA); default: DATA's evaluated rows themselves, "
    "so auto's choice sees the labels it is scored on"
)
PROBE = "A short example text."
NO_PROGRESS_HELP = "show no progress on stderr (bars, and a line per long step with its time)"
FIELD_HELP = (
    "with a template of several fields: the column that fills FIELD (repeatable); "
    "default: the column named like each field"
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    configure_logging()  # warnings as one line each: `warning: <message>`
    hide_unused_torchao()
    if "threads" in args:  # the commands that run the model
        set_threads(args.threads)
    try:
        with one_line_warnings(), progress_shown(not getattr(args, "no_progress", False)):
            return int(args.func(args))
    except (VerbalizeError, FileNotFoundError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_SETUP
    except KeyboardInterrupt:
        print("interrupted before the first row; nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as other Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 128 + 13  # SIGPIPE's number, as a shell reports a process killed by it
    except OSError as exc:  # a full disk, a vanished folder: one line, not a traceback
        print(f"error: writing the output failed: {exc}", file=sys.stderr)
        return EXIT_SETUP


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return n


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="verbalize", description="Prompt-based text classification with causal LMs.")
    p.add_argument("--version", action="version", version=f"verbalize {__version__}")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser, saved: bool = True) -> None:
        what = "template file (TOML) or shipped template name (sst2, agnews, ...)"
        if saved:
            what += ", or a classifier directory written by finetune / save"
        sp.add_argument("template", help=what)
        sp.add_argument("--model", default=None, help="hub id, local directory or .gguf file (default: embedded)")
        sp.add_argument(
            "--dtype",
            default=None,
            choices=DTYPE_CHOICES,
            help="number format of the weights (default auto: the fastest measured here that scores exactly; "
            "a saved classifier keeps its own)",
        )

    c = sub.add_parser("check", help="validate a template, show its prompt and how label words tokenize")
    common(c, saved=False)
    c.add_argument("--text", default=None, help="sample text to render (default: the template's sample_text)")
    c.set_defaults(func=lambda a: check(_template_only(a, "check"), a.model, a.text))

    r = sub.add_parser("predict", help="classify the texts of a CSV / TSV / JSONL / Parquet / plain-text file")
    common(r)
    r.add_argument("input", help="input file: .csv, .tsv, .jsonl, .parquet, or one text per line")
    r.add_argument("--output", "-o", default=None, help="output file (.jsonl, .csv, .tsv or .parquet; default: stdout)")
    r.add_argument("--column", default=None, help="text column (default: text, sentence, content, ...)")
    r.add_argument("--field", action="append", default=[], metavar="FIELD=COLUMN", help=FIELD_HELP)
    r.add_argument("--calibration", type=_calibration, default=None, help=CALIBRATION_HELP)
    r.add_argument("--batch-size", type=_positive, default=64)
    r.add_argument("--chunk-size", type=_positive, default=CHUNK, help="rows classified and written at a time")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run from OUTPUT.partial")
    r.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    add_threads_argument(r)
    r.add_argument(
        "--engine", choices=["local", "ray"], default="local", help="ray: Ray Data (pip install verbalize[ray])"
    )
    r.add_argument("--concurrency", type=_positive, default=None, help="ray: number of actors (default: 2)")
    r.add_argument("--threads-per-actor", type=_positive, default=1, help="ray: torch threads per actor")
    r.add_argument("--cpus-per-actor", type=float, default=None, help="ray: CPUs reserved per actor (default: threads)")
    r.add_argument("--gpus-per-actor", type=float, default=0.0, help="ray: GPUs per actor")
    r.set_defaults(func=_predict)

    e = sub.add_parser("eval", help="accuracy and macro-F1 on a labeled JSONL/CSV file (columns text, label)")
    common(e)
    e.add_argument("data", help="labeled file")
    e.add_argument("--column", default=None, help="text column (default: text, sentence, content, ...)")
    e.add_argument("--label-column", default="label")
    e.add_argument("--field", action="append", default=[], metavar="FIELD=COLUMN", help=FIELD_HELP)
    e.add_argument("--calibration", type=_calibration, default=None, help=EVAL_CALIBRATION_HELP)
    e.add_argument("--fit-file", default=None, metavar="FILE", help=FIT_FILE_HELP)
    e.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the calibration's random draws (auto's folds, domain words), as Verbalizer(random_state=...)",
    )
    e.add_argument("--batch-size", type=_positive, default=64)
    e.add_argument("--limit", type=_positive, default=None, help="use the first N rows (and fit on them)")
    add_threads_argument(e)
    e.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    e.add_argument(
        "--report",
        default=None,
        metavar="FILE.html",
        help="also write one self-contained HTML page: metrics with confidence intervals, confusion matrix, "
        "per-class scores, reliability diagram and the wrong texts",
    )
    e.set_defaults(func=_eval)

    f = sub.add_parser("finetune", help="prompt-based fine-tuning on a labeled file; saves a classifier directory")
    common(f, saved=False)
    f.add_argument("train", help="labeled file (.jsonl, .csv, .tsv, .parquet) with a text and a label column")
    f.add_argument("--output", "-o", required=True, help="directory to write (classifier + Hugging Face model/)")
    f.add_argument("--force", action="store_true", help="replace the classifier already in --output")
    f.add_argument("--column", default=None, help="text column (default: text, sentence, content, ...)")
    f.add_argument("--label-column", default="label")
    f.add_argument("--method", choices=["full", "lora"], default="full")
    f.add_argument("--epochs", type=_positive, default=None)  # None: FineTuneConfig's default
    f.add_argument("--learning-rate", type=float, default=None, help="default 2e-5 (full), 5e-4 (lora)")
    f.add_argument("--batch-size", type=_positive, default=None)
    f.add_argument("--validation-fraction", type=float, default=None)
    f.add_argument("--lm-weight", type=float, default=0.0, help="mix in the LM loss to keep generation intact")
    f.add_argument("--lm-texts", default=None, help="file of unlabeled plain text for the LM loss")
    f.add_argument("--calibration", type=_calibration, default=None, help="none (default), auto or a calibrator name")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--no-progress", action="store_true", help=NO_PROGRESS_HELP)
    add_threads_argument(f)
    f.set_defaults(func=_finetune)
    _add_serve(sub)
    _add_suggest(sub)
    _add_studio(sub)
    return p


def _saved(args: argparse.Namespace) -> Path | None:
    path = Path(args.template)
    return path if path.is_dir() and (path / "verbalize.json").is_file() else None


def _template_only(args: argparse.Namespace, command: str) -> str:
    """``check`` and ``finetune`` take a template: a saved classifier directory is refused with the way out."""
    saved = _saved(args)
    if saved is not None:
        raise InputError(
            f"{saved} is a saved classifier directory; verbalize {command} takes a template file or a shipped "
            f"template name: give the template it was made from (its fields are under 'template' in "
            f"{saved / 'verbalize.json'}); predict and eval take the directory itself"
        )
    return str(args.template)


def _classifier(args: argparse.Namespace, batch_size: int = 64) -> Verbalizer:
    """A saved classifier directory (``finetune --output``, ``Verbalizer.save``) or a template file.

    A saved directory carries its own model and calibration, so ``--model`` / ``--calibration`` with
    one are refused rather than silently ignored.
    """
    from verbalize.estimator import Verbalizer  # torch: imported by the commands that classify, never by check

    saved = _saved(args)
    calibration = getattr(args, "calibration", None)
    if saved is not None:
        given = [f"--{n} {v}" for n, v in (("model", args.model), ("calibration", calibration)) if v is not None]
        if given:
            raise InputError(
                f"{saved} is a saved classifier: it uses its own model and calibration, so {' and '.join(given)} "
                "cannot apply. Drop them, or pass the template file instead of the directory (or fine-tune "
                "again with them)"
            )
        return Verbalizer.load(saved, batch_size=batch_size, progress=False, **_dtype(args))
    return Verbalizer(
        template=args.template,
        model=args.model,
        calibration=calibration,
        batch_size=batch_size,
        random_state=getattr(args, "seed", 0),  # the same numbers on every run (predict has no --seed: 0)
        **_dtype(args),
    )


def _classifier_and_source(args: argparse.Namespace, path: str) -> tuple[Verbalizer, Source, dict[str, str] | None]:
    """The classifier (model not loaded yet), the input with its columns mapped to the template's fields
    (a missing column is a setup error here), and that mapping (None: one field, one text column)."""
    clf = _classifier(args, args.batch_size)
    fields = (getattr(clf, "template_", None) or resolve_template(clf.template, clf.labels)).fields
    fmap = field_columns(fields, getattr(args, "field", None))
    return clf, open_source(path, args.column, fmap), fmap


def _ready_classifier(clf: Verbalizer, source: Source, fmap: dict[str, str] | None) -> Verbalizer:
    """Fit what is fitted on the input's texts and classify one probe, so every setup error shows before row 1."""
    try:
        if _fits_on_texts(clf):
            texts = sample_texts(source, CALIBRATION_SAMPLE)
            if texts:
                clf.fit(texts)
        clf.predict_proba([_probe(fmap)])
    except (VerbalizeError, FileNotFoundError, ValueError, TypeError):
        raise
    except Exception as exc:  # a model that fails to load or run: one message, not one per row
        raise VerbalizeError(f"setup failed before the first row: {type(exc).__name__}: {exc}") from exc
    return clf


def _fits_on_texts(clf: Verbalizer) -> bool:
    """Whether the classifier's calibration is fitted on unlabeled texts of the input (domain, batch)."""
    from verbalize.calibration.calibrators import unlabeled_texts_help

    return unlabeled_texts_help(clf.calibration)


def _calibration(value: str) -> str | None:
    """``--calibration``: "none" means no calibration; other names are checked when the classifier is set up."""
    return None if value.strip().lower() == "none" else value


def _weights_dtype(clf: Verbalizer, params: dict[str, Any]) -> str:
    """The format the set-up classifier's model runs in (what ``dtype="auto"`` chose), else its dtype parameter."""
    scorer = getattr(clf, "scorer_", None)
    return scorer.dtype if scorer is not None else str(params.get("dtype"))


def _dtype(args: argparse.Namespace) -> dict[str, Any]:
    """``--dtype`` when given (a saved classifier keeps its own otherwise)."""
    return {"dtype": args.dtype} if getattr(args, "dtype", None) else {}


def _predict(args: argparse.Namespace) -> int:
    if args.engine == "ray":
        return _predict_ray(args)
    output = check_output(args.output, args.input)
    clf, source, fmap = _classifier_and_source(args, args.input)
    clf = _ready_classifier(clf, source, fmap)
    options = _job_options(args, clf, source, fmap)
    job = Job(source, output, options, args.chunk_size, args.resume, progress=not args.no_progress)
    result = run(job, clf)
    if result.interrupted is not None:
        print(_interrupted_note(args, job, result.rows, result.interrupted), file=sys.stderr)
        return 128 + result.interrupted
    where = f"to {output}" if output else "to stdout"
    resumed = f" (resumed after {result.resumed_from})" if result.resumed_from else ""
    print(f"{result.rows} rows written {where}{resumed}", file=sys.stderr)
    if result.failed:
        print(
            f"{result.failed} of {result.rows} rows could not be classified; see their 'error' field", file=sys.stderr
        )
    return EXIT_ROWS_FAILED if result.failed else EXIT_OK


def _job_options(
    args: argparse.Namespace, clf: Verbalizer, source: Source, fmap: dict[str, str] | None
) -> dict[str, Any]:
    """Everything that changes the output rows besides the input file: a ``--resume`` with any of them
    different is refused (see :func:`verbalize.io.jobs.run`), so one output never mixes two runs' scores."""
    params = clf.get_params(deep=False)
    return {
        "template": _template_digest(args),  # a saved classifier's file: its demonstrations and calibration too
        "model": args.model,
        "model_files": _files_stamp(args.model) or _files_stamp(_saved(args)),  # new weights under the same name
        "dtype": _weights_dtype(clf, params),  # the weights: int8 or bfloat16 scores differ from float32 ones
        "device": str(clf.scorer_.device.type),
        "calibration": args.calibration,
        "column": source.column,
        "fields": fmap,
        "batch_size": args.batch_size,  # batches inside a chunk: scores move at ~1e-7 with their composition
        "max_length": params.get("max_length"),
        "aggregation": params.get("aggregation"),
        "verbalize": __version__,
    }


def _files_stamp(path: str | Path | None) -> str | None:
    """A digest of a local model's files (names, sizes, modification times), or None for a hub id or nothing.

    Cheap (no weights read); a model saved again to the same path changes it, so a resume refuses it.
    """
    if path is None or not Path(path).expanduser().exists():
        return None
    root = Path(path).expanduser()
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    listing = [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(repr(listing).encode("utf-8")).hexdigest()


def _template_digest(args: argparse.Namespace) -> str:
    saved = _saved(args)
    path = saved / "verbalize.json" if saved else Path(args.template)
    return file_digest(path) if path.is_file() else str(args.template)


def _interrupted_note(args: argparse.Namespace, job: Job, rows: int, signum: int) -> str:
    import signal

    name = signal.Signals(signum).name
    if job.output is None:
        return f"interrupted by {name} after {rows} rows (written to stdout); to resume a run, write it to a file (-o)"
    again = [a for a in args.argv if a != "--resume"]
    command = "verbalize " + shlex.join([*again, "--resume"])
    return (
        f"interrupted by {name}: {rows} finished rows are kept in {job.partial}; {job.output} was not touched.\n"
        f"continue with: {command}"
    )


def _predict_ray(args: argparse.Namespace) -> int:
    from verbalize.io.ray import available_resources, check_resources, predict_file

    found = available_resources()  # None: a cluster named by RAY_ADDRESS, checked once joined
    if found is not None:  # before the model loads: a pool Ray cannot place would wait forever
        cpus = args.threads_per_actor if args.cpus_per_actor is None else args.cpus_per_actor
        check_resources(args.concurrency or 2, cpus, args.gpus_per_actor, *found)
    if args.resume:
        raise InputError("--resume works with --engine local only; a Ray job reruns from the start")
    out = check_output(args.output, args.input)
    if out is None or out.suffix.lower() != ".parquet":
        raise InputError("--engine ray writes Parquet: give --output FILE.parquet")
    clf, source, fmap = _classifier_and_source(args, args.input)  # a template's fields: source.field_map
    clf = _ready_classifier(clf, source, fmap)  # every setup error here, before Ray starts
    saved = _saved(args)
    fit = _fits_on_texts(clf) and not saved
    n = predict_file(
        source,
        out,
        template=str(saved or args.template),
        model=args.model,
        calibration=args.calibration,
        batch_size=args.batch_size,
        chunk_size=args.chunk_size,
        concurrency=args.concurrency or 2,
        threads=args.threads_per_actor,
        num_cpus=args.cpus_per_actor,
        num_gpus=args.gpus_per_actor,
        fit_texts=sample_texts(source, CALIBRATION_SAMPLE) if fit else None,
    )
    print(f"{n} rows written to {out}", file=sys.stderr)
    return EXIT_OK


def _probe(fmap: dict[str, str] | None) -> object:
    return dict.fromkeys(fmap, PROBE) if fmap else PROBE


def _eval(args: argparse.Namespace) -> int:
    from sklearn.metrics import accuracy_score, f1_score

    report = check_report_path(args.report, args.data) if args.report else None
    clf, source, fmap = _classifier_and_source(args, args.data)  # a missing column: a setup error, before the model
    fits = clf.calibration is not None and _saved(args) is None
    if args.fit_file and not fits:
        raise InputError(
            f"--fit-file {args.fit_file} is what --calibration is fitted on, and no calibration is fitted here: "
            "give --calibration NAME with a template (a saved classifier keeps its own calibration), or drop --fit-file"
        )
    if not fits:  # every setup error before the rows are read (a calibration that needs labels cannot run yet)
        clf.predict_proba([_probe(fmap)])
    labels = [str(c) for c in (clf.classes_ if not fits else resolve_template(clf.template, clf.labels).labels)]
    rows, problems = labeled_rows(args.data, args.column, args.label_column, labels, args.limit, fmap)
    if rows and fits:
        _fit_calibration(args, clf, rows, labels, fmap)
    y, pred, kept = [], [], []
    scored = ProbaRecorder(clf) if report else clf  # the same predict_proba, each row's probabilities kept
    rows_bar = progress_bar(total=len(rows), desc="eval", unit="row")
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        for row, out in zip(chunk, classify_rows(scored, chunk), strict=True):
            if "error" in out:
                problems.append(out["error"])
            else:
                y.append(row.fields[args.label_column])
                pred.append(out["prediction"])
                kept.append(row.text)
        rows_bar.update(len(chunk))
    rows_bar.close()
    for p in problems:
        print(f"skipped {p}", file=sys.stderr)
    if not y:
        print(f"error: no usable rows in {args.data}", file=sys.stderr)
        return EXIT_SETUP
    print(f"n={len(y)}  accuracy={accuracy_score(y, pred):.4f}  macro_f1={f1_score(y, pred, average='macro'):.4f}")
    print(_distribution_line(labels, y, pred, getattr(clf, "calibration_report_", None)))
    if report is not None and isinstance(scored, ProbaRecorder):
        proba = [scored.proba_of(t) for t in kept]
        write_eval_report(report, y, proba, kept, labels, f"{args.template} on {args.data}")
        print(f"report written to {report}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} rows were skipped; see above", file=sys.stderr)
    return EXIT_ROWS_FAILED if problems else EXIT_OK


def _distribution_line(labels: list[str], y: list[str], pred: list[str], report: dict[str, Any] | None) -> str:
    """Each label's share: true, predicted, and the prior estimated by calibration='prior' (its last call)."""
    from verbalize.report import label_distribution

    d = label_distribution(labels, y, pred, report)
    estimate = d["estimated"]
    cells = []
    for k, label in enumerate(labels):
        est = f"/{estimate[k]:.3f}" if estimate else ""
        cells.append(f"{label} {d['true'][k]:.3f}/{d['predicted'][k]:.3f}{est}")
    head = "true/predicted" + ("/estimated" if estimate else "")
    note = ""
    if estimate:
        used = "applied" if d["shifted"] else "not applied: near uniform, the base correction alone"
        note = f" (estimated on the last {d['n_estimated']} texts scored together; {used})"
    return f"label distribution {head}: " + "  ".join(cells) + note


def _fit_calibration(
    args: argparse.Namespace, clf: Verbalizer, rows: list[Any], labels: list[str], fmap: dict[str, str] | None
) -> None:
    """Fit ``eval``'s calibration as ``Verbalizer(calibration=...).fit(X, y)`` does, on ``--fit-file``'s labeled
    rows or else on the evaluated rows, and say on stderr what it was fitted on (and auto's choice)."""
    where = args.fit_file or args.data
    if args.fit_file:
        rows, problems = labeled_rows(args.fit_file, args.column, args.label_column, labels, None, fmap)
        for p in problems:
            print(f"skipped {p} (--fit-file)", file=sys.stderr)
        if not rows:
            raise InputError(f"--fit-file {args.fit_file}: no usable labeled rows to fit the calibration on")
    try:
        clf.fit([r.text for r in rows], [r.fields[args.label_column] for r in rows])
    except (VerbalizeError, FileNotFoundError, ValueError, TypeError):
        raise
    except Exception as exc:  # a model that fails to load or run: one message, as in _ready_classifier
        raise VerbalizeError(f"setup failed before the first row: {type(exc).__name__}: {exc}") from exc
    report = getattr(clf, "calibration_report_", None)
    if report is None or "chosen" not in report:  # a plain calibrator ("prior" reports its estimate only)
        cap = clf.calibration_sample
        n = f"a seeded random {cap} of {len(rows)}" if cap is not None and len(rows) > cap else f"{len(rows)}"
        note = f"calibration {clf.calibration} fitted on {n} labeled rows of {where}"
    elif "n_folds" in report:
        note = (
            f"calibration auto chose {report['chosen']} by {report['n_folds']}-fold cross-validation on "
            f"{report['n_examples']} labeled rows of {where}"
        )
    else:
        note = f"calibration auto chose {report['chosen']}: {report['reason']}"
    if not args.fit_file:
        note += " (the rows evaluated here; --fit-file fits on other rows)"
    print(note, file=sys.stderr)


def _finetune(args: argparse.Namespace) -> int:
    from verbalize.estimator import Verbalizer
    from verbalize.training.config import FineTuneConfig

    out = check_model_dir(args.output)
    if (out / "verbalize.json").is_file() and not args.force:
        raise InputError(
            f"--output {out} holds a fine-tuned classifier already; pass --force to replace it, or give another "
            "--output"
        )
    template = resolve_template(_template_only(args, "finetune"), None)
    rows, problems = labeled_rows(args.train, args.column, args.label_column, list(template.labels))
    for p in problems:
        print(f"skipped {p}", file=sys.stderr)
    if not rows:
        print(f"error: no usable rows in {args.train}", file=sys.stderr)
        return EXIT_SETUP
    lm_texts = None
    if args.lm_texts:
        lm_texts = tuple(t for t in read_table(args.lm_texts)[0] if text_problem(t) is None)
    given = {"epochs": args.epochs, "batch_size": args.batch_size, "validation_fraction": args.validation_fraction}
    config = FineTuneConfig(
        method=args.method,
        learning_rate=args.learning_rate,
        lm_weight=args.lm_weight,
        lm_texts=lm_texts,
        progress=not args.no_progress,
        **{k: v for k, v in given.items() if v is not None},  # the others keep FineTuneConfig's defaults
    )
    clf = Verbalizer(
        template=template,
        model=args.model,
        calibration=args.calibration,
        fine_tuning=config,
        random_state=args.seed,
    )
    clf.fit([r.text for r in rows], [r.fields[args.label_column] for r in rows])
    out = clf.save(out)
    history = clf.training_.history
    best = history[clf.training_.best_epoch - 1] if history else {}
    print(
        f"fine-tuned on {len(rows)} rows in {clf.training_.seconds:.0f} s "
        f"({len(history)} epoch{'' if len(history) == 1 else 's'}, best epoch {clf.training_.best_epoch}"
        + (f", validation accuracy {best['val_accuracy']:.3f}" if "val_accuracy" in best else "")
        + f"); saved to {out} (Hugging Face model in {out / 'model'})"
    )
    if problems:
        print(f"{len(problems)} rows were skipped; see above", file=sys.stderr)
    return EXIT_ROWS_FAILED if problems else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
