"""`verbalize serve` against hostile clients (issue 20, bar 2), with the embedded model on loopback.

    python eval/bench_hostile.py                     # ~2-3 min on 2 busy cores
    python eval/bench_hostile.py --connections 500   # a smaller flood

Starts ``verbalize serve sst2`` in a subprocess on a free 127.0.0.1 port (default limits), then:
(a) a 40,000-character text is sent, and one second later another client's one-word request: both
    latencies are printed (with the per-text cap the long text is refused at admission). The same is
    done with a text exactly at the cap (``--max-text-chars``, served): the one-word request may wait
    at most one batch's time (the long text's own latency) + 1 s;
(b) ``--connections`` idle half-open connections (half a request head each, loopback, closed at the
    end): ``/healthz`` must answer within 1 s meanwhile; how many the server closed is printed;
(c) the server's RSS (sampled every 0.2 s) against its idle RSS after warm-up: within 10%;
and prints a table with each figure, the server log's size and the CPU (lscpu: avx2/avx512_vnni/amx).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from verbalize.engine.machine import describe_cpu

SENTENCE = "the film was long and the acting uneven but the music carried it through to a quiet end"
WORDS = SENTENCE.split(" ")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(port: int, method: str, path: str, body: Any = None, timeout: float = 600) -> tuple[int, float, Any]:
    """(status, seconds, decoded answer) of one request on a fresh connection."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    seconds = time.perf_counter() - start
    try:
        return resp.status, seconds, json.loads(raw)
    except ValueError:
        return resp.status, seconds, raw.decode(errors="replace")


def classify(port: int, text: str) -> tuple[int, float, Any]:
    return request(port, "POST", "/v1/classify", {"template": "sst2", "texts": [text]})


def text_of(n: int, seed: int) -> str:
    rng = random.Random(seed)
    out = " ".join(rng.choice(WORDS) for _ in range(n // 3))
    return out[:n]


class RssSampler:
    """The server's RSS every 0.2 s in a thread; ``peak`` since the last :meth:`reset`."""

    def __init__(self, pid: int):
        self.proc = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> int:
        return int(self.proc.memory_info().rss)

    def reset(self) -> None:
        self.peak = self.now()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.peak = max(self.peak, self.now())
            except psutil.Error:
                return

    def stop(self) -> None:
        self._stop.set()


def long_then_short(port: int, long_text: str) -> tuple[tuple[int, float, Any], tuple[int, float, Any]]:
    """Send ``long_text``, and a one-word request from another client one second later."""
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(classify, port, long_text)
        time.sleep(1.0)
        second = pool.submit(classify, port, "great")
        return first.result(), second.result()


def flood(port: int, n: int) -> tuple[list[float], int, int]:
    """Open ``n`` half-open connections; /healthz latencies meanwhile; (latencies, opened, closed by server)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, n + 256) if hard != resource.RLIM_INFINITY else n + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    held: list[socket.socket] = []
    latencies: list[float] = []
    try:
        for i in range(n):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n")  # never finished
                held.append(sock)
            except OSError:
                break
            if i % 500 == 499:
                latencies.append(request(port, "GET", "/healthz", timeout=10)[1])
        for _ in range(5):
            latencies.append(request(port, "GET", "/healthz", timeout=10)[1])
            time.sleep(0.1)
        closed = 0
        for sock in held:
            sock.setblocking(False)
            try:
                closed += sock.recv(1) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        return latencies, len(held), closed
    finally:
        for sock in held:
            sock.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long-chars", type=int, default=40_000)
    parser.add_argument("--max-text-chars", type=int, default=None, help="the server's cap (default: its default)")
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--ready-timeout", type=float, default=300)
    args = parser.parse_args()
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="bench_hostile_")) / "server.log"
    cmd = [sys.executable, "-m", "verbalize.cli", "serve", "sst2", "--host", "127.0.0.1", "--port", str(port),
           "--reload-interval", "0", "--log-level", "warning"]  # fmt: skip
    if args.max_text_chars:
        cmd += ["--max-text-chars", str(args.max_text_chars)]
    with open(log, "wb") as out:
        server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    rows: list[tuple[str, str, str]] = []
    try:
        deadline = time.monotonic() + args.ready_timeout
        while True:
            try:
                if request(port, "GET", "/readyz", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
                raise SystemExit("the server did not become ready")
            time.sleep(0.5)
        rss = RssSampler(server.pid)
        for _ in range(3):
            classify(port, "a warm-up text")
        idle = rss.now()
        rss.reset()
        alone = sorted(classify(port, "great")[1] for _ in range(3))[1]
        rows.append(("one-word request alone (median of 3)", f"{alone:.2f} s", ""))

        (s1, t1, a1), (s2, t2, _) = long_then_short(port, text_of(args.long_chars, 0))
        code = a1.get("error", "") if isinstance(a1, dict) else ""
        rows.append((f"(a) {args.long_chars:,}-char text", f"HTTP {s1} {code} in {t1:.2f} s", ""))
        rows.append(("(a) one-word request sent 1 s later", f"HTTP {s2} in {t2:.2f} s",
                     "PASS" if s2 == 200 and t2 - alone <= 1.0 else "FAIL"))  # fmt: skip
        peaks = {"long": rss.peak}
        rss.reset()
        cap = args.max_text_chars or int(re_cap(a1) or 4000)
        (s1, t1, _), (s2, t2, _) = long_then_short(port, text_of(cap, 1))
        peaks["cap"] = rss.peak
        rss.reset()
        rows.append((f"(a) {cap:,}-char text (at the cap: served)", f"HTTP {s1} in {t1:.2f} s", "= one batch"))
        rows.append(("(a) one-word request sent 1 s later: delay", f"HTTP {s2}, {t2 - alone:.2f} s over alone",
                     "PASS" if s2 == 200 and t2 - alone <= t1 + 1.0 else "FAIL"))  # fmt: skip

        before_flood = rss.now()
        latencies, opened, closed = flood(port, args.connections)
        peaks["flood"] = rss.peak
        rows.append(("(b) half-open connections opened / closed by server", f"{opened} / {closed}", ""))
        worst = max(latencies)
        rows.append(("(b) /healthz during the flood (worst)", f"{worst:.3f} s",
                     "PASS" if opened >= args.connections and worst <= 1.0 else "FAIL"))  # fmt: skip
        status, after, _ = classify(port, "great")
        rows.append(("(b) one-word request after the flood", f"HTTP {status} in {after:.2f} s", ""))

        now = rss.now()
        mb = " / ".join(
            f"{x / 2**20:.0f}" for x in (idle, peaks["long"], peaks["cap"], before_flood, peaks["flood"], now)
        )
        rows.append(("(c) RSS idle / peak: long, at cap / before, peak flood / end", f"{mb} MB", ""))
        rows.append(
            (
                "(c) long text and flood: peak over the RSS before",
                f"{peaks['long'] / idle - 1:+.1%}, {peaks['flood'] / before_flood - 1:+.1%}",
                "PASS" if peaks["long"] <= 1.1 * idle and peaks["flood"] <= 1.1 * before_flood else "FAIL",
            )
        )
        rows.append(
            (
                "(c) a served text at the cap: peak / end over idle",
                f"{peaks['cap'] / idle - 1:+.1%} / {now / idle - 1:+.1%}",
                "(not the bar: it is served)",
            )
        )
        rss.stop()
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    rows.append(("server log", f"{log.stat().st_size:,} bytes", ""))
    rows.append(("CPU", f"{describe_cpu()}, {os.cpu_count()} CPUs", ""))
    rows.append(("load average (1, 5, 15 min)", " ".join(f"{x:.1f}" for x in os.getloadavg()), ""))
    width = max(len(r[0]) for r in rows)
    for name, value, verdict in rows:
        print(f"{name:<{width}}  {value:<36}  {verdict}")
    return 0 if all(r[2] != "FAIL" for r in rows) else 1


def re_cap(answer: Any) -> str | None:
    """The cap named in a 413 text_too_long message ("at most N per text")."""
    import re

    found = re.search(r"at most (\d+) per text", answer.get("message", "")) if isinstance(answer, dict) else None
    return found.group(1) if found else None


if __name__ == "__main__":
    raise SystemExit(main())
