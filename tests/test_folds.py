"""The one fold splitter (stratified, seeded) used by calibration='auto' and the label-word search."""

import numpy as np
import pytest

from verbalize.calibration.folds import stratified_folds
from verbalize.errors import ParameterError

Y = np.array([0] * 7 + [1] * 5 + [2] * 2)


@pytest.mark.parametrize("n_folds", [2, 3, 4, 5])
def test_every_row_is_held_out_exactly_once_and_trains_in_the_other_folds(n_folds):
    folds = stratified_folds(Y, n_folds, random_state=0)
    assert len(folds) == n_folds
    held = np.concatenate([h for _, h in folds])
    assert sorted(held.tolist()) == list(range(len(Y)))  # once each
    for train, h in folds:
        assert sorted([*train.tolist(), *h.tolist()]) == list(range(len(Y))) and not set(train) & set(h)
    sizes = [len(h) for _, h in folds]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("n_folds", [2, 3, 4])
def test_folds_are_stratified(n_folds):
    y = Y
    for seed in range(5):
        for _, held in stratified_folds(y, n_folds, random_state=seed):
            for label in np.unique(y):
                share = np.sum(y == label) / n_folds
                assert abs(np.sum(y[held] == label) - share) < 1, (seed, label)  # each label within one of its share


def test_folds_are_seeded():
    def held(seed):
        return [h.tolist() for _, h in stratified_folds(Y, 3, random_state=seed)]

    assert held(1) == held(1)
    assert len({str(held(seed)) for seed in range(6)}) > 1  # the seed decides the folds
    assert stratified_folds(list(Y), 3, 7)[0][1].tolist() == held(7)[0]  # lists work as arrays do


def test_more_folds_than_rows_and_bad_counts():
    assert [h.tolist() for _, h in stratified_folds([0, 1], 5, 0)] in ([[0], [1]], [[1], [0]])
    with pytest.raises(ParameterError, match=r"'n_folds' parameter of stratified_folds must be an int >= 2\. Got 1"):
        stratified_folds(Y, 1)
