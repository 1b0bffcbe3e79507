"""Every code block of README.md and eval/README.md runs as written (issue 21, bar 1).

The default suite reads the blocks only: every python block compiles, every TOML block is a template that
loads, every ``verbalize SUBCOMMAND --flag`` is in that subcommand's ``--help`` and every
``python eval/X.py --flag`` in that script's argparse, every file a command or a python string names
exists (or an earlier example of the same file writes it), and every template named without a path is a
shipped one.

The slow test (``-m slow``, in ``.ci/run``) runs them, one README file at a time, in order:

- in a temporary copy of the working tree (tracked and untracked files, not ignored ones) beside a link
  to ``../shared`` (the eval data), so files the examples write land in that copy;
- bash commands with ``bash -c`` from the copy's root, under a throwaway venv made with
  ``--system-site-packages`` first on ``PATH``, so ``pip install`` lines install there, never into the
  machine's environment (the README's wheel is installed there, and later commands use it, as a user's
  would); ``export NAME=VALUE`` lines carry to the later commands of the file;
- python blocks in one Python session per file (an interpreter that runs the blocks one after the other
  in one namespace, like a user pasting them in order), from the copy's root; an expression followed at
  once by a comment line that reads as a value (``# array([...])``) must show that value;
- every command must exit 0; output that is JSON lines must parse, with no ``error`` row;
- what cannot run as written is listed below, each entry with its reason, and the test fails when an
  entry no longer names a command or a statement of the files: the CI's own commands (checked to be in
  ``.ci/run``), what needs the Hugging Face hub, a service (started in the background, ready before the
  next command, stopped at the end of its file), and the eval scripts that reproduce published figures
  over the full data in minutes to hours (each runs for a bounded time and must not fail within it).
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from readme_examples import FILES, ROOT, SESSION, Block, Command, blocks, commands, statements, words

from verbalize import load_template
from verbalize.cli.main import main

# The eval data lies outside the repo (``../shared/data`` beside the checkout, or ``$VERBALIZE_DATA``): the
# examples that name ``../shared/data`` are checked and run against it where it exists, and are skipped
# (named on stderr) on a machine without it, such as a bare CI clone.
EVAL_DATA = Path(os.environ.get("VERBALIZE_DATA") or ROOT.parent / "shared" / "data")
DATA_PREFIX = "../shared/data"
TIMEOUT = 600  # seconds for a command or python block: a guard against a hang, not a speed bar
# The CI's own commands: `.ci/run` runs them as written (set-up, then the default suite) before this test.
CI_COMMANDS = {
    "bash .ci/setup": "the set-up of a fresh machine; .ci/run runs it first",
    "python -m pytest": "the default suite; .ci/run runs it just before the slow suite this test is part of",
}
# Statements that need what CI cannot have.
NOT_RUN = {
    'Verbalizer(template="templates/agnews.toml", model="gpt2")': "downloads gpt2 from the Hugging Face hub",
}
# Commands that start a service: run in the background, ready when this URL answers 200; stopped at the end.
SERVICES = {
    "verbalize serve sst2 templates/agnews.toml runs/sst2-ft --host 127.0.0.1 --port 8000 --window-ms 5":
        "http://127.0.0.1:8000/readyz",
    "verbalize studio templates --data ../shared/data/sst2/test.jsonl": "http://127.0.0.1:8765/",
}  # fmt: skip
# eval scripts that reproduce the published figures over the full data (minutes to hours on 2 cores):
# each runs this many seconds (past its imports, data and model loading) and must not fail within them.
BOUNDED = {
    "python eval/zero_shot.py --data ../shared/data --dataset sst2": 20,
    "python eval/zero_shot.py --dataset sst2 --calibration none contextual": 20,
    "python eval/bench_speed.py --data ../shared/data": 15,
    "python eval/bench_speed.py": 15,
    "python eval/bench_jobs.py --part rss && python eval/bench_jobs.py --part kill": 15,
    "python eval/bench_ray.py": 25,
    "python eval/bench_fewshot.py": 15,
    "python eval/bench_hostile.py": 25,
    "python eval/bench_huge.py": 15,
    "python eval/bench_studio.py --data ../shared/data": 20,
    "python eval/bench_gpu.py --data ../shared/data": 20,
    "python eval/finetune.py --k 16 64 --seeds 0 1 2 --limit 200 --out results/finetune.jsonl": 15,
    "python eval/generation.py": 15,
}
# The grid writes a row per run; it runs until its first row (report.py then has rows to read).
UNTIL_FIRST_ROW = {
    "for ds in trec sst2 agnews; do\n"
    "python eval/run.py --datasets $ds --k 0 1 4 8 --seeds 0 1 2 3 4 --limit 300 --out results/grid.jsonl\n"
    "done": ("results/grid.jsonl", TIMEOUT),
}
SHELL_LANGS = {"bash", "sh", "console", "shell"}
SHIPPED = {p.stem for p in (ROOT / "templates").glob("*.toml")}
OUTPUT_FLAGS = {"-o", "--output", "--out", "-w", ">", "--plots"}
SAVERS = {"save", "save_pretrained", "write_parquet", "write_csv", "write_json"}


def _all_blocks() -> list[Block]:
    return [b for f in FILES for b in blocks(f)]


def _all_commands() -> list[Command]:
    return [c for b in _all_blocks() if b.lang in SHELL_LANGS for c in commands(b)]


def _ids(items: list) -> list[str]:
    return [item.where for item in items]


# ---------------------------------------------------------------- default suite: the blocks read well


_PYTHON = [b for b in _all_blocks() if b.lang == "python"]
_TOML = [b for b in _all_blocks() if b.lang == "toml"]


@pytest.mark.parametrize("block", _PYTHON, ids=_ids(_PYTHON))
def test_python_block_compiles(block: Block) -> None:
    assert statements(block), f"{block.where}: an empty python block"


@pytest.mark.parametrize("block", _TOML, ids=_ids(_TOML))
def test_toml_block_is_a_template_that_loads(block: Block, tmp_path: Path) -> None:
    data = tomllib.loads(block.text)
    path = tmp_path / f"{data.get('name', 'example')}.toml"
    path.write_text(block.text, encoding="utf-8")
    assert load_template(path).labels, block.where


def _help_flags(subcommand: str, capsys: pytest.CaptureFixture[str]) -> set[str]:
    with pytest.raises(SystemExit):
        main([subcommand, "--help"])
    return set(re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", capsys.readouterr().out))


def _flags(argv: list[str]) -> set[str]:
    return {w.split("=")[0] for w in argv if re.fullmatch(r"--?[a-zA-Z][\w-]*(=.*)?", w)}


def _inline_commands() -> list[str]:
    """``verbalize ...`` commands written in the prose (inline code) of both files."""
    found = []
    for file in FILES:
        text = re.sub(r"```.*?```", "", (ROOT / file).read_text(encoding="utf-8"), flags=re.S)
        found += re.findall(r"`(verbalize [a-z]+[^`]*)`", text.replace("\n", " "))
    return found


def _usage_lines() -> list[str]:
    """Lines of the usage blocks (```text) that show a ``verbalize`` command: not run, but their flags are checked."""
    return [
        line for b in _all_blocks() if b.lang == "text" for line in b.text.splitlines() if line.startswith("verbalize ")
    ]


def _command_lines() -> list[str]:
    parts = []
    for text in [c.text for c in _all_commands()] + _inline_commands() + _usage_lines():
        parts += [p.strip() for p in re.split(r"&&|\n|;", text) if p.strip()]
    return parts


def test_every_cli_flag_exists(capsys: pytest.CaptureFixture[str]) -> None:
    problems = []
    for line in _command_lines():
        argv = words(line)
        if len(argv) >= 2 and argv[0] == "verbalize" and not argv[1].startswith("-"):
            known = _help_flags(argv[1], capsys)
            problems += [f"{line!r}: {f} is not an option of `verbalize {argv[1]}`" for f in _flags(argv) - known]
        elif len(argv) >= 2 and argv[0] == "python" and argv[1].startswith("eval/"):
            source = (ROOT / argv[1]).read_text(encoding="utf-8")
            problems += [f"{line!r}: {f} is not an option of {argv[1]}" for f in _flags(argv) if f'"{f}"' not in source]
    assert not problems, "\n".join(problems)


def _looks_like_path(word: str) -> bool:
    if word.startswith("-") or any(c in word for c in "$:{}*= ") or Path(word).stem.isupper():
        return False
    return "/" in word or bool(re.search(r"\.(toml|jsonl|txt|csv|tsv|parquet|py|whl)$", word))


def _python_paths(block: Block) -> tuple[list[str], list[str]]:
    """(paths read, paths written) by the string constants of a python block."""
    read, written = [], []
    for node in ast.walk(ast.parse(block.text)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SAVERS:
            written += [a.value for a in node.args[:1] if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _looks_like_path(node.value):
            read.append(node.value)
    return [p for p in read if p not in written], written


def _shell_paths(command: Command) -> tuple[list[str], list[str]]:
    argv = words(command.text.replace(">", " > "))
    written = [argv[i + 1] for i, w in enumerate(argv[:-1]) if w in OUTPUT_FLAGS]
    read = [w for w in argv if _looks_like_path(w) and w not in written and not w.startswith("http")]
    return read, written


def _exists(path: str, written: list[str]) -> bool:
    clean = re.sub(r"\[.*\]$", "", path)
    if clean.startswith(DATA_PREFIX):  # the eval data, outside the repo
        return not EVAL_DATA.is_dir() or (EVAL_DATA / clean.removeprefix(DATA_PREFIX).lstrip("/")).exists()
    if (ROOT / clean).exists() or any(clean == w or clean.startswith(w.rstrip("/") + "/") for w in written):
        return True
    return clean.startswith(("s3://", "ray://"))


def test_every_named_file_exists_or_is_written_before() -> None:
    problems = []
    for file in FILES:
        written: list[str] = []
        for block in blocks(file):
            if block.lang == "python":
                pairs = [(block.where, _python_paths(block))]
            elif block.lang in SHELL_LANGS:
                pairs = [(c.where, _shell_paths(c)) for c in commands(block)]
            else:
                continue
            for where, (read, wrote) in pairs:
                problems += [f"{where}: {p} does not exist" for p in read if not _exists(p, written + wrote)]
                written += wrote
    assert not problems, "\n".join(problems)


def _named_templates(block: Block) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(block.text)):
        if isinstance(node, ast.keyword) and node.arg == "template" and isinstance(node.value, ast.Constant):
            names.append(node.value.value)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "TemplateEnsemble" and node.args:
            names += [e.value for e in getattr(node.args[0], "elts", []) if isinstance(e, ast.Constant)]
    return [n for n in names if isinstance(n, str) and re.fullmatch(r"[\w-]+", n)]


def test_every_template_named_without_a_path_is_shipped() -> None:
    problems = []
    for block in _all_blocks():
        if block.lang == "python":
            problems += [f"{block.where}: {n}" for n in _named_templates(block) if n not in SHIPPED]
    for line in _command_lines():
        argv = words(line)
        if len(argv) >= 3 and argv[0] == "verbalize" and argv[1] in {"check", "predict", "eval", "finetune", "suggest"}:
            named = [argv[2]]
        elif len(argv) >= 3 and argv[:2] == ["verbalize", "serve"]:
            named = list(itertools.takewhile(lambda w: not w.startswith("-"), argv[2:]))  # before any option
        else:
            continue
        problems += [f"{line!r}: {n}" for n in named if re.fullmatch(r"[a-z0-9_]+", n) and n not in SHIPPED]
    assert not problems, "templates named that are not shipped (templates/*.toml):\n" + "\n".join(problems)


def test_every_exception_names_an_example() -> None:
    texts = {c.text for c in _all_commands()}
    parts = {p.strip() for t in texts for p in t.split("&&")}
    sources = {s.source for b in _all_blocks() if b.lang == "python" for s in statements(b)}
    stale = [k for k in [*SERVICES, *BOUNDED, *UNTIL_FIRST_ROW] if k not in texts]
    stale += [k for k in CI_COMMANDS if k not in parts]
    stale += [k for k in NOT_RUN if k not in sources]
    assert not stale, f"the exception lists of {__name__} name examples the READMEs no longer have: {stale}"
    ci_run = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert all(k in ci_run for k in CI_COMMANDS), f".ci/run no longer runs all of {list(CI_COMMANDS)}"


# ---------------------------------------------------------------- slow: the blocks run as written


class Workspace:
    """A copy of the working tree, a venv on PATH, a Python session and the services of one README file."""

    def __init__(self, tmp: Path, venv: Path) -> None:
        self.root = tmp / "main"
        names = (
            subprocess.run(
                ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
            )
            .stdout.decode()
            .split("\0")
        )
        for name in filter(None, names):
            if (ROOT / name).is_file() or (ROOT / name).is_symlink():  # verbalize/templates is a link
                (self.root / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, self.root / name, follow_symlinks=False)
        if EVAL_DATA.is_dir():
            (tmp / "shared").mkdir()
            (tmp / "shared" / "data").symlink_to(EVAL_DATA.resolve())
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        self.env["PATH"] = f"{venv / 'bin'}{os.pathsep}{self.env['PATH']}"
        self.log = open(tmp / "python-session.log", "w")  # noqa: SIM115 (closed in close())
        self.session: subprocess.Popen[str] | None = None
        self.answers = -1
        self.services: list[subprocess.Popen[bytes]] = []

    def shell(self, command: str, timeout: float) -> tuple[int | None, str, str]:
        """Exit status (None: still running at ``timeout``, then stopped), stdout and stderr."""
        proc = subprocess.Popen(
            ["bash", "-c", f"set -eo pipefail\n{command}"], cwd=self.root, env=self.env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        try:
            out, err = proc.communicate(timeout=timeout)
            return proc.returncode, out, err
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            return None, out, err

    def python(self, block: Block, timeout: float) -> str:
        """Run a python block in the file's session; returns an error message, or '' if it ran."""
        if self.session is None:
            read, self.answers = os.pipe()
            self.env["README_RESULT_FD"] = str(self.answers)
            self.session = subprocess.Popen(
                ["python", "-u", "-c", SESSION], cwd=self.root, env=self.env, text=True, stdin=subprocess.PIPE,
                stdout=self.log, stderr=subprocess.STDOUT, pass_fds=(self.answers,), start_new_session=True,
            )  # fmt: skip
            self.answers_read = os.fdopen(read)
        todo = [[s.line, s.source, s.expected] for s in statements(block)]
        assert self.session.stdin is not None
        self.session.stdin.write(json.dumps({"where": block.where, "statements": todo, "skip": list(NOT_RUN)}) + "\n")
        self.session.stdin.flush()
        if not select.select([self.answers_read], [], [], timeout)[0]:
            _stop(self.session)
            self.session = None
            return f"still running after {timeout} s"
        answer = json.loads(self.answers_read.readline() or '{"ok": false, "error": "the session ended"}')
        return "" if answer["ok"] else answer["error"]

    def serve(self, command: str, url: str, timeout: float) -> str:
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {command}"], cwd=self.root, env=self.env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.services.append(proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        return ""
            except OSError:
                time.sleep(1)
        if proc.poll() is not None:
            return f"exited {proc.returncode} before it was ready:\n{proc.stderr.read().decode()[-3000:]}"  # type: ignore[union-attr]
        return f"not ready at {url} within {timeout} s"

    def close(self) -> None:
        for proc in [*self.services, *([self.session] if self.session else [])]:
            _stop(proc)
        self.session, self.services = None, []
        self.log.close()


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to a process group we started, SIGKILL after 30 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _json_rows_problem(out: str) -> str:
    lines = [line for line in out.splitlines() if line.strip()]
    if not lines or not all(line.startswith("{") for line in lines):
        return ""
    try:
        rows = [json.loads(line) for line in lines]
    except json.JSONDecodeError as exc:
        return f"prints lines that are not JSON: {exc}"
    bad = [r for r in rows if "error" in r]
    return f"prints error rows: {bad[:3]}" if bad else ""


def _run_command(ws: Workspace, command: Command) -> str:
    text = command.text
    if export := re.fullmatch(r"export (\w+)=(\S+)", text):
        ws.env[export.group(1)] = export.group(2)
        return ""
    for ci in CI_COMMANDS:  # .ci/run runs it as written (test_every_exception_names_an_example checks)
        text = text.removeprefix(f"{ci} && ") if text != ci else ""
    if not text:
        return ""
    needs_data = DATA_PREFIX in text or DATA_PREFIX in ws.env.get("VERBALIZE_DATA", "")  # named, or exported
    if needs_data and not EVAL_DATA.is_dir():
        print(f"skipped {command.where}: no eval data at {EVAL_DATA} (set VERBALIZE_DATA)", file=sys.stderr)
        return ""
    if text in SERVICES:
        return ws.serve(text, SERVICES[text], TIMEOUT)
    if text in UNTIL_FIRST_ROW:
        return _run_until_row(ws, text, *UNTIL_FIRST_ROW[text])
    code, out, err = ws.shell(text, BOUNDED.get(text, TIMEOUT))
    if code is None and text in BOUNDED and "Traceback" not in err:
        return ""
    if code != 0:
        status = "still running" if code is None else f"exit {code}"
        return f"{status}:\n{out[-2000:]}\n{err[-3000:]}"
    problem = _json_rows_problem(out)
    argv = words(text)
    if not problem and argv[:2] == ["verbalize", "predict"] and argv[-1].endswith(".txt") and "-o" not in argv:
        expected = len((ws.root / argv[-1]).read_text(encoding="utf-8").splitlines())
        rows = len(out.splitlines())
        problem = "" if rows == expected else f"printed {rows} rows for {expected} lines"
    return problem


def _run_until_row(ws: Workspace, text: str, path: str, timeout: float) -> str:
    target = ws.root / path
    proc = subprocess.Popen(
        ["bash", "-c", text], cwd=ws.root, env=ws.env, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if target.exists() and target.read_text(encoding="utf-8").strip():
            break
        time.sleep(1)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    err = proc.communicate()[1]
    if proc.returncode not in (0, -signal.SIGKILL) or "Traceback" in err:
        return f"exit {proc.returncode}:\n{err[-3000:]}"
    return "" if target.exists() and target.read_text(encoding="utf-8").strip() else f"no row in {path} in {timeout} s"


def _timed(where: str, run: Callable[[], str]) -> list[str]:
    """Run one example; say on stderr how long it took and how it went (a run stopped early still tells)."""
    started = time.monotonic()
    problem = run()
    print(f"{'FAILED' if problem else 'ok'} {where} ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    return [f"{where}: {problem}"] if problem else []


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("readme-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(root)], check=True)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("file", FILES)
def test_readme_examples_run_as_written(file: str, venv: Path, tmp_path: Path) -> None:
    ws = Workspace(tmp_path, venv)
    failures = []
    try:
        for block in blocks(file):
            if block.lang == "python":
                failures += _timed(block.where, lambda block=block: ws.python(block, TIMEOUT))
            elif block.lang in SHELL_LANGS:
                for command in commands(block):
                    failures += _timed(command.where, lambda command=command: _run_command(ws, command))
    finally:
        ws.close()
    assert not failures, f"{len(failures)} examples of {file} failed:\n\n" + "\n\n".join(failures)
