"""``calibration="auto"``: a safe default calibration, left only when cross-validation clearly says so.

The candidates are every calibrator registered in :data:`verbalize.calibration.calibrators.CALIBRATORS` at the time
of the choice (and no calibration), so adding a calibrator stays a one-file change to ``calibration.py``.
This module holds the selection policy (:func:`select`, a pure function of held-out scores), and
registers :class:`AutoCalibrator` as ``"auto"`` (the package's ``__init__`` imports it, so the name is always there).

Why a default and a margin, not the plain CV winner: with a few labeled examples per class the
held-out accuracies of the candidates differ by one or two examples, so the plain winner is mostly
noise (measured: switching at one standard error lost up to 5 points to the default on AG News with
demonstrations; two standard errors alone still left it on 4 wins and no loss in 16, see
:data:`CLEAR_P`). The default is ``"prior"`` (:mod:`verbalize.calibration.prior`): two bias estimates,
random in-domain words (Fei et al. 2023) and the label-balanced mean probability of ``fit``'s labeled
texts (batch calibration, Zhou et al. 2024, on a balanced sample), weighted by inverse variance, a
fitted temperature, and a move toward the label distribution estimated on the texts being classified
(adjusted by the labeled texts' confusion) when that distribution is clearly not uniform. On balanced
test sets it matched or beat the previous default (batch) in every measured cell, and on Zipf-skewed
ones it no longer pushes texts into the rare labels (``eval/skewed_calibration.py``; the README has
the table). ``fit(X)`` without
labels keeps batch calibration fitted on ``X``.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, ClassVar

import numpy as np

from verbalize.calibration import calibrators as _cal
from verbalize.calibration.calibrators import Calibrator, FoldScorer, ScoreTexts, log_softmax
from verbalize.calibration.folds import stratified_folds
from verbalize.progress import bar as progress_bar

logger = logging.getLogger(__name__)

DEFAULT = "prior"
"""The choice unless cross-validation clearly prefers another (labeled examples of two labels or more)."""
UNLABELED_DEFAULT = "batch"
"""The choice for ``fit(X)`` without labels: batch calibration fitted on ``X``."""
CLEAR_SE = 2.0
"""A candidate is clearly better than the default when its paired accuracy gain exceeds this many standard errors..."""
CLEAR_P = 0.025
"""...and an exact one-sided sign test on the examples where the two disagree (McNemar's exact test, the test
Dietterich 1998 recommends for two classifiers on the same examples) gives a p-value below this. With a few
labeled examples the normal approximation behind the standard error is far off: 4 wins and no loss in 16
examples clear 2 standard errors, while p = 1/16 (measured: AG News with demonstrations, where such a
split left the default for no calibration and lost 15 points on the test set)."""
MIN_UNLABELED = 8
"""Unlabeled texts needed (``fit(X)``) to fit the default batch prior on; fewer: no calibration."""


def select(
    log_proba: dict[str | None, np.ndarray],
    y: np.ndarray,
    default: str | None = DEFAULT,
    clear_se: float = CLEAR_SE,
    clear_p: float | None = CLEAR_P,
) -> tuple[str | None, dict[str, dict[str, float]]]:
    """The chosen method and every method's CV scores, from held-out log-probabilities per method.

    Each candidate is compared with ``default`` on the same held-out examples (paired): its gain is
    the mean of (candidate correct) - (default correct) over the examples, with the standard error of
    that mean, and ``p_value`` is the exact one-sided sign test on the examples only one of the two gets
    right (the chance of at least that many wins among them if each were a coin flip). A candidate is
    *clearly better* when its gain is positive, exceeds ``clear_se`` standard errors (default
    :data:`CLEAR_SE`, 2) and its p-value is below ``clear_p`` (default :data:`CLEAR_P`, 2.5%; None: the
    standard errors alone). The choice is the default unless some candidate is clearly better; then the
    clearly better one with the highest accuracy, ties to the lower log-loss, then to the order of
    ``log_proba``. Log-loss never overrules accuracy: it ranks methods of equal accuracy (e.g.
    temperature against no calibration, which always predict the same labels).
    """
    y = np.asarray(y, dtype=int)
    rows = np.arange(len(y))
    names = list(log_proba)
    if default not in log_proba:
        raise ValueError(f"the default {default!r} is not among the methods {names}")
    correct = {k: (v.argmax(axis=1) == y).astype(float) for k, v in log_proba.items()}
    scores: dict[str, dict[str, float]] = {}
    clear = []
    for k in names:
        diff = correct[k] - correct[default]
        se = float(diff.std(ddof=1) / np.sqrt(len(y))) if len(y) > 1 else 0.0
        gain = float(diff.mean())
        p_value = sign_test(int((diff > 0).sum()), int((diff < 0).sum()))
        scores[str(k)] = {
            "accuracy": float(correct[k].mean()),
            "log_loss": float(-log_proba[k][rows, y].mean()),
            "gain": gain,
            "gain_se": se,
            "p_value": p_value,
        }
        if k != default and gain > 0 and gain > clear_se * se and (clear_p is None or p_value < clear_p):
            clear.append(k)
    if not clear:
        return default, scores
    best = max(clear, key=lambda k: (scores[str(k)]["accuracy"], -scores[str(k)]["log_loss"], -names.index(k)))
    return best, scores


def sign_test(wins: int, losses: int) -> float:
    """One-sided exact sign test: P(at least ``wins`` of ``wins + losses`` fair coin flips come up wins).

    Examples
    --------
    >>> sign_test(4, 0), sign_test(6, 0), sign_test(0, 0)
    (0.0625, 0.015625, 1.0)
    """
    n = wins + losses
    return float(sum(math.comb(n, i) for i in range(wins, n + 1)) / 2**n) if n else 1.0


class AutoCalibrator(Calibrator):
    """The prior calibrator unless cross-validation on ``fit``'s labeled examples clearly prefers another.

    Each fold's held-out texts are scored with demonstrations drawn from the other folds only (through
    the fold scorer) and calibrated by calibrators fitted without them; :func:`select` then keeps the
    default (``"prior"``) unless a candidate is more accurate by more than ``CLEAR_SE`` paired standard errors
    and by an exact sign test at ``CLEAR_P``.
    The choice is then fitted on all of ``fit``'s texts. Every registered calibrator is a candidate.

    Without labels of two labels or more (``fit(X)``): batch calibration fitted on ``X``'s texts when
    there are at least ``MIN_UNLABELED`` of them and not all of one label, else no calibration; without
    ``fit``: no calibration
    (batch calibration of a single predicted text would erase its scores).

    Attributes
    ----------
    chosen_ : Calibrator or None
        The chosen, fitted calibrator (None: no calibration).
    report_ : dict
        ``{"chosen", "default", "rule", "n_folds", "n_examples", "scores": {name: {"accuracy",
        "log_loss", "gain", "gain_se", "p_value"}}}`` (gain: paired accuracy gain over the default, its
        standard error, and the exact sign test's p-value); ``"reason"`` instead of the CV entries when there
        was no cross-validation.
    cv_log_proba_ : dict
        Held-out log-probabilities per method (not saved with the classifier): for studies of the rule.
    """

    name = "auto"
    fitted_on = "fit's labeled texts (cross-validated choice), then what the chosen calibrator is fitted on"
    unlabeled_texts_help = True  # fit(X) without labels: batch calibration fitted on X
    n_folds: ClassVar[int] = 4
    default: ClassVar[str | None] = DEFAULT
    unlabeled_default: ClassVar[str | None] = UNLABELED_DEFAULT
    rule: ClassVar[str] = (
        f"default unless another method's paired CV accuracy gain exceeds {CLEAR_SE:g} standard errors "
        f"and its exact sign test on the examples where they disagree gives p < {CLEAR_P:g}"
    )

    @staticmethod
    def candidates() -> list[str | None]:
        return [None, *(n for n in _cal.CALIBRATORS if n != AutoCalibrator.name)]

    def choose(self, fold_scorer: FoldScorer, texts: list[str], y: np.ndarray | None, random_state: int | None) -> None:
        """Run the cross-validation and set ``chosen_`` (unfitted) and ``report_``."""
        self.cv_log_proba_: dict[str | None, np.ndarray] = {}
        y = None if y is None else np.asarray(y, dtype=int)
        n_folds = 0 if y is None or len(np.unique(y)) < 2 else min(self.n_folds, int(np.bincount(y).max()))
        if n_folds < 2:
            one_label = y is not None and len(np.unique(y)) < 2  # a prior fitted on one label's texts is skewed
            best = self.unlabeled_default if len(texts) >= MIN_UNLABELED and not one_label else None
            self.chosen_: Calibrator | None = None if best is None else _cal.get_calibrator(best)
            why = (
                f"{best} fitted on fit's texts"
                if best
                else f"no calibration ({len(texts)} texts, one label or fewer than {MIN_UNLABELED})"
            )
            self.report_: dict[str, Any] = {
                "chosen": best,
                "default": self.unlabeled_default,
                "reason": f"no labeled examples to cross-validate on (two labels, two of one label or more): {why}",
            }
            return
        assert y is not None
        folds = stratified_folds(y, n_folds, random_state)
        names, n = self.candidates(), len(y)
        out = {k: np.zeros((n, 0)) for k in names}
        desc = f"calibration='auto': cross-validation of {len(names)} methods"
        for train, held in progress_bar(folds, desc=desc, unit="fold"):
            score_texts = fold_scorer([int(i) for i in train])
            held_texts = [texts[i] for i in held]
            raw = score_texts(held_texts)
            for name in names:
                fold_out = self._fold_scores(name, score_texts, texts, train, y, raw, held_texts, random_state)
                if out[name].shape[1] == 0:
                    out[name] = np.zeros((n, fold_out.shape[1]))
                out[name][held] = fold_out
        best, scores = select(out, y, self.default)
        self.cv_log_proba_ = out
        # the chosen calibrator's own select sees fit's texts and labels (prior: whether its base has labels)
        chosen = None if best is None else _cal.get_calibrator(best)
        self.chosen_ = None if chosen is None else chosen.select(fold_scorer, texts, y, random_state)
        self.report_ = {
            "chosen": best,
            "default": self.default,
            "rule": self.rule,
            "n_folds": len(folds),
            "n_examples": n,
            "scores": scores,
        }
        logger.info("calibration='auto' chose %r: %s", best, scores)

    @staticmethod
    def _fold_scores(
        name: str | None,
        score_texts: ScoreTexts,
        texts: list[str],
        train: np.ndarray,
        y: np.ndarray,
        raw: np.ndarray,
        held_texts: list[str],
        random_state: int | None,
    ) -> np.ndarray:
        """Held-out log-probabilities under calibration ``name`` fitted on the training rows only."""
        if name is None:
            return log_softmax(raw)
        cal = _cal.get_calibrator(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a fold's tiny fit may hit a bound; the CV score says so
            _cal.fit_calibrator(cal, score_texts, [texts[i] for i in train], y[train], random_state)
            return _cal.calibrate(cal, raw, held_texts, score_texts, random_state)

    def select(
        self, fold_scorer: FoldScorer, texts: list[str], y: np.ndarray | None, random_state: int | None
    ) -> Calibrator | None:
        self.choose(fold_scorer, texts, y, random_state)
        return self.chosen_

    def active(self) -> Calibrator | None:
        # unfitted "auto" (zero-shot, no fit): the safe choice, no calibration
        return getattr(self, "chosen_", None) if self.is_fitted() else None

    def report(self) -> dict[str, Any] | None:
        """``report_``, with the chosen calibrator's last estimate when it estimates a label prior ("prior").

        Read at call time: predict calls the chosen calibrator itself (:meth:`active`), not this one.
        """
        report = getattr(self, "report_", None)
        chosen = getattr(self, "chosen_", None)
        last = (chosen.report() if chosen is not None else None) or {}
        if report is None or "estimated_prior" not in last:
            return report
        keys = ("n_texts", "estimated_prior", "skew", "shifted", "fallback")
        return report | {k: last[k] for k in keys if k in last}

    def fit(self, scores: np.ndarray, y: Any = None) -> AutoCalibrator:
        raise TypeError("calibration='auto' is fitted through fit_calibrator (it scores texts); not on an array")

    def transform(self, scores: np.ndarray) -> np.ndarray:
        chosen = getattr(self, "chosen_", None)
        return log_softmax(scores) if chosen is None else chosen.transform(scores)

    def is_fitted(self) -> bool:
        return hasattr(self, "report_")

    def get_state(self) -> dict[str, Any]:
        chosen = getattr(self, "chosen_", None)
        if not self.is_fitted():
            return {}
        state = None if chosen is None else {"name": chosen.name, "state": chosen.get_state()}
        return {"chosen_": state, "report_": self.report_}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> AutoCalibrator:
        obj = cls()
        if "report_" in state:
            chosen = state.get("chosen_")
            obj.chosen_ = None if chosen is None else _cal.CALIBRATORS[chosen["name"]].from_state(chosen["state"])
            obj.report_ = state["report_"]
        return obj


_cal.CALIBRATORS[AutoCalibrator.name] = AutoCalibrator
