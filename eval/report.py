"""Results JSONL (from eval/run.py) -> Markdown tables (mean ± std over seeds) and PNG plots.

    python eval/report.py results/grid.jsonl --plots results/plots > results/report.md

Tables per dataset: accuracy, macro-F1, ECE and Brier for each method/calibration and each number of
demonstrations per class. Plots (need matplotlib: pip install 'verbalize[plots]'): a confusion matrix
and a reliability diagram per run, and accuracy vs demonstrations per dataset.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

METRICS = ("accuracy", "macro_f1", "ece", "brier")


def load_rows(paths: list[str]) -> list[dict]:
    rows = []
    for p in paths:
        rows += [json.loads(line) for line in Path(p).read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows


def group(rows: list[dict]) -> dict[tuple, dict[str, list[float]]]:
    """(dataset, method, calibration, k) -> metric -> values over seeds (last row per seed wins)."""
    latest: dict[tuple, dict] = {}
    for r in rows:
        latest[(r["dataset"], r["method"], r["calibration"], r["k"], r["seed"])] = r
    out: dict[tuple, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (ds, m, c, k, _), r in sorted(latest.items(), key=lambda kv: str(kv[0])):
        for metric in METRICS:
            out[(ds, m, c, k)][metric].append(r[metric])
    return out


def tables(rows: list[dict]) -> str:
    g = group(rows)
    lines = []
    for ds in sorted({key[0] for key in g}):
        ks = sorted({key[3] for key in g if key[0] == ds})
        n = next(r["n_test"] for r in rows if r["dataset"] == ds)
        for metric in METRICS:
            lines.append(f"\n### {ds}: {metric} (n_test={n}, mean ± std over seeds)\n")
            lines.append("| method | calibration | " + " | ".join(f"k={k}" for k in ks) + " |")
            lines.append("|---|---|" + "---:|" * len(ks))
            methods = sorted({(key[1], key[2]) for key in g if key[0] == ds}, key=lambda mc: (mc[0] != "verbalize", mc))
            for m, c in methods:
                cells = []
                for k in ks:
                    vals = g.get((ds, m, c, k), {}).get(metric)
                    cells.append(f"{np.mean(vals):.3f} ± {np.std(vals):.3f}" if vals else "")
                lines.append(f"| {m} | {c} | " + " | ".join(cells) + " |")
    lines.append("\n" + summary(g))
    return "\n".join(lines)


def summary(g: dict) -> str:
    """The headline numbers: raw vs best calibrated zero-shot, and calibrated 4-shot vs TF-IDF."""
    out = [
        "### Summary",
        "",
        "| dataset | raw zero-shot | best calibrated zero-shot | best calibrated 4-shot | TF-IDF 4-shot |",
        "|---|---:|---:|---:|---:|",
    ]
    gains = []
    for ds in sorted({key[0] for key in g}):

        def acc(m: str, c: str, k: int, ds: str = ds) -> float | None:
            vals = g.get((ds, m, c, k), {}).get("accuracy")
            return float(np.mean(vals)) if vals else None

        def best(k: int) -> tuple[str, float] | None:
            """The most accurate calibration among those run at k (max over NaN keys kept the first one)."""
            ran = [(c, a) for c in CALIBRATIONS if (a := acc("verbalize", c, k)) is not None]
            return max(ran, key=lambda ca: ca[1]) if ran else None

        raw0, best0, best4, tfidf = acc("verbalize", "none", 0), best(0), best(4), acc("tfidf_lr", "-", 4)
        if raw0 is not None and best0 is not None:
            gains.append(best0[1] - raw0)
        out.append(f"| {ds} | {_cell(raw0)} | {_best_cell(best0)} | {_best_cell(best4)} | {_cell(tfidf)} |")
    if gains:
        what = f"{len(gains)} dataset{'s' if len(gains) > 1 else ''} with a calibrated zero-shot run"
        out.append(
            f"\nbest calibrated zero-shot minus raw, mean over datasets: {100 * np.mean(gains):+.1f} points ({what})"
        )
    return "\n".join(out)


CALIBRATIONS = ("contextual", "domain", "batch", "temperature")


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _best_cell(best: tuple[str, float] | None) -> str:
    return "n/a" if best is None else f"{best[1]:.3f} ({best[0]})"


def plots(rows: list[dict], folder: Path) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for r in rows:
        if r["method"] != "verbalize":
            continue
        name = f"{r['dataset']}_k{r['k']}_s{r['seed']}_{r['calibration']}"
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
        cm = np.array(r["confusion"])
        a.imshow(cm, cmap="Blues")
        a.set_xticks(range(len(r["labels"])), r["labels"], rotation=45, ha="right")
        a.set_yticks(range(len(r["labels"])), r["labels"])
        for (i, j), v in np.ndenumerate(cm):
            a.text(j, i, str(v), ha="center", va="center", fontsize=8)
        a.set_xlabel("predicted")
        a.set_ylabel("true")
        a.set_title(f"confusion: acc {r['accuracy']:.3f}")
        rel = r["reliability"]
        centers = (np.arange(len(rel["count"])) + 0.5) / len(rel["count"])
        used = np.array(rel["count"]) > 0
        b.bar(centers[used], np.array(rel["accuracy"])[used], width=1 / len(centers), edgecolor="k", alpha=0.7)
        b.plot([0, 1], [0, 1], "k--", lw=1)
        b.set_xlabel("confidence")
        b.set_ylabel("accuracy")
        b.set_title(f"reliability: ECE {r['ece']:.3f}")
        fig.suptitle(name)
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png", dpi=80)
        plt.close(fig)
        n += 1
    g = group(rows)
    for ds in sorted({key[0] for key in g}):
        fig, ax = plt.subplots(figsize=(6, 4))
        for m, c in sorted({(key[1], key[2]) for key in g if key[0] == ds}):
            ks = sorted(key[3] for key in g if key[:3] == (ds, m, c))
            if len(ks) < 2:
                continue
            means = [np.mean(g[(ds, m, c, k)]["accuracy"]) for k in ks]
            stds = [np.std(g[(ds, m, c, k)]["accuracy"]) for k in ks]
            ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=f"{m} {c}".replace(" -", ""))
        ax.set_xlabel("demonstrations per class")
        ax.set_ylabel("accuracy")
        ax.set_title(ds)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / f"{ds}_accuracy_vs_k.png", dpi=90)
        plt.close(fig)
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="JSONL files written by eval/run.py")
    ap.add_argument("--plots", default=None, help="folder for PNG plots (needs matplotlib)")
    args = ap.parse_args()
    if args.plots and importlib.util.find_spec("matplotlib") is None:
        ap.error("--plots needs matplotlib: pip install 'verbalize[plots]' (or leave out --plots for the tables)")
    rows = load_rows(args.results)
    print(tables(rows))
    if args.plots:
        print(f"\n{plots(rows, Path(args.plots))} plots written to {args.plots}")


if __name__ == "__main__":
    main()
