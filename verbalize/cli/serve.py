"""``verbalize serve TEMPLATE_OR_DIR... [--host --port --model ...]``: argparse set-up and runner.

``verbalize/cli/main.py`` registers the command with :func:`add_parser`; nothing here is imported
from FastAPI, uvicorn or torch until the command runs, so the other commands work without the extra
and start fast.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from verbalize.prompting.template import load_template


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` command to an ``argparse`` sub-parser collection; returns its parser."""
    s = subparsers.add_parser(
        "serve", help="HTTP service: micro-batched classification with many templates on one model, hot reload"
    )
    s.add_argument(
        "templates",
        nargs="+",
        metavar="TEMPLATE_OR_DIR",
        help="template files or shipped names (sst2, ...), directories of *.toml templates, "
        "or directories written by save/finetune",
    )
    s.add_argument(
        "--model",
        default=None,
        help="model of the template files: hub id, local dir, .gguf "
        "(default: embedded); saved classifiers keep their own",
    )
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--window-ms", type=float, default=5.0, help="longest wait to batch more requests (default 5)")
    s.add_argument("--max-batch-tokens", type=int, default=8192, help="estimated tokens that close a batch early")
    s.add_argument("--max-queue-texts", type=int, default=4096, help="texts waiting before answering 429")
    s.add_argument("--max-request-texts", type=int, default=256, help="texts per request (413 beyond)")
    s.add_argument("--max-request-bytes", type=int, default=1 << 20, help="body bytes per request (413 beyond)")
    s.add_argument("--reload-interval", type=float, default=1.0, help="seconds between template file checks; 0: off")
    s.add_argument("--batch-size", type=int, default=64, help="most prompts per forward pass")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    """Check the templates (fail fast, before loading a model), then run uvicorn until interrupted."""
    from verbalize.serve import require_extra

    require_extra()
    import uvicorn

    from verbalize.serve.app import ServeConfig, create_app
    from verbalize.serve.registry import expand_sources  # imports the estimator (torch): only when the command runs

    for source in expand_sources(args.templates):
        if source.kind == "template":
            load_template(source.path)  # TemplateError lists every problem: exit 2 before any model loads
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    logging.getLogger("verbalize").setLevel(args.log_level.upper())
    config = ServeConfig(
        window_ms=args.window_ms,
        max_batch_tokens=args.max_batch_tokens,
        max_queue_texts=args.max_queue_texts,
        max_request_texts=args.max_request_texts,
        max_request_bytes=args.max_request_bytes,
        reload_interval_s=args.reload_interval,
        batch_size=args.batch_size,
    )
    app = create_app(args.templates, model=args.model, config=config)
    uvicorn.run(
        app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=60, backlog=2048
    )
    return 0
