"""Label words found by `suggest` against the shipped templates' words, on k labeled examples per class.

    python eval/suggest.py --data ../shared/data --datasets agnews trec --k 16 --seeds 0 1 2 \
        --limit 200 --out results/suggest.jsonl
    python eval/suggest.py --table results/suggest.jsonl       # the table only

The protocol of ``eval/finetune.py`` (``finetune.sample``: k examples per class drawn with the seed
from the train pool; the first --limit test rows). For each (dataset, seed):
- shipped: the shipped template's words and prompt;
- words: ``suggest_label_words`` on the k examples per class, the shipped prompt kept;
- words+prompt: the best of ``rank_templates`` (the shipped prompt, the description as instruction,
  a few generic prompts), by cross-validated accuracy on the same examples.
Test accuracy under each --calibration (contextual: content-free inputs; batch: the test batch
itself; none). The test texts' next-token distributions are computed once per prompt and dataset, so
every word set is scored from the same forward pass (``accuracy_of``, tested equal to Verbalizer's).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from data import DATASETS, data_dir, load, template_path
from finetune import sample

from verbalize import load_template, rank_templates, suggest_label_words
from verbalize.calibration.calibrators import CONTENT_FREE
from verbalize.engine.scoring import Scorer
from verbalize.search import accuracy_of, next_token_log_probs

VARIANTS = ("shipped", "words", "words+prompt")


def columns(template, tokenizer) -> list[np.ndarray]:
    tokens = template.labels.encode(tokenizer, template.label_prefix, template.render(template.sample_text))
    if tokens.multi_token.any():
        print(f"note: {template.source} has multi-token words; scored here by their first token")
    return [
        np.array([ids[0] for ids, lab in zip(tokens.word_ids, tokens.word_label, strict=True) if lab == c])
        for c in range(len(template.labels))
    ]


def held_out_accuracy(template, scorer, test, classes, cache: dict, calibrations) -> dict:
    key = (template.instruction, template.prompt)
    if key not in cache:
        cache[key] = (
            next_token_log_probs(scorer, template, test[0]),
            next_token_log_probs(scorer, template, list(CONTENT_FREE)),
        )
    logp, cf = cache[key]
    y = np.array([classes.index(v) for v in test[1]])
    cols = columns(template, scorer.tokenizer)
    return {c: accuracy_of(cols, logp, y, cf, None if c == "none" else c) for c in calibrations}


def run(args: argparse.Namespace) -> None:
    root = data_dir(args.data)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    scorer = Scorer.resolve(args.model, batch_size=64, max_length=None)
    with out.open("a", encoding="utf-8") as f:
        for ds in args.datasets:
            test, pool = load(ds, "test", root, args.limit), load(ds, "train", root)
            shipped = load_template(template_path(ds))
            classes = list(shipped.labels)
            cache: dict = {}
            for seed in args.seeds:
                idx = sample(pool[1], classes, args.k, seed)
                X, y = [pool[0][i] for i in idx], [pool[1][i] for i in idx]
                t0 = time.perf_counter()
                kw = dict(calibration=args.search_calibration, random_state=seed)
                if args.words_only:
                    found = {"words": suggest_label_words(X, y, shipped, scorer, **kw)}
                else:  # the shipped prompt is the first candidate: its entry is the words-only search
                    ranked = rank_templates(X, y, shipped, scorer, **kw)
                    same = [
                        s
                        for s in ranked
                        if (s.template.prompt, s.template.instruction) == (shipped.prompt, shipped.instruction)
                    ]
                    found = {"words": same[0], "words+prompt": ranked[0]}
                seconds = round(time.perf_counter() - t0, 1)
                rows = [("shipped", shipped, found["words"].template_cv_accuracy, "input")]
                rows += [(name, s.template, s.cv_accuracy, s.choice) for name, s in found.items()]
                for name, tpl, cv, choice in rows:
                    acc = held_out_accuracy(tpl, scorer, test, classes, cache, args.calibration)
                    row = {
                        "dataset": ds,
                        "k": args.k,
                        "seed": seed,
                        "n_test": len(test[0]),
                        "variant": name,
                        "cv_accuracy": cv,
                        "choice": choice,  # the words: the input template's, new ones, or both
                        "accuracy": acc,
                        "instruction": tpl.instruction,
                        "prompt": tpl.prompt,
                        "words": dict(tpl.labels),
                        "search_seconds": seconds,
                    }
                    f.write(json.dumps(row) + "\n")
                    print(
                        f"{ds} seed={seed} {name}: test {acc} cv {cv:.3f} ({choice} words) {dict(tpl.labels)} "
                        f"prompt {tpl.prompt!r}",
                        flush=True,
                    )
                f.flush()


def table(path: str) -> str:
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    acc: dict[tuple, list[float]] = defaultdict(list)
    cals = sorted({c for r in rows for c in r["accuracy"]})
    for r in rows:
        for c, v in r["accuracy"].items():
            acc[(r["dataset"], c, r["variant"])].append(v)
    lines = [
        "| dataset | calibration | " + " | ".join(VARIANTS) + " | words - shipped |",
        "|---" * (len(VARIANTS) + 3) + "|",
    ]
    for ds in [d for d in DATASETS if any(k[0] == d for k in acc)]:
        for c in cals:
            cells = [acc.get((ds, c, v), []) for v in VARIANTS]
            shown = [f"{np.mean(v):.3f} ± {np.std(v):.3f} (n={len(v)})" if v else "-" for v in cells]
            gap = f"{np.mean(cells[1]) - np.mean(cells[0]):+.3f}" if cells[0] and cells[1] else "-"
            lines.append(f"| {ds} | {c} | " + " | ".join(shown) + f" | {gap} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data folder (or $VERBALIZE_DATA)")
    ap.add_argument("--datasets", nargs="+", default=["agnews", "trec"], choices=sorted(DATASETS))
    ap.add_argument("--k", type=int, default=16, help="labeled examples per class given to the search")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--limit", type=int, default=200, help="first N test rows (the files are shuffled)")
    ap.add_argument(
        "--calibration",
        nargs="+",
        default=["contextual", "batch", "none"],
        choices=["contextual", "batch", "none"],
        help="calibrations of the test scores",
    )
    ap.add_argument("--search-calibration", default="contextual", choices=["contextual", "batch"])
    ap.add_argument("--words-only", action="store_true", help="skip the prompt search")
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default="results/suggest.jsonl")
    ap.add_argument("--table", default=None, help="print the table of this JSONL file and exit")
    args = ap.parse_args()
    if args.table:
        print(table(args.table))
        return
    run(args)
    print(table(args.out))


if __name__ == "__main__":
    main()
