"""`verbalize serve`: hot reload of edited template files, and the command line."""

from __future__ import annotations

import gc
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
from serve_support import files, tiny  # noqa: E402, F401  (fixtures, imported so pytest finds them)

pytest.register_assert_rewrite("serve_support")

from serve_support import (  # noqa: E402
    SENTIMENT,
    TEXTS,
    TIMEOUT,
    Running,
    get,
    offline,
    post,
    proba_of,
    wait_for,
)
from serve_support import write_atomically as _write  # noqa: E402

from verbalize import Client, Verbalizer  # noqa: E402
from verbalize.cli.main import main as cli_main  # noqa: E402
from verbalize.serve import ServeConfig, create_app  # noqa: E402


def test_hot_reload_valid_then_invalid_edit(tiny: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    path = tmp_path / "live.toml"
    path.write_text(SENTIMENT.replace("senti", "live"), encoding="utf-8")
    v1 = SENTIMENT.replace("senti", "live")
    v2 = v1.replace('["good", "good film"]', '["good", "great film"]')
    srv = Running(create_app([str(path)], model=tiny, config=ServeConfig(reload_interval_s=0.05))).start()
    texts = TEXTS[:3]
    want = {1: offline(path, tiny, texts)}
    stop, seen = threading.Event(), []

    def hammer() -> None:
        while not stop.is_set():
            seen.append(post(srv, {"template": "live", "texts": texts}))

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        time.sleep(0.2)
        (tmp_path / "v2.toml").write_text(v2, encoding="utf-8")
        want[2] = offline(tmp_path / "v2.toml", tiny, texts)
        _write(path, v2)
        wait_for(lambda: get(srv, "/v1/templates")[1]["templates"][0]["version"] == 2, "the valid edit to load")
        _write(path, v2.replace("{text}", "{txt}"))
        wait_for(lambda: get(srv, "/v1/templates")[1]["problems"], "the invalid edit to be reported")
        time.sleep(0.2)
    finally:
        stop.set()
        worker.join(TIMEOUT)
    listing = get(srv, "/v1/templates")[1]
    assert listing["templates"][0]["version"] == 2  # the invalid edit left version 2 serving
    issues = listing["problems"][0]["issues"]
    assert any("live.toml: prompt: unknown placeholder {txt}" in i for i in issues), issues  # no absolute path
    assert str(tmp_path) not in json.dumps(listing), listing
    assert f"{path}: prompt: unknown placeholder" in caplog.text
    versions = [answer["version"] for status, _, answer in seen]
    assert all(status == 200 for status, _, _ in seen) and versions == sorted(versions) and set(versions) == {1, 2}
    for _, _, answer in seen:
        np.testing.assert_allclose(proba_of(answer), want[answer["version"]], atol=1e-5, rtol=0)
    assert not np.allclose(want[1], want[2])
    _write(path, v1)  # fixed: problems clear, the file's content is served again
    wait_for(lambda: get(srv, "/v1/templates")[1]["templates"][0]["version"] == 3, "the fix to load")
    assert get(srv, "/v1/templates")[1]["problems"] == []
    srv.stop()


# -- command line ------------------------------------------------------------------------------------------
def test_cli_registers_serve_and_checks_templates_first(tmp_template: Callable[..., Path], capsys: Any):
    with pytest.raises(SystemExit) as info:
        cli_main(["serve", "--help"])
    assert info.value.code == 0 and "--window-ms" in capsys.readouterr().out
    bad = tmp_template('prompt = "no slot"\n[labels]\na = ["x"]\nb = ["y"]\n')
    assert cli_main(["serve", str(bad), "--port", "1"]) == 2
    assert f"{bad}: prompt: must contain {{text}} exactly once" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_serves_in_a_subprocess_and_stops_on_sigterm(gpt2: Any, files: dict[str, Path], tmp_path: Path):
    gpt2.model.save_pretrained(tmp_path / "m")
    gpt2.tokenizer.save_pretrained(tmp_path / "m")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "verbalize.cli.main", "serve", str(files["senti"]), "--model", str(tmp_path / "m"),
           "--port", str(port), "--threads", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = Client(f"http://127.0.0.1:{port}")
        wait_for(client.ready, "the subprocess to be ready", timeout=120)
        assert client.predict(["the acting is good"], template="senti")[0] in ("negative", "positive")
        proc.terminate()
        assert proc.wait(TIMEOUT) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after its graceful shutdown
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(TIMEOUT)


def test_reload_swaps_in_only_the_content_it_built(tiny: Any, tmp_path: Path):
    """A file edited again while its new version warms up is rebuilt from the newest content."""
    from verbalize.serve.registry import Registry, build_classifier, expand_sources

    path = tmp_path / "r.toml"
    path.write_text(SENTIMENT, encoding="utf-8")
    edits = [SENTIMENT.replace('["bad"]', '["bad film"]')]

    def build(source: Any) -> Verbalizer:
        clf = build_classifier(source, tiny)
        if edits and clf.template_.labels["negative"] == ("bad film",):
            _write(path, SENTIMENT.replace('["bad"]', '["awful"]'))  # the analyst saves again meanwhile
            edits.clear()
        return clf

    registry = Registry(expand_sources([str(path)]), build)
    registry.load()
    _write(path, edits[0])
    registry.poll()
    entry = registry.get("senti")
    assert entry is not None and entry.version == 1  # the "bad film" build is stale: not served
    registry.poll()
    entry = registry.get("senti")
    assert entry is not None and entry.version == 2 and entry.clf.template_.labels["negative"] == ("awful",)


# -- memory through hot reloads ------------------------------------------------------------------------------
def _rss_bytes() -> int:
    """Resident memory of this process (the server runs in a thread of it), after a collection."""
    gc.collect()
    with open("/proc/self/status", encoding="ascii") as status:
        line = next(x for x in status if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmRSS from /proc")
def test_20_hot_reloads_of_a_resaved_fine_tuned_classifier_keep_memory_flat(gpt2: Any, tmp_path: Path):
    """Each re-save puts a new model directory in place; the service serves its weights and frees the old ones."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from verbalize import FineTuneConfig, Scorer

    # ~13 MB of weights: 20 copies kept would add ~250 MB, far beyond the 5% bar (a tiny model would hide a leak).
    config = GPT2Config(vocab_size=len(gpt2.tokenizer), n_positions=64, n_embd=256, n_layer=4, n_head=4)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = GPT2LMHeadModel(config).eval()
    tuning = FineTuneConfig(epochs=1, batch_size=4, validation_fraction=0.0, progress=False)
    template = tmp_path / "senti.toml"
    template.write_text(SENTIMENT, encoding="utf-8")
    clf = Verbalizer(template=str(template), model=Scorer(model, gpt2.tokenizer), fine_tuning=tuning)
    clf.fit(TEXTS[:4], ["positive", "negative", "positive", "negative"])
    saved = clf.save(tmp_path / "tuned")
    srv = Running(create_app([str(saved)], config=ServeConfig(reload_interval_s=0.05, window_ms=1))).start()
    try:
        rss = {}
        for version in range(2, 22):
            with torch.no_grad():  # "fine-tuned again": other weights, the same verbalize.json
                clf.scorer_.model.transformer.wte.weight.mul_(1.01)
            clf.save(saved)
            wait_for(lambda v=version: get(srv, "/v1/templates")[1]["templates"][0]["version"] == v, f"v{version}")
            status, _, answer = post(srv, {"template": "tuned", "texts": TEXTS[:2]})
            assert status == 200 and answer["version"] == version, answer
            rss[version] = _rss_bytes()
        np.testing.assert_allclose(proba_of(answer), clf.predict_proba(TEXTS[:2]), atol=1e-5, rtol=0)
        grown = rss[21] / rss[2] - 1
        print(
            f"RSS after reload 1: {rss[2] / 2**20:.0f} MiB, after reload 20: {rss[21] / 2**20:.0f} MiB ({grown:+.1%})"
        )
        assert grown < 0.05, f"RSS grew {grown:.1%} over 19 reloads: {[round(r / 2**20) for r in rss.values()]} MiB"
    finally:
        srv.stop()


def test_serve_takes_shipped_template_names_like_the_other_commands(tmp_path, monkeypatch):
    """`verbalize serve sst2` answered "no such template file" while predict and check take shipped names."""
    from verbalize.prompting.template import shipped_templates
    from verbalize.serve.registry import expand_sources

    monkeypatch.chdir(tmp_path)  # no file named sst2 here
    (source,) = expand_sources(["sst2"])
    assert source.path == shipped_templates()["sst2"] and source.kind == "template"
    with pytest.raises(FileNotFoundError, match=r"nope: no such template file or directory, nor a shipped .*sst2"):
        expand_sources(["nope"])
