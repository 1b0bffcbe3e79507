"""``calibration="auto"``: choose a calibration (none included) by cross-validation on labeled examples.

The candidates are every calibrator registered in :data:`verbalize.calibration.CALIBRATORS` at the time
of the choice, so adding a calibrator stays a one-file change to ``calibration.py``. This module holds
the selection policy, and registers :class:`AutoCalibrator` as ``"auto"`` (``calibration.py`` imports it).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, ClassVar

import numpy as np

from . import calibration as _cal
from .calibration import Calibrator, FoldScorer, ScoreTexts, log_softmax

logger = logging.getLogger(__name__)


def _folds(y: np.ndarray, n_folds: int, random_state: int | None) -> list[np.ndarray]:
    """Held-out rows of each fold, stratified by label (round-robin over each label's shuffled rows)."""
    rng = np.random.default_rng(random_state)
    fold_of = np.zeros(len(y), dtype=int)
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        fold_of[rows] = (np.arange(len(rows)) + rng.integers(n_folds)) % n_folds
    return [np.flatnonzero(fold_of == k) for k in range(n_folds) if (fold_of == k).any()]


class AutoCalibrator(Calibrator):
    """Choose a calibration (none included) by cross-validated accuracy on ``fit``'s labeled examples.

    Each fold's held-out texts are scored with demonstrations drawn from the other folds only (through
    the fold scorer) and calibrated by calibrators fitted without them; the method with the highest
    mean held-out accuracy wins (ties: lower log-loss, then the order of ``candidates``), and is then
    fitted on all of ``fit``'s texts. Every registered calibrator is a candidate.

    Without labels (``fit(X)`` or no ``fit``) it chooses no calibration: the raw prompt scores, the
    only choice that can never fall below raw accuracy.

    Attributes
    ----------
    chosen_ : Calibrator or None
        The chosen, fitted calibrator (None: no calibration).
    report_ : dict
        ``{"chosen": name, "n_folds": k, "n_examples": n, "scores": {name: {"accuracy", "log_loss"}}}``;
        ``"reason"`` instead of scores when no labels were given.
    """

    name = "auto"
    fitted_on = "fit's labeled texts (cross-validated choice), then what the chosen calibrator is fitted on"
    n_folds: ClassVar[int] = 4

    @staticmethod
    def candidates() -> list[str | None]:
        return [None, *(n for n in _cal.CALIBRATORS if n != AutoCalibrator.name)]

    def choose(self, fold_scorer: FoldScorer, texts: list[str], y: np.ndarray | None, random_state: int | None) -> None:
        """Run the cross-validation and set ``chosen_`` (unfitted) and ``report_``."""
        if y is None or len(np.unique(y)) < 2:
            self.chosen_: Calibrator | None = None
            self.report_: dict[str, Any] = {
                "chosen": None,
                "reason": "no labeled examples of two labels or more: no calibration",
            }
            return
        y = np.asarray(y, dtype=int)
        folds = _folds(y, min(self.n_folds, int(np.bincount(y).max())), random_state)
        names, n = self.candidates(), len(y)
        correct, loss = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
        for held in folds:
            train = np.setdiff1d(np.arange(n), held)
            score_texts = fold_scorer([int(i) for i in train])
            held_texts = [texts[i] for i in held]
            raw = score_texts(held_texts)
            for name in names:
                out = self._fold_scores(name, score_texts, texts, train, y, raw, held_texts, random_state)
                correct[name] += float((out.argmax(axis=1) == y[held]).sum())
                loss[name] -= float(out[np.arange(len(held)), y[held]].sum())
        scores = {str(k): {"accuracy": correct[k] / n, "log_loss": loss[k] / n} for k in names}
        best = max(names, key=lambda k: (round(correct[k]), -loss[k], -names.index(k)))
        self.chosen_ = _cal.get_calibrator(best) if best is not None else None
        self.report_ = {"chosen": best, "n_folds": len(folds), "n_examples": n, "scores": scores}
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
