"""Batch jobs under load: memory and speed of streaming `verbalize predict`, and SIGKILL + --resume.

Bar 1 (``--part rss``): peak RSS of `verbalize predict` on 10k vs 200k lines of short texts differs by
< 100 MB; throughput (rows/s, start-up subtracted) within 10% of in-process ``predict_proba``.
Bar 2 (``--part kill``): SIGKILL at a random point, then ``--resume``, 5 times on a 5,000-line JSONL
file with bad rows (lone surrogates, blank lines, U+2028, BOM, 100k-character lines): the final output
is byte-identical to an uninterrupted run, and every input line has exactly one output row.

The bars are on the embedded model (the default, ``--model default``); ``--model tiny`` builds a tiny
random GPT-2 in a temporary folder for a quick check of the machinery (its speed figures mean little).

    python eval/bench_jobs.py --part rss --model default            # bar 1 (hours on 2 CPUs at 200k)
    python eval/bench_jobs.py --part kill --model default           # bar 2
    python eval/bench_jobs.py --part all --model tiny --small 2000 --large 20000 --kill-lines 1000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = "good bad film movie plot great terrible the a was is not very acting story fun dull long".split()  # noqa: SIM905


def tiny_model(folder: Path) -> str:
    """A tiny random GPT-2 and its BPE tokenizer, as tests/conftest.py builds them (no download)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import conftest

    tok = conftest.gpt2_tokenizer.__wrapped__()
    model = conftest.gpt2_model.__wrapped__(tok)
    model.config.n_positions = 64
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def short_lines(path: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            f.write(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "\n")
    return path


def cli(args: list[str], kill_after: float | None = None) -> tuple[int, float, float]:
    """Run `python -m verbalize.cli.main ARGS`: (return code, seconds, peak RSS in MB of that child)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "verbalize.cli.main", *args], env=env, stderr=subprocess.DEVNULL)
    if kill_after is not None:
        try:
            proc.wait(kill_after)  # reaps it if it ends first (then its peak RSS is not known)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    if proc.returncode is not None:
        return proc.returncode, time.perf_counter() - start, float("nan")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - start, usage.ru_maxrss / 1024


def bench_rss(model: str | None, template: str, small: int, large: int, tmp: Path) -> dict:
    base = ["predict", template, "--no-progress"] + (["--model", model] if model else [])
    one = short_lines(tmp / "one.txt", 1)
    _, startup, _ = cli([*base[:2], str(one), *base[2:], "-o", str(tmp / "one.jsonl")])
    out: dict = {"startup_s": round(startup, 1)}
    for name, n in (("small", small), ("large", large)):
        src = short_lines(tmp / f"{name}.txt", n)
        code, seconds, rss = cli([*base[:2], str(src), *base[2:], "-o", str(tmp / f"{name}.jsonl")])
        out[name] = {"lines": n, "exit": code, "seconds": round(seconds, 1), "peak_rss_mb": round(rss, 1)}
    out["rss_difference_mb"] = round(out["large"]["peak_rss_mb"] - out["small"]["peak_rss_mb"], 1)
    # start-up cancels out: the rate of the extra (large - small) rows
    extra_s = out["large"]["seconds"] - out["small"]["seconds"]
    out["cli_rows_per_s"] = round((large - small) / max(extra_s, 1e-9), 1)
    from verbalize import Verbalizer

    texts = (tmp / "small.txt").read_text(encoding="utf-8").splitlines()
    clf = Verbalizer(template=template, model=model)
    clf.predict_proba(texts[:8])
    start = time.perf_counter()
    for i in range(0, len(texts), 512):
        clf.predict_proba(texts[i : i + 512])
    out["in_process_rows_per_s"] = round(len(texts) / (time.perf_counter() - start), 1)
    out["cli_vs_in_process"] = round(out["cli_rows_per_s"] / out["in_process_rows_per_s"], 3)
    return out


def messy_jsonl(path: Path, n: int, seed: int = 0, long_lines: int = 5) -> Path:
    """n lines of JSONL with a BOM, blank lines, lone surrogates, U+2028/NEL, bad JSON, and ``long_lines``
    100k-character texts spread over the file (each is cut to the model's context: ~40 s a row on 2 CPUs)."""
    rng = random.Random(seed)
    lines = []
    long_at = {round((j + 0.5) * n / long_lines) for j in range(long_lines)} if long_lines else set()
    for i in range(n):
        r = rng.random()
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 10)))
        if i in long_at:
            lines.append(json.dumps({"id": i, "text": "long " * 20_000}))
        elif r < 0.02:
            lines.append("")
        elif r < 0.04:
            lines.append(json.dumps({"id": i, "text": "bad \ud800 surrogate"}))
        elif r < 0.06:
            lines.append(json.dumps({"id": i, "text": text + "\u2028" + text + "\x85end"}, ensure_ascii=False))
        elif r < 0.07:
            lines.append(f'{{"id": {i}, "text": "unterminated')
        else:
            lines.append(json.dumps({"id": i, "text": text}))
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n")
    return path


def bench_kill(
    model: str | None, template: str, n: int, kills: int, tmp: Path, seed: int = 0, long_lines: int = 5
) -> dict:
    src = messy_jsonl(tmp / "messy.jsonl", n, long_lines=long_lines)
    base = ["predict", template, str(src), "--no-progress"] + (["--model", model] if model else [])
    ref = tmp / "ref.jsonl"
    code, full_s, _ = cli([*base, "-o", str(ref)])
    rng = random.Random(seed)
    trials = []
    for k in range(kills):
        out = tmp / f"killed{k}.jsonl"
        when = rng.uniform(0.3, 1.0) * full_s  # the first ~20% of a run is start-up (nothing to resume yet)
        cli([*base, "-o", str(out)], kill_after=when)
        done = (
            json.loads((tmp / f"killed{k}.jsonl.partial" / "state.json").read_text())["rows_done"]
            if (tmp / f"killed{k}.jsonl.partial" / "state.json").exists()
            else None
        )
        resumed, _, _ = cli([*base, "-o", str(out), "--resume"])
        same = out.exists() and out.read_bytes() == ref.read_bytes()
        rows = out.read_bytes().count(b"\n") if out.exists() else -1
        trials.append(
            {
                "killed_at_s": round(when, 1),
                "rows_done_at_kill": done,
                "resume_exit": resumed,
                "identical": same,
                "rows": rows,
            }
        )
    return {
        "lines": n,
        "reference_exit": code,
        "reference_s": round(full_s, 1),
        "trials": trials,
        "all_identical": all(t["identical"] for t in trials) and all(t["rows"] == n for t in trials),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["rss", "kill", "all"], default="all")
    p.add_argument("--model", default="default", help="'default' (embedded), 'tiny', or a model path/id")
    p.add_argument("--template", default=str(ROOT / "templates" / "sst2.toml"))
    p.add_argument("--small", type=int, default=10_000)
    p.add_argument("--large", type=int, default=200_000)
    p.add_argument("--kill-lines", type=int, default=5_000)
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--long-lines", type=int, default=5, help="100k-character lines in the kill file")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = None if args.model == "default" else tiny_model(tmp / "tiny") if args.model == "tiny" else args.model
        result: dict = {"model": args.model}
        if args.part in ("rss", "all"):
            result["rss"] = bench_rss(model, args.template, args.small, args.large, tmp)
        if args.part in ("kill", "all"):
            result["kill"] = bench_kill(
                model, args.template, args.kill_lines, args.kills, tmp, long_lines=args.long_lines
            )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
