"""kNN prompting: classify by the nearest labeled examples in the space of next-token distributions.

Xu et al. (ICLR 2023), "kNN Prompting: Beyond-Context Learning with Calibration-Free Nearest
Neighbor Inference". Each labeled example is rendered with the template and the LM's distribution
over the whole vocabulary at the prompt's next position is kept as an *anchor*. A new text gets the
same distribution; its label is the majority label of its ``k`` nearest anchors, the distance being
``KL(anchor || text)``. Label words play no part, so no calibration is needed: a prompt that favours
one word shifts anchors and texts alike.

Memory: an anchor is one row of vocabulary size (49,152 floats for SmolLM2, about 200 KB), so 1,024
anchors take about 200 MB.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils import TransformerTags

from verbalize.engine.scoring import Scorer
from verbalize.errors import InputError, check_int
from verbalize.estimator import text_input_tags
from verbalize.progress import shown_if
from verbalize.prompting.demos import select_demos
from verbalize.prompting.prompts import PromptBuilder, per_prefix, resolve_template
from verbalize.prompting.template import Template
from verbalize.rows import Row, check_labels, check_rows

CHUNK = 256  # rows per vocabulary-sized block: bounds the (rows, V) float64 temporaries


def next_token_log_probs(
    scorer: Scorer,
    template: Template,
    rows: Sequence[Row],
    demos: Sequence[tuple[Row, str]] = (),
    progress: bool = False,
) -> np.ndarray:
    """The LM's log-distribution over its vocabulary after each rendered row, shape (n, V), float32.

    One forward pass per batch (:meth:`Scorer.next_token_log_probs`); ``demos`` are put before every prompt,
    dropped from the end (whole) where a prompt would not fit beside them, for each row on its own (the prompt
    budget of :class:`PromptBuilder`).
    """
    built = PromptBuilder(template, demos, tokenizer=scorer.tokenizer, context_length=scorer.context_length).build(rows)
    [out] = per_prefix(built, lambda x, s, prefix: [scorer.next_token_log_probs(x, s, prefix, progress)])
    return out


def kl_divergence(anchors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """``KL(anchor || query)`` for every pair, shape (n_queries, n_anchors), from log-probabilities.

    ``KL(a || q) = sum_v p_a(v) (log p_a(v) - log p_q(v))``: the anchor's negative entropy minus a
    matrix product, computed in float64 in blocks of rows.

    Examples
    --------
    >>> kl_divergence(np.log([[0.5, 0.5]]), np.log([[0.9, 0.1]])).round(4)  # .5 log(.5/.9) + .5 log(.5/.1)
    array([[0.5108]])
    """
    a = np.asarray(anchors)
    q = np.asarray(queries)
    if a.ndim != 2 or q.ndim != 2 or a.shape[1] != q.shape[1]:
        raise ValueError(f"anchors and queries must be (n, V) with the same V, got {a.shape} and {q.shape}")
    neg_entropy = np.zeros(len(a))
    p_a = np.zeros((0, a.shape[1]))
    blocks = []
    for i in range(0, len(a), CHUNK):
        la = a[i : i + CHUNK].astype(np.float64)  # (c, V)
        pa = np.exp(la)
        neg_entropy[i : i + CHUNK] = (pa * la).sum(1)
        blocks.append(pa)
    p_a = np.concatenate(blocks) if blocks else p_a  # (n_a, V)
    out = np.empty((len(q), len(a)))
    for j in range(0, len(q), CHUNK):
        out[j : j + CHUNK] = neg_entropy[None, :] - q[j : j + CHUNK].astype(np.float64) @ p_a.T  # (c, n_a)
    return np.maximum(out, 0.0)


def vote(distances: np.ndarray, anchor_labels: np.ndarray, k: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Majority vote of the ``k`` nearest anchors: (vote shares (n, n_classes), predicted class index (n,)).

    A tie goes to the tied label with the nearest anchor.

    Examples
    --------
    >>> shares, pred = vote(np.array([[0.1, 0.2, 0.3]]), np.array([1, 0, 0]), k=3, n_classes=2)
    >>> shares.round(3).tolist(), pred.tolist()
    ([[0.667, 0.333]], [0])
    """
    k = min(int(k), distances.shape[1])
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]  # (n, k) nearest first
    labels = np.asarray(anchor_labels)[order]  # (n, k)
    counts = np.stack([(labels == c).sum(1) for c in range(n_classes)], axis=1)  # (n, C)
    first = np.full(counts.shape, k)  # rank of each label's nearest anchor among the k
    for rank in range(k - 1, -1, -1):
        first[np.arange(len(labels)), labels[:, rank]] = rank
    pred = np.lexsort((first, -counts), axis=1)[:, 0] if counts.size else np.zeros(0, dtype=int)
    return counts / max(k, 1), pred


class KNNPrompting(ClassifierMixin, TransformerMixin, BaseEstimator):
    """kNN prompting: the majority label of the nearest labeled examples by KL divergence of next-token
    distributions (Xu et al. 2023). Needs labeled examples (16 to a few thousand); no calibration,
    no label words, no training.

    Parameters
    ----------
    template : str, Path or Template
        A TOML template file, a :class:`Template`, or an inline prompt with ``{text}`` (then give
        ``labels``). Its labels fix the class order; its label words are not used. Its fields say
        what a row is, as for :class:`Verbalizer`: a str (one field), or a dict {field: text}, a tuple
        in field order or a DataFrame with those columns (several fields).
    labels : dict of str to list of str, optional
        Label name -> words; required with an inline prompt (the words may simply be the names).
    model : str, Path, Scorer or None, default None
        As for :class:`Verbalizer` (None: the embedded default model).
    k : int, default 3
        Neighbours that vote (the paper's default).
    demos_per_class : int, default 0
        Labeled examples per class put in every prompt as demonstrations (the paper's in-context
        part); the other examples become anchors.
    batch_size, max_length, device, dtype, random_state, progress
        As for :class:`Verbalizer`; ``random_state`` seeds the choice of demonstrations.

    Attributes
    ----------
    classes_ : ndarray of str
        Label names in template order.
    anchors_ : ndarray of shape (n_anchors, vocab_size)
        Next-token log-probabilities of the anchors (float32).
    anchor_labels_ : ndarray of shape (n_anchors,)
        Class index of each anchor.
    demos_ : list of (row, label)
        The demonstrations in every prompt (a row is a str, or a dict {field: text}).

    Examples
    --------
    >>> clf = KNNPrompting(template="templates/sst2.toml", k=3)          # doctest: +SKIP
    >>> clf.fit(X_train, y_train).predict(["a charming film"])           # doctest: +SKIP
    array(['positive'], dtype=object)
    """

    def __init__(
        self,
        *,
        template: str | Path | Template | None = None,
        labels: Mapping[str, Sequence[str]] | None = None,
        model: str | Path | Scorer | None = None,
        k: int = 3,
        demos_per_class: int = 0,
        batch_size: int = 64,
        max_length: int | None = None,
        device: str = "auto",
        dtype: str = "auto",
        random_state: int | None = None,
        progress: bool = False,
    ):
        self.template = template
        self.labels = labels
        self.model = model
        self.k = k
        self.demos_per_class = demos_per_class
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self.dtype = dtype
        self.random_state = random_state
        self.progress = progress

    def __sklearn_tags__(self) -> Any:
        tags = text_input_tags(super().__sklearn_tags__())
        # transform() gives next-token log-probabilities, float32 whatever the input
        tags.transformer_tags = TransformerTags(preserves_dtype=[])
        return tags

    def fit(self, X: Any, y: Any = None) -> KNNPrompting:
        """Render every labeled example, keep its next-token distribution as an anchor; returns self."""
        for name, value, low in (
            ("k", self.k, 1),
            ("demos_per_class", self.demos_per_class, 0),
            ("batch_size", self.batch_size, 1),
        ):
            check_int(value, name, "KNNPrompting", low=low)
        self.template_ = resolve_template(self.template, self.labels)
        self.classes_ = np.array(list(self.template_.labels), dtype=object)
        texts = check_rows(X, self.template_.fields)
        if y is None:
            raise InputError(
                "KNNPrompting requires y to be passed, but the target y is None: kNN prompting votes with labeled "
                f"examples, so call fit(X, y) with y the label of each row of X, one of {list(self.classes_)}. "
                "To classify without labeled examples use Verbalizer (zero-shot)."
            )
        ys = check_labels(y, list(self.classes_))
        if len(ys) != len(texts):
            raise ValueError(f"X and y have different lengths: {len(texts)} texts, {len(ys)} labels")
        with shown_if(self.progress):  # a cold cache converts the embedded model first (~20 s): a line says so
            self.scorer_ = Scorer.resolve(
                self.model, self.device, self.dtype, batch_size=self.batch_size, max_length=self.max_length
            )
        demo_idx: list[int] = []
        if self.demos_per_class:
            n = self.demos_per_class * len(self.classes_)
            demo_idx = select_demos(ys, n, list(self.classes_), "balanced", self.random_state)
        self.demos_ = [(texts[i], ys[i]) for i in demo_idx]
        taken = set(demo_idx)
        rest = [i for i in range(len(texts)) if i not in taken]
        if not rest:
            raise ValueError(
                f"no anchors left: all {len(texts)} examples became demonstrations "
                f"(demos_per_class={self.demos_per_class}); give more examples or fewer demonstrations"
            )
        index = {c: i for i, c in enumerate(self.classes_)}
        self.anchor_labels_ = np.array([index[ys[i]] for i in rest])
        self.anchors_ = next_token_log_probs(
            self.scorer_, self.template_, [texts[i] for i in rest], self.demos_, self.progress
        )
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Next-token log-probabilities over the vocabulary after each rendered text, shape (n, V)."""
        self._check_fitted()
        rows = check_rows(X, self.template_.fields)
        return next_token_log_probs(self.scorer_, self.template_, rows, self.demos_, self.progress)

    def kneighbors(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        """(KL divergences (n, k), anchor indices (n, k)) of each text's ``k`` nearest anchors, nearest first."""
        self._check_fitted()
        dist = kl_divergence(self.anchors_, self.transform(X))
        k = min(self.k, dist.shape[1])
        idx = np.argsort(dist, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(dist, idx, axis=1), idx

    def predict_proba(self, X: Any) -> np.ndarray:
        """Share of the ``k`` nearest anchors per label, shape (n, n_classes), columns following ``classes_``."""
        return self._vote(X)[0]

    def predict(self, X: Any) -> np.ndarray:
        """The majority label of each text's ``k`` nearest anchors (a tie: the label of the nearest)."""
        pred = self._vote(X)[1]
        return self.classes_[pred]

    def _check_fitted(self) -> None:
        if not hasattr(self, "anchors_"):
            raise NotFittedError("KNNPrompting needs fit(X, y) with labeled examples before predict or transform")

    def _vote(self, X: Any) -> tuple[np.ndarray, np.ndarray]:
        self._check_fitted()
        dist = kl_divergence(self.anchors_, self.transform(X))
        return vote(dist, self.anchor_labels_, self.k, len(self.classes_))
