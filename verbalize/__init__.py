"""verbalize: prompt-based text classification with causal language models.

>>> from verbalize import Verbalizer
>>> clf = Verbalizer(template="templates/sst2.toml")          # doctest: +SKIP
>>> clf.predict(["a charming film", "two hours I will never get back"])  # doctest: +SKIP
array(['positive', 'negative'], dtype=object)
"""

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
