"""kNN prompting (Xu et al. 2023) on k examples per class, beside few-shot, the probe and fine-tuning.

    python eval/knn.py --data ../shared/data --datasets sst2 agnews trec --k 16 64 --seeds 0 1 2 \
        --limit 200 --out results/knn.jsonl --compare results/finetune.jsonl
    python eval/knn.py --table results/knn.jsonl results/finetune.jsonl     # the table only

The protocol of ``eval/finetune.py``: for each (dataset, k, seed) the same k training examples per
class (``finetune.sample``, drawn with the seed from the train pool) become the anchors of
``KNNPrompting(template=<shipped template>, k=--knn)``; accuracy on the first --limit test rows.
Without demonstrations the test texts' distributions do not depend on the anchors, so they are
computed once per dataset. One JSON row per (dataset, k, seed); ``--compare`` adds the rows of
``eval/finetune.py`` (fewshot, probe, finetune, tfidf) to the table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from data import DATASETS, data_dir, load, template_path
from finetune import accuracy_grid, sample

from verbalize import KNNPrompting, load_template
from verbalize.knn import kl_divergence, vote
from verbalize.metrics import evaluate

ORDER = ("knn", "finetune", "fewshot", "probe", "tfidf")


def run(args: argparse.Namespace) -> None:
    root = data_dir(args.data)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as f:
        for ds in args.datasets:
            test, pool = load(ds, "test", root, args.limit), load(ds, "train", root)
            tpl = template_path(ds)
            classes = list(load_template(tpl).labels)
            test_logp = None
            for seed in args.seeds:
                for k in args.k:
                    idx = sample(pool[1], classes, k, seed)
                    t0 = time.perf_counter()
                    clf = KNNPrompting(
                        template=tpl,
                        model=args.model,
                        k=args.knn,
                        demos_per_class=args.demos_per_class,
                        random_state=seed,
                    ).fit([pool[0][i] for i in idx], [pool[1][i] for i in idx])
                    if test_logp is None or args.demos_per_class:
                        test_logp = clf.transform(test[0])
                    shares, pred = vote(
                        kl_divergence(clf.anchors_, test_logp), clf.anchor_labels_, args.knn, len(classes)
                    )
                    proba = np.eye(len(classes))[pred] * 0.5 + shares * 0.5  # argmax = the tie-broken vote
                    r = evaluate(proba, test[1], classes)
                    row = {
                        "dataset": ds,
                        "k": k,
                        "seed": seed,
                        "n_test": len(test[0]),
                        "method": "knn",
                        "knn": args.knn,
                        "demos_per_class": args.demos_per_class,
                        "accuracy": r["accuracy"],
                        "macro_f1": r["macro_f1"],
                        "seconds": round(time.perf_counter() - t0, 1),
                    }
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    print(f"{ds} k={k} seed={seed}: knn {r['accuracy']:.3f} ({row['seconds']} s)", flush=True)


def table(paths: list[str]) -> str:
    rows = [
        json.loads(line) for p in paths for line in Path(p).read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    lines = accuracy_grid(rows, ORDER)
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data folder (or $VERBALIZE_DATA)")
    ap.add_argument("--datasets", nargs="+", default=sorted(DATASETS), choices=sorted(DATASETS))
    ap.add_argument("--k", nargs="+", type=int, default=[16, 64], help="labeled examples (anchors) per class")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--limit", type=int, default=200, help="first N test rows (the files are shuffled)")
    ap.add_argument("--knn", type=int, default=3, help="neighbours that vote")
    ap.add_argument("--demos-per-class", type=int, default=0, help="demonstrations in every prompt")
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="results/knn.jsonl")
    ap.add_argument("--compare", nargs="*", default=[], help="JSONL rows of eval/finetune.py to show beside")
    ap.add_argument("--table", nargs="+", default=None, help="print the table of these JSONL files and exit")
    args = ap.parse_args()
    if args.table:
        print(table(args.table))
        return
    run(args)
    print(table([args.out, *[p for p in args.compare if Path(p).is_file()]]))


if __name__ == "__main__":
    main()
