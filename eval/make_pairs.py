"""Build a small sentence-pair JSONL from SST-2 (no pair data ships in the data folder).

    python eval/make_pairs.py --data ../shared/data --n 200 --out results/sst2_pairs.jsonl

Each row pairs two SST-2 test sentences: {"review1": ..., "review2": ..., "label": "same" | "different"},
balanced, seeded. For ``templates/same_sentiment.toml`` (two fields) and ``verbalize eval`` over two columns.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from data import data_dir, load


def pairs(texts: list[str], labels: list[str], n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a = rng.randrange(len(texts))
        want_same = i % 2 == 0
        while True:
            b = rng.randrange(len(texts))
            if b != a and (labels[a] == labels[b]) == want_same:
                break
        rows.append({"review1": texts[a], "review2": texts[b], "label": "same" if want_same else "different"})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    texts, labels = load("sst2", "test", data_dir(args.data))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = pairs(texts, labels, args.n, args.seed)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} pairs written to {args.out}")


if __name__ == "__main__":
    main()
