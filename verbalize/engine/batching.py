"""Prompts -> length-sorted, right-padded token batches. Only the fields' values are ever truncated,
the longest field first; the template's own words never are."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from verbalize.engine.tokens import char_bound
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


PACK_ROW = 128
"""Tokens a packed row holds (at least; a longer prompt gets a row of its own): several prompts share
one row, each attending to itself only. Longer rows waste fewer tokens at their ends but make attention
(quadratic in the row) cost more; at 128 it is ~4% of a 135M model's products."""


ALIGN = 8
"""Packed rows are padded to a multiple of this many tokens: on a CPU with AMX, bfloat16 forwards of 8 rows
of 115 or 121 tokens took 10% longer than of 116 or 128 (``eval/bench_latency.py``'s service rows)."""
EVEN_ROWS = 64
"""Up to this many packed rows, :func:`pack` evens them out (a search over the row length)."""


@dataclass(frozen=True)
class Packed:
    """Token ids of several prompts laid end to end in each row (``rows`` x ``length``), each prompt
    attending to its own earlier tokens only (a block-diagonal causal mask) at positions 0..n-1 as if
    alone. Padding fills the rows' ends; a padding token attends to itself only."""

    input_ids: torch.Tensor  # (R, L)
    position_ids: torch.Tensor  # (R, L) each prompt's own positions from 0
    segment: torch.Tensor  # (R, L) which prompt of the row a token belongs to (-1: padding)
    last_index: (
        torch.Tensor
    )  # (R, K) position of each prompt's last token in its row (a row with fewer repeats its last)
    rows: np.ndarray  # (R, K) the prompts' positions in the caller's list, -1 where a row has fewer than K

    def to(self, device: torch.device | str) -> Packed:
        """The same rows with their tensors on ``device``."""
        return Packed(
            self.input_ids.to(device), self.position_ids.to(device), self.segment.to(device), self.last_index, self.rows
        )

    def attention_mask(self, n_prefix: int = 0) -> torch.Tensor:
        """Boolean (R, 1, L, n_prefix + L): every token sees the whole prefix and its own prompt's earlier tokens."""
        seg = self.segment
        length = seg.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=seg.device).tril()  # (L, L)
        own = (seg[:, :, None] == seg[:, None, :]) & (seg >= 0)[:, :, None] & causal  # (R, L, L)
        own |= torch.eye(length, dtype=torch.bool, device=seg.device)  # padding sees itself (no empty softmax)
        prefix = torch.ones(seg.shape[0], length, n_prefix, dtype=torch.bool, device=seg.device)
        return torch.cat([prefix, own], -1)[:, None]


def pack(
    ids: Sequence[Sequence[int]],
    batch_size: int,
    pad_id: int,
    max_tokens: int | None = None,
    prefix_per_row: int = 0,
    row: int = PACK_ROW,
) -> list[Packed]:
    """Prompts packed into rows of about ``row`` tokens, the rows grouped into forwards.

    Best fit, longest prompt first, into rows of ``min(row, max_tokens)`` tokens; a longer prompt has a
    row of its own (so one long prompt does not make every row long: attention grows with a row's square).
    A forward holds at most ``batch_size`` prompts and, unless it is a single row, at most
    ``max_tokens`` tokens (rows x longest row) and :data:`KV_TOKENS` cached tokens with a prefix copied
    to every row. Where a prompt lands never changes its scores beyond rounding (the mask and the
    positions make each prompt's computation its own).
    """
    if not ids:
        return []
    lengths = np.array([len(x) for x in ids])
    order = np.argsort(-lengths, kind="stable")
    cap = max(1, min(row, max_tokens or row))
    fills, members = _fit_rows(lengths, order, cap, batch_size)
    # A few rows: as many, evened out (the shortest rows that still take every prompt in as many), so that
    # a call of 32 prompts pads ~1% of its tokens instead of most of its last row. Many rows waste little.
    lo, hi = 1, cap
    while len(fills) <= EVEN_ROWS and lo < hi:
        mid = (lo + hi) // 2
        trial = _fit_rows(lengths, order, mid, batch_size)
        if len(trial[0]) <= len(fills):
            hi, (fills, members) = mid, trial
        else:
            lo = mid + 1
    # Rows longest first, cut into forwards where the fewest padded tokens are wasted (split_sorted, as for
    # padded prompts), then cut again where a forward would hold more than batch_size prompts
    by_fill = sorted(range(len(fills)), key=lambda r: -fills[r])
    widths = np.array([_aligned(fills[r]) for r in by_fill])
    bounds = split_sorted(widths, batch_size, max_tokens, prefix=prefix_per_row)
    out: list[Packed] = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        group: list[list[int]] = []
        for r in by_fill[start:stop]:
            if group and sum(map(len, group)) + len(members[r]) > batch_size:
                out.append(_packed(group, ids, pad_id))
                group = []
            group.append(members[r])
        out.append(_packed(group, ids, pad_id))
    return out


def _fit_rows(lengths: np.ndarray, order: np.ndarray, cap: int, batch_size: int) -> tuple[list[int], list[list[int]]]:
    """Prompts (in ``order``, longest first) into rows of at most ``cap`` tokens and ``batch_size`` prompts,
    each into the open row it fills the most (best fit): (fills, members). Open rows are kept by free
    tokens, so a prompt looks at the few sizes at or above its own length, not at every row."""
    fills: list[int] = []
    members: list[list[int]] = []
    free: list[list[int]] = [[] for _ in range(cap + 1)]  # free tokens -> open rows with that many
    for i in order:
        n = int(lengths[i])
        r = next((free[f].pop() for f in range(n, cap + 1) if free[f]), None)
        if r is None:
            r = len(fills)
            fills.append(0)
            members.append([])
        fills[r] += n
        members[r].append(int(i))
        if len(members[r]) < batch_size and fills[r] < cap:  # a prompt longer than a row has one of its own
            free[cap - fills[r]].append(r)
    return fills, members


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _packed(members: list[list[int]], ids: Sequence[Sequence[int]], pad_id: int) -> Packed:
    length = _aligned(max(sum(len(ids[i]) for i in m) for m in members))
    k = max(len(m) for m in members)
    n_rows = len(members)
    input_ids = torch.full((n_rows, length), pad_id, dtype=torch.long)
    positions = torch.zeros((n_rows, length), dtype=torch.long)
    segment = torch.full((n_rows, length), -1, dtype=torch.long)
    last = torch.zeros((n_rows, k), dtype=torch.long)
    rows = np.full((n_rows, k), -1, dtype=np.int64)
    for r, m in enumerate(members):
        at = 0
        for j, i in enumerate(m):
            n = len(ids[i])
            input_ids[r, at : at + n] = torch.tensor(list(ids[i]))
            positions[r, at : at + n] = torch.arange(n)
            segment[r, at : at + n] = j
            last[r, j:] = at + n - 1
            rows[r, j] = i
            at += n
    return Packed(input_ids, positions, segment, last, rows)


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
    cut_chars: bool = True,
) -> Encoded:
    """Tokenize prompts; cut prompts longer than ``max_length`` inside their field spans only.

    ``spans[i]`` is where prompt i's field values lie (``prompt[start:end]``): one (start, end), or a
    list of them for a template with several fields. Tokens are dropped from the end of the longest
    field first, so the template's words before, between and after the fields are always kept whole.

    A field longer than :func:`~verbalize.engine.tokens.char_bound` characters is cut to that many
    characters before anything is tokenized (``cut_chars=False``: never, the whole text is read): the
    tokens kept are the same, and memory and time per prompt are bounded by the context, not the text.

    Raises
    ------
    InputError
        When a prompt is too long even with its fields removed entirely.
    """
    if not prompts:
        return Encoded([], 0)
    lists = span_lists(spans)
    chars = char_bound(tokenizer, max_length) if cut_chars and max_length is not None and lists is not None else None
    huge = {i for i, x in enumerate(lists or []) if chars is not None and any(e - s > chars for s, e in x)}
    ids: list[list[int]] = [[] for _ in prompts]
    rest = [i for i in range(len(prompts)) if i not in huge]
    if rest:
        enc = tokenizer([prompts[i] for i in rest], add_special_tokens=add_special_tokens)
        for i, x in zip(rest, enc["input_ids"], strict=True):
            ids[i] = list(x)
    if max_length is None:
        return Encoded(ids, 0)
    long = [i for i in rest if len(ids[i]) > max_length]
    if long and lists is None:
        raise InputError(f"{len(long)} prompts are longer than {max_length} tokens and no text span was given")
    n_truncated = 0
    for i in sorted([*long, *huge]):
        ids[i], cut = _fit(tokenizer, prompts[i], lists[i], max_length, add_special_tokens, i, chars)  # type: ignore[index]
        n_truncated += cut
    return Encoded(ids, n_truncated)


def cut_fields(prompt: str, spans: Sequence[Span], chars: int) -> tuple[str, list[Span]]:
    """``prompt`` with each field (``prompt[start:end]``) cut to its first ``chars`` characters, and the new spans.

    The prompt is returned as it is (not copied) when no field is longer.
    """
    if all(e - s <= chars for s, e in spans):
        return prompt, list(spans)
    order = sorted(range(len(spans)), key=lambda f: spans[f][0])
    parts, out, pos, shift = [], list(spans), 0, 0
    for f in order:
        s, e = spans[f]
        end = min(e, s + chars)
        parts.append(prompt[pos:end])
        out[f] = (s - shift, end - shift)
        shift, pos = shift + e - end, e
    parts.append(prompt[pos:])
    return "".join(parts), out


def _fit(
    tokenizer: Any, prompt: str, spans: list[Span], max_length: int, add_special: bool, row: int, chars: int | None
) -> tuple[list[int], bool]:
    """A long prompt's ids cut to ``max_length`` (:func:`_truncate`), its fields cut to ``chars`` characters first.

    The characters cut are enough whenever each field cut still holds more tokens than can be kept;
    a field that does not (a normalizer that drops characters) is cut again at 4x the characters.
    """
    while True:
        text, fields = cut_fields(prompt, spans, chars) if chars is not None else (prompt, spans)
        cut = [f for f, ((s, e), (a, b)) in enumerate(zip(spans, fields, strict=True)) if b - a < e - s]
        got = _truncate(tokenizer, text, fields, max_length, add_special, row, cut)
        if got is not None:
            return got
        chars = 4 * chars  # type: ignore[operator]


def _truncate(
    tokenizer: Any,
    prompt: str,
    spans: list[Span],
    max_length: int,
    add_special: bool,
    row: int,
    cut: Sequence[int] = (),
) -> tuple[list[int], bool] | None:
    """Cut field values by whole tokens from their ends, the field with the most tokens first, then
    tokenize the shortened prompt as one string: (ids, whether anything was cut).

    Re-tokenizing keeps the result a sequence the tokenizer really produces: a token that merges the
    end of a field with the template (`."`, `.\nSentiment:`) is re-formed, never dropped with the field.
    The prompt keeps the most tokens that fit: which ones depends only on the first ``max_length``
    tokens of each field, so a field cut by characters (``cut``) gives what the whole text gives as
    long as it holds more (else None: cut fewer characters).
    """
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(
            f"text {row} needs truncation, which needs a fast tokenizer (with offsets); "
            "load the model's fast tokenizer or shorten the text"
        )
    enc = tokenizer(prompt, add_special_tokens=add_special, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= max_length and not cut:
        return list(enc["input_ids"]), False
    offsets = enc["offset_mapping"]
    starts = [[a for a, b in offsets if b > a and _inside(prompt, a, b, s, e)] for s, e in spans]
    counts = [len(x) for x in starts]  # tokens of each field
    if any(counts[f] < max_length + 2 for f in cut):
        return None

    def tokens_kept(drops: int) -> list[int]:
        out, pos = "", 0
        for (_, end), firsts, k in zip(spans, starts, _after_drops(counts, drops), strict=True):
            stop = end if k >= len(firsts) else firsts[k]  # the field keeps its characters before token k
            # rstrip: the space before a dropped token goes with it, as in the token sequence itself
            out = (out + prompt[pos:stop]).rstrip() if stop < end else out + prompt[pos:end]
            pos = end
        return list(tokenizer(out + prompt[pos:], add_special_tokens=add_special)["input_ids"])

    drops = max(len(enc["input_ids"]) - max_length, 1)  # a guess, right but for the seams: then step
    ids = tokens_kept(drops)
    if len(ids) <= max_length:  # back while one token more still fits: the most that fit, whatever the guess
        while drops > 1 and len(more := tokens_kept(drops - 1)) <= max_length:
            drops, ids = drops - 1, more
        return ids, True
    while drops < sum(counts):
        drops += 1
        ids = tokens_kept(drops)
        if len(ids) <= max_length:
            return ids, True
    raise InputError(
        f"text {row}: the template alone takes {len(ids)} tokens, more than max_length="
        f"{max_length}; shorten the instruction or use fewer demonstrations"
    )


def _after_drops(counts: Sequence[int], drops: int) -> list[int]:
    """Tokens each field keeps after ``drops`` single-token drops, each from the field that keeps the most
    (the first of equals); in closed form, so any number of drops costs the same."""
    target = max(sum(counts) - drops, 0)
    lo, hi = 0, max(counts, default=0)  # the highest level L with sum(min(c, L)) <= target
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if sum(min(c, mid) for c in counts) <= target else (lo, mid - 1)
    keep = [min(c, lo) for c in counts]
    above = [f for f, c in enumerate(counts) if c > lo]
    extra = target - sum(keep)  # fewer than len(above); the first of equals went down first
    for f in above[len(above) - extra :] if extra else []:
        keep[f] += 1
    return keep


def _inside(prompt: str, a: int, b: int, start: int, end: int) -> bool:
    chars = [i for i in range(a, b) if not prompt[i].isspace()] or list(range(a, b))
    return start <= chars[0] and chars[-1] < end
