"""A quiet terminal (issue 21, bar 2): ``verbalize predict`` prints rows, progress and the final count, nothing else.

The command runs in a fresh interpreter on a pseudo-terminal shared by stdout and stderr, as in a user's
terminal, so a progress bar and a row written on the same line show here as they would there. Optional
extras (torchao, Ray, FastAPI, pyarrow, peft) are imported only by what uses them: torchao, imported by
transformers whenever it is installed, printed two torch ``_pytree`` warnings on every command; the CLI keeps
transformers from importing it (a library leaves transformers alone).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = ("torchao", "ray", "fastapi", "uvicorn", "pyarrow", "peft")
TEMPLATE = 'prompt = "Review: {text}\\nSentiment:"\n[labels]\nnegative = ["bad"]\npositive = ["good", "great"]\n'
TEXTS = ["A charming film.", "Two hours I will never get back.", "Wooden acting.", "Moving.", "Not great, but fine."]
BAR = re.compile(r"^\s*\d+%\|.*\| *\d+/\d+ \[.*\]$")  # tqdm's bar with a count


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, gpt2_model, gpt2_tokenizer):
    path = tmp_path_factory.mktemp("tiny-gpt2")
    gpt2_model.save_pretrained(path)
    gpt2_tokenizer.save_pretrained(path)
    return path


def screen_lines(raw: str) -> list[str]:
    """What a terminal shows for ``raw``: each carriage return goes back to the line's start and overwrites."""
    lines = []
    for line in raw.replace("\r\n", "\n").split("\n"):
        shown = ""
        for part in line.split("\r"):
            shown = part + shown[len(part) :]
        lines.append(shown.rstrip())
    return [line for line in lines if line]


def run_on_terminal(args: list[str], cwd: Path, imported: Path) -> tuple[int, str]:
    """Run the ``verbalize`` command on a 120-column pseudo-terminal (stdout and stderr both); its return code,
    all it wrote, and (in ``imported``) which of EXTRAS it had imported when it exited."""
    code = (
        "import atexit, json, sys\n"
        f"atexit.register(lambda: open({str(imported)!r}, 'w').write(json.dumps([m for m in {EXTRAS!r} "
        "if m in sys.modules])))\n"
        "from verbalize.cli.main import main\nsys.exit(main())"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "COLUMNS", "LINES")}
    env |= {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TERM": "xterm"}
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env=env,
        cwd=cwd,
    )
    os.close(follower)
    out, deadline = b"", time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the command exited and closed the terminal
                break
            if not data:
                break
            out += data
        return proc.wait(timeout=30), out.decode("utf-8", "replace")
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()


def test_predict_on_a_terminal_shows_rows_progress_and_the_count_only(tmp_path, model_dir):
    (tmp_path / "t.toml").write_text(TEMPLATE)
    (tmp_path / "reviews.txt").write_text("\n".join(TEXTS) + "\n")
    imported = tmp_path / "imported.json"
    code, raw = run_on_terminal(["predict", "t.toml", "reviews.txt", "--model", str(model_dir)], tmp_path, imported)
    assert code == 0, raw[-3000:]
    lines = screen_lines(raw)
    rows = [json.loads(line) for line in lines if line.startswith("{")]
    assert [r["text"] for r in rows] == TEXTS, raw[-3000:]
    other = [line for line in lines if not line.startswith("{") and not BAR.match(line)]
    assert other == ["5 rows written to stdout"], raw[-3000:]  # no warning, no row sharing a line with the bar
    assert any(BAR.match(line) and "5/5" in line for line in lines), raw[-3000:]
    # pyarrow: pandas (imported by scikit-learn) imports it when installed; not ours to avoid
    assert [m for m in json.loads(imported.read_text()) if m != "pyarrow"] == []


def imported_after(code: str, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has imported after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {modules!r} if m in sys.modules]))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_verbalize_imports_no_optional_extra():
    """The classifying path is checked by the terminal test above (``predict`` imports the estimator and the jobs)."""
    assert imported_after("import verbalize, verbalize.cli.main\nverbalize.cli.main._parser()", EXTRAS) == []


def test_the_cli_prints_a_warning_as_one_line():
    """The CLI's own hook: ``warning: <message>``, no file name, no source line (the library installs none)."""
    from verbalize.cli.console import one_line_warnings

    before = warnings.formatwarning
    message = "95% of the predictions are 'positive'"
    with one_line_warnings():
        assert warnings.formatwarning(message, UserWarning, "verbalize/x.py", 12) == f"warning: {message}\n"
        with pytest.warns(UserWarning, match="95%"):  # recorded warnings are still recorded (pytest.warns)
            warnings.warn(message, UserWarning, stacklevel=1)
    assert warnings.formatwarning is before


def test_the_cli_logs_a_warning_record_as_one_line():
    import logging

    from verbalize.cli.console import OneLineFormatter

    record = logging.LogRecord(
        "verbalize.x", logging.WARNING, "x.py", 3, "serving on %s without an API key", ("::",), None
    )
    assert OneLineFormatter().format(record) == "warning: serving on :: without an API key"


@pytest.mark.slow  # ~12 s: transformers' model code and torchao in a fresh interpreter
def test_torchao_hidden_from_transformers_stays_importable_for_int8_off_cpu():
    """The CLI hides torchao from transformers' model code only: verbalize's own int8 path (off CPU) imports it."""
    import importlib.util

    if importlib.util.find_spec("torchao") is None:
        pytest.skip("torchao (the int8 extra) is not installed")
    code = (
        "import sys\nfrom verbalize.cli.console import hide_unused_torchao\nhide_unused_torchao()\n"
        "import transformers.modeling_utils\nassert 'torchao' not in sys.modules\n"
        "from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_\nprint('ok')"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
