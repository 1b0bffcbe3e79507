"""Exceptions raised by verbalize. Each message says what, where, and how to fix it."""

from __future__ import annotations

import difflib
import numbers
from collections.abc import Iterable, Sequence
from typing import Any


class VerbalizeError(Exception):
    """Base class of every error verbalize raises on purpose."""


class TemplateError(VerbalizeError, ValueError):
    """A template has one or more problems; ``issues`` lists all of them, each with its file and key."""

    def __init__(self, issues: list[str]):
        self.issues = list(issues)
        n = len(self.issues)
        head = "1 problem in template:" if n == 1 else f"{n} problems in template:"
        super().__init__(head + "\n  " + "\n  ".join(self.issues))


class InputError(VerbalizeError, ValueError):
    """The texts or labels given to a method are unusable (empty text, unknown label, ...)."""


class ModelLoadError(VerbalizeError, OSError):
    """A model name, directory or file could not be resolved to a causal LM."""


class ParameterError(VerbalizeError, ValueError):
    """A parameter has a value outside the allowed ones (raised by :func:`check_choice`, :func:`check_int`,
    :func:`check_number` and :func:`raise_problems`, the one vocabulary of parameter checks)."""


class SavedClassifierError(VerbalizeError, ValueError):
    """A classifier directory written by ``Verbalizer.save`` is missing a file, or a file is malformed."""


def did_you_mean(got: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(got, list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def choice_problem(value: Any, allowed: Sequence[Any], name: str, owner: str, hidden: Iterable[str] = ()) -> str | None:
    """The message for a value outside ``allowed`` (None when it is allowed), in the one shape used everywhere.

    ``hidden`` values are accepted (and suggested) but not listed, e.g. versioned aliases.

    Examples
    --------
    >>> print(choice_problem("maxx", ["mean", "max"], "aggregation", "Verbalizer"))
    The 'aggregation' parameter of Verbalizer must be one of ['mean', 'max']. Got 'maxx' instead. Did you mean 'max'?
    """
    hidden = list(hidden)
    try:
        if value in allowed or value in hidden:
            return None
    except TypeError:  # unhashable or uncomparable values are simply not allowed
        pass
    names = [str(a) for a in allowed if isinstance(a, str)] + hidden
    hint = did_you_mean(value, names) if isinstance(value, str) else ""
    return f"The {name!r} parameter of {owner} must be one of {list(allowed)}. Got {value!r} instead.{hint}"


def check_choice(value: Any, allowed: Sequence[Any], name: str, owner: str, hidden: Iterable[str] = ()) -> Any:
    """Return ``value`` when it is one of ``allowed`` (or ``hidden``); else raise :class:`ParameterError`.

    Raises
    ------
    ParameterError
        "The 'X' parameter of Y must be one of [...]. Got 'z' instead. Did you mean 'w'?"
    """
    problem = choice_problem(value, allowed, name, owner, hidden)
    if problem:
        raise ParameterError(problem)
    return value


def number_problem(
    value: Any,
    name: str,
    owner: str,
    low: float | None = None,
    high: float | None = None,
    *,
    integer: bool = False,
    low_open: bool = False,
    high_open: bool = False,
) -> str | None:
    """The message for a value that is not a number (an int with ``integer``) within the bounds; None when it is.

    Bounds are inclusive unless ``low_open``/``high_open``. Booleans are not numbers here.

    Examples
    --------
    >>> print(number_problem(0, "k", "KNNPrompting", low=1, integer=True))
    The 'k' parameter of KNNPrompting must be an int >= 1. Got 0 instead.
    >>> print(number_problem(1.0, "validation_fraction", "FineTuneConfig", 0, 1, high_open=True))
    The 'validation_fraction' parameter of FineTuneConfig must be a number in [0, 1). Got 1.0 instead.
    """
    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if ok:
        return None
    if low is not None and high is not None:
        where = f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        where = f" {'>' if low_open else '>='} {low}"
    elif high is not None:
        where = f" {'<' if high_open else '<='} {high}"
    else:
        where = ""
    kind_name = "an int" if integer else "a number"
    return f"The {name!r} parameter of {owner} must be {kind_name}{where}. Got {value!r} instead."


def check_int(value: Any, name: str, owner: str, low: int | None = None, high: int | None = None) -> Any:
    """Return ``value`` when it is an int within ``[low, high]``; else raise :class:`ParameterError`.

    Raises
    ------
    ParameterError
        "The 'k' parameter of KNNPrompting must be an int >= 1. Got 0 instead."
    """
    raise_problems([number_problem(value, name, owner, low, high, integer=True)])
    return value


def check_number(
    value: Any,
    name: str,
    owner: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Any:
    """Return ``value`` when it is a number within the bounds (see :func:`number_problem`); else raise
    :class:`ParameterError`."""
    raise_problems([number_problem(value, name, owner, low, high, low_open=low_open, high_open=high_open)])
    return value


def raise_problems(problems: Iterable[str | None]) -> None:
    """Raise one :class:`ParameterError` listing every problem (``None`` entries are no problem), if any."""
    found = [p for p in problems if p]
    if found:
        raise ParameterError(found[0] if len(found) == 1 else f"{len(found)} problems: " + " ".join(found))
