"""Verbalizer: a scikit-learn classifier that asks a causal LM which label word comes next."""

from __future__ import annotations

import copy
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
from .finetune import FineTuneConfig, Objective, TrainingResult, fine_tune
from .heads import FittedHead, Head, JointHeads, fit_probe, head_classes, head_targets, tune_thresholds
from .inputs import check_labels, check_texts
from .labels import LabelTokens, LabelWords
from .models import _quiet, is_quantized, quantize
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
        ``"similar"`` gives each text its own ``n_demos`` nearest training texts (TF-IDF cosine, the
        nearest last); when fine-tuning, a training text's own row is never its demonstration.
    aggregation : {"logsumexp", "mean", "max"}, default "logsumexp"
        How the scores of a label's words combine into the label's score.
    batch_size : int, default 64
        Most prompts in one forward pass (a token budget also applies; see :class:`Scorer`).
    max_length : int, optional
        Token budget per prompt; defaults to the model's context window.
    device : str, default "auto"
    dtype : {"float32", "bfloat16", "float16", "int8"}, default "float32"
        ``"int8"`` quantizes the body's linear layers (see ``verbalize.models.quantize``); fine-tuning
        trains in float32 and then serves the result in int8.
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

    Attributes
    ----------
    classes_ : ndarray of str
        Label names in template order; the columns of ``predict_proba``.
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
        heads: Head | Sequence[Head] | None = None,
        fine_tuning: FineTuneConfig | None = None,
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
        self.heads = heads
        self.fine_tuning = fine_tuning

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
        self.labels_ = np.array(list(self.template_.labels), dtype=object)  # the label words' classes
        self.classes_: Any = self.labels_
        self.demos_: list[tuple[str, str]] = []
        self.demo_pool_: list[tuple[str, str]] = []
        self.calibrator_ = get_calibrator(self.calibration) if self.calibration else None
        self.head_specs_ = _as_heads(self.heads)
        self.heads_: dict[str, FittedHead] = {}
        self.fine_tuned_ = False

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
        if self.fine_tuning is not None and not isinstance(self.fine_tuning, FineTuneConfig):
            raise TypeError(f"fine_tuning must be a FineTuneConfig, got {type(self.fine_tuning).__name__}")
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
        """Pick demonstrations, fine-tune, fit heads and the calibrator on training texts; returns self.

        Zero-shot use needs no ``fit``. ``y`` (label names from the template) is needed for
        demonstrations, fine-tuning and temperature calibration; ``X`` alone is enough for domain
        and batch calibration. With several heads, ``y`` is a dict {head name: labels}; a
        multi-label head takes a list of labels per text (or a 0/1 matrix).
        """
        self._setup()
        texts = check_texts(X) if X is not None else []
        ys, head_ys = self._split_targets(y, len(texts))
        if self.n_demos:
            if ys is None:
                raise ValueError(f"n_demos={self.n_demos} needs labeled examples of the template's labels")
            if self.demo_selection == "similar":
                self.demo_pool_ = list(zip(texts, ys, strict=True))
            else:
                idx = select_demos(ys, self.n_demos, list(self.labels_), self.demo_selection, self.random_state)
                self.demos_ = [(texts[i], ys[i]) for i in idx]
        joint = [h for h in self.head_specs_ if h.training == "joint"]
        config = self.fine_tuning or (FineTuneConfig() if joint else None)
        if config is not None:
            self._fine_tune(config, texts, ys, head_ys)
        probes = [h for h in self.head_specs_ if h.training == "probe" or h.multi_label]
        if probes:
            feats = self._features(texts, [h.pool for h in probes])
            for h, f in zip(probes, feats, strict=True):
                classes, target = head_ys[h.name]
                if h.training == "probe":
                    self.heads_[h.name] = fit_probe(h, f, target, classes)
                fitted = self.heads_[h.name]
                if h.multi_label:
                    fitted.threshold = tune_thresholds(fitted.predict_proba(f), target)
        if self.head_specs_:
            self.heads_ = {h.name: self.heads_[h.name] for h in self.head_specs_}
            self.classes_ = _one_or_all({n: h.classes for n, h in self.heads_.items()})
        self._fit_calibrator(texts, ys)
        return self

    def _split_targets(self, y: Any, n: int) -> tuple[list[str] | None, dict[str, tuple[list[str], np.ndarray]]]:
        """Template-label targets (for label words, demos, calibration) and each head's (classes, targets)."""
        heads = self.head_specs_
        if y is None:
            if heads or self.fine_tuning is not None:
                raise ValueError("fit needs labels y for heads and fine-tuning")
            return None, {}
        if len(heads) > 1:
            if not isinstance(y, Mapping):
                raise TypeError(
                    f"with {len(heads)} heads, y must be a dict {{head name: labels}} "
                    f"with keys {[h.name for h in heads]}"
                )
            missing = [h.name for h in heads if h.name not in y]
            if missing:
                raise ValueError(f"y has no labels for heads {missing}; its keys are {list(y)}")
            per_head = {h.name: y[h.name] for h in heads}
        else:
            per_head = {h.name: y for h in heads}
        head_ys = {}
        for h in heads:
            values = per_head[h.name]
            values = list(values) if not hasattr(values, "shape") or np.asarray(values).ndim == 1 else values
            if len(values) != n:
                raise ValueError(f"X and y of head {h.name!r} have different lengths: {n} texts, {len(values)} labels")
            classes = head_classes(h, values, list(self.labels_))
            head_ys[h.name] = (classes, head_targets(h, values, classes))
        ys = None
        if not heads:
            ys = check_labels(y, list(self.labels_))
        else:  # the label words are trained on the first single-label head that has the template's labels
            for h in heads:
                classes, target = head_ys[h.name]
                if not h.multi_label and classes == list(self.labels_):
                    ys = [classes[i] for i in target]
                    break
        if ys is not None and len(ys) != n:
            raise ValueError(f"X and y have different lengths: {n} texts, {len(ys)} labels")
        return ys, head_ys

    def _fine_tune(
        self,
        config: FineTuneConfig,
        texts: list[str],
        ys: list[str] | None,
        head_ys: dict[str, tuple[list[str], np.ndarray]],
    ) -> None:
        base = self.scorer_
        if is_quantized(base.model):  # training stays float32: train a float32 copy, serve it in int8 below
            base = Scorer.from_pretrained(self.model, self.device, "float32")
        # Train a copy: the loaded model is shared (cached per process) with other classifiers.
        self.scorer_ = Scorer(
            copy.deepcopy(base.model), base.tokenizer, base.batch_size, self.max_length, base.max_tokens
        )
        scorer = self.scorer_
        joint = [h for h in self.head_specs_ if h.training == "joint"]
        index = {c: i for i, c in enumerate(self.labels_)}
        objective = Objective(
            label_tokens=self.label_tokens_,
            word_label=self.label_tokens_.word_label,
            n_labels=len(self.labels_),
            aggregation=self.aggregation,
            y=np.array([index[v] for v in ys]) if ys is not None else None,
            heads=joint,
            head_targets=[head_ys[h.name][1] for h in joint],
            joint=JointHeads(joint, [len(head_ys[h.name][0]) for h in joint], scorer.model.config.hidden_size)
            if joint
            else None,
            prompt_weight=config.prompt_weight,
        )
        if objective.y is None and not joint:
            raise ValueError(
                "fine-tuning needs labels of the template's labels, or a head with training='joint'; "
                f"the template's labels are {list(self.labels_)}"
            )
        # The training prompts are built as prediction's are; with demo_selection="similar" a text's
        # own row (its label) is never its demonstration.
        prompts, spans, prefix = self._prompts(texts, leave_out_same=True)
        room = max(len(w) for w in self.label_tokens_.word_ids) - 1
        ids = scorer.encode(prompts, spans, prefix, room).ids
        lm_ids = None
        if config.lm_weight:
            lead = list(scorer._lead)
            lm_source = list(config.lm_texts) if config.lm_texts is not None else texts
            lm_ids = [
                (lead + x)[: config.lm_max_tokens]
                for x in scorer.tokenizer(lm_source, add_special_tokens=False)["input_ids"]
            ]
        self.training_: TrainingResult = fine_tune(scorer, ids, objective, config, lm_ids, self.random_state)
        self.fine_tuned_ = True
        if self.dtype == "int8":  # keep the float32 weights for save(); predict with an int8 copy
            self.float_model_ = scorer.model
            self.scorer_ = Scorer(
                quantize(copy.deepcopy(scorer.model)), scorer.tokenizer, scorer.batch_size, self.max_length
            )
        if objective.joint is not None:
            for h in joint:
                layer = objective.joint.linear(h.name)
                classes = np.array(head_ys[h.name][0], dtype=object)
                self.heads_[h.name] = FittedHead(h, classes, layer.weight.detach().cpu(), layer.bias.detach().cpu())

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
            index = {c: i for i, c in enumerate(self.labels_)}
            cal.fit(self._label_scores(texts, raw=True), np.array([index[v] for v in ys]))

    # -- predict -------------------------------------------------------------------------------
    def decision_function(self, X: Any) -> np.ndarray:
        """Uncalibrated label scores (log of each label's word probabilities), shape (n, n_classes)."""
        self._ready()
        return self._label_scores(check_texts(X), raw=True)

    def predict_log_proba(self, X: Any) -> Any:
        """Calibrated log-probabilities, shape (n, n_classes), columns following ``classes_``.

        With several heads: a dict {head name: array}. A multi-label head's columns are the log of
        each label's own probability (sigmoid), not a distribution over labels.
        """
        self._ready()
        if not self.head_specs_:
            return self._word_log_proba(check_texts(X))
        proba = self.predict_proba(X)
        if isinstance(proba, dict):
            return {k: np.log(np.maximum(v, 1e-300)) for k, v in proba.items()}
        return np.log(np.maximum(proba, 1e-300))

    def predict_proba(self, X: Any) -> Any:
        """Calibrated probabilities, shape (n, n_classes), columns following ``classes_``
        (a dict {head name: array} with several heads)."""
        self._ready()
        texts = check_texts(X)
        if self.head_specs_:
            return _one_or_all(self._head_proba(texts))
        return np.exp(self._word_log_proba(texts))

    def predict(self, X: Any) -> Any:
        """The most probable label of each text, as an array of label names.

        A multi-label head gives a 0/1 matrix (n, n_classes); several heads give a dict {head name: array}.
        """
        self._ready()
        if self.head_specs_:
            return _one_or_all({h.name: self.heads_[h.name].predict(f) for h, f in self._head_features(check_texts(X))})
        log_proba = self._word_log_proba(check_texts(X))
        return self.labels_[log_proba.argmax(axis=1)] if len(log_proba) else np.array([], dtype=object)

    def outputs(self, X: Any) -> dict[str, np.ndarray]:
        """Label-word probabilities (key ``"labels"``, columns ``labels_``) and every head's
        probabilities (key: the head's name), all from one forward pass per batch."""
        self._ready()
        self._check_heads_fitted()
        texts = check_texts(X)
        prompts, spans, prefix = self._prompts(texts)
        pools = [h.pool for h in self.head_specs_]
        words, feats = self.scorer_.outputs(prompts, self.label_tokens_, pools, spans, prefix, self.progress)
        assert words is not None
        out = {"labels": np.exp(self._from_words(words, texts))}
        for h, f in zip(self.head_specs_, feats, strict=True):
            out[h.name] = self.heads_[h.name].predict_proba(f)
        return out

    def _word_log_proba(self, texts: list[str]) -> np.ndarray:
        return self._label_scores(texts) if texts else np.zeros((0, len(self.labels_)))

    def _head_proba(self, texts: list[str]) -> dict[str, np.ndarray]:
        return {h.name: self.heads_[h.name].predict_proba(f) for h, f in self._head_features(texts)}

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
        prompts, spans, prefix = self._prompts(texts)
        return self.scorer_.outputs(prompts, None, pools, spans, prefix, self.progress)[1]

    def _label_scores(self, texts: list[str], raw: bool = False) -> np.ndarray:
        prompts, spans, prefix = self._prompts(texts)
        words = self.scorer_.score_words(prompts, self.label_tokens_, spans, prefix, self.progress)
        return self._from_words(words, texts, raw)

    def _from_words(self, words: np.ndarray, texts: list[str], raw: bool = False) -> np.ndarray:
        """Word log-probs (n, n_words) -> label scores (raw) or calibrated label log-probabilities."""
        scores = aggregate(words, self.label_tokens_.word_label, len(self.labels_), self.aggregation)
        if raw:
            return scores
        return log_softmax(scores) if self.calibrator_ is None else self._calibrate(scores, texts)

    def _prompts(self, texts: list[str], leave_out_same: bool = False) -> tuple[list[str], list[tuple[int, int]], str]:
        """(prompts, where each text lies in its prompt, the prefix shared by all) for these texts.

        ``leave_out_same``: per-text ("similar") demonstrations never include the text itself (training).
        """
        t = self.template_
        prompts, spans = t.spans(texts)
        if not self.demo_pool_:
            return prompts, spans, self._fitting_prefix(prompts)
        picks = similar_demos([x for x, _ in self.demo_pool_], texts, self.n_demos, leave_out_same)
        shared = t.prefix()  # the instruction, shared by all; each text's own demonstrations follow it
        heads = [t.prefix([self.demo_pool_[i] for i in pick])[len(shared) :] for pick in picks]
        prompts = [h + p for h, p in zip(heads, prompts, strict=True)]
        spans = [(a + len(h), b + len(h)) for h, (a, b) in zip(heads, spans, strict=True)]
        return prompts, spans, shared

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
        if isinstance(model, Scorer) or self.fine_tuned_:
            self.save_pretrained(path / "model")
            params["model"] = "model"
        elif model is not None:
            params["model"] = str(model)
        params["template"], params["labels"] = None, None
        params["heads"] = [dataclasses.asdict(h) for h in self.head_specs_] or None
        params["fine_tuning"] = self.fine_tuning.to_dict() if self.fine_tuning is not None else None
        if self.heads_:
            from safetensors.torch import save_file

            save_file(
                {k: v for h in self.heads_.values() for k, v in h.tensors().items()}, str(path / "heads.safetensors")
            )
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
            "heads": {name: {"classes": list(h.classes)} for name, h in self.heads_.items()},
            "fine_tuned": self.fine_tuned_,
        }
        (path / "verbalize.json").write_text(json.dumps(state, indent=2, ensure_ascii=False), encoding="utf-8")
        return path

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the (fine-tuned) language model and its tokenizer as a standard Hugging Face directory:
        ``AutoModelForCausalLM.from_pretrained(path)`` loads it and ``generate`` works as before."""
        self._ready()
        path = Path(path)
        with _quiet():
            getattr(self, "float_model_", self.scorer_.model).save_pretrained(path)  # int8 is saved as float32
            self.scorer_.tokenizer.save_pretrained(path)
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
        if params.get("heads"):
            params["heads"] = [Head(**h) for h in params["heads"]]
        if params.get("fine_tuning"):
            params["fine_tuning"] = FineTuneConfig(**params["fine_tuning"])
        clf = cls(**(params | overrides))
        clf._setup()
        clf.fine_tuned_ = bool(state.get("fine_tuned"))
        if state.get("heads"):
            from safetensors.torch import load_file

            tensors = load_file(str(path / "heads.safetensors"))
            for h in clf.head_specs_:
                clf.heads_[h.name] = FittedHead.from_tensors(h, state["heads"][h.name]["classes"], tensors)
            clf.classes_ = _one_or_all({n: h.classes for n, h in clf.heads_.items()})
        clf.demos_ = [tuple(d) for d in state["demos"]]
        clf.demo_pool_ = [tuple(d) for d in state["demo_pool"]]
        if state["calibrator"]:
            clf.calibrator_ = CALIBRATORS[state["calibrator"]["name"]].from_state(state["calibrator"]["state"])
        return clf


def _one_or_all(by_head: dict[str, Any]) -> Any:
    """A single head's value as it is; with several heads, the dict {head name: value}."""
    return next(iter(by_head.values())) if len(by_head) == 1 else by_head


def _as_heads(heads: Head | Sequence[Head] | None) -> list[Head]:
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
