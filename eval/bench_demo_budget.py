"""Cost of shared demonstrations beyond the context window (issue 20, item 4): building the prompts.

    python eval/bench_demo_budget.py --data ../shared/data                 # 128, 512, 1024 demonstrations
    python eval/bench_demo_budget.py --data ../shared/data --predict 8     # also predict_proba on 8 texts

Every text keeps the most demonstrations (the first k) that fit beside it in the window; before,
the whole prefix was re-tokenized once per dropped demonstration (quadratic: 1,024 demonstrations
took minutes per call). Rows: demonstrations, seconds to build the prompts of the test texts,
tokenizer calls, distinct prefixes (texts keeping the same k share one), the fewest and most kept.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from data import data_dir, load, template_path

from verbalize import Verbalizer, load_template
from verbalize.engine.model_files import load_tokenizer
from verbalize.prompting.prompts import PromptBuilder


class Counting:
    """A tokenizer that counts its calls."""

    def __init__(self, tokenizer: Any):
        self.tokenizer, self.calls = tokenizer, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.tokenizer(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data")
    parser.add_argument("--n-demos", type=int, nargs="+", default=[128, 512, 1024])
    parser.add_argument("--texts", type=int, default=256, help="test texts whose prompts are built")
    parser.add_argument("--context", type=int, default=2048, help="the context window (tokens)")
    parser.add_argument("--predict", type=int, default=0, help="also time predict_proba on this many texts")
    args = parser.parse_args()
    logging.getLogger("verbalize").setLevel(logging.ERROR)  # the drop warnings are the point here
    root = data_dir(args.data)
    train, labels = load("sst2", "train", root, max(args.n_demos))
    test, _ = load("sst2", "test", root, args.texts)
    template = load_template(template_path("sst2"))
    tokenizer = load_tokenizer(None)
    print(
        f"{'demos':>6} {'build s':>8} {'tok calls':>9} {'prefixes':>8} {'kept':>9}"
        + ("  predict s" * bool(args.predict))
    )
    for n in args.n_demos:
        demos = list(zip(train[:n], labels[:n], strict=True))
        tok = Counting(tokenizer)
        start = time.perf_counter()
        built = PromptBuilder(template, demos, (), 0, tok, args.context, 0).build(test)
        seconds = time.perf_counter() - start
        kept = [p.count("\nSentiment: ") for p, _ in built.groups()]
        row = f"{n:>6} {seconds:>8.3f} {tok.calls:>9} {len(built.groups()):>8} {min(kept):>4}-{max(kept):<4}"
        if args.predict:
            clf = Verbalizer(template=template_path("sst2"), n_demos=n, max_length=args.context, random_state=0)
            clf.fit(train[:n], labels[:n])
            start = time.perf_counter()
            clf.predict_proba(test[: args.predict])
            row += f"  {time.perf_counter() - start:>9.2f}"
        print(row)


if __name__ == "__main__":
    main()
