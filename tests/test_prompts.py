"""What the model reads: one rule for the tokens reserved for label words, shared by the budget and the scorer."""

import logging

import pytest

from verbalize import LabelWords, Template
from verbalize.engine.tokens import leading_special_ids, reserved_tokens
from verbalize.prompting.prompts import PromptBuilder, resolve_template

LABELS = {"negative": ["bad"], "positive": ["good"]}


def test_reserved_tokens_are_the_tokens_of_the_longest_word_but_its_first(family):
    tok = family.tokenizer
    one = LabelWords(LABELS).encode(tok)
    assert reserved_tokens(one) == max(len(ids) for ids in one.word_ids) - 1
    long = LabelWords({"negative": ["bad"], "positive": ["a thoroughly positive review"]}).encode(tok)
    assert reserved_tokens(long) == len(long.word_ids[1]) - 1 > 0
    assert reserved_tokens(None) == 0


def test_leading_special_ids_are_the_bos_the_tokenizer_adds(family):
    assert tuple(leading_special_ids(family.tokenizer)) == family.lead


def _builder(family, context_length, labels=LABELS):
    template = Template(prompt="Review: {text}\nSentiment:", labels=labels)
    tokens = template.labels.encode(family.tokenizer)
    demos = [("good film", "positive"), ("bad film", "negative")]
    return PromptBuilder(template, demos, (), 2, family.tokenizer, context_length, reserved_tokens(tokens)), tokens


@pytest.mark.parametrize("labels", [LABELS, {"negative": ["bad"], "positive": ["a thoroughly positive review"]}])
def test_the_budget_keeps_demonstrations_exactly_while_the_scorer_would_not_cut_the_text(family, labels, caplog):
    """At the boundary the builder and the scorer agree: kept demos never make the scorer truncate."""
    texts = ["a good film with a bad ending"]
    builder, tokens = _builder(family, 10**6, labels)
    full = builder.build(texts)
    n_lead = len(family.lead)
    needed = n_lead + len(family.tokenizer(full.prefix + full.prompts[0], add_special_tokens=False)["input_ids"])
    needed += builder.reserved
    at_limit, _ = _builder(family, needed, labels)
    assert at_limit.build(texts).prefix == full.prefix  # fits exactly: both demonstrations kept
    scorer = family.scorer(max_length=needed)
    p = at_limit.build(texts)
    scorer.encode(p.prompts, p.spans, p.prefix, reserved_tokens(tokens))
    assert scorer.last_n_truncated == 0
    one_short, _ = _builder(family, needed - 1, labels)
    with caplog.at_level(logging.WARNING):
        shorter = one_short.build(texts).prefix
    assert len(shorter) < len(full.prefix) and "kept 1 of 2 demonstrations" in caplog.text


def test_per_text_demonstrations_follow_the_shared_instruction():
    template = Template(prompt="Q: {text} A:", labels=LABELS, instruction="Answer.")
    pool = [("good good", "positive"), ("bad bad", "negative")]
    built = PromptBuilder(template, (), pool, 1).build(["bad bad film"])
    assert built.prefix == "Answer.\n\n"
    assert built.prompts[0] == "Q: bad bad A: bad\n\nQ: bad bad film A:"
    [(a, b)] = built.spans[0]
    assert built.prompts[0][a:b] == "bad bad film"


def test_resolve_template_explains_what_is_missing():
    with pytest.raises(ValueError, match="needs template="):
        resolve_template(None, None)
    with pytest.raises(ValueError, match="inline prompt needs labels="):
        resolve_template("classify: {text} =>", None)
    t = resolve_template("classify: {text} =>", LABELS)
    assert list(t.labels) == ["negative", "positive"]
    assert list(resolve_template(t, {"a": ["x"], "b": ["y"]}).labels) == ["a", "b"]
