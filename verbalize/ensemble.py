"""Template ensembles: one classifier over several templates (PET-style averaging of calibrated log-probs).

Schick & Schuetze (2021) average the predictions of several pattern-verbalizer pairs; here each
template is an ordinary :class:`Verbalizer` (one forward pass per template, the model's weights
shared through the scorer cache) and the ensemble's log-probabilities are the weighted mean of the
members' calibrated log-probabilities, renormalized.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from verbalize.calibration.calibrators import log_softmax
from verbalize.engine.scoring import Scorer
from verbalize.errors import ParameterError, number_problem
from verbalize.estimator import Verbalizer, binary_as_one_column, text_input_tags
from verbalize.prompting.prompts import resolve_template
from verbalize.prompting.template import Template
from verbalize.rows import check_rows


class TemplateEnsemble(ClassifierMixin, BaseEstimator):
    """One classifier over several templates: the mean of each template's calibrated log-probabilities
    (PET-style), renormalized. One forward pass per template; the model's weights are shared.

    Parameters
    ----------
    templates : list of (str, Path or Template)
        Templates with the same label names (in any order) and the same fields (in the same order): they
        read the same rows (as for :class:`Verbalizer`: a str, or a dict {field: text} for several fields).
        The first one fixes ``classes_``. The only parameter that may be given by position.
    weights : list of float, optional
        One weight per template (default: equal).
    model, calibration, n_demos, batch_size, device, dtype, random_state, progress
        As for :class:`Verbalizer`, applied to every template.

    Examples
    --------
    >>> ens = TemplateEnsemble(["sst2", "sst2_suggested.toml"])  # doctest: +SKIP
    >>> ens.fit().predict(["a charming film"])                                           # doctest: +SKIP
    array(['positive'], dtype=object)
    """

    def __init__(
        self,
        templates: Sequence[str | Path | Template] = (),
        *,
        weights: Sequence[float] | None = None,
        model: str | Path | Scorer | None = None,
        calibration: str | None = "contextual",
        n_demos: int = 0,
        batch_size: int = 64,
        device: str = "auto",
        dtype: str = "auto",
        random_state: int | None = None,
        progress: bool = False,
    ):
        self.templates = templates
        self.weights = weights
        self.model = model
        self.calibration = calibration
        self.n_demos = n_demos
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.random_state = random_state
        self.progress = progress

    def __sklearn_tags__(self) -> Any:
        return text_input_tags(super().__sklearn_tags__(), requires_fit=False)

    def _weights(self, n: int) -> np.ndarray:
        """The templates' weights (all 1 by default), checked: ``n`` non-negative numbers, not all 0."""
        if self.weights is None:
            return np.ones(n)
        given = list(self.weights) if isinstance(self.weights, list | tuple | np.ndarray) else None
        numbers = given is not None and all(number_problem(w, "weights", "TemplateEnsemble", 0) is None for w in given)
        weights = np.asarray(given, dtype=np.float64) if numbers else np.zeros(0)
        if weights.shape != (n,) or weights.sum() <= 0:
            raise ParameterError(
                f"The 'weights' parameter of TemplateEnsemble must be {n} non-negative numbers (one per template), "
                f"not all 0. Got {self.weights!r} instead."
            )
        return weights

    def fit(self, X: Any = None, y: Any = None) -> TemplateEnsemble:
        """Fit every template's classifier on the same examples (demonstrations, calibrator); returns self."""
        templates = list(self.templates)
        if len(templates) < 1:
            raise ParameterError(
                "The 'templates' parameter of TemplateEnsemble must be a list of one or more template files or "
                f"Templates. Got {self.templates!r} instead."
            )
        weights = self._weights(len(templates))
        resolved = [resolve_template(t, None) for t in templates]
        self.classes_ = np.array(list(resolved[0].labels), dtype=object)
        self.columns_ = []
        for t in resolved:
            if sorted(t.labels) != sorted(self.classes_):
                raise ValueError(
                    f"template {t.source} has labels {list(t.labels)}, the first template {list(self.classes_)}: "
                    "every template of an ensemble needs the same label names"
                )
            if t.fields != resolved[0].fields:
                raise ValueError(
                    f"TemplateEnsemble: template {t.source} has the fields {list(t.fields)}, the first template "
                    f"{list(resolved[0].fields)}: every template of an ensemble reads the same rows, so they need "
                    "the same fields in the same order; put templates of other fields in another ensemble"
                )
            self.columns_.append([list(t.labels).index(c) for c in self.classes_])
        self.fields_ = resolved[0].fields
        params = dict(model=self.model, calibration=self.calibration, n_demos=self.n_demos,
                      batch_size=self.batch_size, device=self.device, dtype=self.dtype,
                      random_state=self.random_state, progress=self.progress)  # fmt: skip
        self.members_ = [Verbalizer(template=t, **params).fit(X, y) for t in resolved]  # type: ignore[arg-type]
        self.weights_ = weights / weights.sum()
        return self

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Weighted mean of the templates' calibrated log-probabilities, renormalized; (n, n_classes)."""
        if not hasattr(self, "members_"):
            self.fit()
        texts = check_rows(X, self.fields_)
        total = np.zeros((len(texts), len(self.classes_)))
        for w, member, cols in zip(self.weights_, self.members_, self.columns_, strict=True):
            total += w * member.predict_log_proba(texts)[:, cols]
        return log_softmax(total) if len(texts) else total

    def decision_function(self, X: Any) -> np.ndarray:
        """Scores that agree with :meth:`predict`: for two classes the log-odds of ``classes_[1]`` against
        ``classes_[0]``, shape (n,) (``scoring="roc_auc"`` works); otherwise :meth:`predict_log_proba`,
        shape (n, n_classes)."""
        return binary_as_one_column(self.predict_log_proba(X))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities (n, n_classes), columns following ``classes_``."""
        return np.exp(self.predict_log_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable label of each text."""
        logp = self.predict_log_proba(X)
        return self.classes_[logp.argmax(1)] if len(logp) else np.array([], dtype=object)
