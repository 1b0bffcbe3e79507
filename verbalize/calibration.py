"""Calibrators: fix the skew of zero/few-shot label scores. Arrays in, log-probabilities out.

Every calibrator works on a (n_samples, n_classes) array of label scores (log-probabilities up
to a constant) and returns calibrated log-probabilities that sum to one in probability space.

==============  ===========================================  ==========================================
name            fitted on                                    helps / hurts
==============  ===========================================  ==========================================
contextual      scores of content-free inputs ("N/A", "",    helps when the prompt itself favours a
                "[MASK]") in the same prompt and demos       label; hurts when the content-free
                (Zhao et al. 2021)                           inputs are not neutral for the task
domain          scores of random in-domain words in the      helps when the domain's vocabulary
                same prompt (Fei et al. 2023)                favours a label; needs unlabeled texts
batch           mean probabilities of the unlabeled batch    helps on large, roughly balanced batches;
                being predicted (Zhou et al. 2024)           hurts on small or very skewed batches,
                                                             and a text's score depends on its batch
temperature     a few labeled examples (Guo et al. 2017)     fixes over/under-confidence (ECE) only:
                                                             it never changes the predicted label
==============  ===========================================  ==========================================
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np

from .errors import did_you_mean


def log_softmax(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    m = s.max(axis=1, keepdims=True)
    return s - m - np.log(np.exp(s - m).sum(axis=1, keepdims=True))


class _Calibrator(abc.ABC):
    """Shared persistence: every fitted attribute ends in '_' and is a float or an array."""

    name = ""

    @abc.abstractmethod
    def fit(self, scores: np.ndarray, y: Any = None) -> _Calibrator: ...

    @abc.abstractmethod
    def transform(self, scores: np.ndarray) -> np.ndarray: ...

    def get_state(self) -> dict[str, Any]:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in vars(self).items() if k.endswith("_")}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Calibrator:
        obj = cls()
        for k, v in state.items():
            setattr(obj, k, np.asarray(v) if isinstance(v, list) else v)
        return obj

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ContextualCalibrator(_Calibrator):
    """Divide probabilities by the mean probability the prompt gives content-free inputs, then renormalize.

    ``fit(scores)`` takes the scores of the content-free inputs; the correction is
    ``W = diag(p_cf)^-1``: ``transform(s) = log_softmax(log_softmax(s) - log p_cf)``.

    Examples
    --------
    >>> cal = ContextualCalibrator().fit(np.log([[0.8, 0.2]]))
    >>> np.exp(cal.transform(np.log([[0.8, 0.2]]))).round(3)
    array([[0.5, 0.5]])
    """

    name = "contextual"

    def fit(self, scores: np.ndarray, y: Any = None) -> ContextualCalibrator:
        probs = np.exp(log_softmax(scores))  # (m, C)
        self.log_prior_ = np.log(probs.mean(axis=0))  # (C,)
        return self

    def transform(self, scores: np.ndarray) -> np.ndarray:
        return log_softmax(log_softmax(scores) - self.log_prior_)


class DomainCalibrator(ContextualCalibrator):
    """Contextual calibration whose content-free inputs are random words of the task's domain."""

    name = "domain"


class BatchCalibrator(ContextualCalibrator):
    """Subtract the log of the mean probability over a batch of unlabeled texts.

    When not fitted, ``transform`` estimates the prior from the batch it is given, so that a
    text's calibrated score depends on the other texts of that batch (by design).
    """

    name = "batch"

    def transform(self, scores: np.ndarray) -> np.ndarray:
        if not hasattr(self, "log_prior_"):
            return ContextualCalibrator().fit(scores).transform(scores)
        return super().transform(scores)


class TemperatureCalibrator(_Calibrator):
    """Scale scores by 1/T, with T chosen to minimise the log-loss on labeled examples.

    ``fit(scores, y)`` needs ``y`` as class indices (0..C-1). The argmax never changes.
    """

    name = "temperature"

    def fit(self, scores: np.ndarray, y: Any = None) -> TemperatureCalibrator:
        if y is None:
            raise ValueError("TemperatureCalibrator.fit needs labels y (class indices); pass labeled examples")
        s = log_softmax(scores)
        y = np.asarray(y, dtype=int)

        def nll(log_t: float) -> float:
            return float(-log_softmax(s / np.exp(log_t))[np.arange(len(y)), y].mean())

        lo, hi = np.log(0.05), np.log(100.0)
        for _ in range(80):  # golden-section search: the loss is unimodal in log T
            a, b = hi - 0.618 * (hi - lo), lo + 0.618 * (hi - lo)
            if nll(a) < nll(b):
                hi = b
            else:
                lo = a
        self.temperature_ = float(np.exp((lo + hi) / 2))
        return self

    def transform(self, scores: np.ndarray) -> np.ndarray:
        return log_softmax(log_softmax(scores) / self.temperature_)


CALIBRATORS: dict[str, type[_Calibrator]] = {
    "contextual": ContextualCalibrator,
    "domain": DomainCalibrator,
    "batch": BatchCalibrator,
    "temperature": TemperatureCalibrator,
}
ALIASES = {f"{name}.v1": name for name in CALIBRATORS}


def get_calibrator(name: str) -> _Calibrator:
    """A new, unfitted calibrator by name ("contextual", "contextual.v1", ...).

    Raises
    ------
    ValueError
        For an unknown name, with the closest known name.
    """
    key = ALIASES.get(name, name)
    if key not in CALIBRATORS:
        known = sorted(CALIBRATORS)
        raise ValueError(
            f"The 'calibration' parameter must be None or one of {known}. Got {name!r} instead."
            f"{did_you_mean(str(name), known + list(ALIASES))}"
        )
    return CALIBRATORS[key]()
