"""The code blocks of README.md and eval/README.md, as data: extraction and a Python session that runs them.

Used by ``tests/test_readme_examples.py``. A block is a fenced code block (```python, ```bash, ```sh,
```console, ```toml, ...). A bash block is cut into commands: one per line, a line ending in a backslash
continues on the next, and a ``for ... do`` / ``done`` loop is one command; comments are dropped. A python
block is cut into its top-level statements, so that one statement can be named (in a skip list) and an
expression followed at once by a comment line (``# array([...])``) can be checked against what it shows.
"""

from __future__ import annotations

import ast
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = ("README.md", "eval/README.md")
_FENCE = re.compile(r"^```(\S*)\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced code block: its file, the line of its first code line, its language and section."""

    file: str
    line: int
    lang: str
    section: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Command:
    """One command of a bash block, continuation lines joined and comments dropped."""

    block: Block
    line: int
    text: str

    @property
    def where(self) -> str:
        return f"{self.block.file}:{self.line}"


def blocks(file: str) -> list[Block]:
    """Every fenced code block of ``file`` (relative to the repository root), in order."""
    found: list[Block] = []
    section, lang, start, body = "", None, 0, []
    for number, line in enumerate((ROOT / file).read_text(encoding="utf-8").splitlines(), 1):
        fence = _FENCE.match(line)
        if lang is None and fence:
            lang, start, body = fence.group(1) or "text", number + 1, []
        elif lang is not None and line.strip() == "```":
            found.append(Block(file, start, lang, section, "\n".join(body) + "\n"))
            lang = None
        elif lang is not None:
            body.append(line)
        elif heading := _HEADING.match(line):
            section = heading.group(2).strip()
    if lang is not None:
        raise ValueError(f"{file}:{start - 1}: a code block is never closed (expected a line ```)")
    return found


def strip_comment(line: str) -> str:
    """``line`` without its shell comment (a ``#`` at the start or after a blank, outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def commands(block: Block) -> list[Command]:
    """The commands of a bash block (see the module's docstring for the cutting rule)."""
    found: list[Command] = []
    pending: list[str] = []
    first = 0
    depth = 0
    for number, raw in enumerate(block.text.splitlines(), block.line):
        line = strip_comment(raw)
        if not line.strip() and not pending:
            continue
        if not pending:
            first = number
        continued = line.endswith("\\")
        pending.append(line[:-1].strip() + " " if continued else line.strip() + "\n")
        tokens = line.replace(";", " ; ").split()
        depth += tokens.count("do") - tokens.count("done")
        if not continued and depth == 0:
            found.append(Command(block, first, re.sub(r"[ \t]+", " ", "".join(pending)).strip()))
            pending = []
    if pending:
        raise ValueError(f"{block.file}:{first}: an unfinished command (a trailing backslash or a loop without done)")
    return found


def words(command: str) -> list[str]:
    """The shell words of a command (quotes removed); brackets of a usage line count as blanks."""
    return shlex.split(re.sub(r"[\[\]|]", " ", command))


@dataclass(frozen=True)
class Statement:
    """A top-level statement of a python block, with the output a comment line right after it shows."""

    line: int
    source: str
    expected: str | None


def statements(block: Block) -> list[Statement]:
    """The top-level statements of a python block (``SyntaxError`` if it does not compile)."""
    lines = block.text.splitlines()
    tree = ast.parse(block.text, filename=block.where)
    found = []
    for node in tree.body:
        end = node.end_lineno or node.lineno
        source = "\n".join(lines[node.lineno - 1 : end])
        expected = None
        following = lines[end].strip() if end < len(lines) else ""
        if isinstance(node, ast.Expr) and following.startswith("# ") and _is_expression(following[2:]):
            expected = following[2:].strip()
        found.append(Statement(block.line + node.lineno - 1, source.strip(), expected))
    return found


def _is_expression(text: str) -> bool:
    """Whether a comment's text reads as a value (``array([...])``), not as prose."""
    try:
        ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        return False
    return True


# A Python session that runs blocks sent to it one by one in one namespace, like a user pasting the README
# into one interpreter. Requests: one JSON line each on stdin ({"where", "statements": [[line, source,
# expected], ...], "skip": [source, ...]}); answers: one JSON line each on the file descriptor in
# $README_RESULT_FD ({"ok": bool, "error": str}).
SESSION = r"""
import json, os, sys, traceback
answers = os.fdopen(int(os.environ["README_RESULT_FD"]), "w", buffering=1)
namespace = {"__name__": "__main__"}
for request in sys.stdin:
    request = json.loads(request)
    error = ""
    for line, source, expected in request["statements"]:
        if source in request["skip"]:
            continue
        try:
            if expected is None:
                exec(compile(source, f"{request['where']} line {line}", "exec"), namespace)
                continue
            value = eval(compile(source, f"{request['where']} line {line}", "eval"), namespace)
            if repr(value) != expected:
                error = f"line {line}: {source}\n  shows  {expected}\n  gave   {value!r}"
                break
        except BaseException:
            error = f"line {line}: {source}\n" + traceback.format_exc()
            break
    sys.stdout.flush(); sys.stderr.flush()
    answers.write(json.dumps({"ok": not error, "error": error}) + "\n")
"""
