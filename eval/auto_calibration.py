"""Bar 2: calibration="auto" against raw and against the best single method, with 4 labeled examples per class.

    python eval/auto_calibration.py --data ../shared/data --seeds 0 1 2 3 4 --limit 300 \
        --out results/auto_calibration.jsonl

For each dataset (SST-2, AG News, TREC), seed and setting (zero-shot; demonstrations, ``--demos-per-class``
of each label drawn from the labeled examples), ``--per-class`` labeled examples per class are drawn
from the training pool with that seed and given to ``fit``. The first ``--limit`` test rows are scored
once per (dataset, seed, setting) (zero-shot: once per dataset) and every method is applied to those same
raw scores, each calibrator fitted by the library's own policy (``fit_calibrator``) on the labeled
examples' texts with the same demonstrations. ``auto`` is the classifier's own choice from
cross-validation on the labeled examples only. The table: mean test accuracy over seeds per method,
auto's gap to raw and to the best single method (chosen by mean test accuracy, an oracle), and what
auto chose. One JSON row per (dataset, setting, seed) goes to ``--out``, with auto's held-out CV
log-probabilities per method, so that ``--retable FILE`` re-tables it under the current selection rule
(``--default`` to try another default) without the model.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from data import data_dir, load, template_path

from verbalize import Verbalizer
from verbalize.calibration.auto import DEFAULT, AutoCalibrator, select
from verbalize.calibration.calibrators import calibrate, fit_calibrator, get_calibrator, log_softmax

METHODS = ("none", "contextual", "domain", "batch", "temperature")


def labeled_sample(y: list[str], per_class: int, seed: int) -> list[int]:
    """``per_class`` row indices of each label, seeded."""
    rng = np.random.default_rng(seed)
    y_arr = np.asarray(y)
    rows = [rng.choice(np.flatnonzero(y_arr == c), size=per_class, replace=False) for c in sorted(set(y))]
    return [int(i) for i in rng.permutation(np.concatenate(rows))]


def method_accuracies(clf: Verbalizer, raw: np.ndarray, test: tuple, train: tuple, seed: int) -> dict[str, float]:
    """Test accuracy of every single method and of auto, all on the same raw test scores."""
    labels = list(clf.labels_)
    y_test = np.array([labels.index(v) for v in test[1]])
    y_train = np.array([labels.index(v) for v in train[1]])
    acc = {}
    for name in METHODS:
        if name == "none":
            out = log_softmax(raw)
        else:
            cal = get_calibrator(name)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit_calibrator(cal, clf._raw_scores, list(train[0]), y_train, seed)
                out = calibrate(cal, raw, list(test[0]), clf._raw_scores, seed)
        acc[name] = float((out.argmax(axis=1) == y_test).mean())
    auto = calibrate(clf.calibrator_, raw, list(test[0]), clf._raw_scores, seed)
    acc["auto"] = float((auto.argmax(axis=1) == y_test).mean())
    return acc


def run(args: argparse.Namespace, sink: Any = None) -> list[dict]:
    root, rows = data_dir(args.data), []
    for dataset in args.datasets:
        test = load(dataset, "test", root, args.limit)
        pool = load(dataset, "train", root)
        zero_raw = None
        for setting in ("zero-shot", "demos"):
            for seed in args.seeds:
                t0 = time.perf_counter()
                idx = labeled_sample(pool[1], args.per_class, seed)
                train = ([pool[0][i] for i in idx], [pool[1][i] for i in idx])
                dpc = args.demos_per_class if setting == "demos" else None
                clf = Verbalizer(
                    template=template_path(dataset),
                    model=args.model,
                    calibration="auto",
                    demos_per_class=dpc,
                    random_state=seed,
                    batch_size=args.batch_size,
                )
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    clf.fit(*train)
                    raw = zero_raw if (setting == "zero-shot" and zero_raw is not None) else clf.label_scores(test[0])
                if setting == "zero-shot":
                    zero_raw = raw
                acc = method_accuracies(clf, raw, test, train, seed)
                labels = list(clf.labels_)
                assert isinstance(clf.calibrator_, AutoCalibrator)
                row = {
                    "dataset": dataset,
                    "setting": setting,
                    "seed": seed,
                    "n_test": len(test[0]),
                    "per_class": args.per_class,
                    "accuracy": acc,
                    "chosen": clf.calibration_report_["chosen"],
                    "cv": clf.calibration_report_.get("scores"),
                    "cv_y": [labels.index(v) for v in train[1]],
                    "cv_log_proba": {str(k): v.round(4).tolist() for k, v in clf.calibrator_.cv_log_proba_.items()},
                    "seconds": round(time.perf_counter() - t0, 1),
                }
                print(
                    json.dumps({k: row[k] for k in ("dataset", "setting", "seed", "chosen", "accuracy", "seconds")}),
                    flush=True,
                )
                rows.append(row)
                if sink is not None:
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: mean accuracy per method, auto - raw, auto - best single method, auto's choices."""
    head = "| dataset | setting | " + " | ".join(METHODS) + " | auto | auto-raw | auto-best | chosen |"
    lines = [head, "|" + "---|" * (len(METHODS) + 7)]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["setting"]), []).append(r)
    gaps_raw, gaps_best = [], []
    for (dataset, setting), rs in groups.items():
        mean = {m: 100 * float(np.mean([r["accuracy"][m] for r in rs])) for m in (*METHODS, "auto")}
        best = max(mean[m] for m in METHODS)
        gaps_raw.append(mean["auto"] - mean["none"])
        gaps_best.append(mean["auto"] - best)
        chosen = Counter(str(r["chosen"]) for r in rs)
        cells = " | ".join(f"{mean[m]:.1f}" for m in METHODS)
        lines.append(
            f"| {dataset} | {setting} | {cells} | {mean['auto']:.1f} | {gaps_raw[-1]:+.1f} | {gaps_best[-1]:+.1f} | "
            + ", ".join(f"{k}×{v}" for k, v in chosen.most_common())
            + " |"
        )
    n_seeds = len({r["seed"] for r in rows})
    lines.append(
        f"\nmeans over {n_seeds} seeds; worst auto-raw {min(gaps_raw):+.1f} (bar: >= -1), "
        f"worst auto-best {min(gaps_best):+.1f} (bar: >= -2)"
    )
    return "\n".join(lines)


def retable(rows: list[dict], default: str | None) -> list[dict]:
    """Apply the current selection rule (:func:`select`) with ``default`` to each row's stored CV outputs.

    Auto's test accuracy is then the chosen method's test accuracy on that row: the same number a new run
    would give, as each method is fitted by the same policy with the same seed (auto's own choice too).
    """
    out = []
    for r in rows:
        cv = {(None if k == "None" else k): np.asarray(v) for k, v in r["cv_log_proba"].items()}
        chosen, scores = select(cv, np.asarray(r["cv_y"]), default)
        acc = dict(r["accuracy"], auto=r["accuracy"]["none" if chosen is None else chosen])
        out.append(dict(r, accuracy=acc, chosen=chosen, cv=scores))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data")
    p.add_argument("--datasets", nargs="+", default=["sst2", "agnews", "trec"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--limit", type=int, default=300, help="score the first N test rows")
    p.add_argument("--per-class", type=int, default=4, help="labeled examples per class given to fit")
    p.add_argument("--demos-per-class", type=int, default=1, help="demonstrations per class in the demos setting")
    p.add_argument("--model", default=None, help="default: the embedded default model")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", type=Path)
    p.add_argument("--retable", type=Path, help="re-table a saved --out file (no model): auto by the current rule")
    p.add_argument("--default", default=DEFAULT, help="with --retable: the rule's default ('none': no calibration)")
    args = p.parse_args()
    if args.retable:
        rows = [json.loads(line) for line in args.retable.read_text(encoding="utf-8").splitlines() if line.strip()]
        print(table(retable(rows, None if args.default == "none" else args.default)))
        return
    partial = None
    if args.out:  # rows go to OUT.partial as they finish (an interrupted run keeps them); OUT only at the end
        args.out.parent.mkdir(parents=True, exist_ok=True)
        partial = args.out.with_name(args.out.name + ".partial").open("w", encoding="utf-8")
    rows = run(args, partial)
    if partial is not None:
        partial.close()
        Path(partial.name).replace(args.out)
    print(table(rows))


if __name__ == "__main__":
    main()
