"""The wheel carries every module of every subpackage and every shipped template (pyproject finds packages itself;
a subpackage missing from a hand-kept list once shipped a wheel that could not import)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_holds_every_module_and_template(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "-q",
        "-w",
        str(tmp_path),
        str(ROOT),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = tmp_path.glob("verbalize-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {
        p.relative_to(ROOT).as_posix() for p in (ROOT / "verbalize").rglob("*.py") if "__pycache__" not in p.parts
    }
    templates = {f"verbalize/templates/{p.name}" for p in (ROOT / "templates").glob("*.toml")}
    assert len(templates) >= 4 and "verbalize/py.typed" in names
    assert modules - names == set() and templates - names == set()
    assert {n for n in names if n.endswith(".py")} - modules == set()  # nothing stale or foreign
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
