"""Label words: the mapping, its validation, and how words tokenize after a prompt (per tokenizer family)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from verbalize.engine.tokens import LabelTokens
from verbalize.errors import TemplateError
from verbalize.prompting.labels import LabelWords

CONTEXTS = ["Review: the plot was bad.\nSentiment:", "Question: what is the topic? Answer:", "x =>"]
WORDS = ["positive", "negative", "good", "bad", "sports", "technology", "superb", "xylophone"]


def plain_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


# -- the mapping ---------------------------------------------------------------------------------------


def test_mapping_keeps_label_order_and_gives_tuples():
    words = LabelWords({"world": ["world"], "sports": ["sports", "game"], "business": "business"})
    assert list(words) == ["world", "sports", "business"]
    assert len(words) == 3
    assert words["sports"] == ("sports", "game")
    assert words["business"] == ("business",)  # a bare string is one word, not its characters
    assert "world" in words and "tech" not in words
    assert list(words.items())[1] == ("sports", ("sports", "game"))
    with pytest.raises(KeyError):
        words["tech"]


def test_mapping_is_read_only_and_copies_its_input():
    source = {"neg": ["bad"], "pos": ["good"]}
    words = LabelWords(source)
    source["pos"].append("great")
    assert words["pos"] == ("good",)
    with pytest.raises(TypeError):
        words["neg"] = ("awful",)  # type: ignore[index]


def test_equality_and_hash():
    a = LabelWords({"neg": ["bad"], "pos": ["good", "great"]})
    b = LabelWords({"neg": ("bad",), "pos": ("good", "great")})
    assert a == b and hash(a) == hash(b)
    assert a == {"neg": ["bad"], "pos": ["good", "great"]}
    assert a != LabelWords({"neg": ["bad"], "pos": ["great", "good"]})
    assert a != ["neg", "pos"]
    assert "'pos': ('good', 'great')" in repr(a)


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"only": ["one"]}, "labels: needs at least two labels, got 1"),
        ({}, "labels: needs at least two labels, got 0"),
        (["neg", "pos"], "labels: expected a table of label = [words], got list"),
        ({"neg": [], "pos": ["good"]}, "labels.neg: has no words"),
        ({"neg": ["bad", ""], "pos": ["good"]}, "labels.neg: words must be non-empty strings, got ''"),
        ({"neg": ["bad", 3], "pos": ["good"]}, "labels.neg: words must be non-empty strings, got 3"),
        ({"neg": ["bad "], "pos": ["good"]}, "labels.neg: word 'bad ' has surrounding whitespace; remove it"),
        ({"neg": ["bad", "meh"], "pos": ["meh"]}, "labels.pos: word 'meh' also appears under labels.neg"),
        ({" ": ["bad"], "pos": ["good"]}, "labels: label names must be non-empty strings, got ' '"),
    ],
)
def test_validation_messages(mapping, message):
    with pytest.raises(TemplateError, match=re.escape(f"f.toml: {message}")):
        LabelWords(mapping, source="f.toml")


def test_validation_reports_every_problem():
    with pytest.raises(TemplateError) as info:
        LabelWords({"neg": [], "pos": [" good", "ok"], "mid": ["ok"]}, source="f.toml")
    assert len(info.value.issues) == 3
    assert all(i.startswith("f.toml: labels.") for i in info.value.issues)


def test_repeated_word_under_one_label_is_allowed():
    assert LabelWords({"neg": ["bad", "bad"], "pos": ["good"]})["neg"] == ("bad", "bad")


# -- encoding ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("context", CONTEXTS)
def test_leading_space_word_gives_the_tokens_seen_after_the_prompt(family, context):
    """The whitespace rule, once per tokenizer family: prompt ids + word ids == ids of 'prompt word'."""
    tok = family.tokenizer
    lt = LabelWords({"a": WORDS[::2], "b": WORDS[1::2]}).encode(tok, prefix=" ", context=context)
    assert lt.words == tuple(WORDS[::2] + WORDS[1::2])
    for word, ids in zip(lt.words, lt.word_ids, strict=True):
        assert plain_ids(tok, context) + list(ids) == plain_ids(tok, context + " " + word), word
        # With the special tokens the model gets (BOS for llama), the word ids still close the sequence.
        full = list(tok(context + " " + word)["input_ids"])
        assert full == list(family.lead) + plain_ids(tok, context) + list(ids)


def test_the_space_belongs_to_the_word_token(family):
    tok = family.tokenizer
    marker = {"gpt2": "Ġ", "llama": "▁"}[family.name]
    lt = LabelWords({"a": ["positive", "superb"], "b": ["negative"]}).encode(tok)
    for ids in lt.word_ids:
        first = tok.convert_ids_to_tokens(ids[0])
        assert first.startswith(marker), first
        assert tok.decode(list(ids)).strip() in ("positive", "superb", "negative")


def test_encode_without_context_matches_encode_after_a_prompt(family):
    tok = family.tokenizer
    words = LabelWords({"a": WORDS[:4], "b": WORDS[4:]})
    bare = words.encode(tok)
    for context in CONTEXTS:
        assert words.encode(tok, context=context).word_ids == bare.word_ids
    assert bare.word_ids == tuple(tuple(plain_ids(tok, " " + w)) for w in WORDS)


def test_prefix_is_put_before_every_word(gpt2_tokenizer):
    tok = gpt2_tokenizer
    words = LabelWords({"a": ["positive"], "b": ["negative"]})
    spaced = words.encode(tok, prefix=" ", context="Sentiment:")
    glued = words.encode(tok, prefix="", context="Sentiment:")
    assert spaced.word_ids != glued.word_ids  # byte-level BPE: " positive" and "positive" differ
    assert list(glued.word_ids[0]) == plain_ids(tok, "Sentiment:positive")[len(plain_ids(tok, "Sentiment:")) :]
    newline = words.encode(tok, prefix="\n", context="Sentiment:")
    assert plain_ids(tok, "Sentiment:") + list(newline.word_ids[1]) == plain_ids(tok, "Sentiment:\nnegative")


def test_label_tokens_fields(family):
    lt = LabelWords({"neg": ["negative", "bad"], "mid": ["neutral"], "pos": ["positive"]}).encode(family.tokenizer)
    assert isinstance(lt, LabelTokens)
    assert lt.labels == ("neg", "mid", "pos")
    assert lt.words == ("negative", "bad", "neutral", "positive")
    np.testing.assert_array_equal(lt.word_label, [0, 0, 1, 2])
    assert all(isinstance(t, int) for ids in lt.word_ids for t in ids)


def test_multi_token_mask(family):
    tok = family.tokenizer
    words = ["positive", "xylophone", "good", "superb"]
    lt = LabelWords({"a": words[:2], "b": words[2:]}).encode(tok)
    expected = [len(plain_ids(tok, " " + w)) > 1 for w in words]
    # The fixture corpus makes the first of each pair one token and the second several.
    assert expected == [False, True, False, True]
    assert lt.multi_token.dtype == bool
    np.testing.assert_array_equal(lt.multi_token, expected)
    assert len(lt.word_ids[1]) == len(plain_ids(tok, " xylophone")) >= 3


def test_two_labels_with_identically_tokenized_words_is_an_error(llama_tokenizer):
    # NFKC (SentencePiece's normalization) folds full-width letters: "ｇｏｏｄ" tokenizes as "good".
    tok = llama_tokenizer
    assert plain_ids(tok, " ｇｏｏｄ") == plain_ids(tok, " good")
    words = LabelWords({"neg": ["bad", "ｇｏｏｄ"], "pos": ["good"]}, source="f.toml")
    ids = plain_ids(tok, " good")
    # Like every template error, it names the file and the key (DESIGN, house rule 5).
    message = f"f.toml: labels.pos: word 'good' has the same tokens {ids} as 'ｇｏｏｄ' under labels.neg"
    with pytest.raises(TemplateError, match=re.escape(message) + ".*change one of them"):
        words.encode(tok)


def test_unknown_characters_collide_too(llama_tokenizer):
    # Characters outside the vocabulary (no byte fallback) all become <unk>.
    tok = llama_tokenizer
    assert plain_ids(tok, " ж") == plain_ids(tok, " щ")
    with pytest.raises(TemplateError, match="has the same tokens"):
        LabelWords({"a": ["ж"], "b": ["щ"]}).encode(tok)


def test_same_words_are_distinct_for_a_byte_level_tokenizer(gpt2_tokenizer):
    lt = LabelWords({"neg": ["ｇｏｏｄ"], "pos": ["good"]}).encode(gpt2_tokenizer)
    assert lt.word_ids[0] != lt.word_ids[1]


def test_identical_tokens_under_one_label_are_scored_once(llama_tokenizer):
    lt = LabelWords({"neg": ["bad"], "pos": ["good", "ｇｏｏｄ", "great"]}).encode(llama_tokenizer)
    assert lt.words == ("bad", "good", "great")
    np.testing.assert_array_equal(lt.word_label, [0, 1, 1])
    assert len(set(lt.word_ids)) == len(lt.word_ids)


def test_every_collision_is_reported(llama_tokenizer):
    words = LabelWords({"a": ["ｇｏｏｄ", "ж"], "b": ["good", "щ"]})
    with pytest.raises(TemplateError) as info:
        words.encode(llama_tokenizer)
    assert len(info.value.issues) == 2
