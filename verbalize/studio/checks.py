"""Check a template text as ``verbalize check`` does, as data for the page: every problem at its key, the
rendered prompt of a sample row, and each label word's tokens with multi-token, shared and too-long marks.

Only the tokenizer is used; nothing is scored, so a check answers in milliseconds.
"""

from __future__ import annotations

import re
from typing import Any

from verbalize.engine.model_files import UNKNOWN_WINDOW
from verbalize.engine.tokens import leading_special_ids, prompt_budget, reserved_tokens
from verbalize.errors import TemplateError
from verbalize.prompting.template import Template, loads_template

_TOML_LINE = re.compile(r"at line (\d+)")


def problem(message: str, name: str) -> dict[str, Any]:
    """A problem message as ``{key, message, line}``: the key after the file name (``labels.positive``), or
    ``""`` for one of the whole file; ``line`` where the TOML parser named one."""
    rest = message[len(name) + 2 :] if message.startswith(f"{name}: ") else message
    key = rest.split(":", 1)[0] if ":" in rest and " " not in rest.split(":", 1)[0] else ""
    line = _TOML_LINE.search(message)
    return {"key": key, "message": message, "line": int(line.group(1)) if line else None}


def check_text(text: str, name: str, tokenizer: Any, row: Any = None, window: int | None = None) -> dict[str, Any]:
    """The page's view of a template text.

    Parameters
    ----------
    text : str
        The TOML text being edited.
    name : str
        Its file name; every message starts with it, as ``verbalize check``'s start with the file.
    tokenizer : tokenizer
        The studio model's tokenizer.
    row : str or mapping, optional
        The sample row to render; default: the template's ``sample_text``.
    window : int, optional
        The model's context length (a Scorer's ``context_length``); default: the tokenizer's ``model_max_length``.

    Returns
    -------
    dict
        ``ok`` (no problem), ``problems`` (key, message, line), ``prompt`` (the sample row's prompt, or None),
        ``tokens`` (label, word, pieces, ids, multi, shared, fits) and ``context`` (tokens of the template,
        budget, window; or None when the model states no window).
    """
    out: dict[str, Any] = {"ok": False, "problems": [], "prompt": None, "tokens": [], "context": None}
    try:
        template = loads_template(text, name)
    except TemplateError as exc:
        out["problems"] = [problem(m, name) for m in exc.issues]
        return out
    try:
        out["prompt"] = template.render(row if row is not None else template.sample_text)
    except (TypeError, ValueError) as exc:
        out["problems"].append(problem(f"{name}: sample_text: the sample row cannot be rendered: {exc}", name))
        return out
    try:
        tokens = template.labels.encode(tokenizer, template.label_prefix, out["prompt"])
    except TemplateError as exc:
        out["problems"] += [problem(m, name) for m in exc.issues]
        return out
    out["context"], too_long = _context(template, tokenizer, tokens, name, out, window)
    out["tokens"] = _token_rows(tokens, tokenizer, too_long)
    out["ok"] = not out["problems"]
    return out


def _token_rows(tokens: Any, tokenizer: Any, too_long: int | None) -> list[dict[str, Any]]:
    """Each label word's tokens; ``shared`` names the other labels whose words start with the same token."""
    firsts: dict[int, set[str]] = {}
    for li, ids in zip(tokens.word_label, tokens.word_ids, strict=True):
        firsts.setdefault(ids[0], set()).add(tokens.labels[li])
    rows = []
    for word, li, ids in zip(tokens.words, tokens.word_label, tokens.word_ids, strict=True):
        label = tokens.labels[li]
        rows.append(
            {
                "label": label,
                "word": word,
                "ids": list(ids),
                "pieces": tokenizer.convert_ids_to_tokens(list(ids)),
                "multi": len(ids) > 1,
                "shared": sorted(firsts[ids[0]] - {label}),
                "fits": too_long is None or len(ids) - 1 <= too_long,
            }
        )
    return rows


def _context(
    template: Template, tokenizer: Any, tokens: Any, name: str, out: dict[str, Any], window: int | None
) -> tuple[dict[str, Any] | None, int | None]:
    """The window check of ``verbalize check`` (its message when the template leaves no room for a text);
    returns the context facts and the most extra tokens a label word may have (None: no window known)."""
    window = window or tokenizer.model_max_length
    window = window if 0 < window < UNKNOWN_WINDOW else None
    if not window:
        return None, None
    reserved, n_lead = reserved_tokens(tokens), len(leading_special_ids(tokenizer))
    budget = prompt_budget(window, reserved, n_lead)
    fixed = len(tokenizer(template.render(""), add_special_tokens=False)["input_ids"])
    if fixed >= budget:
        out["problems"].append(
            problem(
                f"{name}: prompt: instruction + prompt take {fixed} tokens, not less than the {budget} tokens a prompt "
                f"may take in the model's context window of {window}: no room is left for the text; shorten the "
                "instruction or the prompt",
                name,
            )
        )
    used = len(tokenizer(out["prompt"], add_special_tokens=False)["input_ids"])
    room = max(window - n_lead - fixed - 1, 0)  # extra word tokens that still fit after the shortest prompt
    return {"fixed": fixed, "budget": budget, "window": window, "sample": used}, room
