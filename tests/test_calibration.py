"""Calibrators on hand-made arrays with answers computed here by hand."""

import numpy as np
import pytest

from verbalize import BatchCalibrator, ContextualCalibrator, DomainCalibrator, TemperatureCalibrator, get_calibrator
from verbalize.calibration.calibrators import (
    CALIBRATORS,
    CONTENT_FREE,
    Calibrator,
    calibrate,
    domain_texts,
    fit_calibrator,
    log_softmax,
    unlabeled_texts_help,
)


def test_contextual_divides_by_content_free_probabilities():
    p_cf = np.array([0.8, 0.2])
    cal = ContextualCalibrator().fit(np.log([p_cf]))
    p = np.array([[0.6, 0.4], [0.9, 0.1]])
    expected = (p / p_cf) / (p / p_cf).sum(axis=1, keepdims=True)  # diag(p_cf)^-1 p, renormalised
    np.testing.assert_allclose(np.exp(cal.transform(np.log(p))), expected, rtol=1e-12)
    # [0.6, 0.4] was "negative" raw, and is "positive" once the 0.8 prior is divided out
    assert cal.transform(np.log(p))[0].argmax() == 1


def test_contextual_averages_probabilities_of_several_inputs_and_ignores_score_offsets():
    cf = np.log(np.array([[0.7, 0.3], [0.5, 0.5]])) + np.array([[3.0], [-2.0]])  # unnormalised rows
    cal = ContextualCalibrator().fit(cf)
    np.testing.assert_allclose(np.exp(cal.log_prior_), [0.6, 0.4])


def test_domain_is_contextual_math_on_other_inputs():
    s = np.log([[0.3, 0.7]])
    a = DomainCalibrator().fit(s)
    b = ContextualCalibrator().fit(s)
    x = np.log([[0.5, 0.5], [0.2, 0.8]])
    np.testing.assert_allclose(a.transform(x), b.transform(x))


def test_batch_unfitted_uses_the_batch_mean():
    p = np.array([[0.9, 0.1], [0.7, 0.3]])
    out = np.exp(BatchCalibrator().transform(np.log(p)))
    prior = p.mean(axis=0)
    expected = (p / prior) / (p / prior).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_temperature_recovers_a_known_temperature_and_keeps_argmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 3)) * 2.0
    true_t = 3.0
    p = np.exp(logits / true_t) / np.exp(logits / true_t).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    cal = TemperatureCalibrator().fit(logits, y)
    assert cal.temperature_ == pytest.approx(true_t, rel=0.1)
    np.testing.assert_array_equal(cal.transform(logits).argmax(1), logits.argmax(1))


def test_temperature_needs_labels():
    with pytest.raises(ValueError, match="needs labels"):
        TemperatureCalibrator().fit(np.zeros((2, 2)))


def test_registry_resolves_versioned_aliases_and_suggests_names():
    assert isinstance(get_calibrator("contextual.v1"), ContextualCalibrator)
    with pytest.raises(ValueError, match="Did you mean 'contextual'"):
        get_calibrator("contextal")


def test_state_round_trip():
    cal = ContextualCalibrator().fit(np.log([[0.8, 0.2]]))
    back = ContextualCalibrator.from_state(cal.get_state())
    x = np.log([[0.5, 0.5]])
    np.testing.assert_allclose(back.transform(x), cal.transform(x))


def test_metrics_on_a_hand_made_case():
    from verbalize.metrics import brier_score, evaluate, expected_calibration_error

    proba = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    y = np.array([0, 1, 1, 1])
    # bins: 0.9 -> bin 9 (correct), 0.6 -> bin 6 (wrong), 0.7 -> bin 7 (right), 0.8 -> bin 8 (right)
    ece = (abs(1 - 0.9) + abs(0 - 0.6) + abs(1 - 0.7) + abs(1 - 0.8)) / 4
    assert expected_calibration_error(proba, y) == pytest.approx(ece)
    brier = ((0.1**2 + 0.1**2) + (0.6**2 + 0.6**2) + (0.3**2 + 0.3**2) + (0.2**2 + 0.2**2)) / 4
    assert brier_score(proba, y) == pytest.approx(brier)
    res = evaluate(proba, ["a", "b", "b", "b"], ["a", "b"])
    assert res["accuracy"] == 0.75 and res["confusion"] == [[1, 0], [1, 2]]


# -- what each calibrator is fitted on, and adding one in one place ------------------------------------------------


def _recording_scores(seen):
    def score_texts(texts):
        seen.append(list(texts))
        return np.log(np.tile([[0.7, 0.3]], (len(texts), 1)))

    return score_texts


def test_each_calibrator_says_what_it_is_fitted_on():
    texts = ["good film", "bad film here"]
    for name, want in [
        ("contextual", list(CONTENT_FREE)),
        ("domain", domain_texts(texts, 0)),
        ("batch", texts),
        ("temperature", texts),
    ]:
        seen = []
        fit_calibrator(get_calibrator(name), _recording_scores(seen), texts, np.array([0, 1]), random_state=0)
        assert seen == [want], name
    assert all(len(t.split()) == 2 for t in domain_texts(texts, 0))  # as long as an average text
    assert get_calibrator("temperature").needs_labels and not get_calibrator("domain").needs_labels
    # the CLI fits these on X ("auto" without labels is batch calibration fitted on X)
    assert [n for n in CALIBRATORS if unlabeled_texts_help(n)] == ["domain", "batch", "auto", "prior"]
    assert not unlabeled_texts_help(None)
    with pytest.raises(ValueError, match="needs labeled examples"):
        fit_calibrator(get_calibrator("temperature"), _recording_scores([]), texts, None)


def test_unfitted_calibrators_fit_on_first_use_or_refuse():
    seen = []
    scores = np.log([[0.6, 0.4]])
    cal = get_calibrator("contextual")
    out = calibrate(cal, scores, ["x"], _recording_scores(seen))
    assert seen == [list(CONTENT_FREE)] and cal.is_fitted()  # fitted once, kept
    np.testing.assert_allclose(out, ContextualCalibrator().fit(np.log([[0.7, 0.3]])).transform(scores))
    domain = get_calibrator("domain")
    calibrate(domain, scores, ["a b c"], _recording_scores(seen), random_state=0)
    assert not domain.is_fitted()  # the predicted texts' domain serves this call only
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="needs fit"):
        calibrate(get_calibrator("temperature"), scores, ["x"], _recording_scores([]))


class ShiftCalibrator(Calibrator):
    """A calibrator that exists in this test file only: subtract the median log-probability of fit's texts."""

    name = "shift"

    def fit(self, scores, y=None):
        self.shift_ = np.median(log_softmax(scores), axis=0)
        return self

    def transform(self, scores):
        return log_softmax(log_softmax(scores) - self.shift_)


def test_a_calibrator_defined_outside_the_package_works_through_verbalizer(gpt2, monkeypatch, tmp_path):
    """Adding a calibrator touches one place: a Calibrator subclass and its registry entry (here, this file)."""
    from verbalize import Verbalizer

    monkeypatch.setitem(CALIBRATORS, "shift", ShiftCalibrator)
    texts = ["good film", "bad film", "a great review", "terrible and bad"]
    params = dict(template="Review: {text}\nSentiment:", labels={"negative": ["bad"], "positive": ["good"]})
    clf = Verbalizer(**params, model=gpt2.scorer(), calibration="shift").fit(texts)
    raw = clf.label_scores(texts)
    want = ShiftCalibrator().fit(raw).transform(raw)
    np.testing.assert_allclose(clf.predict_log_proba(texts), want, atol=1e-6)
    by_instance = Verbalizer(**params, model=gpt2.scorer(), calibration=ShiftCalibrator()).fit(texts)
    np.testing.assert_allclose(by_instance.predict_log_proba(texts), want, atol=1e-6)
    assert not by_instance.calibration.is_fitted()  # the parameter is copied, never fitted in place
    clf.save(tmp_path / "clf")
    back = Verbalizer.load(tmp_path / "clf", device="cpu")
    assert isinstance(back.calibrator_, ShiftCalibrator)
    np.testing.assert_allclose(back.predict_log_proba(texts), want, atol=1e-6)
    with pytest.raises(ValueError, match="Did you mean 'shift'"):
        get_calibrator("shfit")


def test_domain_texts_of_two_field_rows_draw_each_field_from_its_own_words():
    """One bag copied into both fields shows a pair template the same text twice, itself evidence for "same"."""
    rows = [{"a": "red green blue", "b": "one"}, {"a": "cyan magenta yellow", "b": "two"}]
    bags = domain_texts(rows, 0)
    assert len(bags) == 20 and all(set(bag) == {"a", "b"} for bag in bags)
    assert all(len(bag["a"].split()) == 3 and len(bag["b"].split()) == 1 for bag in bags)  # each field's mean length
    colours, numbers = {"red", "green", "blue", "cyan", "magenta", "yellow"}, {"one", "two"}
    assert all(set(bag["a"].split()) <= colours and set(bag["b"].split()) <= numbers for bag in bags)
    assert any(bag["a"] != bag["b"] for bag in bags) and domain_texts(rows, 0) == bags  # seeded
    assert domain_texts([{"a": "", "b": ""}], 0) == list(CONTENT_FREE)
