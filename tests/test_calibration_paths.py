"""The estimator's calibration paths, heads' log-probabilities and reduced-precision dtypes, each against an
independent reference (tests/reference.py: a plain forward per (prompt, word) and the papers' formulas)."""

from __future__ import annotations

import numpy as np
import pytest
import reference
import torch

from verbalize import Head, Verbalizer

LABELS = {"negative": ["bad", "negative"], "positive": ["good", "positive"]}
PROMPT = "Review: {text}\nSentiment:"
X = ["good film", "bad film", "a great review", "terrible and bad", "the plot was bad", "good good"]
Y = ["positive", "negative", "positive", "negative", "negative", "positive"]
CONTENT_FREE = ["N/A", "", "[MASK]"]  # Zhao et al. (2021), as documented in verbalize.calibration.calibrators


def make(family, **kw):
    return Verbalizer(**(dict(template=PROMPT, labels=LABELS, model=family.scorer(batch_size=4)) | kw))


def naive(family, texts):
    prompts = [PROMPT.replace("{text}", t.strip()) for t in texts]
    return reference.label_scores(family.model, family.tokenizer, prompts, LABELS)


def test_raw_log_proba_matches_a_plain_forward(family):
    got = make(family).predict_log_proba(X)
    np.testing.assert_allclose(got, reference.log_softmax(naive(family, X)), atol=1e-4)


def test_contextual_divides_by_the_content_free_prior(family):
    clf = make(family, calibration="contextual")
    want = reference.prior_corrected(naive(family, X), naive(family, CONTENT_FREE))
    np.testing.assert_allclose(clf.predict_log_proba(X), want, atol=1e-4)  # zero-shot: fitted on first use
    np.testing.assert_allclose(clf.fit(X, Y).predict_log_proba(X), want, atol=1e-4)  # the prior needs no data
    assert np.abs(want - reference.log_softmax(naive(family, X))).max() > 1e-3  # the prior moves scores


def test_domain_calibration_uses_the_domain_texts_words(family):
    # A domain whose only word is "terrible": every random bag of its words is "terrible", whatever the seed.
    domain = ["terrible"] * 5
    clf = make(family, calibration="domain", random_state=0).fit(domain)
    want = reference.prior_corrected(naive(family, X), naive(family, ["terrible"]))
    np.testing.assert_allclose(clf.predict_log_proba(X), want, atol=1e-4)


def test_domain_calibration_without_fit_takes_the_domain_from_the_texts_predicted(family):
    # Predicting texts made of one word: the domain prior is that word's own score, so each row becomes uniform.
    got = np.exp(make(family, calibration="domain", random_state=0).predict_log_proba(["bad", "bad"]))
    np.testing.assert_allclose(got, 0.5, atol=1e-5)
    assert abs(np.exp(reference.log_softmax(naive(family, ["bad"])))[0, 0] - 0.5) > 1e-2  # raw is not uniform


def test_batch_calibration_fitted_on_texts_then_fixed(family):
    pool = ["good film", "bad film", "the plot was bad"]
    clf = make(family, calibration="batch").fit(pool)
    want = reference.prior_corrected(naive(family, X), naive(family, pool))
    np.testing.assert_allclose(clf.predict_log_proba(X), want, atol=1e-4)
    np.testing.assert_allclose(clf.predict_log_proba(X[:2]), want[:2], atol=1e-4)  # the batch no longer matters


def test_batch_calibration_without_fit_uses_the_batch_being_predicted(family):
    s = naive(family, X)
    got = make(family, calibration="batch").predict_log_proba(X)
    np.testing.assert_allclose(got, reference.prior_corrected(s, s), atol=1e-4)
    half = make(family, calibration="batch").predict_log_proba(X[:3])
    np.testing.assert_allclose(half, reference.prior_corrected(s[:3], s[:3]), atol=1e-4)


def test_predict_log_proba_with_a_head_is_the_log_of_a_reference_probe(family):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make(family, heads=Head()).fit(X, Y)
    feats = []
    for t in X:  # last-token hidden state of each prompt, run alone
        ids = family.tokenizer(PROMPT.replace("{text}", t))["input_ids"]
        with torch.no_grad():
            feats.append(family.model.base_model(torch.tensor([ids])).last_hidden_state[0, -1].numpy())
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=Head().C, max_iter=5000)).fit(np.array(feats), Y)
    got = clf.predict_log_proba(X)
    assert isinstance(got, np.ndarray) and got.shape == (len(X), 2)
    np.testing.assert_allclose(got, ref.predict_log_proba(np.array(feats)), atol=1e-3)


def test_predict_log_proba_with_two_heads_gives_one_array_per_head(family):
    heads = [Head("a"), Head("b", multi_label=True)]
    topics = [["x"], ["y"], ["x", "y"], [], ["y"], ["x"]]
    clf = make(family, heads=heads).fit(X, {"a": Y, "b": topics})
    got = clf.predict_log_proba(X)
    assert set(got) == {"a", "b"} and got["a"].shape == (len(X), 2) and got["b"].shape == (len(X), 2)
    np.testing.assert_allclose(np.exp(got["a"]).sum(1), 1.0, atol=1e-6)  # one distribution over labels
    assert (got["b"] <= 0).all() and not np.allclose(np.exp(got["b"]).sum(1), 1.0)  # per-label sigmoids


@pytest.mark.parametrize("dtype,atol", [("bfloat16", 0.15), ("float16", 0.02)])
def test_reduced_precision_dtypes_load_and_score_close_to_float32(gpt2, tmp_path, dtype, atol):
    gpt2.model.save_pretrained(tmp_path)
    gpt2.tokenizer.save_pretrained(tmp_path)
    clf = Verbalizer(template=PROMPT, labels=LABELS, model=str(tmp_path), dtype=dtype)
    got = clf.predict_log_proba(X)
    assert clf.scorer_.model.dtype == getattr(torch, dtype)
    assert got.dtype == np.float64 and np.isfinite(got).all()
    want = reference.log_softmax(naive(gpt2, X))  # float32 weights, plain forward
    np.testing.assert_allclose(got, want, atol=atol)
    margin = np.abs(want[:, 0] - want[:, 1]) > 4 * atol
    assert (got.argmax(1) == want.argmax(1))[margin].all()
