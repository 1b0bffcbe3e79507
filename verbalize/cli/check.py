"""``verbalize check TEMPLATE [--model --text]``: validate a template against a model's tokenizer.

The tokenizer alone shows how label words tokenize and whether the template fits the context window:
no model weights are loaded, and on a warm model cache nothing imports torch (see ``model_files.py``),
so the command answers in about a second.
"""

from __future__ import annotations

import json
import os
import sys

from verbalize.engine.machine import describe_cpu, recorded_choice, records_file
from verbalize.engine.model_files import UNKNOWN_WINDOW, load_tokenizer, model_source
from verbalize.engine.tokens import leading_special_ids, prompt_budget, reserved_tokens
from verbalize.errors import TemplateError
from verbalize.prompting.prompts import resolve_template


def check(template_arg: str, model: str | os.PathLike | None = None, text: str | None = None) -> int:
    """Print the rendered prompt, each label word's tokens and the context used; return the exit code.

    Parameters
    ----------
    template_arg : str
        A template file, or the name of a shipped template.
    model : str or path, optional
        As in :func:`verbalize.engine.models.load_model`; None for the embedded default.
    text : str, optional
        Sample text to render; default: the template's ``sample_text``.

    Returns
    -------
    int
        0 when no problem was found; 1 when the label words cannot be encoded or the template leaves no
        room for the text in the context window (the reason is on stderr).

    Raises
    ------
    FileNotFoundError, TemplateError
        When the template cannot be read (every problem listed, each with file and key).
    ModelLoadError
        When ``model`` has no tokenizer.
    """
    template = resolve_template(template_arg, None)
    text = text or template.sample_text
    print(f"template: {template.source}" + (f"  ({template.description})" if template.description else ""))
    print("prompt for a sample text (shown with escapes):")
    print("  " + json.dumps(template.render(text), ensure_ascii=False))
    tok = load_tokenizer(model)
    name = os.fspath(model) if model else "default"
    try:
        tokens = template.labels.encode(tok, template.label_prefix, template.render(text))
    except TemplateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"label words with label_prefix {template.label_prefix!r}, as tokens of model {name}:")
    firsts: dict[int, str] = {}
    notes = []
    for word, li, ids in zip(tokens.words, tokens.word_label, tokens.word_ids, strict=True):
        label = tokens.labels[li]
        pieces = tok.convert_ids_to_tokens(list(ids))
        flag = "  (several tokens: scored exactly, costs a short second pass)" if len(ids) > 1 else ""
        print(f"  {label:>14}  {word!r:20} -> {pieces}{flag}")
        if ids[0] in firsts and firsts[ids[0]] != label:
            notes.append(f"labels.{label}: {word!r} starts with the same token as a word of labels.{firsts[ids[0]]}")
        firsts.setdefault(ids[0], label)
    for note in notes:
        print(f"note: {note} (fine: words are scored over all their tokens)")
    window = tok.model_max_length if 0 < tok.model_max_length < UNKNOWN_WINDOW else None
    if window:
        # The scorer's rule (prompt_budget): the window less the special tokens in front and the positions kept
        # for the label words. The template's own tokens never shrink; only the text is cut, so they must leave
        # room for it.
        reserved, n_lead = reserved_tokens(tokens), len(leading_special_ids(tok))
        budget = prompt_budget(window, reserved, n_lead)
        fixed = len(tok(template.render(""), add_special_tokens=False)["input_ids"])
        print(
            f"context: the template takes {fixed} of the {budget} tokens left for a prompt in model {name}'s window "
            f"of {window} ({n_lead} special tokens in front, {reserved} kept for the label words)"
        )
        if fixed >= budget:
            print(
                f"error: {template.source}: instruction + prompt take {fixed} tokens, not less than the {budget} "
                f"tokens a prompt may take in model {name}'s context window of {window}: no room is left for the "
                "text; shorten the instruction or the prompt",
                file=sys.stderr,
            )
            return 1
        used = len(tok(template.render(text), add_special_tokens=False)["input_ids"])
        if used > budget:
            print(f"warning: the sample text's prompt takes {used} of {budget} tokens; its text would be cut to fit")
        else:
            print(f"fits: the sample text's prompt takes {used} of {budget} tokens")
    print(_dtype_line(model, name))
    print("ok: no problems found")
    return 0


def _dtype_line(model: str | os.PathLike | None, name: str) -> str:
    """What ``dtype="auto"`` chose for the model on this machine (read from its record: no torch, no weights)."""
    forced = os.environ.get("VERBALIZE_DTYPE", "").strip()
    if forced and forced != "auto":
        return f"dtype auto: {forced} (forced by VERBALIZE_DTYPE; nothing is measured)"
    record = recorded_choice(model_source(model))
    if record is None:
        return (
            f"dtype auto: not measured for model {name} on this machine ({describe_cpu()}) yet; the first load with "
            f"dtype='auto' measures it (about a second) and records it in {records_file()}"
        )
    rates = record.get("rates", {})
    base = rates.get("float32") or 1.0
    shown = ", ".join(f"{k} {v:.0f} GFLOP/s ({v / base:.2f}x)" for k, v in rates.items())
    why = "; ".join(f"{k}: {v}" for k, v in record.get("refused", {}).items())
    return (
        f"dtype auto: {record['dtype']} for model {name} on {record.get('machine', 'this machine')} (measured "
        f"{str(record.get('measured_at', '?'))[:16]}: {shown}){f'; not taken: {why}' if why else ''}. "
        "Force a format with --dtype or VERBALIZE_DTYPE"
    )
