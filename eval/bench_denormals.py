"""Do scoring paths meet denormal floats? Each path timed with flush-to-zero off and on, and compared bit for bit.

    python eval/bench_denormals.py --data ../shared/data

Issue 24 reported a bare forward of a 19-token prompt without BOS at 1.9 s in float32 and 0.42 s with
``torch.set_flush_denormal(True)``. Denormals cost time only where an operation meets them, and flushing them
changes results only there, so each path runs on one thread (timed by its CPU time: other processes on a shared
CPU do not count) with flushing off and on, three interleaved rounds (best), and its results are compared bit
for bit: equal results and equal times mean the path meets none. Paths: the bare forward of a prompt without
BOS (the embedded model's tokenizer adds none), zero-shot texts, demonstrations (a long cached prefix),
multi-token label words (the continuation pass), and a fine-tuning step (forward, backward, AdamW), whose
gradients and optimizer states are also counted for denormals.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from data import data_dir, load

from verbalize import Scorer, Verbalizer
from verbalize.engine.machine import describe_cpu

TINY = torch.finfo(torch.float32).tiny


def denormals(tensors: list[torch.Tensor]) -> int:
    return sum(int(((t != 0) & (t.abs() < TINY)).sum()) for t in tensors if t.is_floating_point())


def fine_tuning_step(scorer: Scorer, texts: list[str]):
    model = copy.deepcopy(scorer.model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    rows = [scorer.tokenizer(t)["input_ids"][:24] for t in texts[:4]]
    batch = torch.tensor([r + [0] * (24 - len(r)) for r in rows])  # (4, 24)

    def step() -> np.ndarray:
        opt.zero_grad()
        model(batch).logits[:, -1].log_softmax(-1)[:, 100].sum().backward()
        opt.step()
        state = [t for p in model.parameters() for t in opt.state[p].values() if isinstance(t, torch.Tensor)]
        return np.array([denormals([p.grad for p in model.parameters() if p.grad is not None] + state)])

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data folder (or $VERBALIZE_DATA)")
    ap.add_argument("--n", type=int, default=16, help="SST-2 texts per path")
    args = ap.parse_args()
    torch.set_num_threads(1)
    texts, _ = load("sst2", "test", data_dir(args.data), args.n)
    train, labels = load("sst2", "train", data_dir(args.data), 32)
    scorer = Scorer.from_pretrained(None, "cpu", "float32")
    zero = Verbalizer(template="sst2", model=scorer)
    demos = Verbalizer(template="sst2", model=scorer, demos_per_class=2, random_state=0).fit(train, labels)
    words = {"positive": ["wonderfully positive"], "negative": ["dreadfully negative"]}
    multi = Verbalizer(template="Review: {text}\nSentiment:", labels=words, model=scorer)
    ids = torch.tensor([scorer.tokenizer(zero.template_.render(texts[0]))["input_ids"]])  # (1, L), no BOS

    def bare() -> np.ndarray:
        with torch.inference_mode():
            return scorer.model(ids).logits[0, -1].numpy()

    paths = {
        f"bare forward, {ids.shape[1]} tokens, no BOS": bare,
        "zero-shot texts": lambda: zero.label_scores(texts),
        "demonstrations (cached prefix)": lambda: demos.label_scores(texts),
        "multi-token label words": lambda: multi.label_scores(texts),
        "fine-tuning step (AdamW)": fine_tuning_step(scorer, train),
    }
    print(f"CPU: {describe_cpu()}; torch {torch.__version__}, 1 thread, CPU time, best of 3 interleaved rounds\n")
    print("| path | CPU s, flush off | CPU s, flush on | results bit-equal | denormals counted |")
    print("|---|---:|---:|---|---:|")
    for name, fn in paths.items():
        fn()  # warm-up
        seconds: dict[bool, list[float]] = {False: [], True: []}
        outs = {}
        try:
            for _ in range(3):
                for flush in (False, True):
                    torch.set_flush_denormal(flush)
                    t = time.thread_time()
                    outs[flush] = fn()
                    seconds[flush].append(time.thread_time() - t)
        finally:
            torch.set_flush_denormal(False)
        step = name.startswith("fine")
        same = "n/a (weights move)" if step else str(np.array_equal(outs[False], outs[True]))
        count = str(int(outs[False][0])) if step else ""
        print(f"| {name} | {min(seconds[False]):.3f} | {min(seconds[True]):.3f} | {same} | {count} |")


if __name__ == "__main__":
    main()
