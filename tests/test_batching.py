"""Token batches: right padding, length sorting, token budget, and truncation of the {text} slot only."""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from verbalize.engine.batching import (
    ALIGN,
    KV_TOKENS,
    Batch,
    Encoded,
    Packed,
    _after_drops,
    encode_prompts,
    pack,
    pad_id_of,
)
from verbalize.engine.tokens import char_bound, prompt_budget, reserved_tokens
from verbalize.errors import InputError
from verbalize.prompting.template import Template

TEMPLATE = Template(prompt="Review: {text}\nSentiment:", labels={"negative": ["negative"], "positive": ["positive"]})
# Ends in a letter: no token spans the end of the text and the template's "\n" (see the straddling test).
LONG = ("the story is bad and the acting was terrible in every single scene of the movie " * 3).strip()
TEXTS = ["good.", LONG, "A great film with a terrible ending.", "bad", LONG[:120], "It was fine, I guess?"]


def ragged(lengths: list[int]) -> Encoded:
    """Prompts whose tokens say where they come from: prompt i is [100*i + 1, ..., 100*i + n_i]."""
    return Encoded([[100 * i + k + 1 for k in range(n)] for i, n in enumerate(lengths)], 0)


def all_rows(batches: list[Batch]) -> np.ndarray:
    return np.concatenate([b.rows for b in batches]) if batches else np.array([], dtype=int)


# -- encode_prompts without truncation -----------------------------------------------------------------


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_encode_prompts_tokenizes_each_prompt(family, add_special_tokens):
    tok = family.tokenizer
    prompts = [TEMPLATE.render(t) for t in TEXTS]
    enc = encode_prompts(tok, prompts, add_special_tokens=add_special_tokens)
    assert enc.n_truncated == 0
    lead = list(family.lead) if add_special_tokens else []
    assert enc.ids == [lead + list(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]


def test_no_truncation_when_everything_fits(family):
    prompts, spans = TEMPLATE.spans(TEXTS)
    tok = family.tokenizer
    longest = max(len(tok(p)["input_ids"]) for p in prompts)
    enc = encode_prompts(tok, prompts, spans, max_length=longest)
    assert enc.n_truncated == 0
    assert enc.ids == [list(tok(p)["input_ids"]) for p in prompts]


# -- batches -------------------------------------------------------------------------------------------


LENGTHS = [3, 9, 1, 9, 5, 2, 7, 4, 4, 8, 6]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 64])
def test_batches_right_pad_and_point_at_the_last_real_token(batch_size):
    enc = ragged(LENGTHS)
    pad = -7
    batches = enc.batches(batch_size, pad_id=pad)
    for batch in batches:
        assert batch.input_ids.dtype == torch.long
        assert len(batch.rows) <= batch_size
        width = batch.input_ids.shape[1]
        assert width == max(LENGTHS[r] for r in batch.rows)
        for i, r in enumerate(batch.rows):
            n = LENGTHS[r]
            assert batch.input_ids[i, :n].tolist() == enc.ids[r]
            assert batch.input_ids[i, n:].tolist() == [pad] * (width - n)
            assert int(batch.last_index[i]) == n - 1
            assert batch.input_ids[i, batch.last_index[i]].item() == enc.ids[r][-1]
            mask = batch.attention_mask[i].tolist()
            assert mask == [1] * n + [0] * (width - n)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5, 64])
def test_batches_cover_every_prompt_once_longest_first(batch_size):
    enc = ragged(LENGTHS)
    batches = enc.batches(batch_size, pad_id=0)
    rows = all_rows(batches)
    assert sorted(rows.tolist()) == list(range(len(LENGTHS)))
    lengths = [LENGTHS[r] for r in rows]
    assert lengths == sorted(LENGTHS, reverse=True)
    # Ties keep their input order (stable sort), so batches are deterministic.
    for n in set(LENGTHS):
        tied = [r for r in rows.tolist() if LENGTHS[r] == n]
        assert tied == sorted(tied)
    assert len(batches) == -(-len(LENGTHS) // batch_size)


@pytest.mark.parametrize("max_tokens", [1, 8, 9, 10, 17, 20, 40, 1000])
def test_token_budget_is_respected(max_tokens):
    enc = ragged(LENGTHS)
    batches = enc.batches(batch_size=4, pad_id=0, max_tokens=max_tokens)
    assert sorted(all_rows(batches).tolist()) == list(range(len(LENGTHS)))
    for batch in batches:
        b, width = batch.input_ids.shape
        assert b <= 4
        assert b * width <= max_tokens or b == 1  # a prompt longer than the budget goes alone
    # The cuts are the cheapest ones: brute force over every way to cut the sorted lengths.
    sorted_lengths = sorted(LENGTHS, reverse=True)
    best = min(split_cost(sorted_lengths, cuts, 4, max_tokens) for cuts in all_cuts(len(LENGTHS)))
    got = sum(b.input_ids.numel() + 64 for b in batches)
    assert got == best


def all_cuts(n):
    for mask in range(1 << (n - 1)):
        yield [0] + [i for i in range(1, n) if mask >> (i - 1) & 1] + [n]


def split_cost(lengths, cuts, batch_size, max_tokens, overhead=64):
    total = 0
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        size = (b - a) * lengths[a]
        if b - a > batch_size or (size > max_tokens and b - a > 1):
            return float("inf")
        total += size + overhead
    return total


def test_split_prefers_less_padding_over_full_batches():
    from verbalize.engine.batching import split_sorted

    assert split_sorted(np.array([10, 3, 3, 3]), batch_size=4, max_tokens=40, overhead=0) == [0, 1, 4]
    assert split_sorted(np.array([10, 3, 3, 3]), batch_size=4, max_tokens=40, overhead=64) == [0, 4]


def test_token_budget_gives_short_prompts_bigger_batches():
    enc = ragged([10, 10, 2, 2, 2, 2, 2])
    sizes = [len(b.rows) for b in enc.batches(batch_size=8, pad_id=0, max_tokens=20)]
    assert sizes == [2, 5]


def test_no_prompts_no_batches():
    assert Encoded([], 0).batches(4, pad_id=0) == []


def test_batches_of_real_prompts(family):
    tok = family.tokenizer
    prompts = [TEMPLATE.render(t) for t in TEXTS]
    enc = encode_prompts(tok, prompts)
    pad = pad_id_of(tok)
    for batch in enc.batches(batch_size=4, pad_id=pad):
        for i, r in enumerate(batch.rows):
            n = int(batch.last_index[i]) + 1
            assert batch.input_ids[i, :n].tolist() == list(tok(prompts[r])["input_ids"])
            assert (batch.input_ids[i, n:] == pad).all()


# -- pad id --------------------------------------------------------------------------------------------


def test_pad_id_for_gpt2_without_pad_token_is_eos(gpt2_tokenizer):
    assert gpt2_tokenizer.pad_token_id is None
    assert (
        pad_id_of(gpt2_tokenizer)
        == gpt2_tokenizer.eos_token_id
        == gpt2_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    )


def test_pad_id_uses_the_pad_token(llama_tokenizer):
    assert pad_id_of(llama_tokenizer) == llama_tokenizer.convert_tokens_to_ids("<pad>")


def test_pad_id_without_any_special_token_is_zero():
    assert pad_id_of(SimpleNamespace(pad_token_id=None, eos_token_id=None)) == 0


# -- truncation ----------------------------------------------------------------------------------------


def n_template_tokens(tokenizer, prompt: str, span: tuple[int, int], add_special_tokens: bool = True) -> int:
    """Tokens of ``prompt`` that overlap no character of its text (template words and special tokens)."""
    enc = tokenizer(prompt, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    start, end = span
    return sum(1 for a, b in enc["offset_mapping"] if not (b > a and a < end and b > start))


def check_cut_inside_text(tokenizer, prompt, span, max_length, add_special_tokens, lead, result):
    """``result`` has max_length tokens and reads: template head, the start of the text, template tail."""
    start, end = span
    head, text, tail = prompt[:start], prompt[start:end], prompt[end:]
    assert len(result) == max_length
    if add_special_tokens:
        assert result[: len(lead)] == list(lead)
    decoded = tokenizer.decode(result, skip_special_tokens=True)
    # The template's words are all there, whole, in place...
    assert decoded.lstrip().startswith(head.strip()), decoded
    assert decoded.endswith(tail), decoded
    # ...and what is left of the text is its beginning: the end of the text was cut.
    middle = decoded.lstrip()[len(head.strip()) : len(decoded.lstrip()) - len(tail)].strip()
    assert len(middle) < len(text)
    assert text.startswith(middle), (middle, text)


@pytest.mark.parametrize("add_special_tokens", [True, False])
@pytest.mark.parametrize("room", [0, 6, 20])
def test_truncation_cuts_only_the_text(family, add_special_tokens, room):
    tok = family.tokenizer
    template = Template(
        prompt="Question: {text}\nThe topic is sports, world or business. Answer:",
        labels={"sports": ["sports"], "world": ["world"]},
    )
    texts = [LONG, "short one", LONG[:150] + " {braces} => ok"]
    prompts, spans = template.spans(texts)
    natural = [list(tok(p, add_special_tokens=add_special_tokens)["input_ids"]) for p in prompts]
    max_length = len(natural[1]) + room
    enc = encode_prompts(tok, prompts, spans, max_length=max_length, add_special_tokens=add_special_tokens)
    too_long = [i for i, ids in enumerate(natural) if len(ids) > max_length]
    assert too_long[0] == 0 and 1 not in too_long, "the test needs prompts that do not fit"
    assert enc.n_truncated == len(too_long)
    for i, ids in enumerate(enc.ids):
        if i in too_long:
            check_cut_inside_text(tok, prompts[i], spans[i][0], max_length, add_special_tokens, family.lead, ids)
        else:
            assert ids == natural[i]


def test_truncated_ids_tokenize_the_prompt_with_a_shortened_text(gpt2_tokenizer):
    # The result is what the tokenizer gives for a real string: the template with the text cut at a
    # token boundary (so that the model never sees a token sequence no string produces).
    tok = gpt2_tokenizer
    prompts, spans = TEMPLATE.spans([LONG])
    [(start, end)] = spans[0]
    n_full = len(tok(prompts[0])["input_ids"])
    for max_length in (n_full - 1, n_full - 10, n_full - 30):
        ids = encode_prompts(tok, prompts, spans, max_length=max_length).ids[0]
        assert max_length - 3 <= len(ids) <= max_length
        decoded = tok.decode(ids)
        assert decoded.startswith(prompts[0][:start]) and decoded.endswith(prompts[0][end:])
        kept = decoded[start : len(decoded) - len(prompts[0]) + end]
        assert LONG.startswith(kept) and len(kept) < len(LONG)
        assert ids == list(tok(prompts[0][:start] + kept + prompts[0][end:])["input_ids"])


def test_truncation_may_remove_the_whole_text_but_no_more(family):
    tok = family.tokenizer
    prompts, spans = TEMPLATE.spans([LONG])
    template_only = n_template_tokens(tok, prompts[0], spans[0][0])
    enc = encode_prompts(tok, prompts, spans, max_length=template_only)
    assert len(enc.ids[0]) == template_only
    assert tok.decode(enc.ids[0], skip_special_tokens=True).endswith("\nSentiment:")
    message = f"text 0: the template alone takes {template_only} tokens, more than max_length={template_only - 1}"
    with pytest.raises(InputError, match=re.escape(message)):
        encode_prompts(tok, prompts, spans, max_length=template_only - 1)


def test_template_alone_too_long_names_the_row(family):
    tok = family.tokenizer
    template = Template(
        prompt="Read the review and answer with one word. The sentiment is positive or negative. {text} =>",
        labels={"negative": ["negative"], "positive": ["positive"]},
    )
    prompts, spans = template.spans(["fine", "ok"])
    with pytest.raises(InputError, match=r"text 0: the template alone takes \d+ tokens, more than max_length=5;"):
        encode_prompts(tok, prompts, spans, max_length=5)


def test_long_prompt_without_spans_is_an_error(family):
    prompts = [TEMPLATE.render(LONG), TEMPLATE.render("ok")]
    with pytest.raises(InputError, match=re.escape("1 prompts are longer than 16 tokens and no text span was given")):
        encode_prompts(family.tokenizer, prompts, max_length=16)


@pytest.mark.parametrize(
    ("name", "prompt"),
    [
        ("gpt2", 'Review: "{text}"\nSentiment:'),
        ("llama", 'Review: "{text}"\nSentiment:'),
        ("llama", "Review: {text}\nSentiment:"),
    ],
    ids=["gpt2-quote", "llama-quote", "llama-newline"],
)
def test_a_token_straddling_text_and_template_is_not_cut(request, name, prompt):
    """A token holding the text's last characters *and* template characters must not be dropped.

    Byte-level BPE merges punctuation runs ('."' when the text ends in '.' and the template closes a
    quote); SentencePiece-style BPE can merge across a newline ('.\nSentiment:'). Dropping that token
    deletes part of the template, which the model then never sees.
    """
    family = request.getfixturevalue(name)
    tok = family.tokenizer
    template = Template(prompt=prompt, labels={"negative": ["negative"], "positive": ["positive"]})
    prompts, spans = template.spans([LONG + "."])
    offsets = tok(prompts[0], return_offsets_mapping=True)["offset_mapping"]
    end = spans[0][0][1]
    assert [(a, b) for a, b in offsets if a < end < b], "the fixture tokenizer should merge across the boundary"
    max_length = len(offsets) - 5
    enc = encode_prompts(tok, prompts, spans, max_length=max_length)
    check_cut_inside_text(tok, prompts[0], spans[0][0], max_length, True, family.lead, enc.ids[0])


# -- a huge text: cut by characters before it is tokenized ------------------------------------------------

HUGE = "the story is bad and the acting was terrible in every scene. " * 33_000  # 2 MB, one line


class Recording:
    """A tokenizer that remembers the longest string it was asked to read."""

    def __init__(self, tokenizer):
        self._tokenizer, self.longest = tokenizer, 0

    def __call__(self, text, *args, **kwargs):
        self.longest = max([self.longest, *map(len, [text] if isinstance(text, str) else text)])
        return self._tokenizer(text, *args, **kwargs)

    def __len__(self):
        return len(self._tokenizer)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def kept_by_tokens(tokenizer, head: str, text: str, tail: str, budget: int) -> str:
    """``text`` cut at the token boundary that keeps the most of its tokens with the prompt within ``budget``
    (what the model may read), found by bisection over the whole text's own tokens."""
    offsets = tokenizer(head + text + tail, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    firsts = [a - len(head) for a, b in offsets if b > a and len(head) <= a < len(head) + len(text)]
    firsts = [max(f, 0) for f in firsts] + [len(text)]

    def fits(k: int) -> bool:
        kept = text[: firsts[k]].rstrip()
        return len(tokenizer(head + kept + tail, add_special_tokens=False)["input_ids"]) <= budget

    lo, hi = 0, len(firsts) - 1  # fits(lo); not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return text[: firsts[lo]].rstrip()


def test_a_huge_text_is_cut_by_characters_before_the_tokenizer_reads_it(family):
    """A 2 MB line: the tokenizer reads at most the character bound (it read all 2 MB, a 200 MB line
    aborted the process), and the ids are those of the whole text cut by tokens."""
    tok = Recording(family.tokenizer)
    prompts, spans = TEMPLATE.spans([HUGE, "good."])
    bound = char_bound(family.tokenizer, 60)
    assert bound < len(HUGE) // 100, "the test needs a text far over the bound"
    enc = encode_prompts(tok, prompts, spans, max_length=60, add_special_tokens=False)
    assert tok.longest <= bound + len(TEMPLATE.prompt)
    assert enc.n_truncated == 1 and len(enc.ids[0]) <= 60
    # HUGE repeats itself: its first 100,000 characters stand for the whole text (far over the bound too)
    whole = TEMPLATE.spans([HUGE[:100_000]])
    assert (
        enc.ids[:1]
        == encode_prompts(family.tokenizer, *whole, max_length=60, add_special_tokens=False, cut_chars=False).ids
    )
    head, tail = TEMPLATE.prompt.split("{text}")
    kept = kept_by_tokens(family.tokenizer, head, HUGE.strip()[:100_000], tail, 60)
    assert enc.ids[0] == list(family.tokenizer(head + kept + tail, add_special_tokens=False)["input_ids"])


def test_a_huge_text_scores_as_the_text_cut_by_tokens(family):
    scorer = family.scorer()
    lt = TEMPLATE.labels.encode(family.tokenizer)
    scorer.tokenizer = tok = Recording(family.tokenizer)
    prompts, spans = TEMPLATE.spans([HUGE])
    got = scorer.score_words(prompts, lt, spans)
    assert scorer.last_n_truncated == 1
    budget = prompt_budget(scorer.context_length, reserved_tokens(lt), len(family.lead))
    assert tok.longest <= 4 * char_bound(family.tokenizer, budget) + len(TEMPLATE.prompt)
    head, tail = TEMPLATE.prompt.split("{text}")
    kept = kept_by_tokens(family.tokenizer, head, HUGE.strip()[:100_000], tail, budget)
    short, short_spans = TEMPLATE.spans([kept])
    want = scorer.score_words(short, lt, short_spans)
    assert scorer.last_n_truncated == 0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_drops_in_closed_form_equal_one_at_a_time():
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = [int(x) for x in rng.integers(0, 12, size=int(rng.integers(1, 5)))]
        keep = list(counts)
        for drops in range(sum(counts) + 3):
            assert _after_drops(counts, drops) == keep, (counts, drops)
            if any(keep):
                keep[keep.index(max(keep))] -= 1  # from the field that keeps the most, the first of equals


def test_a_long_prompt_scored_alone_with_its_own_prefix_scores_as_in_a_batch(family, monkeypatch):
    """Prompts over LONG_ROW tokens run one by one and whole, sharing no prefix (an 8k-token
    prompt after a prefix took 2.5 GB more, masked): words of several tokens and pooled features unchanged."""
    from verbalize.engine import scoring
    from verbalize.prompting.labels import LabelWords

    scorer = family.scorer(batch_size=4)
    lt = LabelWords({"negative": ["bad"], "positive": ["a good one"]}).encode(family.tokenizer)
    prompts, spans = TEMPLATE.spans([LONG, "good.", LONG[:100], "It was fine, I guess?", LONG])
    pools = [("mean", 2), ("last", 1)]
    want_words, want_feats = scorer.outputs(prompts, lt, pools, spans, prefix="Reviews.\n")
    monkeypatch.setattr(scoring, "LONG_ROW", 12)
    assert sum(len(family.tokenizer(p)["input_ids"]) > 12 for p in prompts) >= 3, "the test needs long prompts"
    got_words, got_feats = scorer.outputs(prompts, lt, pools, spans, prefix="Reviews.\n")
    np.testing.assert_allclose(got_words, want_words, rtol=0, atol=1e-5)
    for got, want in zip(got_feats, want_feats, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


# -- packed rows ---------------------------------------------------------------------------------------


def check_packed(ids: list[list[int]], packs: list[Packed], batch_size: int, max_tokens: int | None) -> None:
    """Every prompt lies once, whole and in order, at positions 0..n-1 of its own segment, within the budgets."""
    seen: list[int] = []
    for p in packs:
        n_rows, length = p.input_ids.shape
        real = p.rows >= 0
        assert real.sum() <= batch_size
        if n_rows > 1 and max_tokens is not None:
            assert n_rows * length <= max_tokens
        for r in range(n_rows):
            at = 0
            for j, i in enumerate(p.rows[r]):
                if i < 0:
                    assert int(p.last_index[r, j]) == int(p.last_index[r, j - 1])  # repeats the row's last
                    continue
                n = len(ids[i])
                assert p.input_ids[r, at : at + n].tolist() == ids[i]
                assert p.position_ids[r, at : at + n].tolist() == list(range(n))
                assert (p.segment[r, at : at + n] == j).all()
                assert int(p.last_index[r, j]) == at + n - 1
                seen.append(int(i))
                at += n
            assert (p.segment[r, at:] == -1).all()  # the rest of the row is padding
    assert sorted(seen) == list(range(len(ids)))


@pytest.mark.parametrize(
    ("lengths", "batch_size", "max_tokens", "row"),
    [
        ([5, 4, 2, 1], 64, None, 8),
        ([3] * 40, 64, 1024, 128),
        ([30, 1, 17, 9, 9, 60, 2, 2, 44, 5, 12], 4, 100, 32),
        ([200, 3, 3], 64, 64, 128),  # a prompt longer than the row and the budget: a row of its own
        ([7] * 10, 1, 1024, 128),  # batch_size 1: one prompt per forward
    ],
)
def test_pack_places_every_prompt_once_within_the_budgets(lengths, batch_size, max_tokens, row):
    enc = ragged(lengths)
    packs = pack(enc.ids, batch_size, pad_id=0, max_tokens=max_tokens, row=row)
    check_packed(enc.ids, packs, batch_size, max_tokens)
    cap = max(max(lengths), min(row, max_tokens or row))
    aligned = -(-cap // ALIGN) * ALIGN
    assert all(p.input_ids.shape[1] <= aligned and p.input_ids.shape[1] % ALIGN == 0 for p in packs)


def test_pack_fills_rows_instead_of_padding():
    enc = ragged([3] * 40)  # 120 tokens: one row of 128 holds them all
    (p,) = pack(enc.ids, 64, 0, 1024, row=128)
    assert p.input_ids.shape == (1, 120) and (p.rows >= 0).sum() == 40
    padded = enc.batches(64, 0, 1024)
    assert sum(b.input_ids.numel() for b in padded) == 120  # (equal here; packing wins on ragged lengths)
    ragged_enc = ragged([30, 2, 2, 2, 25, 3, 3, 28])
    packs = pack(ragged_enc.ids, 64, 0, 1024, row=128)
    packed_tokens = sum(p.input_ids.numel() for p in packs)
    padded_tokens = sum(b.input_ids.numel() for b in ragged_enc.batches(64, 0, 1024))
    real = sum(len(x) for x in ragged_enc.ids)
    assert packed_tokens - real < ALIGN * sum(p.input_ids.shape[0] for p in packs)  # rows padded to ALIGN only
    assert packed_tokens < padded_tokens


def test_pack_with_a_prefix_copied_to_every_row_keeps_the_cached_tokens_budget():
    enc = ragged([100] * 30)
    packs = pack(enc.ids, 64, 0, None, prefix_per_row=1000, row=128)
    assert all(
        p.input_ids.shape[0] * (p.input_ids.shape[1] + 1000) <= KV_TOKENS or p.input_ids.shape[0] == 1 for p in packs
    )
    check_packed(enc.ids, packs, 64, None)


def test_packed_mask_lets_a_token_see_the_prefix_and_its_own_earlier_tokens_only():
    enc = ragged([3, 2, 4])
    (p,) = pack(enc.ids, 64, 0, None, row=6)  # rows: [4, 2] and [3] + padding
    n_prefix = 2
    mask = p.attention_mask(n_prefix)
    n_rows, length = p.input_ids.shape
    assert mask.shape == (n_rows, 1, length, n_prefix + length) and mask.dtype == torch.bool
    for r in range(n_rows):
        for q in range(length):
            for k in range(length):
                same = int(p.segment[r, q]) == int(p.segment[r, k]) >= 0 and k <= q
                assert bool(mask[r, 0, q, n_prefix + k]) == (same or k == q), (r, q, k)
            assert mask[r, 0, q, :n_prefix].all()


def test_pack_of_nothing_is_nothing():
    assert pack([], 64, 0, 1024) == []


def test_one_long_prompt_does_not_make_every_row_long():
    enc = ragged([500] + [20] * 30)
    packs = pack(enc.ids, 64, 0, None, row=128)
    check_packed(enc.ids, packs, 64, None)
    widths = sorted(p.input_ids.shape[1] for p in packs)
    rows_of_short = [p for p in packs if 500 not in [len(enc.ids[i]) for i in p.rows[p.rows >= 0]]]
    assert rows_of_short and all(p.input_ids.shape[1] <= 128 for p in rows_of_short), widths
