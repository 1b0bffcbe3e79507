"""Bar 4: the Ray Data path on a local 2-CPU Ray instance equals the single-process output row for row.

Classifies the first N SST-2 texts from ../shared/data (default 2,000: the 872 test texts, then the
train pool) twice, with
`verbalize predict` (engine local, Parquet output) and with `--engine ray` on a Ray instance started here
with 2 CPUs, compares prediction and probability row by row, and reports both wall times (set-up
included) and the overhead of Ray.

    python eval/bench_ray.py --data ../shared/data             # embedded model, 2,000 texts (the bar)
    python eval/bench_ray.py --model tiny --n 300              # quick check of the machinery
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "eval"))

from bench_jobs import tiny_model  # noqa: E402
from data import data_dir  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="'default' (embedded), 'tiny', or a model path/id")
    p.add_argument("--template", default=str(ROOT / "templates" / "sst2.toml"))
    p.add_argument("--data", default=None, help="data folder (default: $VERBALIZE_DATA); reads sst2/test.jsonl")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--cpus-per-actor", type=float, default=0.5, help="leaves CPU for Ray's read tasks")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of each actor and of the local run: "
        "the same thread count gives the same float summation order, hence identical rows",
    )
    args = p.parse_args()

    import pyarrow.parquet as pq
    import ray

    from verbalize.cli.main import main as cli

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = (
            []
            if args.model == "default"
            else ["--model", tiny_model(tmp / "tiny") if args.model == "tiny" else args.model]
        )
        src = tmp / "sst2.jsonl"
        folder = data_dir(args.data) / "sst2"  # the test split (872 texts), then the train pool up to N
        lines = [x for f in ("test", "train") for x in (folder / f"{f}.jsonl").read_text(encoding="utf-8").splitlines()]
        lines = lines[: args.n]
        src.write_text("".join(json.dumps({"id": i} | json.loads(x)) + "\n" for i, x in enumerate(lines)))
        common = ["predict", args.template, str(src), *model, "--chunk-size", str(args.chunk_size), "--no-progress"]
        import torch

        torch.set_num_threads(args.threads)
        start = time.perf_counter()
        code_local = cli([*common, "-o", str(tmp / "local.parquet")])
        local_s = time.perf_counter() - start
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        start = time.perf_counter()
        code_ray = cli(
            [
                *common,
                "-o",
                str(tmp / "ray.parquet"),
                "--engine",
                "ray",
                "--concurrency",
                str(args.concurrency),
                "--cpus-per-actor",
                str(args.cpus_per_actor),
                "--threads-per-actor",
                str(args.threads),
            ]
        )
        ray_s = time.perf_counter() - start
        ray.shutdown()
        want = pq.read_table(tmp / "local.parquet").to_pylist()
        got = pq.read_table(tmp / "ray.parquet").to_pylist()
        same = [
            (str(g["id"]), g["prediction"], g["probability"]) == (str(w["id"]), w["prediction"], w["probability"])
            for g, w in zip(got, want, strict=False)
        ]
    print(
        json.dumps(
            {
                "model": args.model,
                "texts": len(lines),
                "exit_local": code_local,
                "exit_ray": code_ray,
                "rows_local": len(want),
                "rows_ray": len(got),
                "identical_rows": sum(same),
                "identical": len(got) == len(want) and all(same),
                "same_predictions": sum(g["prediction"] == w["prediction"] for g, w in zip(got, want, strict=False)),
                "max_abs_diff_probability": max(
                    abs(g["probability"] - w["probability"]) for g, w in zip(got, want, strict=False)
                ),
                "threads": args.threads,
                "local_s": round(local_s, 1),
                "ray_s": round(ray_s, 1),
                "ray_overhead": round(ray_s / local_s - 1, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
