"""Parameter checks and change tracking for :class:`~verbalize.estimator.Verbalizer`.

``check_params`` validates the constructor's parameters; ``ready`` sets a classifier up on first use and
again when parameters changed since, allowing only :data:`RUNTIME_PARAMS` to change after ``fit``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
from sklearn.exceptions import NotFittedError

from .calibration import Calibrator, get_calibrator
from .demos import SELECTIONS
from .errors import ParameterError, check_choice
from .finetune import FineTuneConfig, replace_config
from .heads import replace_head
from .scoring import AGGREGATIONS, Scorer

RUNTIME_PARAMS = ("batch_size", "progress")  # may change after fit: they do not change what was learned


def text_input_tags(tags: Any, requires_fit: bool = True) -> Any:
    """scikit-learn tags of a classifier of texts: 1-D sequences of strings, never a 2-D array."""
    tags.requires_fit = requires_fit
    tags.input_tags.string = True
    tags.input_tags.two_d_array = False
    return tags


def check_params(self: Any) -> None:
    """Raise on a bad parameter of a Verbalizer ``self``, naming it and what is allowed."""
    if self.calibration is not None and not isinstance(self.calibration, Calibrator):
        get_calibrator(self.calibration)  # raises with the allowed names
    check_choice(self.demo_selection, SELECTIONS, "demo_selection", "Verbalizer")
    check_choice(self.aggregation, AGGREGATIONS, "aggregation", "Verbalizer")
    if self.fine_tuning is not None and not isinstance(self.fine_tuning, FineTuneConfig):
        raise TypeError(f"fine_tuning must be a FineTuneConfig, got {type(self.fine_tuning).__name__}")
    if self.demos_per_class is not None and self.n_demos:
        raise ParameterError(
            f"Verbalizer got n_demos={self.n_demos} (a total) and demos_per_class={self.demos_per_class}; "
            "give one of them (demos_per_class=k puts k demonstrations of each label in the prompt)"
        )
    checks = [("n_demos", self.n_demos, 0), ("batch_size", self.batch_size, 1)]
    checks += [(k, v, 1) for k, v in (("demos_per_class", self.demos_per_class),) if v is not None]
    checks += [(k, v, 1) for k, v in (("calibration_sample", self.calibration_sample),) if v is not None]
    for name, value, low in checks:
        if not isinstance(value, int | np.integer) or value < low:
            raise ParameterError(
                f"The {name!r} parameter of Verbalizer must be an int >= {low}. Got {value!r} instead."
            )


def ready(self: Any) -> None:
    """Set up on first use, and again when parameters changed since (sharing the loaded model)."""
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
            self.scorer_ = Scorer(base.model, base.tokenizer, self.batch_size, base.context_length, base.max_tokens)
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
    for key, value in nested.items():
        if key.startswith("fine_tuning__"):
            self.fine_tuning = replace_config(self.fine_tuning, key, value)
        else:
            self.heads = replace_head(self.heads, key, value)
