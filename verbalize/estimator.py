"""Verbalizer: a scikit-learn classifier that asks a causal LM which label word comes next."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError

from .calibration import CALIBRATORS, BatchCalibrator, DomainCalibrator, get_calibrator, log_softmax
from .demos import SELECTIONS, select_demos, similar_demos
from .errors import did_you_mean
from .inputs import check_labels, check_texts
from .labels import LabelTokens, LabelWords
from .scoring import AGGREGATIONS, Scorer, aggregate
from .template import Template, load_template

logger = logging.getLogger(__name__)

CONTENT_FREE = ("N/A", "", "[MASK]")
N_DOMAIN_SAMPLES = 20
FORMAT_VERSION = 1


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
    calibration : {None, "contextual", "domain", "batch", "temperature"}, default None
        See :mod:`verbalize.calibration` for what each does and when it helps.
    n_demos : int, default 0
        Demonstrations from the training set put in every prompt (``fit`` picks them).
    demo_selection : {"balanced", "random", "first", "similar"}, default "balanced"
    aggregation : {"logsumexp", "mean", "max"}, default "logsumexp"
        How the scores of a label's words combine into the label's score.
    batch_size : int, default 64
        Most prompts in one forward pass (a token budget also applies; see :class:`Scorer`).
    max_length : int, optional
        Token budget per prompt; defaults to the model's context window.
    device : str, default "auto"
    dtype : {"float32", "bfloat16", "float16"}, default "float32"
    random_state : int, optional
        Seeds demonstration selection.
    progress : bool, default False
        Show a progress bar while scoring.

    Attributes
    ----------
    classes_ : ndarray of str
        Label names in template order; the columns of ``predict_proba``.
    template_, scorer_, demos_, calibrator_

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
        calibration: str | None = None,
        n_demos: int = 0,
        demo_selection: str = "balanced",
        aggregation: str = "logsumexp",
        batch_size: int = 64,
        max_length: int | None = None,
        device: str = "auto",
        dtype: str = "float32",
        random_state: int | None = None,
        progress: bool = False,
    ):
        self.template = template
        self.labels = labels
        self.model = model
        self.calibration = calibration
        self.n_demos = n_demos
        self.demo_selection = demo_selection
        self.aggregation = aggregation
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self.dtype = dtype
        self.random_state = random_state
        self.progress = progress

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        return tags

    # -- set-up ------------------------------------------------------------------------------
    def _setup(self) -> None:
        """Resolve parameters into template_, scorer_, label_tokens_, classes_ (zero-shot needs no fit)."""
        self._check_params()
        self.template_ = _resolve_template(self.template, self.labels)
        if isinstance(self.model, Scorer):
            self.scorer_ = self.model
        else:
            self.scorer_ = Scorer.from_pretrained(self.model, self.device, self.dtype)
        self.scorer_ = Scorer(
            self.scorer_.model, self.scorer_.tokenizer, self.batch_size, self.max_length, self.scorer_.max_tokens
        )
        context = self.template_.render(self.template_.sample_text)
        self.label_tokens_: LabelTokens = self.template_.labels.encode(
            self.scorer_.tokenizer, self.template_.label_prefix, context
        )
        self.classes_ = np.array(list(self.template_.labels), dtype=object)
        self.demos_: list[tuple[str, str]] = []
        self.demo_pool_: list[tuple[str, str]] = []
        self.calibrator_ = get_calibrator(self.calibration) if self.calibration else None

    def _check_params(self) -> None:
        checks: list[tuple[str, Any, list[Any]]] = [
            ("calibration", self.calibration, [None, *CALIBRATORS, *(f"{c}.v1" for c in CALIBRATORS)]),
            ("demo_selection", self.demo_selection, list(SELECTIONS)),
            ("aggregation", self.aggregation, list(AGGREGATIONS)),
        ]
        for name, value, allowed in checks:
            if value not in allowed:
                shown = [a for a in allowed if a is None or "." not in a]
                raise ValueError(
                    f"The {name!r} parameter of Verbalizer must be one of {shown}. Got {value!r} instead."
                    f"{did_you_mean(str(value), [a for a in allowed if a])}"
                )
        for name, value in (("n_demos", self.n_demos), ("batch_size", self.batch_size)):
            if not isinstance(value, int | np.integer) or value < (0 if name == "n_demos" else 1):
                raise ValueError(
                    f"The {name!r} parameter of Verbalizer must be an int >= "
                    f"{0 if name == 'n_demos' else 1}. Got {value!r} instead."
                )

    def _ready(self) -> None:
        if not hasattr(self, "scorer_"):
            self._setup()

    # -- fit -----------------------------------------------------------------------------------
    def fit(self, X: Any = None, y: Any = None) -> Verbalizer:
        """Pick demonstrations and fit the calibrator on training texts; returns self.

        Zero-shot use needs no ``fit``. ``y`` (label names from the template) is needed for
        demonstrations and for temperature calibration; ``X`` alone is enough for domain and
        batch calibration.
        """
        self._setup()
        texts = check_texts(X) if X is not None else []
        ys = check_labels(y, list(self.classes_)) if y is not None else None
        if ys is not None and len(ys) != len(texts):
            raise ValueError(f"X and y have different lengths: {len(texts)} texts, {len(ys)} labels")
        if self.n_demos:
            if ys is None:
                raise ValueError(f"n_demos={self.n_demos} needs labeled examples: call fit(X, y)")
            if self.demo_selection == "similar":
                self.demo_pool_ = list(zip(texts, ys, strict=True))
            else:
                idx = select_demos(ys, self.n_demos, list(self.classes_), self.demo_selection, self.random_state)
                self.demos_ = [(texts[i], ys[i]) for i in idx]
        self._fit_calibrator(texts, ys)
        return self

    def _fit_calibrator(self, texts: list[str], ys: list[str] | None) -> None:
        cal = self.calibrator_
        if cal is None:
            return
        if cal.name == "contextual":
            cal.fit(self._label_scores(list(CONTENT_FREE), raw=True))
        elif cal.name == "domain" and texts:
            cal.fit(self._label_scores(_domain_texts(texts, self.random_state), raw=True))
        elif cal.name == "batch" and texts:
            cal.fit(self._label_scores(texts, raw=True))
        elif cal.name == "temperature":
            if ys is None:
                raise ValueError("calibration='temperature' needs labeled examples: call fit(X, y)")
            index = {c: i for i, c in enumerate(self.classes_)}
            cal.fit(self._label_scores(texts, raw=True), np.array([index[v] for v in ys]))

    # -- predict -------------------------------------------------------------------------------
    def decision_function(self, X: Any) -> np.ndarray:
        """Uncalibrated label scores (log of each label's word probabilities), shape (n, n_classes)."""
        self._ready()
        return self._label_scores(check_texts(X), raw=True)

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """Calibrated log-probabilities, shape (n, n_classes), columns following ``classes_``."""
        self._ready()
        texts = check_texts(X)
        return self._label_scores(texts) if texts else np.zeros((0, len(self.classes_)))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Calibrated probabilities, shape (n, n_classes), columns following ``classes_``."""
        return np.exp(self.predict_log_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable label of each text, as an array of label names."""
        log_proba = self.predict_log_proba(X)
        return self.classes_[log_proba.argmax(axis=1)] if len(log_proba) else np.array([], dtype=object)

    def _label_scores(self, texts: list[str], raw: bool = False) -> np.ndarray:
        t, scorer = self.template_, self.scorer_
        prompts, spans = t.spans(texts)
        if self.demo_pool_:
            pool_texts = [x for x, _ in self.demo_pool_]
            picks = similar_demos(pool_texts, texts, self.n_demos)
            shared = t.prefix()  # the instruction, shared by all; each text's own demonstrations follow it
            heads = [t.prefix([self.demo_pool_[i] for i in pick])[len(shared) :] for pick in picks]
            prompts = [h + p for h, p in zip(heads, prompts, strict=True)]
            spans = [(a + len(h), b + len(h)) for h, (a, b) in zip(heads, spans, strict=True)]
            prefix = shared
        else:
            prefix = self._fitting_prefix(prompts)
        words = scorer.score_words(prompts, self.label_tokens_, spans, prefix, self.progress)
        scores = aggregate(words, self.label_tokens_.word_label, len(self.classes_), self.aggregation)
        if raw:
            return scores
        return log_softmax(scores) if self.calibrator_ is None else self._calibrate(scores, texts)

    def _calibrate(self, scores: np.ndarray, texts: list[str]) -> np.ndarray:
        cal = self.calibrator_
        assert cal is not None
        if cal.name == "contextual" and not hasattr(cal, "log_prior_"):
            self._fit_calibrator([], None)  # content-free inputs need no data: fit on first use
        if isinstance(cal, DomainCalibrator) and not hasattr(cal, "log_prior_"):
            prior = DomainCalibrator().fit(self._label_scores(_domain_texts(texts, self.random_state), raw=True))
            return prior.transform(scores)
        if not hasattr(cal, "log_prior_") and not hasattr(cal, "temperature_") and not isinstance(cal, BatchCalibrator):
            raise NotFittedError(f"calibration={self.calibration!r} needs fit(X, y) before predict")
        return cal.transform(scores)

    def _fitting_prefix(self, prompts: list[str]) -> str:
        """The shared prefix, with demonstrations dropped from the end until the longest prompt fits."""
        t, scorer = self.template_, self.scorer_
        demos = list(self.demos_)
        prefix = t.prefix(demos)
        if not demos or not prompts:
            return prefix
        longest = max(len(x) for x in scorer.tokenizer(prompts, add_special_tokens=False)["input_ids"])
        room = max(len(ids) for ids in self.label_tokens_.word_ids) + 1
        while demos and len(scorer.tokenizer(prefix)["input_ids"]) + longest + room > scorer.context_length:
            demos.pop()
            prefix = t.prefix(demos)
        if len(demos) < len(self.demos_):
            logger.warning(
                "prompt budget: kept %d of %d demonstrations so that the longest text fits in %d tokens",
                len(demos),
                len(self.demos_),
                scorer.context_length,
            )
        return prefix

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``verbalize.json`` (parameters, template, demos, calibrator) and, for an in-memory
        model, its weights as safetensors in ``model/``. No pickle."""
        self._ready()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        params = self.get_params()
        model = params["model"]
        if isinstance(model, Scorer):
            model.model.save_pretrained(path / "model")
            model.tokenizer.save_pretrained(path / "model")
            params["model"] = "model"
        elif model is not None:
            params["model"] = str(model)
        params["template"], params["labels"] = None, None
        cal = self.calibrator_
        state = {
            "format_version": FORMAT_VERSION,
            "params": params,
            "template": {
                f.name: getattr(self.template_, f.name)
                for f in dataclasses.fields(Template)
                if f.name not in ("labels", "source")
            }
            | {"labels": dict(self.template_.labels)},
            "demos": self.demos_,
            "demo_pool": self.demo_pool_,
            "calibrator": {"name": cal.name, "state": cal.get_state()} if cal else None,
        }
        (path / "verbalize.json").write_text(json.dumps(state, indent=2, ensure_ascii=False), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> Verbalizer:
        """Load a classifier written by :meth:`save`; ``overrides`` replace saved parameters (e.g. device)."""
        path = Path(path)
        file = path / "verbalize.json"
        if not file.is_file():
            raise FileNotFoundError(f"{file} not found: is {path} a directory written by Verbalizer.save?")
        state = json.loads(file.read_text(encoding="utf-8"))
        params = state["params"]
        if params["model"] == "model" and (path / "model").is_dir():
            params["model"] = str(path / "model")
        params["template"] = Template(**state["template"], source=str(file))
        clf = cls(**(params | overrides))
        clf._setup()
        clf.demos_ = [tuple(d) for d in state["demos"]]
        clf.demo_pool_ = [tuple(d) for d in state["demo_pool"]]
        if state["calibrator"]:
            clf.calibrator_ = CALIBRATORS[state["calibrator"]["name"]].from_state(state["calibrator"]["state"])
        return clf


def _resolve_template(template: Any, labels: Mapping[str, Sequence[str]] | None) -> Template:
    words = LabelWords(labels) if labels is not None else None
    if isinstance(template, Template):
        return dataclasses.replace(template, labels=words) if words is not None else template
    if template is None:
        raise ValueError(
            "Verbalizer needs template=: a TOML file such as 'templates/sst2.toml', a Template, "
            "or a prompt string with {text} together with labels={label: [words]}"
        )
    if isinstance(template, str) and "{text}" in template:
        if labels is None:
            raise ValueError("an inline prompt needs labels=, e.g. labels={'spam': ['spam'], 'ham': ['ham']}")
        return Template(prompt=template, labels=words)  # type: ignore[arg-type]
    loaded = load_template(template)
    return dataclasses.replace(loaded, labels=words) if words is not None else loaded


def _domain_texts(texts: Sequence[str], random_state: int | None, n: int = N_DOMAIN_SAMPLES) -> list[str]:
    """Random bags of in-domain words, each as long as an average text (Fei et al. 2023)."""
    words = [w for t in texts for w in t.split()]
    if not words:
        return list(CONTENT_FREE)
    rng = np.random.default_rng(random_state)
    length = max(1, round(len(words) / max(len(texts), 1)))
    return [" ".join(rng.choice(words, size=length)) for _ in range(n)]
