"""What the model reads: one rule for the tokens reserved for label words, shared by the budget and the scorer."""

import json
import logging

import numpy as np
import pytest

from verbalize import LabelWords, Template, load_template
from verbalize.engine.tokens import char_bound, leading_special_ids, reserved_tokens
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
    assert len(shorter) < len(full.prefix) and "1 of 1 texts lost 1 of the 2 shared demonstrations" in caplog.text


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


BOUNDARY_TEMPLATE = """
prompt = "Review: {text}\\nSentiment:"
[labels]
negative = ["bad"]
positive = ["a thoroughly positive review"]
"""


def _model_dir_with_window(family, path, window):
    """The family's tokenizer, saved with a config whose context window is ``window`` (what `check` reads)."""
    family.tokenizer.save_pretrained(path)
    (path / "config.json").write_text(json.dumps({"max_position_embeddings": window, "n_positions": window}))
    return path


def test_builder_scorer_and_check_agree_on_fit_at_the_exact_boundary(family, tmp_template, tmp_path, capsys):
    """One budget rule: at window = needed the prompt fits everywhere; one token less, it is cut everywhere."""
    from verbalize.cli.main import main

    tok, text = family.tokenizer, "a good film with a bad ending"
    template = load_template(tmp_template(BOUNDARY_TEMPLATE))
    prompt = template.render(text)
    tokens = template.labels.encode(tok, template.label_prefix, prompt)
    assert reserved_tokens(tokens) > 0
    needed = len(family.lead) + len(tok(prompt, add_special_tokens=False)["input_ids"]) + reserved_tokens(tokens)
    assert needed < family.model.config.max_position_embeddings  # the scorer's window is the one given
    assert PromptBuilder(template, (), (), 0, tok, needed, reserved_tokens(tokens)).budget() == needed - len(
        family.lead
    ) - reserved_tokens(tokens)
    for window, fits in ((needed, True), (needed - 1, False)):
        built = PromptBuilder(template, (), (), 0, tok, window, reserved_tokens(tokens)).build([text])
        scorer = family.scorer(max_length=window)
        scorer.encode(built.prompts, built.spans, built.prefix, reserved_tokens(tokens))
        assert scorer.last_n_truncated == (0 if fits else 1), window
        model_dir = _model_dir_with_window(family, tmp_path / f"w{window}", window)
        assert main(["check", str(template.source), "--model", str(model_dir), "--text", text]) == 0
        out = capsys.readouterr().out
        assert ("fits: the sample text" in out) == fits and ("would be cut" in out) != fits, (window, out)


def test_similar_demonstrations_are_dropped_whole_and_the_text_is_never_cut(family, caplog):
    """demo_selection="similar": per-text demonstrations go, least similar first, before a token of the text."""
    tok = family.tokenizer
    template = Template(prompt="Review: {text}\nSentiment:", labels=LABELS)
    reserved = reserved_tokens(template.labels.encode(tok))
    pool = [("the plot was bad and the film was terrible", "negative"), ("a good film", "positive")]
    text = "a good film with a bad ending"
    free = PromptBuilder(template, (), pool, 2).build([text])
    nearest = template.render_demo("a good film", "positive")
    assert free.prompts[0].count("Sentiment:") == 3 and free.prompts[0].index(nearest) > 0  # nearest last

    def needed(prompts):
        return len(family.lead) + len(tok(prompts.prefix + prompts.prompts[0], add_special_tokens=False)["input_ids"])

    one_demo = PromptBuilder(template, (), pool[1:], 1).build([text])
    window = needed(one_demo) + reserved  # room for the nearest demonstration, not for both
    assert needed(free) + reserved > window
    with caplog.at_level(logging.WARNING):
        built = PromptBuilder(template, (), pool, 2, tok, window, reserved).build([text])
    assert built.prompts[0] == one_demo.prompts[0] and "kept fewer of their own demonstrations" in caplog.text
    [(a, b)] = built.spans[0]
    assert built.prompts[0][a:b] == text
    scorer = family.scorer(max_length=window)
    scorer.encode(built.prompts, built.spans, built.prefix, reserved)
    assert scorer.last_n_truncated == 0  # the text is whole
    tight = PromptBuilder(
        template, (), pool, 2, tok, needed(PromptBuilder(template).build([text])) + reserved, reserved
    )
    assert tight.build([text]).prompts[0] == template.spans([text])[0][0]  # no demonstration left, the text whole


def test_knn_drops_demonstrations_before_its_texts_are_cut(family):
    """KNNPrompting's shared demonstrations follow the same budget: dropped whole, the text never cut for them."""
    from verbalize.knn import next_token_log_probs

    tok, text = family.tokenizer, "a good film with a bad ending"
    template = Template(prompt="Review: {text}\nSentiment:", labels=LABELS)
    demos = [("the plot was bad and the film was terrible", "negative"), ("a good film", "positive")]
    alone = len(family.lead) + len(tok(template.render(text), add_special_tokens=False)["input_ids"])
    scorer = family.scorer(max_length=alone + 2)  # room for the text, not for a demonstration
    plain = next_token_log_probs(scorer, template, [text])
    got = next_token_log_probs(scorer, template, [text], demos)
    assert scorer.last_n_truncated == 0
    np.testing.assert_allclose(got, plain, atol=1e-5)  # both demonstrations dropped: the prompt is the text's alone


# -- shared demonstrations: how many a text keeps depends on that text only -------------------------
FEW_X = ["good film", "bad film", "a great review", "terrible and bad"]
FEW_Y = ["positive", "negative", "positive", "negative"]
SHORT = "fine"
LONG = "a good film with a bad ending and the market fell today"


def _kept(tok, template, demos, prompt, budget):
    """The naive rule: drop demonstrations from the end until prefix + prompt fits (or none is left)."""
    k = len(demos)
    while k and len(tok(template.prefix(demos[:k]) + prompt, add_special_tokens=False)["input_ids"]) > budget:
        k -= 1
    return k


def _fewshot(family):
    """A few-shot classifier whose window holds all demonstrations beside SHORT but not beside LONG."""
    from verbalize import Verbalizer

    tok = family.tokenizer
    probe = Verbalizer(
        template="Review: {text}\nSentiment:", labels=LABELS, model=family.scorer(), n_demos=4, random_state=0
    )
    probe.fit(FEW_X, FEW_Y)
    template, demos = probe.template_, list(probe.demos_)
    needed = len(tok(template.render(SHORT, demos), add_special_tokens=False)["input_ids"])
    window = needed + len(family.lead) + reserved_tokens(probe.label_tokens_)
    assert window <= family.model.config.max_position_embeddings
    clf = Verbalizer(template="Review: {text}\nSentiment:", labels=LABELS, model=family.scorer())
    clf.set_params(n_demos=4, random_state=0, max_length=window).fit(FEW_X, FEW_Y)
    assert list(clf.demos_) == demos and clf.scorer_.context_length == window
    return clf


def test_a_texts_prompt_and_scores_do_not_depend_on_its_batch_neighbours(family):
    """House rule: the same text gets the same score alone or in any batch, demonstrations near the budget too."""
    clf = _fewshot(family)
    alone = clf.predict_proba([SHORT])
    together = clf.predict_proba([SHORT, LONG])
    np.testing.assert_allclose(together[0], alone[0], atol=1e-6)
    np.testing.assert_allclose(together[1], clf.predict_proba([LONG])[0], atol=1e-6)
    assert clf.scorer_.last_n_truncated == 0


def test_each_text_keeps_the_most_demonstrations_that_fit_beside_it(family):
    """The naive reference: each row equals scoring prefix(demos[:k_i]) + prompt_i alone, k_i found by dropping."""
    clf = _fewshot(family)
    tok, template, demos = family.tokenizer, clf.template_, list(clf.demos_)
    budget = clf.scorer_.context_length - len(family.lead) - reserved_tokens(clf.label_tokens_)
    texts = [LONG, SHORT, "bad", LONG + " again", SHORT]
    got = clf.predict_proba(texts)
    prompts, spans = template.spans(texts)
    ks = [_kept(tok, template, demos, p, budget) for p in prompts]
    assert ks[1] == len(demos) and ks[0] < len(demos)  # the case this test is about
    for i, k in enumerate(ks):
        prefix = template.prefix(demos[:k])
        words = clf.scorer_.score_words([prompts[i]], clf.label_tokens_, [spans[i]], prefix)
        np.testing.assert_allclose(got[i], clf.calibrate_words(words, [texts[i]])[0], atol=1e-6)
    built = clf.build_prompts(texts)
    assert [built.prefixes[i] for i in range(len(texts))] == [template.prefix(demos[:k]) for k in ks]
    assert sorted(i for _, rows in built.groups() for i in rows) == list(range(len(texts)))
    assert len(built.groups()) == len(set(ks))  # each distinct prefix once


def test_the_warning_names_how_many_texts_lost_how_many_demonstrations(family, caplog):
    clf = _fewshot(family)
    tok, template, demos = family.tokenizer, clf.template_, list(clf.demos_)
    budget = clf.scorer_.context_length - len(family.lead) - reserved_tokens(clf.label_tokens_)
    lost = len(demos) - _kept(tok, template, demos, template.spans([LONG])[0][0], budget)
    with caplog.at_level(logging.WARNING):
        clf.build_prompts([SHORT, LONG, SHORT])
    assert f"1 of 3 texts lost {lost} of the {len(demos)} shared demonstrations" in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        clf.build_prompts([SHORT])
    assert "demonstrations" not in caplog.text


class _Counting:
    """A tokenizer that counts its calls (a call on a list of strings is one call)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.calls = tokenizer, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_tokenizer_calls_grow_like_the_log_of_the_number_of_demonstrations(gpt2_tokenizer):
    """Issue 20: demonstrations beyond the context were re-tokenized once per dropped one (quadratic time)."""
    template = Template(prompt="Review: {text}\nSentiment:", labels=LABELS)
    rows = ["good film", "the plot was bad and the film was terrible", "a great review", "bad"]
    texts = ["fine", "a good film with a bad ending", "bad bad", "the market fell today and the player scored"]
    calls, builds = {}, []
    for n in (8, 32, 128, 512):
        demos = [(rows[i % 4], "positive" if i % 2 else "negative") for i in range(n)]
        tok = _Counting(gpt2_tokenizer)
        builds.append(PromptBuilder(template, demos, (), 0, tok, 120, 0).build(texts))
        calls[n] = tok.calls
    assert all(c <= 8 + 2 * np.log2(n) for n, c in calls.items()), calls
    for built in builds:
        assert 0 < len(built.groups()) <= len(texts)
        assert all(
            len(gpt2_tokenizer(p + x)["input_ids"]) <= 120 for p, x in zip(built.prefixes, built.prompts, strict=True)
        )


def test_the_service_scores_each_prefix_once_and_each_text_as_alone(family):
    """Requests merged by the micro-batcher: one scorer call per distinct prefix, each text as offline alone."""
    from verbalize.serve.adapter import scoring_plan
    from verbalize.serve.batcher import score_together

    clf = _fewshot(family)
    plans = [scoring_plan(clf, [SHORT]), scoring_plan(clf, [LONG, SHORT])]
    assert plans[0].key == plans[1].key is not None
    calls = []
    real = type(clf.scorer_).score_words
    clf.scorer_.score_words = lambda *a, **k: calls.append(1) or real(clf.scorer_, *a, **k)
    try:
        got = score_together(plans)
    finally:
        vars(clf.scorer_).pop("score_words")
    assert len(calls) == 2  # all demonstrations (both SHORT rows), fewer (LONG)
    np.testing.assert_allclose(got[0], clf.predict_proba([SHORT]), atol=1e-6)
    np.testing.assert_allclose(got[1], np.vstack([clf.predict_proba([LONG]), clf.predict_proba([SHORT])]), atol=1e-6)


def test_outputs_and_training_ids_follow_each_texts_own_prefix(family):
    """outputs() and the fine-tuning ids read each text's own prefix, whatever its neighbours."""
    from verbalize.training.finetune import _encode

    clf = _fewshot(family)
    texts = [SHORT, LONG, SHORT]
    want = np.vstack([clf.predict_proba([x]) for x in texts])
    np.testing.assert_allclose(clf.outputs(texts)["labels"], want, atol=1e-6)
    built = clf.build_prompts(texts)
    assert len(built.groups()) == 2
    ids = _encode(clf.scorer_, built, reserved_tokens(clf.label_tokens_))
    for i, x in enumerate(texts):
        alone = clf.build_prompts([x])
        assert ids[i] == clf.scorer_.encode(alone.prompts, alone.spans, alone.prefix).ids[0]


class _Recording:
    """A tokenizer that remembers the longest string it was asked to read."""

    def __init__(self, tokenizer):
        self._tokenizer, self.longest = tokenizer, 0

    def __call__(self, text, *args, **kwargs):
        self.longest = max([self.longest, *map(len, [text] if isinstance(text, str) else text)])
        return self._tokenizer(text, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


@pytest.mark.parametrize("pool", [False, True], ids=["shared", "own"])
@pytest.mark.parametrize("row", ["str", "mapping"])
def test_a_huge_text_is_cut_by_characters_before_prompts_are_built(family, pool, row):
    """A 2 MB line with demonstrations: the builder never renders, compares or tokenizes more of it than
    the model can read (it tokenized all 2 MB, per probe), and the prompt the scorer gets ends as it did."""
    huge = "  " + "the plot was bad and the acting was worse. " * 48_000
    template = Template(prompt="Review: {text}\nSentiment:", labels=LABELS)
    demos = [("good film", "positive"), ("bad film", "negative")] * 3
    tok = _Recording(family.tokenizer)
    builder = PromptBuilder(template, () if pool else demos, demos if pool else (), 2 * pool, tok, 128, 0)
    bound = char_bound(family.tokenizer, builder.budget())
    assert bound < len(huge) // 100
    built = builder.build([huge if row == "str" else {"text": huge}])
    assert tok.longest <= bound + 200
    [(start, end)] = built.spans[0]
    assert end - start <= bound and built.prompts[0][start:end] == huge.strip()[: end - start]
    assert built.prompts[0].endswith("\nSentiment:")


class _Reading(_Recording):
    """A tokenizer that adds up the characters it reads."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.chars = 0

    def __call__(self, text, *args, **kwargs):
        self.chars += sum(map(len, [text] if isinstance(text, str) else text))
        return super().__call__(text, *args, **kwargs)


def test_demonstrations_that_can_never_fit_cost_nothing_per_call(family):
    """After the first call, building prompts reads as much with 400 shared demonstrations as with 40 when
    neither fit the window: which can ever fit is decided once (each call tokenized all 400, as one prefix)."""
    template = Template(prompt="Review: {text}\nSentiment:", labels=LABELS)
    pool = [("a good film, well acted", "positive"), ("a bad film, badly acted", "negative")]
    texts = ["good", "a long and rather dull story about nothing much"]
    read = {}
    for n in (40, 400):
        demos = (pool * n)[:n]
        tok = _Reading(family.tokenizer)
        builder = PromptBuilder(template, demos, (), 0, tok, 128, 0)
        first = builder.build(texts)
        tok.chars = 0
        again = PromptBuilder(template, demos, (), 0, tok, 128, 0).build(texts)  # as each predict call builds one
        assert again == first and 0 < first.prefixes[0].count("Sentiment:") < 40
        read[n] = tok.chars
    assert read[400] == read[40]
