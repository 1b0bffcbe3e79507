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
prior           a base (domain words and fit's labeled texts, helps on skewed and balanced batches
                label-balanced) and a temperature; then the  (auto's default); batch-transductive when
                label prior of the batch being predicted     the estimate is clearly skewed (module
                (Saerens et al. 2002), when clearly skewed   ``prior``: why the mean posterior, not EM)
==============  ===========================================  ==========================================

Each calibrator also says what it is fitted on (:meth:`Calibrator.fit_inputs`: content-free
inputs, in-domain unlabeled texts, the texts themselves) and whether it needs labels
(``needs_labels``); :func:`fit_calibrator` and :func:`calibrate` run that policy for the classifier,
which only supplies a function from texts to their raw label scores. Adding a calibrator is a
change to this file only: a subclass of :class:`Calibrator` and an entry in ``CALIBRATORS``
(or :func:`register_calibrator`).
"""

from __future__ import annotations

import abc
import copy
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
from sklearn.exceptions import NotFittedError

from verbalize.errors import check_choice

CONTENT_FREE = ("N/A", "", "[MASK]")
N_DOMAIN_SAMPLES = 20

COLLAPSE_SHARE = 0.9  # warn when this share of a batch's predictions (or more) goes to one label
COLLAPSE_MIN_ROWS = 10  # ... in batches of at least this many texts
TEMPERATURE_BOUNDS = (0.05, 100.0)

logger = logging.getLogger(__name__)

ScoreTexts = Callable[[list[str]], np.ndarray]
"""Texts -> their raw label scores (n, n_classes), rendered with the classifier's prompt and demonstrations."""

FoldScorer = Callable[[list[int]], ScoreTexts]
"""Rows of ``fit``'s texts -> a :data:`ScoreTexts` whose demonstrations are drawn from those rows only."""


def warn_if_collapsed(log_proba: np.ndarray, labels: Sequence[str], what: str) -> None:
    """Warn when ``COLLAPSE_SHARE`` or more of a batch's predictions go to one label.

    ``what`` names the cause in the message, e.g. "calibration='contextual'" or "the prompt (no calibration)".
    """
    n = len(log_proba)
    if n < COLLAPSE_MIN_ROWS:
        return
    counts = np.bincount(np.asarray(log_proba).argmax(axis=1), minlength=len(labels))
    k = int(counts.argmax())
    if counts[k] >= COLLAPSE_SHARE * n:
        warnings.warn(
            f"{what} sends {counts[k]} of {n} predictions ({counts[k] / n:.0%}) to label {labels[k]!r}; "
            "the classifier may be collapsed onto one label: check accuracy on labeled examples, or try "
            "calibration='auto' with a few labeled examples per class",
            UserWarning,
            stacklevel=3,
        )


def log_softmax(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    m = s.max(axis=1, keepdims=True)
    return s - m - np.log(np.exp(s - m).sum(axis=1, keepdims=True))


def domain_texts(texts: Sequence[Any], random_state: int | None, n: int = N_DOMAIN_SAMPLES) -> list[Any]:
    """Random bags of in-domain words, each as long as an average text (Fei et al. 2023).

    Rows with several fields ({field: text}) give rows of the same fields, each field an independent bag
    of that field's own words, as long as that field's average: one bag copied into every field would show
    the model the same text twice, which on a pair task ("same sentiment?", entailment) is itself evidence
    for one label and would be divided out as bias.
    """
    rows = list(texts)
    rng = np.random.default_rng(random_state)
    if rows and all(isinstance(t, Mapping) for t in rows):
        fields = list(dict.fromkeys(f for t in rows for f in t))
        pools = {f: [w for t in rows for w in str(t.get(f, "")).split()] for f in fields}
        if not any(pools.values()):
            return list(CONTENT_FREE)
        sizes = {f: max(1, round(len(pools[f]) / len(rows))) for f in fields}
        return [
            {f: " ".join(rng.choice(pools[f], size=sizes[f])) if pools[f] else "" for f in fields} for _ in range(n)
        ]
    words = [w for t in rows for w in (t if isinstance(t, str) else " ".join(t.values())).split()]
    if not words:
        return list(CONTENT_FREE)
    length = max(1, round(len(words) / max(len(rows), 1)))
    return [" ".join(rng.choice(words, size=length)) for _ in range(n)]


def fit_temperature(scores: np.ndarray, y: np.ndarray) -> float:
    """The temperature T in ``TEMPERATURE_BOUNDS`` that minimises the log-loss of ``log_softmax(scores) / T``
    on class indices ``y`` (golden-section search: the loss is unimodal in log T)."""
    s = log_softmax(scores)
    y = np.asarray(y, dtype=int)

    def nll(log_t: float) -> float:
        return float(-log_softmax(s / np.exp(log_t))[np.arange(len(y)), y].mean())

    lo, hi = np.log(TEMPERATURE_BOUNDS[0]), np.log(TEMPERATURE_BOUNDS[1])
    for _ in range(80):
        a, b = hi - 0.618 * (hi - lo), lo + 0.618 * (hi - lo)
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2))


class Calibrator(abc.ABC):
    """Base of every calibrator: arithmetic on (n, n_classes) arrays plus what it is fitted on.

    Subclasses set ``name`` and ``needs_labels``, implement :meth:`fit` and :meth:`transform`, and
    override :meth:`fit_inputs` / :meth:`transform_unfitted` when they are fitted on something else
    than the training texts. Fitted attributes end in ``_`` and are floats or arrays (saved as JSON).
    """

    name: ClassVar[str] = ""
    fitted_on: ClassVar[str] = "the texts given to fit"  # what it learns from, in words (docs, messages)
    needs_labels: ClassVar[bool] = False
    uses_labels: ClassVar[bool] = False  # fit takes fit's labels when there are some (optional)
    unlabeled_texts_help: ClassVar[bool] = False  # fit(X) on unlabeled texts of the task improves it

    @abc.abstractmethod
    def fit(self, scores: np.ndarray, y: Any = None) -> Calibrator: ...

    @abc.abstractmethod
    def transform(self, scores: np.ndarray) -> np.ndarray: ...

    def fit_inputs(self, texts: list[str], random_state: int | None) -> list[str] | None:
        """The texts whose label scores :meth:`fit` takes, given ``fit``'s texts; None: do not fit now."""
        return texts or None

    def transform_unfitted(
        self, scores: np.ndarray, texts: list[str], score_texts: ScoreTexts, random_state: int | None
    ) -> np.ndarray:
        """Calibrated scores when ``fit`` gave this calibrator nothing to fit on (default: an error)."""
        raise NotFittedError(f"calibration={self.name!r} needs fit(X, y) before predict")

    def is_fitted(self) -> bool:
        return any(k.endswith("_") and not k.startswith("_") for k in vars(self))

    def select(
        self, fold_scorer: FoldScorer, texts: list[str], y: np.ndarray | None, random_state: int | None
    ) -> Calibrator | None:
        """The calibrator that ``fit_calibrator`` fits: itself; a policy (``"auto"``) chooses one, or None."""
        return self

    def active(self) -> Calibrator | None:
        """The calibrator that transforms scores at prediction time: itself; None means no calibration."""
        return self

    def report(self) -> dict[str, Any] | None:
        """What a policy chose and why (``Verbalizer.calibration_report_``); None for a plain calibrator."""
        return None

    def get_state(self) -> dict[str, Any]:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in vars(self).items() if k.endswith("_")}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Calibrator:
        """A fitted calibrator from :meth:`get_state`'s dict.

        Raises
        ------
        ValueError
            When a value is not a finite number or an array of them (a NaN would send every text to
            the first label without a word).
        """
        obj = cls()
        for k, v in state.items():
            value = np.asarray(v) if isinstance(v, list) else v
            numeric = not isinstance(value, bool) and isinstance(value, int | float | np.ndarray)
            if not numeric or np.asarray(value).dtype.kind not in "iuf" or not np.isfinite(value).all():
                raise ValueError(f"{k}: expected a finite number or a list of them, got {v!r}")
            setattr(obj, k, value)
        return obj

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class ContextualCalibrator(Calibrator):
    """Divide probabilities by the mean probability the prompt gives content-free inputs, then renormalize.

    ``fit(scores)`` takes the scores of the content-free inputs; the correction is
    ``W = diag(p_cf)^-1``: ``transform(s) = log_softmax(log_softmax(s) - log p_cf)``. It needs no
    data: unfitted, it fits itself on the content-free inputs on first use.

    Examples
    --------
    >>> cal = ContextualCalibrator().fit(np.log([[0.8, 0.2]]))
    >>> np.exp(cal.transform(np.log([[0.8, 0.2]]))).round(3)
    array([[0.5, 0.5]])
    """

    name = "contextual"
    fitted_on = "content-free inputs ('N/A', '', '[MASK]') in the same prompt and demonstrations"

    def fit(self, scores: np.ndarray, y: Any = None) -> ContextualCalibrator:
        probs = np.exp(log_softmax(scores))  # (m, C)
        self.log_prior_ = np.log(probs.mean(axis=0))  # (C,)
        return self

    def transform(self, scores: np.ndarray) -> np.ndarray:
        return log_softmax(log_softmax(scores) - self.log_prior_)

    def fit_inputs(self, texts: list[str], random_state: int | None) -> list[str] | None:
        return list(CONTENT_FREE)

    def transform_unfitted(
        self, scores: np.ndarray, texts: list[str], score_texts: ScoreTexts, random_state: int | None
    ) -> np.ndarray:
        return self.fit(score_texts(list(CONTENT_FREE))).transform(scores)


class DomainCalibrator(ContextualCalibrator):
    """Contextual calibration whose content-free inputs are random words of the task's domain.

    Fitted on bags of words drawn from ``fit``'s unlabeled texts; unfitted, it draws them from the
    texts being predicted (for that call only).
    """

    name = "domain"
    fitted_on = "random bags of words drawn from fit's unlabeled texts (else from the predicted texts)"
    unlabeled_texts_help = True

    def fit_inputs(self, texts: list[str], random_state: int | None) -> list[str] | None:
        return domain_texts(texts, random_state) if texts else None

    def transform_unfitted(
        self, scores: np.ndarray, texts: list[str], score_texts: ScoreTexts, random_state: int | None
    ) -> np.ndarray:
        prior = DomainCalibrator().fit(score_texts(domain_texts(texts, random_state)))
        return prior.transform(scores)


class BatchCalibrator(ContextualCalibrator):
    """Subtract the log of the mean probability over a batch of unlabeled texts.

    Fitted on ``fit``'s texts; unfitted, ``transform`` estimates the prior from the batch it is
    given, so that a text's calibrated score depends on the other texts of that batch (by design).
    """

    name = "batch"
    fitted_on = "fit's unlabeled texts (else the batch being predicted)"
    unlabeled_texts_help = True

    def fit_inputs(self, texts: list[str], random_state: int | None) -> list[str] | None:
        return texts or None

    def transform(self, scores: np.ndarray) -> np.ndarray:
        if not hasattr(self, "log_prior_"):
            return ContextualCalibrator().fit(scores).transform(scores)
        return super().transform(scores)

    def transform_unfitted(
        self, scores: np.ndarray, texts: list[str], score_texts: ScoreTexts, random_state: int | None
    ) -> np.ndarray:
        return self.transform(scores)


class TemperatureCalibrator(Calibrator):
    """Scale scores by 1/T, with T chosen to minimise the log-loss on labeled examples.

    ``fit(scores, y)`` needs ``y`` as class indices (0..C-1). The argmax never changes.
    """

    name = "temperature"
    fitted_on = "fit's labeled texts"
    needs_labels = True

    def fit(self, scores: np.ndarray, y: Any = None) -> TemperatureCalibrator:
        if y is None:
            raise ValueError("TemperatureCalibrator.fit needs labels y (class indices); pass labeled examples")
        y = np.asarray(y, dtype=int)
        self.temperature_ = fit_temperature(scores, y)
        low, high = TEMPERATURE_BOUNDS
        if not low * 1.01 < self.temperature_ < high / 1.01:
            warnings.warn(
                f"temperature calibration: the fitted temperature {self.temperature_:.3g} is at its bound "
                f"[{low}, {high}] on {len(y)} labeled examples; the scores barely predict the labels "
                "(T at the upper bound flattens every prediction). Check the template's label words, "
                "or give more labeled examples",
                UserWarning,
                stacklevel=2,
            )
        return self

    def transform(self, scores: np.ndarray) -> np.ndarray:
        return log_softmax(log_softmax(scores) / self.temperature_)


CALIBRATORS: dict[str, type[Calibrator]] = {
    "contextual": ContextualCalibrator,
    "domain": DomainCalibrator,
    "batch": BatchCalibrator,
    "temperature": TemperatureCalibrator,
}
VERSION = ".v1"  # every name also answers to its versioned alias, e.g. "contextual.v1"


def register_calibrator(cls: type[Calibrator]) -> type[Calibrator]:
    """Make ``cls`` available by its ``name`` (as ``calibration=name``, and when loading a saved classifier)."""
    if not (isinstance(cls, type) and issubclass(cls, Calibrator)) or not cls.name:
        raise TypeError(f"register_calibrator needs a Calibrator subclass with a name, got {cls!r}")
    CALIBRATORS[cls.name] = cls
    return cls


def calibration_choices() -> list[Any]:
    """The values the ``calibration`` parameter accepts by name (None included)."""
    return [None, *CALIBRATORS]


def get_calibrator(name: str | Calibrator) -> Calibrator:
    """A new, unfitted calibrator by name ("contextual", "contextual.v1", ...); an instance is copied.

    Raises
    ------
    ParameterError
        For an unknown name, with the closest known name.
    """
    if isinstance(name, Calibrator):
        return copy.deepcopy(name)
    aliases = [f"{n}{VERSION}" for n in CALIBRATORS]
    check_choice(name, calibration_choices(), "calibration", "Verbalizer", hidden=aliases)
    key = name[: -len(VERSION)] if name.endswith(VERSION) else name
    return CALIBRATORS[key]()


def unlabeled_texts_help(calibration: str | Calibrator | None) -> bool:
    """Whether ``fit(X)`` on unlabeled texts of the task improves this calibration (domain, batch)."""
    return calibration is not None and get_calibrator(calibration).unlabeled_texts_help


def fit_calibrator(
    cal: Calibrator,
    score_texts: ScoreTexts,
    texts: list[str],
    y: np.ndarray | None = None,
    random_state: int | None = None,
    fold_scorer: FoldScorer | None = None,
    sample: int | None = None,
) -> None:
    """Fit ``cal`` on what it is fitted on, given ``fit``'s texts and label indices ``y`` (or None).

    ``fold_scorer`` scores with demonstrations drawn from given rows only (for ``"auto"``'s
    cross-validation; default: ``score_texts`` for every fold). ``sample`` caps how many of ``texts``
    the calibrator is fitted on (a seeded random subset), so a large pool is not scored in full.

    Raises
    ------
    ValueError
        When the calibrator needs labels and ``y`` is None.
    """
    if sample is not None and len(texts) > sample:
        keep = np.sort(np.random.default_rng(random_state).choice(len(texts), size=sample, replace=False))
        texts, y = [texts[i] for i in keep], (y[keep] if y is not None else None)
        fold_scorer = None if fold_scorer is None else _subset_scorer(fold_scorer, keep)
    chosen = cal.select(fold_scorer or (lambda rows: score_texts), texts, y, random_state)
    if chosen is None:
        return
    cal = chosen
    if cal.needs_labels and y is None:
        raise ValueError(f"calibration={cal.name!r} needs labeled examples: call fit(X, y) with y")
    inputs = cal.fit_inputs(texts, random_state)
    if inputs is not None:
        cal.fit(score_texts(inputs), y if cal.needs_labels or cal.uses_labels else None)


def calibrate(
    cal: Calibrator, scores: np.ndarray, texts: list[str], score_texts: ScoreTexts, random_state: int | None = None
) -> np.ndarray:
    """Calibrated log-probabilities of ``scores`` (the raw label scores of ``texts``)."""
    active = cal.active()
    if active is None:
        return log_softmax(scores)
    cal = active
    if cal.is_fitted():
        return cal.transform(scores)
    return cal.transform_unfitted(scores, texts, score_texts, random_state)


def _subset_scorer(fold_scorer: FoldScorer, keep: np.ndarray) -> FoldScorer:
    """A fold scorer over a subset of the rows: row i of the subset is row ``keep[i]`` of the full set."""
    return lambda rows: fold_scorer([int(keep[i]) for i in rows])
