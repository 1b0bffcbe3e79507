"""dtype="auto": the fastest measured format whose scores pass the exactness probe, float32 otherwise; recorded per
model and machine; explicit dtypes win; the choice survives save/load.

Timings and exactness failures are injected through :func:`verbalize.engine.formats.choose`'s ``rates`` and
``exact`` parameters, and a recorded choice through the record file (:mod:`verbalize.engine.machine`), so every
assertion holds on every CPU (AVX2 only, AVX-512, AMX).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from verbalize import Scorer, Verbalizer, clear_model_cache
from verbalize.cli.main import main
from verbalize.engine import formats, machine
from verbalize.engine.models import is_quantized
from verbalize.errors import ModelLoadError

LABELS = {"negative": ["bad"], "positive": ["good"]}
PROMPT = "Review: {text}\nSentiment:"
X = ["the acting is good", "the story is bad"]


@pytest.fixture
def auto_env(monkeypatch, tmp_path):
    """dtype="auto" as users get it (the suite forces float32), with records in a temporary cache."""
    monkeypatch.delenv(formats.ENV, raising=False)
    monkeypatch.setenv("VERBALIZE_CACHE", str(tmp_path / "cache"))
    clear_model_cache()
    yield
    clear_model_cache()


@pytest.fixture
def llama_dir(llama, tmp_path):
    path = tmp_path / "llama"
    llama.model.save_pretrained(path)
    llama.tokenizer.save_pretrained(path)
    return str(path)


def record(model_dir: str, dtype: str, rates: dict[str, float] | None = None) -> None:
    """Write the record an earlier measurement on this machine would have left."""
    key = machine.record_key(machine.source_config(model_dir) or {}, "cpu")
    machine.write_record(key, {"dtype": dtype, "rates": rates or {"float32": 100.0, dtype: 400.0}, "refused": {}})


def exact(model, tokenizer):
    Scorer(model, tokenizer)  # the Scorer's exactness probe: raises ModelLoadError when not exact


def test_ranking_prefers_precision_unless_clearly_faster():
    assert formats.ranking({"float32": 100, "bfloat16": 90, "int8": 80}) == ["float32"]
    assert formats.ranking({"float32": 100, "bfloat16": 110}) == ["float32"]  # under the margin
    assert formats.ranking({"float32": 100, "bfloat16": 350, "int8": 900}) == ["bfloat16", "float32"]  # int8: never
    every = formats.PRECISION
    assert formats.ranking({"float32": 100, "bfloat16": 350, "int8": 340}, every) == ["bfloat16", "int8", "float32"]
    assert formats.ranking({"float32": 100, "bfloat16": 50, "int8": 300}, every) == ["int8", "float32"]


def test_auto_keeps_float32_when_the_others_measure_slower(llama):
    model = copy.deepcopy(llama.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got, choice = formats.choose(model, llama.tokenizer, exact, rates={"float32": 100, "bfloat16": 60, "int8": 90})
    assert choice.dtype == "float32" and got.dtype == torch.float32 and not is_quantized(got)
    assert all(torch.equal(before[k], v) for k, v in got.state_dict().items())
    assert set(choice.refused) == {"bfloat16", "int8"} and "0.60x the rate of float32" in choice.refused["bfloat16"]


def test_auto_falls_back_to_float32_when_faster_formats_fail_exactness(llama):
    model = copy.deepcopy(llama.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tried = []

    def strict(m, tokenizer):
        tried.append("int8" if is_quantized(m) else str(m.dtype))
        if m.dtype != torch.float32 or is_quantized(m):
            raise ModelLoadError("injected: log-probs differ from the model's own forward")

    rates = {"float32": 100, "bfloat16": 400, "int8": 450}
    got, choice = formats.choose(model, llama.tokenizer, strict, rates, candidates=formats.PRECISION)
    assert tried == ["torch.bfloat16", "int8"]  # best first (int8 is not 1.15x bfloat16's rate)
    assert choice.dtype == "float32" and got.dtype == torch.float32 and not is_quantized(got)
    assert all(torch.equal(before[k], v) for k, v in got.state_dict().items())  # the float32 weights, unchanged
    assert all("not exact" in choice.refused[f] for f in ("bfloat16", "int8"))


def test_auto_takes_the_fastest_exact_format_and_never_int8_by_default(llama):
    rates = {"float32": 100, "bfloat16": 200, "int8": 400}
    got, choice = formats.choose(copy.deepcopy(llama.model), llama.tokenizer, exact, rates)
    assert choice.dtype == "bfloat16" and got.dtype == torch.bfloat16
    assert choice.refused["int8"] == formats.NOT_CANDIDATE and choice.speedups()["int8"] == 4.0
    got, choice = formats.choose(
        copy.deepcopy(llama.model), llama.tokenizer, exact, rates, candidates=formats.PRECISION
    )
    assert choice.dtype == "int8" and is_quantized(got)


def test_int8_is_not_measured_where_the_model_cannot_run_it(gpt2):
    rates = formats.measure_rates(gpt2.model, rows=8, rounds=1)  # GPT-2's Conv1D layers: int8 is refused
    assert set(rates) == {"float32", "bfloat16"} and all(r > 0 for r in rates.values())


def test_the_int8_probe_times_each_layer_rounding_its_own_input(llama, monkeypatch):
    """The probe gives layers of one width the same tensor; sharing its rounding (as q, k and v do in a
    block) would time the products alone. Every int8 layer the probe builds rounds its input itself."""
    from verbalize.engine import models

    if not models.int8_available(llama.model):
        pytest.skip("this torch has no oneDNN int8 product")
    rounded = []
    real = models._round_input
    monkeypatch.setattr(models, "_round_input", lambda x: rounded.append(1) or real(x))
    formats.measure_rates(llama.model, rows=8, rounds=1)
    calls_per_pass = len(formats.product_shapes(llama.model))
    assert len(rounded) == 2 * calls_per_pass  # warm-up and one round: a rounding per layer call


def test_auto_measures_once_then_reads_the_record(auto_env, llama_dir):
    first = Scorer.from_pretrained(llama_dir, "cpu")
    choice = first.dtype_choice
    assert choice is not None and not choice.recorded and choice.dtype in formats.PRECISION
    assert set(choice.rates) >= {"float32", "bfloat16"}
    stored = json.loads(machine.records_file().read_text())
    assert [r["dtype"] for r in stored.values()] == [choice.dtype]
    clear_model_cache()
    again = Scorer.from_pretrained(llama_dir, "cpu")
    assert again.dtype_choice.recorded and again.dtype_choice.dtype == choice.dtype
    assert again.dtype_choice.rates == pytest.approx(choice.rates)


def test_the_recorded_choice_survives_save_and_load(auto_env, llama_dir, tmp_path):
    record(llama_dir, "bfloat16")
    clf = Verbalizer(template=PROMPT, labels=LABELS, model=llama_dir).fit()
    proba = clf.predict_proba(X)
    assert clf.scorer_.model.dtype == torch.bfloat16 and clf.scorer_.dtype_choice.recorded
    back = Verbalizer.load(clf.save(tmp_path / "clf"))
    assert back.dtype == "auto" and back.scorer_.model.dtype == torch.bfloat16
    np.testing.assert_array_equal(back.predict_proba(X), proba)


def test_an_explicit_dtype_wins_over_the_record_and_the_environment(auto_env, llama_dir, monkeypatch):
    record(llama_dir, "bfloat16")
    clf = Verbalizer(template=PROMPT, labels=LABELS, model=llama_dir, dtype="float32").fit()
    assert clf.scorer_.model.dtype == torch.float32 and clf.scorer_.dtype_choice is None
    monkeypatch.setenv(formats.ENV, "int8")  # the environment decides what "auto" means, nothing else
    forced = Verbalizer(template=PROMPT, labels=LABELS, model=llama_dir).fit()
    assert is_quantized(forced.scorer_.model) and forced.scorer_.dtype_choice is None
    named = Verbalizer(template=PROMPT, labels=LABELS, model=llama_dir, dtype="float32").fit()
    assert named.scorer_.model.dtype == torch.float32 and not is_quantized(named.scorer_.model)


def test_a_bad_environment_value_is_named(auto_env, llama_dir, monkeypatch):
    monkeypatch.setenv(formats.ENV, "float23")
    with pytest.raises(ValueError, match=r"VERBALIZE_DTYPE.*float23"):
        Scorer.from_pretrained(llama_dir, "cpu")


def test_fine_tuning_with_auto_trains_float32(auto_env, llama_dir):
    from verbalize import FineTuneConfig

    record(llama_dir, "bfloat16")
    clf = Verbalizer(template=PROMPT, labels=LABELS, model=llama_dir, fine_tuning=FineTuneConfig(epochs=1))
    clf.fit(X * 2, ["positive", "negative"] * 2)
    assert clf.scorer_.model.dtype == torch.float32 and not is_quantized(clf.scorer_.model)


def test_check_shows_the_recorded_choice(auto_env, llama_dir, tmp_template, capsys, monkeypatch):
    template = tmp_template(
        """
        prompt = "Review: {text}\\nSentiment:"
        [labels]
        negative = ["bad"]
        positive = ["good"]
        """
    )
    assert main(["check", str(template), "--model", llama_dir]) == 0
    assert "dtype auto: not measured" in capsys.readouterr().out
    record(llama_dir, "bfloat16", {"float32": 100.0, "bfloat16": 380.0})
    assert main(["check", str(template), "--model", llama_dir]) == 0
    out = capsys.readouterr().out
    assert "dtype auto: bfloat16" in out and "bfloat16 380 GFLOP/s (3.80x)" in out
    monkeypatch.setenv(formats.ENV, "float32")
    assert main(["check", str(template), "--model", llama_dir]) == 0
    assert "dtype auto: float32 (forced by VERBALIZE_DTYPE" in capsys.readouterr().out


def test_the_service_lists_the_choice_and_its_rates(auto_env, llama_dir):
    from verbalize.serve.registry import describe_dtype

    record(llama_dir, "bfloat16", {"float32": 100.0, "bfloat16": 380.0, "int8": 300.0})
    clf = Verbalizer(template=PROMPT, labels=LABELS, model=llama_dir).fit()
    got = describe_dtype(clf)
    assert got["requested"] == "auto" and got["dtype"] == "bfloat16" and got["recorded"] is True
    assert got["gflops"] == {"float32": 100.0, "bfloat16": 380.0, "int8": 300.0}
    named = Verbalizer(template=PROMPT, labels=LABELS, model=llama_dir, dtype="int8").fit()
    assert describe_dtype(named) == {"requested": "int8", "dtype": "int8"}


def test_a_cap_on_the_kernels_instruction_sets_is_another_machine(monkeypatch, llama_dir):
    """ONEDNN_MAX_CPU_ISA=AVX2 (or ATen's, MKL's cap) makes an AMX CPU run like an AVX2 one: a choice measured
    without the cap must not be read under it, and the CPU's description says so."""
    for name in machine.ISA_LIMITS:
        monkeypatch.delenv(name, raising=False)
    config = machine.source_config(llama_dir) or {}
    plain, described = machine.record_key(config), machine.describe_cpu()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert machine.record_key(config) != plain
    assert machine.describe_cpu().endswith("; kernels capped by ONEDNN_MAX_CPU_ISA=AVX2)")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert "ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2" in machine.describe_cpu()
    for name in machine.ISA_LIMITS:
        monkeypatch.delenv(name, raising=False)
    assert (machine.record_key(config), machine.describe_cpu()) == (plain, described)
