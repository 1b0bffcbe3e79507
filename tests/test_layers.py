"""The package's layers and import rules hold (import-linter, as .ci/run runs it), and the two contract types
written for this project catch what they are for."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import grimp
import pytest
from import_contracts import _cycles, private_imports

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(
    shutil.which("lint-imports") is None, reason="import-linter is not installed: pip install -e .[dev]"
)
def test_import_linter_contracts_are_kept():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    done = subprocess.run(["lint-imports"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "BROKEN" not in done.stdout and done.stdout.count("KEPT") >= 3


def test_every_top_level_module_and_subpackage_is_in_a_layer():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    named = {m.strip() for layer in layers for m in layer.replace("|", ":").split(":")}
    present = {
        f"verbalize.{p.stem if p.is_file() else p.name}"
        for p in (ROOT / "verbalize").iterdir()
        if (p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and (p / "__init__.py").is_file())
    }
    assert present - named == set(), "add these to a layer in pyproject's [tool.importlinter]"


def _package(tmp_path: Path, files: dict[str, str]) -> grimp.ImportGraph:
    for name, code in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(code))
    sys.path.insert(0, str(tmp_path))
    return grimp.build_graph("pkg", cache_dir=None)


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg.b import f\n",
            "b.py": "def f():\n    from pkg.a import g  # lazy, still a cycle\n",
            "c.py": "import pkg.a\n",
        },
    )
    assert _cycles(graph, graph.find_descendants("pkg")) == [["pkg.a", "pkg.b"]]


def test_a_private_name_from_another_module_is_found_relative_imports_included(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _package(
        tmp_path,
        {
            "__init__.py": "__version__ = '1'\n",
            "a.py": "_x = 1\ny = 2\n",
            "b.py": "from pkg.a import y\nfrom . import __version__\nfrom .a import (\n    y as z,\n    _x,\n)\n",
        },
    )
    for m in [m for m in sys.modules if m == "pkg" or m.startswith("pkg.")]:
        del sys.modules[m]
    assert private_imports("pkg.b", "pkg") == ["pkg.b:3: from pkg.a import _x"]
    assert private_imports("pkg.a", "pkg") == []
