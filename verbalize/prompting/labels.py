"""Label words: which words stand for which label, and how they tokenize."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from verbalize.engine.tokens import LabelTokens, token_ids
from verbalize.errors import TemplateError

logger = logging.getLogger(__name__)


class LabelWords(Mapping[str, tuple[str, ...]]):
    """An ordered, read-only mapping label name -> label words.

    The order of the labels is the class order (``Verbalizer.classes_``).

    Examples
    --------
    >>> words = LabelWords({"negative": ["bad"], "positive": ["good", "great"]})
    >>> list(words), words["positive"]
    (['negative', 'positive'], ('good', 'great'))
    """

    def __init__(self, mapping: Mapping[str, Sequence[str]], source: str = "<code>"):
        issues = check_label_words(mapping, source)
        if issues:
            raise TemplateError(issues)
        self._data = {k: (v,) if isinstance(v, str) else tuple(v) for k, v in mapping.items()}
        self.source = source

    def __getitem__(self, label: str) -> tuple[str, ...]:
        return self._data[label]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"LabelWords({self._data!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self.items()) == {k: tuple(v) for k, v in other.items()}

    def __hash__(self) -> int:
        return hash(tuple(self._data.items()))

    def encode(self, tokenizer: Any, prefix: str = " ", context: str = "") -> LabelTokens:
        """Tokenize every label word as it would follow ``context`` in a prompt.

        Each word is encoded as ``context + prefix + word`` minus the tokens of ``context`` (the
        lm-evaluation-harness convention), so that tokenizers that treat a leading space specially
        (byte-level BPE, SentencePiece) give the ids the model really sees after the prompt.

        Raises
        ------
        TemplateError
            When a word encodes to no token, or when two labels have a word with the same tokens.
        """
        ctx = token_ids(tokenizer, context) if context else []
        words, word_label, word_ids = [], [], []
        issues: list[str] = []
        owner: dict[tuple[int, ...], tuple[str, str]] = {}
        for li, (label, label_words) in enumerate(self.items()):
            for word in label_words:
                full = token_ids(tokenizer, context + prefix + word)
                ids = tuple(full[len(ctx) :]) if full[: len(ctx)] == ctx else tuple(token_ids(tokenizer, prefix + word))
                key = f"{self.source}: labels.{label}"
                if not ids:
                    issues.append(f"{key}: word {word!r} encodes to no token; use a non-empty word")
                    continue
                if ids in owner:
                    other_label, other_word = owner[ids]
                    if other_label != label:
                        issues.append(
                            f"{key}: word {word!r} has the same tokens {list(ids)} as {other_word!r} under "
                            f"labels.{other_label}; the model cannot tell them apart: change one of them"
                        )
                    else:
                        logger.info("%s: %r and %r tokenize identically; scoring one", key, other_word, word)
                    continue
                owner[ids] = (label, word)
                words.append(word)
                word_label.append(li)
                word_ids.append(ids)
        if issues:
            raise TemplateError(issues)
        return LabelTokens(
            labels=tuple(self), words=tuple(words), word_label=np.asarray(word_label), word_ids=tuple(word_ids)
        )


def check_label_words(mapping: Any, source: str = "<code>") -> list[str]:
    """Every problem of a label -> words mapping, each as 'source: labels.NAME: what; how to fix'."""
    where = f"{source}: labels"
    if not isinstance(mapping, Mapping):
        return [f"{where}: expected a table of label = [words], got {type(mapping).__name__}"]
    if len(mapping) < 2:
        return [f"{where}: needs at least two labels, got {len(mapping)}; add a [labels] entry per class"]
    issues: list[str] = []
    seen: dict[str, str] = {}
    for label, words in mapping.items():
        key = f"{where}.{label}"
        if not isinstance(label, str) or not label.strip():
            issues.append(f"{where}: label names must be non-empty strings, got {label!r}")
            continue
        if isinstance(words, str):
            words = [words]
        if not isinstance(words, Sequence) or not words:
            issues.append(f'{key}: has no words; give a list such as {label} = ["{label}"]')
            continue
        for word in words:
            if not isinstance(word, str) or not word.strip():
                issues.append(f"{key}: words must be non-empty strings, got {word!r}")
            elif word != word.strip():
                issues.append(
                    f"{key}: word {word!r} has surrounding whitespace; remove it "
                    "(label_prefix puts the space before each word)"
                )
            elif word in seen and seen[word] != label:
                issues.append(f"{key}: word {word!r} also appears under labels.{seen[word]}; keep it under one")
            else:
                seen[word] = label
    return issues
