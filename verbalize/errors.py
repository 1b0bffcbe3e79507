"""Exceptions raised by verbalize. Each message says what, where, and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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


def did_you_mean(got: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(got, list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""
