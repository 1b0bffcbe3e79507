"""Prompt-based fine-tuning against calibrated few-shot, a linear probe and TF-IDF, on k examples per class.

    python eval/finetune.py --data ../shared/data --datasets sst2 agnews trec --k 16 64 --seeds 0 1 2 \
        --limit 300 --out results/finetune.jsonl
    python eval/finetune.py --table results/finetune.jsonl        # the table only

For each (dataset, k, seed) the same k training examples per class (drawn with the seed from the
train pool) feed every method:
- finetune: ``Verbalizer(fine_tuning=FineTuneConfig())``, full fine-tuning with the shipped template,
  20% of the k examples held out for early stopping (defaults of the library, nothing tuned here);
- fewshot: the best of calibrated zero-shot and 4-demonstrations-per-class prompts, over the
  calibrations contextual, domain, batch and temperature, picked by *test* accuracy (an optimistic
  baseline on purpose);
- probe: logistic regression on the last-token hidden state of the template's prompt (``Head()``);
- tfidf: TF-IDF (1-2 grams) + logistic regression.
One JSON row per (method, dataset, k, seed); the table gives mean +- std over seeds and the average
over datasets.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from data import DATASETS, data_dir, load, template_path
from run import baselines, run_one

from verbalize import FineTuneConfig, Head, Verbalizer, load_template
from verbalize.metrics import evaluate

METHODS = ("finetune", "fewshot", "probe", "tfidf")


def sample(y: list[str], classes: list[str], k: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    out: list[int] = []
    for c in classes:
        pool = [i for i, v in enumerate(y) if v == c]
        out += [int(i) for i in rng.choice(pool, size=min(k, len(pool)), replace=False)]
    return [out[i] for i in rng.permutation(len(out))]


def fewshot(tpl: str, test: tuple, train: tuple, classes: list[str], seed: int, model: str | None) -> dict:
    best: dict = {}
    for k_demo in (0, 4):
        clf = Verbalizer(template=tpl, model=model, n_demos=k_demo * len(classes), random_state=seed)
        n_temp = max(1, min(8, len(train[0]) // len(classes) - k_demo))
        for r in run_one(clf, test, train, k_demo, seed, n_temp):
            if r["calibration"] != "none" and r["accuracy"] > best.get("accuracy", -1):
                best = r | {"detail": f"{k_demo} demos/class, {r['calibration']}"}
    return best


def run(args: argparse.Namespace) -> None:
    root = data_dir(args.data)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    config = FineTuneConfig(method=args.method, epochs=args.epochs, progress=args.progress)
    with out.open("a", encoding="utf-8") as f:
        for seed in args.seeds:  # seed-major: an interrupted run still has whole seeds
            for ds, k in [(d, k) for d in args.datasets for k in args.k]:
                test, pool = load(ds, "test", root, args.limit), load(ds, "train", root)
                tpl = template_path(ds)
                classes = list(load_template(tpl).labels)
                idx = sample(pool[1], classes, k, seed)
                train = ([pool[0][i] for i in idx], [pool[1][i] for i in idx])
                rows = []
                methods = args.methods
                if "finetune" in methods:
                    t0 = time.perf_counter()
                    clf = Verbalizer(template=tpl, model=args.model, fine_tuning=config, random_state=seed)
                    clf.fit(*train)
                    fit_s = time.perf_counter() - t0
                    r = evaluate(clf.predict_proba(test[0]), test[1], classes)
                    hist = clf.training_
                    rows.append(
                        {"method": "finetune", **r, "fit_seconds": round(fit_s, 1), "best_epoch": hist.best_epoch}
                    )
                    del clf
                if "probe" in methods:
                    clf = Verbalizer(template=tpl, model=args.model, heads=Head(), random_state=seed).fit(*train)
                    rows.append({"method": "probe", **evaluate(clf.predict_proba(test[0]), test[1], classes)})
                if "fewshot" in methods:
                    best = fewshot(tpl, test, train, classes, seed, args.model)
                    best = {a: b for a, b in best.items() if a not in ("method", "k", "seed", "seconds")}
                    rows.append({"method": "fewshot", **best})
                if "tfidf" in methods:
                    demos = list(zip(*train, strict=True))
                    rows += [r for r in baselines(test, train, classes, k, seed, demos) if r["method"] == "tfidf_lr"]
                    rows[-1]["method"] = "tfidf"
                for r in rows:
                    keep = {a: b for a, b in r.items() if a not in ("confusion", "reliability", "labels")}
                    row = {"dataset": ds, "k": k, "seed": seed, "n_test": len(test[0])} | keep
                    f.write(json.dumps(row) + "\n")
                f.flush()
                print(
                    f"{ds} k={k} seed={seed}: "
                    + ", ".join(f"{r['method']} {r['accuracy']:.3f}" for r in rows)
                    + (f" (fine-tuning {rows[0]['fit_seconds']} s)" if "fit_seconds" in rows[0] else ""),
                    flush=True,
                )


def accuracy_grid(rows: list[dict], methods: tuple[str, ...]) -> list[str]:
    """Markdown lines: mean ± std accuracy per (method, k/class) row and dataset column, with the average."""
    acc: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        acc[(r["method"], r["dataset"], r["k"])].append(r["accuracy"])
    datasets = [d for d in DATASETS if any(key[1] == d for key in acc)]
    ks = sorted({key[2] for key in acc})
    present = [m for m in methods if any(key[0] == m for key in acc)]
    lines = ["| method | k/class | " + " | ".join(datasets) + " | average |", "|---" * (len(datasets) + 3) + "|"]
    for k in ks:
        for m in present:
            cells, means = [], []
            for d in datasets:
                v = acc.get((m, d, k), [])
                cells.append(f"{np.mean(v):.3f} ± {np.std(v):.3f} (n={len(v)})" if v else "-")
                if v:
                    means.append(np.mean(v))
            avg = f"{np.mean(means):.3f}" if len(means) == len(datasets) else "-"
            lines.append(f"| {m} | {k} | " + " | ".join(cells) + f" | {avg} |")
    return lines


def table(path: str) -> str:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    secs: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        if "fit_seconds" in r:
            secs[(r["dataset"], r["k"])].append(r["fit_seconds"])
    lines = accuracy_grid(rows, METHODS)
    if secs:
        lines += ["", "| fine-tuning time (s) | " + " | ".join(f"{d} k={k}" for d, k in secs) + " |"]
        lines += [
            "|---" * (len(secs) + 1) + "|",
            "| mean | " + " | ".join(f"{np.mean(v):.0f}" for v in secs.values()) + " |",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data folder (or $VERBALIZE_DATA)")
    ap.add_argument("--datasets", nargs="+", default=sorted(DATASETS), choices=sorted(DATASETS))
    ap.add_argument("--k", nargs="+", type=int, default=[16, 64], help="training examples per class")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--limit", type=int, default=None, help="first N test rows (the files are shuffled)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--method", default="full", choices=["full", "lora"], help="fine-tuning method")
    ap.add_argument("--epochs", type=int, default=FineTuneConfig.epochs)
    ap.add_argument("--model", default=None)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--out", default="results/finetune.jsonl")
    ap.add_argument("--table", default=None, help="print the table of this JSONL file and exit")
    args = ap.parse_args()
    if args.table:
        print(table(args.table))
        return
    run(args)
    print(table(args.out))


if __name__ == "__main__":
    main()
