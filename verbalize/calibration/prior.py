"""``calibration="prior"``: correct toward the label prior estimated from the texts being classified.

Every other correction (contextual, domain, batch) divides out the model's bias so that the labels
come out uniformly likely; on a skewed task that pushes texts into the rare labels. This calibrator
starts from such a correction (the *base*; by default ``"domain+batch"``: two log-bias estimates, the
mean probability of random in-domain word bags and that of ``fit``'s labeled texts with each label
weighing the same, combined with weights inversely proportional to their variances, each measured
from its own rows; with independent errors the combination varies less than either, and a handful of
labeled texts that disagree with each other weigh less than 20 word bags that agree), scales it by a
temperature fitted on those texts (bias-corrected temperature scaling, as Alexandari et al. 2020
advise before prior estimation), then estimates the label distribution ``pi`` of the texts it is
applied on and returns ``p'(y|x) ~ q(y|x) pi(y)`` (the label-shift correction of Saerens, Latinne and
Decaestecker, Neural Computation 2002; the view Generative Calibration, Jiang et al. 2023, and batch
calibration, Zhou et al. 2024, take of in-context learning, with the prior estimated rather than
assumed uniform).

Three estimates of ``pi`` (``estimator``), from base posteriors ``q`` that assume a uniform prior, with
``a`` pseudo-texts per label (``SMOOTHING``) so that a small sample stays near uniform:

- ``"adjusted"`` (default): probabilistic *adjusted* classify-and-count (Bella et al., ICDM 2010,
  :func:`adjusted_prior`). ``fit``'s labeled texts give the mean posterior of each label's texts (a
  confusion matrix ``M``); the texts' mean posterior is ``M.T @ pi`` for their prior ``pi``, solved on
  the simplex with a ridge toward uniform of 1 / (labeled texts per label). It undoes the leanings of
  the classifier itself: the one-step mean reads a label the base over-predicts as frequent, and the
  shift then over-predicts it further (measured on TREC zero-shot at zipf-1, 500 texts: the base
  predicted "number" for 48% of texts that were 41% numbers, the mean estimated 43%, and the shift
  lost 7 points; ``eval/skewed_calibration.py``). Without labeled texts of every label: ``"mean"``.
- ``"mean"``: the first EM step, ``pi = (sum_x q + a) / (n + C a)`` (probabilistic
  classify-and-count). When ``q`` is calibrated it lies between uniform and the true prior.
- ``"em"``: Saerens et al.'s EM, ``p' ~ q pi``, ``pi <- (sum_x p' + a) / (n + C a)`` from uniform until
  ``pi`` moves less than ``TOL``: the maximum-likelihood prior *if* ``q`` is calibrated. Its later
  steps amplify any residual bias of the base (measured with 4 labeled examples per class: on SST-2
  texts that were 46/54, EM estimated 33/67 and lost 8.5 points to the base there; see the README).

**Only a clear skew moves the scores** (``min_skew``, default 0.2): when the one-step estimate's total
variation distance from uniform is below it (it is shrunk toward uniform, so it errs toward no move),
or the call has fewer than ``MIN_TEXTS`` (20) texts, the call keeps the base correction alone. With a few
labeled examples the base leaves a residual bias of its own, and the estimate echoes it: on test sets
that were balanced, the ungated estimate lost up to 4 points to the base (TREC, AG News); the
estimates measured there stayed below 0.2 from uniform, those of strongly skewed sets mostly above.
``report_["skew"]`` and ``report_["shifted"]`` say what the last call did.

**Batch-transductive.** The prior is estimated at ``transform`` time from the texts of that call, so
a text's probabilities depend on the other texts of the call (as unfitted batch calibration does):
classify the texts of one task together. Guards, each a ``UserWarning`` naming the cause, after which
the call gets the base correction alone (a uniform prior): fewer texts than labels; an estimate that
gives ``COLLAPSE_SHARE`` (90%) or more to one label; EM that does not settle within ``MAX_ITER``.
"""

from __future__ import annotations

import copy
import threading
import warnings
from typing import Any, ClassVar

import numpy as np
from scipy.optimize import nnls

from verbalize.calibration import calibrators as _cal
from verbalize.calibration.calibrators import (
    COLLAPSE_SHARE,
    CONTENT_FREE,
    Calibrator,
    ScoreTexts,
    domain_texts,
    fit_temperature,
    log_softmax,
)
from verbalize.errors import check_choice

BASES = ("domain+batch", "batch", "contextual", "domain")
ESTIMATORS = ("adjusted", "mean", "em")
SMOOTHING = 1.0  # pseudo-texts per label added to EM's counts
TOL = 1e-6  # EM stops when no label's prior moves more than this
MAX_ITER = 2000
MIN_SKEW = 0.2
"""Default ``min_skew``: the estimate's total variation from uniform below which the call keeps the base alone."""
MIN_TEXTS = 20
"""Fewest texts in a call whose estimate may move the scores (fewer: the base alone; a handful of texts in
one request would otherwise pull each other toward their own majority)."""
_REPORT_LOCK = threading.Lock()  # calls from several threads each write the report whole


def estimate_prior(
    log_proba: np.ndarray, smoothing: float = SMOOTHING, tol: float = TOL, max_iter: int = MAX_ITER
) -> tuple[np.ndarray, int, bool]:
    """EM estimate of the label prior of texts whose posteriors ``log_proba`` assume a uniform prior.

    Returns ``(prior, iterations, converged)``; ``prior`` has shape (n_classes,) and sums to one.

    Examples
    --------
    >>> q = np.log([[0.999, 0.001]] * 8 + [[0.001, 0.999]] * 2)  # confident: the prior is the counts' shares
    >>> estimate_prior(q, smoothing=0.0)[0].round(2)
    array([0.8, 0.2])
    """
    q = log_softmax(log_proba)
    n, c = q.shape
    prior = np.full(c, 1.0 / c)
    for it in range(1, max_iter + 1):
        post = np.exp(log_softmax(q + np.log(prior)))  # (n, C)
        new = (post.sum(axis=0) + smoothing) / (n + c * smoothing)
        if np.abs(new - prior).max() < tol:
            return new, it, True
        prior = new
    return prior, max_iter, False


def adjusted_prior(confusion: np.ndarray, mean: np.ndarray, ridge: float) -> np.ndarray:
    """The prior ``pi`` whose expected mean posterior ``confusion.T @ pi`` is nearest the observed ``mean``.

    Probabilistic adjusted classify-and-count (Bella et al., ICDM 2010): ``confusion[k]`` is the mean
    posterior of labeled texts of label k, so texts with prior ``pi`` have mean posterior
    ``sum_k pi_k confusion[k]``; solved by non-negative least squares on the simplex, with a ridge
    ``ridge * |pi - uniform|^2`` that keeps a confusion estimated from a few labeled texts from
    amplifying their noise. Unlike the one-step mean, it undoes the classifier's own leanings (a label
    the base over-predicts is not read as frequent).

    Examples
    --------
    >>> confusion = np.array([[0.6, 0.4], [0.2, 0.8]])  # label 0's texts lean toward label 1
    >>> mean = 0.5 * confusion[0] + 0.5 * confusion[1]  # a balanced sample reads as 40/60
    >>> adjusted_prior(confusion, mean, ridge=0.0).round(3)
    array([0.5, 0.5])
    """
    c = confusion.shape[0]
    uniform = np.full(c, 1.0 / c)
    a = np.vstack([confusion.T, _SUM_WEIGHT * np.ones((1, c)), np.sqrt(ridge) * np.eye(c)])
    b = np.concatenate([mean, [_SUM_WEIGHT], np.sqrt(ridge) * uniform])
    prior = nnls(a, b)[0]
    total = prior.sum()
    return prior / total if total > 0 else uniform


WEIGHT_BOUNDS = (0.25, 0.75)
"""Where the base's inverse-variance weights are kept (two estimates): the variances come from as few as three
texts per label, so neither estimate is dropped on their word."""
_SUM_WEIGHT = 100.0  # the row of adjusted_prior's least squares that holds its sum at one


def _log_mean_variance(groups: Any) -> np.ndarray:
    """Variance of the log of a (label-balanced) mean probability, per label (delta method), from its groups.

    ``groups``: arrays (n_k, C) of probabilities, one per group; the estimate is the mean of the groups'
    means. Groups of one row give no variance (inf: the estimate then weighs nothing beside another).
    """
    means = np.stack([g.mean(axis=0) for g in groups]).mean(axis=0)
    if any(len(g) < 2 for g in groups):
        return np.full(means.shape, np.inf)
    var = sum(g.var(axis=0, ddof=1) / len(g) for g in groups) / len(groups) ** 2
    return var / np.maximum(means, 1e-12) ** 2


def _inverse_variance_weights(variances: list[np.ndarray]) -> list[float]:
    """One weight per estimate, proportional to 1 / its total variance over labels; equal where that says nothing."""
    totals = np.array([float(v.sum()) for v in variances])
    if len(totals) == 1 or not np.isfinite(totals).all() or (totals <= 0).any():
        return [1.0 / len(totals)] * len(totals)
    inv = 1.0 / totals
    w = np.clip(inv / inv.sum(), WEIGHT_BOUNDS[0], WEIGHT_BOUNDS[1])
    return [float(v) for v in w / w.sum()]


class PriorCalibrator(Calibrator):
    """A base correction, then an estimate of the label prior of the texts being classified, and a shift toward it.

    Batch-transductive: the prior is estimated from the texts of each ``transform`` call, so a text's
    probabilities depend on the other texts of the call. See :mod:`verbalize.calibration.prior`.

    Parameters
    ----------
    estimator : {"adjusted", "mean", "em"}, default "adjusted"
        How the prior is estimated (see the module's notes): the mean base posterior adjusted by the
        labeled texts' confusion (``"mean"`` without labels of every label), the mean alone, or EM.
    base : {"domain+batch", "batch", "contextual", "domain"}, default "domain+batch"
        The correction toward uniform that the estimate starts from. ``"batch"``: the mean probability
        of ``fit``'s texts, each label's texts weighted equally when they are labeled (the model's bias
        on a balanced sample); fitted without labels it would absorb the skew of those texts, so it then
        uses ``"domain"`` (random in-domain words, which carry no label skew). ``"domain+batch"``: the
        domain and batch log-biases weighted by inverse variance (``"domain"`` alone without labels).
        Unfitted: ``"contextual"``.
    min_skew : float in [0, 1), default 0.2
        The estimate moves the scores only when its total variation distance from uniform is at least
        this (and the call has at least :data:`MIN_TEXTS` texts); otherwise the call gets the base
        correction alone. 0: move whenever the call has enough texts.

    Attributes
    ----------
    log_bias_ : ndarray of shape (n_classes,)
        The base's log mean probability, divided out of every score.
    temperature_ : float
        Fitted on ``fit``'s labeled texts after the base correction (1.0 without labels).
    confusion_ : ndarray of shape (n_classes, n_classes) or None
        Row k: the mean calibrated posterior of ``fit``'s labeled texts of label k (``"adjusted"``).
    report_ : dict
        ``base`` (as fitted), ``temperature``, ``base_weights`` (``"domain+batch"``), and from the last
        ``transform`` call: ``n_texts``, ``estimated_prior`` (columns follow ``classes_``), ``estimate``
        (which estimator gave it), ``skew`` (the one-step estimate's total variation from uniform),
        ``shifted`` (whether it moved the scores), ``iterations``, ``fallback`` (None, or why the call
        got the base correction alone).
    """

    name = "prior"
    fitted_on = "the base correction's inputs and fit's labeled texts; the prior: the texts being classified"
    unlabeled_texts_help = True
    uses_labels: ClassVar[bool] = True

    def __init__(self, base: str = "domain+batch", estimator: str = "adjusted", min_skew: float = MIN_SKEW) -> None:
        check_choice(base, list(BASES), "base", "PriorCalibrator")
        check_choice(estimator, list(ESTIMATORS), "estimator", "PriorCalibrator")
        if isinstance(min_skew, bool) or not isinstance(min_skew, int | float) or not 0 <= min_skew < 1:
            raise ValueError(
                f"PriorCalibrator: min_skew must be a number in [0, 1) (a total variation distance), got {min_skew!r}"
            )
        self.base, self.estimator, self.min_skew = base, estimator, float(min_skew)
        self._labeled = False

    def __repr__(self) -> str:
        return f"PriorCalibrator(base={self.base!r}, estimator={self.estimator!r}, min_skew={self.min_skew!r})"

    def _base_used(self) -> str:
        if self._labeled or self.base not in ("batch", "domain+batch"):
            return self.base
        return "domain"  # fitted without labels, a batch base would absorb the skew of fit's texts

    def select(self, fold_scorer: Any, texts: list[str], y: np.ndarray | None, random_state: int | None) -> Calibrator:
        self._labeled = y is not None and len(np.unique(y)) >= 2
        return self

    def fit_inputs(self, texts: list[str], random_state: int | None) -> list[str] | None:
        """The base's inputs (none for "batch": the texts themselves), then ``fit``'s texts when labeled."""
        base = self._base_used()
        if not texts:
            return list(CONTENT_FREE) if base == "contextual" else None
        domain = domain_texts(texts, random_state) if base in ("domain", "domain+batch") else []
        inputs = list(CONTENT_FREE) if base == "contextual" else domain
        return inputs + (list(texts) if self._labeled else [])

    def fit(self, scores: np.ndarray, y: Any = None) -> PriorCalibrator:
        """Fit the base and the temperature.

        Without ``y``, every row of ``scores`` is a base input. With ``y`` (class indices), the last
        ``len(y)`` rows are labeled texts (the temperature is fitted on them) and the rows before them the
        base's inputs; when there are none, the base is the labeled texts' mean probability, each label's
        texts weighing the same.
        """
        s = np.asarray(scores, dtype=np.float64)
        y_arr = np.zeros(0, dtype=int) if y is None else np.asarray(y, dtype=int)
        if len(y_arr) > len(s):
            raise ValueError(
                f"PriorCalibrator.fit: {len(y_arr)} labels for {len(s)} rows of scores; expected at most one a row"
            )
        texts = s[len(s) - len(y_arr) :]
        base = s[: len(s) - len(y_arr)]
        logs, variances = [], []
        if len(base):
            p = np.exp(log_softmax(base))
            logs.append(np.log(p.mean(axis=0)))
            variances.append(_log_mean_variance([p]))
        if len(y_arr) and (len(base) == 0 or self._base_used() == "domain+batch"):
            p = np.exp(log_softmax(texts))  # the labeled texts' mean probability, each label's texts weighing the same
            per_label = [p[y_arr == k] for k in np.unique(y_arr)]
            logs.append(np.log(np.stack([g.mean(axis=0) for g in per_label]).mean(axis=0)))
            variances.append(_log_mean_variance(per_label))
        if not logs:
            raise ValueError("PriorCalibrator.fit: no rows of scores to fit the base correction on")
        weights = _inverse_variance_weights(variances)
        self.log_bias_ = np.sum([w * log for w, log in zip(weights, logs, strict=True)], axis=0)
        two_labels = len(np.unique(y_arr)) >= 2
        self.temperature_ = fit_temperature(self._corrected(texts), y_arr) if two_labels else 1.0
        self.confusion_: np.ndarray | None = None
        if self.estimator == "adjusted" and len(np.unique(y_arr)) == s.shape[1]:
            q = np.exp(log_softmax(self._corrected(texts) / self.temperature_))
            self.confusion_ = np.stack([q[y_arr == k].mean(axis=0) for k in range(s.shape[1])])  # (C, C): E[q | k]
            self.ridge_ = 1.0 / float(np.bincount(y_arr).mean())
        self.report_: dict[str, Any] = {"base": self._base_used(), "temperature": self.temperature_}
        if len(weights) == 2:
            self.report_["base_weights"] = {"domain": round(weights[0], 4), "batch": round(weights[1], 4)}
        return self

    def _corrected(self, scores: np.ndarray) -> np.ndarray:
        return log_softmax(log_softmax(scores) - self.log_bias_)

    def transform(self, scores: np.ndarray) -> np.ndarray:
        q = log_softmax(self._corrected(scores) / getattr(self, "temperature_", 1.0))
        n, c = q.shape
        if not self._can_clear(n, c):  # no estimate from so few texts could move min_skew from uniform
            self._record(n, None, 0, None, None, False)
            return q
        prior, iterations, fallback = None, 0, None
        if n < c:
            fallback = f"{n} texts, fewer than the {c} labels: too few to estimate a label prior from"
        else:
            prior, iterations, converged = estimate_prior(q, max_iter=MAX_ITER if self.estimator == "em" else 1)
            converged = converged or self.estimator != "em"
            if not converged:
                fallback = f"EM did not settle in {iterations} iterations (last prior {prior.round(3).tolist()})"
            else:
                fallback = _collapse(prior, "estimated")
        skew = None if prior is None else float(0.5 * np.abs(prior - 1.0 / c).sum())
        adjusted = self._adjusted(prior, n) if prior is not None and fallback is None else None
        if adjusted is not None:
            fallback = _collapse(adjusted, "adjusted")
            prior = adjusted  # the gate reads the one-step estimate's skew; the shift and the report, this
        shifted = fallback is None and skew is not None and skew >= self.min_skew and n >= MIN_TEXTS
        used = "adjusted" if adjusted is not None else ("em" if self.estimator == "em" else "mean")
        self._record(n, prior, iterations, fallback, skew, shifted, used if prior is not None else None)
        if fallback is not None:
            warnings.warn(
                f"calibration='prior': {fallback}; this call gets the {self._base_used()} correction toward a "
                "uniform prior instead. Classify the texts of one task together, or use calibration='batch'",
                UserWarning,
                stacklevel=3,
            )
            return q
        if not shifted:  # near uniform: within what the base's leftover bias alone would give, keep the base
            return q
        assert prior is not None
        return log_softmax(q + np.log(prior))

    def _adjusted(self, mean: np.ndarray, n: int) -> np.ndarray | None:
        """The adjusted estimate of the prior of ``n`` texts whose smoothed mean posterior (the one-step
        estimate) is ``mean``, or None (no labeled confusion)."""
        confusion = getattr(self, "confusion_", None)
        if self.estimator != "adjusted" or confusion is None or confusion.shape[0] != len(mean):
            return None
        c = len(mean)
        prior = adjusted_prior(confusion, mean, self.ridge_)
        return (prior * n + SMOOTHING) / (n + c * SMOOTHING)

    def _can_clear(self, n: int, c: int) -> bool:
        """Whether an estimate from ``n`` texts could reach ``min_skew``: all ``n`` on one label, after smoothing.

        A single text (any number of labels) never can at the default 0.2, so ``predict([text])`` gets the
        base correction quietly instead of a warning about too few texts.
        """
        top = (n + SMOOTHING) / (n + c * SMOOTHING)
        return top - 1.0 / c >= self.min_skew

    def _record(
        self,
        n: int,
        prior: np.ndarray | None,
        iterations: int,
        fallback: str | None,
        skew: float | None,
        shifted: bool,
        estimate: str | None = None,
    ) -> None:
        last = {
            "n_texts": n,
            "estimated_prior": None if prior is None else [round(float(v), 4) for v in prior],
            "estimate": estimate,
            "skew": None if skew is None else round(skew, 4),
            "shifted": shifted,
            "iterations": iterations,
            "fallback": fallback,
        }
        with _REPORT_LOCK:
            if not hasattr(self, "report_"):
                self.report_ = {"base": self._base_used(), "temperature": getattr(self, "temperature_", 1.0)}
            self.report_.update(last)

    def transform_unfitted(
        self, scores: np.ndarray, texts: list[str], score_texts: ScoreTexts, random_state: int | None
    ) -> np.ndarray:
        cal = PriorCalibrator(base="contextual", estimator=self.estimator, min_skew=self.min_skew)
        cal.fit(score_texts(list(CONTENT_FREE)))
        out = cal.transform(scores)
        self.report_ = cal.report_
        return out

    def is_fitted(self) -> bool:
        return hasattr(self, "log_bias_")

    def report(self) -> dict[str, Any] | None:
        return getattr(self, "report_", None)

    def last_estimate(self) -> list[float] | None:
        """The label prior estimated by the last ``transform`` call (None before one, or after a fallback)."""
        report = getattr(self, "report_", None) or {}
        return report.get("estimated_prior")

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "base": self.base,
            "estimator": self.estimator,
            "min_skew": self.min_skew,
            "labeled": self._labeled,
        }
        if self.is_fitted():
            state |= {"log_bias_": self.log_bias_.tolist(), "temperature_": float(self.temperature_)}
            confusion = getattr(self, "confusion_", None)
            if confusion is not None:
                state |= {"confusion_": confusion.tolist(), "ridge_": float(self.ridge_)}
            state["report_"] = copy.deepcopy(getattr(self, "report_", {}))
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> PriorCalibrator:
        """A fitted calibrator from :meth:`get_state`'s dict.

        Raises
        ------
        ValueError
            When the bias is not a list of finite numbers, the temperature not a positive finite number,
            or a saved confusion matrix not C x C non-negative numbers with a non-negative ridge.
        """
        obj = cls(
            base=state.get("base", "batch"),  # saved before "domain+batch" existed: those were fitted on "batch"
            estimator=state.get("estimator", "mean"),
            min_skew=state.get("min_skew", 0.0),  # saved before the gate: those always shifted
        )
        obj._labeled = bool(state.get("labeled", False))
        if "log_bias_" in state:
            bias = np.asarray(state["log_bias_"], dtype=np.float64)
            t = state.get("temperature_")
            if bias.ndim != 1 or not np.isfinite(bias).all():
                raise ValueError(f"log_bias_: expected a list of finite numbers, got {state['log_bias_']!r}")
            if not isinstance(t, int | float) or isinstance(t, bool) or not (np.isfinite(t) and t > 0):
                raise ValueError(f"temperature_: expected a positive finite number, got {t!r}")
            obj.log_bias_, obj.temperature_ = bias, float(t)
            obj.confusion_ = None
            if state.get("confusion_") is not None:
                confusion, ridge = _checked_confusion(state, len(bias))
                obj.confusion_, obj.ridge_ = confusion, ridge
            obj.report_ = dict(state.get("report_") or {})
        return obj


def _collapse(prior: np.ndarray, which: str) -> str | None:
    """Why an estimate is refused when it gives :data:`COLLAPSE_SHARE` or more to one label, else None."""
    k = int(prior.argmax())
    if prior[k] >= COLLAPSE_SHARE:
        return f"the {which} prior collapses onto label {k} ({prior[k]:.0%} of the texts)"
    return None


def _checked_confusion(state: dict[str, Any], c: int) -> tuple[np.ndarray, float]:
    confusion = np.asarray(state["confusion_"], dtype=np.float64)
    ridge = state.get("ridge_")
    if confusion.shape != (c, c) or not np.isfinite(confusion).all() or (confusion < 0).any():
        raise ValueError(f"confusion_: expected {c} rows of {c} non-negative numbers, got {state['confusion_']!r}")
    if not isinstance(ridge, int | float) or isinstance(ridge, bool) or not (np.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge_: expected a non-negative finite number, got {ridge!r}")
    return confusion, float(ridge)


_cal.CALIBRATORS[PriorCalibrator.name] = PriorCalibrator
