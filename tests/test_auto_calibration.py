"""calibration="auto" (cross-validated choice without leaks), the collapse and temperature-bound warnings,
and the few-shot API (demos_per_class, demo_pool, calibration_sample)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from verbalize import Verbalizer
from verbalize.calibration.auto import MIN_UNLABELED, AutoCalibrator, select
from verbalize.calibration.calibrators import (
    TemperatureCalibrator,
    calibrate,
    fit_calibrator,
    get_calibrator,
    warn_if_collapsed,
)
from verbalize.errors import ParameterError

LABELS = {"negative": ["bad", "negative"], "positive": ["good", "positive"]}
PROMPT = "Review: {text}\nSentiment:"
X = ["good film", "bad film", "a great review", "terrible and bad", "the plot was bad", "good good", "fine", "awful"]
Y = ["positive", "negative", "positive", "negative", "negative", "positive", "positive", "negative"]


def make(gpt2, **kw):
    return Verbalizer(**(dict(template=PROMPT, labels=LABELS, model=gpt2.scorer(batch_size=4)) | kw))


# -- auto, on arrays (no model) ---------------------------------------------------------------------
def _biased_scorer(texts_to_scores):
    return lambda texts: np.array([texts_to_scores(t) for t in texts])


def test_auto_chooses_the_method_that_fixes_a_biased_prompt():
    # Raw scores always favour label 0 by 2 nats; the content-free inputs show exactly that bias.
    def scores(t):
        truth = 1.0 if t.startswith("pos") else -1.0
        return [2.0, truth * 1.0] if t not in ("N/A", "", "[MASK]") else [2.0, 0.0]

    texts = [f"pos {i}" for i in range(8)] + [f"neg {i}" for i in range(8)]
    y = np.array([1] * 8 + [0] * 8)
    cal = get_calibrator("auto")
    fit_calibrator(cal, _biased_scorer(scores), texts, y, random_state=0)
    report = cal.report_
    assert report["scores"]["None"]["accuracy"] == 0.5  # raw: everything is label 0
    assert report["scores"]["contextual"]["accuracy"] == 1.0
    assert report["chosen"] in ("contextual", "domain", "batch", "prior")
    assert set(report["scores"]) == {"None", "contextual", "domain", "batch", "temperature", "prior"}
    out = calibrate(cal, _biased_scorer(scores)(texts), texts, _biased_scorer(scores))
    assert (out.argmax(axis=1) == y).all()


def test_auto_keeps_raw_when_calibration_only_hurts():
    # Raw scores are perfect and balanced; the content-free inputs are strongly (wrongly) biased.
    def scores(t):
        if t in ("N/A", "", "[MASK]"):
            return [-5.0, 5.0]
        return [0.3, -0.3] if t.startswith("neg") else [-0.3, 0.3]

    texts = [f"pos {i}" for i in range(6)] + [f"neg {i}" for i in range(6)]
    y = np.array([1] * 6 + [0] * 6)
    cal = get_calibrator("auto")
    fit_calibrator(cal, _biased_scorer(scores), texts, y, random_state=0)
    assert cal.report_["scores"]["contextual"]["accuracy"] < 1.0
    assert cal.report_["chosen"] in (None, "temperature", "batch", "prior")  # all at raw accuracy here
    assert cal.report_["scores"][str(cal.report_["chosen"])]["accuracy"] == 1.0


def test_auto_cross_validation_never_scores_a_text_with_itself_in_its_demos_or_calibrator():
    texts = [f"pos {i}" for i in range(4)] + [f"neg {i}" for i in range(4)]
    y = np.array([1] * 4 + [0] * 4)
    seen = []

    def fold_scorer(rows):
        demo_texts = {texts[i] for i in rows}

        def score(batch):
            seen.append((demo_texts, list(batch)))
            return np.zeros((len(batch), 2))

        return score

    fit_calibrator(get_calibrator("auto"), fold_scorer([]), texts, y, random_state=0, fold_scorer=fold_scorer)
    held_calls = [(demo, batch) for demo, batch in seen if set(batch) <= set(texts)]
    assert held_calls
    for demo, batch in held_calls:  # a scored text (held out, or a batch calibrator's fit text) ...
        if set(batch) & demo:  # ... fitting batch on the training fold is fine; held-out texts never overlap
            assert set(batch) <= demo
    n_folds = sum(1 for demo, batch in seen if not set(batch) & demo)
    assert n_folds >= 2


def test_auto_without_labels_uses_no_calibration_on_few_texts_and_says_why():
    cal = get_calibrator("auto")
    fit_calibrator(cal, lambda t: np.zeros((len(t), 2)), ["a", "b"], None)
    assert cal.chosen_ is None and "no labeled" in cal.report_["reason"]
    s = np.log([[0.9, 0.1]])
    np.testing.assert_allclose(calibrate(cal, s, ["a"], lambda t: s), s, atol=1e-12)


def test_auto_without_labels_fits_the_default_batch_prior_on_enough_unlabeled_texts():
    texts = [f"t{i}" for i in range(MIN_UNLABELED)]
    bias = lambda t: np.tile([1.0, 0.0], (len(t), 1))  # noqa: E731  every text leans to label 0
    cal = get_calibrator("auto")
    fit_calibrator(cal, bias, texts, None, random_state=0)
    assert cal.report_["chosen"] == "batch" and cal.chosen_.name == "batch" and "batch" in cal.report_["reason"]
    np.testing.assert_allclose(np.exp(cal.transform(bias(["x"]))), [[0.5, 0.5]])  # the prior is divided out
    one_label = get_calibrator("auto")  # labeled texts of one label only: a batch prior would be skewed
    fit_calibrator(one_label, bias, texts, np.zeros(len(texts), dtype=int), random_state=0)
    assert one_label.chosen_ is None


# -- the selection rule, on held-out log-probabilities ------------------------------------------------
def _lp(pred, n_classes=2, confidence=0.8):
    """Log-probabilities predicting ``pred`` (one label per row) with the given confidence."""
    p = np.full((len(pred), n_classes), (1 - confidence) / (n_classes - 1))
    p[np.arange(len(pred)), pred] = confidence
    return np.log(p)


Y_SEL = np.array([0, 0, 0, 0, 1, 1, 1, 1])


def test_select_switches_to_a_clearly_better_method():
    out = {None: _lp([0] * 8), "batch": _lp([0, 0, 0, 0, 0, 0, 1, 1]), "contextual": _lp(Y_SEL)}
    chosen, scores = select(out, Y_SEL, default="batch", clear_se=1.0, clear_p=None)
    assert chosen == "contextual"  # right on 2 more examples and wrong on none: more than a standard error
    assert scores["contextual"]["gain"] == 0.25 and 0.125 < scores["contextual"]["gain_se"] < 0.25
    assert scores["contextual"]["p_value"] == 0.25  # 2 wins, no loss: (1/2)^2
    assert scores["batch"]["gain"] == 0 and scores["None"]["accuracy"] == 0.5
    assert select(out, Y_SEL, default="batch")[0] == "batch"  # the default margin, 2 errors: 0.25 < 2 x 0.164
    out["batch"] = _lp([0, 0, 0, 0, 0, 0, 1, 0])  # contextual now right on 3 more of 8: 0.375 > 2 x 0.183
    assert select(out, Y_SEL, default="batch", clear_p=None)[0] == "contextual"
    assert select(out, Y_SEL, default="batch")[0] == "batch"  # but 3 wins of 3 is p = 1/8 for a coin: not clear
    y16 = np.tile(Y_SEL, 2)
    wrong6 = np.where(np.arange(16) < 6, 1 - y16, y16)  # the default wrong on 6 examples the other gets right
    out16 = {"batch": _lp(wrong6), "contextual": _lp(y16)}
    chosen, scores = select(out16, y16, default="batch")
    assert chosen == "contextual" and scores["contextual"]["p_value"] == 1 / 64


def test_select_keeps_the_default_on_a_noisy_tie():
    one_more = _lp([0, 0, 0, 0, 1, 1, 1, 0])  # batch: one example more wrong than contextual
    out = {None: _lp([0] * 8), "batch": _lp([0, 0, 0, 0, 1, 1, 0, 0]), "contextual": one_more}
    assert select(out, Y_SEL, default="batch")[0] == "batch"
    swap = {"batch": _lp([0, 0, 0, 1, 1, 1, 1, 0]), "contextual": _lp([0, 0, 0, 0, 1, 1, 0, 1])}
    assert select(swap, Y_SEL, default="batch")[0] == "batch"  # +2 and -1: gain 1/8 within its error
    sharper = {"batch": _lp(Y_SEL, confidence=0.6), "temperature": _lp(Y_SEL, confidence=0.99)}
    chosen, scores = select(sharper, Y_SEL, default="batch")
    assert chosen == "batch" and scores["temperature"]["log_loss"] < scores["batch"]["log_loss"]  # accuracy first


def test_select_among_clearly_better_methods_takes_the_most_accurate_then_the_lower_log_loss():
    out = {
        None: _lp([1, 1, 1, 1, 1, 1, 1, 0]),
        "batch": _lp([1] * 8),
        "contextual": _lp([0, 0, 0, 1, 1, 1, 1, 1], confidence=0.6),
        "domain": _lp([0, 0, 0, 1, 1, 1, 1, 1], confidence=0.9),
    }
    assert select(out, Y_SEL, default="batch", clear_p=None)[0] == "domain"
    assert select(out, Y_SEL, default=None, clear_p=None)[0] == "domain"
    assert select(out, Y_SEL, default="batch")[0] == "batch"  # 3 wins and no loss in 8: not clear by the sign test
    with pytest.raises(ValueError, match="default"):
        select(out, Y_SEL, default="temperature")


def test_auto_state_round_trips():
    cal = get_calibrator("auto")
    texts, y = ["p1", "p2", "n1", "n2"], np.array([1, 1, 0, 0])
    fit_calibrator(cal, lambda t: np.tile([1.0, 0.0], (len(t), 1)), texts, y, random_state=0)
    back = AutoCalibrator.from_state(cal.get_state())
    assert back.report_ == cal.report_
    s = np.log([[0.7, 0.3]])
    np.testing.assert_allclose(back.transform(s), cal.transform(s))


# -- warnings -----------------------------------------------------------------------------------------
def test_collapse_warning_at_ninety_percent_only():
    labels = ["a", "b"]
    with pytest.warns(UserWarning, match=r"sends 9 of 10 predictions \(90%\) to label 'a'"):
        warn_if_collapsed(np.log([[0.9, 0.1]] * 9 + [[0.1, 0.9]]), labels, "calibration='batch'")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_collapsed(np.log([[0.9, 0.1]] * 8 + [[0.1, 0.9]] * 2), labels, "x")  # 80%: silent
        warn_if_collapsed(np.log([[0.9, 0.1]] * 5), labels, "x")  # too few rows to judge: silent


def test_temperature_warns_at_its_bound():
    scores = np.log([[0.99, 0.01], [0.01, 0.99]] * 4)
    with pytest.warns(UserWarning, match="at its bound"):
        TemperatureCalibrator().fit(scores, np.array([1, 0] * 4))  # always confidently wrong: T -> 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TemperatureCalibrator().fit(np.log([[0.7, 0.3], [0.3, 0.7]] * 4), np.array([0, 1, 0, 1, 1, 1, 0, 0]))


def test_predict_warns_when_the_prompt_collapses(gpt2):
    clf = make(gpt2, labels={"a": ["good"], "b": ["good!"]})
    with pytest.warns(UserWarning, match="the prompt \\(no calibration\\)"):
        clf.predict(["same text"] * 12)


# -- the estimator ---------------------------------------------------------------------------------
def test_auto_in_the_estimator_reports_and_predicts_like_its_choice(gpt2):
    clf = make(gpt2, calibration="auto", random_state=0).fit(X, Y)
    report = clf.calibration_report_
    assert set(report["scores"]) == {"None", "contextual", "domain", "batch", "temperature", "prior"}
    chosen = report["chosen"]
    twin = make(gpt2, calibration=chosen, random_state=0).fit(X, Y)
    np.testing.assert_allclose(clf.predict_log_proba(X), twin.predict_log_proba(X), atol=1e-6)


def test_auto_with_demonstrations_draws_each_folds_demos_from_the_other_folds(gpt2, monkeypatch):
    clf = make(gpt2, calibration="auto", demos_per_class=1, random_state=0)
    folds = []  # (training rows' texts, demonstrations, texts of the fold's first call: its held-out texts)
    original = clf._fold_scorer

    def spy_fold_scorer(texts, ys):
        inner = original(texts, ys)

        def scorer(rows):
            score = inner(rows)
            fold = {"train": {texts[i] for i in rows}, "held": None}
            folds.append(fold)

            def spied(batch):
                fold["held"] = fold["held"] or list(batch)
                return score(batch)

            return spied

        return scorer

    monkeypatch.setattr(clf, "_fold_scorer", spy_fold_scorer)
    prompts = []
    original_prompts = clf._prompts
    monkeypatch.setattr(
        clf,
        "_prompts",
        lambda t, leave_out_same=False, demos=None: (
            prompts.append((list(t), demos)) or original_prompts(t, leave_out_same, demos)
        ),
    )
    clf.fit(X, Y)
    assert clf.calibration_report_["n_folds"] == len(folds) >= 2
    covered = set()
    for fold in folds:
        assert fold["held"] and not set(fold["held"]) & fold["train"]
        covered |= set(fold["held"])
        demos_used = [d for t, d in prompts if t == fold["held"]][0]
        assert {text for text, _ in demos_used[0]} <= fold["train"]  # demonstrations from the other folds only
    assert covered == set(X)  # every labeled example is scored once as held out


def test_demos_per_class_and_n_demos(gpt2):
    clf = make(gpt2, demos_per_class=2, random_state=0).fit(X, Y)
    assert len(clf.demos_) == 4
    assert sorted(label for _, label in clf.demos_) == ["negative"] * 2 + ["positive"] * 2
    assert len(make(gpt2, n_demos=3, random_state=0).fit(X, Y).demos_) == 3
    with pytest.raises(ParameterError, match="give one of them"):
        make(gpt2, n_demos=2, demos_per_class=1).fit(X, Y)


def test_demo_pool_is_separate_from_the_calibration_texts(gpt2, monkeypatch):
    pool = (["pool good", "pool bad"], ["positive", "negative"])
    clf = make(gpt2, demos_per_class=1, calibration="batch", random_state=0)
    scored = []
    original = clf._fit_scores
    monkeypatch.setattr(clf, "_fit_scores", lambda texts: scored.append(list(texts)) or original(texts))
    clf.fit(X, demo_pool=pool)
    assert sorted(t for t, _ in clf.demos_) == ["pool bad", "pool good"]  # demonstrations from the pool only
    assert scored == [X]  # the calibrator scored fit's texts, none of the pool's
    # and what it learned is the prior of X's scores (demonstrations from the pool in their prompts)
    want = get_calibrator("batch").fit(clf.label_scores(X))
    np.testing.assert_allclose(clf.calibrator_.transform(clf.label_scores(X)), want.transform(clf.label_scores(X)))
    assert not {t for t, _ in clf.demos_} & set(X)


def test_calibration_sample_caps_the_texts_scored(gpt2, monkeypatch):
    clf = make(gpt2, calibration="batch", calibration_sample=3, random_state=0)
    scored = []
    original = clf._fit_scores
    monkeypatch.setattr(clf, "_fit_scores", lambda texts: scored.append(list(texts)) or original(texts))
    clf.fit(X)
    assert len(scored) == 1 and len(scored[0]) == 3 and set(scored[0]) <= set(X)
