"""Prompts -> length-sorted, right-padded token batches. Only the fields' values are ever truncated,
the longest field first; the template's own words never are."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from verbalize.errors import InputError

KV_TOKENS = 16384
"""Budget of cached tokens a batch holds per layer (rows x (copied prefix + padded prompt)), so that a
long shared prefix expanded to every row does not make the keys and values of one batch outgrow the
CPU's caches (a prefix the model's attention reads as one row is not copied, so not counted)."""

Span = tuple[int, int]
Spans = Sequence[Span] | Sequence[Sequence[Span]]
"""Per prompt, where its field values lie: one (start, end) per prompt, or a list of them per prompt."""


def span_lists(spans: Spans | None) -> list[list[Span]] | None:
    """``spans`` as one list of (start, end) per prompt, whichever of the two forms it came in."""
    if spans is None:
        return None
    out: list[list[Span]] = []
    for x in spans:
        if len(x) == 2 and all(isinstance(v, int | np.integer) for v in x):
            out.append([(int(x[0]), int(x[1]))])  # type: ignore[arg-type]
        else:
            out.append([(int(a), int(b)) for a, b in x])  # type: ignore[misc]
    return out


def shift_spans(spans: Spans | None, offset: int) -> list[list[Span]] | None:
    """``spans`` moved right by ``offset`` characters (a shared prefix put before every prompt)."""
    lists = span_lists(spans)
    return None if lists is None else [[(a + offset, b + offset) for a, b in x] for x in lists]


@dataclass(frozen=True)
class Batch:
    """Token ids of a few prompts, right-padded; ``rows`` are their positions in the caller's list."""

    input_ids: torch.Tensor  # (b, L)
    last_index: torch.Tensor  # (b,) position of each prompt's last real token
    rows: np.ndarray  # (b,)

    def to(self, device: torch.device | str) -> Batch:
        """The same batch with its token ids on ``device``."""
        return Batch(self.input_ids.to(device), self.last_index, self.rows)

    @property
    def attention_mask(self) -> torch.Tensor:
        positions = torch.arange(self.input_ids.shape[1], device=self.last_index.device)  # (L,)
        return (positions[None, :] <= self.last_index[:, None]).long()  # (b, L)


@dataclass(frozen=True)
class Encoded:
    """Every prompt's token ids (unpadded) and how many were truncated."""

    ids: list[list[int]]
    n_truncated: int

    def batches(
        self, batch_size: int, pad_id: int, max_tokens: int | None = None, prefix_per_row: int = 0
    ) -> list[Batch]:
        """Length-sorted (longest first) batches of at most ``batch_size`` prompts and ``max_tokens`` padded tokens.

        Sorting keeps padding small; the token budget lets batches of short prompts hold more rows,
        so that every matrix product is about the same (efficient) size. Where the batches are cut is
        chosen to waste the fewest padded tokens (see :func:`split_sorted`). ``prefix_per_row`` cached
        tokens that every row holds a copy of count too: rows x (prefix + padded length) <= :data:`KV_TOKENS`.
        """
        lengths = np.array([len(x) for x in self.ids])
        order = np.argsort(-lengths, kind="stable")
        out = []
        bounds = split_sorted(lengths[order], batch_size, max_tokens, prefix=prefix_per_row)
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            rows = order[start:stop]
            out.append(pad_batch([self.ids[r] for r in rows], rows, pad_id))
        return out


def pad_batch(ids: Sequence[Sequence[int]], rows: np.ndarray, pad_id: int) -> Batch:
    """Right-pad token id lists into one :class:`Batch` (``rows``: their positions in the caller's list)."""
    lengths = np.array([len(x) for x in ids])
    input_ids = torch.full((len(ids), int(lengths.max())), pad_id, dtype=torch.long)  # (b, L)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(list(x))
    return Batch(input_ids, torch.as_tensor(lengths - 1), np.asarray(rows))


def split_sorted(
    lengths: np.ndarray, batch_size: int, max_tokens: int | None, overhead: int = 64, prefix: int = 0
) -> list[int]:
    """Batch boundaries over descending ``lengths`` that minimise padded tokens plus ``overhead`` per batch.

    A batch costs rows x its first (longest) length; it holds at most ``batch_size`` rows and, unless
    it is a single row, at most ``max_tokens`` padded tokens and, with a ``prefix`` copied to every
    row, at most :data:`KV_TOKENS` cached tokens (rows x (prefix + length)). Dynamic programming over
    the cut points, O(n x batch_size). The overhead (in tokens) keeps batches from getting needlessly small.
    """
    n = len(lengths)
    budget = max_tokens or 1 << 62
    cost = np.full(n + 1, np.inf)
    cost[0] = 0.0
    back = np.zeros(n + 1, dtype=int)
    for i in range(1, n + 1):
        j = np.arange(max(0, i - batch_size), i)  # candidate starts of the batch ending before i
        size = (i - j) * lengths[j]  # (candidates,) padded tokens of that batch
        c = cost[j] + size + overhead
        over = (size > budget) | ((i - j) * (lengths[j] + prefix) > KV_TOKENS) if prefix else size > budget
        c[over & (i - j > 1)] = np.inf
        k = int(np.argmin(c))
        cost[i], back[i] = c[k], j[k]
    bounds = [n]
    while bounds[-1] > 0:
        bounds.append(int(back[bounds[-1]]))
    return bounds[::-1]


def pad_id_of(tokenizer: Any) -> int:
    """A token id for padding. Right padding never reaches a real token, so any id works (GPT-2 has none)."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if tid is not None:
            return int(tid)
    return 0


def encode_prompts(
    tokenizer: Any,
    prompts: Sequence[str],
    spans: Spans | None = None,
    max_length: int | None = None,
    add_special_tokens: bool = True,
) -> Encoded:
    """Tokenize prompts; cut prompts longer than ``max_length`` inside their field spans only.

    ``spans[i]`` is where prompt i's field values lie (``prompt[start:end]``): one (start, end), or a
    list of them for a template with several fields. Tokens are dropped from the end of the longest
    field first, so the template's words before, between and after the fields are always kept whole.

    Raises
    ------
    InputError
        When a prompt is too long even with its fields removed entirely.
    """
    if not prompts:
        return Encoded([], 0)
    enc = tokenizer(list(prompts), add_special_tokens=add_special_tokens)
    ids = [list(x) for x in enc["input_ids"]]
    n_truncated = 0
    if max_length is None:
        return Encoded(ids, 0)
    long = [i for i, x in enumerate(ids) if len(x) > max_length]
    lists = span_lists(spans)
    if long and lists is None:
        raise InputError(f"{len(long)} prompts are longer than {max_length} tokens and no text span was given")
    for i in long:
        ids[i] = _truncate(tokenizer, prompts[i], lists[i], max_length, add_special_tokens, i)  # type: ignore[index]
        n_truncated += 1
    return Encoded(ids, n_truncated)


def _truncate(
    tokenizer: Any, prompt: str, spans: list[Span], max_length: int, add_special: bool, row: int
) -> list[int]:
    """Cut field values by whole tokens from their ends, the field with the most tokens first, then
    tokenize the shortened prompt as one string.

    Re-tokenizing keeps the result a sequence the tokenizer really produces: a token that merges the
    end of a field with the template (`."`, `.\nSentiment:`) is re-formed, never dropped with the field.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(
            f"text {row} needs truncation, which needs a fast tokenizer (with offsets); "
            "load the model's fast tokenizer or shorten the text"
        )
    enc = tokenizer(prompt, add_special_tokens=add_special, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    starts = [[a for a, b in offsets if b > a and _inside(prompt, a, b, s, e)] for s, e in spans]
    keep = [len(x) for x in starts]  # tokens kept of each field

    def tokens_kept(keep: list[int]) -> list[int]:
        out, pos = "", 0
        for (_, end), firsts, k in zip(spans, starts, keep, strict=True):
            cut = end if k >= len(firsts) else firsts[k]  # the field keeps its characters before token k
            # rstrip: the space before a dropped token goes with it, as in the token sequence itself
            out = (out + prompt[pos:cut]).rstrip() if cut < end else out + prompt[pos:end]
            pos = end
        return list(tokenizer(out + prompt[pos:], add_special_tokens=add_special)["input_ids"])

    for _ in range(max(len(enc["input_ids"]) - max_length, 1)):
        _drop_longest(keep)
    while True:
        ids = tokens_kept(keep)
        if len(ids) <= max_length:
            return ids
        if not any(keep):
            break
        _drop_longest(keep)
    raise InputError(
        f"text {row}: the template alone takes {len(ids)} tokens, more than max_length="
        f"{max_length}; shorten the instruction or use fewer demonstrations"
    )


def _drop_longest(keep: list[int]) -> None:
    """One token less for the field that keeps the most (the first of equals)."""
    if any(keep):
        keep[keep.index(max(keep))] -= 1


def _inside(prompt: str, a: int, b: int, start: int, end: int) -> bool:
    chars = [i for i in range(a, b) if not prompt[i].isspace()] or list(range(a, b))
    return start <= chars[0] and chars[-1] < end
