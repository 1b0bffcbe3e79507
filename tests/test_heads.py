"""Classification heads: pooled features against a naive one-text forward, probes against scikit-learn,
multi-label thresholds, multi-head outputs from one pass, exact save/reload."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from verbalize import Head, Verbalizer
from verbalize.training.heads import fit_probe, tune_thresholds

LABELS = {"negative": ["bad", "negative"], "positive": ["good", "positive"]}
X = ["good film", "bad film", "a great review", "terrible and bad", "good good", "bad bad", "fine", "awful"]
Y = ["positive", "negative", "positive", "negative", "positive", "negative", "positive", "negative"]
TOPICS = [["x"], ["y", "z"], [], ["x", "z"], ["x"], ["y"], ["z"], ["x", "y"]]
PROMPT = "Review: {text}\nSentiment:"


def make(family, **kw):
    params = dict(template=PROMPT, labels=LABELS, model=family.scorer(batch_size=3)) | kw
    return Verbalizer(**params)


def naive_states(family, prompt_ids):
    """Every layer's hidden states of one unpadded sequence, run alone: (layers + 1) x (L, d)."""
    with torch.no_grad():
        out = family.model.base_model(input_ids=torch.tensor([prompt_ids]), output_hidden_states=True)
    return [h[0] for h in out.hidden_states]


@pytest.mark.parametrize("pooling,layers", [("last", 1), ("mean", 1), ("last", 2), ("mean", 2)])
@pytest.mark.parametrize("instruction", ["", "Classify the sentiment of the review.\n"])
def test_pooled_features_match_a_naive_forward_of_each_text_alone(family, pooling, layers, instruction):
    scorer = family.scorer(batch_size=3)
    texts = X + ["a much longer review of the film that was good and then bad and then good again"]
    prompts = [PROMPT.format(text=t) for t in texts]
    feats = scorer.features(prompts, prefix=instruction, pooling=pooling, layers=layers)
    for i, p in enumerate(prompts):
        ids = list(family.tokenizer(instruction + p)["input_ids"])
        states = naive_states(family, ids)[-layers:]
        n_lead = len(family.lead)
        if pooling == "last":
            want = torch.cat([s[-1] for s in states])
        else:
            want = torch.cat([s[n_lead:].mean(0) for s in states])
        np.testing.assert_allclose(feats[i], want.numpy(), atol=1e-4, rtol=1e-4)


def test_features_do_not_depend_on_batch_size_or_neighbours(family):
    prompts = [PROMPT.format(text=t) for t in X]
    for pooling in ("last", "mean"):
        alone = np.stack([family.scorer(batch_size=1).features([p], pooling=pooling)[0] for p in prompts])
        together = family.scorer(batch_size=5).features(prompts[::-1], pooling=pooling)[::-1]
        np.testing.assert_allclose(together, alone, atol=1e-5)


def test_probe_equals_a_standardized_scikit_learn_logistic_regression():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(60, 5)) * [1, 10, 100, 0.1, 1] + [0, 5, -50, 0, 3]
    for n_classes in (2, 3):
        y = rng.integers(0, n_classes, size=60)
        fitted = fit_probe(Head(C=0.5), feats, y, [f"c{i}" for i in range(n_classes)])
        ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000)).fit(feats, y)
        np.testing.assert_allclose(fitted.predict_proba(feats), ref.predict_proba(feats), atol=1e-4)


def test_tuned_thresholds_maximise_f1_per_label():
    rng = np.random.default_rng(1)
    proba = rng.random((40, 3))
    targets = (rng.random((40, 3)) < proba).astype(float)

    def f1(t, p):
        return 2 * (t & p).sum() / (t.sum() + p.sum())

    thr = tune_thresholds(proba, targets)
    for j in range(3):
        t = targets[:, j] > 0.5
        best = max(f1(t, proba[:, j] >= c) for c in np.linspace(0, 1, 1001))
        assert f1(t, proba[:, j] >= thr[j]) >= best - 1e-12


def test_probe_head_classifies_and_keeps_the_template_labels(family):
    clf = make(family, heads=Head()).fit(X, Y)
    assert clf.classes_.tolist() == ["negative", "positive"]
    proba = clf.predict_proba(X)
    assert proba.shape == (8, 2)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert (clf.predict(X) == clf.classes_[proba.argmax(1)]).all()
    assert clf.score(X, Y) == 1.0  # 8 points in 64 dimensions are separable


def test_multi_label_head_predicts_an_indicator_matrix(family):
    head = Head("topics", multi_label=True, pooling="mean")
    clf = make(family, heads=head).fit(X, TOPICS)
    assert clf.classes_.tolist() == ["x", "y", "z"]
    pred = clf.predict(X)
    assert pred.shape == (8, 3) and set(np.unique(pred)) <= {0, 1}
    proba = clf.predict_proba(X)
    assert ((proba >= 0) & (proba <= 1)).all() and not np.allclose(proba.sum(1), 1.0)
    np.testing.assert_array_equal(pred, (proba >= clf.heads_["topics"].threshold).astype(int))
    # a 0/1 matrix is accepted too, with the label names given
    clf2 = make(family, heads=Head("topics", multi_label=True, pooling="mean", labels=["x", "y", "z"]))
    indicator = np.array([[int(c in row) for c in "xyz"] for row in TOPICS])
    np.testing.assert_allclose(clf2.fit(X, indicator).predict_proba(X), proba)


def test_multi_head_outputs_come_from_one_forward_per_batch(family, monkeypatch):
    heads = [Head("sentiment"), Head("topics", multi_label=True, layers=2, weight=0.5)]
    clf = make(family, heads=heads, batch_size=3).fit(X, {"sentiment": Y, "topics": TOPICS})
    assert set(clf.classes_) == {"sentiment", "topics"}

    def body_calls(fn):
        calls = []
        hook = family.model.base_model.register_forward_hook(
            lambda m, a, kw, out: calls.append(tuple(kw.get("input_ids", a and a[0]).shape)), with_kwargs=True
        )
        try:
            return fn(), calls
        finally:
            hook.remove()

    out, calls = body_calls(lambda: clf.outputs(X))
    words_only = make(family, batch_size=3).fit(X[:2], Y[:2])
    # label words alone would pack prompts into rows (a different set of passes); restored after the test
    monkeypatch.setattr(words_only.scorer_.io, "packs", False)
    words, word_calls = body_calls(lambda: words_only.predict_proba(X))
    assert calls == word_calls  # the heads add no pass: the label words alone take the same ones
    assert sum(1 for shape in calls if shape[0] > 1) >= 3  # 8 texts at batch_size 3
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(out["sentiment"], proba["sentiment"], atol=1e-6)
    np.testing.assert_allclose(out["topics"], proba["topics"], atol=1e-6)
    np.testing.assert_allclose(out["labels"], words, atol=1e-6)
    pred = clf.predict(X)
    assert pred["sentiment"].shape == (8,) and pred["topics"].shape == (8, 3)


def test_heads_reload_exactly(family, tmp_path):
    heads = [Head("sentiment", pooling="mean"), Head("topics", multi_label=True, layers=2)]
    clf = make(family, heads=heads).fit(X, {"sentiment": Y, "topics": TOPICS})
    clf.save(tmp_path / "clf")
    back = Verbalizer.load(tmp_path / "clf", device="cpu")  # the original ran on the CPU
    for name, head in clf.heads_.items():
        assert torch.equal(back.heads_[name].weight, head.weight)
        assert torch.equal(back.heads_[name].bias, head.bias)
        assert back.heads_[name].head == head.head
    np.testing.assert_array_equal(back.heads_["topics"].threshold, clf.heads_["topics"].threshold)
    a, b = clf.predict_proba(X), back.predict_proba(X)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_head_errors_say_what_to_fix(family):
    with pytest.raises(ValueError, match="The 'pooling' parameter of Head must be one of"):
        Head(pooling="max")
    with pytest.raises(ValueError, match="distinct names"):
        make(family, heads=[Head("a"), Head("a")]).fit(X, Y)
    with pytest.raises(TypeError, match="y must be a dict"):
        make(family, heads=[Head("a"), Head("b")]).fit(X, Y)
    with pytest.raises(ValueError, match="no labels for heads"):
        make(family, heads=[Head("a"), Head("b")]).fit(X, {"a": Y})
    with pytest.raises(TypeError, match="list of labels"):
        make(family, heads=Head(multi_label=True)).fit(X, Y)
    with pytest.raises(ValueError, match="not one of its labels"):
        make(family, heads=Head(labels=["negative", "positive"])).fit(X, ["neutral"] + Y[1:])
    with pytest.raises(Exception, match="not fitted"):
        make(family, heads=Head()).predict(X)


def test_outputs_use_the_same_prompts_as_predict_with_per_text_demonstrations(family):
    similar = dict(n_demos=2, demo_selection="similar")
    clf = make(family, heads=Head(), **similar).fit(X, Y)
    words = make(family, **similar).fit(X, Y).predict_proba(X)
    out = clf.outputs(X)
    np.testing.assert_allclose(out["labels"], words, atol=1e-6)
    np.testing.assert_allclose(out["head"], clf.predict_proba(X), atol=1e-6)
