"""verbalize: prompt-based text classification with causal language models.

>>> from verbalize import Verbalizer
>>> clf = Verbalizer(template="templates/sst2.toml")          # doctest: +SKIP
>>> clf.predict(["a charming film", "two hours I will never get back"])  # doctest: +SKIP
array(['positive', 'negative'], dtype=object)

The public names are imported on first use (PEP 562), so ``import verbalize`` and the light commands
(``verbalize check``) do not pay for torch and scikit-learn until a name that needs them is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .calibration import (
        BatchCalibrator,
        Calibrator,
        ContextualCalibrator,
        DomainCalibrator,
        TemperatureCalibrator,
        get_calibrator,
    )
    from .client import Client
    from .ensemble import TemplateEnsemble
    from .errors import InputError, ModelLoadError, TemplateError, VerbalizeError
    from .estimator import Verbalizer
    from .finetune import FineTuneConfig
    from .heads import Head
    from .knn import KNNPrompting
    from .labels import LabelWords
    from .scoring import Scorer
    from .search import rank_templates, suggest_label_words
    from .template import Template, load_template

__version__ = "0.1.0"

# public name -> the module (relative to this package) that defines it
_HOMES = {
    "BatchCalibrator": "calibration",
    "Calibrator": "calibration",
    "ContextualCalibrator": "calibration",
    "DomainCalibrator": "calibration",
    "TemperatureCalibrator": "calibration",
    "get_calibrator": "calibration",
    "Client": "client",
    "TemplateEnsemble": "ensemble",
    "InputError": "errors",
    "ModelLoadError": "errors",
    "TemplateError": "errors",
    "VerbalizeError": "errors",
    "Verbalizer": "estimator",
    "FineTuneConfig": "finetune",
    "Head": "heads",
    "KNNPrompting": "knn",
    "LabelWords": "labels",
    "Scorer": "scoring",
    "rank_templates": "search",
    "suggest_label_words": "search",
    "Template": "template",
    "load_template": "template",
}

__all__ = [
    "BatchCalibrator",
    "Calibrator",
    "Client",
    "ContextualCalibrator",
    "DomainCalibrator",
    "FineTuneConfig",
    "Head",
    "InputError",
    "KNNPrompting",
    "LabelWords",
    "ModelLoadError",
    "Scorer",
    "TemperatureCalibrator",
    "Template",
    "TemplateEnsemble",
    "TemplateError",
    "VerbalizeError",
    "Verbalizer",
    "get_calibrator",
    "load_template",
    "rank_templates",
    "suggest_label_words",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use and keep the name here."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'verbalize' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
