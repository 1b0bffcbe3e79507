"""What the micro-batcher needs from a :class:`~verbalize.Verbalizer`, through its public API only.

Cross-request and cross-template batching needs what ``predict_proba`` computes on the way to
the model: the prompts, where each field's value lies in them, each text's prefix (instruction
and demonstrations), and the label words as tokens (``Verbalizer.build_prompts`` and
``label_tokens_``); and the way back from word scores to calibrated probabilities
(``Verbalizer.calibrate_words``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from verbalize.engine.tokens import reserved_tokens
from verbalize.estimator import Verbalizer


@dataclass(frozen=True)
class Plan:
    """What one request's texts need from the model, and how word scores become probabilities.

    Requests whose ``key`` is equal read the same model with the same settings and template start,
    so their prompts can go through one ``Scorer.score_words`` call per distinct prefix and every
    text still gets exactly the scores it would get alone (the scorer is batch-invariant, and a
    text's prefix depends on that text only).
    ``key`` is None when the classifier must be run on its own (heads, per-text prefixes).
    """

    scorer: Any
    prompts: list[str]
    spans: list[list[tuple[int, int]]]  # per prompt, where each template field's value lies
    prefixes: list[str]  # per prompt: the instruction and the shared demonstrations that fit beside it
    label_tokens: Any
    finish: Callable[[np.ndarray], np.ndarray]
    key: tuple[Any, ...] | None


def scoring_plan(clf: Verbalizer, rows: list[Any]) -> Plan:
    """The prompts, label tokens and finishing step that ``clf.predict_proba(rows)`` would use.

    ``rows`` are texts, or dicts {field: text} for a template with several fields.
    ``finish(words)`` maps word log-probabilities (n, n_words) to probabilities (n, n_classes)
    through the classifier's own aggregation and calibration; calibrators that look at the
    texts (domain, batch) see this request's rows, as offline ``predict_proba`` on them would.
    """
    built = clf.build_prompts(rows)
    prompts, spans = built.prompts, built.spans
    scorer, tokens = clf.scorer_, clf.label_tokens_
    room = reserved_tokens(tokens)
    head = prompts[0][: spans[0][0][0]] if prompts else ""  # what comes before the first field
    shared_head = all(p[: x[0][0]] == head for p, x in zip(prompts, spans, strict=True))
    fusable = not clf.head_specs_ and not clf.demo_pool_ and shared_head
    key = None
    if fusable:
        key = (id(scorer.model), scorer.batch_size, scorer.max_tokens, scorer.context_length, head, room)

    def finish(words: np.ndarray) -> np.ndarray:
        return clf.calibrate_words(words, rows)

    return Plan(scorer, prompts, spans, built.prefixes, tokens, finish, key)


def merge_label_tokens(plans: Sequence[Plan]) -> tuple[Any, list[int]]:
    """One label-token table holding every distinct table of ``plans``, and each plan's column offset.

    The scorer's word columns are independent of each other (each is the log-probability of one
    word after the prompt), so a union of words scores each word exactly as its own table would.
    """
    tables: dict[int, int] = {}
    words: list[str] = []
    ids: list[tuple[int, ...]] = []
    offsets = []
    for plan in plans:
        t = plan.label_tokens
        if id(t) not in tables:
            tables[id(t)] = len(words)
            words += list(t.words)
            ids += list(t.word_ids)
        offsets.append(tables[id(t)])
    first = plans[0].label_tokens
    if len(tables) == 1:
        return first, offsets
    # Each merged word is its own "label": the caller slices word columns, never aggregates here.
    merged = dataclasses.replace(
        first, labels=tuple(words), words=tuple(words), word_label=np.arange(len(words)), word_ids=tuple(ids)
    )
    return merged, offsets


def n_words(plan: Plan) -> int:
    """How many word columns a plan's label tokens have."""
    return len(plan.label_tokens.word_ids)
