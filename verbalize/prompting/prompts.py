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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verbalize.engine.tokens import leading_special_ids, prompt_budget
from verbalize.prompting.demos import similar_demos
from verbalize.prompting.labels import LabelWords
from verbalize.prompting.template import Span, Template, load_template
from verbalize.rows import Row

logger = logging.getLogger(__name__)

Demo = tuple[Row, str]


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
    """Prompts ready for the scorer: ``prefix + prompts[i]`` is what the model reads for text i.

    ``spans[i]`` is where each field's value lies in ``prompts[i]`` (only they are ever truncated);
    ``prefix`` is shared by every prompt, so the scorer runs it once.
    """

    prompts: list[str]
    spans: list[list[Span]]
    prefix: str


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
        With ``context_length``, drops shared demonstrations from the end until the longest prompt
        fits with ``reserved`` tokens to spare, and a text's own (``demo_pool``) demonstrations from
        the least similar on until its prompt fits: the text itself is never cut for a demonstration.
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
        t = self.template
        prompts, spans = t.spans(texts)
        if not self.demo_pool:
            return Prompts(prompts, spans, self.fitting_prefix(prompts))
        flat = [_flat(t.values(x)) for x, _ in self.demo_pool]
        picks = similar_demos(flat, [_flat(t.values(x)) for x in texts], self.n_demos, leave_out_same)
        shared = t.prefix()  # the instruction, shared by all; each text's own demonstrations follow it
        heads = self.fitting_heads(shared, picks, prompts)
        prompts = [h + p for h, p in zip(heads, prompts, strict=True)]
        spans = [[(a + len(h), b + len(h)) for a, b in x] for h, x in zip(heads, spans, strict=True)]
        return Prompts(prompts, spans, shared)

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

    def fitting_prefix(self, prompts: Sequence[str]) -> str:
        """The shared prefix, with demonstrations dropped from the end until the longest prompt fits."""
        t, budget = self.template, self.budget()
        demos = list(self.demos)
        prefix = t.prefix(demos)
        if not demos or not prompts or budget is None:
            return prefix
        lengths = self._n_tokens(prompts)
        longest = prompts[max(range(len(prompts)), key=lengths.__getitem__)]

        def fits(prefix: str) -> bool:
            return self._n_tokens([prefix + longest])[0] <= budget

        while demos and not fits(prefix):
            demos.pop()
            prefix = t.prefix(demos)
        if len(demos) < len(self.demos):
            logger.warning(
                "prompt budget: kept %d of %d demonstrations so that the longest text fits in %d tokens",
                len(demos),
                len(self.demos),
                self.context_length,
            )
        return prefix


def _flat(values: Mapping[str, str]) -> str:
    """A row's field values as one string (for text similarity)."""
    return "\n".join(values.values())
