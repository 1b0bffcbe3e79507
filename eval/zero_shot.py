"""Zero-shot accuracy of a shipped template on a test set, with the template's label words and with
the label names alone as words (what the chosen words add).

    python eval/zero_shot.py --data ../shared/data --dataset sst2
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from data import DATASETS, data_dir, load, template_path
from sklearn.metrics import accuracy_score, f1_score

from verbalize import Verbalizer, load_template


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data folder (or $VERBALIZE_DATA)")
    ap.add_argument("--dataset", default="sst2", choices=sorted(DATASETS))
    ap.add_argument("--model", default=None)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--calibration", nargs="*", default=[None], help="e.g. none contextual")
    args = ap.parse_args()

    texts, y = load(args.dataset, "test", data_dir(args.data), args.limit)
    template = load_template(template_path(args.dataset))
    names_only = {label: [label] for label in template.labels}
    print(f"{args.dataset}: {len(texts)} test texts; template {template.source}\n")
    print("| label words | calibration | accuracy | macro-F1 | texts/s |")
    print("|---|---|---:|---:|---:|")
    for words_name, labels in (("template words", None), ("label names only", names_only)):
        for cal in args.calibration:
            cal = None if cal in (None, "none") else cal
            clf = Verbalizer(template=template, labels=labels, model=args.model, calibration=cal)
            start = time.perf_counter()
            pred = clf.predict(texts)
            speed = len(texts) / (time.perf_counter() - start)
            words = "; ".join(f"{k}: {', '.join(v)}" for k, v in clf.template_.labels.items())
            print(
                f"| {words_name} ({words}) | {cal or 'none'} | {accuracy_score(y, pred):.4f} | "
                f"{f1_score(y, pred, average='macro'):.4f} | {speed:.1f} |"
            )
    print(f"\nmajority class: {max(np.mean(np.array(y) == c) for c in set(y)):.4f}")


if __name__ == "__main__":
    main()
