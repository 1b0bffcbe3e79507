"""Exceptions raised by verbalize. Each message says what, where, and how to fix it."""

from __future__ import annotations

import difflib
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
    """A parameter has a value outside the allowed ones."""


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
