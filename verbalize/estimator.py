"""Verbalizer: a scikit-learn classifier that asks a causal LM which label word comes next.

This module holds the scikit-learn surface and the order of the steps only: what the model reads
is :mod:`verbalize.prompting.prompts`, calibration policy :mod:`verbalize.calibration.calibrators`, head targets
:mod:`verbalize.training.heads`, fine-tuning :mod:`verbalize.training.finetune`, saving :mod:`verbalize.persistence`.
"""

from __future__ import annotations

import copy
import json
import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError

from verbalize import persistence
from verbalize.calibration.calibrators import (
    Calibrator,
    ScoreTexts,
    calibrate,
    fit_calibrator,
    get_calibrator,
    log_softmax,
    warn_if_collapsed,
)
from verbalize.engine.scoring import AGGREGATIONS, Scorer, aggregate
from verbalize.engine.tokens import reserved_tokens
from verbalize.errors import ParameterError, check_choice, check_int
from verbalize.progress import enabled as progress_shown
from verbalize.progress import shown_if, stage
from verbalize.prompting.demos import SELECTIONS, choose_demos
from verbalize.prompting.prompts import PromptBuilder, Prompts, per_prefix, resolve_template
from verbalize.prompting.template import Template
from verbalize.rows import Row, check_rows
from verbalize.training.config import FineTuneConfig, replace_config
from verbalize.training.finetune import train_classifier
from verbalize.training.heads import (
    FittedHead,
    Head,
    as_heads,
    fit_probes,
    head_params,
    one_or_all,
    replace_head,
    split_targets,
)

RUNTIME_PARAMS = ("batch_size", "progress")  # may change after fit: they do not change what was learned


def text_input_tags(tags: Any, requires_fit: bool = True) -> Any:
    """scikit-learn tags of a classifier of texts: 1-D sequences of strings, never a 2-D array.

    ``requires_fit=False``: usable zero-shot, so ``fit`` needs no ``y`` either (``fit(X)`` fits a calibrator).
    """
    tags.requires_fit = requires_fit
    tags.target_tags.required = requires_fit
    tags.input_tags.string = True
    tags.input_tags.two_d_array = False
    return tags


def check_params(self: Any) -> None:
    """Raise on a bad parameter of a Verbalizer ``self``, naming it and what is allowed."""
    if self.calibration is not None and not isinstance(self.calibration, Calibrator):
        get_calibrator(self.calibration)  # raises with the allowed names
    check_choice(self.demo_selection, SELECTIONS, "demo_selection", "Verbalizer")
    check_choice(self.aggregation, AGGREGATIONS, "aggregation", "Verbalizer")
    check_types(self)
    if self.demos_per_class is not None and self.n_demos:
        raise ParameterError(
            f"Verbalizer got n_demos={self.n_demos} (a total) and demos_per_class={self.demos_per_class}; "
            "give one of them (demos_per_class=k puts k demonstrations of each label in the prompt)"
        )
    checks = [("n_demos", self.n_demos, 0), ("batch_size", self.batch_size, 1)]
    checks += [(k, v, 1) for k, v in (("demos_per_class", self.demos_per_class),) if v is not None]
    checks += [(k, v, 1) for k, v in (("calibration_sample", self.calibration_sample),) if v is not None]
    for name, value, low in checks:
        check_int(value, name, "Verbalizer", low=low)


def type_problem(self: Any, name: str) -> str | None:
    """The message for a ``heads`` or ``fine_tuning`` parameter of the wrong type (None when it is right)."""
    value = getattr(self, name)
    if name == "fine_tuning":
        ok, kind = value is None or isinstance(value, FineTuneConfig), "a FineTuneConfig or None"
    else:
        listed = isinstance(value, list | tuple) and all(isinstance(h, Head) for h in value)
        ok, kind = value is None or isinstance(value, Head) or listed, "a Head, a list of Heads or None"
    if ok:
        return None
    return (
        f"The {name!r} parameter of Verbalizer must be {kind}. Got {value!r} instead. "
        f"Give e.g. {name}={'FineTuneConfig(epochs=3)' if name == 'fine_tuning' else 'Head(name=...)'}."
    )


def check_types(self: Any, names: Sequence[str] = ("heads", "fine_tuning")) -> None:
    """Raise a TypeError in the one message shape for a ``heads`` or ``fine_tuning`` value of the wrong type."""
    for name in names:
        problem = type_problem(self, name)
        if problem:
            raise TypeError(problem)


def binary_as_one_column(scores: np.ndarray) -> np.ndarray:
    """scikit-learn's shape of ``decision_function``: for two classes, the score of ``classes_[1]`` minus that of
    ``classes_[0]``, shape (n,); otherwise the scores as they are, (n, n_classes)."""
    return scores[:, 1] - scores[:, 0] if scores.ndim == 2 and scores.shape[1] == 2 else scores  # (n,)


# One lock per classifier: a first use (or a change of parameters) sets it up once while other threads
# wait, and no thread reads half-set-up state. Per classifier, so one that loads a model (a service's
# reload) never holds up another that scores meanwhile.
_SETUP_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_SETUP_LOCKS_GUARD = threading.Lock()


def ready(self: Any) -> None:
    """Set up on first use, and again when parameters changed since (sharing the loaded model)."""
    with _SETUP_LOCKS_GUARD:
        lock = _SETUP_LOCKS.setdefault(self, threading.RLock())
    with lock:
        _ready(self)


def _ready(self: Any) -> None:
    if not hasattr(self, "template_"):
        self._setup()
        return
    changed = [k for k, v in self.get_params(deep=False).items() if not same(v, self._seen_params.get(k))]
    if changed and not self._fitted:
        self._setup()
    elif changed and set(changed) <= set(RUNTIME_PARAMS):
        check_params(self)
        self._seen_params = copy.deepcopy(self.get_params(deep=False))
        base = self.__dict__.get("scorer_")
        if base is not None:
            self.scorer_ = base.with_settings(batch_size=self.batch_size)
    elif changed:
        raise NotFittedError(
            f"the parameters {changed} of this Verbalizer changed since fit(): call fit again "
            "(fit() without data for zero-shot use)"
        )
    if "scorer_" not in self.__dict__:  # unpickled without its model: load the shared one
        self.scorer_ = self._load_scorer()


def same(a: Any, b: Any) -> bool:
    """Whether a parameter still has the value it had at set-up (arrays and calibrators included)."""
    if isinstance(a, Calibrator) and type(a) is type(b):
        a, b = json.dumps(a.get_state(), default=str), json.dumps(b.get_state(), default=str)
    try:
        return a is b or (type(a) is type(b) and bool(np.all(a == b)))
    except (TypeError, ValueError):
        return False


def set_nested(self: Any, nested: dict[str, Any]) -> None:
    """Apply ``fine_tuning__<field>`` and ``heads__<name>__<field>`` parameters, each to a copy of the config."""
    if nested:
        check_types(self, sorted({k.split("__")[0] for k in nested}))
    for key, value in nested.items():
        if key.startswith("fine_tuning__"):
            self.fine_tuning = replace_config(self.fine_tuning, key, value)
        else:
            self.heads = replace_head(self.heads, key, value)


class Verbalizer(ClassifierMixin, BaseEstimator):
    """Classify texts by the next-word scores of a causal language model.

    A template turns each text into a prompt; the model reads the prompt once and the
    log-probabilities of each label's words at the next position decide the label.

    Parameters
    ----------
    template : str, Path or Template
        A TOML template file, a :class:`Template`, or an inline prompt string containing
        ``{text}`` (then ``labels`` is required).
    labels : dict of str to list of str, optional
        Label name -> label words. Required with an inline prompt; overrides a file's labels.
    model : str, Path, Scorer or None, default None
        None for the embedded default model (SmolLM2-135M-Instruct); a hub id such as ``"gpt2"``;
        a local directory; a ``.gguf`` file; or a ready :class:`Scorer`.
    calibration : {None, "auto", "contextual", "domain", "batch", "temperature", "prior"} or Calibrator, default None
        See :mod:`verbalize.calibration.calibrators` for what each does and when it helps; a
        :class:`~verbalize.calibration.calibrators.Calibrator` instance is copied, never fitted in place.
        ``"auto"`` uses ``"prior"`` (:mod:`verbalize.calibration.prior`) unless cross-validation on
        ``fit``'s labeled examples clearly prefers another (none included), and reports it in
        ``calibration_report_``; with ``fit(X)`` only, batch calibration fitted on ``X`` (8 texts or
        more); without ``fit``, none.
    n_demos : int, default 0
        Total number of demonstrations put in every prompt (``fit`` picks them); prefer ``demos_per_class``.
    demos_per_class : int, optional
        Demonstrations per label (balanced): ``demos_per_class * n_labels`` in all. Exclusive with ``n_demos``.
    calibration_sample : int or None, default 256
        At most this many of ``fit``'s texts (a random subset seeded by ``random_state``) are scored
        to fit the calibrator ("domain", "batch", "temperature", "auto"); None scores them all.
    demo_selection : {"balanced", "random", "first", "similar"}, default "balanced"
        ``"similar"`` gives each text its own ``n_demos`` nearest training texts (TF-IDF cosine, the
        nearest last); when fine-tuning, a training text's own row is never its demonstration.
    aggregation : {"logsumexp", "mean", "max"}, default "logsumexp"
        How the scores of a label's words combine into the label's score.
    batch_size : int, default 64
        Most prompts in one forward pass (a token budget also applies; see :class:`Scorer`).
    max_length : int, optional
        Token budget per prompt; defaults to the model's context window.
    device : str, default "auto"
    dtype : {"auto", "float32", "bfloat16", "float16", "int8"}, default "auto"
        The number format of the weights. ``"auto"`` takes the format measured fastest on this machine
        among float32, bfloat16 and int8 whose scores pass the exactness probe on the model, float32
        otherwise (measured once per model, machine and torch version, then read from the user's cache;
        see ``verbalize.engine.formats``; ``scorer_.dtype_choice`` says what was chosen and why). Name a
        format to force it, or set ``VERBALIZE_DTYPE``. ``"int8"`` quantizes the body's linear layers (see
        ``verbalize.engine.models.quantize``). Fine-tuning trains in float32 (``"auto"`` then loads
        float32); serve the saved result in int8 or bfloat16 by loading it with that dtype.
    random_state : int, optional
        Seeds demonstration selection.
    progress : bool, default False
        Show a progress bar while scoring.
    heads : Head or list of Head, optional
        Classification heads on the model's hidden states (the LM head stays). With heads,
        ``predict`` uses them; one head makes an ordinary classifier of its labels, several heads a
        multi-head one whose ``y`` is a dict {head name: labels} and whose outputs are dicts.
    fine_tuning : FineTuneConfig, optional
        Train the LM in ``fit`` (prompt-based: cross-entropy over the label words at the prompt's
        next position; full or LoRA). Needed for heads with ``training="joint"`` (default config then).

    Notes
    -----
    Nested parameters ``fine_tuning__<field>`` and ``heads__<head name>__<field>`` work in
    ``set_params`` and ``GridSearchCV`` grids (a changed copy of the frozen config is put in place).
    Parameters changed after a zero-shot ``predict`` apply at the next call, sharing the loaded model;
    after ``fit``, changing any but ``batch_size`` and ``progress`` needs ``fit`` again. A pickled
    classifier that was not fine-tuned holds no model: the shared one is loaded again on first use.

    Threads: ``predict``, ``predict_proba`` and the other prediction methods may be called on one
    classifier from several threads at once (a service's workers) and give what serial calls give; the
    first use sets the classifier up once. ``fit`` and ``set_params`` are not meant to run while other
    threads predict. A model object of your own is left as it was: scoring restores its attention
    implementation after each call, and fine-tuning trains a copy, seeded by ``random_state`` without
    touching torch's (or numpy's) global random state.

    Attributes
    ----------
    classes_ : ndarray of str
        Label names in template order; the columns of ``predict_proba``. A zero-shot classifier knows them
        from its template before any ``fit`` or ``predict`` (reading them loads no model); with ``heads``,
        they are the heads' labels, known after ``fit``.
    template_, scorer_, demos_, calibrator_
    heads_ : dict of str to FittedHead
        Fitted heads, when ``heads`` is given.
    training_ : TrainingResult
        History of the fine-tuning (loss and validation accuracy per epoch, best epoch, seconds).

    Examples
    --------
    >>> clf = Verbalizer(template="classify: {text} =>", labels={"spam": ["spam"], "ham": ["ham"]})
    >>> clf.predict(["win a free phone now", "lunch at noon?"])  # doctest: +SKIP
    array(['spam', 'ham'], dtype=object)
    """

    def __init__(
        self,
        *,
        template: str | Path | Template | None = None,
        labels: Mapping[str, Sequence[str]] | None = None,
        model: str | Path | Scorer | None = None,
        calibration: str | Calibrator | None = None,
        n_demos: int = 0,
        demos_per_class: int | None = None,
        calibration_sample: int | None = 256,
        demo_selection: str = "balanced",
        aggregation: str = "logsumexp",
        batch_size: int = 64,
        max_length: int | None = None,
        device: str = "auto",
        dtype: str = "auto",
        random_state: int | None = None,
        progress: bool = False,
        heads: Head | Sequence[Head] | None = None,
        fine_tuning: FineTuneConfig | None = None,
    ):
        self.template = template
        self.labels = labels
        self.model = model
        self.calibration = calibration
        self.n_demos = n_demos
        self.demos_per_class = demos_per_class
        self.calibration_sample = calibration_sample
        self.demo_selection = demo_selection
        self.aggregation = aggregation
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self.dtype = dtype
        self.random_state = random_state
        self.progress = progress
        self.heads = heads
        self.fine_tuning = fine_tuning

    def __sklearn_tags__(self) -> Any:
        return text_input_tags(super().__sklearn_tags__(), requires_fit=False)

    # -- parameters ------------------------------------------------------------------------------
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters by name; with ``deep``, also ``fine_tuning__<field>`` and ``heads__<name>__<field>``."""
        params = super().get_params(deep)
        # a ``heads`` value of the wrong type has no nested parameters: fit explains it (set_params must not raise)
        return params | head_params(self.heads) if deep and type_problem(self, "heads") is None else params

    def set_params(self, **params: Any) -> Verbalizer:
        """Set parameters; ``fine_tuning__epochs=3`` or ``heads__sentiment__C=0.1`` replace a copy of the config."""
        nested = {k: params.pop(k) for k in list(params) if k.startswith(("fine_tuning__", "heads__"))}
        super().set_params(**params)
        set_nested(self, nested)
        return self

    @property
    def calibration_report_(self) -> dict[str, Any]:
        """What the calibration chose and measured (``"auto"``: the choice, the rule and every method's CV
        scores; ``"prior"``, or auto choosing it: the last predict call's estimated label distribution).

        Read from the calibrator at each access, so it follows the latest call. Raises AttributeError when
        the calibration reports nothing (none, or a plain calibrator), as an unset fitted attribute does.
        """
        cal = self.__dict__.get("calibrator_")
        report = cal.report() if cal is not None else None
        if report is None:
            raise AttributeError("calibration_report_: this classifier's calibration reports nothing (yet)")
        return report

    # -- set-up ------------------------------------------------------------------------------
    def _setup(self) -> None:
        """Resolve parameters into template_, scorer_, label_tokens_, classes_ and clear fitted state."""
        self._check_params()
        self.template_ = t = resolve_template(self.template, self.labels)
        self.scorer_ = self._load_scorer()
        self.label_tokens_ = t.labels.encode(self.scorer_.tokenizer, t.label_prefix, t.render(t.sample_text))
        self.labels_ = np.array(list(t.labels), dtype=object)  # the label words' classes
        self.classes_: Any = self.labels_
        self.demos_: list[tuple[Row, str]] = []
        self.demo_pool_: list[tuple[Row, str]] = []
        self.calibrator_ = get_calibrator(self.calibration) if self.calibration is not None else None
        self.head_specs_ = as_heads(self.heads)
        self.heads_: dict[str, FittedHead] = {}
        self.fine_tuned_ = False
        self._fitted = False
        self._seen_params = copy.deepcopy(self.get_params(deep=False))

    def _load_scorer(self) -> Scorer:
        """The shared model (cached per process), wrapped with this classifier's batch size and budget."""
        trains = self.fine_tuning is not None or any(h.training == "joint" for h in as_heads(self.heads))
        dtype = "float32" if self.dtype == "auto" and trains else self.dtype  # training needs float32 weights
        with shown_if(self.progress):  # a cold cache converts the embedded model first (~20 s): a line says so
            return Scorer.resolve(
                self.model, self.device, dtype, batch_size=self.batch_size, max_length=self.max_length
            )

    def _check_params(self) -> None:
        check_params(self)

    def _ready(self) -> None:
        """Set up on first use, and again when parameters changed since (see :func:`ready`)."""
        ready(self)

    # -- fit -----------------------------------------------------------------------------------
    def fit(self, X: Any = None, y: Any = None, *, demo_pool: tuple[Any, Any] | None = None) -> Verbalizer:
        """Pick demonstrations, fine-tune, fit heads and the calibrator on training texts; returns self.

        Zero-shot use needs no ``fit``. ``y`` (label names from the template) is needed for
        demonstrations, fine-tuning and temperature calibration; ``X`` alone is enough for domain
        and batch calibration. With several heads, ``y`` is a dict {head name: labels}; a
        multi-label head takes a list of labels per text (or a 0/1 matrix).

        ``demo_pool=(texts, labels)``: draw demonstrations from this pool instead of ``(X, y)``;
        ``X`` is then only what the calibrator (at most ``calibration_sample`` texts of it), the heads
        and fine-tuning learn from. The chosen demonstrations are in ``demos_``.
        """
        self._setup()
        texts = self._rows(X) if X is not None else []
        needs_y = self.fine_tuning is not None
        ys, head_ys = split_targets(self.head_specs_, y, len(texts), list(self.labels_), needs_y)
        pool = None
        if demo_pool is not None:
            pool_texts = check_rows(demo_pool[0], self.template_.fields, "demo_pool[0]")
            pool = (pool_texts, split_targets([], demo_pool[1], len(pool_texts), list(self.labels_), True)[0])
        if self._n_demos():
            self.demos_, self.demo_pool_ = self._choose_demos(*(pool or (texts, ys)))
        joint = [h for h in self.head_specs_ if h.training == "joint"]
        config = self.fine_tuning or (FineTuneConfig() if joint else None)
        if config is not None:
            prompts = self._prompts(texts, leave_out_same=True)  # never a text's own row as its demonstration
            what = (self.label_tokens_, list(self.labels_), ys, head_ys, self.head_specs_, self.aggregation, config)
            self.scorer_, self.training_, joint_heads = train_classifier(
                self.scorer_, texts, prompts, *what, seed=self.random_state
            )
            self.heads_.update(joint_heads)
            self.fine_tuned_ = True
        probes = [h for h in self.head_specs_ if h.training == "probe" or h.multi_label]
        if probes:
            fit_probes(probes, self._features(texts, [h.pool for h in probes]), head_ys, self.heads_)
        if self.head_specs_:
            self.heads_ = {h.name: self.heads_[h.name] for h in self.head_specs_}
            self.classes_ = one_or_all({n: h.classes for n, h in self.heads_.items()})
        if self.calibrator_ is not None:
            y_index = np.array([list(self.labels_).index(v) for v in ys]) if ys is not None else None
            folds = self._fold_scorer(texts, ys) if self._n_demos() and pool is None else None
            sample = self.calibration_sample
            n = len(texts) if sample is None else min(len(texts), sample)
            with shown_if(self.progress), stage(f"fitting calibration={self.calibration!r} on {n} texts"):
                fit_calibrator(self.calibrator_, self._fit_scores, texts, y_index, self.random_state, folds, sample)
        self._fitted = True
        return self

    def _rows(self, X: Any) -> list[Any]:
        """``X`` checked against the template's fields: str rows, or dicts {field: text} with several fields."""
        return check_rows(X, self.template_.fields)

    def _n_demos(self) -> int:
        """Demonstrations in all: ``n_demos``, or ``demos_per_class`` times the number of labels."""
        return self.n_demos if self.demos_per_class is None else self.demos_per_class * len(self.labels_)

    def _choose_demos(self, texts: list[Row], ys: Any) -> tuple[list[tuple[Row, str]], list[tuple[Row, str]]]:
        args = (self._n_demos(), list(self.labels_), self.demo_selection, self.random_state)
        return choose_demos(texts, ys, *args)

    def _fold_scorer(self, texts: list[str], ys: Any) -> Any:
        """For calibration='auto': rows -> raw scores with demonstrations drawn from those rows only."""

        def scorer(rows: list[int]) -> ScoreTexts:
            demos, pool = self._choose_demos([texts[i] for i in rows], [ys[i] for i in rows])
            return lambda xs: self._label_scores(xs, raw=True, demos=(demos, pool))

        return scorer

    # -- predict -------------------------------------------------------------------------------
    def decision_function(self, X: Any) -> Any:
        """Confidence scores that agree with :meth:`predict`, in scikit-learn's shapes.

        For two classes, shape (n,): the log-odds of ``classes_[1]`` against ``classes_[0]`` (positive means
        ``classes_[1]``), so ``scoring="roc_auc"`` works in ``cross_val_score`` and ``GridSearchCV``; otherwise
        shape (n, n_classes). Without heads these are calibrated log-probabilities, as :meth:`predict_log_proba`
        (for two classes, the difference of its columns); with heads, each head's logits (a multi-label head's
        are per-label log-odds, (n, n_classes) whatever the number of labels), a dict {head name: array} with
        several heads. The uncalibrated label scores are :meth:`label_scores`.
        """
        self._ready()
        if not self.head_specs_:
            return binary_as_one_column(self._word_log_proba(self._rows(X)))
        logits = {h.name: self.heads_[h.name].logits(f) for h, f in self._head_features(self._rows(X))}
        return one_or_all(
            {n: z if self.heads_[n].head.multi_label else binary_as_one_column(z) for n, z in logits.items()}
        )

    def label_scores(self, X: Any) -> np.ndarray:
        """Uncalibrated label scores: each label's aggregated word log-probabilities, shape (n, n_labels),
        columns following ``labels_`` (two columns for two labels). What calibrators are fitted on."""
        self._ready()
        return self._label_scores(self._rows(X), raw=True)

    def predict_log_proba(self, X: Any) -> Any:
        """Calibrated log-probabilities, shape (n, n_classes), columns following ``classes_``.

        With several heads: a dict {head name: array}. A multi-label head's columns are the log of
        each label's own probability (sigmoid), not a distribution over labels.
        """
        self._ready()
        if not self.head_specs_:
            return self._word_log_proba(self._rows(X))
        proba = self.predict_proba(X)
        by_head = proba if isinstance(proba, dict) else {"": proba}
        return one_or_all({k: np.log(np.maximum(v, 1e-300)) for k, v in by_head.items()})

    def predict_proba(self, X: Any) -> Any:
        """Calibrated probabilities, shape (n, n_classes), columns following ``classes_``
        (a dict {head name: array} with several heads)."""
        self._ready()
        texts = self._rows(X)
        if self.head_specs_:
            return one_or_all({h.name: self.heads_[h.name].predict_proba(f) for h, f in self._head_features(texts)})
        return np.exp(self._word_log_proba(texts))

    def predict(self, X: Any) -> Any:
        """The most probable label of each text, as an array of label names.

        A multi-label head gives a 0/1 matrix (n, n_classes); several heads give a dict {head name: array}.
        """
        self._ready()
        if self.head_specs_:
            return one_or_all({h.name: self.heads_[h.name].predict(f) for h, f in self._head_features(self._rows(X))})
        log_proba = self._word_log_proba(self._rows(X))
        return self.labels_[log_proba.argmax(axis=1)] if len(log_proba) else np.array([], dtype=object)

    def build_prompts(self, X: Any) -> Prompts:
        """What :meth:`predict_proba` gives the model for ``X``: its prompts, each text's prefix, spans.

        For callers that score several classifiers' prompts in one ``scorer_.score_words`` call (the
        service's micro-batcher): ``scorer_.score_words(q.prompts, label_tokens_, q.spans, prefix)`` for
        each ``prefix, rows`` of ``p.groups()`` (with ``q = p.part(rows)``; one group unless texts kept
        different numbers of demonstrations) gives the word log-probabilities of those rows, which
        :meth:`calibrate_words` turns into probabilities.
        Rows are checked against the template's fields first (see :func:`verbalize.rows.check_rows`).
        """
        self._ready()
        return self._prompts(self._rows(X))

    def calibrate_words(self, words: np.ndarray, X: Any) -> np.ndarray:
        """Probabilities (n, n_classes) from label-word log-probabilities (n, n_words) of ``X``'s prompts.

        The same aggregation and calibration as :meth:`predict_proba` (calibrators that look at the
        texts, such as ``"batch"``, see ``X``): with ``p = build_prompts(X)`` and ``words`` its word
        log-probabilities (see :meth:`build_prompts`), ``calibrate_words(words, X)`` equals ``predict_proba(X)``.
        """
        self._ready()
        return np.exp(self._from_words(np.asarray(words), self._rows(X)))

    def outputs(self, X: Any) -> dict[str, np.ndarray]:
        """Label-word probabilities (key ``"labels"``, columns ``labels_``) and every head's
        probabilities (key: the head's name), all from one forward pass per batch."""
        self._ready()
        self._check_heads_fitted()
        texts = self._rows(X)
        p = self._prompts(texts)
        pools = [h.pool for h in self.head_specs_]
        words, *feats = per_prefix(p, lambda x, s, pre: self._outputs(x, self.label_tokens_, pools, s, pre))
        out = {"labels": np.exp(self._from_words(words, texts))}
        for h, f in zip(self.head_specs_, feats, strict=True):
            out[h.name] = self.heads_[h.name].predict_proba(f)
        return out

    def _word_log_proba(self, texts: list[str]) -> np.ndarray:
        return self._label_scores(texts) if texts else np.zeros((0, len(self.labels_)))

    def _head_features(self, texts: list[str]) -> list[tuple[Head, np.ndarray]]:
        self._check_heads_fitted()
        feats = self._features(texts, [h.pool for h in self.head_specs_])
        return list(zip(self.head_specs_, feats, strict=True))

    def _check_heads_fitted(self) -> None:
        missing = [h.name for h in self.head_specs_ if h.name not in self.heads_]
        if missing:
            raise NotFittedError(f"heads {missing} are not fitted: call fit(X, y) first")

    def _features(self, texts: list[str], pools: list[tuple[str, int]]) -> list[np.ndarray]:
        """Pooled hidden states of the rendered prompts, one array per pool, from one pass."""
        return per_prefix(self._prompts(texts), lambda x, s, pre: self._outputs(x, None, pools, s, pre))

    def _outputs(self, prompts: list[str], tokens: Any, pools: list[tuple[str, int]], spans: Any, prefix: str) -> list:
        """Word scores (when ``tokens`` is given) and each pool's features: the arrays of one ``scorer_.outputs``."""
        words, feats = self.scorer_.outputs(prompts, tokens, pools, spans, prefix, self.progress)
        return ([words] if words is not None else []) + feats

    def _label_scores(
        self, texts: list[str], raw: bool = False, demos: Any = None, progress: bool | None = None
    ) -> np.ndarray:
        p, bar = self._prompts(texts, demos=demos), self.progress if progress is None else progress
        [words] = per_prefix(p, lambda x, s, pre: [self.scorer_.score_words(x, self.label_tokens_, s, pre, bar)])
        return self._from_words(words, texts, raw)

    def _from_words(self, words: np.ndarray, texts: list[str], raw: bool = False) -> np.ndarray:
        """Word log-probs (n, n_words) -> label scores (raw) or calibrated label log-probabilities."""
        scores = aggregate(words, self.label_tokens_.word_label, len(self.labels_), self.aggregation)
        if raw:
            return scores
        if self.calibrator_ is None:
            out = log_softmax(scores)
        else:
            out = calibrate(self.calibrator_, scores, texts, self._raw_scores, self.random_state)
        cal = self.calibrator_
        what = f"calibration={cal.name!r}" if cal is not None else "the prompt (no calibration)"
        warn_if_collapsed(out, list(self.labels_), what)
        return out

    def _raw_scores(self, texts: list[str]) -> np.ndarray:
        return self._label_scores(texts, raw=True)

    def _fit_scores(self, texts: list[str]) -> np.ndarray:
        # what calibrators are fitted on (1,000 texts for the CLI's batch calibration): a bar when progress is shown
        return self._label_scores(texts, raw=True, progress=self.progress or progress_shown())

    def _prompts(self, texts: list[str], leave_out_same: bool = False, demos: Any = None) -> Prompts:
        """What the model reads for these texts; ``leave_out_same`` for training prompts (see PromptBuilder).

        ``demos``: (shared demonstrations, per-text pool) instead of the fitted ones (cross-validation).
        """
        budget = (self.scorer_.tokenizer, self.scorer_.context_length, reserved_tokens(self.label_tokens_))
        shared, pool = demos if demos is not None else (self.demos_, self.demo_pool_)
        builder = PromptBuilder(self.template_, shared, pool, self._n_demos(), *budget)
        return builder.build(texts, leave_out_same)

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the classifier to a directory, atomically; see :func:`verbalize.persistence.save`."""
        self._ready()
        return persistence.save(self, path)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the (fine-tuned) language model and its tokenizer as a standard Hugging Face directory:
        ``AutoModelForCausalLM.from_pretrained(path)`` loads it and ``generate`` works as before."""
        self._ready()
        return persistence.save_model(self.scorer_, path)

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> Verbalizer:
        """Load a classifier written by :meth:`save`; ``overrides`` replace saved parameters (e.g. device)."""
        saved = persistence.load(path, cls._get_param_names())
        clf = cls(**(saved.params | overrides))
        clf._setup()
        clf.fine_tuned_, clf.demos_, clf.demo_pool_ = saved.fine_tuned, saved.demos, saved.demo_pool
        clf.calibrator_ = saved.calibrator if saved.calibrator is not None else clf.calibrator_
        if saved.heads:
            clf.heads_ = saved.heads
            clf.classes_ = one_or_all({n: h.classes for n, h in saved.heads.items()})
        clf._fitted = True
        return clf

    def __getstate__(self) -> dict[str, Any]:
        return persistence.pickle_state(super().__getstate__())

    def __getattr__(self, name: str) -> Any:
        """``classes_`` of a zero-shot classifier before its set-up: the template's labels (no model is loaded).

        Only reached when normal look-up fails: once set up (first fit or predict), ``classes_`` is stored.
        """
        if name != "classes_" or name in self.__dict__ or "template" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        if self.__dict__.get("heads") is not None:
            raise AttributeError("classes_ of a Verbalizer with heads are the heads' labels, known after fit")
        try:
            template = resolve_template(self.template, self.labels)
        except (ValueError, TypeError, OSError) as exc:  # hasattr() must stay False, not raise
            raise AttributeError(f"classes_ is not available: the template cannot be read: {exc}") from exc
        return np.array(list(template.labels), dtype=object)
