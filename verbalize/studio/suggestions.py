"""Label-word suggestions for the page, from the ``suggest`` machinery
(:func:`verbalize.search.suggest_label_words`)."""

from __future__ import annotations

from typing import Any

from verbalize.prompting.template import loads_template
from verbalize.search import suggest_label_words
from verbalize.studio.evaluation import Evaluator

N_SHOWN = 8  # candidate words shown per label


def suggest_words(evaluator: Evaluator, text: str, name: str, data: str, size: int) -> dict[str, Any]:
    """Candidate words per label on the first ``size`` rows of ``data``, ranked as ``verbalize suggest`` ranks
    them, with the words cross-validation chose and its accuracies (the template's own words, the chosen)."""
    template = loads_template(text, name)
    if data not in evaluator.data:
        raise KeyError(f"labeled file {data!r} is not one of the studio's: {', '.join(evaluator.data) or 'none'}")
    texts, y, _ = evaluator.data[data].rows(template, size)
    with evaluator.model_lock:
        found = suggest_label_words(texts, y, template, model=evaluator.scorer, calibration=None)
    own = {label: set(words) for label, words in template.labels.items()}
    return {
        "candidates": {
            label: [w for w in words if w not in own.get(label, set())][:N_SHOWN]
            for label, words in found.candidates.items()
        },
        "chosen": {label: list(words) for label, words in found.template.labels.items()},
        "choice": found.choice,
        "cv_accuracy": found.cv_accuracy,
        "template_cv_accuracy": found.template_cv_accuracy,
    }
