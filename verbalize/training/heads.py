"""Classification heads on a causal LM's hidden states; the LM head stays and still generates.

A :class:`Head` says what to pool (the last token, or the mean over the prompt's tokens, of the
last ``layers`` layers concatenated), how to train (``"probe"``: frozen body and scikit-learn
logistic regression on the features; ``"joint"``: a linear layer trained together with the LM), and
whether labels are exclusive (softmax) or not (``multi_label``: sigmoid with one threshold per label,
tuned for F1). Several heads on one model are a multi-head classifier, each with its own loss weight.

Every fitted head is a plain linear map (``weight`` (K, D), ``bias`` (K,)) on the features, saved as
safetensors and reloaded exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from verbalize.engine.scoring import POOLINGS
from verbalize.errors import ParameterError, check_choice, choice_problem, number_problem, raise_problems
from verbalize.rows import check_labels

TRAININGS = ("probe", "joint")


@dataclass(frozen=True)
class Head:
    """What a classification head pools, how it is trained, and its labels.

    Parameters
    ----------
    name : str, default "head"
        Key of this head in ``fit``'s ``y`` when there are several heads, and in :meth:`Verbalizer.outputs`.
    labels : sequence of str, optional
        Label names in column order. Default: the template's labels if every training label is one
        of them, else the sorted distinct training labels.
    pooling : {"last", "mean"}, default "last"
        ``"last"``: the hidden state of the prompt's last token (what ``GPT2ForSequenceClassification``
        uses, taken at each row's own last real token, so padding never matters). ``"mean"``: mean over
        the prompt's tokens (BOS excluded).
    layers : int, default 1
        Concatenate the pooled states of the last ``layers`` layers (the last one after the final norm).
    training : {"probe", "joint"}, default "probe"
        ``"probe"``: the LM is frozen, a logistic regression is fitted on standardized features.
        ``"joint"``: a linear layer is trained with the LM (see :class:`FineTuneConfig`).
    multi_label : bool, default False
        Sigmoid per label instead of softmax; ``y`` holds a list of labels per text (or a 0/1 matrix).
    weight : float, default 1.0
        This head's loss weight in joint training.
    C : float, default 1.0
        Inverse regularization strength of the probe's logistic regression.
    """

    name: str = "head"
    labels: tuple[str, ...] | None = None
    pooling: str = "last"
    layers: int = 1
    training: str = "probe"
    multi_label: bool = False
    weight: float = 1.0
    C: float = 1.0

    def __post_init__(self) -> None:
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(str(x) for x in self.labels))
        problems = [
            choice_problem(getattr(self, n), allowed, n, "Head")
            for n, allowed in (("pooling", POOLINGS), ("training", TRAININGS))
        ]
        problems.append(number_problem(self.layers, "layers", "Head", 1, integer=True))
        problems.append(number_problem(self.weight, "weight", "Head", 0))
        problems.append(number_problem(self.C, "C", "Head", 0, low_open=True))
        if not self.name or not str(self.name).replace("_", "").replace("-", "").isalnum():
            problems.append(
                f"The 'name' parameter of Head must be letters, digits, '_' or '-'. Got {self.name!r} instead."
            )
        raise_problems(problems)  # every problem at once

    @property
    def pool(self) -> tuple[str, int]:
        return (self.pooling, self.layers)


@dataclass
class FittedHead:
    """A trained head: a linear map on pooled features, and per-label thresholds when multi-label."""

    head: Head
    classes: np.ndarray  # (K,) label names
    weight: torch.Tensor  # (K, D)
    bias: torch.Tensor  # (K,)
    threshold: np.ndarray | None = None  # (K,) multi-label only

    def logits(self, feats: np.ndarray) -> np.ndarray:
        w, b = self.weight.detach().double().numpy(), self.bias.detach().double().numpy()
        return feats.astype(np.float64) @ w.T + b  # (n, K)

    def predict_proba(self, feats: np.ndarray) -> np.ndarray:
        z = self.logits(feats)
        if self.head.multi_label:
            return 1.0 / (1.0 + np.exp(-z))
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, feats: np.ndarray) -> np.ndarray:
        p = self.predict_proba(feats)
        if self.head.multi_label:
            assert self.threshold is not None
            return (p >= self.threshold).astype(int)  # (n, K) indicator matrix, as scikit-learn multilabel
        return self.classes[p.argmax(axis=1)]

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {
            f"{self.head.name}.weight": self.weight.detach().cpu(),
            f"{self.head.name}.bias": self.bias.detach().cpu(),
        }
        if self.threshold is not None:
            out[f"{self.head.name}.threshold"] = torch.as_tensor(self.threshold, dtype=torch.float64)
        return {k: v.contiguous() for k, v in out.items()}

    @classmethod
    def from_tensors(cls, head: Head, classes: Sequence[str], tensors: dict[str, torch.Tensor]) -> FittedHead:
        """The head written by :meth:`tensors` (``tensors`` may hold other heads' entries too)."""
        threshold = tensors.get(f"{head.name}.threshold")
        return cls(
            head,
            np.array(classes, dtype=object),
            tensors[f"{head.name}.weight"],
            tensors[f"{head.name}.bias"],
            threshold.numpy() if threshold is not None else None,
        )


def as_heads(heads: Head | Sequence[Head] | None) -> list[Head]:
    """The ``heads`` parameter as a list of distinctly named :class:`Head` objects."""
    if heads is None:
        return []
    out = [heads] if isinstance(heads, Head) else list(heads)
    bad = [h for h in out if not isinstance(h, Head)]
    if bad:
        raise TypeError(f"heads must be Head objects, got {type(bad[0]).__name__}: use verbalize.Head(...)")
    names = [h.name for h in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"heads need distinct names; {dupes} repeats: e.g. Head(name='coarse'), Head(name='fine')")
    return out


def one_or_all(by_head: dict[str, Any]) -> Any:
    """A single head's value as it is; with several heads, the dict {head name: value}."""
    return next(iter(by_head.values())) if len(by_head) == 1 else by_head


HeadTargets = dict[str, tuple[list[str], np.ndarray]]
"""Head name -> (its classes, its targets: class indices (n,) or a 0/1 matrix (n, K))."""


def split_targets(
    heads: Sequence[Head], y: Any, n: int, template_labels: Sequence[str], needs_y: bool = False
) -> tuple[list[str] | None, HeadTargets]:
    """Split ``fit``'s ``y`` into template-label targets (label words, demos, calibration) and each head's.

    With several heads ``y`` is a dict {head name: labels}. With heads, the label words are trained
    on the first single-label head whose classes are the template's labels (None when there is none).

    Raises
    ------
    ValueError, TypeError
        When ``y`` is missing (heads or ``needs_y``), has the wrong shape, or has unknown labels.
    """
    if y is None:
        if heads or needs_y:
            raise ValueError("fit needs labels y for heads and fine-tuning")
        return None, {}
    if len(heads) > 1:
        if not isinstance(y, Mapping):
            raise TypeError(
                f"with {len(heads)} heads, y must be a dict {{head name: labels}} with keys {[h.name for h in heads]}"
            )
        missing = [h.name for h in heads if h.name not in y]
        if missing:
            raise ValueError(f"y has no labels for heads {missing}; its keys are {list(y)}")
    head_ys: HeadTargets = {}
    for h in heads:
        values = y[h.name] if len(heads) > 1 else y
        values = list(values) if not hasattr(values, "shape") or np.asarray(values).ndim == 1 else values
        if len(values) != n:
            raise ValueError(f"X and y of head {h.name!r} have different lengths: {n} texts, {len(values)} labels")
        classes = head_classes(h, values, template_labels)
        head_ys[h.name] = (classes, head_targets(h, values, classes))
    ys = check_labels(y, template_labels) if not heads else None
    for h in heads:
        classes, target = head_ys[h.name]
        if not h.multi_label and classes == list(template_labels):
            ys = [classes[i] for i in target]
            break
    if ys is not None and len(ys) != n:
        raise ValueError(f"X and y have different lengths: {n} texts, {len(ys)} labels")
    return ys, head_ys


def head_classes(head: Head, y: Any, template_labels: Sequence[str]) -> list[str]:
    """The label names of a head: given, else the template's if they cover y, else sorted distinct labels."""
    if head.labels is not None:
        return list(head.labels)
    if head.multi_label and _is_indicator(y):
        width = np.asarray(y).shape[1]
        if width != len(template_labels):
            raise ValueError(
                f"head {head.name!r}: y is a 0/1 matrix with {width} columns; "
                f"give Head(labels=[...]) with {width} names"
            )
        return list(template_labels)
    seen = {str(v) for row in y for v in row} if head.multi_label else {str(v) for v in y}
    if seen <= set(template_labels):
        return list(template_labels)
    return sorted(seen)


def head_targets(head: Head, y: Any, classes: Sequence[str]) -> np.ndarray:
    """Class indices (n,) for a single-label head; a 0/1 float matrix (n, K) for a multi-label head."""
    index = {c: i for i, c in enumerate(classes)}
    if head.multi_label:
        if _is_indicator(y):
            return np.asarray(y, dtype=np.float32)
        out = np.zeros((len(y), len(classes)), dtype=np.float32)
        for i, row in enumerate(y):
            if isinstance(row, str):
                raise TypeError(
                    f"head {head.name!r} is multi-label: y[{i}] must be a list of labels, got the string {row!r}"
                )
            for v in row:
                if str(v) not in index:
                    raise ValueError(f"head {head.name!r}: y[{i}] has unknown label {v!r}; labels are {list(classes)}")
                out[i, index[str(v)]] = 1.0
        return out
    unknown = [(i, v) for i, v in enumerate(y) if str(v) not in index]
    if unknown:
        i, v = unknown[0]
        raise ValueError(f"head {head.name!r}: y[{i}] = {v!r} is not one of its labels {list(classes)}")
    return np.array([index[str(v)] for v in y], dtype=np.int64)


def fit_probe(head: Head, feats: np.ndarray, targets: np.ndarray, classes: Sequence[str]) -> FittedHead:
    """Logistic regression on standardized features, folded back into one linear map on raw features."""
    from sklearn.linear_model import LogisticRegression

    mu, sd = feats.mean(axis=0), feats.std(axis=0) + 1e-6
    z = (feats - mu) / sd
    k = len(classes)
    coef = np.zeros((k, feats.shape[1]))
    intercept = np.zeros(k)
    if head.multi_label:
        for j in range(k):
            col = targets[:, j]
            if col.min() == col.max():  # a label always (or never) present: a constant score
                rate = np.clip(col.mean(), 1e-3, 1 - 1e-3)
                intercept[j] = np.log(rate / (1 - rate))
                continue
            lr = LogisticRegression(C=head.C, max_iter=2000).fit(z, col)
            coef[j], intercept[j] = lr.coef_[0], lr.intercept_[0]
    else:
        present = np.unique(targets)
        if len(present) < 2:
            raise ValueError(f"head {head.name!r}: training labels hold a single class; a probe needs at least two")
        lr = LogisticRegression(C=head.C, max_iter=2000).fit(z, targets)
        if len(present) == 2:  # scikit-learn keeps one row for two classes: softmax([0, z]) = sigmoid(z)
            coef[present[1]], intercept[present[1]] = lr.coef_[0], lr.intercept_[0]
        else:
            coef[present], intercept[present] = lr.coef_, lr.intercept_
        intercept[np.setdiff1d(np.arange(k), present)] = -1e4  # a class never seen is never predicted
    w = coef / sd
    b = intercept - w @ mu
    return FittedHead(head, np.array(classes, dtype=object), torch.tensor(w), torch.tensor(b))


def fit_probes(
    heads: Sequence[Head], feats: Sequence[np.ndarray], head_ys: HeadTargets, fitted: dict[str, FittedHead]
) -> None:
    """Fit each probe head on its features into ``fitted``, and tune multi-label thresholds (joint ones too)."""
    for h, f in zip(heads, feats, strict=True):
        classes, target = head_ys[h.name]
        if h.training == "probe":
            fitted[h.name] = fit_probe(h, f, target, classes)
        if h.multi_label:
            fitted[h.name].threshold = tune_thresholds(fitted[h.name].predict_proba(f), target)


def head_params(heads: Head | Sequence[Head] | None) -> dict[str, Any]:
    """Every head's fields as nested parameters ``heads__<head name>__<field>`` (for ``get_params(deep=True)``)."""
    return {f"heads__{h.name}__{f.name}": getattr(h, f.name) for h in as_heads(heads) for f in dataclasses.fields(h)}


def replace_head(heads: Head | Sequence[Head] | None, key: str, value: Any) -> Head | list[Head]:
    """``heads`` with one field of one head changed, for ``set_params(heads__<name>__<field>=value)``."""
    parts = key.split("__")
    listed = as_heads(heads)
    if len(parts) != 3:
        raise ParameterError(f"{key!r}: nested head parameters are written heads__<head name>__<field>")
    check_choice(parts[1], [h.name for h in listed], "heads__<name>", "Verbalizer.set_params")
    fields = [f.name for f in dataclasses.fields(Head)]
    check_choice(parts[2], fields, "heads__<name>__<field>", "Verbalizer.set_params")
    out = [dataclasses.replace(h, **{parts[2]: value}) if h.name == parts[1] else h for h in listed]
    return out[0] if isinstance(heads, Head) else out


def tune_thresholds(proba: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-label threshold on probabilities that maximizes F1 on these examples (0.5 where undecided)."""
    out = np.full(proba.shape[1], 0.5)
    for j in range(proba.shape[1]):
        p, t = proba[:, j], targets[:, j] > 0.5
        if not t.any() or t.all():
            continue
        cands = np.unique(p)
        best = -1.0
        for c in cands:
            pred = p >= c
            tp = (pred & t).sum()
            f1 = 2 * tp / (pred.sum() + t.sum())
            if f1 > best:
                best, out[j] = f1, float(c)
    return out


class JointHeads(torch.nn.Module):
    """The linear layers of the jointly trained heads, as one module for the optimizer."""

    def __init__(self, heads: Sequence[Head], n_classes: Sequence[int], hidden: int):
        super().__init__()
        self.names = [h.name for h in heads]
        self.layers = torch.nn.ModuleDict(
            {h.name: torch.nn.Linear(hidden * h.layers, k) for h, k in zip(heads, n_classes, strict=True)}
        )
        for name in self.names:
            torch.nn.init.normal_(self.linear(name).weight, std=0.02)
            torch.nn.init.zeros_(self.linear(name).bias)

    def linear(self, name: str) -> torch.nn.Linear:
        layer = self.layers[name]
        assert isinstance(layer, torch.nn.Linear)
        return layer

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [self.linear(n)(f) for n, f in zip(self.names, feats, strict=True)]


def head_loss(head: Head, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if head.multi_label:
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target.float())
    return torch.nn.functional.cross_entropy(logits, target.long())


def _is_indicator(y: Any) -> bool:
    try:
        arr = np.asarray(y)
    except ValueError:  # ragged lists of labels
        return False
    return arr.ndim == 2 and arr.dtype.kind in "biuf"
