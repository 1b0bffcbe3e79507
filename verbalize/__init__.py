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
    from verbalize.calibration.calibrators import (
        BatchCalibrator,
        Calibrator,
        ContextualCalibrator,
        DomainCalibrator,
        TemperatureCalibrator,
        get_calibrator,
    )
    from verbalize.client import Client
    from verbalize.engine.cache import clear_model_cache
    from verbalize.engine.scoring import Scorer
    from verbalize.ensemble import TemplateEnsemble
    from verbalize.errors import InputError, ModelLoadError, ParameterError, TemplateError, VerbalizeError
    from verbalize.estimator import Verbalizer
    from verbalize.knn import KNNPrompting
    from verbalize.prompting.labels import LabelWords
    from verbalize.prompting.template import Template, load_template
    from verbalize.search import rank_templates, suggest_label_words
    from verbalize.training.config import FineTuneConfig
    from verbalize.training.heads import Head

__version__ = "0.1.0"

# public name -> the module (relative to this package) that defines it
_HOMES = {
    "BatchCalibrator": "calibration.calibrators",
    "Calibrator": "calibration.calibrators",
    "ContextualCalibrator": "calibration.calibrators",
    "DomainCalibrator": "calibration.calibrators",
    "TemperatureCalibrator": "calibration.calibrators",
    "get_calibrator": "calibration.calibrators",
    "Client": "client",
    "TemplateEnsemble": "ensemble",
    "InputError": "errors",
    "ModelLoadError": "errors",
    "ParameterError": "errors",
    "TemplateError": "errors",
    "VerbalizeError": "errors",
    "Verbalizer": "estimator",
    "FineTuneConfig": "training.config",
    "Head": "training.heads",
    "KNNPrompting": "knn",
    "LabelWords": "prompting.labels",
    "Scorer": "engine.scoring",
    "clear_model_cache": "engine.cache",
    "rank_templates": "search",
    "suggest_label_words": "search",
    "Template": "prompting.template",
    "load_template": "prompting.template",
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
    "ParameterError",
    "Scorer",
    "TemperatureCalibrator",
    "Template",
    "TemplateEnsemble",
    "TemplateError",
    "VerbalizeError",
    "Verbalizer",
    "clear_model_cache",
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
