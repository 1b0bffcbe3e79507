"""Independent references for tests: label scores from a plain forward of each (prompt, word) pair,
and the calibration formulas written out from their papers. Nothing here calls verbalize's scorer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x - np.logaddexp.reduce(x, axis=1, keepdims=True)


def label_scores(
    model: Any, tokenizer: Any, prompts: Sequence[str], labels: Mapping[str, Sequence[str]], prefix: str = " "
) -> np.ndarray:
    """(n, n_labels): log sum over a label's words of P(word | prompt), each word scored by a full forward of
    prompt + prefix + word run alone (its tokens: those that follow the prompt's own tokens)."""
    out = np.zeros((len(prompts), len(labels)))
    for i, prompt in enumerate(prompts):
        ctx = tokenizer(prompt)["input_ids"]
        for j, words in enumerate(labels.values()):
            per_word = []
            for word in words:
                full = tokenizer(prompt + prefix + word)["input_ids"]
                assert full[: len(ctx)] == ctx, "the word changes the prompt's tokens"
                with torch.no_grad():
                    logits = model(torch.tensor([full])).logits[0].double()  # (L, vocab)
                logp = torch.log_softmax(logits, dim=-1)
                per_word.append(sum(float(logp[k - 1, full[k]]) for k in range(len(ctx), len(full))))
            out[i, j] = np.logaddexp.reduce(per_word)
    return out


def prior_corrected(scores: np.ndarray, prior_scores: np.ndarray) -> np.ndarray:
    """Zhao et al. (2021): divide each row's label probabilities by the mean probabilities ``p_cf`` that the
    prompt gives the calibration inputs (``prior_scores``), then renormalize: log of softmax(W p), W = diag(p_cf)^-1."""
    p = np.exp(log_softmax(scores))
    p_cf = np.exp(log_softmax(prior_scores)).mean(axis=0)
    q = p / p_cf
    return np.log(q / q.sum(axis=1, keepdims=True))
