"""Zero/few-shot grid: dataset x template x calibration x demonstrations per class x seed -> JSONL rows.

    python eval/run.py --data ../shared/data --datasets sst2 agnews trec --k 0 1 4 8 --seeds 0 1 2 3 4 \
        --limit 500 --out results/grid.jsonl
    python eval/report.py results/grid.jsonl --plots results/plots

For each (dataset, k, seed) the test texts are scored once; every calibration method is then
applied to those same raw scores (calibrators work on arrays), fitted on what each method needs:
content-free inputs ("N/A", "", "[MASK]") and random words of the training pool, both rendered with
the same demonstrations by Verbalizer.fit itself; the unlabeled test batch (batch); and --n-temp
labeled training examples per class that are not among the demonstrations (temperature).
Baselines in the same file: the majority class of the training pool, and TF-IDF + logistic
regression trained on the same k examples per class.
Zero-shot rows do not depend on the seed and are computed once, then written for every seed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from data import DATASETS, data_dir, load, template_path
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from verbalize import Verbalizer, get_calibrator, load_template
from verbalize.calibration.calibrators import log_softmax
from verbalize.metrics import evaluate

METHODS = ("none", "contextual", "domain", "batch", "temperature")


def held_out(y: list[str], classes: list[str], per_class: int, exclude: set[int], seed: int) -> list[int]:
    rng = np.random.default_rng(10_000 + seed)
    out: list[int] = []
    for c in classes:
        pool = [i for i, v in enumerate(y) if v == c and i not in exclude]
        out += [int(i) for i in rng.choice(pool, size=min(per_class, len(pool)), replace=False)]
    return out


def run_one(clf: Verbalizer, test: tuple, train: tuple, k: int, seed: int, n_temp: int) -> list[dict]:
    """All calibration methods for one (k, seed): one scoring pass of the test set plus small extras."""
    (X, y), (X_tr, y_tr) = test, train
    classes = list(load_template(clf.template).labels)
    # domain: random words of the training pool (in-domain, unlabeled); contextual: "N/A", "", "[MASK]"
    t0 = time.perf_counter()
    fitted = {}
    for method in ("contextual", "domain"):  # the library's own fitting, with the same demonstrations
        clf.set_params(calibration=method).fit(X_tr, y_tr)
        fitted[method] = clf.calibrator_
    clf.set_params(calibration=None).fit(X_tr, y_tr)
    raw = clf.label_scores(X)
    seconds = time.perf_counter() - t0
    fitted["batch"] = get_calibrator("batch").fit(raw)  # the unlabeled test batch itself
    demo_idx = {X_tr.index(t) for t, _ in clf.demos_}
    temp_idx = held_out(y_tr, classes, n_temp, demo_idx, seed)
    temp_y = np.array([classes.index(y_tr[i]) for i in temp_idx])
    temp_scores = clf.label_scores([X_tr[i] for i in temp_idx])
    fitted["temperature"] = get_calibrator("temperature").fit(temp_scores, temp_y)
    rows = []
    for method in METHODS:
        logp = log_softmax(raw) if method == "none" else fitted[method].transform(raw)
        rows.append({"method": "verbalize", "calibration": method, **evaluate(np.exp(logp), y, classes)})
    return [r | {"k": k, "seed": seed, "seconds": round(seconds, 2), "labels": classes} for r in rows]


def baselines(test: tuple, train: tuple, classes: list[str], k: int, seed: int, demos: list) -> list[dict]:
    (X, y), (_, y_tr) = test, train
    majority = max(classes, key=y_tr.count)
    proba = np.tile(np.eye(len(classes))[classes.index(majority)], (len(X), 1))
    rows = [{"method": "majority", "calibration": "-", **evaluate(proba, y, classes)}]
    if k:
        texts, labels = zip(*demos, strict=True)
        vec = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2)).fit(texts)
        lr = LogisticRegression(max_iter=1000, C=10.0).fit(vec.transform(texts), labels)
        p = np.zeros((len(X), len(classes)))
        p[:, [classes.index(c) for c in lr.classes_]] = lr.predict_proba(vec.transform(X))
        rows.append({"method": "tfidf_lr", "calibration": "-", **evaluate(p, y, classes)})
    return [r | {"k": k, "seed": seed, "labels": classes} for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data folder (or $VERBALIZE_DATA)")
    ap.add_argument("--datasets", nargs="+", default=sorted(DATASETS), choices=sorted(DATASETS))
    ap.add_argument("--k", nargs="+", type=int, default=[0, 1, 4, 8], help="demonstrations per class")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    ap.add_argument("--limit", type=int, default=None, help="first N test rows (the files are shuffled)")
    ap.add_argument("--n-temp", type=int, default=8, help="labeled examples per class for temperature")
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="results/grid.jsonl")
    args = ap.parse_args()

    root = data_dir(args.data)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as f:
        for ds in args.datasets:
            test, train = load(ds, "test", root, args.limit), load(ds, "train", root)
            tpl = template_path(ds)
            classes = list(load_template(tpl).labels)
            zero_rows: list[dict] | None = None
            for k in args.k:
                for seed in args.seeds:
                    clf = Verbalizer(template=tpl, model=args.model, n_demos=k * len(classes), random_state=seed)
                    if k == 0 and zero_rows is not None:
                        rows = [r | {"seed": seed} for r in zero_rows]
                    else:
                        rows = run_one(clf, test, train, k, seed, args.n_temp)
                        zero_rows = rows if k == 0 else zero_rows
                    rows += baselines(test, train, classes, k, seed, clf.demos_ if k else [])
                    for r in rows:
                        f.write(
                            json.dumps({"dataset": ds, "template": Path(tpl).name, "n_test": len(test[0]), **r}) + "\n"
                        )
                    f.flush()
                    best = max((r for r in rows if r["method"] == "verbalize"), key=lambda r: r["accuracy"])
                    print(
                        f"{ds} k={k} seed={seed}: raw acc {rows[0]['accuracy']:.3f}, best {best['calibration']} "
                        f"{best['accuracy']:.3f} ({rows[0].get('seconds', 0)} s)",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
