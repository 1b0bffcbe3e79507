"""The scikit-learn contract and the user-facing errors of Verbalizer, on a tiny random GPT-2."""

import logging

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from verbalize import InputError, ModelLoadError, Scorer, Template, Verbalizer
from verbalize.prompting.demos import similar_demos

LABELS = {"negative": ["bad", "negative"], "positive": ["good", "positive"]}
X = ["good film", "bad film", "a great review", "terrible and bad", "good good", "bad bad", "fine", "awful"]
Y = ["positive", "negative", "positive", "negative", "positive", "negative", "positive", "negative"]


@pytest.fixture
def scorer(gpt2_model, gpt2_tokenizer):
    return Scorer(gpt2_model, gpt2_tokenizer, batch_size=4)


def make(scorer, **kw):
    params = dict(template="Review: {text}\nSentiment:", labels=LABELS, model=scorer) | kw
    return Verbalizer(**params)


def test_predict_without_fit_returns_label_names_in_an_ndarray(scorer):
    clf = make(scorer)
    for X_in in (X, tuple(X), np.array(X, dtype=object)):
        pred = clf.predict(X_in)
        assert isinstance(pred, np.ndarray) and pred.shape == (len(X),)
        assert set(pred) <= {"negative", "positive"}
    assert clf.classes_.tolist() == ["negative", "positive"]


def test_proba_columns_follow_classes_and_agree_with_predict(scorer):
    clf = make(scorer)
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-9)
    assert (clf.classes_[proba.argmax(1)] == clf.predict(X)).all()
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X)), proba)


def test_label_order_is_template_order_not_alphabetical(scorer):
    clf = make(scorer, labels={"zeta": ["good"], "alpha": ["bad"]})
    proba = clf.predict_proba(["good"])
    raw = clf.label_scores(["good"])
    assert clf.classes_.tolist() == ["zeta", "alpha"]
    assert (proba.argmax(1) == raw.argmax(1)).all()


def test_score_is_accuracy(scorer):
    clf = make(scorer)
    assert clf.score(X, Y) == pytest.approx(np.mean(clf.predict(X) == np.array(Y)))


def test_clone_get_set_params(scorer):
    clf = make(scorer, calibration="contextual", n_demos=2, random_state=3)
    twin = clone(clf)
    assert twin.get_params() == clf.get_params()
    assert twin.get_params()["model"] is scorer  # weights are shared, not copied
    twin.set_params(aggregation="max")
    assert twin.aggregation == "max" and clf.aggregation == "logsumexp"


def test_fit_returns_self_and_fitting_twice_equals_once(scorer):
    clf = make(scorer, n_demos=4, calibration="contextual", random_state=0)
    assert clf.fit(X, Y) is clf
    demos, p1 = list(clf.demos_), clf.predict_proba(X)
    clf.fit(X, Y)
    assert clf.demos_ == demos
    np.testing.assert_allclose(clf.predict_proba(X), p1)
    labels = [lab for _, lab in demos]
    assert labels.count("positive") == labels.count("negative") == 2


def test_demos_change_the_prompt_and_the_scores(scorer):
    zero = make(scorer).decision_function(X)
    few = make(scorer, n_demos=2, random_state=0).fit(X, Y).decision_function(X)
    assert not np.allclose(zero, few)


def test_similar_demos_are_picked_per_text_and_rendered_once(scorer):
    template = Template(prompt="Review: {text}\nSentiment:", labels=LABELS, instruction="Rate the review.")
    clf = Verbalizer(template=template, model=scorer, n_demos=1, demo_selection="similar").fit(X, Y)
    texts = ["bad bad", "good good"]  # each is its own nearest training text
    got = clf.decision_function(texts)
    # that nearest text as the only demonstration, after the instruction (rendered once)
    nearest = [("bad bad", "negative"), ("good good", "positive")]
    for text, demo, row in zip(texts, nearest, got, strict=True):
        alone = Verbalizer(template=template, model=scorer, n_demos=1).fit([demo[0]], [demo[1]])
        assert alone.template_.render(text, [demo]).count("Rate the review.") == 1
        np.testing.assert_allclose(alone.decision_function([text])[0], row, atol=1e-4)


def test_similar_demos_can_leave_out_the_text_itself():
    train = ["good film", "bad film", "good film", "a good good film"]
    assert similar_demos(train, ["good film"], 1) in ([[0]], [[2]])  # the text itself is nearest
    assert similar_demos(train, ["good film"], 1, leave_out_same=True) == [[3]]  # both copies skipped
    assert similar_demos(train, ["good film"], 4, leave_out_same=True) == [[1, 3]]  # fewer when too few are left


def test_demos_are_dropped_before_the_text_is_cut(scorer, caplog):
    long_x = [" ".join(["word"] * 12) + f" {i}" for i in range(8)]
    clf = make(scorer, n_demos=8, random_state=0).fit(long_x, Y)
    with caplog.at_level(logging.WARNING):
        clf.predict(["good film"])
    assert "1 of 1 texts lost" in caplog.text and "shared demonstrations" in caplog.text
    assert clf.scorer_.last_n_truncated == 0


def test_grid_search_clones_and_refits(scorer):
    est = make(scorer, n_demos=2, random_state=0)
    grid = GridSearchCV(est, {"aggregation": ["logsumexp", "max"]}, cv=2).fit(X, Y)
    best = grid.best_estimator_
    assert best is not est and not [k for k in vars(est) if k.endswith("_")]  # clones were fitted, never est
    assert best.get_params()["aggregation"] == grid.best_params_["aggregation"]
    # refit: the best parameters fitted on all of X, exactly as a fit of a fresh classifier with them
    fresh = make(scorer, n_demos=2, random_state=0, aggregation=grid.best_params_["aggregation"]).fit(X, Y)
    assert len(best.demos_) == 2 and best.demos_ == fresh.demos_
    np.testing.assert_array_equal(best.predict_proba(X), fresh.predict_proba(X))


def test_temperature_needs_fit(scorer):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match="needs fit"):
        make(scorer, calibration="temperature").predict(X)
    clf = make(scorer, calibration="temperature").fit(X, Y)
    assert clf.calibrator_.temperature_ > 0


def test_save_and_load_give_identical_probabilities(scorer, tmp_path):
    clf = make(scorer, n_demos=2, calibration="contextual", random_state=1).fit(X, Y)
    clf.save(tmp_path / "run")
    back = Verbalizer.load(tmp_path / "run", device="cpu")  # the original ran on the CPU
    np.testing.assert_array_equal(back.predict_proba(X), clf.predict_proba(X))
    assert back.demos_ == clf.demos_
    assert not list((tmp_path / "run").rglob("*.pkl")) and not list((tmp_path / "run").rglob("*.bin"))


# -- bad input ----------------------------------------------------------------------------------


def test_bare_string_says_wrap_it_in_a_list(scorer):
    with pytest.raises(TypeError, match="wrap it in a list"):
        make(scorer).predict("a single text")


def test_missing_and_non_string_items_are_listed_by_position(scorer):
    with pytest.raises(TypeError, match=r"X\[1\] is missing.*X\[2\] is a int"):
        make(scorer).predict(["ok", None, 3])
    with pytest.raises(TypeError, match=r"X\[0\] is missing \(None/NaN\)"):
        make(scorer).predict([float("nan")])


def test_empty_text_is_rejected_with_its_position(scorer):
    with pytest.raises(InputError, match=r"X\[1\] is empty or whitespace-only"):
        make(scorer).predict(["ok", "   "])


def test_two_dimensional_input_is_rejected(scorer):
    with pytest.raises(TypeError, match="1-D"):
        make(scorer).predict(np.array([["a", "b"]]))


def test_unknown_label_in_y_lists_the_template_labels(scorer):
    with pytest.raises(InputError, match=r"'neutral'.*\['negative', 'positive'\]"):
        make(scorer).fit(["a", "b"], ["neutral", "positive"])


def test_text_with_braces_is_data(scorer):
    clf = make(scorer)
    weird = ["{text} {label} }{ => {0} {{x}}"]
    assert clf.predict(weird).shape == (1,)
    assert "{text} {label} }{ => {0} {{x}}" in clf.template_.render(weird[0])


def test_bad_parameters_are_explained(scorer):
    with pytest.raises(ValueError, match="Did you mean 'contextual'"):
        make(scorer, calibration="contextal").predict(X)
    with pytest.raises(ValueError, match="inline prompt needs labels="):
        Verbalizer(template="classify: {text} =>", model=scorer).predict(X)
    with pytest.raises(ValueError, match="needs template="):
        Verbalizer(model=scorer).predict(X)
    with pytest.raises(FileNotFoundError, match="not found"):
        Verbalizer(template="no/such/template.toml", model=scorer).predict(X)


def test_unknown_model_name_is_explained():
    with pytest.raises(ModelLoadError, match="could not load model"):
        Verbalizer(template="templates/sst2.toml", model="/no/such/model/dir").predict(["x"])


# -- the scikit-learn contract without surprises ------------------------------------------------------------------


@pytest.fixture
def model_dir(gpt2_model, gpt2_tokenizer, tmp_path):
    """The tiny GPT-2 as a directory, so that the classifier loads it by name (through the per-process cache)."""
    path = tmp_path / "tiny-gpt2"
    gpt2_model.save_pretrained(path)
    gpt2_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def loads(monkeypatch):
    """Count the models really loaded (not served from the per-process cache)."""
    import verbalize.engine.cache as cache

    calls = []
    real = cache.load_model

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(cache, "load_model", counting)
    return calls


def test_set_params_after_zero_shot_predict_takes_effect_without_loading_the_model_again(model_dir, loads):
    clf = Verbalizer(template="Review: {text}\nSentiment:", labels=LABELS, model=model_dir, device="cpu")
    before = clf.predict(X)
    swapped = {"negative": LABELS["positive"], "positive": LABELS["negative"]}
    clf.set_params(labels=swapped)
    after = clf.predict(X)
    fresh = Verbalizer(template="Review: {text}\nSentiment:", labels=swapped, model=model_dir, device="cpu")
    np.testing.assert_array_equal(after, fresh.predict(X))
    assert (after != before).all()  # the label words swapped sides, so every prediction flips
    clf.set_params(calibration="contextual")
    np.testing.assert_allclose(clf.predict_proba(X), fresh.set_params(calibration="contextual").predict_proba(X))
    assert len(loads) == 1  # loaded once, shared by every set-up and by the fresh classifier


def test_after_fit_changed_parameters_need_fit_again_except_runtime_ones(scorer):
    clf = make(scorer, n_demos=2, random_state=0).fit(X, Y)
    p = clf.predict_proba(X)
    clf.set_params(batch_size=3, progress=False)
    np.testing.assert_allclose(clf.predict_proba(X), p, atol=1e-6)
    assert clf.scorer_.batch_size == 3
    clf.set_params(n_demos=4)
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError, match=r"\['n_demos'\] of this Verbalizer changed since fit"):
        clf.predict(X)
    assert len(clf.fit(X, Y).demos_) == 4


def test_nested_parameters_are_addressable_the_scikit_learn_way(scorer):
    from verbalize import FineTuneConfig, Head

    clf = make(scorer, fine_tuning=FineTuneConfig(epochs=2), heads=[Head("a"), Head("b", C=2.0)])
    params = clf.get_params(deep=True)
    assert params["fine_tuning__epochs"] == 2 and params["heads__b__C"] == 2.0
    config = clf.fine_tuning
    clf.set_params(fine_tuning__epochs=5, heads__a__C=0.5)
    assert clf.fine_tuning.epochs == 5 and config.epochs == 2  # a changed copy, the original untouched
    assert [h.C for h in clf.heads] == [0.5, 2.0]
    twin = clone(clf)
    assert twin.fine_tuning == clf.fine_tuning and twin.fine_tuning is not clf.fine_tuning
    with pytest.raises(ValueError, match="Did you mean 'epochs'"):
        clf.set_params(fine_tuning__epoch=3)
    with pytest.raises(ValueError, match="Did you mean 'a'"):
        clf.set_params(heads__aa__C=3.0)


def test_grid_search_over_a_head_parameter(scorer):
    from verbalize import Head

    grid = GridSearchCV(make(scorer, heads=Head("sentiment")), {"heads__sentiment__C": [0.01, 10.0]}, cv=2)
    grid.fit(X, Y)
    assert grid.best_params_["heads__sentiment__C"] == grid.best_estimator_.heads.C
    assert grid.best_params_["heads__sentiment__C"] == grid.best_estimator_.heads_["sentiment"].head.C


def test_pickle_of_a_zero_shot_classifier_carries_parameters_not_the_model(model_dir, loads):
    import pickle

    clf = Verbalizer(template="Review: {text}\nSentiment:", labels=LABELS, model=model_dir, calibration="contextual")
    want = clf.set_params(device="cpu").predict_proba(X)
    blob = pickle.dumps(clf)
    weights = sum(p.numel() * 4 for p in clf.scorer_.model.parameters())
    assert len(blob) < weights / 10
    back = pickle.loads(blob)
    np.testing.assert_array_equal(back.predict_proba(X), want)
    assert back.scorer_.model is clf.scorer_.model and len(loads) == 1  # the shared, cached model


def test_pickle_of_a_fine_tuned_classifier_carries_its_weights(scorer):
    import pickle

    from verbalize import FineTuneConfig, Head

    make(scorer, heads=Head("deep", layers=2)).fit(X, Y)  # hidden states: transformers hooks the (shared) model
    config = FineTuneConfig(epochs=2, learning_rate=1e-3, batch_size=4, validation_fraction=0.0, progress=False)
    clf = make(scorer, fine_tuning=config, random_state=0).fit(X, Y)
    blob = pickle.dumps(clf)
    assert len(blob) > sum(p.numel() * 4 for p in clf.scorer_.model.parameters())  # the trained weights
    back = pickle.loads(blob)
    # unpickled tensors may sit at other memory alignments, where CPU kernels round differently (~1e-6)
    np.testing.assert_allclose(back.predict_proba(X), clf.predict_proba(X), atol=1e-5)
    assert back.scorer_.model is not scorer.model


def test_unordered_containers_are_refused(scorer):
    with pytest.raises(TypeError, match="ordered sequence of texts.*got a set"):
        make(scorer).predict(set(X))
    with pytest.raises(TypeError, match="ordered sequence of texts.*got a dict"):
        make(scorer).predict(dict.fromkeys(X, 1))


# -- scikit-learn: binary decision_function, roc_auc, parameter errors (issue 20) ------------------------------


def test_binary_decision_function_is_one_column_of_log_odds_so_roc_auc_scoring_works(scorer):
    from sklearn.model_selection import cross_val_score

    clf = make(scorer, calibration="contextual")
    decision = clf.decision_function(X)
    assert decision.shape == (len(X),)
    logp = clf.predict_log_proba(X)  # log-odds of classes_[1] against classes_[0]: agrees with predict
    np.testing.assert_allclose(decision, logp[:, 1] - logp[:, 0], atol=1e-9)
    assert (clf.classes_[(decision > 0).astype(int)] == clf.predict(X)).all()
    assert clf.label_scores(X).shape == (len(X), 2)  # the raw label scores keep one column per label
    auc = cross_val_score(make(scorer), X, Y, cv=2, scoring="roc_auc")
    assert auc.shape == (2,) and np.isfinite(auc).all()
    grid = GridSearchCV(make(scorer), {"aggregation": ["logsumexp", "max"]}, cv=2, scoring="roc_auc").fit(X, Y)
    assert np.isfinite(grid.cv_results_["mean_test_score"]).all()


def test_multiclass_decision_function_keeps_one_column_per_class(scorer):
    labels = {"negative": ["bad"], "positive": ["good"], "neutral": ["fine"]}
    clf = make(scorer, labels=labels)
    decision = clf.decision_function(X)
    assert decision.shape == (len(X), 3)
    assert (clf.classes_[decision.argmax(1)] == clf.predict(X)).all()


@pytest.mark.parametrize(
    ("params", "error", "message"),
    [
        ({"heads": -1}, TypeError, r"The 'heads' parameter of Verbalizer must be a Head, a list of Heads or None\. "),
        ({"heads": [1]}, TypeError, r"The 'heads' parameter of Verbalizer must be .* Got \[1\] instead\."),
        ({"fine_tuning": 3}, TypeError, r"The 'fine_tuning' parameter of Verbalizer must be a FineTuneConfig or None"),
        ({"calibration": 5}, ValueError, r"The 'calibration' parameter of Verbalizer must be one of .* Got 5 instead"),
    ],
)
def test_set_params_stores_a_bad_value_and_fit_explains_it(scorer, params, error, message):
    """scikit-learn's rule: set_params stores (its own check passes -1, [], 'helloworld' ... to every parameter);
    fit refuses, in the one message shape, naming the parameter."""
    clf = make(scorer).set_params(**params)
    assert clf.set_params(n_demos=1) is clf  # a bad value already there does not break set_params or get_params
    assert clf.get_params(deep=True)["n_demos"] == 1
    with pytest.raises(error, match=message):
        clf.fit(X, Y)
    with pytest.raises(error, match=message):
        make(scorer, **params).predict(X)


def test_nested_set_params_on_a_bad_value_names_the_parameter(scorer):
    with pytest.raises(TypeError, match=r"The 'heads' parameter of Verbalizer must be a Head, .* Got -1 instead"):
        make(scorer, heads=-1).set_params(heads__a__C=2.0)
    with pytest.raises(TypeError, match=r"The 'fine_tuning' parameter of Verbalizer must be a FineTuneConfig or None"):
        make(scorer, fine_tuning=3).set_params(fine_tuning__epochs=2)


def test_decision_function_with_heads_gives_their_logits_in_scikit_learn_shapes(scorer):
    from verbalize import Head

    clf = make(scorer, heads=Head("sentiment")).fit(X, Y)
    decision = clf.decision_function(X)
    assert decision.shape == (len(X),)
    assert (clf.classes_[(decision > 0).astype(int)] == clf.predict(X)).all()
    tags = [["positive"], ["negative"], ["positive", "negative"], ["negative"]] * 2
    multi = make(scorer, heads=Head("tags", multi_label=True)).fit(X, tags)
    decision = multi.decision_function(X)
    assert decision.shape == (len(X), 2)  # one log-odds per label, never collapsed
    np.testing.assert_allclose(1 / (1 + np.exp(-decision)), multi.predict_proba(X), atol=1e-12)
