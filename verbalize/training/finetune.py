"""Prompt-based fine-tuning of the causal LM (full or LoRA), optionally with LM-loss mixing and joint heads.

The classification loss is the cross-entropy over the labels' word scores at the prompt's next
position, the very scores used at prediction time (LM-BFF, Gao et al. 2021, for causal LMs). The LM
head is trained, never replaced, so the model still generates; mixing in a language-modeling loss on
plain text (``lm_weight``; by default distillation from the model as it was) keeps its perplexity
from drifting. Joint heads add their own weighted losses to the same forward pass.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import numpy as np

from verbalize.engine.models import is_quantized
from verbalize.engine.scoring import Scorer
from verbalize.engine.tokens import LabelTokens, leading_special_ids, reserved_tokens
from verbalize.prompting.prompts import Prompts
from verbalize.training.config import FineTuneConfig
from verbalize.training.heads import FittedHead, Head, HeadTargets, JointHeads
from verbalize.training.loop import Objective, TrainingResult, fine_tune, seeded

logger = logging.getLogger(__name__)


def train_classifier(
    scorer: Scorer,
    texts: Sequence[str],
    prompts: Prompts,
    label_tokens: LabelTokens,
    labels: Sequence[str],
    ys: Sequence[str] | None,
    head_ys: HeadTargets,
    heads: Sequence[Head],
    aggregation: str,
    config: FineTuneConfig,
    seed: int | None = None,
) -> tuple[Scorer, TrainingResult, dict[str, FittedHead]]:
    """Fine-tune a copy of ``scorer``'s model on the ``prompts`` of ``texts``; the shared model is never changed.

    ``ys`` are the template-label targets (or None), ``head_ys`` the targets of the joint ``heads``.
    Returns the scorer of the trained copy, the run's history and the jointly trained heads.

    Raises
    ------
    ValueError
        When there is nothing to train on, or the targets hold a single class.
    """
    if is_quantized(scorer.model):
        raise ValueError(
            "fine-tuning trains float32 weights, and this model is int8: fit with dtype='float32', save the "
            "classifier, then serve it in int8 with Verbalizer.load(path, dtype='int8') (or predict --dtype int8)"
        )
    joint = [h for h in heads if h.training == "joint"]
    index = {c: i for i, c in enumerate(labels)}
    y = np.array([index[v] for v in ys]) if ys is not None else None
    if y is None and not joint:
        raise ValueError(
            "fine-tuning needs labels of the template's labels, or a head with training='joint'; "
            f"the template's labels are {list(labels)}"
        )
    _refuse_single_class(y, labels, [(h, *head_ys[h.name]) for h in joint])
    # Train a copy: the loaded model is shared (cached per process) with other classifiers.
    tuned = scorer.with_settings(model=copy.deepcopy(scorer.model))
    hidden = tuned.model.config.hidden_size
    with seeded(seed, tuned.device):  # the joint heads' initial weights too, never from the caller's state
        joint_heads = JointHeads(joint, [len(head_ys[h.name][0]) for h in joint], hidden) if joint else None
    objective = Objective(  # the label-word loss (when y is given) and the joint heads' losses
        label_tokens=label_tokens,
        word_label=label_tokens.word_label,
        n_labels=len(labels),
        aggregation=aggregation,
        y=y,
        heads=joint,
        head_targets=[head_ys[h.name][1] for h in joint],
        joint=joint_heads,
        prompt_weight=config.prompt_weight,
    )
    ids = _encode(tuned, prompts, reserved_tokens(label_tokens))
    result = fine_tune(tuned, ids, objective, config, _lm_ids(tuned, texts, config), seed)
    fitted = {}
    for h in joint:  # the trained linear layers, as fitted heads
        layer = objective.joint.linear(h.name)  # type: ignore[union-attr]
        w, b = layer.weight.detach().cpu(), layer.bias.detach().cpu()
        fitted[h.name] = FittedHead(h, np.array(head_ys[h.name][0], dtype=object), w, b)
    return tuned, result, fitted


def _encode(scorer: Scorer, prompts: Prompts, room: int) -> list[list[int]]:
    """Token ids of every prompt with its own prefix (encoded once per distinct prefix), in text order."""
    ids: list[list[int]] = [[] for _ in prompts.prompts]
    for prefix, rows in prompts.groups():
        part = prompts.part(rows)
        for i, x in zip(rows, scorer.encode(part.prompts, part.spans, prefix, room).ids, strict=True):
            ids[i] = x
    return ids


def _lm_ids(scorer: Scorer, texts: Sequence[str], config: FineTuneConfig) -> list[list[int]] | None:
    """Token ids of the plain texts for the LM loss (``lm_texts``, else the training texts), BOS first."""
    if not config.lm_weight:
        return None
    lead = leading_special_ids(scorer.tokenizer)
    source = list(config.lm_texts) if config.lm_texts is not None else list(texts)
    tokens = scorer.tokenizer(source, add_special_tokens=False)["input_ids"]
    return [(lead + x)[: config.lm_max_tokens] for x in tokens]


def _refuse_single_class(
    y: np.ndarray | None, labels: Sequence[str], heads: Sequence[tuple[Head, list[str], np.ndarray]]
) -> None:
    """Training on one class teaches the model to always answer it (and validation then reads 1.0)."""
    targets = ([("the template's labels", list(labels), y)] if y is not None else []) + [
        (f"head {h.name!r}", classes, t) for h, classes, t in heads if not h.multi_label
    ]
    for what, classes, t in targets:
        present = np.unique(t)
        if len(present) < 2:
            only = classes[int(present[0])] if len(present) else None
            raise ValueError(
                f"fine-tuning needs at least two classes of {what} in y; got only {only!r} in {len(t)} rows. "
                f"A single-class training set teaches the model to always answer {only!r}: add examples of "
                f"the other labels {[c for c in classes if c != only]}"
            )
