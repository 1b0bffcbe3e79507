"""Cost of few-shot prompts: zero-shot vs shared demonstrations, with the prefix cache and without it,
beside the FLOP model's prediction.

    python eval/bench_fewshot.py --data ../shared/data                       # 8, 32, 64 demonstrations
    python eval/bench_fewshot.py --data ../shared/data --n-demos 8 --uncached-n 128

All rows score the same SST-2 test texts with the shipped template in one run, in interleaved rounds
(zero-shot, then each demonstration count; the median round is reported).
- "prefix cache (verbalize)": what Verbalizer does. The demonstrations run once; their key/value
  cache is reused by every batch, read as one row by every row's attention where the model allows it
  (``verbalize/prefix_attention.py``; the default SmolLM2 does), else expanded to the batch's rows.
- "no cache": the same demonstrations written into every prompt, scored without any shared prefix.
  The scorer finds the token prefix that all prompts of a call share on its own when it knows where
  the text lies (``spans``) or is given a ``prefix``; this baseline passes neither, so nothing beyond
  BOS is shared and every prompt pays for its demonstrations (batched as usual). It runs on the
  first --uncached-n texts.
- "FLOP model": matmul FLOPs per text with the prefix cached (the text's tokens through the linear
  layers, their attention over prefix + text, the output row, plus the prefix's own pass shared over
  the texts), divided by the same for zero-shot. "measured / model" near 1 means the prefix costs
  what its arithmetic says; above it, something else (copies, masks, the attention kernel) costs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from data import data_dir, load, template_path

from verbalize import Verbalizer
from verbalize.engine.batching import span_lists


def flops(model: torch.nn.Module, n_prefix: int, lengths: list[int], n_texts: int) -> float:
    """Matmul FLOPs per text: the text's tokens (after a cached ``n_prefix``) plus 1/n_texts of the prefix pass."""
    cfg = model.config
    macs = sum(m.in_features * m.out_features for m in model.base_model.modules() if isinstance(m, torch.nn.Linear))
    if macs == 0:  # GPT-2's Conv1D
        macs = sum(m.weight.numel() for m in model.base_model.modules() if type(m).__name__ == "Conv1D")
    d_attn = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    layers, vocab_row = cfg.num_hidden_layers, model.get_output_embeddings().weight.numel()

    def tokens(n: int, past: int) -> float:  # n new tokens after `past` cached ones
        return 2 * (macs * n + layers * 2 * d_attn * n * (past + (n + 1) / 2))

    per_text = np.mean([tokens(n, n_prefix) + 2 * vocab_row for n in lengths])
    return float(per_text + tokens(n_prefix, 0) / n_texts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data folder (or $VERBALIZE_DATA)")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--n-demos", type=int, nargs="*", default=[8, 32, 64])
    ap.add_argument("--uncached-n", type=int, default=32, help="texts for the no-cache rows (slow); 0 skips them")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()

    root = data_dir(args.data)
    X, _ = load("sst2", "test", root, args.n)
    X_tr, y_tr = load("sst2", "train", root)
    tpl = template_path("sst2")
    zero = Verbalizer(template=tpl, model=args.model, dtype=args.dtype).fit()
    fews = {
        k: Verbalizer(template=tpl, model=args.model, dtype=args.dtype, n_demos=k, random_state=0).fit(X_tr, y_tr)
        for k in args.n_demos
    }
    zero.label_scores(X[:32])  # warm-up
    scorer = zero.scorer_
    tok = scorer.tokenizer
    lengths = [len(x) for x in tok(zero.template_.spans(X)[0], add_special_tokens=False)["input_ids"]]
    first, first_spans = zero.template_.spans(X[:1])
    head = first[0][: span_lists(first_spans)[0][0][0]]  # the template's words before the (first) text field
    n_head = len(tok(head, add_special_tokens=False)["input_ids"]) if head else 0
    text_lengths = [n - n_head for n in lengths]  # the template's words before the text are cached too
    base_flops = flops(scorer.model, n_head, text_lengths, len(X))

    times: dict[str, list[float]] = {"zero": []} | {f"few{k}": [] for k in fews}
    scores: dict[int, np.ndarray] = {}
    for _ in range(args.rounds):
        t = time.perf_counter()
        zero.label_scores(X)
        times["zero"].append((time.perf_counter() - t) / len(X))
        for k, clf in fews.items():
            t = time.perf_counter()
            clf.label_scores(X)
            times[f"few{k}"].append((time.perf_counter() - t) / len(X))
    t_zero = float(np.median(times["zero"]))

    print(f"SST-2: {len(X)} texts, ~{np.mean(lengths):.0f} prompt tokens each; {args.rounds} interleaved rounds\n")
    print("| prompt | prefix tokens | ms per text | x zero-shot | FLOP model x zero-shot | measured / model |")
    print("|---|---:|---:|---:|---:|---:|")
    print(f"| zero-shot | {n_head} | {1000 * t_zero:.1f} | 1.00 | 1.00 | 1.00 |")
    uncached = []
    for k, clf in fews.items():
        prefix = clf.template_.prefix(clf.demos_)
        n_prefix = len(tok(prefix + head, add_special_tokens=False)["input_ids"])
        predicted = flops(scorer.model, n_prefix, text_lengths, len(X)) / base_flops
        t = float(np.median(times[f"few{k}"]))
        print(
            f"| {len(clf.demos_)} shared demonstrations, prefix cache (verbalize) | {n_prefix} | {1000 * t:.1f} | "
            f"{t / t_zero:.2f} | {predicted:.2f} | {t / t_zero / predicted:.2f} |"
        )
        m = min(args.uncached_n, len(X))
        if m:
            prompts = [prefix + p for p in clf.template_.spans(X[:m])[0]]
            start = time.perf_counter()
            # No prefix argument and no spans: the scorer cannot know where a text starts, so it shares
            # nothing beyond the tokenizer's leading special tokens; batches are formed as usual.
            inline = clf.scorer_.score_words(prompts, clf.label_tokens_)
            t_inline = (time.perf_counter() - start) / m
            lengths_inline = [len(x) for x in tok(prompts, add_special_tokens=False)["input_ids"]]
            pred_inline = flops(scorer.model, 0, lengths_inline, m) / base_flops
            cached = clf.scorer_.score_words(clf.template_.spans(X[:m])[0], clf.label_tokens_, None, prefix)
            scores[k] = np.abs(cached - inline).max()
            uncached.append(
                f"| {len(clf.demos_)} demonstrations inside every prompt, no cache (first {m}) | 0 | "
                f"{1000 * t_inline:.1f} | {t_inline / t_zero:.2f} | {pred_inline:.2f} | "
                f"{t_inline / t_zero / pred_inline:.2f} |"
            )
    print("\n".join(uncached))
    if scores:
        print("\nmax |cached - no cache| word log-prob: " + ", ".join(f"{k} demos {v:.1e}" for k, v in scores.items()))


if __name__ == "__main__":
    main()
