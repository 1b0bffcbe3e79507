"""eval/report.py's summary names the best calibration among those that ran (issue 21, item 9).

It printed ``nan (contextual)``: ``max`` over calibrations keyed by a mean that is NaN for a calibration
with no runs keeps the first one, so a grid without contextual runs (or without 4-shot runs) showed NaN.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPORT = Path(__file__).resolve().parent.parent / "eval" / "report.py"


def _row(dataset: str, method: str, calibration: str, k: int, seed: int, accuracy: float) -> dict:
    return {
        "dataset": dataset,
        "method": method,
        "calibration": calibration,
        "k": k,
        "seed": seed,
        "accuracy": accuracy,
        "macro_f1": accuracy,
        "ece": 0.1,
        "brier": 0.2,
        "n_test": 10,
    }


def test_summary_names_only_calibrations_that_ran(tmp_path):
    rows = [
        _row("sst2", "verbalize", "none", 0, 0, 0.5),
        _row("sst2", "verbalize", "batch", 0, 0, 0.7),
        _row("sst2", "verbalize", "domain", 0, 0, 0.6),
        _row("sst2", "verbalize", "batch", 4, 0, 0.8),
        _row("sst2", "verbalize", "batch", 4, 1, 0.9),
        _row("trec", "verbalize", "none", 0, 0, 0.3),  # no calibrated and no 4-shot run at all
    ]
    grid = tmp_path / "grid.jsonl"
    grid.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    done = subprocess.run([sys.executable, str(REPORT), str(grid)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = done.stdout.split("### Summary", 1)[1]
    assert "nan" not in summary.lower(), summary
    assert "| sst2 | 0.500 | 0.700 (batch) | 0.850 (batch) | n/a |" in summary, summary
    assert "| trec | 0.300 | n/a | n/a | n/a |" in summary, summary
    assert "mean over datasets: +20.0 points (1 dataset with a calibrated zero-shot run)" in summary, summary
