"""Cost of few-shot prompts: zero-shot vs 8 shared demonstrations with and without the prefix cache.

    python eval/bench_fewshot.py --data ../shared/data

All rows score the same SST-2 test texts with the shipped template in one run. "cached" is what
Verbalizer does: the shared prefix (demonstrations) runs once and its key/value cache is reused by
every batch. "not cached" puts the same demonstrations inside every prompt (what a prompt that much
longer costs without the cache); it runs on the first --uncached-n texts only, as it is slow.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from data import data_dir, load, template_path

from verbalize import Verbalizer


def timed(fn, n: int, repeats: int) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, (time.perf_counter() - t) / n)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data folder (or $VERBALIZE_DATA)")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--n-demos", type=int, default=8)
    ap.add_argument("--uncached-n", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()

    root = data_dir(args.data)
    X, _ = load("sst2", "test", root, args.n)
    X_tr, y_tr = load("sst2", "train", root)
    tpl = template_path("sst2")
    zero = Verbalizer(template=tpl, model=args.model).fit()
    few = Verbalizer(template=tpl, model=args.model, n_demos=args.n_demos, random_state=0).fit(X_tr, y_tr)
    zero.decision_function(X[:32])  # warm-up

    prefix = few.template_.prefix(few.demos_)
    tok = few.scorer_.tokenizer
    n_prefix, n_prompt = len(tok(prefix)["input_ids"]), np.mean([len(x) for x in tok(X)["input_ids"]])
    t_zero, _ = timed(lambda: zero.decision_function(X), len(X), args.repeats)
    t_few, s_few = timed(lambda: few.decision_function(X), len(X), args.repeats)

    k = min(args.uncached_n, len(X))
    prompts, spans = few.template_.spans(X[:k])
    inline = [prefix + p for p in prompts]
    spans = [(a + len(prefix), b + len(prefix)) for a, b in spans]
    scorer, tokens = few.scorer_, few.label_tokens_
    t_inline, w_inline = timed(lambda: scorer.score_words(inline, tokens, spans), k, 1)
    w_cached = scorer.score_words(prompts, tokens, [(a - len(prefix), b - len(prefix)) for a, b in spans], prefix)

    print(f"SST-2: {len(X)} texts, ~{n_prompt:.0f} tokens each; {len(few.demos_)} demonstrations = {n_prefix} tokens\n")
    print("| prompt | ms per text | x zero-shot |")
    print("|---|---:|---:|")
    for name, t in (
        ("zero-shot", t_zero),
        (f"{len(few.demos_)} shared demonstrations, prefix cache (verbalize)", t_few),
        (f"{len(few.demos_)} demonstrations inside every prompt, no cache (first {k})", t_inline),
    ):
        print(f"| {name} | {1000 * t:.1f} | {t / t_zero:.2f} |")
    print(f"\nmax |cached - uncached| word log-prob: {np.abs(w_cached - w_inline).max():.2e}")


if __name__ == "__main__":
    main()
