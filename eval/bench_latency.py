"""Latency of one short text: in process, through the service, and the service's throughput under 32 clients.

    python eval/bench_latency.py --data ../shared/data                    # dtype auto, embedded model
    python eval/bench_latency.py --data ../shared/data --dtype float32

Rows (issue 24, bar 3), all on the embedded model and the shipped sst2 template, one process per part:
- bare forward: ``model(input_ids, logits_to_keep=1)`` of the text's whole prompt at batch 1 (the least a
  classifier of this prompt must run), interleaved call by call with
- in process: ``Verbalizer.predict([text])``; the ratio is taken per pair of calls (median), so the drift of a
  shared CPU cancels; bar: <= 1.3x;
- service, one client: ``POST /v1/classify`` with one text, sequentially, against ``verbalize serve`` in a
  subprocess on the same machine (the server's own dtype is the same); bar: <= 1.3x in process + 5 ms;
- service, 32 closed-loop clients (each sends its next text when its answer came back, keep-alive
  connections, distinct SST-2 texts) against offline throughput (``predict`` of the same texts in one call),
  in --rounds rounds of (offline, service) one after the other; the share is the median of the rounds'
  ratios (a shared CPU's speed drifts by 5-10% between runs); bar: >= 85%.
p50 over --calls calls (100). The CPU's features and the dtype (auto's choice and rates) are printed. Both the
process and the service run --threads torch threads (default 1: on a shared, busy CPU two threads wait on each
other, and a batch-1 forward of the embedded model took 1.5 s p50 instead of 0.07 s).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from data import data_dir, load

from verbalize import Verbalizer
from verbalize.engine.machine import describe_cpu

TEXT = (
    "A gripping, beautifully acted film that never lets up, and its quiet ending stays with you for days."  # 18 words
)
ROOT = Path(__file__).resolve().parent.parent


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def in_process(clf: Verbalizer, calls: int) -> tuple[list[float], list[float]]:
    """Seconds per bare forward and per ``predict([TEXT])``, interleaved call by call."""
    scorer = clf.scorer_
    prompt = clf.template_.render(TEXT)
    ids = torch.tensor([scorer.encode([prompt], None, "").ids[0]])  # (1, L) the tokens predict's model reads
    bare, ours = [], []
    with torch.inference_mode():
        for _ in range(5):  # warm-up
            scorer.model(input_ids=ids, logits_to_keep=1)
            clf.predict([TEXT])
    for _ in range(calls):
        with torch.inference_mode():
            t = time.perf_counter()
            scorer.model(input_ids=ids, logits_to_keep=1)
            bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        clf.predict([TEXT])
        ours.append(time.perf_counter() - t)
    print(f"prompt: {ids.shape[1]} tokens ({len(TEXT.split())} words of text)")
    return bare, ours


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(dtype: str, port: int, threads: int) -> subprocess.Popen:
    env = dict(os.environ, VERBALIZE_DTYPE=dtype if dtype != "auto" else "")
    cmd = [sys.executable, "-m", "verbalize.cli.main", "serve", "sst2", "--port", str(port), "--reload-interval", "0"]
    cmd += ["--log-level", "warning", "--threads", str(threads)]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the service exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the service did not get ready in 300 s")


def classify(conn: http.client.HTTPConnection, text: str) -> None:
    body = json.dumps({"template": "sst2", "texts": [text]})
    conn.request("POST", "/v1/classify", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    raw = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"{resp.status}: {raw[:300]!r}")


def one_client(port: int, calls: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(5):
        classify(conn, TEXT)
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        classify(conn, TEXT)
        out.append(time.perf_counter() - t)
    conn.close()
    return out


def batch_totals(port: int) -> dict[str, float]:
    """The service's batch counters (Prometheus text): batches, texts in them, model seconds."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    want = {"verbalize_batch_texts_count": "batches", "verbalize_batch_texts_sum": "texts"}
    want["verbalize_batch_seconds_sum"] = "seconds"
    out = dict.fromkeys(want.values(), 0.0)
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in want:
            out[want[name]] += float(value)
    return out


def many_clients(port: int, texts: list[str], clients: int) -> float:
    """Texts per second answered to ``clients`` closed-loop clients that together send ``texts`` once."""
    lock, queue = threading.Lock(), list(reversed(texts))

    def work() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                if not queue:
                    break
                text = queue.pop()
            classify(conn, text)
        conn.close()

    threads = [threading.Thread(target=work) for _ in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return len(texts) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="data folder (or $VERBALIZE_DATA): SST-2 texts for throughput")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "int8"])
    ap.add_argument("--calls", type=int, default=100, help="calls per latency row (p50)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of (offline, 32 clients), interleaved (3)")
    ap.add_argument("--n", type=int, default=512, help="texts for the throughput rows")
    ap.add_argument("--parts", nargs="+", default=["process", "service"], choices=["process", "service"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads, in process and in the service (1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    texts, _ = load("sst2", "test", data_dir(args.data), args.n)

    clf = Verbalizer(template="sst2", dtype=args.dtype)
    clf.predict([TEXT])
    choice = clf.scorer_.dtype_choice
    print(f"CPU: {describe_cpu()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"dtype {args.dtype}: runs {clf.scorer_.dtype}" + (f"; {choice.summary()}" if choice else ""))
    rows: list[tuple[str, float, str]] = []
    cpu_rows: list[tuple[str, float]] = []
    if "process" in args.parts:
        bare, ours = in_process(clf, args.calls)
        ratio = p50([o / b for o, b in zip(ours, bare, strict=True)])
        rows += [
            ("bare batch-1 forward of the prompt (logits_to_keep=1)", p50(bare) * 1e3, ""),
            ("in process: predict([text])", p50(ours) * 1e3, f"{ratio:.2f}x bare (median of paired ratios; bar 1.3x)"),
        ]
        t, c = time.perf_counter(), time.process_time()
        clf.predict(texts)
        offline, offline_cpu = len(texts) / (time.perf_counter() - t), len(texts) / (time.process_time() - c)
        c = time.process_time()
        for _ in range(args.calls):
            clf.predict([TEXT])
        cpu_rows = [("in process: predict([text]), CPU ms per call", (time.process_time() - c) / args.calls * 1e3)]
        cpu_rows.append((f"offline: predict of {len(texts)} texts, texts per CPU second", offline_cpu))
    if "service" in args.parts:
        port = free_port()
        server = start_server(clf.scorer_.dtype if args.dtype != "auto" else "auto", port, args.threads)
        try:
            c = cpu_seconds(server.pid)
            single = one_client(port, args.calls)
            per_call = (cpu_seconds(server.pid) - c) / (args.calls + 5)  # with the 5 warm-up calls
            in_process_too = "process" in args.parts
            offline_runs, served_runs, shares = [offline if in_process_too else float("nan")], [], []
            for r in range(args.rounds):
                if r and in_process_too:  # offline again, beside each service round (the CPU drifts)
                    t = time.perf_counter()
                    clf.predict(texts)
                    offline_runs.append(len(texts) / (time.perf_counter() - t))
                c, before = cpu_seconds(server.pid), batch_totals(port)
                t = time.perf_counter()
                served_runs.append(many_clients(port, texts, args.clients))
                wall = time.perf_counter() - t
                served_cpu = len(texts) / max(cpu_seconds(server.pid) - c, 1e-9)
                done = {k: v - before[k] for k, v in batch_totals(port).items()}
                per_batch = done["texts"] / max(done["batches"], 1)
                shares.append(share := served_runs[-1] / offline_runs[-1])
                print(
                    f"round {r + 1}: offline {offline_runs[-1]:.1f} texts/s; service, {args.clients} clients, "
                    f"{served_runs[-1]:.1f} texts/s ({100 * share:.0f}%): {done['batches']:.0f} batches, "
                    f"{per_batch:.1f} texts per batch, model busy {100 * done['seconds'] / wall:.0f}% of the wall time"
                )
            offline, served = p50(offline_runs), p50(served_runs)
            cpu_rows.append(("service process, one client: CPU ms per request", per_call * 1e3))
            cpu_rows.append((f"service process, {args.clients} clients: texts per CPU second", served_cpu))
        finally:
            server.terminate()
            server.wait(30)
        bar = f"bar: <= 1.3 x in process + 5 ms = {1.3 * p50(ours) * 1e3 + 5:.1f} ms" if "process" in args.parts else ""
        rows.append(("service, one client: POST /v1/classify, one text", p50(single) * 1e3, bar))
        if "process" in args.parts:
            rows.append((f"offline: predict of {len(texts)} texts in one call (texts/s, median)", offline, ""))
        note = f"{100 * p50(shares):.0f}% of offline (median of {len(shares)} rounds' ratios; bar 85%)"
        rows.append(
            (f"service, {args.clients} closed-loop clients (texts/s)", served, note if "process" in args.parts else "")
        )
    print("\n| row | p50 ms (or texts/s) | note |\n|---|---:|---|")
    for name, value, note in rows:
        print(f"| {name} | {value:.1f} | {note} |")
    # On a shared, busy CPU wall times measure the neighbours too; CPU time measures the work done
    print("\n| CPU time (other processes do not count) | value |\n|---|---:|")
    for name, value in cpu_rows:
        print(f"| {name} | {value:.1f} |")


if __name__ == "__main__":
    main()
