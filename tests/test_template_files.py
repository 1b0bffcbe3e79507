"""Every shipped template file loads, renders and has words that the default model can tell apart."""

from pathlib import Path

import pytest

from verbalize import load_template

FILES = sorted((Path(__file__).resolve().parent.parent / "templates").glob("*.toml"))


def test_there_are_shipped_templates():
    assert {f.stem for f in FILES} >= {"sst2", "agnews", "trec"}


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_template_file_is_valid(path):
    t = load_template(path)
    assert t.name == path.stem
    prompt = t.render(t.sample_text)
    assert t.sample_text in prompt and prompt == prompt.rstrip()
    assert t.demo_format is not None, "shipped templates support demonstrations"
    demo = t.render_demo(t.sample_text, next(iter(t.labels)))
    assert t.labels[next(iter(t.labels))][0] in demo


@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_template_words_tokenize_apart_on_default_model(path, default_scorer):
    t = load_template(path)
    tokens = t.labels.encode(default_scorer.tokenizer, t.label_prefix, t.render(t.sample_text))
    assert len(set(tokens.word_ids)) == len(tokens.word_ids)
    # every shipped word is a single token of the default model, so scoring stays one pass
    assert not tokens.multi_token.any(), dict(zip(tokens.words, tokens.word_ids, strict=True))


def test_shipped_templates_load_by_name():
    from verbalize.prompting.template import shipped_templates

    assert {n: p.resolve() for n, p in shipped_templates().items()} == {f.stem: f.resolve() for f in FILES}
    for f in FILES:
        assert load_template(f.stem) == load_template(f) == load_template(f.name)


def test_an_existing_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sst2.toml").write_text('prompt = "Mine: {text}"\n[labels]\na = ["x"]\nb = ["y"]\n')
    assert load_template("sst2.toml").prompt == "Mine: {text}"
    assert load_template("sst2").prompt != "Mine: {text}"  # no file named "sst2": the shipped one


def test_unknown_name_lists_the_shipped_templates_and_the_closest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = ", ".join(f.stem for f in FILES)
    with pytest.raises(FileNotFoundError, match=f"template file 'sst' not found. Did you mean 'sst2'?.*{names}"):
        load_template("sst")
    with pytest.raises(FileNotFoundError, match=f"'templates/agnews.toml' not found.*{names}"):
        load_template("templates/agnews.toml")  # a path is a path: never swapped for a shipped file
