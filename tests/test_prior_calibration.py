"""calibration="prior" (issue 23): EM estimate of the label prior of the texts being classified.

Synthetic score matrices whose true prior is known; the guards (too few texts, a collapsed estimate,
EM that does not settle); save/load; the tiny model through the Verbalizer.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from verbalize import Verbalizer
from verbalize.calibration.calibrators import CONTENT_FREE, calibrate, fit_calibrator, get_calibrator, log_softmax
from verbalize.calibration.prior import PriorCalibrator, estimate_prior
from verbalize.errors import ParameterError

LABELS = {"negative": ["bad", "negative"], "positive": ["good", "positive"]}
PROMPT = "Review: {text}\nSentiment:"
X = ["good film", "bad film", "a great review", "terrible and bad", "the plot was bad", "good good", "fine", "awful"]
Y = ["positive", "negative", "positive", "negative", "negative", "positive", "positive", "negative"]


def sample(prior: list[float], n: int, signal: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from ``prior`` and the exact posteriors under a uniform prior (scores of a known model).

    Each text's scores are Gaussian noise plus ``signal`` on its label, so the posterior of label k
    under a uniform prior is softmax(signal * scores).
    """
    rng = np.random.default_rng(seed)
    y = rng.choice(len(prior), size=n, p=prior)
    z = rng.normal(size=(n, len(prior)))
    z[np.arange(n), y] += signal
    return signal * z, y


@pytest.mark.parametrize("prior", [[0.5, 0.5], [0.8, 0.2], [0.55, 0.25, 0.1, 0.06, 0.04]])
def test_em_recovers_a_known_prior(prior):
    q, y = sample(prior, 5000, signal=1.5)
    est, iterations, converged = estimate_prior(q)
    assert converged and iterations > 1
    empirical = np.bincount(y, minlength=len(prior)) / len(y)
    np.testing.assert_allclose(est, empirical, atol=0.03)


def test_em_on_confident_posteriors_counts_the_predictions():
    q = np.log([[0.999, 0.001]] * 30 + [[0.001, 0.999]] * 10)
    est, _, converged = estimate_prior(q, smoothing=0.0)
    assert converged
    np.testing.assert_allclose(est, [0.75, 0.25], atol=0.002)


def test_smoothing_keeps_a_small_sample_near_uniform():
    q = np.log([[0.9, 0.1]] * 3)
    est, _, _ = estimate_prior(q, smoothing=1.0)
    assert 0.5 < est[0] < 0.85  # three texts: (3 + 1) / (3 + 2) at most
    assert estimate_prior(q, smoothing=0.0)[0][0] > 0.99


def test_prior_beats_the_uniform_correction_on_a_skewed_sample():
    q, y = sample([0.85, 0.15], 2000, signal=1.0, seed=1)
    cal = PriorCalibrator(min_skew=0.0).fit(np.zeros((1, 2)))  # no bias to divide out: the base is the identity
    out = cal.transform(q)
    acc_uniform = (q.argmax(1) == y).mean()
    acc_prior = (out.argmax(1) == y).mean()
    assert acc_prior > acc_uniform + 0.03
    report = cal.report()
    assert report["fallback"] is None and report["n_texts"] == 2000
    # the default estimate (mean posterior, one EM step) lies between uniform and the truth: conservative
    assert 0.55 < report["estimated_prior"][0] < np.mean(y == 0)
    em = PriorCalibrator(estimator="em").fit(np.zeros((1, 2)))
    em.transform(q)
    assert em.report()["estimated_prior"][0] == pytest.approx(np.mean(y == 0), abs=0.03)


def test_an_estimate_near_uniform_keeps_the_base_alone():
    q, y = sample([0.85, 0.15], 2000, signal=1.0, seed=1)
    gated = PriorCalibrator().fit(np.zeros((1, 2)))  # default min_skew 0.2; this weak model's estimate is ~0.6
    out = gated.transform(q)
    report = gated.report()
    skew = 0.5 * np.abs(np.subtract(report["estimated_prior"], 0.5)).sum()
    assert report["skew"] == pytest.approx(skew, abs=1e-3) and skew < 0.2
    assert report["shifted"] is False and report["fallback"] is None
    np.testing.assert_allclose(out, log_softmax(q))
    strong, _ = sample([0.85, 0.15], 2000, signal=3.0, seed=1)  # a sharper model: the estimate clears the bar
    shifted = gated.transform(strong)
    assert gated.report()["shifted"] is True and gated.report()["skew"] >= 0.2
    assert not np.allclose(shifted, log_softmax(strong))
    with pytest.raises(ValueError, match="min_skew"):
        PriorCalibrator(min_skew=1.5)


def test_prior_divides_out_the_base_bias_first():
    # the model adds log 4 to label 0 everywhere; the base (content-free inputs) shows exactly that
    q, y = sample([0.5, 0.5], 2000, signal=1.5, seed=2)
    biased = q + np.array([np.log(4.0), 0.0])
    cal = PriorCalibrator(base="contextual").fit(np.log([[0.8, 0.2]]))
    est = np.exp(cal.transform(biased)).mean(axis=0)
    assert cal.report()["estimated_prior"][0] == pytest.approx(0.5, abs=0.03)
    assert est[0] == pytest.approx(0.5, abs=0.03)


def test_fewer_texts_than_labels_fall_back_to_the_base_with_a_warning():
    cal = PriorCalibrator().fit(np.log([[0.5, 0.3, 0.2]]))
    s = np.log([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])
    with pytest.warns(UserWarning, match=r"2 texts, fewer than the 3 labels.*toward a uniform prior"):
        out = cal.transform(s)
    np.testing.assert_allclose(out, log_softmax(log_softmax(s) - np.log([0.5, 0.3, 0.2])))
    assert cal.report()["fallback"].startswith("2 texts") and cal.report()["estimated_prior"] is None


def test_a_collapsed_estimate_falls_back_with_a_warning():
    cal = PriorCalibrator().fit(np.zeros((1, 2)))
    s = np.log([[0.95, 0.05]] * 40)  # every text confidently label 0: EM gives it ~98%
    with pytest.warns(UserWarning, match=r"collapses onto label 0"):
        out = cal.transform(s)
    np.testing.assert_allclose(out, log_softmax(s))
    assert "collapses" in cal.report()["fallback"]


def test_em_that_does_not_settle_falls_back(monkeypatch):
    import verbalize.calibration.prior as prior_module

    monkeypatch.setattr(prior_module, "MAX_ITER", 2)
    monkeypatch.setattr(prior_module.estimate_prior, "__defaults__", (1.0, 1e-12, 2))
    q, _ = sample([0.7, 0.3], 500, signal=1.0)
    cal = PriorCalibrator(estimator="em").fit(np.zeros((1, 2)))
    with pytest.warns(UserWarning, match="did not settle in 2 iterations"):
        out = cal.transform(q)
    np.testing.assert_allclose(out, log_softmax(q))


def test_batch_base_with_labels_weighs_each_label_equally():
    # 3 texts of label 0 and 1 of label 1; the base is the mean of the two labels' mean probabilities
    p = np.array([[0.9, 0.1], [0.7, 0.3], [0.8, 0.2], [0.4, 0.6]])
    y = np.array([0, 0, 0, 1])
    cal = PriorCalibrator().fit(np.log(p), y)
    expected = (p[:3].mean(axis=0) + p[3]) / 2
    np.testing.assert_allclose(np.exp(cal.log_bias_), expected)
    assert cal.temperature_ > 0


def test_fit_inputs_follow_the_base_and_the_labels():
    texts = ["a b c", "d e f", "g h i"]
    cal = PriorCalibrator(base="batch")
    cal.select(lambda rows: None, texts, np.array([0, 1, 0]), 0)
    assert cal.fit_inputs(texts, 0) == texts  # batch with labels: the labeled texts themselves
    both = PriorCalibrator()  # domain+batch: domain words, then the labeled texts
    both.select(lambda rows: None, texts, np.array([0, 1, 0]), 0)
    inputs = both.fit_inputs(texts, 0)
    assert inputs is not None and inputs[-3:] == texts and len(inputs) == 23
    cal.select(lambda rows: None, texts, None, 0)
    unlabeled = cal.fit_inputs(texts, 0)  # batch without labels would absorb their skew: domain words
    assert unlabeled is not None and len(unlabeled) == 20 and unlabeled != texts
    ctx = PriorCalibrator(base="contextual")
    ctx.select(lambda rows: None, texts, np.array([0, 1, 0]), 0)
    assert ctx.fit_inputs(texts, 0) == [*CONTENT_FREE, *texts]


def test_fit_calibrator_passes_the_labels_and_fits_a_temperature():
    texts = [f"t{i}" for i in range(12)]
    y = np.array([0, 1] * 6)
    table = {t: ([3.0, 0.0] if k == 0 else [0.0, 3.0]) for t, k in zip(texts, y, strict=True)}

    def score(batch):
        return np.array([table.get(t, [0.0, 0.0]) for t in batch])

    cal = get_calibrator("prior")
    fit_calibrator(cal, score, texts, y, random_state=0)
    assert cal.report()["base"] == "domain+batch"
    assert cal.temperature_ < 1.0  # every labeled text is right: sharper than the raw scores


def test_state_round_trips_and_refuses_bad_values():
    cal = PriorCalibrator(base="domain").fit(np.log([[0.7, 0.3], [0.6, 0.4]]))
    q, _ = sample([0.7, 0.3], 300, signal=1.0)
    first = cal.transform(q)
    back = PriorCalibrator.from_state(cal.get_state())
    assert back.base == "domain" and back.report()["estimated_prior"] == cal.report()["estimated_prior"]
    np.testing.assert_allclose(back.transform(q), first)
    state = cal.get_state() | {"log_bias_": [float("nan"), 0.0]}
    with pytest.raises(ValueError, match="log_bias_: expected a list of finite numbers"):
        PriorCalibrator.from_state(state)
    with pytest.raises(ValueError, match="temperature_"):
        PriorCalibrator.from_state(cal.get_state() | {"temperature_": -1.0})
    with pytest.raises(ParameterError, match="base"):
        PriorCalibrator(base="uniform")


def test_the_labeled_confusion_is_saved_and_checked_on_load():
    y = np.array([0, 0, 0, 1, 1, 1])
    cal = PriorCalibrator(base="batch").fit(
        np.log([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.4, 0.6]]), y
    )
    assert cal.confusion_.shape == (2, 2) and cal.ridge_ == pytest.approx(1 / 3)
    q, _ = sample([0.8, 0.2], 300, signal=1.0)
    first = cal.transform(q)
    back = PriorCalibrator.from_state(cal.get_state())
    np.testing.assert_allclose(back.confusion_, cal.confusion_)
    np.testing.assert_allclose(back.transform(q), first)
    assert back.report()["estimate"] == "adjusted"
    with pytest.raises(ValueError, match="confusion_: expected 2 rows of 2"):
        PriorCalibrator.from_state(cal.get_state() | {"confusion_": [[0.5, 0.5]]})
    with pytest.raises(ValueError, match="ridge_"):
        PriorCalibrator.from_state(cal.get_state() | {"ridge_": float("inf")})
    old = {k: v for k, v in cal.get_state().items() if k not in ("confusion_", "ridge_", "estimator")}
    assert PriorCalibrator.from_state(old).estimator == "mean"  # saved before "adjusted": as it was


def make(gpt2, **kw):
    return Verbalizer(**(dict(template=PROMPT, labels=LABELS, model=gpt2.scorer(batch_size=4)) | kw))


def test_verbalizer_by_name_reports_the_estimated_prior_and_saves(gpt2, tmp_path):
    clf = make(gpt2, calibration="prior", random_state=0).fit(X, Y)
    assert clf.calibration_report_["base"] == "domain+batch"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random tiny model may collapse: the warning is tested above
        proba = clf.predict_proba(X * 3)
    report = clf.calibration_report_
    assert report["n_texts"] == 24
    if report["fallback"] is None:
        assert sum(report["estimated_prior"]) == pytest.approx(1.0, abs=1e-3)
    raw = clf.label_scores(X * 3)
    np.testing.assert_allclose(proba, np.exp(calibrate(clf.calibrator_, raw, X * 3, clf._raw_scores)), atol=1e-6)
    clf.save(tmp_path / "m")
    back = Verbalizer.load(tmp_path / "m", model=gpt2.scorer(batch_size=4))
    assert isinstance(back.calibrator_, PriorCalibrator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(back.predict_proba(X * 3), proba, atol=1e-6)


def test_verbalizer_unfitted_prior_uses_the_content_free_base(gpt2):
    clf = make(gpt2, calibration="prior")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.predict(X)
    assert clf.calibrator_.report()["base"] == "contextual"


def test_auto_reports_the_estimate_of_a_prior_choice_and_round_trips():
    from verbalize.calibration.auto import AutoCalibrator

    auto = AutoCalibrator()
    auto.chosen_ = PriorCalibrator().fit(np.zeros((1, 2)))
    auto.report_ = {"chosen": "prior", "default": "prior"}
    q, _ = sample([0.85, 0.15], 400, signal=3.0)
    out = auto.transform(q)
    report = auto.report()
    assert report["n_texts"] == 400 and report["estimated_prior"][0] > 0.6 and report["shifted"] is True
    assert report["chosen"] == "prior" and "n_texts" not in auto.report_  # merged when read, not stored
    back = AutoCalibrator.from_state(auto.get_state())
    assert isinstance(back.chosen_, PriorCalibrator)
    np.testing.assert_allclose(back.transform(q), out)
    assert back.report()["estimated_prior"] == report["estimated_prior"]


def test_cli_eval_shows_the_estimated_label_distribution_beside_the_true_one(
    tmp_path, tmp_template, gpt2_model, gpt2_tokenizer, capsys
):
    from verbalize.cli.main import main

    gpt2_model.save_pretrained(tmp_path / "m")
    gpt2_tokenizer.save_pretrained(tmp_path / "m")
    rows = [("good film", "positive")] * 9 + [("bad film", "negative")] * 3
    data = tmp_path / "d.jsonl"
    data.write_text("".join(f'{{"text": "{t} {i}", "label": "{y}"}}\n' for i, (t, y) in enumerate(rows)))
    template = str(tmp_template())
    assert main(["eval", template, str(data), "--model", str(tmp_path / "m"), "--calibration", "prior"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("label distribution"))
    assert "negative 0.250/" in line and "positive 0.750/" in line
    assert line.startswith("label distribution true/predicted/estimated:") and "last 12 texts" in line
    assert main(["eval", template, str(data), "--model", str(tmp_path / "m")]) == 0
    plain = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("label distribution"))
    assert plain.startswith("label distribution true/predicted:") and "positive 0.750/" in plain


def test_auto_that_chooses_prior_fits_it_on_the_labeled_texts(gpt2):
    """Regression: auto's chosen prior was fitted as if unlabeled (its domain inputs alone) and fit raised
    "24 labels for 20 rows of scores"; it must see fit's labels, as calibration='prior' by name does."""
    from verbalize.calibration.auto import AutoCalibrator

    class PriorOnly(AutoCalibrator):
        default = "prior"

        @staticmethod
        def candidates() -> list[str | None]:
            return ["prior"]

    clf = make(gpt2, calibration=PriorOnly(), random_state=0).fit(X, Y)
    by_name = make(gpt2, calibration="prior", random_state=0).fit(X, Y)
    assert clf.calibration_report_["chosen"] == "prior"
    chosen = clf.calibrator_.chosen_
    assert chosen.report()["base"] == "domain+batch" == by_name.calibration_report_["base"]
    np.testing.assert_allclose(chosen.log_bias_, by_name.calibrator_.log_bias_)
    assert chosen.temperature_ == pytest.approx(by_name.calibrator_.temperature_)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random tiny model may collapse: the warning is tested above
        clf.predict_proba(X * 3)
    # predict calls the chosen calibrator itself: auto's report still carries its estimate (it did not)
    assert clf.calibration_report_["n_texts"] == 24 == chosen.report()["n_texts"]
    assert clf.calibration_report_["estimated_prior"] == chosen.report()["estimated_prior"]
    assert clf.calibration_report_["chosen"] == "prior" and "shifted" in clf.calibration_report_


def test_domain_and_batch_base_is_the_mean_of_the_two_log_biases_when_their_variances_are_unknown():
    domain = np.log([[0.9, 0.1], [0.7, 0.3]])  # the base inputs (domain words): mean probability (0.8, 0.2)
    labeled = np.log([[0.6, 0.4], [0.2, 0.8]])  # one text per label: no variance, label-balanced mean (0.4, 0.6)
    cal = PriorCalibrator()
    cal.select(lambda rows: None, ["a b", "c d"], np.array([0, 1]), 0)
    cal.fit(np.concatenate([domain, labeled]), np.array([0, 1]))
    np.testing.assert_allclose(cal.log_bias_, (np.log([0.8, 0.2]) + np.log([0.4, 0.6])) / 2)
    assert cal.report()["base_weights"] == {"domain": 0.5, "batch": 0.5}


def _delta_variance(groups):
    """Var of log(mean of the groups' means), per label, written out (delta method), summed over labels."""
    means = np.mean([g.mean(axis=0) for g in groups], axis=0)
    var = np.sum([g.var(axis=0, ddof=1) / len(g) for g in groups], axis=0) / len(groups) ** 2
    return float((var / means**2).sum())


@pytest.mark.parametrize("spread", [0.05, 0.2])
def test_domain_and_batch_base_weighs_each_estimate_by_its_inverse_variance(spread):
    rng = np.random.default_rng(0)
    domain = np.clip(0.7 + rng.normal(0, 0.05, 20), 0.05, 0.95)  # 20 word bags that agree
    domain = np.stack([domain, 1 - domain], 1)
    labeled = np.clip(np.array([0.8, 0.7, 0.5, 0.4]) + rng.normal(0, spread, 4), 0.05, 0.95)
    labeled = np.stack([labeled, 1 - labeled], 1)
    y = np.array([0, 0, 1, 1])
    cal = PriorCalibrator()
    cal.select(lambda rows: None, ["a b"] * 4, y, 0)
    cal.fit(np.log(np.concatenate([domain, labeled])), y)
    inv = np.array([1 / _delta_variance([domain]), 1 / _delta_variance([labeled[:2], labeled[2:]])])
    w = np.clip(inv / inv.sum(), 0.25, 0.75)
    w = w / w.sum()
    batch = np.mean([labeled[:2].mean(axis=0), labeled[2:].mean(axis=0)], axis=0)
    np.testing.assert_allclose(cal.log_bias_, w[0] * np.log(domain.mean(axis=0)) + w[1] * np.log(batch))
    weights = cal.report()["base_weights"]
    assert weights["domain"] > 0.5 and weights["domain"] == pytest.approx(w[0], abs=1e-4)  # the bags agree more


def test_adjusted_prior_undoes_a_classifier_that_leans_toward_a_label():
    """A weak classifier whose label-0 texts lean toward label 2: the mean posterior is pulled toward uniform
    and toward where texts lean (measured: 0.29 / 0.22 / 0.49 for a true 0.2 / 0.1 / 0.7); the adjusted
    estimate (from the labeled texts' confusion) recovers the true prior, and its shift is more accurate."""
    rng = np.random.default_rng(0)

    def scores(y):
        z = rng.normal(0, 1, (len(y), 3))
        z[np.arange(len(y)), y] += 1.5
        z[y == 0, 2] += 1.0  # label 0 leans toward label 2
        return z

    y_fit = np.repeat(np.arange(3), 100)
    true = np.array([0.2, 0.1, 0.7])
    y_test = rng.choice(3, 2000, p=true)
    results = {}
    for estimator in ("adjusted", "mean"):
        cal = PriorCalibrator(base="batch", estimator=estimator, min_skew=0.0)
        cal.select(lambda rows: None, ["x"] * len(y_fit), y_fit, 0)
        cal.fit(scores(y_fit), y_fit)
        s = scores(y_test)
        out = cal.transform(s)
        assert cal.report()["estimate"] == estimator and cal.report()["shifted"]
        results[estimator] = (np.array(cal.report()["estimated_prior"]), np.mean(out.argmax(1) == y_test))
    adjusted, mean = results["adjusted"][0], results["mean"][0]
    assert np.abs(adjusted - true).max() < 0.05 and np.abs(mean - true).max() > 0.15
    assert results["adjusted"][1] > results["mean"][1]


def test_adjusted_prior_solves_on_the_simplex():
    from verbalize.calibration.prior import adjusted_prior

    confusion = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]])
    prior = np.array([0.6, 0.3, 0.1])
    np.testing.assert_allclose(adjusted_prior(confusion, confusion.T @ prior, 0.0), prior, atol=1e-3)
    far = adjusted_prior(confusion, np.array([1.0, 0.0, 0.0]), 0.0)  # beyond any prior: the nearest corner
    assert far.min() >= 0 and far.sum() == pytest.approx(1.0) and far.argmax() == 0
    shrunk = adjusted_prior(confusion, confusion.T @ prior, 1.0)  # the ridge pulls toward uniform
    assert np.abs(shrunk - 1 / 3).max() < np.abs(prior - 1 / 3).max()


def test_the_adjusted_estimate_falls_back_to_the_mean_without_labels_of_every_label():
    z = np.log([[0.9, 0.1, 0.0001], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7]])
    cal = PriorCalibrator(base="batch").fit(z[:2], np.array([0, 1]))  # label 2 has no labeled text
    assert cal.confusion_ is None
    q, _ = sample([0.6, 0.3, 0.1], 200, signal=2.0)
    cal.transform(q)
    assert cal.report()["estimate"] == "mean"


def test_one_text_gets_the_base_quietly_when_no_estimate_could_clear_min_skew():
    """Regression: auto (whose default is prior) warned "1 texts, fewer than the 2 labels" on every predict([text])."""
    s = np.log([[0.7, 0.3]])
    cal = PriorCalibrator().fit(np.log([[0.6, 0.4]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = cal.transform(s)  # one text: at most (1 + 1) / (1 + 2) = 2/3 on a label, 0.17 from uniform < 0.2
    np.testing.assert_allclose(out, log_softmax(log_softmax(s) - np.log([0.6, 0.4])))
    assert cal.report()["shifted"] is False and cal.report()["estimated_prior"] is None
    assert cal.report()["fallback"] is None and cal.report()["n_texts"] == 1
    ungated = PriorCalibrator(min_skew=0.0).fit(np.log([[0.6, 0.4]]))
    with pytest.warns(UserWarning, match="1 texts, fewer than the 2 labels"):
        ungated.transform(s)


def _synthetic_task(n_labels: int, zipf: float, seed: int) -> tuple[PriorCalibrator, np.ndarray, np.ndarray]:
    """A prompt with a random bias, 4 labeled texts per label, 200 test texts whose label shares follow
    1 / rank^zipf (independent of the calibrator's code: Gaussian scores plus 2 on the true label)."""
    rng = np.random.default_rng(seed)
    bias = rng.normal(0, 1.0, n_labels)

    def scores(y):
        z = rng.normal(0, 1, (len(y), n_labels)) + bias
        z[np.arange(len(y)), y] += 2.0
        return z

    share = 1 / np.arange(1, n_labels + 1) ** zipf
    y_test = rng.choice(n_labels, 200, p=(share / share.sum())[rng.permutation(n_labels)])
    y_fit = np.repeat(np.arange(n_labels), 4)
    cal = PriorCalibrator()
    cal.select(lambda rows: None, ["x"] * len(y_fit), y_fit, 0)
    cal.fit(np.concatenate([rng.normal(0, 0.5, (20, n_labels)) + bias, scores(y_fit)]), y_fit)
    return cal, scores(y_test), y_test


@pytest.mark.parametrize("n_labels", [2, 6, 14])
def test_the_skew_gate_stays_shut_on_balanced_tasks_and_opens_on_skewed_ones(n_labels):
    """The 0.2 total-variation gate does not depend on the number of labels: balanced test sets of 2, 6 or
    14 labels never move; Zipf-2 ones of 6 and 14 labels do, and gain (2 labels: the estimate may stay shut)."""
    for seed in range(5):
        cal, s, _ = _synthetic_task(n_labels, 0.0, seed)
        cal.transform(s)
        assert cal.report()["shifted"] is False, (n_labels, seed, cal.report())
    gains = []
    for seed in range(5):
        cal, s, y = _synthetic_task(n_labels, 2.0, seed)
        base = log_softmax(cal._corrected(s) / cal.temperature_)
        gains.append(np.mean(cal.transform(s).argmax(1) == y) - np.mean(base.argmax(1) == y))
        if n_labels > 2:
            assert cal.report()["shifted"] is True, (n_labels, seed, cal.report())
    assert np.mean(gains) >= 0.0 and (n_labels == 2 or np.mean(gains) > 0.03)


def test_a_handful_of_texts_never_moves_the_scores():
    """A request of a few texts (the service calibrates each request's rows) must not pull its texts toward
    their own majority: below MIN_TEXTS the call keeps the base, however skewed its estimate."""
    from verbalize.calibration.prior import MIN_TEXTS

    def texts(n):  # all but one confidently label 0: the estimate is about 85% label 0
        return np.log([[0.97, 0.03]] * (n - 1) + [[0.03, 0.97]])

    cal = PriorCalibrator().fit(np.zeros((1, 2)))
    few = texts(MIN_TEXTS - 1)
    np.testing.assert_allclose(cal.transform(few), log_softmax(few))
    assert cal.report()["skew"] >= 0.2 and cal.report()["shifted"] is False
    cal.transform(texts(MIN_TEXTS))
    assert cal.report()["skew"] >= 0.2 and cal.report()["shifted"] is True
