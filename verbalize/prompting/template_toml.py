"""Writing a :class:`Template` back as a TOML template file (``verbalize suggest``'s output)."""

from __future__ import annotations

import json
from pathlib import Path

from verbalize.prompting.template import Template, load_template


def _toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # JSON's escapes are all valid in TOML basic strings


def _toml_key(key: str) -> str:
    return key if key and all(ch.isascii() and (ch.isalnum() or ch in "-_") for ch in key) else _toml_string(key)


def to_toml(template: Template, header: str = "") -> str:
    """A template file's text for ``template`` (comment lines from ``header`` first)."""
    lines = [f"# {line}" for line in header.splitlines()]
    fields = {
        "name": template.name,
        "description": template.description,
        "instruction": template.instruction,
        "prompt": template.prompt,
        "label_prefix": template.label_prefix,
        "sample_text": template.sample_text,
    }
    lines += [f"{k} = {_toml_string(v)}" for k, v in fields.items() if v or k in ("prompt", "label_prefix")]
    lines += ["", "[labels]"]
    lines += [f"{_toml_key(k)} = [{', '.join(_toml_string(w) for w in v)}]" for k, v in template.labels.items()]
    lines += ["", "[demos]"]
    if template.demo_format is not None:
        lines.append(f"format = {_toml_string(template.demo_format)}")
    lines.append(f"separator = {_toml_string(template.demo_separator)}")
    return "\n".join(lines) + "\n"


def write_template(template: Template, path: str | Path, source: str | Path | None = None, header: str = "") -> Path:
    """Write ``template`` as a TOML file and check it as ``verbalize check`` does (it must load again).

    Raises
    ------
    FileExistsError
        When ``path`` is the input template ``source`` (never overwritten).
    """
    path = Path(path)
    if source is not None and Path(source).exists() and path.resolve() == Path(source).resolve():
        raise FileExistsError(f"{path} is the input template; suggest never overwrites it: pass another --output")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(template, header), encoding="utf-8")
    load_template(path)  # the loader's checks: a file that does not load must not go unnoticed
    return path
