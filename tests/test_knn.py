"""kNN prompting: distributions, KL distances and votes against naive per-pair references."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from verbalize import KNNPrompting, Template
from verbalize.knn import kl_divergence, next_token_log_probs, vote

TEMPLATE = Template(prompt="Review: {text}\nSentiment:", labels={"negative": ["bad"], "positive": ["good"]})
X = ["the acting is good", "a great film", "the story is bad", "a terrible ending", "good and great", "bad plot"]
Y = ["positive", "positive", "negative", "negative", "positive", "negative"]
QUERIES = ["the film was good", "the plot was bad", "classify the review"]


def _naive_log_probs(family: Any, prompt: str) -> np.ndarray:
    """One prompt alone, the model's own forward and LM head: log-probs of the next token."""
    ids = list(family.lead) + family.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = family.model(torch.tensor([ids])).logits[0, -1]  # (V,)
    return torch.log_softmax(logits.double(), -1).numpy()


def test_next_token_log_probs_match_the_model_run_alone(family: Any) -> None:
    scorer = family.scorer(batch_size=4)
    demos = [("a good film", "positive"), ("a bad film", "negative")]
    got = next_token_log_probs(scorer, TEMPLATE, QUERIES, demos)
    assert got.shape == (len(QUERIES), family.model.config.vocab_size)
    for row, text in zip(got, QUERIES, strict=True):
        want = _naive_log_probs(family, TEMPLATE.render(text, demos))
        np.testing.assert_allclose(row, want, atol=2e-4)


def test_kl_divergence_matches_a_naive_sum() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=(7, 50))
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    anchors, queries = logp[:4].astype(np.float32), logp[4:].astype(np.float32)
    got = kl_divergence(anchors, queries)
    assert got.shape == (3, 4)
    for i, q in enumerate(queries.astype(np.float64)):
        for j, a in enumerate(anchors.astype(np.float64)):
            want = np.sum(np.exp(a) * (a - q))  # KL(anchor || query), the paper's direction
            assert got[i, j] == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert np.allclose(np.diag(kl_divergence(anchors, anchors)), 0.0, atol=1e-6)
    # not symmetric: swapping the roles gives KL(query || anchor), a different number
    assert not np.allclose(kl_divergence(queries, anchors).T, got)


def test_vote_majority_and_nearest_tie_break() -> None:
    dist = np.array([[0.1, 0.2, 0.3, 0.4], [0.4, 0.1, 0.2, 0.3], [0.3, 0.2, 0.1, 5.0]])
    labels = np.array([0, 1, 1, 0])
    shares, pred = vote(dist, labels, k=3, n_classes=2)
    np.testing.assert_allclose(shares, [[1 / 3, 2 / 3], [1 / 3, 2 / 3], [1 / 3, 2 / 3]])
    assert pred.tolist() == [1, 1, 1]
    shares, pred = vote(dist, labels, k=2, n_classes=2)  # one vote each: the nearest anchor decides
    assert pred.tolist() == [0, 1, 1]
    shares, pred = vote(dist, labels, k=4, n_classes=2)
    assert pred.tolist() == [0, 1, 1]  # 2-2 ties: nearest anchors are 0 (label 0), 1 (label 1), 2 (label 1)


def test_classifier_equals_naive_knn(family: Any) -> None:
    clf = KNNPrompting(template=TEMPLATE, model=family.scorer(), k=3).fit(X, Y)
    assert clf.anchors_.shape == (len(X), family.model.config.vocab_size)
    anchors = [_naive_log_probs(family, TEMPLATE.render(t)) for t in X]
    pred, dists = [], []
    for text in QUERIES:
        q = _naive_log_probs(family, TEMPLATE.render(text))
        d = np.array([np.sum(np.exp(a) * (a - q)) for a in anchors])
        near = np.argsort(d)[:3]
        dists.append(d[near])
        votes = [Y[i] for i in near]
        pred.append(max(["negative", "positive"], key=votes.count))
    assert clf.predict(QUERIES).tolist() == pred
    got_d, _ = clf.kneighbors(QUERIES)
    np.testing.assert_allclose(got_d, np.array(dists), rtol=1e-3, atol=1e-4)
    proba = clf.predict_proba(QUERIES)
    assert proba.shape == (3, 2)
    np.testing.assert_allclose(proba.sum(1), 1.0)


def test_training_texts_are_their_own_nearest_anchor(gpt2: Any) -> None:
    clf = KNNPrompting(template=TEMPLATE, model=gpt2.scorer(), k=1).fit(X, Y)
    dist, idx = clf.kneighbors(X)
    assert idx[:, 0].tolist() == list(range(len(X)))
    np.testing.assert_allclose(dist[:, 0], 0.0, atol=1e-5)
    assert clf.predict(X).tolist() == Y


def test_demonstrations_are_not_anchors(gpt2: Any) -> None:
    clf = KNNPrompting(template=TEMPLATE, model=gpt2.scorer(), demos_per_class=1, random_state=0).fit(X, Y)
    assert len(clf.demos_) == 2 and {lab for _, lab in clf.demos_} == {"negative", "positive"}
    assert len(clf.anchors_) == len(X) - 2
    first = clf.transform(QUERIES[:1])
    plain = KNNPrompting(template=TEMPLATE, model=gpt2.scorer()).fit(X, Y).transform(QUERIES[:1])
    assert not np.allclose(first, plain)  # the demonstrations are in the prompt


def test_sklearn_contract_and_errors(gpt2: Any) -> None:
    clf = KNNPrompting(
        template="Review: {text}\nSentiment:", labels={"neg": ["neg"], "pos": ["pos"]}, model=gpt2.scorer()
    )
    assert clone(clf).get_params()["k"] == 3
    with pytest.raises(NotFittedError, match="fit"):
        clf.predict(["a film"])
    with pytest.raises(ValueError, match="does not define: .positive."):
        clf.fit(["a film"], ["positive"])
    with pytest.raises(ValueError, match="'k' parameter of KNNPrompting must be an int >= 1"):
        KNNPrompting(template=TEMPLATE, model=gpt2.scorer(), k=0).fit(X, Y)
    with pytest.raises(ValueError, match="no anchors left"):
        KNNPrompting(template=TEMPLATE, model=gpt2.scorer(), demos_per_class=3).fit(X, Y)
    once = KNNPrompting(template=TEMPLATE, model=gpt2.scorer()).fit(X, Y)
    twice = KNNPrompting(template=TEMPLATE, model=gpt2.scorer()).fit(X, Y).fit(X, Y)
    np.testing.assert_array_equal(once.anchors_, twice.anchors_)


PAIR = Template(
    prompt="A: {first}\nB: {second}\nSame?",
    labels={"same": ["good"], "different": ["bad"]},
    fields=("first", "second"),
)
PAIR_X = [{"first": a, "second": b} for a, b in zip(X, X[::-1], strict=True)]
PAIR_Y = ["same", "different", "same", "different", "same", "different"]


def test_knn_takes_the_rows_of_a_template_with_several_fields(gpt2: Any) -> None:
    """Dicts, tuples in field order and a DataFrame are the same rows; anchors are the rendered pairs."""
    import pandas as pd

    clf = KNNPrompting(template=PAIR, model=gpt2.scorer(), k=3).fit(PAIR_X, PAIR_Y)
    want = np.stack([_naive_log_probs(gpt2, PAIR.render(r)) for r in PAIR_X])
    np.testing.assert_allclose(clf.anchors_, want, atol=1e-4)
    p = clf.predict_proba(PAIR_X)
    np.testing.assert_array_equal(clf.predict_proba([(r["first"], r["second"]) for r in PAIR_X]), p)
    np.testing.assert_array_equal(clf.predict_proba(pd.DataFrame(PAIR_X)), p)
    with pytest.raises(ValueError, match="has no field 'second'"):
        clf.predict([{"first": "x"}])


def test_fit_without_labels_says_knn_needs_them(gpt2: Any) -> None:
    clf = KNNPrompting(template=TEMPLATE, model=gpt2.scorer())
    with pytest.raises(ValueError, match=r"KNNPrompting requires y to be passed, but the target y is None") as info:
        clf.fit(X, None)
    message = str(info.value)
    assert "fit(X, y)" in message and "['negative', 'positive']" in message and "Verbalizer" in message
    with pytest.raises(ValueError, match="requires y to be passed"):
        clf.fit(X)


def test_roc_auc_scoring_works_through_predict_proba(gpt2: Any) -> None:
    from sklearn.model_selection import cross_val_score

    auc = cross_val_score(KNNPrompting(template=TEMPLATE, model=gpt2.scorer(), k=1), X, Y, cv=2, scoring="roc_auc")
    assert auc.shape == (2,) and np.isfinite(auc).all()
