"""Quality floors on the embedded default model (real weights): a quality regression fails a test.

The data folder is ``$VERBALIZE_DATA``, else ``../shared/data`` beside the checkout (or beside the folder of
worktrees that holds it). Each floor is the accuracy measured on the first 200 test texts with the code at
commit ee85e09 (2026-11-23, `tests/test_quality.py` run on this project's CPU, fp32), minus 2 points.
Measured then (eval-style loop, same texts): SST-2 raw 0.795, SST-2 contextual 0.805, AG News contextual 0.705.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from verbalize import Verbalizer

ROOT = Path(__file__).resolve().parent.parent
N = 200

pytestmark = pytest.mark.slow  # real weights, 200 texts per case: ~20-60 s each on 2 CPU cores


def _data_dir() -> Path:
    env = os.environ.get("VERBALIZE_DATA")
    candidates = [Path(env)] if env else [ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data"]
    for path in candidates:
        if path.is_dir():
            return path
    pytest.skip(f"no evaluation data: set VERBALIZE_DATA to a folder with sst2/ and agnews/ (looked in {candidates})")


def _first(dataset: str) -> tuple[list[str], list[str]]:
    file = _data_dir() / dataset / "test.jsonl"
    if not file.is_file():
        pytest.skip(f"{file} not found")
    rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines()[:N]]
    return [r["text"] for r in rows], [r["label"] for r in rows]


@pytest.mark.parametrize(
    "dataset,calibration,measured",
    [
        ("sst2", None, 0.795),  # zero-shot, raw
        ("agnews", "contextual", 0.705),  # zero-shot, contextual calibration
    ],
)
def test_zero_shot_accuracy_floor(default_scorer, dataset, calibration, measured):
    X, y = _first(dataset)
    clf = Verbalizer(template=dataset, model=default_scorer, calibration=calibration)
    accuracy = clf.score(X, y)
    assert accuracy >= measured - 0.02, f"{dataset} {calibration}: {accuracy:.3f}, measured {measured:.3f} at ee85e09"
