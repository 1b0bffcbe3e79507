"""Issue 23: calibration on skewed test sets (Zipf class sizes) beside the balanced originals.

    python eval/skewed_calibration.py --data ../shared/data --seeds 0 1 2 3 4 --limit 500

For each dataset (SST-2, AG News, TREC), setting (zero-shot; ``--demos-per-class`` demonstrations of
each label) and seed: ``--per-class`` labeled examples per class are drawn from the train pool
(balanced, as an analyst would label them) and given to ``Verbalizer(calibration="auto").fit``; the
first ``--limit`` test rows (the "pool") are scored once. Every registered calibrator (the prior
estimator ``prior`` included), ``auto`` and no calibration are then applied post hoc to subsets of that
pool, each fitted by the library's own policy (``fit_calibrator``) on the labeled texts and applied by
``calibrate`` to the subset as one call (so batch-transductive methods see the whole subset):

- ``balanced``: the pool as it is (the original test distribution);
- ``zipf-a`` (a in ``--exponents``): as many rows as the pool, class c getting a share proportional to
  1 / rank(c)^a, the order of the classes drawn per seed; a class's rows are drawn without replacement
  while the pool has them, then with replacement (TREC's rarest class has 1-2% of the pool).

Model calls are cached per prompt (``--cache``, default ``$VERBALIZE_EVAL_CACHE`` or
``~/.cache/verbalize-eval``; an SQLite file keyed by model, dtype, prefix, prompt and label words), so
re-running (another calibrator, another rule) costs no forward pass for what was scored before.

The table gives the mean test accuracy over seeds per (dataset, skew, setting) cell, and the bars of
issue 23 are checked, PASS/FAIL each: (1) auto >= none - 1 and >= the best single calibrator - 1.5 on every
cell; ``prior`` >= none - 1 on every skewed cell; (2) on the balanced originals, auto >= auto under
the previous rule (candidates without ``prior``, default batch, one standard error: emulated from the same
cross-validation) - 0.5 (the single calibrators other than ``prior`` are unchanged code). One JSON row per
(dataset, setting, seed, skew) goes to ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sqlite3
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from auto_calibration import labeled_sample
from data import ROOT, data_dir, load, template_path
from make_pairs import pairs

from verbalize import Verbalizer
from verbalize.calibration.auto import AutoCalibrator, select
from verbalize.calibration.calibrators import CALIBRATORS, calibrate, fit_calibrator, get_calibrator, log_softmax
from verbalize.calibration.prior import PriorCalibrator

NEW = "prior"  # the calibrator issue 23 adds
OLD_CANDIDATES = ("None", "contextual", "domain", "batch", "temperature")  # auto's candidates before issue 23


class CachedScorer:
    """A Scorer whose ``score_words`` answers from an SQLite cache per prompt, scoring only what it lacks."""

    def __init__(self, scorer: Any, db: sqlite3.Connection, tag: str) -> None:
        self._scorer, self._db, self._tag = scorer, db, tag

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scorer, name)

    def _key(self, prefix: str, prompt: str, words: Sequence[str]) -> str:
        raw = json.dumps([self._tag, prefix, prompt, list(words)], ensure_ascii=False)
        return hashlib.sha1(raw.encode("utf-8")).hexdigest()

    def score_words(
        self, prompts: Sequence[str], label_tokens: Any, spans: Any = None, prefix: str = "", progress: bool = False
    ) -> np.ndarray:
        keys = [self._key(prefix, p, label_tokens.words) for p in prompts]
        found = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            q = f"SELECT k, v FROM words WHERE k IN ({','.join('?' * len(chunk))})"
            found.update({k: np.frombuffer(v, dtype=np.float32) for k, v in self._db.execute(q, chunk)})
        todo = [i for i, k in enumerate(keys) if k not in found]
        if todo:
            sub_spans = None if spans is None else [spans[i] for i in todo]
            got = self._scorer.score_words([prompts[i] for i in todo], label_tokens, sub_spans, prefix, progress)
            rows = [(keys[i], np.asarray(got[j], dtype=np.float32).tobytes()) for j, i in enumerate(todo)]
            self._db.executemany("INSERT OR REPLACE INTO words VALUES (?, ?)", rows)
            self._db.commit()
            found.update({keys[i]: np.asarray(got[j], dtype=np.float32) for j, i in enumerate(todo)})
        return np.stack([found[k] for k in keys]).astype(np.float64) if keys else np.zeros((0, len(label_tokens.words)))


def open_cache(folder: Path) -> sqlite3.Connection:
    folder.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(folder / "skewed_calibration.sqlite")
    db.execute("CREATE TABLE IF NOT EXISTS words (k TEXT PRIMARY KEY, v BLOB)")
    return db


def cached_classifier(args: argparse.Namespace, dataset: str, dpc: int | None, seed: int, db: Any) -> Verbalizer:
    """Verbalizer(calibration="auto") whose model calls go through the cache."""
    clf = Verbalizer(
        template=task_template(dataset),
        model=args.model,
        calibration="auto",
        demos_per_class=dpc,
        random_state=seed,
        batch_size=args.batch_size,
        dtype=args.dtype,
    )
    load_scorer = clf._load_scorer
    tag = f"{args.model or 'default'}|{args.dtype}"
    clf._load_scorer = lambda: CachedScorer(load_scorer(), db, tag)  # type: ignore[method-assign]
    return clf


def zipf_subsets(y: np.ndarray, n_classes: int, exponents: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    """Row indices of the pool per skew: "balanced" (all rows) and "zipf-a" per exponent."""
    rng = np.random.default_rng([seed, 23])
    order = rng.permutation(n_classes)  # order[r]: the class of rank r + 1
    out = {"balanced": np.arange(len(y))}
    for a in exponents:
        share = np.zeros(n_classes)
        share[order] = 1.0 / np.arange(1, n_classes + 1) ** a
        sizes = np.maximum(1, np.round(len(y) * share / share.sum())).astype(int)
        rows = []
        for c in range(n_classes):
            have = rng.permutation(np.flatnonzero(y == c))
            if len(have) == 0:
                continue
            extra = rng.choice(have, size=max(0, sizes[c] - len(have)), replace=True)
            rows.append(np.concatenate([have[: sizes[c]], extra]))
        out[f"zipf-{a:g}"] = rng.permutation(np.concatenate(rows))
    return out


VARIANTS = {  # beside the registry: prior with the one-step mean estimate (its default before), and Saerens' EM
    "prior-mean": lambda: PriorCalibrator(estimator="mean"),
    "prior-em": lambda: PriorCalibrator(estimator="em"),
}


def methods() -> list[str]:
    return ["none", *(n for n in CALIBRATORS if n != "auto"), *VARIANTS]


def evaluate(clf: Verbalizer, raw: np.ndarray, test: tuple, train: tuple, subsets: dict, seed: int) -> list[dict]:
    """Per skew: test accuracy of every method and of auto (new and previous rule), the true and estimated prior."""
    labels = list(clf.labels_)
    y_test = np.array([labels.index(v) for v in test[1]])
    y_train = np.array([labels.index(v) for v in train[1]])
    fitted: dict[str, Any] = {}
    for name in methods()[1:]:
        cal = VARIANTS[name]() if name in VARIANTS else get_calibrator(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_calibrator(cal, clf._raw_scores, list(train[0]), y_train, seed)
        fitted[name] = cal
    auto = clf.calibrator_
    assert isinstance(auto, AutoCalibrator)
    old_cv = {(None if k == "None" else k): v for k, v in auto.cv_log_proba_.items() if str(k) in OLD_CANDIDATES}
    old_rule = dict(clear_se=1.0, clear_p=None)  # one standard error, no sign test
    old_choice = select(old_cv, y_train, "batch", **old_rule)[0] if old_cv else auto.report_.get("chosen")
    rows = []
    for skew, idx in subsets.items():
        texts, y = [test[0][i] for i in idx], y_test[idx]
        acc, estimate = {}, None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in methods():
                cal = fitted.get(name)
                out = log_softmax(raw[idx]) if cal is None else calibrate(cal, raw[idx], texts, clf._raw_scores, seed)
                acc[name] = float((out.argmax(axis=1) == y).mean())
                if name == NEW and isinstance(cal, PriorCalibrator):
                    estimate = cal.last_estimate()
            out = calibrate(auto, raw[idx], texts, clf._raw_scores, seed)
        acc["auto"] = float((out.argmax(axis=1) == y).mean())
        acc["auto_old"] = acc["none" if old_choice is None else old_choice]
        true_prior = np.bincount(y, minlength=len(labels)) / len(y)
        rows.append(
            {
                "skew": skew,
                "n_test": len(idx),
                "accuracy": acc,
                "true_prior": true_prior.round(4).tolist(),
                "estimated_prior": None if estimate is None else np.round(estimate, 4).tolist(),
            }
        )
    return rows


PAIR_POOL = 2000  # "pairs": sentence pairs built from SST-2's train split for the labeled examples


def load_task(dataset: str, split: str, root: Path, limit: int | None = None) -> tuple[list[Any], list[str]]:
    """A dataset's rows; ``"pairs"``: two-field rows {review1, review2} labeled same/different, built from
    SST-2 (``make_pairs.pairs``, balanced, seeded per split), a near-chance task for this model."""
    if dataset != "pairs":
        return load(dataset, split, root, limit)
    texts, labels = load("sst2", split, root)
    rows = pairs(texts, labels, limit or PAIR_POOL, seed=0 if split == "test" else 1)
    return [{"review1": r["review1"], "review2": r["review2"]} for r in rows], [r["label"] for r in rows]


def task_template(dataset: str) -> str:
    return str(ROOT / "templates" / "same_sentiment.toml") if dataset == "pairs" else template_path(dataset)


def run(args: argparse.Namespace, sink: Any = None) -> list[dict]:
    root, db, rows = data_dir(args.data), open_cache(args.cache), []
    data = {d: (load_task(d, "test", root, args.limit), load_task(d, "train", root)) for d in args.datasets}
    for seed in args.seeds:  # seeds outermost: an interrupted run has every cell for its first seeds
        for setting in args.settings:
            for dataset, (test, pool) in data.items():
                t0 = time.perf_counter()
                idx = labeled_sample(pool[1], args.per_class, seed)
                train = ([pool[0][i] for i in idx], [pool[1][i] for i in idx])
                dpc = args.demos_per_class if setting == "demos" else None
                clf = cached_classifier(args, dataset, dpc, seed, db)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    clf.fit(*train)
                    raw = clf.label_scores(test[0])
                labels = list(clf.labels_)
                y_test = np.array([labels.index(v) for v in test[1]])
                subsets = zipf_subsets(y_test, len(labels), args.exponents, seed)
                for r in evaluate(clf, raw, test, train, subsets, seed):
                    row = {"dataset": dataset, "setting": setting, "seed": seed, **r}
                    row["chosen"] = clf.calibration_report_.get("chosen")
                    row["seconds"] = round(time.perf_counter() - t0, 1)
                    rows.append(row)
                    if sink is not None:
                        sink.write(json.dumps(row) + "\n")
                        sink.flush()
                print(
                    json.dumps({k: rows[-1][k] for k in ("dataset", "setting", "seed", "chosen", "seconds")}),
                    flush=True,
                )
    return rows


def cells(rows: list[dict]) -> dict[tuple[str, str, str], dict[str, float]]:
    """Mean accuracy (points) per (dataset, skew, setting) and method, over seeds."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["skew"], r["setting"]), []).append(r)
    return {
        key: {m: 100 * float(np.mean([r["accuracy"][m] for r in rs])) for m in rs[0]["accuracy"]}
        for key, rs in groups.items()
    }


def distance_line(rows: list[dict]) -> str:
    """How far prior's estimate (and uniform) lie from the true label distribution: total variation, per skew."""
    out = []
    for skew in dict.fromkeys(r["skew"] for r in rows):
        rs = [r for r in rows if r["skew"] == skew and r.get("estimated_prior")]
        if rs:
            tv = np.mean([0.5 * np.abs(np.subtract(r["estimated_prior"], r["true_prior"])).sum() for r in rs])
            uni = np.mean([0.5 * np.abs(np.subtract(1 / len(r["true_prior"]), r["true_prior"])).sum() for r in rs])
            out.append(f"{skew} {tv:.3f} (uniform {uni:.3f})")
    return f"{NEW}'s estimate vs the true label distribution, total variation: " + "; ".join(out)


def table(rows: list[dict]) -> str:
    """Markdown table of the cells, then each bar with PASS/FAIL."""
    means = cells(rows)
    seeds = {key: sum(1 for r in rows if (r["dataset"], r["skew"], r["setting"]) == key) for key in means}
    names = [m for m in methods() if m in next(iter(means.values()))]
    lines = [
        "| dataset | skew | setting | seeds | " + " | ".join(names) + " | auto | auto-none | auto-best |",
        "|---|---|---|---:|" + "---:|" * (len(names) + 3),
    ]
    fails: dict[str, list[str]] = {"auto-none": [], "auto-best": [], "prior-none": [], "balanced": []}
    for (dataset, skew, setting), m in means.items():
        best = max(m[k] for k in names if k not in ("none", *VARIANTS))
        cell = f"{dataset} {skew} {setting}"
        lines.append(
            f"| {dataset} | {skew} | {setting} | {seeds[(dataset, skew, setting)]} | "
            + " | ".join(f"{m[k]:.1f}" for k in names)
            + f" | {m['auto']:.1f} | {m['auto'] - m['none']:+.1f} | {m['auto'] - best:+.1f} |"
        )
        if m["auto"] < m["none"] - 1:
            fails["auto-none"].append(f"{cell}: {m['auto'] - m['none']:+.1f}")
        if m["auto"] < best - 1.5:
            fails["auto-best"].append(f"{cell}: {m['auto'] - best:+.1f}")
        if skew != "balanced" and NEW in m and m[NEW] < m["none"] - 1:
            fails["prior-none"].append(f"{cell}: {m[NEW] - m['none']:+.1f}")
        if skew == "balanced" and m["auto"] < m["auto_old"] - 0.5:
            fails["balanced"].append(f"{cell}: {m['auto'] - m['auto_old']:+.1f} against the previous rule")
    lines.append("\nmeans over the seeds of each cell (test accuracy, points)")
    lines.append(distance_line(rows))
    bars = {
        "auto-none": "bar 1: auto >= none - 1 on every cell",
        "auto-best": "bar 1: auto >= best single calibrator - 1.5 on every cell",
        "prior-none": f"bar 1: {NEW} >= none - 1 on every skewed cell",
        "balanced": "bar 2: balanced originals: auto >= auto under the previous rule - 0.5",
    }
    for key, text in bars.items():
        lines.append(
            f"{'PASS' if not fails[key] else 'FAIL'} {text}" + (f" ({'; '.join(fails[key])})" if fails[key] else "")
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data")
    p.add_argument(
        "--datasets", nargs="+", default=["sst2", "agnews", "trec"], help="also 'pairs' (two fields, from SST-2)"
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument(
        "--limit",
        type=int,
        default=500,
        help="the test pool: the first N test rows (500: all of TREC's; at 200 its rarest label has 4 rows, "
        "which a Zipf order that ranks that label first copies 5 times each)",
    )
    p.add_argument("--settings", nargs="+", choices=["zero-shot", "demos"], default=["zero-shot", "demos"])
    p.add_argument("--exponents", nargs="+", type=float, default=[0.5, 1.0, 2.0])
    p.add_argument("--per-class", type=int, default=4, help="labeled examples per class given to fit")
    p.add_argument("--demos-per-class", type=int, default=1, help="demonstrations per class in the demos setting")
    p.add_argument("--model", default=None, help="default: the embedded default model")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batch-size", type=int, default=32)
    default_cache = os.environ.get("VERBALIZE_EVAL_CACHE") or Path.home() / ".cache" / "verbalize-eval"
    p.add_argument("--cache", type=Path, default=Path(default_cache), help="where model calls are cached")
    p.add_argument("--out", type=Path)
    p.add_argument("--retable", type=Path, help="print the table of a saved --out file (no model)")
    args = p.parse_args()
    if args.retable:
        lines = args.retable.read_text(encoding="utf-8").splitlines()
        print(table([json.loads(line) for line in lines if line.strip()]))
        return
    sink = None
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        sink = args.out.open("w", encoding="utf-8")
    rows = run(args, sink)
    if sink is not None:
        sink.close()
    print(table(rows))


if __name__ == "__main__":
    main()
