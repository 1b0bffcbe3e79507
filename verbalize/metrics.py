"""Classification and calibration metrics on predicted probabilities (columns follow the classes)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


def expected_calibration_error(proba: np.ndarray, y_index: np.ndarray, n_bins: int = 10) -> float:
    """ECE: the mean gap between confidence and accuracy over equal-width confidence bins,
    weighted by the share of samples in each bin (Guo et al. 2017)."""
    bins = reliability(proba, y_index, n_bins)
    n = bins["count"].sum()
    return float(np.sum(bins["count"] / n * np.abs(bins["accuracy"] - bins["confidence"])))


def reliability(proba: np.ndarray, y_index: np.ndarray, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Per confidence bin: sample count, mean confidence and accuracy (empty bins give zeros)."""
    conf = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y_index
    which = np.minimum((conf * n_bins).astype(int), n_bins - 1)  # (n,) bin of each sample
    count = np.bincount(which, minlength=n_bins).astype(float)
    safe = np.maximum(count, 1)
    return {
        "count": count,
        "confidence": np.bincount(which, weights=conf, minlength=n_bins) / safe,
        "accuracy": np.bincount(which, weights=correct.astype(float), minlength=n_bins) / safe,
    }


def brier_score(proba: np.ndarray, y_index: np.ndarray) -> float:
    """Multi-class Brier score: mean squared distance between probabilities and the one-hot label."""
    onehot = np.eye(proba.shape[1])[y_index]
    return float(np.mean(np.sum((proba - onehot) ** 2, axis=1)))


def evaluate(proba: np.ndarray, y: Sequence[str], classes: Sequence[str]) -> dict[str, object]:
    """Accuracy, macro-F1, ECE, Brier, confusion matrix and reliability bins for one run."""
    classes = list(classes)
    y_index = np.array([classes.index(v) for v in y])
    pred = proba.argmax(axis=1)
    rel = reliability(proba, y_index)
    return {
        "accuracy": float(accuracy_score(y_index, pred)),
        "macro_f1": float(f1_score(y_index, pred, average="macro", labels=range(len(classes)), zero_division=0)),
        "ece": expected_calibration_error(proba, y_index),
        "brier": brier_score(proba, y_index),
        "confusion": confusion_matrix(y_index, pred, labels=range(len(classes))).tolist(),
        "reliability": {k: v.tolist() for k, v in rel.items()},
    }
