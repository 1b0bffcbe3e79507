"""Language-modeling loss mixed into fine-tuning, so that the model still generates as before.

``lm_loss`` is the next-token cross-entropy on plain text, or (with a teacher) the KL divergence
from the model's own next-token distribution before fine-tuning; ``perplexity`` measures drift.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from verbalize.engine.batching import pad_batch


def lm_loss(
    model: Any, rows: Sequence[Sequence[int]], pad_id: int, device: torch.device, teacher: Any = None
) -> torch.Tensor:
    """Mean next-token cross-entropy over the real tokens of right-padded rows; with a ``teacher``
    (a callable giving the frozen model's logits), the mean KL(teacher || model) over those tokens."""
    batch = pad_batch([list(r) for r in rows], np.arange(len(rows)), pad_id)
    ids = batch.input_ids.to(device)
    mask = batch.attention_mask.to(device)
    if teacher is None:
        return model(input_ids=ids, labels=ids.masked_fill(mask == 0, -100)).loss
    training = model.training
    model.eval()  # no dropout here: with it the KL from the (eval-mode) teacher never reaches 0 and its
    try:  # gradient mostly fights the dropout noise (measured on GPT-2: no pull towards the base at all)
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), dim=-1)  # (b, L, V)
    finally:
        model.train(training)
    with torch.no_grad():
        ref = torch.log_softmax(teacher(ids).float(), dim=-1)  # (b, L, V)
    kl = (ref.exp() * (ref - logp)).sum(-1)  # (b, L)
    return (kl * mask).sum() / mask.sum()


@torch.no_grad()
def perplexity(model: Any, rows: Sequence[Sequence[int]], pad_id: int, batch_size: int = 16) -> float:
    """exp of the mean next-token loss over all real tokens of the rows (each row scored on its own)."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        chunk = [r for r in rows[start : start + batch_size] if len(r) > 1]
        if not chunk:
            continue
        n = sum(len(r) - 1 for r in chunk)  # predicted tokens: all but each row's first
        total += float(lm_loss(model, chunk, pad_id, device)) * n
        count += n
    return math.exp(total / max(count, 1))


def teacher_of(model: Any, peft_model: Any) -> Any:
    """The model as it was before fine-tuning, as a function ids -> logits (LoRA: adapters switched off)."""
    if peft_model is not None:

        def adapters_off(ids: torch.Tensor) -> torch.Tensor:
            with peft_model.disable_adapter():
                return model(input_ids=ids).logits

        return adapters_off
    frozen = copy.deepcopy(model).eval().requires_grad_(False)
    return lambda ids: frozen(input_ids=ids).logits
