"""The studio's time to an edit's accuracy against ``Verbalizer.predict_proba`` in-process (issue 22, bar 2).

    python eval/bench_studio.py --data ../shared/data [--n 200] [--rounds 3]

Each round, on the same SST-2 texts and ``templates/sst2.toml`` with the same words: ``predict_proba`` on the
texts in-process, then an edit posted to the studio's API (a new version: a comment line changes, so nothing is
cached) timed until its numbers without calibration are there (``/api/evaluate``, then polling as the page
does every 100 ms). The two alternate, so that both see the same load on a shared machine; the medians and
their ratio are printed (bar: at most 1.5). Going back to an earlier version (cached) is timed too. The
browser's own times (keystroke to problems, to accuracy, back) are printed by tests/test_studio_browser.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from data import ROOT, data_dir, load
from fastapi.testclient import TestClient

from verbalize import Scorer, Verbalizer
from verbalize.prompting.template import loads_template
from verbalize.studio.app import HEADER, Studio, create_app
from verbalize.studio.evaluation import Evaluator, LabeledData
from verbalize.studio.files import TemplateFolder

H = {HEADER: "1"}


def _studio_seconds(client: TestClient, text: str, n: int) -> float:
    start = time.perf_counter()
    job = client.post("/api/evaluate", json={"name": "sst2.toml", "text": text, "data": "d", "size": n}, headers=H)
    job = job.json()
    while "none" not in job.get("ready", []):
        if job["status"] in ("failed", "cancelled"):
            raise SystemExit(f"studio evaluation {job['status']}: {job.get('error')}")
        time.sleep(0.1)
        job = client.get(f"/api/evaluate/{job['id']}?have=").json()
    return time.perf_counter() - start


def _timed_in_thread(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` takes in a new thread, as the studio's worker runs it (torch's threads are set up per
    calling thread: on a loaded machine the two can differ several-fold)."""
    out: list[float] = []

    def run() -> None:
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return out[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="folder with sst2/test.jsonl (default: $VERBALIZE_DATA)")
    p.add_argument("--n", type=int, default=200, help="texts (default 200)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    texts, labels = load("sst2", "test", data_dir(args.data), args.n)
    template = (ROOT / "templates" / "sst2.toml").read_text(encoding="utf-8")
    scorer = Scorer.from_pretrained(None, dtype=Verbalizer().dtype)
    with tempfile.TemporaryDirectory() as tmp:
        folder, data = Path(tmp) / "templates", Path(tmp) / "d.jsonl"
        folder.mkdir()
        (folder / "sst2.toml").write_text(template, encoding="utf-8")
        data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts, labels, strict=True)))
        evaluator = Evaluator(scorer, {"d": LabeledData(data)}, calibrations=["none"])
        clf = Verbalizer(template=loads_template(template, "sst2.toml"), model=scorer)
        clf.predict_proba(texts[:2])
        local, local_thread, studio = [], [], []
        with TestClient(create_app(Studio(TemplateFolder(folder), evaluator))) as client:
            for r in range(args.rounds):
                start = time.perf_counter()
                clf.predict_proba(texts)
                local.append(time.perf_counter() - start)
                local_thread.append(_timed_in_thread(lambda: clf.predict_proba(texts)))
                studio.append(_studio_seconds(client, f"# round {r}\n{template}", args.n))
                print(
                    f"round {r + 1}: in-process {local[-1]:.2f} s (main thread), {local_thread[-1]:.2f} s (a new "
                    f"thread), studio {studio[-1]:.2f} s",
                    flush=True,
                )
            back = _studio_seconds(client, f"# round 0\n{template}", args.n)
    ml, mt, ms = statistics.median(local), statistics.median(local_thread), statistics.median(studio)
    print(
        f"median over {args.rounds} rounds, {len(texts)} SST-2 texts: in-process predict_proba {ml:.2f} s in the "
        f"main thread, {mt:.2f} s in a new thread; studio {ms:.2f} s; studio / in-process {ms / ml:.2f} (main "
        f"thread), {ms / mt:.2f} (new thread) (bar: 1.5); back to an earlier version (cached) {back * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
