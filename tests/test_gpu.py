"""On a CUDA machine: models load there by default, fine-tuning and scoring run there, and agree with the CPU.

Run with ``pytest -m gpu`` (the default run skips these)."""

import numpy as np
import pytest
import torch

from verbalize import FineTuneConfig, Head, Verbalizer

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
