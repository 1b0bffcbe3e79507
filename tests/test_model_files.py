"""Model files (issue 21, item 9): one converted copy per GGUF content, and a hub id offline fails at once."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from verbalize import ModelLoadError
from verbalize.engine.model_files import converted_dir, load_tokenizer, model_source
from verbalize.engine.models import load_model


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("VERBALIZE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _gguf(path: Path, content: bytes, mtime_ns: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def test_one_converted_copy_per_content_not_per_installation(tmp_path, cache):
    """The key was the file's path and modification time: each virtual environment (one per torch version)
    converted the embedded model again and kept its own 517 MB copy."""
    content = b"GGUF" + bytes(range(256)) * 9000  # over 2 MiB: both ends are read
    venv_a = _gguf(tmp_path / "venv-a" / "site-packages" / "m.gguf", content, 10**18)
    venv_b = _gguf(tmp_path / "venv-b" / "site-packages" / "m.gguf", content, 2 * 10**18)
    assert converted_dir(venv_a) == converted_dir(venv_b)
    assert converted_dir(venv_a).parent == cache
    other = _gguf(tmp_path / "venv-c" / "m.gguf", content[:-1] + b"x", 10**18)
    assert converted_dir(other) != converted_dir(venv_a)


def test_a_copy_cached_under_the_path_key_is_adopted_not_converted_again(tmp_path, cache):
    import hashlib

    gguf = _gguf(tmp_path / "site-packages" / "m.gguf", b"GGUF not a real model", 10**18)
    stat = gguf.stat()
    old_key = hashlib.sha1(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    old = cache / f"m-{old_key}"
    old.mkdir(parents=True)
    (old / "config.json").write_text("{}")
    assert model_source(gguf) == str(converted_dir(gguf))  # converting this file would fail: it is no GGUF
    assert (converted_dir(gguf) / "config.json").is_file() and not old.exists()


@pytest.fixture
def hub_unreachable(monkeypatch: pytest.MonkeyPatch) -> str:
    """The hub endpoint is a loopback port nobody listens on (connection refused), no proxy, no offline mode."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for var in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    return endpoint


def test_a_hub_id_with_the_hub_unreachable_fails_at_once_naming_the_way_out(hub_unreachable, tmp_path, monkeypatch):
    """`model="gpt2"` offline took 54 s to fail (transformers retries with back-off)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    for load in (load_model, load_tokenizer):
        with pytest.raises(ModelLoadError, match="cannot be reached") as info:
            load("nobody-here/no-such-model")
        message = str(info.value)
        assert hub_unreachable in message and "not in the local hub cache" in message
        assert "None for the embedded default model" in message and "HF_HUB_OFFLINE=1" in message


def test_a_hub_id_in_the_local_hub_cache_loads_with_the_hub_unreachable(
    hub_unreachable, tmp_path, monkeypatch, gpt2_model, gpt2_tokenizer
):
    import huggingface_hub.constants

    hub = tmp_path / "hub"
    repo = hub / "models--someone--tiny-gpt2"
    snapshot = repo / "snapshots" / "0123abcd"
    gpt2_model.save_pretrained(snapshot)
    gpt2_tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    assert model_source("someone/tiny-gpt2") == str(snapshot)
    model, tokenizer = load_model("someone/tiny-gpt2")
    assert model.config.n_embd == gpt2_model.config.n_embd and len(tokenizer) == len(gpt2_tokenizer)
