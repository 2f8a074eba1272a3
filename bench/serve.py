"""Service benchmark on loopback: gunicorn with micro-batching on and off, service overhead, and a soak.

* throughput: N concurrent clients send real photos for a fixed count; requests/s, p50/p90/p99 and errors,
  batching on vs off (ratio), and gunicorn behind its nginx front (`service.front`, as deployed) vs alone;
* overhead: one request at a time over HTTP vs the bare `Captioner.caption` call in this process (ratio),
  and explain=true requests beside plain ones on the same server;
* soak: 32 clients, `--soak-rounds` rounds of `--soak-requests` requests mixing good photos with seeded
  malformed uploads (tests/fuzz.py: truncated, bit-flipped, padded or random bytes in six formats, three
  transports, odd content types and options): 5xx count, worker restarts, and the worker's resident memory
  after a warm-up and after every round.
Every loop is bounded by a request count and a time limit; it stops by itself.

    make bench-serve [ARGS="--requests 200 --soak-requests 2000"]
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

from service import front as _front
from service.loopback import GunicornServer  # started and stopped as in the real-server tests
from tests import fuzz  # the same malformed uploads the tests send (run from the repository root: make bench-serve)
from tests import images as odd_images

from .common import PHOTOS, ROOT, load_or_build, timed


class Server(GunicornServer):
    """The service under load, with a view of its worker processes."""

    def __init__(self, model_path: str, batch_wait_ms: float, threads: int, front: bool = False,
                 env: dict[str, str] | None = None, root: Path = ROOT):
        super().__init__(model_path, {"CAPTIONER_BATCH_WAIT_MS": str(batch_wait_ms), "CAPTIONER_THREADS": str(threads),
                                      **(env or {})}, front=front, root=root)

    def rss_mb(self) -> float:
        total = 0
        for pid in self.workers():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total / 1024


def request(port: int, method: str, path: str, body: bytes | None = None, ctype: str = "image/jpeg",
            conn: http.client.HTTPConnection | None = None) -> tuple[int, float]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    t0 = time.perf_counter()
    try:
        conn.request(method, path, body=body, headers={"Content-Type": ctype} if body is not None else {})
        resp = conn.getresponse()
        resp.read()
        status = resp.status
    except (OSError, http.client.HTTPException):
        status = 0
    finally:
        if own:
            conn.close()
    return status, time.perf_counter() - t0


def run_clients(client, clients: int) -> float:
    """Run `client` in `clients` threads until all return; the wall time."""
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def load(port: int, bodies: list[tuple[str, bytes, str]], clients: int, time_limit: float) -> tuple[list, float]:
    """Send every body once, spread over `clients` threads with keep-alive connections."""
    results, lock, queue = [], threading.Lock(), list(enumerate(bodies))
    deadline = time.time() + time_limit

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.time() < deadline:
            with lock:
                if not queue:
                    break
                _, (path, body, ctype) = queue.pop()
            status, secs = request(port, "POST", path, body, ctype, conn)
            if status == 0:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            with lock:
                results.append((status, secs))
        conn.close()

    return results, run_clients(client, clients)


def closed_loop(port: int, photo: bytes, clients: int, seconds: float) -> tuple[list[tuple[int, float]], float]:
    """`clients` threads posting `photo` for `seconds`, each waiting for its answer and, after a 503, for its
    Retry-After (as a well-behaved client does): (status, seconds) per request, and the wall time."""
    results, lock, deadline = [], threading.Lock(), time.time() + seconds

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.time() < deadline:
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/captions", body=photo, headers={"Content-Type": "image/jpeg"})
                resp = conn.getresponse()
                resp.read()
                status, wait = resp.status, float(resp.getheader("Retry-After") or 0)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn, status, wait = http.client.HTTPConnection("127.0.0.1", port, timeout=60), 0, 0.0
            with lock:
                results.append((status, time.perf_counter() - t0))
            time.sleep(wait if status == 503 else 0)
        conn.close()

    return results, run_clients(client, clients)


def overload(model_path: str, photo: bytes, seconds: float) -> None:
    """One worker behind its front, 8 clients then 128 for `seconds` each: admitted requests' p99 and
    throughput against the 8-client run, and how fast the refused ones are told (503 + Retry-After)."""
    srv = Server(model_path, 5.0, threads=8, front=True)
    try:
        closed_loop(srv.port, photo, 8, 5)  # warm-up
        runs = {n: closed_loop(srv.port, photo, n, seconds) for n in (8, 128)}
    finally:
        srv.stop()
    for n, (results, secs) in runs.items():
        ok = [t for code, t in results if code == 200]
        refused = [t for code, t in results if code == 503]
        others = len(results) - len(ok) - len(refused)
        print(f"overload, {n:>3} clients, {secs:.0f} s: {len(ok) / secs:5.1f} req/s served, p50/p99 {pct(ok, 50):.0f}/"
              f"{pct(ok, 99):.0f} ms; {len(refused)} refused (503), p99 {pct(refused, 99) if refused else 0:.0f} ms; "
              f"{others} other errors")
    (ok8, s8), (ok128, s128) = [([t for c, t in r if c == 200], s) for r, s in runs.values()]
    print(f"overload ratios, 128 vs 8 clients: throughput {len(ok128) / s128 / (len(ok8) / s8):.2f}x, "
          f"admitted p99 {pct(ok128, 99) / pct(ok8, 99):.2f}x")


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000 if len(values) > 1 else values[0] * 1000


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--soak-requests", type=int, default=1500, help="requests per soak round")
    p.add_argument("--soak-rounds", type=int, default=4)
    p.add_argument("--time-limit", type=float, default=600)
    p.add_argument("--skip-soak", action="store_true", help="throughput and overhead only")
    p.add_argument("--overload-seconds", type=float, default=30, help="per run of the overload test (0: skip)")
    args = p.parse_args()
    model, model_path = load_or_build(args.model)
    if not Path(model_path).is_file():
        sys.exit("bench-serve needs a checkpoint: pass --model or ship models/flickr8k.safetensors")
    photos = [ph.read_bytes() for ph in PHOTOS]
    good = [("/v1/captions", photos[i % 2], "image/jpeg") for i in range(args.requests)]
    print(f"model {model_path}; {args.requests} requests per run, {args.clients} clients, {os.cpu_count()} cores")

    rates = {}
    # gunicorn alone and behind its front alternate twice (the best of each counts), so both see the machine alike
    runs = [("batching on (5 ms)", 5.0, False), ("behind nginx (front)", 5.0, True)] * 2 + [("batching off", 0.0, False)]
    for label, wait, front in [r for r in runs if _front.nginx_path() or not r[2]]:
        srv = Server(model_path, wait, threads=args.clients, front=front)
        try:
            load(srv.port, good[:16], args.clients, 60)  # warm-up
            results, secs = load(srv.port, good, args.clients, args.time_limit)
        finally:
            srv.stop()
        lat = [s for code, s in results if code == 200]
        errors = sum(code != 200 for code, _ in results)
        rates[label] = max(rates.get(label, 0.0), len(lat) / secs)
        print(f"{label:>20}: {rates[label]:6.1f} req/s  p50 {pct(lat, 50):6.0f} ms  p90 {pct(lat, 90):6.0f} ms  "
              f"p99 {pct(lat, 99):6.0f} ms  errors {errors}")
    print(f"micro-batching throughput ratio (on / off): {rates['batching on (5 ms)'] / rates['batching off']:.2f}x")
    if "behind nginx (front)" in rates:
        print(f"front throughput ratio (behind nginx / gunicorn alone): "
              f"{rates['behind nginx (front)'] / rates['batching on (5 ms)']:.2f}x")

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    bare = timed(lambda: model.caption([photos[0]], method="beam", beam_size=3), repeat=20, warmup=3)
    srv = Server(model_path, 5.0, threads=4)
    try:
        single = statistics.median([request(srv.port, "POST", "/v1/captions", photos[0])[1] for _ in range(20)])
        explained = statistics.median([request(srv.port, "POST", "/v1/captions?explain=true", photos[0])[1]
                                       for _ in range(10)])
        plain_again = statistics.median([request(srv.port, "POST", "/v1/captions", photos[0])[1] for _ in range(20)])
    finally:
        srv.stop()
    print(f"single request: HTTP {1000 * single:.1f} ms vs bare Captioner.caption {1000 * bare:.1f} ms "
          f"-> service overhead {single / bare:.2f}x ({1000 * (single - bare):.1f} ms)")
    print(f"explain=true (7x7 occlusion, n_best 1): {1000 * explained:.0f} ms vs plain {1000 * single:.1f} ms "
          f"({explained / single:.1f}x); plain again after explain requests: {1000 * plain_again:.1f} ms")

    if args.overload_seconds and _front.nginx_path():
        overload(model_path, photos[0], args.overload_seconds)
    if args.skip_soak:
        return
    rng = random.Random(0)
    bad = fuzz.cases(PHOTOS[0], args.soak_requests, seed=0)  # malformed uploads, as in the real-server test
    bad += [("/v1/captions", odd_images.png_bomb(), "image/png"), ("/v1/captions", odd_images.tiff_flipped(), "image/tiff")]
    mix = [good[i % len(good)] if rng.random() < 0.6 else bad[i % len(bad)] for i in range(args.soak_requests)]
    srv = Server(model_path, 5.0, threads=32)
    try:
        boot_rss = srv.rss_mb()
        load(srv.port, mix[:300], 32, 120)  # warm-up: every request thread and allocator arena exists
        before_workers, before_rss = srv.workers(), srv.rss_mb()
        results, secs, rss = [], 0.0, []
        for _ in range(args.soak_rounds):
            part, part_secs = load(srv.port, mix, 32, args.time_limit)
            results, secs = results + part, secs + part_secs
            rss.append(srv.rss_mb())
        after_workers = srv.workers()
    finally:
        srv.stop()
    codes: dict[int, int] = {}
    for code, _ in results:
        codes[code] = codes.get(code, 0) + 1
    five = sum(n for c, n in codes.items() if c >= 500 or c == 0)
    print(f"soak: {len(results)} requests from 32 clients in {secs:.0f} s, status counts {dict(sorted(codes.items()))}; "
          f"5xx/connection errors {five}; worker restarts {0 if before_workers == after_workers else 'YES'} "
          f"(pids {before_workers} -> {after_workers})")
    print(f"worker RSS: {boot_rss:.0f} MB after boot, {before_rss:.0f} MB after a 300-request warm-up, then after "
          f"each round of {len(mix)}: " + ", ".join(f"{x:.0f}" for x in rss) + " MB")


if __name__ == "__main__":
    main()
