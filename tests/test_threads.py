"""One Verbalizer called from several threads gives exactly the answers of serial calls (bar 4).

Four threads call the same classifier (the same Scorer and model) 50 rounds each with texts in
batches of different sizes, started together; every answer is compared with the serial answer for
the same texts, bit for bit. The classifiers take each path that keeps state during a call: the shared prefix of
demonstrations (``PrefixCache`` and the attention function's routing), multi-token label words (a
second pass that reuses the cache), the hidden states a head reads from the same forward, and a
first use that sets the classifier up while other threads call it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from verbalize import Head, Verbalizer

LABELS = {"negative": ["bad", "terrible movie"], "positive": ["good", "great film"]}
PROMPT = "Review: {text}\nSentiment:"
X = ["good film", "bad film", "a great review", "terrible and bad", "good good", "bad bad", "fine", "awful"]
Y = ["positive", "negative", "positive", "negative", "positive", "negative", "positive", "negative"]
TEXTS = X + [
    "the acting is good.",
    "the story is bad.",
    "A great film with a terrible ending.",
    "I liked this movie, it was great and good.",
    "I hated it, it was bad and terrible, and then it went on and on for another hour",
]
SIZES = (1, 2, 5, 9)  # texts per call: batches of different lengths and row counts
THREADS, ROUNDS = 4, 50


def calls(thread: int) -> list[list[str]]:
    """The texts of each of a thread's calls: sizes and texts differ between threads and rounds."""
    out = []
    for r in range(ROUNDS):
        size, start = SIZES[(thread + r) % len(SIZES)], (5 * thread + 3 * r) % len(TEXTS)
        out.append([TEXTS[(start + i) % len(TEXTS)] for i in range(size)])
    return out


def in_threads(fn: Callable[[list[str]], Any]) -> dict[tuple[int, int], Any]:
    """Every thread's answers by (thread, round), the threads released together."""
    start, answers, errors = threading.Barrier(THREADS), {}, []

    def work(t: int) -> None:
        try:
            start.wait()
            for r, xs in enumerate(calls(t)):
                answers[t, r] = fn(xs)
        except BaseException as exc:  # noqa: BLE001 - reported below, with the thread's traceback
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return answers


def assert_same_as_serial(threaded: dict[tuple[int, int], Any], serial: Callable[[list[str]], Any]) -> None:
    want: dict[tuple[str, ...], Any] = {}
    for t in range(THREADS):
        for r, xs in enumerate(calls(t)):
            key = tuple(xs)
            if key not in want:
                want[key] = serial(xs)
            got = threaded[t, r]
            for name in want[key]:
                np.testing.assert_allclose(got[name], want[key][name], atol=0, rtol=0, err_msg=f"{t=} {r=} {name}")


def make(family: Any, **kw: Any) -> Verbalizer:
    return Verbalizer(template=PROMPT, labels=LABELS, model=family.scorer(batch_size=3), **kw)


def test_predict_proba_from_four_threads_equals_serial_calls(family):
    serial = make(family, n_demos=4, random_state=0).fit(X, Y)
    shared = make(family, n_demos=4, random_state=0).fit(X, Y)
    assert serial.scorer_.io.shared  # the demonstrations are a shared prefix read by the attention function
    threaded = in_threads(lambda xs: {"proba": shared.predict_proba(xs)})
    assert_same_as_serial(threaded, lambda xs: {"proba": serial.predict_proba(xs)})


def test_a_first_use_from_four_threads_equals_serial_calls(gpt2):
    serial = make(gpt2)
    fresh = make(gpt2)  # set up (template, label words, scorer) by whichever thread comes first
    threaded = in_threads(lambda xs: {"proba": fresh.predict_proba(xs)})
    assert_same_as_serial(threaded, lambda xs: {"proba": serial.predict_proba(xs)})


def test_word_scores_and_head_features_of_one_pass_from_four_threads_equal_serial_calls(llama):
    serial = make(llama, heads=Head(pooling="last")).fit(X, Y)
    shared = make(llama, heads=Head(pooling="last")).fit(X, Y)
    threaded = in_threads(shared.outputs)  # the head reads hidden states of the forward that scores the words
    assert_same_as_serial(threaded, serial.outputs)


def test_scoring_while_other_threads_probe_the_same_model_equals_serial_calls(llama):
    """A new Scorer on the model (a service's reload) probes it, shared prefix included, while others score."""
    from verbalize import Scorer

    serial = make(llama, n_demos=4, random_state=0).fit(X, Y)
    shared = make(llama, n_demos=4, random_state=0).fit(X, Y)
    implementation = llama.model.config._attn_implementation

    def call(xs: list[str]) -> dict[str, Any]:
        if len(xs) == 1:  # every thread, every fourth round
            assert Scorer(llama.model, llama.tokenizer, logits="model").io.shared
        return {"proba": shared.predict_proba(xs)}

    threaded = in_threads(call)
    assert_same_as_serial(threaded, lambda xs: {"proba": serial.predict_proba(xs)})
    assert llama.model.config._attn_implementation == implementation  # restored once the last call ended
