"""Token facts the scorer needs, with no knowledge of templates: label-word token ids, the tokens kept
free after a prompt for them, and the special tokens a tokenizer puts in front of a text."""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class LabelTokens:
    """Label words as token ids: ``word_ids[j]`` are the tokens of ``words[j]``, of label ``word_label[j]``."""

    labels: tuple[str, ...]
    words: tuple[str, ...]
    word_label: np.ndarray  # (n_words,) index into labels
    word_ids: tuple[tuple[int, ...], ...]

    @property
    def multi_token(self) -> np.ndarray:
        """Boolean mask (n_words,): words that need more than one token."""
        return np.array([len(ids) > 1 for ids in self.word_ids], dtype=bool)


def token_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def reserved_tokens(label_tokens: LabelTokens | None) -> int:
    """Tokens kept free after every prompt for the label words.

    The first token of a word is predicted at the prompt's last position; only the others are
    read by the model, so a word of k tokens needs k - 1 positions after the prompt.
    """
    if label_tokens is None:
        return 0
    return max((len(ids) for ids in label_tokens.word_ids), default=1) - 1


def prompt_budget(context_length: int, reserved: int, n_lead: int) -> int:
    """Tokens a prompt may take: ``prefix + prompt`` tokenized as one string without special tokens.

    The one budget rule, used by the prompt builder (to drop demonstrations), the scorer (to cut a
    text) and ``verbalize check`` (to report fit): the context window less the ``n_lead`` special
    tokens put in front (BOS) and the ``reserved`` positions kept free for the label words
    (:func:`reserved_tokens`). A prompt fits when its token count is ``<=`` this number.

    Examples
    --------
    >>> prompt_budget(64, reserved=2, n_lead=1)
    61
    """
    return int(context_length) - int(reserved) - int(n_lead)


_LONGEST: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
CHAR_MARGIN = 2
"""Safety factor of :func:`char_bound` over (tokens x the longest token's characters)."""


def longest_token_chars(tokenizer: Any) -> int:
    """The most characters of text one token can cover: its vocabulary's longest entry (computed once per tokenizer).

    A vocabulary entry spells its token with at least one character per character of text it stands for:
    byte-level BPE writes one character per byte, SentencePiece writes a space as one "▁", a byte-fallback
    token (``<0x41>``) covers one byte. Added tokens are matched literally, so they count as written.
    """
    try:
        return _LONGEST[tokenizer]
    except (KeyError, TypeError):
        pass
    n = max((len(t) for t in tokenizer.get_vocab()), default=1)
    with contextlib.suppress(TypeError):  # not weakly referenceable: recomputed next time
        _LONGEST[tokenizer] = n
    return n


def char_bound(tokenizer: Any, max_tokens: int) -> int:
    """Characters of a field worth tokenizing when a prompt may take ``max_tokens`` tokens.

    A field is never cut to fewer tokens than ``max_tokens``, and those tokens cover at most
    ``max_tokens x`` :func:`longest_token_chars` characters of it; :data:`CHAR_MARGIN` times that
    (plus a little) leaves every token that can be kept far from the cut, so cutting the characters
    first keeps exactly the tokens the whole text would have kept, while the tokenizer never reads
    more than this many characters of a field (a 200 MB line costs what a 1 MB one does).

    Examples
    --------
    >>> char_bound(tokenizer, 1024)  # doctest: +SKIP
    262208
    """
    return CHAR_MARGIN * max(int(max_tokens), 1) * longest_token_chars(tokenizer) + 64


def leading_special_ids(tokenizer: Any) -> list[int]:
    """The special tokens (BOS) a tokenizer puts before a text; trailing ones (EOS) are not wanted here."""
    with_special = list(tokenizer("a", add_special_tokens=True)["input_ids"])
    plain = list(tokenizer("a", add_special_tokens=False)["input_ids"])
    for i in range(len(with_special) - len(plain) + 1):
        if with_special[i : i + len(plain)] == plain:
            return with_special[:i]
    return []
