"""``verbalize serve TEMPLATE_OR_DIR... [--host --port --model ...]``: argparse set-up and runner.

``verbalize/cli/main.py`` registers the command with :func:`add_parser`; nothing here is imported
from FastAPI, uvicorn or torch until the command runs, so the other commands work without the extra
and start fast.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from pathlib import Path
from typing import Any

from verbalize.cli.options import DTYPE_CHOICES
from verbalize.cli.threads import add_threads_argument
from verbalize.prompting.template import load_template

logger = logging.getLogger(__name__)

API_KEY_ENV = "VERBALIZE_API_KEY"


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
    s.add_argument(
        "--dtype",
        default=None,
        choices=DTYPE_CHOICES,
        help="number format of the classifiers that do not name one (default: $VERBALIZE_DTYPE, else auto: the "
        "fastest format that passes the exactness probe, measured once per model and machine); "
        "a saved classifier's own dtype wins",
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
    s.add_argument(
        "--max-text-chars",
        type=int,
        default=4_000,
        help="characters per text (per field) at most; longer ones answer 413 text_too_long naming the text "
        "(default 4000, about 1,000 tokens: a fixed cap on the model time and memory one text costs everyone, "
        "not derived from the context; on a 2-core Xeon with AVX-512 VNNI and AMX the embedded model took "
        "1.4 s and +230 MB RSS for a 4,000-character text, 6 s and +540 MB for 20,000)",
    )
    s.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        help="seconds a request waits for its answer; beyond: 503 deadline_exceeded, its texts dropped (default 30)",
    )
    s.add_argument(
        "--read-timeout", type=float, default=10.0, help="seconds to send a request's head or body (default 10)"
    )
    s.add_argument("--keep-alive", type=float, default=5.0, help="seconds an idle keep-alive connection stays open")
    s.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="open connections at most; beyond, the oldest one without a complete request is closed (default 256)",
    )
    s.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on every route but /healthz and /readyz "
        f"(or set {API_KEY_ENV}, or use --api-key-file; a flag shows in the process list)",
    )
    s.add_argument("--api-key-file", default=None, help="read the API key from this file (first line)")
    add_threads_argument(s)  # set by main before the command runs, as for predict
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    """Check the templates (fail fast, before loading a model), then run uvicorn until interrupted."""
    server = prepare(args)
    from verbalize.serve.connections import bound_uvicorn_log

    bound_uvicorn_log()  # after uvicorn.Config configured its loggers
    server.run()
    return 0


def api_key(args: argparse.Namespace) -> str | None:
    """The API key from ``--api-key``, ``--api-key-file`` or the environment (in that order), or None.

    Raises
    ------
    ValueError
        The key file cannot be read, or a key given is empty.
    """
    if args.api_key is not None:
        key, where = args.api_key, "--api-key"
    elif args.api_key_file is not None:
        try:
            text = Path(args.api_key_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"--api-key-file {args.api_key_file}: cannot read the key: {exc}") from None
        key, where = (text.splitlines() or [""])[0], f"--api-key-file {args.api_key_file}"
    elif API_KEY_ENV in os.environ:
        key, where = os.environ[API_KEY_ENV], API_KEY_ENV
    else:
        return None
    key = key.strip()
    if not key:
        raise ValueError(f"{where}: the API key is empty; give a non-empty key, or none to serve without one")
    return key


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def prepare(args: argparse.Namespace) -> Any:
    """Everything before listening: checks, the app and a ``uvicorn.Server`` (not started).

    Warns (logging) when the host is reachable from other machines and no API key is set.
    """
    from verbalize.serve import require_extra

    require_extra()
    import uvicorn

    from verbalize.serve.app import ServeConfig, create_app
    from verbalize.serve.connections import server_options
    from verbalize.serve.registry import expand_sources  # imports the estimator (torch): only when the command runs

    for source in expand_sources(args.templates):
        if source.kind == "template":
            load_template(source.path)  # TemplateError lists every problem: exit 2 before any model loads
    logging.getLogger("verbalize").setLevel(args.log_level.upper())
    if args.dtype is not None:  # what dtype="auto" means in this process: the preloaded model and the classifiers
        from verbalize.engine.formats import ENV

        os.environ[ENV] = args.dtype
    config = ServeConfig(
        window_ms=args.window_ms,
        max_batch_tokens=args.max_batch_tokens,
        max_queue_texts=args.max_queue_texts,
        max_request_texts=args.max_request_texts,
        max_request_bytes=args.max_request_bytes,
        reload_interval_s=args.reload_interval,
        batch_size=args.batch_size,
        max_text_chars=args.max_text_chars,
        request_timeout_s=args.request_timeout,
        read_timeout_s=args.read_timeout,
        keep_alive_s=args.keep_alive,
        max_connections=args.max_connections,
        api_key=api_key(args),
    )
    if config.api_key is None and not is_loopback(args.host):
        logger.warning(
            "serving on %s without an API key: anyone who can reach this address can classify, list the "
            "templates and read the metrics; set --api-key, --api-key-file or %s, or bind 127.0.0.1",
            args.host,
            API_KEY_ENV,
        )
    app = create_app(args.templates, model=args.model, config=config)
    options = server_options(config)
    return uvicorn.Server(
        uvicorn.Config(
            app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=60, **options
        )
    )
