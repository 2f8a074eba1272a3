"""The client side of `make scale-test` (standard library only): load through the balancer, then a replica
killed mid-run. Run by docker/scale-test.sh, which starts docker/compose.scale.yaml and passes the commands
that read a replica's /metrics and kill one.

1. spread: concurrent requests; each must succeed, and each replica's /metrics must show it served some.
2. failover: concurrent requests; a third of the way in, the balancer's count of requests in flight on
   replica 2 is read and replica 2 is killed (SIGKILL). Requests that fail must be no more than were in
   flight on it; every later request must succeed on replica 1.
Prints one JSON summary; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shlex
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CAPTIONS = "/v1/captions"


def multipart(photo: bytes) -> tuple[bytes, str]:
    boundary = "scale-test-boundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"photo.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + photo + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def caption(url: str, body: bytes, content_type: str) -> tuple[int, float]:
    """(HTTP status or 0 for a connection error, seconds)."""
    t0 = time.perf_counter()
    req = urllib.request.Request(url + CAPTIONS, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            json.load(resp)
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError:
        status = 0
    return status, time.perf_counter() - t0


def servers(stats_url: str) -> dict[str, dict]:
    """HAProxy's CSV stats of the backend's servers: status (UP/DOWN), scur (requests in flight), ..."""
    with urllib.request.urlopen(stats_url + ";csv", timeout=5) as resp:
        rows = csv.DictReader(io.StringIO(resp.read().decode().lstrip("# ")))
        return {r["svname"]: r for r in rows if r["pxname"] == "captioner" and r["svname"] not in ("FRONTEND", "BACKEND")}


def served(metrics_cmd: str, replica: str) -> int:
    """Caption requests answered 200 by `replica` (captioner-N), from its own /metrics."""
    out = subprocess.run(shlex.split(metrics_cmd.format(n=replica.rsplit("-", 1)[1])), capture_output=True, text=True,
                         check=True, timeout=30).stdout
    prefix = f'captioner_requests_total{{endpoint="{CAPTIONS}",status="200"}}'
    return sum(int(float(line.split()[-1])) for line in out.splitlines() if line.startswith(prefix))


def wait_until_up(stats_url: str, names: list[str], timeout_s: float) -> float:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        try:
            if all(servers(stats_url).get(n, {}).get("status") == "UP" for n in names):
                return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(1)
    raise SystemExit(f"scale test: replicas {names} not all UP behind the balancer after {timeout_s:.0f} s")


def load(url: str, body: bytes, content_type: str, n: int, clients: int, at=None, when: int = 0) -> list[tuple]:
    """n requests from `clients` threads; `at()` runs once, after `when` requests have finished. Returns
    (finished at, status, seconds) per request."""
    done, lock, fired = [], threading.Lock(), threading.Event()

    def one(_):
        status, seconds = caption(url, body, content_type)
        with lock:
            done.append((time.perf_counter(), status, seconds))
            go = at is not None and len(done) >= when and not fired.is_set()
            if go:
                fired.set()
        if go:
            at()

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(n)))
    return done


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True, help="the balancer")
    p.add_argument("--stats", required=True, help="HAProxy's stats page")
    p.add_argument("--metrics-cmd", required=True, help="prints replica {n}'s /metrics (n = 1, 2)")
    p.add_argument("--kill-cmd", required=True, help="kills replica 2")
    p.add_argument("--photo", default="tests/fixtures/chelsea.jpg")
    p.add_argument("--requests", type=int, default=96)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--ready-timeout", type=float, default=240)
    args = p.parse_args()
    body, ctype = multipart(Path(args.photo).read_bytes())
    names = ["captioner-1", "captioner-2"]
    summary: dict = {"ready_after_s": round(wait_until_up(args.stats, names, args.ready_timeout), 1)}
    failures: list[str] = []

    before = {n: served(args.metrics_cmd, n) for n in names}
    t0 = time.perf_counter()
    spread = load(args.url, body, ctype, args.requests, args.clients)
    wall = time.perf_counter() - t0
    per_replica = {n: served(args.metrics_cmd, n) - before[n] for n in names}
    ok = sum(s == 200 for _, s, _ in spread)
    summary["spread"] = {"requests": len(spread), "ok": ok, "req_per_s": round(len(spread) / wall, 1),
                         "served_per_replica": per_replica}
    if ok != len(spread):
        failures.append(f"spread: {len(spread) - ok} of {len(spread)} requests failed with both replicas up")
    if sum(per_replica.values()) != ok:
        failures.append(f"spread: replicas' /metrics count {sum(per_replica.values())} answers, clients got {ok}")
    if min(per_replica.values()) == 0:
        failures.append(f"spread: the balancer sent nothing to one replica: {per_replica}")

    kill: dict = {}

    def in_flight() -> int:
        return int(servers(args.stats)["captioner-2"]["scur"] or 0)

    def kill_replica_2():
        before = in_flight()
        kill["at"] = time.perf_counter()
        subprocess.run(shlex.split(args.kill_cmd), check=True, capture_output=True, timeout=30)
        # requests sent to it while the kill command ran count too: HAProxy still holds them right after
        kill["in_flight"] = max(before, in_flight())

    failover = load(args.url, body, ctype, args.requests, args.clients, at=kill_replica_2, when=args.requests // 3)
    failed = [(t, s) for t, s, _ in failover if s != 200]
    down_after = None
    for _ in range(30):
        if servers(args.stats)["captioner-2"]["status"].startswith("DOWN"):
            down_after = round(time.perf_counter() - kill["at"], 1)
            break
        time.sleep(0.5)
    summary["failover"] = {"requests": len(failover), "failed": len(failed),
                           "statuses_failed": sorted({s for _, s in failed}),
                           "in_flight_on_killed_replica": kill["in_flight"],
                           "finished_after_kill": sum(t > kill["at"] for t, _, _ in failover),
                           "marked_down_after_s": down_after}
    if len(failed) > kill["in_flight"]:
        failures.append(f"failover: {len(failed)} requests failed, only {kill['in_flight']} were in flight on the killed replica")
    if down_after is None:
        failures.append("failover: the balancer never marked the killed replica DOWN")
    print(json.dumps(summary, indent=2))
    for f in failures:
        print("SCALE TEST FAILED:", f, file=sys.stderr)
    if not failures:
        print("SCALE TEST PASSED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
