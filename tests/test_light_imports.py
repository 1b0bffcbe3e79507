"""The light paths stay light: ``import verbalize``, the CLI's parser and ``verbalize check`` never import torch.

Timing a command is flaky on a shared machine; which modules got imported is not. Each check runs in a
fresh interpreter, since this test process has torch loaded already (conftest builds tiny models).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

import verbalize
from verbalize.engine.model_files import _generic_fast_tokenizer, load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "sklearn")
TEMPLATE = 'prompt = "Review: {text}\\nSentiment:"\n[labels]\nnegative = ["bad"]\npositive = ["good", "great"]\n'


def _heavy_modules_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; return the heavy modules it left imported."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model_dir(request, tmp_path_factory):
    family = request.getfixturevalue(request.param)
    path = tmp_path_factory.mktemp(request.param)
    family.model.save_pretrained(path)
    family.tokenizer.save_pretrained(path)
    return path


def test_importing_the_package_and_building_the_cli_parser_imports_no_torch():
    assert _heavy_modules_after("import verbalize, verbalize.cli.main\nverbalize.cli.main._parser()") == []


def test_check_imports_no_torch(model_dir, tmp_path):
    template = tmp_path / "t.toml"
    template.write_text(TEMPLATE)
    code = (
        "import contextlib, io\nfrom verbalize.cli.main import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()):\n    assert main(['check', {str(template)!r}, "
        f"'--model', {str(model_dir)!r}]) == 0"
    )
    assert _heavy_modules_after(code) == []


def test_check_of_a_shipped_template_on_the_default_model_imports_no_torch(default_scorer):
    """``verbalize check sst2`` with a warm cache (the fixture converted the default model once)."""
    code = (
        "import contextlib, io\nfrom verbalize.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    assert main(['check', 'sst2']) == 0"
    )
    assert _heavy_modules_after(code) == []


def test_the_tokenizer_alone_equals_the_one_the_scorer_loads(model_dir):
    """``check`` reads the tokenizer without AutoTokenizer; it must encode exactly as the scorer's does."""
    assert _generic_fast_tokenizer(str(model_dir))  # the torch-free path is the one under test
    tok, ref = load_tokenizer(model_dir), AutoTokenizer.from_pretrained(model_dir)
    assert type(tok) is type(ref)
    for text in ["Review: a charming film\nSentiment: good", " great", "bad", ""]:
        assert tok(text)["input_ids"] == ref(text)["input_ids"]
    assert tok.all_special_ids == ref.all_special_ids and tok.pad_token_id == ref.pad_token_id


def test_a_model_specific_tokenizer_class_goes_through_auto_tokenizer(model_dir, tmp_path, monkeypatch):
    import transformers

    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    folder = tmp_path / "specific"
    folder.mkdir()
    for f in model_dir.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "GPT2Tokenizer"}))
    seen = []
    real = transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: seen.append(a) or real(*a, **k))
    load_tokenizer(folder)
    assert seen == [(str(folder),)]


def test_public_names_resolve_lazily_and_dir_lists_them():
    assert set(verbalize._HOMES) == set(verbalize.__all__) - {"__version__"}
    for name in verbalize.__all__:
        assert getattr(verbalize, name) is not None
        assert name in dir(verbalize)
    assert verbalize.Verbalizer.__module__ == "verbalize.estimator"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        verbalize.nope  # noqa: B018
