"""Templates: a prompt with named fields (``{text}``, or ``{premise}`` and ``{hypothesis}``...), label
words, and an optional demonstration format.

A template file is TOML (see ``templates/README.md``). Every problem in a file is reported at
once, each with its file and key. Field values are data: they are inserted by concatenation and are
never formatted, so braces or template-like content in a text are kept as they are.

A row fills the fields: a str (every field gets it: a single-field template's text, or a content-free
calibration input "N/A" in each field), a mapping {field: value}, or a tuple in field order.
"""

from __future__ import annotations

import string
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from verbalize.errors import InputError, TemplateError, did_you_mean
from verbalize.prompting.labels import LabelWords, check_label_words

KEYS = ("name", "description", "instruction", "fields", "prompt", "label_prefix", "labels", "demos", "sample_text")
DEMO_KEYS = ("format", "separator")
DEFAULT_SAMPLE = "A charming and funny film."
RESERVED = ("label",)  # placeholders that are never fields

Row: TypeAlias = "str | Mapping[str, str] | Sequence[str]"
"""What fills a template's fields: a str (every field), a mapping {field: value}, or values in field order."""
Span = tuple[int, int]


def _fields(value: str, allowed: tuple[str, ...], key: str) -> tuple[list[str], list[str], list[str]]:
    """Split a format string into literal pieces around its fields.

    Returns ``(pieces, names, issues)`` with ``len(pieces) == len(names) + 1``.
    Only bare declared names are allowed: no positional ``{}``, attribute, index, conversion or spec.
    """
    pieces, names, issues = [""], [], []
    try:
        parsed = list(string.Formatter().parse(value))
    except ValueError as exc:
        return [value], [], [f"{key}: {exc}; write a literal brace as {{{{ or }}}}"]
    for literal, name, spec, conv in parsed:
        pieces[-1] += literal
        if name is None:
            continue
        if name not in allowed or spec or conv:
            shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            allowed_txt = ", ".join("{" + a + "}" for a in allowed) or "no placeholders"
            hint = did_you_mean(name, allowed) if name and name not in allowed else ""
            if key == "prompt" and name and name.isidentifier():
                hint += " A new field? Declare it: fields = [...] lists the prompt's fields."
            issues.append(
                f"{key}: unknown placeholder {shown}; allowed here: {allowed_txt}.{hint} "
                "Write a literal brace as {{ or }}"
            )
            continue
        names.append(name)
        pieces.append("")
    return pieces, names, issues


@dataclass(frozen=True)
class Template:
    """A prompt template with its label words.

    Parameters
    ----------
    prompt : str
        The prompt, with each field (``{text}``) exactly once; it must not end in whitespace.
    labels : mapping of str to list of str
        Label name -> label words, in class order.
    fields : tuple of str, default ("text",)
        The names of the prompt's fields, e.g. ``("premise", "hypothesis")``; only these placeholders
        are allowed. A row fills them (see :meth:`values`).
    instruction : str, default ""
        Text put before the demonstrations and the prompt.
    label_prefix : str, default " "
        Put before every label word (the space between prompt and word).
    demo_format : str, optional
        Format of one demonstration, with ``{text}`` and ``{label}`` (the label's first word).
        Default: the prompt, then ``label_prefix`` and ``{label}``.
    demo_separator : str, default "\\n\\n"
        Put between the instruction, each demonstration and the prompt.

    Examples
    --------
    >>> t = Template(prompt="classify: {text} =>", labels={"spam": ["spam"], "ham": ["ham"]})
    >>> t.render("win {money} now")
    'classify: win {money} now =>'
    """

    prompt: str
    labels: LabelWords
    fields: tuple[str, ...] = ("text",)
    instruction: str = ""
    label_prefix: str = " "
    demo_format: str | None = None
    demo_separator: str = "\n\n"
    name: str = ""
    description: str = ""
    sample_text: str = DEFAULT_SAMPLE
    source: str = field(default="<code>", compare=False)

    def __post_init__(self) -> None:
        issues = _check(self, self.source)
        if issues:
            raise TemplateError(issues)
        if not isinstance(self.labels, LabelWords):
            object.__setattr__(self, "labels", LabelWords(self.labels, self.source))

    @classmethod
    def from_file(cls, path: str | Path) -> Template:
        """Read and validate a TOML template file (see :func:`load_template`)."""
        return load_template(path)

    # -- rendering -------------------------------------------------------------------------
    def split(self) -> tuple[str, str]:
        """A single-field prompt's literal text before and after its field."""
        pieces, _, _ = _fields(self.prompt, self.fields, "prompt")
        if len(pieces) != 2:
            raise TemplateError([f"{self.source}: split() needs a single-field prompt; use spans()"])
        return pieces[0], pieces[1]

    def values(self, row: Row) -> dict[str, str]:
        """``row`` as {field: value}, each value stripped of surrounding whitespace.

        A str fills every field; a mapping must have every field (other keys are ignored); a tuple
        or list gives the values in field order.

        Raises
        ------
        InputError
            A mapping without one of the fields, or a sequence of the wrong length.
        """
        fields = self.fields
        if isinstance(row, str):
            return dict.fromkeys(fields, row.strip())
        if isinstance(row, Mapping):
            missing = [f for f in fields if f not in row]
            if missing:
                raise InputError(
                    f"{self.source}: a row has no field {missing[0]!r} (the prompt's fields are {list(fields)}; "
                    f"the row has keys {list(row)[:10]}). Fix: give every field, or map a column to it"
                )
            return {f: str(row[f]).strip() for f in fields}
        values = list(row)
        if len(values) != len(fields):
            raise InputError(
                f"{self.source}: a row of {len(values)} values for the {len(fields)} fields {list(fields)}; "
                "give one value per field, in that order"
            )
        return {f: str(v).strip() for f, v in zip(fields, values, strict=True)}

    def prefix(self, demos: Sequence[tuple[Row, str]] = ()) -> str:
        """The part shared by every prompt: instruction and demonstrations, each followed by the separator."""
        blocks = [_literal(self.instruction)] if self.instruction else []
        blocks += [self.render_demo(row, label) for row, label in demos]
        return "".join(b + self.demo_separator for b in blocks)

    def render_demo(self, row: Row, label: str) -> str:
        """One demonstration block; ``{label}`` becomes the label's first word.

        Without a ``demos.format``, a demonstration is the prompt followed by ``label_prefix`` and the word.
        """
        if label not in self.labels:
            raise TemplateError([f"{self.source}: demo label {label!r} is not one of {list(self.labels)}"])
        fmt = self.demo_format
        if fmt is None:
            fmt = self.prompt + self.label_prefix.replace("{", "{{").replace("}", "}}") + "{label}"
        pieces, names, _ = _fields(fmt, (*self.fields, "label"), "demos.format")
        values = self.values(row) | {"label": self.labels[label][0]}
        return pieces[0] + "".join(values[n] + p for n, p in zip(names, pieces[1:], strict=True))

    def render(self, row: Row, demos: Sequence[tuple[Row, str]] = ()) -> str:
        """The full prompt for one row (each field's value stripped of surrounding whitespace)."""
        prompts, _ = self.spans([row])
        return self.prefix(demos) + prompts[0]

    def spans(self, rows: Sequence[Row]) -> tuple[list[str], list[list[Span]]]:
        """Prompts without the shared prefix, and where each field's value lies in its prompt (for truncation)."""
        pieces, names, _ = _fields(self.prompt, self.fields, "prompt")
        prompts, spans = [], []
        for row in rows:
            values = self.values(row)
            out, where = pieces[0], []
            for name, piece in zip(names, pieces[1:], strict=True):
                where.append((len(out), len(out) + len(values[name])))
                out += values[name] + piece
            prompts.append(out)
            spans.append(where)
        return prompts, spans


def _good_fields(fields: Any) -> bool:
    names = list(fields) if isinstance(fields, list | tuple) else []
    ok = all(isinstance(n, str) and n.isidentifier() and n not in RESERVED for n in names)
    return bool(names) and ok and len(set(names)) == len(names)


def _literal(value: str) -> str:
    pieces, _, _ = _fields(value, (), "instruction")
    return pieces[0]


def _check(t: Template, source: str) -> list[str]:
    """All problems of a template's values (not of the file's layout)."""
    issues: list[str] = []
    strings = {
        "name": t.name,
        "description": t.description,
        "instruction": t.instruction,
        "prompt": t.prompt,
        "label_prefix": t.label_prefix,
        "demos.separator": t.demo_separator,
        "sample_text": t.sample_text,
    }
    if t.demo_format is not None:
        strings["demos.format"] = t.demo_format
    for key, value in strings.items():
        if not isinstance(value, str):
            issues.append(f"{key}: expected a string, got {type(value).__name__} {value!r}")
    bad_types = {i.split(":")[0] for i in issues}  # skip the checks of values that are not strings
    fields = tuple(t.fields) if _good_fields(t.fields) else ("text",)
    if not _good_fields(t.fields):
        issues.append(
            f"fields: expected a list of distinct names (identifiers, not 'label'), got {t.fields!r}; "
            'e.g. fields = ["premise", "hypothesis"]'
        )
    if "prompt" not in bad_types and not t.prompt.strip():
        issues.append("prompt: is empty; write the prompt with {text} where the text goes")
    elif "prompt" not in bad_types:
        _, names, bad = _fields(t.prompt, fields, "prompt")
        issues += bad
        for name in fields if not bad else ():
            if names.count(name) != 1:
                issues.append(f"prompt: must contain {{{name}}} exactly once, found it {names.count(name)} times")
        if t.prompt != t.prompt.rstrip():
            issues.append(
                f"prompt: ends with whitespace ({t.prompt[len(t.prompt.rstrip()) :]!r}); remove it "
                f"(label_prefix {t.label_prefix!r} is put before each label word)"
            )
    if "instruction" not in bad_types:
        issues += _fields(t.instruction, (), "instruction")[2]
    if t.demo_format is not None and "demos.format" not in bad_types:
        wanted = (*fields, "label")
        _, demo_names, bad = _fields(t.demo_format, wanted, "demos.format")
        issues += bad
        for name in wanted if not bad else ():
            if demo_names.count(name) != 1:
                issues.append(
                    f"demos.format: must contain {{{name}}} exactly once, found it {demo_names.count(name)} times"
                )
    issues = [f"{source}: {i}" for i in issues]
    if not isinstance(t.labels, LabelWords):
        issues += check_label_words(t.labels, source)
    return issues


def _value_issues(data: Mapping[str, Any], source: str, prefix: str = "") -> list[str]:
    """Flag escape sequences written literally (single-quoted TOML strings do not process them)."""
    issues = []
    for key, value in data.items():
        if isinstance(value, Mapping):
            issues += _value_issues(value, source, f"{prefix}{key}.")
        elif isinstance(value, str) and ("\\n" in value or "\\t" in value):
            issues.append(
                f"{source}: {prefix}{key}: contains a literal backslash escape (\\n or \\t as two characters); "
                'single-quoted TOML strings do not process escapes: use double quotes "..." or a """ block'
            )
    return issues


def shipped_templates() -> dict[str, Path]:
    """The templates shipped with verbalize: name -> file.

    They are the checkout's top-level ``templates/`` folder, which ``verbalize/templates`` links to and
    an installed wheel carries as package data.

    Examples
    --------
    >>> sorted(shipped_templates())
    ['agnews', 'same_sentiment', 'sst2', 'trec']
    """
    folder = Path(__file__).parent.parent / "templates"  # verbalize/templates
    return {p.stem: p for p in sorted(folder.glob("*.toml"))} if folder.is_dir() else {}


def _find(path: str | Path) -> Path:
    """A template file: ``path`` when it exists, else the shipped template of that name ("sst2" or "sst2.toml")."""
    file = Path(path)
    if file.is_file():
        return file
    shipped = shipped_templates()
    name = file.stem if file.suffix == ".toml" else file.name
    if len(file.parts) == 1 and name in shipped:  # a bare name, no folder: a shipped template
        return shipped[name]
    raise FileNotFoundError(
        f"template file {str(path)!r} not found.{did_you_mean(name, shipped)} "
        f"Shipped templates, usable by name: {', '.join(shipped) or 'none found'}."
    )


def load_template(path: str | Path) -> Template:
    """Read a TOML template file and validate it, reporting every problem at once.

    Parameters
    ----------
    path : str or Path
        A template file, or the name of a shipped template (``"sst2"``, see :func:`shipped_templates`),
        used when no file of that name exists.

    Raises
    ------
    FileNotFoundError
        When ``path`` is neither a file nor a shipped template's name; the message lists the shipped names.
    TemplateError
        With one line per problem, each ``file: key: what; how to fix``.

    Examples
    --------
    >>> load_template("sst2").prompt
    'Review: {text}\\nSentiment:'
    """
    path = _find(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TemplateError([f"{path}: not UTF-8 text: {exc}"]) from None
    return loads_template(text, str(path))


def loads_template(text: str, source: str = "<text>") -> Template:
    """Read and validate a template from TOML text (a file's content), reporting every problem at once.

    Parameters
    ----------
    text : str
        The TOML text of a template file.
    source : str, default "<text>"
        The name every problem starts with (a file name), as in ``source: key: what; how to fix``.

    Raises
    ------
    TemplateError
        With one line per problem, as :func:`load_template`.

    Examples
    --------
    >>> loads_template('prompt = "{text} =>"\\n[labels]\\nno = ["no"]\\nyes = ["yes"]\\n').render("ok")
    'ok =>'
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TemplateError([f"{source}: not valid TOML: {exc}"]) from None
    issues = [
        f"{source}: {key}: unknown key.{did_you_mean(key, KEYS)} Known keys: {', '.join(KEYS)}"
        for key in data
        if key not in KEYS
    ]
    demos = data.get("demos", {})
    if not isinstance(demos, Mapping):
        issues.append(f"{source}: demos: expected a [demos] table, got {type(demos).__name__}")
        demos = {}
    issues += [
        f"{source}: demos.{key}: unknown key.{did_you_mean(key, DEMO_KEYS)} Known keys: {', '.join(DEMO_KEYS)}"
        for key in demos
        if key not in DEMO_KEYS
    ]
    if "prompt" not in data:
        issues.append(f'{source}: prompt: missing; add prompt = "... {{text}} ..." (or each of fields = [...])')
    if "labels" not in data:
        issues.append(f'{source}: labels: missing; add a [labels] table, one line per label: name = ["word"]')
    issues += _value_issues(data, source)
    kwargs: dict[str, Any] = {
        k: data[k] for k in ("name", "description", "instruction", "label_prefix", "sample_text") if k in data
    }
    if "fields" in data:
        kwargs["fields"] = tuple(data["fields"]) if isinstance(data["fields"], list) else data["fields"]
    if "format" in demos:
        kwargs["demo_format"] = demos["format"]
    if "separator" in demos:
        kwargs["demo_separator"] = demos["separator"]
    candidate = object.__new__(Template)
    values: dict[str, Any] = {
        "prompt": data.get("prompt", "{text}"),
        "labels": data.get("labels", {"a": ["a"], "b": ["b"]}),
    }
    for f in Template.__dataclass_fields__.values():
        object.__setattr__(candidate, f.name, values.get(f.name, kwargs.get(f.name, f.default)))
    issues += [i for i in _check(candidate, source) if i not in issues]
    if issues:
        raise TemplateError(issues)
    return Template(**values, **kwargs, source=source)
