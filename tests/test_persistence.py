"""Saving is atomic (a crash at any step leaves the old or the new classifier, never a mix) and loading is safe."""

import json
import shutil

import numpy as np
import pytest

import verbalize.persistence as persistence
from verbalize import FineTuneConfig, Head, Scorer, Verbalizer
from verbalize.errors import SavedClassifierError

LABELS = {"negative": ["bad", "negative"], "positive": ["good", "positive"]}
X = ["good film", "bad film", "a great review", "terrible and bad", "good good", "bad bad", "fine", "awful"]
Y = ["positive", "negative", "positive", "negative", "positive", "negative", "positive", "negative"]
FAST = dict(epochs=3, learning_rate=1e-2, batch_size=4, validation_fraction=0.0, progress=False)
STEPS = ["model", "heads", "state", "rename", "clean up"]


class Crash(Exception):
    pass


@pytest.fixture
def scorer(gpt2_model, gpt2_tokenizer):
    return Scorer(gpt2_model, gpt2_tokenizer, batch_size=4)


def make(scorer, **kw):
    params = dict(template="Review: {text}\nSentiment:", labels=LABELS, model=scorer, random_state=0) | kw
    return Verbalizer(**params)


@pytest.fixture
def saved(scorer, tmp_path):
    clf = make(scorer, n_demos=2, calibration="contextual", heads=Head("h", C=0.1)).fit(X, Y)
    return clf, clf.save(tmp_path / "runs" / "clf")


def _probe(path):
    """The probabilities of the classifier saved at ``path``."""
    back = Verbalizer.load(path, device="cpu")
    return back.predict_proba(X), back.outputs(X)["labels"]


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_at_any_step_of_save_leaves_the_old_or_the_new_classifier(scorer, saved, tmp_path, monkeypatch, step):
    old, path = saved
    new = make(scorer, n_demos=2, random_state=1, heads=Head("h", C=10.0), fine_tuning=FineTuneConfig(**FAST))
    new.fit(X, Y)
    want = {"old": _probe(path), "new": (new.predict_proba(X), new.outputs(X)["labels"])}
    assert not np.allclose(want["old"][1], want["new"][1])  # a mix of the two would show
    killed = tmp_path / "killed"

    def crash_at(name):
        if name == step:
            shutil.copytree(path.parent, killed, symlinks=True)  # what a SIGKILL here would leave on disk
            raise Crash(name)

    monkeypatch.setattr(persistence, "_checkpoint", crash_at)
    with pytest.raises(Crash):
        new.save(path)
    monkeypatch.undo()
    for where in (path, killed / path.name):  # after the error (clean-up ran), and as a kill left it
        if not where.exists():
            assert step == "rename" and where.parent == killed  # between the two renames of a kill
            with pytest.raises(FileNotFoundError, match=r"previous version in .*\.clf\.old-"):
                Verbalizer.load(where)
            continue
        got = _probe(where)
        matches = [k for k, (p, labels) in want.items() if np.allclose(got[0], p) and np.allclose(got[1], labels)]
        assert matches == (["new"] if step == "clean up" else ["old"]), where
    assert not list(path.parent.glob(".clf.tmp-*")) and not list(path.parent.glob(".clf.old-*"))
    assert _probe(new.save(path))[1] == pytest.approx(want["new"][1])  # and the next save succeeds


def _edit(path, change):
    file = path / "verbalize.json"
    state = json.loads(file.read_text())
    change(state)
    file.write_text(json.dumps(state))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.update(format_version=99), r"verbalize.json: format_version: 99 was written by a newer"),
        (lambda s: s.pop("format_version"), r"verbalize.json: format_version: missing"),
        (lambda s: s.update(demos=[["only a text"]]), r"verbalize.json: demos: malformed"),
        (lambda s: s["params"].update(bogus=1), r"verbalize.json: params: malformed .*unknown parameters \['bogus'\]"),
        (lambda s: s.update(calibrator={"name": "nope", "state": {}}), r"calibrator.name: malformed .*'nope'"),
        (lambda s: s["template"].pop("prompt"), r"verbalize.json: template: malformed"),
        (lambda s: s["heads"].update(h={}), r"verbalize.json: heads: malformed \(missing key 'classes'\)"),
    ],
)
def test_a_malformed_file_names_the_file_and_key(saved, change, message):
    _, path = saved
    _edit(path, change)
    with pytest.raises(SavedClassifierError, match=message):
        Verbalizer.load(path)


def test_not_json_and_missing_files_are_named(saved):
    _, path = saved
    (path / "heads.safetensors").unlink()
    with pytest.raises(SavedClassifierError, match=r"heads.safetensors: missing"):
        Verbalizer.load(path)
    (path / "verbalize.json").write_text("{not json")
    with pytest.raises(SavedClassifierError, match=r"verbalize.json: not valid JSON"):
        Verbalizer.load(path)


def test_load_uses_the_directory_s_own_model_never_model_in_the_working_directory(saved, tmp_path, monkeypatch):
    _, path = saved
    shutil.copytree(path / "model", tmp_path / "model")  # a perfectly loadable ./model
    shutil.rmtree(path / "model")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        SavedClassifierError, match=r"params.model: the classifier's model is saved in .*runs/clf/model"
    ):
        Verbalizer.load(path)


def test_files_of_format_1_without_the_model_key_still_load(saved):
    clf, path = saved
    _edit(path, lambda s: s.pop("model_in_directory"))
    np.testing.assert_array_equal(Verbalizer.load(path, device="cpu").predict_proba(X), clf.predict_proba(X))


def test_save_never_replaces_a_directory_that_is_not_a_classifier(scorer, tmp_path):
    precious = tmp_path / "data"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(SavedClassifierError, match="not a saved classifier"):
        make(scorer).save(precious)
    assert (precious / "notes.txt").read_text() == "keep me"
    with pytest.raises(SavedClassifierError, match="is a file"):
        make(scorer).save(precious / "notes.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (make(scorer).save(empty) / "verbalize.json").is_file()


PAIRS = [
    {"review1": "good film", "review2": "a great review"},
    {"review1": "bad film", "review2": "good good"},
    {"review1": "terrible and bad", "review2": "bad bad"},
    {"review1": "fine", "review2": "awful"},
]
SAME = ["same", "different", "same", "different"]


def test_a_few_shot_pair_classifier_saves_loads_and_pickles(scorer, tmp_path):
    """Saved demonstrations of a two-field template are dicts {field: text}: they load and pickle as they were."""
    import pickle

    clf = Verbalizer(template="same_sentiment", model=scorer, demos_per_class=1, random_state=0).fit(PAIRS, SAME)
    assert all(isinstance(row, dict) for row, _ in clf.demos_)
    want = clf.predict_proba(PAIRS)
    back = Verbalizer.load(clf.save(tmp_path / "pair"), device="cpu")
    assert back.demos_ == clf.demos_
    np.testing.assert_allclose(back.predict_proba(PAIRS), want, atol=1e-6)
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_allclose(again.predict_proba(PAIRS), want, atol=1e-6)


def test_a_saved_demonstration_with_a_wrong_field_names_the_key(scorer, tmp_path):
    clf = Verbalizer(template="same_sentiment", model=scorer, demos_per_class=1, random_state=0).fit(PAIRS, SAME)
    path = clf.save(tmp_path / "pair")
    _edit(path, lambda s: s["demos"][0][0].pop("review2"))
    with pytest.raises(SavedClassifierError, match=r"demos: malformed .*review2"):
        Verbalizer.load(path)


def test_a_pickled_int8_scorer_scores_as_before(llama_model, llama_tokenizer):
    """An int8 model's state holds int8 layers: the rebuilt model is quantized the same way before loading it."""
    import copy
    import pickle

    from verbalize.engine.models import quantize
    from verbalize.engine.tokens import LabelTokens

    scorer = Scorer(quantize(copy.deepcopy(llama_model)), llama_tokenizer, batch_size=4)
    words = LabelTokens(("a", "b"), ("a", "b"), np.arange(2), ((5,), (7, 9)))
    want = scorer.score_words(X, words)
    back = pickle.loads(pickle.dumps(scorer))
    np.testing.assert_allclose(back.score_words(X, words), want, atol=1e-6)


def test_a_pickled_bfloat16_scorer_keeps_its_float32_residual_stream(llama_model, llama_tokenizer):
    """A bfloat16 model verbalize loaded is widened (widen_residual): rebuilt from a pickle it is again, and
    scores bit for bit as before (the plain bfloat16 model would not)."""
    import copy
    import pickle

    import torch

    from verbalize.engine.models import finish_narrow
    from verbalize.engine.tokens import LabelTokens

    model = copy.deepcopy(llama_model).to(torch.bfloat16)
    finish_narrow(model, "bfloat16")
    assert model.verbalize_wide_residual
    scorer = Scorer(model, llama_tokenizer, batch_size=4)
    words = LabelTokens(("a", "b"), ("a", "b"), np.arange(2), ((5,), (7, 9)))
    want = scorer.score_words(X, words)
    back = pickle.loads(pickle.dumps(scorer))
    assert getattr(back.model, "verbalize_wide_residual", False)
    assert getattr(back.model, "verbalize_wide_hidden", False)
    np.testing.assert_array_equal(back.score_words(X, words), want)


def _poison(state, value):
    """Put ``value`` into the first number of the saved calibrator's state."""
    cal = state["calibrator"]["state"]
    key = next(k for k, v in cal.items() if isinstance(v, list | float | int))
    if isinstance(cal[key], list):
        cal[key][0] = value
    else:
        cal[key] = value
    return key


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "0.5"])
def test_a_calibrator_state_that_is_not_finite_numbers_is_refused_at_load(saved, value):
    """A NaN in a saved calibrator's state once loaded without complaint and sent every text to the first label."""
    _, path = saved
    _edit(path, lambda s: _poison(s, value))
    with pytest.raises(SavedClassifierError, match=r"verbalize.json: calibrator.state: malformed .*finite number"):
        Verbalizer.load(path)
