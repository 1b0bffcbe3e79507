"""Which training rows become demonstrations in the prompt."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from verbalize.errors import check_choice
from verbalize.rows import Row

SELECTIONS = ("balanced", "random", "first", "similar")


def select_demos(
    y: Sequence[str], n_demos: int, labels: Sequence[str], strategy: str = "balanced", random_state: int | None = None
) -> list[int]:
    """Indices of ``n_demos`` training rows to show as demonstrations, in prompt order.

    ``balanced`` takes the same number per label (round-robin over ``labels`` when ``n_demos`` is
    not a multiple), then shuffles their order; ``random`` samples uniformly; ``first`` takes the
    first rows. All randomness comes from ``random_state``.
    """
    check_choice(strategy, SELECTIONS[:3], "strategy", "select_demos")
    y_arr = np.asarray(y)
    n = min(int(n_demos), len(y_arr))
    rng = np.random.default_rng(random_state)
    if strategy == "first":
        return list(range(n))
    if strategy == "random":
        return [int(i) for i in rng.choice(len(y_arr), size=n, replace=False)]
    pools = {lab: list(rng.permutation(np.flatnonzero(y_arr == lab))) for lab in labels}
    chosen: list[int] = []
    while len(chosen) < n and any(pools.values()):
        for lab in labels:
            if pools[lab] and len(chosen) < n:
                chosen.append(int(pools[lab].pop()))
    return [chosen[i] for i in rng.permutation(len(chosen))]


def choose_demos(
    texts: Sequence[Row],
    y: Sequence[str] | None,
    n_demos: int,
    labels: Sequence[str],
    selection: str = "balanced",
    random_state: int | None = None,
) -> tuple[list[tuple[Row, str]], list[tuple[Row, str]]]:
    """(demonstrations shared by every prompt, pool of per-text demonstrations) from labeled rows.

    ``selection="similar"`` gives the whole training set as the pool (see :func:`similar_demos`);
    the other strategies pick shared demonstrations with :func:`select_demos`.
    """
    if y is None:
        raise ValueError(f"n_demos={n_demos} needs labeled examples of the template's labels")
    if selection == "similar":
        return [], list(zip(texts, y, strict=True))
    idx = select_demos(y, n_demos, labels, selection, random_state)
    return [(texts[i], y[i]) for i in idx], []


def similar_demos(
    train: Sequence[str], texts: Sequence[str], n_demos: int, leave_out_same: bool = False
) -> list[list[int]]:
    """For each text, the ``n_demos`` most similar training rows (TF-IDF cosine), most similar last.

    The nearest demonstration goes last, next to the text, where it has most influence (Liu et al. 2022).
    ``leave_out_same`` never picks a training row whose text is the text itself: for training prompts,
    where the nearest row would otherwise be the text with its own label.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(sublinear_tf=True).fit(list(train) + list(texts))
    sims = (vec.transform(texts) @ vec.transform(train).T).toarray()  # (n_texts, n_train)
    k = min(int(n_demos), len(train))
    if leave_out_same:
        sims[np.asarray(texts, dtype=object)[:, None] == np.asarray(train, dtype=object)[None, :]] = -np.inf
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]  # (n_texts, k) most similar first
    return [[int(i) for i in row[::-1] if sims[r, i] > -np.inf] for r, row in enumerate(top)]
