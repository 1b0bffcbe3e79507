"""The shared prefix's key/value cache is kept between calls: a lone text runs one forward, scores unchanged."""

from __future__ import annotations

import copy

import numpy as np
import torch

from verbalize import Verbalizer
from verbalize.engine.prefixes import PrefixMemo

LABELS = {"negative": ["bad"], "positive": ["good"]}
PROMPT = "Classify the review.\nReview: {text}\nSentiment:"


def count_forwards(model):
    calls = []
    handle = model.base_model.register_forward_hook(lambda m, a, kw, out: calls.append(1), with_kwargs=True)
    return calls, handle


def test_a_lone_text_runs_one_forward_once_its_prefix_is_kept(llama):
    model = copy.deepcopy(llama.model)  # a model of its own: no other test's prefixes
    clf = Verbalizer(template=PROMPT, labels=LABELS, model=llama.scorer().with_settings(model=model))
    first = clf.predict_proba(["the acting is good"])
    calls, handle = count_forwards(model)
    try:
        again = clf.predict_proba(["the acting is good"])
        other = clf.predict_proba(["the story is bad"])
    finally:
        handle.remove()
    assert len(calls) == 2  # one forward per call: the template's start is not run again
    np.testing.assert_array_equal(again, first)
    fresh = Verbalizer(template=PROMPT, labels=LABELS, model=llama.scorer().with_settings(model=copy.deepcopy(model)))
    np.testing.assert_array_equal(other, fresh.predict_proba(["the story is bad"]))


def test_weights_changed_in_place_never_read_an_old_prefix(llama):
    model = copy.deepcopy(llama.model)
    clf = Verbalizer(template=PROMPT, labels=LABELS, model=llama.scorer().with_settings(model=model))
    before = clf.predict_proba(["the acting is good"])
    with torch.no_grad():
        state = {k: v * 0.5 for k, v in model.state_dict().items()}
    model.load_state_dict(state)
    after = clf.predict_proba(["the acting is good"])
    fresh = Verbalizer(template=PROMPT, labels=LABELS, model=llama.scorer().with_settings(model=copy.deepcopy(model)))
    np.testing.assert_array_equal(after, fresh.predict_proba(["the acting is good"]))
    assert not np.array_equal(after, before)


def test_the_memo_drops_the_least_recently_used_past_its_bytes():
    memo = PrefixMemo(max_bytes=3 * 400)
    made = []

    def make(k):
        return lambda: made.append(k) or torch.zeros(100)  # 400 bytes

    for k in "abcd":
        memo.get(k, make(k))
    memo.get("b", make("b"))  # kept
    memo.get("a", make("a"))  # dropped when d came: made again
    assert made == ["a", "b", "c", "d", "a"] and len(memo) == 3
    memo.get("c", make("c"))  # dropped when a came back (b was used after c)
    assert made[-1] == "c"
