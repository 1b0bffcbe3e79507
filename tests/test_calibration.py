"""Calibrators on hand-made arrays with answers computed here by hand."""

import numpy as np
import pytest

from verbalize import (
    BatchCalibrator,
    ContextualCalibrator,
    DomainCalibrator,
    TemperatureCalibrator,
    get_calibrator,
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
