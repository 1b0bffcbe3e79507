"""Writing a :class:`Template` back as a TOML template file (``verbalize suggest``'s output)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from verbalize.atomic import atomic_path
from verbalize.errors import TemplateError
from verbalize.prompting.template import Template, load_template


def _toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # JSON's escapes are all valid in TOML basic strings


def _toml_key(key: str) -> str:
    return key if key and all(ch.isascii() and (ch.isalnum() or ch in "-_") for ch in key) else _toml_string(key)


# Template attribute -> its place in a template file (the top level, or the [demos] table). Every compared
# attribute must have one: to_toml refuses a Template attribute it does not know rather than drop it.
TOP = ("name", "description", "instruction", "fields", "prompt", "label_prefix", "sample_text")
DEMOS = {"demo_format": "format", "demo_separator": "separator"}


def _toml_value(value: Any) -> str:
    if isinstance(value, tuple | list):
        return f"[{', '.join(_toml_string(v) for v in value)}]"
    return _toml_string(value)


def to_toml(template: Template, header: str = "") -> str:
    """A template file's text for ``template`` (comment lines from ``header`` first); every attribute of
    :class:`Template` is written, so :func:`load_template` of the text gives an equal template."""
    known = {*TOP, *DEMOS, "labels"}
    unknown = [f.name for f in dataclasses.fields(Template) if f.compare and f.name not in known]
    if unknown:  # a new Template attribute: give it a key here and in load_template
        raise TypeError(f"to_toml does not know the Template attributes {unknown}; add them to template_toml.TOP")
    defaults = {f.name: f.default for f in dataclasses.fields(Template)}
    lines = [f"# {line}" for line in header.splitlines()]
    for key in TOP:
        value = getattr(template, key)
        if key in ("prompt", "label_prefix") or value != defaults[key]:
            lines.append(f"{key} = {_toml_value(value)}")
    lines += ["", "[labels]"]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in template.labels.items()]
    lines += ["", "[demos]"]
    lines += [
        f"{key} = {_toml_value(getattr(template, a))}" for a, key in DEMOS.items() if getattr(template, a) is not None
    ]
    return "\n".join(lines) + "\n"


def write_template(template: Template, path: str | Path, source: str | Path | None = None, header: str = "") -> Path:
    """Write ``template`` as a TOML file and check it as ``verbalize check`` does (it must load again).

    Raises
    ------
    FileExistsError
        When ``path`` is the input template ``source`` (never overwritten).
    TemplateError
        When the written text would not load again; nothing is written then (an earlier ``path`` is kept).
    """
    path = Path(path)
    if source is not None and Path(source).exists() and path.resolve() == Path(source).resolve():
        raise FileExistsError(f"{path} is the input template; suggest never overwrites it: pass another --output")
    with atomic_path(path) as tmp:
        tmp.write_text(to_toml(template, header), encoding="utf-8")
        try:
            load_template(tmp)  # the loader's checks, before the file takes its name: a bad file is never left
        except TemplateError as exc:
            issues = [i.replace(str(tmp), str(path)) for i in exc.issues]
            raise TemplateError([*issues, f"{path}: not written: the template above would not load again"]) from None
    return path
