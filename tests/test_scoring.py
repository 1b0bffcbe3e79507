"""Scorer against a naive reference: one full forward per (prompt, label word), batch size 1, no cache.

The reference builds the sequence the scorer documents (special ids the tokenizer puts first, then the
tokens of ``prefix``, of the prompt, and of the word), runs ``model(input_ids).logits`` on it alone and
sums the log-softmax over the word's tokens. It shares no code with the scorer: no padding, no key/value
cache, no position ids, no batching. Everything runs on both tiny model families (conftest.py).
"""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch

from verbalize.engine.batching import encode_prompts
from verbalize.engine.scoring import AGGREGATIONS, aggregate
from verbalize.errors import InputError
from verbalize.prompting.labels import LabelWords
from verbalize.prompting.template import Template

TEMPLATE = Template(prompt="Review: {text}\nSentiment:", labels={"negative": ["negative"], "positive": ["positive"]})
TEXTS = [
    "good.",
    "A great film with a terrible ending.",
    "bad",
    "The story is bad and the acting was terrible in every scene of the movie, I hated it.",
    "ok",
    "New technology makes phones faster, and this movie is good for business",
    "{text} => }{",
]
PREFIX = "Classify the sentiment of the review.\n\nReview: the acting is good.\nSentiment: positive\n\n"
WORDS = {
    "single": {"negative": ["negative", "bad"], "positive": ["positive", "good"]},
    "multi": {"negative": ["awful", "xylophone"], "positive": ["superb"]},
    "mixed": {"negative": ["negative", "awful", "terrible"], "positive": ["superb", "good", "xylophone"]},
}


def plain_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def context_ids(family, prompt: str, prefix: str = "") -> list[int]:
    tok = family.tokenizer
    return list(family.lead) + plain_ids(tok, prefix + prompt)  # the model reads the joined string


@torch.no_grad()
def naive_scores(model, contexts: list[list[int]], word_ids) -> np.ndarray:
    """log p(word | context) by brute force, shape (n_contexts, n_words).

    The input is context + word minus its last token (nothing reads the logits after it), so that a
    context cut to fit the window with the longest word still fits.
    """
    out = np.zeros((len(contexts), len(word_ids)))
    for i, ctx in enumerate(contexts):
        for j, word in enumerate(word_ids):
            ids = torch.tensor([list(ctx) + list(word[:-1])])  # (1, T)
            logp = torch.log_softmax(model(ids).logits[0].double(), dim=-1)  # (T, V)
            out[i, j] = sum(float(logp[len(ctx) + k - 1, t]) for k, t in enumerate(word))
    return out


def prompts_of(texts):
    return [TEMPLATE.render(t) for t in texts]


# -- scores == naive reference -------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", PREFIX], ids=["no-prefix", "prefix"])
@pytest.mark.parametrize("kind", list(WORDS))
def test_scores_match_the_naive_reference(family, kind, prefix):
    lt = LabelWords(WORDS[kind]).encode(family.tokenizer)
    n_multi = int(lt.multi_token.sum())
    assert (n_multi == 0) if kind == "single" else (n_multi >= 2)
    prompts = prompts_of(TEXTS)
    lengths = [len(context_ids(family, p)) for p in prompts]
    assert max(lengths) > 4 * min(lengths)  # very different lengths share batches
    scores = family.scorer(batch_size=4).score_words(prompts, lt, prefix=prefix)
    assert isinstance(scores, np.ndarray)
    assert scores.shape == (len(prompts), len(lt.words))
    expected = naive_scores(family.model, [context_ids(family, p, prefix) for p in prompts], lt.word_ids)
    np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("packs", [True, False], ids=["packed", "padded"])
def test_a_bfloat16_model_with_a_float32_residual_stream_scores_as_its_own_forward(family, packs, monkeypatch):
    """dtype="bfloat16" loads widen the residual stream (tests/test_wide_residual.py): the probes and the
    batched paths (GPT-2's Conv1D, llama's rotary tables) take it, and it scores as its own forward."""
    from verbalize.engine.models import widen_residual

    model = copy.deepcopy(family.model).to(torch.bfloat16)
    assert widen_residual(model)
    scorer = family.scorer(batch_size=4).with_settings(model=model)
    assert scorer.io.packs  # the packing probe accepts it
    monkeypatch.setattr(scorer.io, "packs", packs)
    lt = LabelWords(WORDS["single"]).encode(family.tokenizer)
    prompts = prompts_of(TEXTS)
    got = scorer.score_words(prompts, lt, prefix=PREFIX)
    expected = naive_scores(model, [context_ids(family, p, PREFIX) for p in prompts], lt.word_ids)
    # bfloat16 rounds rows of other shapes differently: measured up to 0.03 (llama), 0.015 (GPT-2)
    np.testing.assert_allclose(got, expected, atol=0.06, rtol=0)


def test_prefix_changes_the_scores(family):
    # Guards the test above against a prefix that is silently ignored.
    lt = LabelWords(WORDS["mixed"]).encode(family.tokenizer)
    scorer = family.scorer(batch_size=4)
    with_prefix = scorer.score_words(prompts_of(TEXTS), lt, prefix=PREFIX)
    without = scorer.score_words(prompts_of(TEXTS), lt)
    assert np.abs(with_prefix - without).min() > 1e-3


def test_scores_with_spans_and_no_truncation_are_unchanged(family):
    lt = LabelWords(WORDS["mixed"]).encode(family.tokenizer)
    prompts, spans = TEMPLATE.spans(TEXTS)
    scorer = family.scorer(batch_size=3)
    # With spans the template's start ("Review:") is run once for all rows, so the sums differ in order only.
    np.testing.assert_allclose(scorer.score_words(prompts, lt, spans=spans), scorer.score_words(prompts, lt), atol=1e-5)
    assert scorer.last_n_truncated == 0


def test_the_template_start_runs_once_and_scores_as_before(family, monkeypatch):
    """With spans, the words before {text} ("Review:") join the cached prefix: each batch reads only the rest."""
    lt = LabelWords(WORDS["single"]).encode(family.tokenizer)
    prompts, spans = TEMPLATE.spans(TEXTS)
    # a model of its own: the shared one keeps the prefixes other tests ran (verbalize.engine.prefixes)
    scorer = family.scorer(batch_size=3).with_settings(model=copy.deepcopy(family.model))
    monkeypatch.setattr(scorer.io, "packs", False)  # padded rows; packed: test_packed_rows_score_as_the_naive_reference
    shapes = []
    hidden = scorer.io.run
    monkeypatch.setattr(
        scorer.io, "run", lambda ids, *a, **kw: shapes.append(tuple(ids.shape)) or hidden(ids, *a, **kw)
    )
    scores = scorer.score_words(prompts, lt, spans=spans)
    shared = len(family.lead) + len(plain_ids(family.tokenizer, "Review:"))
    lengths = [len(context_ids(family, p)) for p in prompts]
    assert shapes[0] == (1, shared)  # the shared start, run once
    assert sum(rows for rows, _ in shapes[1:]) == len(prompts)
    assert max(width for _, width in shapes[1:]) == max(lengths) - shared
    expected = naive_scores(family.model, [context_ids(family, p) for p in prompts], lt.word_ids)
    np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=0)


def test_prefix_and_prompt_score_as_the_rendered_prompt(family):
    """Scoring ``prompt`` after ``prefix=`` equals scoring the rendered string ``prefix + prompt``.

    This is what ``Template.render(text, demos)`` produces and what the model would read. The
    tokenization must not change at the seam: GPT-2-style BPE tokenizes "\\n\\n" at the end of a string
    as one token but as two before a word; SentencePiece puts "▁" in front of a string it starts.
    """
    template = Template(
        prompt="Review: {text}\nSentiment:",
        labels={"negative": ["negative", "awful"], "positive": ["positive"]},
        instruction="Classify the sentiment of the review.",
        demo_format="Review: {text}\nSentiment: {label}",
    )
    demos = [("the acting is good.", "positive"), ("the story is bad.", "negative")]
    lt = template.labels.encode(family.tokenizer)
    prompts, _ = template.spans(TEXTS[:3])
    scores = family.scorer(batch_size=4).score_words(prompts, lt, prefix=template.prefix(demos))
    rendered = [template.render(t, demos) for t in TEXTS[:3]]
    contexts = [list(family.lead) + plain_ids(family.tokenizer, r) for r in rendered]
    np.testing.assert_allclose(scores, naive_scores(family.model, contexts, lt.word_ids), atol=1e-4, rtol=0)


def test_empty_prompt_after_a_prefix_scores_the_prefix_continuation(llama):
    # The BOS the tokenizer adds gives every prompt a context, even an empty one: a prompt of
    # "{text}" with the empty content-free text of contextual calibration renders to "".
    lt = LabelWords(WORDS["mixed"]).encode(llama.tokenizer)
    prompts = ["", prompts_of(TEXTS)[3]]
    scores = llama.scorer(batch_size=4).score_words(prompts, lt, prefix="Classify:")
    expected = naive_scores(llama.model, [context_ids(llama, p, "Classify:") for p in prompts], lt.word_ids)
    np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=0)


def test_no_prompts_give_an_empty_array(family):
    lt = LabelWords(WORDS["mixed"]).encode(family.tokenizer)
    scores = family.scorer().score_words([], lt)
    assert isinstance(scores, np.ndarray)
    assert scores.shape == (0, len(lt.words))


# -- batch invariance ----------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", PREFIX], ids=["no-prefix", "prefix"])
@pytest.mark.parametrize("kind", ["mixed", "single"], ids=["padded", "packed"])
def test_a_text_scores_the_same_in_any_batch(family, make_scorer, prefix, kind):
    """Padded rows (multi-token words) and packed rows (one-token words: wherever a text lands in a row)."""
    lt = LabelWords(WORDS[kind]).encode(family.tokenizer)
    assert make_scorer().io.packs  # one-token words take packed rows on both families
    prompts = prompts_of(TEXTS)
    alone = np.stack([make_scorer(batch_size=1).score_words([p], lt, prefix=prefix)[0] for p in prompts])
    for batch_size in (1, 2, 3, 7, 64):
        together = make_scorer(batch_size=batch_size).score_words(prompts, lt, prefix=prefix)
        np.testing.assert_allclose(together, alone, atol=1e-5, rtol=0, err_msg=f"batch_size={batch_size}")
    # Other neighbours, another order, duplicates, and a token budget instead of a row count.
    order = [6, 3, 3, 0, 5, 1, 2, 4]
    for batch_size in (3, 64):
        shuffled = make_scorer(batch_size=batch_size).score_words([prompts[i] for i in order], lt, prefix=prefix)
        np.testing.assert_allclose(shuffled, alone[order], atol=1e-5, rtol=0, err_msg=f"batch_size={batch_size}")
    budget = make_scorer(batch_size=64, max_tokens=40).score_words(prompts, lt, prefix=prefix)
    np.testing.assert_allclose(budget, alone, atol=1e-5, rtol=0)


def test_neighbours_do_not_leak(family, make_scorer):
    lt = LabelWords(WORDS["mixed"]).encode(family.tokenizer)
    target = prompts_of(["A great film with a terrible ending."])[0]
    scorer = make_scorer(batch_size=8)
    a = scorer.score_words([target, *prompts_of(["ok", "bad"])], lt)[0]
    b = scorer.score_words([*prompts_of([TEXTS[3], TEXTS[5], "x"]), target], lt)[-1]
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


# -- truncation ----------------------------------------------------------------------------------------


LONG = ("the story is bad and the acting was terrible in every single scene of the movie " * 4).strip()


def test_a_text_longer_than_the_gpt2_window_is_truncated_and_scored_exactly(gpt2):
    tok, window = gpt2.tokenizer, gpt2.model.config.n_positions
    lt = LabelWords(WORDS["mixed"]).encode(tok)
    longest_word = max(len(ids) for ids in lt.word_ids)
    prompts, spans = TEMPLATE.spans([TEXTS[0], LONG, TEXTS[1]])
    assert len(plain_ids(tok, prompts[1])) > window
    scorer = gpt2.scorer(batch_size=4)
    scores = scorer.score_words(prompts, lt, spans=spans)
    assert scorer.last_n_truncated == 1
    assert np.isfinite(scores).all()
    # The prompt is cut to leave room for the longest word: prompt + word fills the window exactly.
    budget = window - (longest_word - 1)
    cut = encode_prompts(tok, prompts, spans, max_length=budget, add_special_tokens=False).ids
    assert len(cut[1]) == budget and cut[0] == plain_ids(tok, prompts[0])
    assert tok.decode(cut[1]).endswith("\nSentiment:")
    np.testing.assert_allclose(scores, naive_scores(gpt2.model, cut, lt.word_ids), atol=1e-4, rtol=0)
    # The count is per call.
    scorer.score_words(prompts[:1], lt, spans=spans[:1])
    assert scorer.last_n_truncated == 0


def test_truncation_with_a_prefix_and_max_length(family):
    tok = family.tokenizer
    lt = LabelWords(WORDS["mixed"]).encode(tok)
    max_length = 60
    prefix = "Classify the sentiment.\n\n"
    prompts, spans = TEMPLATE.spans([LONG, TEXTS[2], LONG[:100]])
    scorer = family.scorer(batch_size=2, max_length=max_length)
    assert scorer.context_length == max_length
    scores = scorer.score_words(prompts, lt, spans=spans, prefix=prefix)
    # the model reads prefix + prompt as one string; only the text part of it may be cut
    room = len(family.lead) + max(len(w) for w in lt.word_ids) - 1
    joined = [prefix + p for p in prompts]
    shifted = [(a + len(prefix), b + len(prefix)) for [(a, b)] in spans]
    cut = encode_prompts(tok, joined, shifted, max_length=max_length - room, add_special_tokens=False).ids
    assert scorer.last_n_truncated == sum(len(plain_ids(tok, p)) > max_length - room for p in joined) >= 1
    contexts = [list(family.lead) + ids for ids in cut]
    assert max(len(c) for c in contexts) + max(len(w) for w in lt.word_ids) - 1 == max_length
    np.testing.assert_allclose(scores, naive_scores(family.model, contexts, lt.word_ids), atol=1e-4, rtol=0)


def test_too_long_without_spans_is_an_input_error(gpt2):
    lt = LabelWords(WORDS["single"]).encode(gpt2.tokenizer)
    with pytest.raises(InputError, match="no text span was given"):
        gpt2.scorer().score_words(prompts_of([LONG]), lt)


def test_context_length_comes_from_the_model(family):
    config = family.model.config
    assert family.scorer().context_length == config.max_position_embeddings
    assert family.scorer(max_length=10**6).context_length == config.max_position_embeddings
    assert family.scorer(max_length=20).context_length == 20


# -- aggregate -----------------------------------------------------------------------------------------


WORD_SCORES = np.array(
    [
        [-1.0, -2.0, -0.5, -3.0, -4.0],
        [-10.0, -0.1, -2.0, -2.0, -7.5],
        [-1000.0, -1000.0, -0.7, -1001.0, -999.0],
    ]
)
WORD_LABEL = np.array([0, 0, 1, 2, 2])


def test_aggregate_logsumexp_is_the_log_of_the_total_probability():
    out = aggregate(WORD_SCORES, WORD_LABEL, 3, "logsumexp")
    expected = np.array(
        [
            [np.log(np.exp(-1.0) + np.exp(-2.0)), -0.5, np.log(np.exp(-3.0) + np.exp(-4.0))],
            [np.log(np.exp(-10.0) + np.exp(-0.1)), -2.0, np.log(np.exp(-2.0) + np.exp(-7.5))],
            # exp(-1000) underflows: written out as m + log(sum exp(s - m))
            [-1000.0 + np.log(2.0), -0.7, -999.0 + np.log(1.0 + np.exp(-2.0))],
        ]
    )
    assert out.shape == (3, 3)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


def test_aggregate_mean_and_max():
    mean = aggregate(WORD_SCORES, WORD_LABEL, 3, "mean")
    np.testing.assert_allclose(mean[0], [-1.5, -0.5, -3.5])
    np.testing.assert_allclose(mean[1], [-5.05, -2.0, -4.75])
    np.testing.assert_allclose(mean[2], [-1000.0, -0.7, -1000.0])
    best = aggregate(WORD_SCORES, WORD_LABEL, 3, "max")
    np.testing.assert_array_equal(best, [[-1.0, -0.5, -3.0], [-0.1, -2.0, -2.0], [-1000.0, -0.7, -999.0]])


def test_aggregate_default_is_logsumexp_and_words_need_not_be_grouped():
    perm = np.array([4, 2, 0, 3, 1])
    np.testing.assert_allclose(
        aggregate(WORD_SCORES[:, perm], WORD_LABEL[perm], 3), aggregate(WORD_SCORES, WORD_LABEL, 3, "logsumexp")
    )


def test_aggregate_of_single_words_is_identity():
    scores = np.array([[-1.5, -0.25], [-3.0, -7.0]], dtype=np.float32)
    for how in AGGREGATIONS:
        out = aggregate(scores, np.array([0, 1]), 2, how)
        assert out.dtype == np.float64
        np.testing.assert_allclose(out, scores, rtol=1e-7)


def test_aggregate_unknown_name():
    message = (
        "The 'aggregation' parameter of Verbalizer must be one of ['logsumexp', 'mean', 'max']. Got 'sum' instead."
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        aggregate(WORD_SCORES, WORD_LABEL, 3, "sum")


# -- features ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", PREFIX], ids=["no-prefix", "prefix"])
def test_features_shape_and_next_token_logits(family, prefix):
    prompts = prompts_of(TEXTS)
    feats = family.scorer(batch_size=3).features(prompts, prefix=prefix)
    assert isinstance(feats, np.ndarray) and feats.dtype == np.float32
    assert feats.shape == (len(prompts), family.model.config.hidden_size)
    # The features are the final hidden state at the last token: the output layer turns them into
    # exactly the next-token logits of a plain forward pass.
    out = family.model.get_output_embeddings()
    with torch.no_grad():
        for i, p in enumerate(prompts):
            ids = torch.tensor([context_ids(family, p, prefix)])  # (1, T)
            expected = family.model(ids).logits[0, -1]  # (V,)
            got = out(torch.from_numpy(feats[i]))  # (V,)
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_features_are_batch_invariant(family):
    prompts = prompts_of(TEXTS)
    alone = np.stack([family.scorer(batch_size=1).features([p])[0] for p in prompts])
    for batch_size in (2, 7, 64):
        np.testing.assert_allclose(family.scorer(batch_size=batch_size).features(prompts), alone, atol=1e-5, rtol=0)
    order = [5, 0, 0, 3]
    np.testing.assert_allclose(
        family.scorer(batch_size=3).features([prompts[i] for i in order]), alone[order], atol=1e-5, rtol=0
    )


# -- bounded memory and deduplication (issue 11) -------------------------------------------------------


def record_passes(monkeypatch, scorer) -> list[tuple[str, int]]:
    """(kind, rows) of every pass that reaches the model: "prefix", "prompts" or "continuation"."""
    passes: list[tuple[str, int]] = []
    run = scorer.io.run

    def spy(ids, cache=None, keep=None, **kw):
        kind = "continuation" if "position_ids" in kw else "prompts" if keep is not None else "prefix"
        passes.append((kind, ids.shape[0]))
        return run(ids, cache, keep, **kw)

    monkeypatch.setattr(scorer.io, "run", spy)
    return passes


def test_the_continuation_pass_runs_in_chunks_under_the_token_budget(family, monkeypatch):
    """Many multi-token words: each continuation chunk holds at most max_tokens (pairs x tokens); scores unchanged."""
    words = {"negative": ["awful", "xylophone", "terrible"], "positive": ["superb", "wonderful", "marvellous"]}
    lt = LabelWords(words).encode(family.tokenizer)
    n_multi, width = int(lt.multi_token.sum()), max(len(w) for w in lt.word_ids) - 1
    assert n_multi >= 4
    prompts = prompts_of(TEXTS)
    expected = naive_scores(family.model, [context_ids(family, p) for p in prompts], lt.word_ids)
    for max_tokens in (40, None):
        scorer = family.scorer(batch_size=64, max_tokens=max_tokens)
        passes = record_passes(monkeypatch, scorer)
        np.testing.assert_allclose(scorer.score_words(prompts, lt), expected, atol=1e-4, rtol=0)
        chunks = [rows for kind, rows in passes if kind == "continuation"]
        batches = [rows for kind, rows in passes if kind == "prompts"]
        assert sum(chunks) == len(prompts) * n_multi  # every (prompt, word) pair once
        if max_tokens is None:
            assert chunks == [rows * n_multi for rows in batches]  # each batch's pairs at once
        else:
            longest = max(len(context_ids(family, p)) for p in prompts) - len(family.lead)
            assert len(chunks) > len(batches) and max(chunks) * (longest + width) <= max_tokens + 64


def test_identical_prompts_are_run_once_and_scored_identically(family, monkeypatch):
    lt = LabelWords(WORDS["mixed"]).encode(family.tokenizer)
    prompts = prompts_of(TEXTS)
    scorer = family.scorer(batch_size=4)
    distinct = scorer.score_words(prompts, lt, prefix=PREFIX)
    passes = record_passes(monkeypatch, scorer)
    order = [3, 0, 3, 3, 6, 0, 1, 2, 4, 5, 3]
    repeated = scorer.score_words([prompts[i] for i in order], lt, prefix=PREFIX)
    assert sum(rows for kind, rows in passes if kind == "prompts") == len(prompts)  # 11 prompts, 7 distinct
    np.testing.assert_array_equal(repeated, distinct[order])
    feats = scorer.features([prompts[i] for i in order])
    assert feats.shape[0] == len(order)
    np.testing.assert_array_equal(feats[0], feats[2])


# -- packed rows (several prompts per row, each seeing only itself) -----------------------------------


@pytest.mark.parametrize("prefix", ["", PREFIX], ids=["no-prefix", "prefix"])
@pytest.mark.parametrize("spans", [False, True], ids=["whole", "spans"])
def test_packed_rows_score_as_the_naive_reference(family, prefix, spans, monkeypatch):
    """One-token label words: prompts share rows (GPT-2's learned positions and llama's rotary ones restart
    at each prompt), through a shared prefix or not, and every score equals the model on that prompt alone."""
    lt = LabelWords(WORDS["single"]).encode(family.tokenizer)
    prompts, where = TEMPLATE.spans(TEXTS) if spans else (prompts_of(TEXTS), None)
    scorer = family.scorer(batch_size=64)
    assert scorer.io.packs
    rows_seen = []
    packed_words = scorer._packed_words
    monkeypatch.setattr(scorer, "_packed_words", lambda p, *a: rows_seen.append(p.rows) or packed_words(p, *a))
    scores = scorer.score_words(prompts, lt, spans=where, prefix=prefix)
    assert max(int((r >= 0).sum(1).max()) for r in rows_seen) >= 2  # some row held several prompts
    assert sum(int((r >= 0).sum()) for r in rows_seen) == len(prompts)
    expected = naive_scores(family.model, [context_ids(family, p, prefix) for p in prompts], lt.word_ids)
    np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=0)


def test_a_model_whose_tokens_see_past_their_prompt_keeps_padded_rows(family):
    """The probe refuses packing for a model that ignores the block-diagonal mask (as recurrent state or a
    position bias that ignores the mask would); scores stay exact through padded rows."""
    import functools

    model = copy.deepcopy(family.model)
    inner = model.forward

    @functools.wraps(inner)
    def forward(*args, attention_mask=None, **kw):
        if attention_mask is not None and attention_mask.dim() == 4:
            attention_mask = None  # the custom mask is dropped: every token sees the whole row
        return inner(*args, attention_mask=attention_mask, **kw)

    model.forward = forward
    lt = LabelWords(WORDS["single"]).encode(family.tokenizer)
    scorer = family.scorer(batch_size=64).with_settings(model=model)
    assert not scorer.io.packs
    prompts = prompts_of(TEXTS)
    expected = naive_scores(family.model, [context_ids(family, p) for p in prompts], lt.word_ids)
    np.testing.assert_allclose(scorer.score_words(prompts, lt), expected, atol=1e-4, rtol=0)
