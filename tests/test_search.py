"""Label-word and template search, the template file it writes, `verbalize suggest`, and template ensembles."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest

import verbalize.search as search
from verbalize import (
    ParameterError,
    Template,
    TemplateEnsemble,
    Verbalizer,
    load_template,
    rank_templates,
    suggest_label_words,
)
from verbalize.calibration.calibrators import log_softmax
from verbalize.cli.main import main
from verbalize.engine.scoring import aggregate
from verbalize.errors import TemplateError
from verbalize.prompting.template import shipped_templates

TOPICS = Template(
    prompt="Text: {text}\nTopic:",
    labels={"sports": ["world"], "business": ["review"]},  # deliberately poor words: the search must replace them
    description="Topic of a text.",
)
WORDS = {"sports": "sports", "business": "business"}
X = [f"the team won game {i}" for i in range(8)] + [f"profits rose in quarter {i}" for i in range(8)]
Y = ["sports"] * 8 + ["business"] * 8


def _capitalised_word(tokenizer: Any) -> str:
    cols, words = search.word_tokens(tokenizer, " ", len(tokenizer))
    caps = [w for w in words if w[0].isupper()]
    assert caps, "the test tokenizer has no capitalised single-token word"
    return caps[0]


def _fake_log_probs(scorer: Any, template: Template, texts: list[str], demos: Any = (), progress: bool = False):
    """Next-token log-probs where the right word is known: after a sports text " sports" is likely, after a
    business text " business"; " the" is likelier still after every text (likely, but tells nothing); a
    capitalised word (a name) is the likeliest of all after sports texts (a proper-noun trap)."""
    tok = scorer.tokenizer
    names = ("sports", "business", "the", _capitalised_word(tok))
    ids = {w: tok(" " + w, add_special_tokens=False)["input_ids"] for w in names}
    assert all(len(v) == 1 for v in ids.values()), ids
    rng = np.random.default_rng(len(texts))
    logits = rng.normal(size=(len(texts), scorer.model.config.vocab_size))
    for i, text in enumerate(texts):
        logits[i, ids["the"][0]] += 8.0
        if "team" in text:
            logits[i, ids["sports"][0]] += 6.0
            logits[i, ids[names[3]][0]] += 9.0
        if "profits" in text:
            logits[i, ids["business"][0]] += 6.0
    return log_softmax(logits).astype(np.float32)


def test_word_tokens_are_single_token_alphabetic_words(family: Any) -> None:
    cols, words = search.word_tokens(family.tokenizer, " ", family.model.config.vocab_size)
    assert len(cols) == len(words) > 10
    for i, w in zip(cols, words, strict=True):
        assert w.isalpha() and len(w) >= 2
        assert family.tokenizer(" " + w, add_special_tokens=False)["input_ids"] == [i]
    for w in ("sports", "business", "review", "the"):
        single = len(family.tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1
        assert (w in words) == single, w
    assert "the" in words


def test_search_words_finds_the_discriminative_words_not_the_merely_likely() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 6)
    logits = rng.normal(size=(18, 40))
    logits[:, 3] += 9.0  # likeliest word everywhere: useless as a label word
    for c, col in enumerate((10, 20, 30)):
        logits[y == c, col] += 5.0
        logits[y == c, col + 1] += 2.0  # a second, weaker word per class
    logp = log_softmax(logits)
    cf = log_softmax(rng.normal(size=(3, 40)))
    found = search.search_words(logp, y, cf, 3, n_words=(1, 2), cv=3, calibration=None)
    assert [list(r[:2]) for r in found.ranked] == [[10, 11], [20, 21], [30, 31]]
    assert all(3 not in c for c in found.words)
    assert found.cv["new 1"] == 1.0 and (found.option, found.n_new) == ("new", 1)
    assert [c.tolist() for c in found.words] == [[10], [20], [30]]
    picked = search.pick_words([np.array([5, 6]), np.array([5, 7])], 2)
    assert [p.tolist() for p in picked] == [[5, 6], [7]]  # a word never goes to two labels


def test_ranking_rewards_words_likely_after_most_of_a_class_not_a_few() -> None:
    """Column 5 is very likely after 2 of class 0's 8 examples (a name they share): its mean beats column 7,
    which is likelier after every class-0 example by a little. The mean ranks 5 first; the search must not."""
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 8)
    logits = rng.normal(size=(16, 12))
    logits[:2, 5] += 20.0
    logits[y == 0, 7] += 3.0
    logits[y == 1, 9] += 3.0
    logp = logits - 10.0  # log-scores as they are (a softmax over 12 columns would let column 5 swamp its rows)
    ranked = search.rank_candidates(logp, y, 2)
    assert ranked[0][0] == 7 and ranked[1][0] == 9
    assert search.auc_per_class(logp, y, 2)[0, 7] > 0.9 > search.auc_per_class(logp, y, 2)[0, 5]


def test_search_keeps_the_input_words_unless_cross_validation_prefers_others() -> None:
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1, 2], 8)
    logits = rng.normal(size=(24, 30))
    for c, (good, weak) in enumerate(((10, 11), (20, 21), (25, 26))):
        logits[y == c, good] += 6.0
        logits[y == c, weak] += 0.5
    logp, cf = log_softmax(logits), log_softmax(rng.normal(size=(3, 30)))
    baseline = [np.array([10]), np.array([20]), np.array([25])]  # already the right words
    found = search.search_words(logp, y, cf, 3, n_words=(1, 2), cv=4, baseline=baseline)
    assert found.option == "input" and [w.tolist() for w in found.words] == [[10], [20], [25]]
    assert found.cv["input"] == max(found.cv.values()) and "input+new 1" in found.cv
    poor = [np.array([11]), np.array([21]), np.array([26])]  # weak words: the search must replace or add
    found = search.search_words(logp, y, cf, 3, n_words=(1, 2), cv=4, baseline=poor)
    assert found.option != "input" and found.cv[f"{found.option} {found.n_new}"] > found.cv["input"]
    assert all(g in w for g, w in zip((10, 20, 25), found.words, strict=True))
    assert len({int(j) for w in found.words for j in w}) == sum(len(w) for w in found.words)  # one label each


def test_capitalised_words_are_not_proposed_unless_the_template_capitalises() -> None:
    words = ["sports", "Boston", "iPhone", "Paris"]
    assert search.eligible(words, ["world", "review"]).tolist() == [True, False, True, False]
    assert search.eligible(words, ["Positive", "Negative"]).all()


def test_accuracy_of_equals_the_verbalizer_with_contextual_calibration(gpt2: Any) -> None:
    cols, words = search.word_tokens(gpt2.tokenizer, " ", gpt2.model.config.vocab_size)
    template = Template(prompt="Review: {text}\nSentiment:", labels={"negative": ["bad"], "positive": ["good"]})
    scorer = gpt2.scorer()
    logp = search.next_token_log_probs(scorer, template, X)
    cf = search.next_token_log_probs(scorer, template, ["N/A", "", "[MASK]"])
    shipped = search._shipped_ids(template, scorer)
    assert [words[list(cols).index(c[0])] for c in shipped] == ["bad", "good"]
    y = np.array([0, 1] * 8)
    clf = Verbalizer(template=template, model=scorer, calibration="contextual").fit()
    want = float(np.mean(clf.predict_log_proba(X).argmax(1) == y))
    assert search.accuracy_of(shipped, logp, y, cf, "contextual") == pytest.approx(want)
    raw = aggregate(logp[:, np.concatenate(shipped)], np.array([0, 1]), 2)
    np.testing.assert_allclose(raw, clf.label_scores(X), atol=1e-4)


def test_suggest_label_words_on_a_task_where_the_right_words_are_known(gpt2: Any, monkeypatch) -> None:
    monkeypatch.setattr(search, "next_token_log_probs", _fake_log_probs)
    s = suggest_label_words(X, Y, TOPICS, gpt2.scorer(), n_words=(1, 2), cv=4)
    assert {k: v[0] for k, v in s.template.labels.items()} == WORDS
    assert s.template.prompt == TOPICS.prompt
    assert s.cv_accuracy == 1.0 and s.template_cv_accuracy < 1.0 and s.improves and s.choice == "new"
    assert s.candidates["sports"][0] == "sports" and "the" not in s.template.labels["sports"]
    trap = _capitalised_word(gpt2.tokenizer)
    assert all(trap not in v for v in s.candidates.values())  # the name: likelier still, never proposed
    s = suggest_label_words(X, Y, dataclasses.replace(TOPICS, labels=WORDS), gpt2.scorer(), n_words=(1,), cv=4)
    assert s.choice == "input" and not s.improves and s.cv_accuracy == s.template_cv_accuracy == 1.0
    assert dict(s.template.labels) == {k: (v,) for k, v in WORDS.items()}  # the input's words, kept as they were
    ranked = rank_templates(X, Y, TOPICS, gpt2.scorer(), prompts=["{text}\nAnswer:"], n_words=(1,), cv=4)
    assert [r.template.prompt for r in ranked].count("{text}\nAnswer:") == 1
    assert any(r.template.instruction == TOPICS.description for r in ranked)  # description as instruction
    assert ranked[0].cv_accuracy == max(r.cv_accuracy for r in ranked)


def test_search_errors_say_what_to_fix(gpt2: Any) -> None:
    with pytest.raises(ValueError, match="at least 2 labeled examples of every label"):
        suggest_label_words(X[:9], Y[:9], TOPICS, gpt2.scorer())
    allowed = r"must be one of \[None, 'contextual', 'batch'\]\. Got 'contextal' instead\. Did you mean 'contextual'\?"
    with pytest.raises(ParameterError, match=r"The 'calibration' parameter of suggest_label_words " + allowed):
        suggest_label_words(X, Y, TOPICS, gpt2.scorer(), calibration="contextal")
    with pytest.raises(ParameterError, match=r"The 'cv' parameter of suggest_label_words must be an int >= 2\. Got 1"):
        suggest_label_words(X, Y, TOPICS, gpt2.scorer(), cv=1)


def test_written_template_round_trips(tmp_path) -> None:
    t = Template(
        prompt='Say "hi" \\ to: {text}\nAnswer:',
        labels={"a label": ["yes"], "b": ["no", "nope"]},
        instruction="Classify.\tNow.",
        name="x",
        sample_text="héllo",
        demo_separator="\n---\n",
    )
    path = search.write_template(t, tmp_path / "x.toml", header="made by a test\nsecond line")
    back = load_template(path)
    for field in ("prompt", "instruction", "name", "sample_text", "demo_separator", "label_prefix", "demo_format"):
        assert getattr(back, field) == getattr(t, field), field
    assert dict(back.labels) == {"a label": ("yes",), "b": ("no", "nope")}
    assert path.read_text(encoding="utf-8").startswith("# made by a test\n# second line\n")
    with pytest.raises(FileExistsError, match="never overwrites"):
        search.write_template(t, path, source=path)


def test_cli_suggest_writes_a_new_file_and_never_the_input(tmp_path, tmp_template, gpt2, capsys) -> None:
    model_dir = tmp_path / "model"
    gpt2.model.save_pretrained(model_dir)
    gpt2.tokenizer.save_pretrained(model_dir)
    tpl = tmp_template('prompt = "Text: {text}\\nTopic:"\n[labels]\nsports = ["world"]\nbusiness = ["review"]\n')
    before = tpl.read_text()
    data = tmp_path / "labeled.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(X, Y, strict=True)))
    args = ["suggest", str(tpl), str(data), "--model", str(model_dir), "--n-words", "1", "2", "--cv", "2"]
    assert main(args) == 0
    out = tmp_path / "t.suggested.toml"
    printed = capsys.readouterr().out
    assert tpl.read_text() == before and "wrote" in printed
    # the verdict is the one cross-validation gives (the same search through the API), and says so exactly once
    ranked = rank_templates(X, Y, str(tpl), str(model_dir), cv=2, random_state=0, n_words=[1, 2])
    base = next(s for s in ranked if s.template.prompt == "Text: {text}\nTopic:").template_cv_accuracy
    better = ranked[0].cv_accuracy > base
    [verdict] = [line for line in printed.splitlines() if "better than the input template" in line]
    assert verdict.startswith("better than" if better else "NOT better than"), (better, verdict)
    assert f"{ranked[0].cv_accuracy:.3f} vs {base:.3f}" in verdict
    assert list(load_template(out).labels) == ["sports", "business"]
    assert main(["check", str(out), "--model", str(model_dir)]) == 0
    capsys.readouterr()
    assert main(args) == 2 and "exists; pass --force" in capsys.readouterr().err
    assert main([*args, "--output", str(tpl), "--force"]) == 2
    assert "never overwrites" in capsys.readouterr().err and tpl.read_text() == before
    data.write_text(json.dumps({"text": "x y", "label": "weather"}) + "\n")
    assert main([*args, "--force"]) == 2 and "'weather'" in capsys.readouterr().err


def test_ensemble_is_the_mean_of_calibrated_log_probs(gpt2: Any) -> None:
    a = Template(prompt="Review: {text}\nSentiment:", labels={"negative": ["bad"], "positive": ["good"]})
    b = Template(prompt="{text}\nIt was", labels={"positive": ["great"], "negative": ["terrible"]})  # other order
    scorer = gpt2.scorer()
    ens = TemplateEnsemble(templates=[a, b], model=scorer, calibration="contextual", weights=[1, 3]).fit()
    assert ens.classes_.tolist() == ["negative", "positive"]
    la = Verbalizer(template=a, model=scorer, calibration="contextual").fit().predict_log_proba(X)
    lb = Verbalizer(template=b, model=scorer, calibration="contextual").fit().predict_log_proba(X)[:, ::-1]
    want = log_softmax(0.25 * la + 0.75 * lb)
    np.testing.assert_allclose(ens.predict_log_proba(X), want, atol=1e-6)
    assert ens.predict(X).tolist() == ens.classes_[want.argmax(1)].tolist()
    one = TemplateEnsemble(templates=[a], model=scorer, calibration="contextual").fit()
    np.testing.assert_allclose(one.predict_log_proba(X), la, atol=1e-6)
    other = Template(prompt="{text}", labels={"spam": ["spam"], "ham": ["ham"]})
    with pytest.raises(ValueError, match="same label names"):
        TemplateEnsemble(templates=[a, other], model=scorer).fit()
    with pytest.raises(ValueError, match="The 'weights' parameter of TemplateEnsemble must be 2 non-negative numbers"):
        TemplateEnsemble(templates=[a, b], model=scorer, weights=[1]).fit()


def _round_trip(t: Template, tmp_path) -> Template:
    return load_template(search.write_template(t, tmp_path / f"{t.name or 'x'}.rt.toml"))


PAIR_TEMPLATE = Template(
    prompt="Premise: {premise}\nHypothesis: {hypothesis}\nAnswer:",
    labels={"yes": ["yes", "surely yes"], "no": ["no"]},
    fields=("premise", "hypothesis"),
    instruction="Decide.",
    label_prefix=" ",
    demo_format="P: {premise} H: {hypothesis} => {label}",
    demo_separator="\n--\n",
    name="pair",
    description="a pair template",
    sample_text="x",
)


@pytest.mark.parametrize("name", [*sorted(shipped_templates()), "<pair>"])
def test_to_toml_round_trips_every_template_attribute(name, tmp_path) -> None:
    """Every Template attribute (listed from the dataclass, not by hand) survives to_toml and load_template."""
    t = PAIR_TEMPLATE if name == "<pair>" else load_template(name)
    back = _round_trip(t, tmp_path)
    for f in dataclasses.fields(Template):
        if f.compare:
            assert getattr(back, f.name) == getattr(t, f.name), f.name
    assert back == t


def test_write_template_never_leaves_a_file_that_does_not_load(tmp_path, monkeypatch) -> None:
    """A template whose TOML would not load is refused before anything is written (nor an old file replaced)."""
    from verbalize.prompting import template_toml

    monkeypatch.setattr(template_toml, "to_toml", lambda t, header="": 'prompt = "{oops}"\n[labels]\na = ["b"]\n')
    path = tmp_path / "bad.toml"
    with pytest.raises(TemplateError, match=r"bad.toml: prompt: unknown placeholder(.|\n)*bad.toml: not written"):
        template_toml.write_template(PAIR_TEMPLATE, path)
    assert not path.exists() and list(tmp_path.iterdir()) == []
    path.write_text("old", encoding="utf-8")
    with pytest.raises(TemplateError):
        template_toml.write_template(PAIR_TEMPLATE, path)
    assert path.read_text(encoding="utf-8") == "old"


PAIR_TOPICS = Template(
    prompt="First: {a}\nSecond: {b}\nTopic:",
    labels={"sports": ["world"], "business": ["review"]},
    fields=("a", "b"),
    description="Topic of two texts.",
)
PAIR_X = [{"a": t, "b": t.split()[-1]} for t in X]


def test_the_search_takes_rows_of_several_fields(gpt2: Any) -> None:
    """suggest_label_words and rank_templates read {field: text} rows; every candidate keeps the fields."""
    scorer = gpt2.scorer()
    found = suggest_label_words(PAIR_X, Y, PAIR_TOPICS, scorer, n_words=(1,), cv=2)
    assert found.template.fields == ("a", "b") and list(found.template.labels) == ["sports", "business"]
    ranked = rank_templates(PAIR_X, Y, PAIR_TOPICS, scorer, n_words=(1,), cv=2)
    assert len(ranked) == 5 and {s.template.fields for s in ranked} == {("a", "b")}
    # the search reads what the Verbalizer reads: the input words' scores equal its label_scores
    logp = search.next_token_log_probs(scorer, PAIR_TOPICS, PAIR_X)
    ids = [gpt2.tokenizer(" " + w[0])["input_ids"][0] for w in PAIR_TOPICS.labels.values()]
    raw = Verbalizer(template=PAIR_TOPICS, model=scorer).label_scores(PAIR_X)
    np.testing.assert_allclose(logp[:, ids], raw, atol=1e-5)


def test_cli_suggest_on_a_pair_template_writes_a_file_that_loads(tmp_path, tmp_template, gpt2, capsys) -> None:
    model_dir = tmp_path / "model"
    gpt2.model.save_pretrained(model_dir)
    gpt2.tokenizer.save_pretrained(model_dir)
    tpl = tmp_template(search.to_toml(PAIR_TOPICS))
    data = tmp_path / "labeled.jsonl"
    data.write_text(
        "".join(json.dumps({"a": r["a"], "other": r["b"], "label": y}) + "\n" for r, y in zip(PAIR_X, Y, strict=True))
    )
    args = ["suggest", str(tpl), str(data), "--model", str(model_dir), "--n-words", "1", "--cv", "2"]
    assert main([*args, "--field", "b=other"]) == 0
    out = load_template(tmp_path / "t.suggested.toml")
    assert out.fields == ("a", "b")
    clf = Verbalizer(template=out, model=str(model_dir))
    assert clf.predict(PAIR_X[:2]).shape == (2,)


def test_ensemble_takes_positional_templates_and_rows_of_several_fields(gpt2: Any) -> None:
    from sklearn.base import clone

    other = dataclasses.replace(PAIR_TOPICS, prompt="{a} / {b} =>")
    scorer = gpt2.scorer()
    ens = TemplateEnsemble([PAIR_TOPICS, other], model=scorer, calibration=None).fit()
    la = Verbalizer(template=PAIR_TOPICS, model=scorer).predict_log_proba(PAIR_X)
    lb = Verbalizer(template=other, model=scorer).predict_log_proba(PAIR_X)
    np.testing.assert_allclose(ens.predict_log_proba(PAIR_X), log_softmax(0.5 * la + 0.5 * lb), atol=1e-6)
    assert clone(ens).get_params()["templates"] == [PAIR_TOPICS, other]
    with pytest.raises(ValueError, match=r"TemplateEnsemble: template .* has the fields \['text'\], the first"):
        TemplateEnsemble([PAIR_TOPICS, TOPICS], model=scorer).fit()


def test_a_candidate_prompt_without_the_template_s_fields_is_refused_by_name(gpt2: Any) -> None:
    with pytest.raises(
        TemplateError, match=r"candidate prompt 'Text: \{text\}' \(suggest --prompt\).*needs \{a\}, \{b\}"
    ):
        rank_templates(PAIR_X, Y, PAIR_TOPICS, gpt2.scorer(), prompts=["Text: {text}"], n_words=(1,), cv=2)
