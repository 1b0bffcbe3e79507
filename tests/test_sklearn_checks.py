"""scikit-learn's own estimator checks, run for real on Verbalizer, KNNPrompting and TemplateEnsemble.

The three classify texts (their tags say so), and for such estimators scikit-learn's ``check_estimator`` runs
nothing: its checks feed numeric 2-D arrays. So each estimator is wrapped in a thin adapter, a subclass with the
same parameters (``get_params``, ``set_params``, ``clone`` and repr are the estimator's own, checked as they are):

- numbers to texts: each row of ``X`` becomes a deterministic text, its values written with one decimal
  ("0.3 -1.2 2.0"); ``X`` is checked as scikit-learn checks numeric input (NaN, inf, shape, sparse, feature
  count, feature names), which is the adapter's part, not the estimator's;
- labels to names: ``fit`` gives the estimator a template whose labels are ``c0``, ``c1``, ... (one label word
  each), one per class of ``y`` in sorted order; predictions map back to ``y``'s classes, and probabilities and
  decision scores pass through unchanged (their columns follow the same order);
- everything else (fitting, scoring, calibration, votes, pickling, refitting) is the estimator's.

The tiny random GPT-2 of conftest.py cannot learn blobs of numbers from their decimal spelling, so the adapter
says ``poor_score`` (scikit-learn's own tag for this), which drops only the accuracy bar of
``check_classifiers_train``; every other assertion of that check runs. Each check that cannot apply to a
classifier of texts is listed in :data:`NOT_APPLICABLE` with the reason, and skipped with it; all others run.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
from sklearn.exceptions import SkipTestWarning
from sklearn.utils.estimator_checks import estimator_checks_generator
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import validate_data

from verbalize import KNNPrompting, Scorer, Template, TemplateEnsemble, Verbalizer

PROMPT = "Numbers: {text}\nClass:"
WORDS = ("good", "bad", "sports", "world", "business", "technology")  # one label word per class


def as_texts(X: np.ndarray) -> list[str]:
    """Each row of a numeric 2-D array as a text: its values with one decimal, separated by spaces."""
    return [" ".join(f"{v:.1f}" for v in row) for row in np.asarray(X, dtype=np.float64)]


class NumbersAsTexts:
    """The adapter (put before the estimator's class): numeric ``X`` to texts, ``y``'s classes to label names."""

    base: type

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()  # type: ignore[misc]
        tags.input_tags.two_d_array, tags.input_tags.string = True, False
        tags.classifier_tags.poor_score = True
        return tags

    def _estimator(self, n_classes: int) -> Any:
        """The estimator itself, with this adapter's parameters and a template of ``n_classes`` labels."""
        labels = {f"c{i}": [WORDS[i]] for i in range(n_classes)}
        params = self.get_params(deep=False)  # type: ignore[attr-defined]
        if "templates" in params:
            params["templates"] = [Template(prompt=p, labels=labels) for p in params["templates"]]
        else:
            params["labels"] = labels
        return self.base(**params)

    def fit(self, X: Any, y: Any = None) -> Any:
        if y is None:  # the estimator says whether it needs y
            X = validate_data(self, X)
            classes = np.array([0, 1])
        else:
            X, y = validate_data(self, X, y)
            check_classification_targets(y)
            classes = unique_labels(y)
        self.classes_ = classes
        self.estimator_ = self._estimator(len(classes))
        names = None if y is None else [f"c{i}" for i in np.searchsorted(classes, y)]
        self.estimator_.fit(as_texts(X), names)
        return self

    def _call(self, method: str, X: Any) -> Any:
        if not hasattr(self, "estimator_"):  # not fitted: the estimator answers (KNNPrompting: NotFittedError)
            return getattr(self._estimator(2), method)(as_texts(validate_data(self, X, reset=True)))
        return getattr(self.estimator_, method)(as_texts(validate_data(self, X, reset=False)))

    def predict(self, X: Any) -> np.ndarray:
        names = self._call("predict", X)
        return self.classes_[[int(n[1:]) for n in names]] if len(names) else self.classes_[:0]

    def predict_proba(self, X: Any) -> np.ndarray:
        return self._call("predict_proba", X)


class WithLogProba(NumbersAsTexts):
    def predict_log_proba(self, X: Any) -> np.ndarray:
        return self._call("predict_log_proba", X)

    def decision_function(self, X: Any) -> np.ndarray:
        return self._call("decision_function", X)


class NumericVerbalizer(WithLogProba, Verbalizer):
    base = Verbalizer


class NumericEnsemble(WithLogProba, TemplateEnsemble):
    base = TemplateEnsemble


class NumericKNN(NumbersAsTexts, KNNPrompting):
    base = KNNPrompting

    def transform(self, X: Any) -> np.ndarray:
        return self._call("transform", X)


# check name -> why it cannot apply to a classifier of texts (skipped with this reason, per estimator)
ONE_CLASS = (
    "fits one row, so y has one class; a text classifier's classes are its template's labels, two or more, "
    "not the classes found in y, so the adapter's one-label template is refused (TemplateError: needs at "
    "least two labels); fitting one labeled text under a two-label template is an ordinary fit"
)
ARRAY_API = (
    "array API namespaces (an input array of torch, CuPy, ... and outputs in that namespace) are a feature of "
    "numeric arrays; the estimators read Python strings, and scikit-learn skips this check anyway unless "
    "SCIPY_ARRAY_API=1 is set before scipy is imported"
)
NOT_APPLICABLE: dict[str, dict[str, str]] = {
    name: {"check_fit2d_1sample": ONE_CLASS, "check_array_api_input": ARRAY_API}
    for name in ("NumericVerbalizer", "NumericKNN", "NumericEnsemble")
}

ESTIMATORS = [
    NumericVerbalizer(template=PROMPT, calibration="contextual", batch_size=32),
    NumericKNN(template=PROMPT, k=3, batch_size=32),
    NumericEnsemble([PROMPT, "{text} =>"], calibration="contextual", batch_size=32),
]
CASES = [
    case
    for est in ESTIMATORS
    for case in estimator_checks_generator(est, expected_failed_checks=NOT_APPLICABLE[type(est).__name__], mark="skip")
]


def check_id(case: Any) -> str:
    est, check = case
    func = getattr(check, "__wrapped__", check)
    name = func.func.__name__ if hasattr(func, "func") else func.__name__
    extra = ",".join(f"{k}={v}" for k, v in getattr(func, "keywords", {}).items())
    return f"{type(est).__name__}-{name}" + (f"({extra})" if extra else "")


def test_the_adapter_runs_the_checks_that_the_text_tags_skip() -> None:
    """Alone, the estimators' text tags make scikit-learn yield only the clone check; through the adapter,
    every check runs but the ones listed, each listed name being a check of that estimator."""
    for est in (Verbalizer(), KNNPrompting(), TemplateEnsemble()):
        with pytest.warns(SkipTestWarning, match="Can't test estimator"):
            assert len(list(estimator_checks_generator(est))) == 1
    for est in ESTIMATORS:
        names = {check_id((est, check)).split("-", 1)[1].split("(")[0] for e, check in CASES if e is est}
        assert set(NOT_APPLICABLE[type(est).__name__]) <= names
        assert len(names) >= 45, sorted(names)


def test_roc_auc_scoring_and_decision_function_of_a_binary_ensemble(gpt2: Any) -> None:
    from sklearn.model_selection import GridSearchCV, cross_val_score

    labels = {"negative": ["bad"], "positive": ["good"]}
    X = ["good film", "bad film", "a great review", "terrible and bad", "good good", "bad bad", "fine", "awful"]
    y = ["positive", "negative"] * 4
    templates = [Template(prompt=PROMPT, labels=labels), Template(prompt="{text} =>", labels=labels)]
    ens = TemplateEnsemble(templates, model=gpt2.scorer(), calibration=None)
    decision, logp = ens.decision_function(X), ens.predict_log_proba(X)
    assert decision.shape == (len(X),)
    np.testing.assert_allclose(decision, logp[:, 1] - logp[:, 0])
    assert (ens.classes_[(decision > 0).astype(int)] == ens.predict(X)).all()
    assert np.isfinite(cross_val_score(ens, X, y, cv=2, scoring="roc_auc")).all()
    grid = GridSearchCV(ens, {"weights": [[1, 1], [1, 3]]}, cv=2, scoring="roc_auc").fit(X, y)
    assert np.isfinite(grid.cv_results_["mean_test_score"]).all()


@pytest.fixture(scope="module")
def tiny64(gpt2: Any) -> Scorer:
    """The tiny GPT-2 in float64: the checks' tolerances (1e-7 between a batch and its parts, 1e-9 between two
    fits) then test the batching and the fitting, not float32 rounding (about 1e-6 where the padding differs)."""
    return Scorer(copy.deepcopy(gpt2.model).double(), gpt2.tokenizer, batch_size=32)


@pytest.mark.filterwarnings("ignore:.*may be collapsed onto one label:UserWarning")  # a random model, numbers
@pytest.mark.parametrize(("estimator", "check"), CASES, ids=[check_id(c) for c in CASES])
def test_scikit_learn_check(estimator: Any, check: Any, gpt2: Any, tiny64: Scorer) -> None:
    check(estimator.set_params(model=tiny64))
