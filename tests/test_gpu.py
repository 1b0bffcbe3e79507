"""On a CUDA machine: models load there by default, fine-tuning and scoring run there, and agree with the CPU.

Run with ``pytest -m gpu`` (the default run skips these)."""

import numpy as np
import pytest
import torch
from test_zoo import DEMOS, SINGLE, TEXTS, ZOO, own_log_probs, tiny

from verbalize import FineTuneConfig, Head, Scorer, Verbalizer
from verbalize.engine.models import finish_narrow

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

LABELS = {"negative": ["bad", "negative"], "positive": ["good", "positive"]}
X = ["good film", "bad film", "a great review", "terrible and bad", "good good", "bad bad", "fine", "awful"]
Y = ["positive", "negative", "positive", "negative", "positive", "negative", "positive", "negative"]
CONFIG = FineTuneConfig(epochs=10, learning_rate=1e-3, batch_size=4, validation_fraction=0.0, progress=False)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model_dir(request, tmp_path_factory):
    family = request.getfixturevalue(request.param)
    path = tmp_path_factory.mktemp(request.param)
    family.model.save_pretrained(path)
    family.tokenizer.save_pretrained(path)
    return str(path)


def test_scoring_and_heads_run_on_the_gpu_by_default_and_agree_with_the_cpu(model_dir):
    gpu = Verbalizer(template="Review: {text}\nSentiment:", labels=LABELS, model=model_dir, heads=Head()).fit(X, Y)
    cpu = Verbalizer(
        template="Review: {text}\nSentiment:", labels=LABELS, model=model_dir, heads=Head(), device="cpu"
    ).fit(X, Y)
    assert gpu.scorer_.device.type == "cuda" and cpu.scorer_.device.type == "cpu"
    out_gpu, out_cpu = gpu.outputs(X), cpu.outputs(X)
    for k in out_cpu:
        np.testing.assert_allclose(out_gpu[k], out_cpu[k], atol=2e-3)


def test_fine_tuning_runs_on_the_gpu_by_default(model_dir):
    clf = Verbalizer(template="Review: {text}\nSentiment:", labels=LABELS, model=model_dir, fine_tuning=CONFIG)
    clf.fit(X, Y)
    assert clf.scorer_.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in clf.scorer_.model.parameters())
    assert clf.score(X, Y) == 1.0


@pytest.mark.parametrize("model_type", list(ZOO))
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_zoo_scores_as_its_own_forward_on_cuda(model_type, dtype, gpt2_tokenizer):
    """tests/test_zoo.py's exactness on CUDA: packed rows, a shared prefix, in float32 (TF32 off) and in
    bfloat16 (the residual stream widened, as ``dtype="bfloat16"`` loads it), against the model's own forward."""
    assert not torch.backends.cuda.matmul.allow_tf32
    model = tiny(model_type, len(gpt2_tokenizer)).to("cuda")
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
        finish_narrow(model, dtype)
    tokens = SINGLE.labels.encode(gpt2_tokenizer, SINGLE.label_prefix, SINGLE.render(TEXTS[0]))
    prompts, spans = SINGLE.spans(TEXTS)
    scorer = Scorer(model, gpt2_tokenizer, batch_size=64)
    assert scorer.device.type == "cuda"
    for demos in ([], DEMOS):
        contexts = [list(gpt2_tokenizer(SINGLE.render(t, demos), add_special_tokens=False)["input_ids"]) for t in TEXTS]
        got = scorer.score_words(prompts, tokens, spans=spans, prefix=SINGLE.prefix(demos))
        with torch.inference_mode():
            want = own_log_probs(model, contexts, tokens.word_ids)
        # bfloat16: rows of other shapes round differently (on CPU, up to 0.062 here: llama, no demonstrations)
        np.testing.assert_allclose(got, want, atol=1e-4 if dtype == "float32" else 0.1, rtol=0)
