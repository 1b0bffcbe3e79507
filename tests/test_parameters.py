"""One parameter-check vocabulary: every bad parameter raises verbalize.ParameterError (a ValueError) in one shape,
"The 'X' parameter of Owner must be .... Got ... instead.", with a "Did you mean" for near misses."""

import pytest

import verbalize
from verbalize import FineTuneConfig, Head, KNNPrompting, ParameterError, TemplateEnsemble, Verbalizer
from verbalize.engine.models import load_model

LABELS = {"negative": ["bad"], "positive": ["good"]}
X, Y = ["good film", "bad film", "good good", "bad bad"], ["positive", "negative", "positive", "negative"]


def test_parameter_error_is_exported_and_a_value_error():
    assert "ParameterError" in verbalize.__all__ and issubclass(ParameterError, ValueError)
    assert issubclass(ParameterError, verbalize.VerbalizeError)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"calibration": "contextal"},
            r"The 'calibration' parameter of Verbalizer must be one of \[.*'contextual'.*\]\. "
            r"Got 'contextal' instead\. Did you mean 'contextual'\?",
        ),
        ({"aggregation": "maxx"}, r"The 'aggregation' parameter of Verbalizer must be one of .* Did you mean 'max'\?"),
        ({"demo_selection": "simlar"}, r"'demo_selection' parameter of Verbalizer .* Did you mean 'similar'\?"),
        ({"n_demos": -1}, r"The 'n_demos' parameter of Verbalizer must be an int >= 0\. Got -1 instead\."),
        ({"batch_size": 2.5}, r"The 'batch_size' parameter of Verbalizer must be an int >= 1\. Got 2\.5 instead\."),
    ],
)
def test_verbalizer_parameters(gpt2, params, message):
    with pytest.raises(ParameterError, match=message):
        Verbalizer(template="Review: {text}\nSentiment:", labels=LABELS, model=gpt2.scorer(), **params).fit(X, Y)


def test_a_wrong_type_stays_a_type_error(gpt2):
    with pytest.raises(TypeError, match=r"The 'fine_tuning' parameter of Verbalizer must be a FineTuneConfig or None"):
        Verbalizer(template="{text} =>", labels=LABELS, model=gpt2.scorer(), fine_tuning={"epochs": 1}).fit(X, Y)


def test_knn_and_ensemble_parameters(gpt2):
    with pytest.raises(ParameterError, match=r"The 'k' parameter of KNNPrompting must be an int >= 1\. Got 0 instead"):
        KNNPrompting(template="{text} =>", labels=LABELS, model=gpt2.scorer(), k=0).fit(X, Y)
    with pytest.raises(
        ParameterError, match=r"'templates' parameter of TemplateEnsemble must be a list of one or more"
    ):
        TemplateEnsemble(templates=[], model=gpt2.scorer()).fit()
    with pytest.raises(ParameterError, match=r"'weights' parameter of TemplateEnsemble must be 1 non-negative number"):
        TemplateEnsemble(templates=["{text} =>"], model=gpt2.scorer(), weights=["x"]).fit()


def test_configs_report_every_problem_at_once():
    with pytest.raises(ParameterError) as info:
        FineTuneConfig(method="lorra", epochs=0, validation_fraction=1.0, learning_rate=-1)
    text = str(info.value)
    assert text.startswith("4 problems: ")
    assert "The 'method' parameter of FineTuneConfig must be one of ['full', 'lora']. Got 'lorra' instead. " in text
    assert "Did you mean 'lora'?" in text
    assert "The 'epochs' parameter of FineTuneConfig must be an int >= 1. Got 0 instead." in text
    assert "The 'validation_fraction' parameter of FineTuneConfig must be a number in [0, 1). Got 1.0 instead." in text
    assert "The 'learning_rate' parameter of FineTuneConfig must be a number > 0. Got -1 instead." in text
    with pytest.raises(ParameterError, match=r"The 'C' parameter of Head must be a number > 0\. Got 0 instead\."):
        Head(C=0)
    with pytest.raises(ParameterError, match=r"The 'layers' parameter of Head must be an int >= 1\. Got True instead"):
        Head(layers=True)


def test_engine_choices():
    with pytest.raises(ParameterError, match=r"The 'dtype' parameter of load_model must be one of .* Got 'float23'.*"):
        load_model("unused", dtype="float23")


def test_scorer_logits_path(gpt2):
    with pytest.raises(ParameterError, match=r"The 'logits' parameter of Scorer .* Got 'hnd' instead\. Did you mean"):
        gpt2.scorer(logits="hnd")
