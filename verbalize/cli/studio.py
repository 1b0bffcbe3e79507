"""``verbalize studio [TEMPLATES_DIR] [--data FILE ...]``: the template studio, a local web page over a folder
of templates (see :mod:`verbalize.studio`). FastAPI, uvicorn and torch are imported when the command runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from verbalize.cli.options import DTYPE_CHOICES
from verbalize.errors import InputError

DEFAULT_PORT = 8765


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``verbalize studio`` on the CLI's subparsers."""
    s = subparsers.add_parser(
        "studio", help="local web page to edit templates and see their problems, tokens and scores while typing"
    )
    s.add_argument("templates", nargs="?", default=".", metavar="TEMPLATES_DIR", help="folder of *.toml (default: .)")
    s.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="LABELED_FILE",
        help="labeled file (.jsonl, .csv, .tsv, .parquet) to score edits on (repeatable); columns as for eval",
    )
    s.add_argument("--column", default=None, help="text column (default: text, sentence, content, ...)")
    s.add_argument("--label-column", default="label")
    s.add_argument("--field", action="append", default=[], metavar="FIELD=COLUMN", help="column of a template field")
    s.add_argument("--model", default=None, help="hub id, local directory or .gguf file (default: embedded)")
    s.add_argument(
        "--dtype", default=None, choices=DTYPE_CHOICES, help="number format of the weights (default: eval's default)"
    )
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    s.set_defaults(func=run)
    return s


def data_files(args: argparse.Namespace) -> dict[str, Any]:
    """The labeled files by the name the page shows (the file name; a folder is added when two share one)."""
    from verbalize.studio.evaluation import LabeledData

    out: dict[str, Any] = {}
    for given in args.data:
        path = Path(given)
        if not path.is_file():
            raise InputError(f"--data {given}: no such file; give a labeled .jsonl, .csv, .tsv or .parquet file")
        name = path.name if path.name not in out else str(path)
        out[name] = LabeledData(path, args.column, args.label_column, tuple(args.field))
    return out


def build(args: argparse.Namespace, scorer: Any = None) -> Any:
    """The studio's app (model loaded, folder and data checked), before listening."""
    from verbalize.serve import require_extra

    require_extra()  # the studio runs on the service's stack: the same extra, named when missing
    from verbalize.cli.serve import is_loopback
    from verbalize.engine.scoring import Scorer
    from verbalize.estimator import Verbalizer
    from verbalize.studio.app import LOCAL_HOSTS, Studio, create_app
    from verbalize.studio.evaluation import Evaluator
    from verbalize.studio.files import TemplateFolder

    folder = TemplateFolder(Path(args.templates))
    data = data_files(args)
    if scorer is None:
        print(f"verbalize studio: loading model {args.model or '(embedded default)'} ...", file=sys.stderr)
        dtype = args.dtype or Verbalizer().dtype  # eval's default, so the studio's numbers are eval's
        scorer = Scorer.from_pretrained(args.model, dtype=dtype)
    if not is_loopback(args.host):
        print(
            f"warning: listening on {args.host}: anyone who reaches it can read and write the templates in "
            f"{folder.root}; bind 127.0.0.1 unless that is meant",
            file=sys.stderr,
        )
    hosts = frozenset(LOCAL_HOSTS | {args.host})
    return create_app(Studio(folder, Evaluator(scorer, data), hosts=hosts))


def run(args: argparse.Namespace) -> int:
    """Load the model, then serve the page until interrupted."""
    import uvicorn

    app = build(args)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"verbalize studio: open http://{host}:{args.port}/  (Ctrl-C to stop)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
