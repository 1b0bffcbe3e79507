"""Issue 20, bar 3: a batch job over a huge line, and the cost of many demonstrations (embedded model).

    python eval/bench_huge.py --data ../shared/data                # both parts
    python eval/bench_huge.py --data ../shared/data --mb 20        # a smaller line
    python eval/bench_huge.py --skip-huge --data ../shared/data    # demonstrations only

1. A single-line JSONL input of ``--mb`` MB (default 200) to ``verbalize predict`` in a subprocess: it
   must finish with exactly one output row and a peak RSS (the child's, from ``getrusage``) under 2 GB.
   Before the fix the whole line was tokenized: a 20 MB line peaked at 6.5 GB, a 200 MB one aborted.
   The file is written under the system's temporary folder and deleted.
2. ``predict_proba`` on the same few texts with 32 and 1,024 shared demonstrations (fit once each),
   under a ``--context`` small enough that 32 already overflow it: the 1,024 must cost at most 2x the 32.
   Each figure is the best of ``--repeat`` calls after a first, unmeasured one.

Prints one table per part, with the CPU's model and the flags that matter to matrix products.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from verbalize.engine.machine import describe_cpu

REPO = Path(__file__).resolve().parents[1]
WORDS = "the film was long but the actors were good and the music was fine . "


def write_huge(path: Path, mb: int) -> int:
    """One JSON line {"text": ...} of about ``mb`` MB; returns the text's length in characters."""
    chunk = WORDS * (1_048_576 // len(WORDS))
    with path.open("w", encoding="utf-8") as f:
        f.write('{"text": "')
        for _ in range(mb):
            f.write(chunk)
        f.write('"}\n')
    return mb * len(chunk)


def huge_line(mb: int, template: str) -> bool:
    """Run ``verbalize predict`` on one huge line; print its figures; True when it meets the bar."""
    with tempfile.TemporaryDirectory(prefix="verbalize-huge-") as tmp:
        source, out = Path(tmp) / "huge.jsonl", Path(tmp) / "out.jsonl"
        n_chars = write_huge(source, mb)
        cmd = [sys.executable, "-m", "verbalize.cli.main", "predict", template, str(source), "-o", str(out)]
        start = time.perf_counter()
        run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        seconds = time.perf_counter() - start
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
        rows = out.read_text(encoding="utf-8").splitlines() if out.exists() else []
        echoed = len(json.loads(rows[0]).get("text", "")) if len(rows) == 1 else -1
        label = json.loads(rows[0]).get("prediction") if len(rows) == 1 else None
    ok = run.returncode == 0 and len(rows) == 1 and echoed == n_chars and peak_gb < 2
    print(f"\n1. one {mb} MB line ({n_chars:,} characters) to `verbalize predict`")
    print(
        f"{'exit':>5} {'rows':>5} {'prediction':>10} {'text echoed':>12} {'seconds':>8} {'peak RSS GB':>12}"
        "  bar (<2 GB, 1 row)"
    )
    verdict = "met" if ok else "MISSED"
    print(
        f"{run.returncode:>5} {len(rows):>5} {label!s:>10} {echoed == n_chars!s:>12} {seconds:>8.1f} {peak_gb:>12.2f}"
        f"  {verdict}"
    )
    if run.returncode:
        print(run.stderr[-2000:])
    return ok


def demonstrations(root: Path, counts: list[int], context: int, n_texts: int, repeat: int) -> bool:
    """Time predict_proba with each number of shared demonstrations; True when the largest costs <= 2x the smallest."""
    sys.path.insert(0, str(Path(__file__).parent))
    from data import load, template_path

    from verbalize import Verbalizer

    train, labels = load("sst2", "train", root, max(counts))
    test, _ = load("sst2", "test", root, n_texts)
    print(f"\n2. predict_proba on {n_texts} texts, shared demonstrations beyond a {context}-token context")
    print(f"{'demos':>6} {'fit s':>7} {'predict s':>10} {'x smallest':>11} {'kept':>5}")
    best: dict[int, float] = {}
    for n in counts:
        clf = Verbalizer(template=template_path("sst2"), n_demos=n, max_length=context, random_state=0)
        start = time.perf_counter()
        clf.fit(train[:n], labels[:n])
        fit_s = time.perf_counter() - start
        clf.predict_proba(test)  # first call: lazy work, caches
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            clf.predict_proba(test)
            times.append(time.perf_counter() - start)
        best[n] = min(times)
        kept = clf._prompts(test[:1]).prefixes[0].count("\nSentiment: ")
        print(f"{n:>6} {fit_s:>7.2f} {best[n]:>10.3f} {best[n] / best[counts[0]]:>11.2f} {kept:>5}")
    ratio = best[counts[-1]] / best[counts[0]]
    print(
        f"{counts[-1]} demonstrations cost {ratio:.2f}x {counts[0]} per call: "
        f"bar (<= 2x) {'met' if ratio <= 2 else 'MISSED'}"
    )
    return ratio <= 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="the data folder (default: $VERBALIZE_DATA)")
    parser.add_argument("--mb", type=int, default=200, help="size of the huge line in MB")
    parser.add_argument("--template", default="templates/sst2.toml")
    parser.add_argument("--skip-huge", action="store_true")
    parser.add_argument("--skip-demos", action="store_true")
    parser.add_argument("--demos", type=int, nargs="+", default=[32, 1024])
    parser.add_argument("--context", type=int, default=512, help="tokens: small enough that 32 demonstrations overflow")
    parser.add_argument("--texts", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("verbalize").setLevel(logging.ERROR)  # drop and truncation warnings are the point here
    print(f"CPU: {describe_cpu()}, {os.cpu_count()} CPUs")
    ok = True
    if not args.skip_huge:
        ok &= huge_line(args.mb, args.template)
    if not args.skip_demos:
        sys.path.insert(0, str(Path(__file__).parent))
        from data import data_dir

        ok &= demonstrations(data_dir(args.data), args.demos, args.context, args.texts, args.repeat)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
