"""What the model reads: the template's prompt, demonstrations (shared or per text) and the context budget.

One rule decides how many tokens a prompt may take (:func:`~verbalize.engine.tokens.prompt_budget`);
the scorer truncates texts with it and the budget that drops demonstrations uses it too, so a
prompt that fits here is never cut there. Only the classified text's field values are ever cut;
demonstrations, shared or per text, are dropped whole before that.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from verbalize.engine.tokens import char_bound, leading_special_ids, prompt_budget
from verbalize.prompting.demos import similar_demos
from verbalize.prompting.labels import LabelWords
from verbalize.prompting.template import Span, Template, load_template
from verbalize.rows import Row

logger = logging.getLogger(__name__)

Demo = tuple[Row, str]
# id(shared demonstrations) -> (them, template, tokenizer, (budget, count), how many can ever fit): see
# PromptBuilder._usable_demos. The entry holds the list, so its id is not reused while cached.
_USABLE: OrderedDict[int, tuple[Any, ...]] = OrderedDict()
_USABLE_LOCK = threading.Lock()


def resolve_template(template: str | Path | Template | None, labels: Mapping[str, Sequence[str]] | None) -> Template:
    """The :class:`Template` that ``Verbalizer(template=..., labels=...)`` means.

    ``template`` is a :class:`Template`, a TOML file, or an inline prompt containing ``{text}``
    (then ``labels`` is required); ``labels`` replace the template's label words when given.

    Raises
    ------
    ValueError
        When there is no template, or an inline prompt has no labels.
    FileNotFoundError, TemplateError
        From :func:`load_template`.
    """
    words = LabelWords(labels) if labels is not None else None
    if isinstance(template, Template):
        return dataclasses.replace(template, labels=words) if words is not None else template
    if template is None:
        raise ValueError(
            "Verbalizer needs template=: a TOML file such as 'templates/sst2.toml', a Template, "
            "or a prompt string with {text} together with labels={label: [words]}"
        )
    if isinstance(template, str) and re.search(r"\{\w+\}", template) and not template.endswith(".toml"):
        if labels is None:
            raise ValueError("an inline prompt needs labels=, e.g. labels={'spam': ['spam'], 'ham': ['ham']}")
        fields = tuple(dict.fromkeys(re.findall(r"(?<!\{)\{(\w+)\}", template)))  # an inline prompt declares its fields
        return Template(prompt=template, labels=words, fields=fields)  # type: ignore[arg-type]
    loaded = load_template(template)
    return dataclasses.replace(loaded, labels=words) if words is not None else loaded


@dataclass(frozen=True)
class Prompts:
    """Prompts ready for the scorer: ``prefixes[i] + prompts[i]`` is what the model reads for text i.

    ``spans[i]`` is where each field's value lies in ``prompts[i]`` (only they are ever truncated).
    ``prefixes[i]`` (instruction and shared demonstrations) depends on text i only: texts that keep
    the same demonstrations share one prefix, which the scorer runs once per call (:meth:`groups`,
    :func:`per_prefix`); usually all texts share one (:attr:`prefix`).
    """

    prompts: list[str]
    spans: list[list[Span]]
    prefixes: list[str]

    def groups(self) -> list[tuple[str, list[int]]]:
        """(prefix, rows) for each distinct prefix, in order of first appearance; ``[("", [])]`` when empty."""
        rows: dict[str, list[int]] = {}
        for i, p in enumerate(self.prefixes):
            rows.setdefault(p, []).append(i)
        return list(rows.items()) or [("", [])]

    @property
    def prefix(self) -> str:
        """The prefix of every prompt, when all texts share one.

        Raises
        ------
        ValueError
            When texts kept different numbers of demonstrations: score by :meth:`groups` instead.
        """
        groups = self.groups()
        if len(groups) > 1:
            raise ValueError(
                f"these {len(self.prompts)} prompts have {len(groups)} different prefixes (texts kept different "
                "numbers of demonstrations); score each of Prompts.groups() or use per_prefix()"
            )
        return groups[0][0]

    def part(self, rows: Sequence[int]) -> Prompts:
        """The prompts of ``rows`` only."""
        return Prompts([self.prompts[i] for i in rows], [self.spans[i] for i in rows], [self.prefixes[i] for i in rows])


def per_prefix(
    prompts: Prompts, run: Callable[[list[str], list[list[Span]], str], Sequence[np.ndarray]]
) -> list[np.ndarray]:
    """``run(prompts, spans, prefix)`` once per distinct prefix, each output's rows put back in text order.

    ``run`` returns arrays with one row per prompt (as :meth:`Scorer.outputs` does); with one prefix
    (the usual case) this is a single call on all prompts.
    """
    groups = prompts.groups()
    if len(groups) == 1:
        return list(run(prompts.prompts, prompts.spans, groups[0][0]))
    out: list[np.ndarray] = []
    for prefix, rows in groups:
        part = prompts.part(rows)
        got = [np.asarray(x) for x in run(part.prompts, part.spans, prefix)]
        if not out:
            out = [np.empty((len(prompts.prompts), *x.shape[1:]), dtype=x.dtype) for x in got]
        for o, x in zip(out, got, strict=True):
            o[rows] = x
    return out


@dataclass(frozen=True)
class PromptBuilder:
    """Assembles what the model reads for each text: the template, and shared or per-text demonstrations.

    Parameters
    ----------
    template : Template
    demos : sequence of (text, label)
        Demonstrations shared by every prompt, in prompt order.
    demo_pool : sequence of (text, label)
        With ``n_demos`` > 0, each text gets its own ``n_demos`` most similar rows of this pool
        (``demo_selection="similar"``), the nearest last; ``demos`` is then unused.
    n_demos : int
    tokenizer : tokenizer, optional
        With ``context_length``, drops shared demonstrations from the end until each text's prompt
        fits with ``reserved`` tokens to spare (for each text on its own: its prompt never depends on
        the other texts of the call), and a text's own (``demo_pool``) demonstrations from the least
        similar on until its prompt fits: the text itself is never cut for a demonstration.
    context_length : int, optional
    reserved : int
        Tokens kept free for the label words: :func:`reserved_tokens`.
    """

    template: Template
    demos: Sequence[Demo] = ()
    demo_pool: Sequence[Demo] = ()
    n_demos: int = 0
    tokenizer: Any = None
    context_length: int | None = None
    reserved: int = 0

    def build(self, texts: Sequence[Row], leave_out_same: bool = False) -> Prompts:
        """The prompts of ``texts``.

        ``leave_out_same``: per-text demonstrations never include the text itself (training prompts).
        """
        t, budget = self.template, self.budget()
        if budget is not None:  # what the model can never read is not rendered, compared or tokenized
            chars = char_bound(self.tokenizer, budget)
            texts = [_cut_row(x, chars) for x in texts]
        prompts, spans = t.spans(texts)
        if not self.demo_pool:
            return Prompts(prompts, spans, self.fitting_prefixes(prompts))
        flat = [_flat(t.values(x)) for x, _ in self.demo_pool]
        picks = similar_demos(flat, [_flat(t.values(x)) for x in texts], self.n_demos, leave_out_same)
        shared = t.prefix()  # the instruction, shared by all; each text's own demonstrations follow it
        heads = self.fitting_heads(shared, picks, prompts)
        prompts = [h + p for h, p in zip(heads, prompts, strict=True)]
        spans = [[(a + len(h), b + len(h)) for a, b in x] for h, x in zip(heads, spans, strict=True)]
        return Prompts(prompts, spans, [shared] * len(prompts))

    def budget(self) -> int | None:
        """Tokens a prompt (prefix included) may take (:func:`prompt_budget`); None without a tokenizer or window."""
        if self.tokenizer is None or self.context_length is None:
            return None
        return prompt_budget(self.context_length, self.reserved, len(leading_special_ids(self.tokenizer)))

    def _n_tokens(self, strings: Sequence[str]) -> list[int]:
        # tokenized as the scorer reads it: prefix and prompt as one string, no special tokens
        return [len(x) for x in self.tokenizer(list(strings), add_special_tokens=False)["input_ids"]]

    def fitting_heads(self, shared: str, picks: Sequence[Sequence[int]], prompts: Sequence[str]) -> list[str]:
        """Each text's own demonstrations (rendered, after ``shared``), the least similar dropped whole
        (the first of ``picks[i]``) until the text's prompt fits the budget."""
        t, budget = self.template, self.budget()

        def head(pick: Sequence[int]) -> str:
            return t.prefix([self.demo_pool[i] for i in pick])[len(shared) :]

        heads = [head(pick) for pick in picks]
        if budget is None or not prompts:
            return heads
        lengths = self._n_tokens([shared + h + p for h, p in zip(heads, prompts, strict=True)])
        over = [i for i, n in enumerate(lengths) if n > budget and picks[i]]
        for i in over:
            pick = list(picks[i])
            while pick and self._n_tokens([shared + heads[i] + prompts[i]])[0] > budget:
                pick = pick[1:]  # the nearest demonstration stays next to the text
                heads[i] = head(pick)
        if over:
            logger.warning(
                "prompt budget: %d of %d texts kept fewer of their own demonstrations so that they fit in %d tokens",
                len(over),
                len(prompts),
                self.context_length,
            )
        return heads

    def fitting_prefixes(self, prompts: Sequence[str]) -> list[str]:
        """Each text's shared prefix: the instruction and the most demonstrations (the first k) that fit beside it.

        Demonstrations are dropped whole from the end, and for each text on its own: a text's prefix
        never depends on the other texts of the call. Texts keeping the same k get the same string.
        """
        t, budget = self.template, self.budget()
        demos = list(self.demos)
        if not demos or not prompts or budget is None:
            return [t.prefix(demos)] * len(prompts)
        full, cuts = self._cut_points(demos[: self._usable_demos(budget)])
        kept = self._kept_demos(full, cuts, prompts, budget)
        strings = {k: full[: cuts[k]] for k in set(kept)}
        lost = [len(demos) - k for k in kept if k < len(demos)]
        if lost:
            many = str(lost[0]) if min(lost) == max(lost) else f"{min(lost)} to {max(lost)}"
            logger.warning(
                "prompt budget: %d of %d texts lost %s of the %d shared demonstrations (dropped from the end) "
                "so that they fit in %d tokens",
                len(lost),
                len(prompts),
                many,
                len(demos),
                self.context_length,
            )
        return [strings[k] for k in kept]

    def _cut_points(self, demos: Sequence[Demo]) -> tuple[str, list[int]]:
        """The prefix with all ``demos``, and where each k of them end: ``prefix(demos[:k]) == full[: cuts[k]]``."""
        t = self.template
        base = len(t.prefix())  # the instruction, then each demonstration with its separator
        return t.prefix(demos), [int(c) for c in np.cumsum([base] + [len(t.prefix([d])) - base for d in demos])]

    def _usable_demos(self, budget: int) -> int:
        """How many of the shared demonstrations any text may keep: those that fit beside an empty text, and two
        more (a text adds tokens; no seam merges away two demonstrations' worth).

        Found once per demonstrations list, template, tokenizer and budget (a fitted classifier's), not per
        call: each call then renders and tokenizes only what can fit, however many demonstrations there are.
        """
        demos, key = self.demos, id(self.demos)
        with _USABLE_LOCK:
            got = _USABLE.get(key)
            if (
                got is not None
                and got[0] is demos
                and got[1] is self.template
                and got[2] is self.tokenizer
                and (got[3] == (budget, len(demos)))
            ):
                _USABLE.move_to_end(key)
                return int(got[4])
        full, cuts = self._cut_points(list(demos))
        empty = self.template.spans([""])[0][0]
        usable = min(len(demos), self._kept_demos(full, cuts, [empty], budget)[0] + 2)
        with _USABLE_LOCK:
            _USABLE[key] = (demos, self.template, self.tokenizer, (budget, len(demos)), usable)
            while len(_USABLE) > 16:
                _USABLE.popitem(last=False)
        return usable

    def _kept_demos(self, full: str, cuts: list[int], prompts: Sequence[str], budget: int) -> list[int]:
        """For each prompt, the largest k such that ``full[: cuts[k]] + prompt`` fits ``budget`` (0 if none does).

        A parallel binary search over k, every probe checked exactly (the prefix and the prompt
        tokenized as one string, as the scorer reads them): the first round probes the k that token
        counts of the whole prefix and of each prompt alone suggest (right but for a token or two at
        the seams), so it usually settles every text at once. Each round is one tokenizer call over
        all unsettled texts: O(log n_demos) calls, on strings at most a few demonstrations past the
        budget unless the estimate is far off.
        """
        n, own = len(cuts) - 1, self._n_tokens(prompts)
        approx = self._prefix_counts(full, cuts)  # nondecreasing in k
        over = bisect_right(approx, budget + 2)  # the first k that surely does not fit (n + 1: none)
        lo, hi = [0] * len(prompts), [n + 1] * len(prompts)  # full[:cuts[lo]] + prompt fits; hi does not
        guesses = [max(bisect_right(approx, budget - x) - 1, 0) for x in own]
        probes = [[g, g + 1] for g in guesses]
        while any(probes):
            asked = [(i, k) for i, ks in enumerate(probes) for k in ks if lo[i] < k < hi[i]]
            fits = self._n_tokens([full[: cuts[k]] + prompts[i] for i, k in asked]) if asked else []
            for (i, k), m in zip(asked, fits, strict=True):
                if k >= hi[i]:
                    continue  # a smaller probe of this text did not fit already
                if m <= budget:
                    lo[i] = k
                else:
                    hi[i] = k
            # no k known not to fit: first the one that surely does not, then halve the bracket
            probes = [
                [] if b - a < 2 else [over] if b > n and a < over <= n else [(a + b) // 2]
                for a, b in zip(lo, hi, strict=True)
            ]
        return lo

    def _prefix_counts(self, full: str, cuts: list[int]) -> list[int]:
        """About how many tokens ``full[: cuts[k]]`` has, for every k, from one tokenizer call."""
        if getattr(self.tokenizer, "is_fast", False):
            enc = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
            ends = sorted(end for _, end in enc["offset_mapping"])
            return [bisect_right(ends, c) for c in cuts]
        # a slow tokenizer: the instruction and each demonstration apart, added up (off by the seams)
        pieces = [full[: cuts[0]]] + [full[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
        return [int(c) for c in np.cumsum(self._n_tokens(pieces))]


_LEADING_SPACE = re.compile(r"\s*")


def _cut_row(row: Row, chars: int) -> Row:
    """``row`` with each value longer than ``chars`` characters cut to that many after its leading whitespace.

    The template strips values, so the cut starts where the stripped value does; the characters left
    hold more than a prompt's whole budget of tokens (:func:`char_bound`), so the model reads the same.
    """

    def cut(v: Any) -> Any:
        if not isinstance(v, str) or len(v) <= chars:
            return v
        start = _LEADING_SPACE.match(v).end()  # type: ignore[union-attr]
        return v[start : start + chars]

    if isinstance(row, str):
        return cut(row)
    if isinstance(row, Mapping):
        return {k: cut(v) for k, v in row.items()}
    if isinstance(row, list | tuple):
        return [cut(v) for v in row]
    return row


def _flat(values: Mapping[str, str]) -> str:
    """A row's field values as one string (for text similarity)."""
    return "\n".join(values.values())
