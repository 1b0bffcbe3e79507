"""Peak memory of scoring many multi-token label words (issue 11: 200 labels of two tokens each).

    python eval/bench_memory.py --data ../shared/data                 # 8, 64 and 256 SST-2 texts
    python eval/bench_memory.py --data ../shared/data --texts 256 --max-tokens 1024 4096

Each row runs in a fresh process (so that peak RSS is that run's own): the embedded model, default
settings (Verbalizer with batch_size 64 and the scorer's 1024-token budget unless --max-tokens says
otherwise), a template whose 200 labels each have one word of exactly two tokens (drawn from the
SST-2 vocabulary), ``predict_proba`` on the first N test texts. Peak RSS includes the model (~0.6 GB).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from collections import Counter

from data import data_dir, load


def two_token_words(tokenizer: object, texts: list[str], n: int) -> list[str]:
    """``n`` words of the texts whose " word" is exactly two tokens, most frequent first."""
    counts = Counter(w.lower() for t in texts for w in re.findall(r"[A-Za-z]{4,}", t))
    out, seen = [], set()
    for word, _ in counts.most_common():
        ids = tuple(tokenizer(" " + word, add_special_tokens=False)["input_ids"])  # type: ignore[operator]
        if len(ids) == 2 and ids not in seen:
            out.append(word)
            seen.add(ids)
            if len(out) == n:
                return out
    raise SystemExit(f"only {len(out)} two-token words found in the data")


def child(args: argparse.Namespace) -> None:
    import torch

    from verbalize import Scorer, Template, Verbalizer

    torch.set_num_threads(args.threads)  # on a busy shared CPU, 2 threads made the many small passes ~10x slower

    texts, _ = load("sst2", "test", data_dir(args.data), args.n)
    pool, _ = load("sst2", "train", data_dir(args.data), 5000)
    scorer = Scorer.from_pretrained(None)
    words = two_token_words(scorer.tokenizer, pool, args.labels)
    template = Template(prompt="Review: {text}\nTopic:", labels={f"label{i}": [w] for i, w in enumerate(words)})
    clf = Verbalizer(template=template)
    if args.max_tokens:
        clf.set_params(model=Scorer(scorer.model, scorer.tokenizer, max_tokens=args.max_tokens))
    t = time.perf_counter()
    proba = clf.predict_proba(texts)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(json.dumps({"n": len(texts), "labels": proba.shape[1], "seconds": seconds, "peak_gib": peak}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data folder (or $VERBALIZE_DATA)")
    ap.add_argument("--texts", type=int, nargs="+", default=[8, 64, 256])
    ap.add_argument("--labels", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, nargs="+", default=[0], help="0: the scorer's default budget")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (memory does not depend on it)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        args.n, args.max_tokens = args.child, args.max_tokens[0]
        child(args)
        return
    print("| texts | labels (2 tokens each) | max_tokens | seconds | peak RSS (GiB) |\n|---:|---:|---:|---:|---:|")
    for budget in args.max_tokens:
        for n in args.texts:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                str(n),
                "--labels",
                str(args.labels),
                "--max-tokens",
                str(budget),
            ]
            if args.data:
                cmd += ["--data", args.data]
            row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            shown = budget or "default (1024)"
            print(
                f"| {row['n']} | {row['labels']} | {shown} | {row['seconds']:.1f} | {row['peak_gib']:.2f} |", flush=True
            )


if __name__ == "__main__":
    main()
