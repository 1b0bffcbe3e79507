"""Template files: parsing, validation (every problem, each with file and key), and rendering."""

from __future__ import annotations

import dataclasses
import re

import pytest

from verbalize.errors import TemplateError
from verbalize.prompting.labels import LabelWords
from verbalize.prompting.template import Template, load_template

VALID = """
name = "sst2"
description = "sentiment of short movie reviews"
instruction = "Classify the sentiment of each review."
prompt = "Review: {text}\\nSentiment:"
label_prefix = " "

[labels]
negative = ["negative", "bad"]
positive = ["positive", "good"]

[demos]
format = "Review: {text}\\nSentiment: {label}"
separator = "\\n\\n"
"""

LABELS = '\n[labels]\nnegative = ["negative"]\npositive = ["positive"]\n'
AB = {"a": ["a"], "b": ["b"]}


def raises_at(where, message: str):
    """``pytest.raises(TemplateError)`` whose message holds ``'{where}: {message}'`` literally."""
    return pytest.raises(TemplateError, match=re.escape(f"{where}: {message}"))


# -- parsing a valid file ------------------------------------------------------------------------------


def test_valid_file_loads_every_field(tmp_template):
    path = tmp_template(VALID)
    t = load_template(path)
    assert t.name == "sst2"
    assert t.description == "sentiment of short movie reviews"
    assert t.instruction == "Classify the sentiment of each review."
    assert t.prompt == "Review: {text}\nSentiment:"
    assert t.label_prefix == " "
    assert t.demo_format == "Review: {text}\nSentiment: {label}"
    assert t.demo_separator == "\n\n"
    assert isinstance(t.labels, LabelWords)
    assert list(t.labels) == ["negative", "positive"]
    assert t.labels["positive"] == ("positive", "good")
    assert t.source == str(path)


def test_from_file_equals_load_template(tmp_template):
    path = tmp_template(VALID)
    assert Template.from_file(path) == load_template(path)


def test_optional_keys_have_defaults(tmp_template):
    t = load_template(tmp_template('prompt = "{text} =>"' + LABELS))
    assert (t.instruction, t.label_prefix, t.demo_format, t.demo_separator) == ("", " ", None, "\n\n")


def test_template_is_frozen():
    t = Template(prompt="classify: {text} =>", labels={"spam": ["spam"], "ham": ["ham"]})
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.prompt = "other {text}"  # type: ignore[misc]


def test_template_in_code_converts_labels():
    t = Template(prompt="classify: {text} =>", labels={"spam": ["spam", "junk"], "ham": "ham"})
    assert isinstance(t.labels, LabelWords)
    assert dict(t.labels) == {"spam": ("spam", "junk"), "ham": ("ham",)}


# -- one error per problem -----------------------------------------------------------------------------


def test_missing_file_is_file_not_found(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(FileNotFoundError, match=re.escape(f"template file {str(missing)!r} not found")):
        load_template(missing)


def test_invalid_toml(tmp_template):
    path = tmp_template('prompt = "unterminated {text}\n[labels\n')
    with pytest.raises(TemplateError, match=re.escape(f"{path}: not valid TOML")):
        load_template(path)


def test_unknown_key_suggests_the_close_one(tmp_template):
    path = tmp_template('prompt = "{text} =>"\npromt = "x"' + LABELS)
    with pytest.raises(TemplateError, match=re.escape(f"{path}: promt: unknown key. Did you mean 'prompt'?")):
        load_template(path)


def test_unknown_key_far_from_all_gives_known_keys(tmp_template):
    path = tmp_template('prompt = "{text} =>"\nzzzz = 1' + LABELS)
    with pytest.raises(TemplateError, match=r"zzzz: unknown key\. Known keys: name, .*prompt") as info:
        load_template(path)
    assert "Did you mean" not in str(info.value)


def test_missing_prompt(tmp_template):
    path = tmp_template(LABELS)
    with pytest.raises(TemplateError, match=re.escape(f"{path}: prompt: missing")):
        load_template(path)


def test_missing_labels(tmp_template):
    path = tmp_template('prompt = "{text} =>"\n')
    with pytest.raises(TemplateError, match=re.escape(f"{path}: labels: missing")):
        load_template(path)


def test_prompt_without_text(tmp_template):
    path = tmp_template('prompt = "Review: \\nSentiment:"' + LABELS)
    with raises_at(path, "prompt: must contain {text} exactly once, found it 0 times"):
        load_template(path)


def test_prompt_with_text_twice(tmp_template):
    path = tmp_template('prompt = "{text} and again {text} =>"' + LABELS)
    with raises_at(path, "prompt: must contain {text} exactly once, found it 2 times"):
        load_template(path)


def test_empty_prompt(tmp_template):
    with pytest.raises(TemplateError, match=r"prompt: is empty"):
        load_template(tmp_template('prompt = "  "' + LABELS))


def test_unknown_placeholder_suggests_text(tmp_template):
    path = tmp_template('prompt = "Review: {txt}\\nSentiment:"' + LABELS)
    message = "prompt: unknown placeholder {txt}; allowed here: {text}. Did you mean 'text'?"
    with raises_at(path, message) as info:
        load_template(path)
    assert len(info.value.issues) == 1  # not also "found {text} 0 times"


@pytest.mark.parametrize("field", ["{text!r}", "{text:>5}", "{text!s:^9}", "{text.up}", "{text[0]}", "{}", "{0}"])
def test_conversions_specs_attributes_and_positional_fields_are_rejected(tmp_template, field):
    path = tmp_template(f'prompt = "Review: {field} =>"' + LABELS)
    with raises_at(path, f"prompt: unknown placeholder {field}; allowed here: {{text}}"):
        load_template(path)


@pytest.mark.parametrize("prompt", ["Review: {text} }", "Review: {text} {"])
def test_single_brace(tmp_template, prompt):
    brace = prompt[-1]
    message = f"prompt: Single '{brace}' encountered in format string; write a literal brace as"
    with raises_at("<code>", message):
        Template(prompt=prompt, labels=AB)
    with pytest.raises(TemplateError, match=f"prompt: Single '{re.escape(brace)}' encountered"):
        load_template(tmp_template(f'prompt = "{prompt}"' + LABELS))


@pytest.mark.parametrize(("toml_value", "shown"), [('"Text: {text} "', "' '"), ('"{text} =>\\n"', r"'\n'")])
def test_prompt_ending_in_whitespace(tmp_template, toml_value, shown):
    path = tmp_template(f"prompt = {toml_value}" + LABELS)
    message = f"prompt: ends with whitespace ({shown}); remove it (label_prefix ' ' is put before each"
    with raises_at(path, message):
        load_template(path)


def test_literal_backslash_n_in_single_quoted_value(tmp_template):
    path = tmp_template("prompt = 'Review: {text}\\nSentiment:'" + LABELS)
    with raises_at(path, "prompt: contains a literal backslash escape") as info:
        load_template(path)
    assert 'use double quotes "..."' in str(info.value)


def test_literal_backslash_n_in_nested_table(tmp_template):
    path = tmp_template("prompt = \"{text} =>\"\n[demos]\nformat = '{text}\\n{label}'" + LABELS)
    with raises_at(path, "demos.format: contains a literal backslash escape"):
        load_template(path)


def test_double_quoted_newline_is_fine(tmp_template):
    t = load_template(tmp_template('prompt = "Review: {text}\\nSentiment:"' + LABELS))
    assert "\n" in t.prompt and "\\" not in t.prompt


def test_label_with_no_words(tmp_template):
    path = tmp_template('prompt = "{text} =>"\n[labels]\nnegative = []\npositive = ["positive"]\n')
    with pytest.raises(TemplateError, match=re.escape(f"{path}: labels.negative: has no words")):
        load_template(path)


def test_word_with_surrounding_whitespace(tmp_template):
    path = tmp_template('prompt = "{text} =>"\n[labels]\nnegative = [" negative"]\npositive = ["positive"]\n')
    with pytest.raises(
        TemplateError,
        match=re.escape(f"{path}: labels.negative: word ' negative' has surrounding whitespace; remove it"),
    ):
        load_template(path)


def test_same_word_under_two_labels(tmp_template):
    path = tmp_template('prompt = "{text} =>"\n[labels]\nnegative = ["bad", "meh"]\npositive = ["ok", "meh"]')
    with raises_at(path, "labels.positive: word 'meh' also appears under labels.negative; keep it under one"):
        load_template(path)


@pytest.mark.parametrize(("table", "n"), [('negative = ["negative"]', 1), ("", 0)])
def test_fewer_than_two_labels(tmp_template, table, n):
    path = tmp_template(f'prompt = "{{text}} =>"\n[labels]\n{table}\n')
    with pytest.raises(TemplateError, match=re.escape(f"{path}: labels: needs at least two labels, got {n}")):
        load_template(path)


def test_demo_format_without_label(tmp_template):
    path = tmp_template('prompt = "{text} =>"\n[demos]\nformat = "{text} =>"' + LABELS)
    with raises_at(path, "demos.format: must contain {label} exactly once, found it 0 times"):
        load_template(path)


def test_demo_format_unknown_placeholder(tmp_template):
    path = tmp_template('prompt = "{text} =>"\n[demos]\nformat = "{text} => {lable}"' + LABELS)
    message = "demos.format: unknown placeholder {lable}; allowed here: {text}, {label}. Did you mean 'label'"
    with raises_at(path, message):
        load_template(path)


def test_unknown_key_in_demos(tmp_template):
    path = tmp_template('prompt = "{text} =>"\n[demos]\nformat = "{text}: {label}"\nseperator = "-"' + LABELS)
    message = "demos.seperator: unknown key. Did you mean 'separator'? Known keys: format, separator"
    with raises_at(path, message):
        load_template(path)


def test_placeholder_in_instruction(tmp_template):
    path = tmp_template('instruction = "Classify {text}."\nprompt = "{text} =>"' + LABELS)
    with raises_at(path, "instruction: unknown placeholder {text}; allowed here: no placeholders"):
        load_template(path)


def test_every_problem_is_reported_at_once(tmp_template):
    text = """
    promt = "typo"
    prompt = "Review: {txt} "
    [labels]
    negative = []
    positive = [" good", "bad"]
    [demos]
    format = "{text}"
    sep = "--"
    """
    path = tmp_template(text)
    with pytest.raises(TemplateError) as info:
        load_template(path)
    issues = info.value.issues
    expected_keys = [
        "promt: unknown key",
        "demos.sep: unknown key",
        "prompt: unknown placeholder {txt}",
        "prompt: ends with whitespace",
        "demos.format: must contain {label}",
        "labels.negative: has no words",
        "labels.positive: word ' good' has surrounding whitespace",
    ]
    for key in expected_keys:
        assert sum(key in issue for issue in issues) == 1, (key, issues)
    assert len(issues) == len(expected_keys)
    assert all(issue.startswith(f"{path}: ") for issue in issues)
    # The message lists them all too, one per line, under a count.
    lines = str(info.value).splitlines()
    assert lines[0] == f"{len(expected_keys)} problems in template:"
    assert [line.strip() for line in lines[1:]] == issues


def test_a_non_string_value_does_not_hide_other_problems(tmp_template):
    # DESIGN 3.2: validation reports *every* problem in one TemplateError.
    path = tmp_template('name = 3\nprompt = "Review: no slot"\n[labels]\nnegative = ["bad"]\n')
    with pytest.raises(TemplateError) as info:
        load_template(path)
    issues = info.value.issues
    assert any("name: expected a string, got int 3" in i for i in issues), issues
    assert any("prompt: must contain {text} exactly once" in i for i in issues), issues
    assert any("labels: needs at least two labels" in i for i in issues), issues


def test_template_in_code_reports_code_as_source():
    with pytest.raises(TemplateError, match=re.escape("<code>: prompt: must contain {text} exactly once")):
        Template(prompt="no slot =>", labels={"a": ["a"], "b": ["b"]})


def test_template_error_is_a_value_error():
    with pytest.raises(ValueError, match="needs at least two labels"):
        Template(prompt="{text} =>", labels={"a": ["a"]})


# -- rendering -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["win {money} now", "a } b { c", "{text}", "x => y", "{{text}}", "{0} {} %s {x!r}"])
def test_text_is_inserted_verbatim(text):
    t = Template(prompt="classify: {text} =>", labels={"spam": ["spam"], "ham": ["ham"]})
    assert t.render(text) == "classify: " + text + " =>"


def test_text_is_stripped():
    t = Template(prompt="Review: {text}\nSentiment:", labels={"neg": ["bad"], "pos": ["good"]})
    assert t.render("  \n a fine film \t\n") == "Review: a fine film\nSentiment:"


def test_doubled_braces_in_prompt_render_single():
    t = Template(prompt="{{json}}: {{ {text} }} =>", labels={"neg": ["bad"], "pos": ["good"]})
    assert t.render("x") == "{json}: { x } =>"
    assert t.split() == ("{json}: { ", " } =>")


def test_rendered_prompt_never_ends_in_whitespace():
    t = Template(prompt="Text: {text}", labels={"neg": ["bad"], "pos": ["good"]})
    assert t.render("trailing spaces   \n") == "Text: trailing spaces"


@pytest.mark.parametrize("text", ["plain", "  padded  ", "{braces} and }{", "multi\nline\ttext", "é ü 😀"])
def test_spans_locate_the_text_exactly(text):
    t = Template(prompt="{{x}} Review: {text}\nSentiment:", labels={"neg": ["bad"], "pos": ["good"]})
    prompts, spans = t.spans([text, "other"])
    assert len(prompts) == len(spans) == 2
    [(a, b)], prompt = spans[0], prompts[0]
    assert prompt[a:b] == text.strip()
    assert prompt[:a] == "{x} Review: "
    assert prompt[b:] == "\nSentiment:"
    assert prompt == t.render(text)  # no demos, no instruction: the whole prompt


def test_spans_exclude_the_shared_prefix():
    t = Template(prompt="Q: {text} A:", labels={"no": ["no"], "yes": ["yes"]}, instruction="Yes or no?")
    prompts, spans = t.spans(["is it?"])
    assert prompts == ["Q: is it? A:"]
    assert t.render("is it?") == t.prefix() + prompts[0]


def test_prefix_joins_instruction_and_demos_with_the_separator():
    t = Template(
        prompt="Review: {text}\nSentiment:",
        labels={"negative": ["negative", "bad"], "positive": ["positive", "good"]},
        instruction="Classify {{each}} review.",
        demo_format="Review: {text}\nSentiment: {label}",
        demo_separator="\n---\n",
    )
    demos = [("Loved it.", "positive"), (" Hated {it}. ", "negative")]
    expected = (
        "Classify {each} review.\n---\n"
        "Review: Loved it.\nSentiment: positive\n---\n"
        "Review: Hated {it}.\nSentiment: negative\n---\n"
    )
    assert t.prefix(demos) == expected
    assert t.render("So-so.", demos) == expected + "Review: So-so.\nSentiment:"


def test_prefix_without_instruction_or_demos_is_empty():
    t = Template(prompt="{text} =>", labels={"a": ["a"], "b": ["b"]})
    assert t.prefix() == ""
    assert t.render("x") == "x =>"


def test_prefix_with_instruction_only():
    t = Template(prompt="{text} =>", labels={"a": ["a"], "b": ["b"]}, instruction="Go.", demo_separator="\n")
    assert t.prefix() == "Go.\n"


def test_render_demo_uses_the_first_label_word():
    t = Template(
        prompt="{text} =>",
        labels={"negative": ["bad", "negative"], "positive": ["good", "positive"]},
        demo_format="[{label}] {text}",
    )
    assert t.render_demo("fine film", "positive") == "[good] fine film"
    assert t.render_demo("{label} {text}", "negative") == "[bad] {label} {text}"


def test_render_demo_text_before_label_and_literal_braces():
    t = Template(prompt="{text} =>", labels={"a": ["a"], "b": ["beta"]}, demo_format="{{{text}}} -> {label}!")
    assert t.render_demo("x", "b") == "{x} -> beta!"


def test_render_demo_unknown_label():
    t = Template(prompt="{text} =>", labels={"a": ["alpha"], "b": ["beta"]}, demo_format="{text} {label}")
    with pytest.raises(TemplateError, match=re.escape("demo label 'c' is not one of ['a', 'b']")):
        t.render_demo("x", "c")


@pytest.mark.parametrize(("label_prefix", "expected"), [(" ", "{x} Q: hi A: beta"), ("\n{", "{x} Q: hi A:\n{beta")])
def test_render_demo_without_demo_format_is_prompt_then_label_word(label_prefix, expected):
    t = Template(prompt="{{x}} Q: {text} A:", labels={"a": ["alpha"], "b": ["beta"]}, label_prefix=label_prefix)
    assert t.render_demo(" hi ", "b") == expected
    assert t.prefix([(" hi ", "b")]) == expected + "\n\n"


def test_loaded_file_renders(tmp_template):
    t = load_template(tmp_template(VALID))
    out = t.render("  A {charming} film. ", [("Dull.", "negative")])
    assert out == (
        "Classify the sentiment of each review.\n\n"
        "Review: Dull.\nSentiment: negative\n\n"
        "Review: A {charming} film.\nSentiment:"
    )
