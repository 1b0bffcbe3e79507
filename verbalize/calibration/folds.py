"""The one fold splitter: stratified, seeded cross-validation folds over label indices.

Used wherever examples are cross-validated: ``calibration="auto"``'s choice and the label-word search.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from verbalize.errors import check_int


def stratified_folds(
    y: Sequence[int] | np.ndarray, n_folds: int, random_state: int | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(training rows, held-out rows) of each fold; every row is held out exactly once.

    Each label's rows are shuffled (seeded by ``random_state``) and dealt round-robin over the folds,
    one label after another, so each fold holds each label's rows within one of an equal share, and the
    folds' sizes differ by at most one. Folds that would be empty (``n_folds`` above the number of rows)
    are left out. Row indices are sorted within each part.

    Parameters
    ----------
    y : sequence of int
        Label index of each row.
    n_folds : int
        Folds wanted (>= 2).
    random_state : int, optional

    Returns
    -------
    list of (ndarray, ndarray)

    Raises
    ------
    ParameterError
        When ``n_folds`` is not an int >= 2.

    Examples
    --------
    >>> [held.tolist() for _, held in stratified_folds([0, 0, 1, 1], 2, random_state=0)]
    [[0, 2], [1, 3]]
    """
    check_int(n_folds, "n_folds", "stratified_folds", low=2)
    y = np.asarray(y)
    rng = np.random.default_rng(random_state)
    parts = [rng.permutation(np.flatnonzero(y == label)) for label in np.unique(y)]
    order = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)  # (n,) rows, label after label
    fold_of = np.empty(len(y), dtype=np.int64)
    fold_of[order] = np.arange(len(order)) % n_folds  # (n,) dealt round-robin
    rows = np.arange(len(y))
    return [(rows[fold_of != k], rows[fold_of == k]) for k in range(min(n_folds, len(y)))]
