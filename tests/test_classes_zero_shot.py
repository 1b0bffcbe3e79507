"""A zero-shot Verbalizer knows its classes from the template before any fit or predict (issue 21, item 9)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.base import clone

from verbalize import Verbalizer
from verbalize.training.heads import Head

TEMPLATE = 'name = "t"\nprompt = "Review: {text}\\nSentiment:"\n[labels]\nnegative = ["bad"]\npositive = ["good"]\n'


def test_classes_before_the_first_predict_come_from_the_template_without_loading_a_model(tmp_template):
    clf = Verbalizer(template=str(tmp_template(TEMPLATE)), model="no/such-model-is-ever-loaded")
    assert list(clf.classes_) == ["negative", "positive"]
    assert isinstance(clf.classes_, np.ndarray)
    assert "scorer_" not in vars(clf) and "classes_" not in vars(clf)  # nothing set up, nothing stored
    assert list(clone(clf).classes_) == ["negative", "positive"]
    assert list(pickle.loads(pickle.dumps(clf)).classes_) == ["negative", "positive"]


def test_classes_follow_labels_given_as_a_parameter_and_a_shipped_template():
    labels = {"spam": ["spam"], "ham": ["ham"]}
    assert list(Verbalizer(template="classify: {text} =>", labels=labels).classes_) == ["spam", "ham"]
    assert list(Verbalizer(template="sst2").classes_) == ["negative", "positive"]


def test_classes_are_not_invented_where_fit_decides_them(tmp_template):
    with pytest.raises(AttributeError, match="heads"):
        _ = Verbalizer(template=str(tmp_template(TEMPLATE)), heads=Head(name="topic", labels=["a", "b"])).classes_
    with pytest.raises(AttributeError, match="template"):
        _ = Verbalizer(template="no-such-template.toml").classes_
    assert not hasattr(Verbalizer(), "classes_")  # no template at all
