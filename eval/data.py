"""Local JSONL loaders for the evaluation data (no hub at run time).

The data folder comes from ``--data DIR`` or the ``VERBALIZE_DATA`` environment variable and holds
``<dataset>/test.jsonl`` and ``<dataset>/train.jsonl`` with ``{"text": ..., "label": ...}`` rows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

DATASETS = {"sst2": "templates/sst2.toml", "agnews": "templates/agnews.toml", "trec": "templates/trec.toml"}
ROOT = Path(__file__).resolve().parent.parent


def data_dir(arg: str | None) -> Path:
    path = arg or os.environ.get("VERBALIZE_DATA")
    if not path:
        raise SystemExit("no data folder: pass --data DIR or set VERBALIZE_DATA (e.g. ../shared/data)")
    if not Path(path).is_dir():
        raise SystemExit(f"data folder {path!r} does not exist")
    return Path(path)


def load(dataset: str, split: str, root: Path, limit: int | None = None) -> tuple[list[str], list[str]]:
    """Texts and labels of ``root/dataset/split.jsonl`` (first ``limit`` rows)."""
    file = root / dataset / f"{split}.jsonl"
    if not file.is_file():
        raise SystemExit(f"{file} not found")
    texts, labels = [], []
    with file.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts.append(row["text"])
            labels.append(row["label"])
            if limit and len(texts) >= limit:
                break
    return texts, labels


def template_path(dataset: str) -> str:
    return str(ROOT / DATASETS[dataset])
