"""The row type and its validation: what every entry point takes as one input.

A row is a text (a ``str``) for a template with one field, or a mapping {field name: text} for a
template with several (a tuple/list in field order and DataFrame columns are accepted and turned into
mappings). :func:`check_rows` is the one gate every estimator, job and service request goes through.

Policy for unusable text: a text that is empty, whitespace-only, not a str, or holding a lone surrogate
(which no tokenizer can encode) is rejected. The Python API raises one error listing every bad position;
the CLI writes such rows with an ``error`` field at their own line number and classifies all the others.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence, Set
from typing import Any, TypeAlias

from verbalize.errors import InputError

Row: TypeAlias = "str | Mapping[str, str] | Sequence[str]"
"""What fills a template's fields: a str (every field), a mapping {field: value}, or values in field order."""

SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(x: Any) -> str | None:
    """Why ``x`` cannot be classified, or None when it is a usable text."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "is missing (None/NaN)"
    if not isinstance(x, str):
        return f"is a {type(x).__name__}, not a str"
    if not x or x.isspace():  # (not x.strip(): a copy of a huge text)
        return "is empty or whitespace-only"
    bad = SURROGATE.search(x)
    if bad:
        return (
            f"holds U+{ord(bad.group()):04X} at character {bad.start()} (a lone surrogate, or bytes that are "
            "not UTF-8), which no tokenizer can encode"
        )
    return None


def check_rows(X: Any, fields: Sequence[str], name: str = "X") -> list[Any]:
    """Return ``X`` as rows for a template with ``fields``, or raise one error listing every bad item.

    With one field the rows are str (a mapping or DataFrame row gives that field's value). With several,
    each row is a dict {field: str}, from a mapping (other keys ignored), a tuple/list in field order,
    or a pandas DataFrame's columns of the same names.

    Raises
    ------
    TypeError, InputError
        As :func:`check_texts`; also a missing field (named) or a bare str with several fields.
    """
    if hasattr(X, "columns") and hasattr(X, "to_dict"):  # a pandas DataFrame: one row per record
        missing = [f for f in fields if f not in X.columns]
        if missing:
            raise InputError(
                f"{name} has no column {missing[0]!r} for the template's field of that name; columns: "
                f"{list(X.columns)[:20]}. Fix: rename a column (df.rename(columns={{'old': {missing[0]!r}}}))"
            )
        X = X[list(fields)].to_dict("records")
    if isinstance(X, str | bytes | Set | Mapping) or (hasattr(X, "ndim") and X.ndim != 1):
        return check_texts(X, name)  # the same errors as for texts
    X = list(X.tolist() if hasattr(X, "tolist") else X)
    if len(fields) == 1 and not any(isinstance(x, Mapping | tuple | list) for x in X):
        return check_texts(X, name)
    rows, bad = [], []
    for i, x in enumerate(X):
        if isinstance(x, Mapping):
            values = {f: x.get(f) for f in fields}
            absent = [f for f in fields if f not in x]
        elif isinstance(x, tuple | list) and len(x) == len(fields):
            values, absent = dict(zip(fields, x, strict=True)), []
        else:
            bad.append(
                f"{name}[{i}] is a {type(x).__name__}; the template's fields {list(fields)} need a dict "
                "{field: text} or a tuple of one text per field, in that order"
            )
            continue
        bad += [f"{name}[{i}] has no field {f!r}" for f in absent]
        bad += [f"{name}[{i}][{f!r}] {p}" for f in fields if f not in absent and (p := text_problem(values[f]))]
        rows.append(values[fields[0]] if len(fields) == 1 else values)
    if bad:
        more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise InputError("; ".join(bad[:5]) + more)
    return rows


def check_texts(X: Any, name: str = "X") -> list[str]:
    """Return ``X`` as a list of str, or raise one error that lists every bad item.

    Raises
    ------
    TypeError
        For a bare string, a non-sequence, a 2-D array, or items that are not strings.
    InputError
        For empty or whitespace-only texts, or texts holding lone surrogates.
    """
    if isinstance(X, str | bytes):
        raise TypeError(f"{name} must be a list of texts, got a single {type(X).__name__}; wrap it in a list: [text]")
    if isinstance(X, Set | Mapping):
        raise TypeError(
            f"{name} must be an ordered sequence of texts (list, tuple, array), got a {type(X).__name__}: its "
            "order is not the order of the predictions. Pass list(...) of the texts in the order you want"
        )
    if hasattr(X, "ndim") and X.ndim != 1:
        raise TypeError(f"{name} must be 1-D (one text per row), got an array of shape {X.shape}")
    if hasattr(X, "tolist"):
        X = X.tolist()
    if not isinstance(X, Sequence):
        try:
            X = list(X)
        except TypeError:
            raise TypeError(f"{name} must be a sequence of str, got {type(X).__name__}") from None
    X = list(X)
    bad = [(i, p) for i, x in enumerate(X) if (p := text_problem(x))]
    if bad:
        shown = "; ".join(f"{name}[{i}] {p}" for i, p in bad[:5]) + (
            f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
        )
        fix = "drop those rows or replace them with text (the CLI skips them and reports each)"
        typed = any(p.startswith(("is a ", "is missing")) for _, p in bad)
        cls = TypeError if typed else InputError
        raise cls(f"{len(bad)} of {len(X)} texts cannot be classified: {shown}. Fix: {fix}")
    return X


def check_labels(y: Any, labels: Sequence[str]) -> list[str]:
    """Return ``y`` as a list of label names, or raise listing unknown values and the template's labels."""
    if isinstance(y, str):
        raise TypeError("y must be a list of labels, got a single str; wrap it in a list")
    ys = list(y.tolist() if hasattr(y, "tolist") else y)
    unknown = sorted({repr(v) for v in ys if v not in labels})
    if unknown:
        raise InputError(
            f"y has labels that the template does not define: {', '.join(unknown[:10])}. "
            f"The template's labels are {list(labels)}; map y to them or add them under [labels]"
        )
    return ys
