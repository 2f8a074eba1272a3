"""Slow and abusive clients, with nothing but sockets: what `tests/test_front.py`, `make docker-test` and
`make scale-test` send at a live service (loopback only, bounded in count and time). Standard library only,
so the Docker scripts run it with the system Python:

    python3 -m tests.abuse --url http://127.0.0.1:8000 [--slow 64] [--photo tests/fixtures/chelsea.jpg]

prints one line per check and exits 1 if any fails.
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHOTO = ROOT / "tests" / "fixtures" / "chelsea.jpg"


def _connect(url: str) -> socket.socket:
    host, port = url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def _host(url: str) -> bytes:
    return url.split("//", 1)[1].rstrip("/").encode()


def slow_headers(url: str, n: int) -> list[socket.socket]:
    """n connections that send half a request's headers and then wait."""
    socks = []
    for _ in range(n):
        s = _connect(url)
        s.sendall(b"POST /v1/captions HTTP/1.1\r\nHost: " + _host(url) + b"\r\nContent-Type: image/jpeg\r\n")
        socks.append(s)
    return socks


def slow_bodies(url: str, n: int, photo: bytes) -> list[socket.socket]:
    """n connections that send whole headers and the first 100 bytes of a JPEG body, then wait."""
    socks = []
    for _ in range(n):
        s = _connect(url)
        s.sendall(b"POST /v1/captions HTTP/1.1\r\nHost: " + _host(url) + b"\r\nContent-Type: image/jpeg\r\n"
                  b"Content-Length: " + str(len(photo)).encode() + b"\r\n\r\n" + photo[:100])
        socks.append(s)
    return socks


def seconds_until_closed(socks: list[socket.socket], limit: float) -> list[float | None]:
    """For each socket, when the server closed it (or answered: an answer ends the stall too), or None if it
    was still open after `limit` seconds."""
    start, closed = time.perf_counter(), [None] * len(socks)
    for s in socks:
        s.setblocking(False)
    while time.perf_counter() - start < limit and None in closed:
        for i, s in enumerate(socks):
            if closed[i] is None:
                try:
                    if s.recv(65536) is not None:
                        closed[i] = time.perf_counter() - start
                except BlockingIOError:
                    pass
                except OSError:
                    closed[i] = time.perf_counter() - start
        time.sleep(0.05)
    for s in socks:
        s.close()
    return closed


def caption(url: str, photo: bytes, timeout: float = 30) -> tuple[int, float]:
    """A normal request: (status, seconds); status 0 when it timed out or the connection failed."""
    req = urllib.request.Request(url.rstrip("/") + "/v1/captions", data=photo, headers={"Content-Type": "image/jpeg"})
    t0 = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status, time.perf_counter() - t0
    except urllib.error.HTTPError as exc:
        return exc.code, time.perf_counter() - t0
    except OSError:  # URLError, a timeout, a reset
        return 0, time.perf_counter() - t0


def raw_exchange(url: str, payload: bytes, wait: float = 15) -> tuple[int | None, bytes]:
    """Send `payload`, read until the server closes or `wait` passes: (HTTP status or None, body start)."""
    s = _connect(url)
    s.settimeout(wait)
    data = b""
    try:
        s.sendall(payload)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data and b"Connection: close" not in data and len(data) > 64:
                break
    except (TimeoutError, OSError):
        pass
    finally:
        s.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else None
    return status, data.split(b"\r\n\r\n", 1)[-1][:200]


def abusive_requests(url: str) -> dict[str, bytes]:
    """The other abusive inputs, each as raw bytes."""
    host = _host(url)
    head = b"POST /v1/captions HTTP/1.1\r\nHost: " + host + b"\r\n"
    boundary = uuid.uuid4().hex.encode()
    parts = b"".join(b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\nx\r\n" % i
                     for i in range(10_000)) + b"--" + boundary + b"--\r\n"
    return {
        "headers of 1 MB": head + b"X-Big: " + b"a" * 1_000_000 + b"\r\n\r\n",
        "10,000 headers": head + b"".join(b"X-H%d: v\r\n" % i for i in range(10_000)) + b"\r\n",
        "Content-Length over the body": head + b"Content-Type: image/jpeg\r\nContent-Length: 5000\r\n\r\n" + b"x" * 100,
        "Content-Length under the body": head + b"Content-Type: image/jpeg\r\nContent-Length: 10\r\n\r\n" + b"x" * 5000,
        "multipart with 10,000 parts": head + b"Content-Type: multipart/form-data; boundary=" + boundary
        + b"\r\nContent-Length: " + str(len(parts)).encode() + b"\r\n\r\n" + parts,
    }


def endless_chunked(url: str, seconds: float = 20) -> tuple[int | None, float]:
    """A chunked body that never ends: 64 KB chunks until the server answers or closes: (status, seconds)."""
    s = _connect(url)
    s.sendall(b"POST /v1/captions HTTP/1.1\r\nHost: " + _host(url) + b"\r\nContent-Type: image/jpeg\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n")
    chunk, t0, data = b"10000\r\n" + b"x" * 65536 + b"\r\n", time.perf_counter(), b""
    s.settimeout(1.0)
    try:
        while time.perf_counter() - t0 < seconds and not data:
            if select.select([s], [], [], 0)[0]:
                data = s.recv(4096) or b"closed"
                break
            s.sendall(chunk)
    except OSError:  # reset, or a send that timed out: the server stopped reading
        pass
    finally:
        s.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else None
    return status, time.perf_counter() - t0


def idle_keepalive(url: str, n: int) -> list[socket.socket]:
    """n keep-alive connections that each ask for /healthz once and then stay open, idle."""
    socks = []
    for _ in range(n):
        s = _connect(url)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: " + _host(url) + b"\r\n\r\n")
        s.recv(4096)
        socks.append(s)
    return socks


def check_slowloris(url: str, n: int, deadline: float, photo: bytes) -> dict:
    stalled = slow_headers(url, n) + slow_bodies(url, n, photo)
    time.sleep(0.5)
    status, seconds = caption(url, photo)
    closed = seconds_until_closed(stalled, deadline + 2)
    still_open = sum(c is None for c in closed)
    return {"check": "slowloris", "slow_connections": len(stalled), "normal_status": status,
            "normal_seconds": round(seconds, 2), "closed_after_s_max": round(max(c or 0 for c in closed), 1),
            "still_open": still_open, "ok": status == 200 and seconds <= 2 and still_open == 0}


def check_abusive(url: str, deadline: float, photo: bytes) -> dict:
    answers = {name: raw_exchange(url, payload, wait=deadline)[0] for name, payload in abusive_requests(url).items()}
    answers["endless chunked body"] = endless_chunked(url, seconds=deadline)[0]
    status, seconds = caption(url, photo)
    ok = all(a is None or 400 <= a < 500 for a in answers.values()) and status == 200
    return {"check": "abusive inputs", "answers (None: closed)": answers, "normal_status": status, "ok": ok}


def check_idle(url: str, n: int, deadline: float, photo: bytes) -> dict:
    idle = idle_keepalive(url, n)
    status, seconds = caption(url, photo)
    closed = seconds_until_closed(idle, deadline + 2)
    still_open = sum(c is None for c in closed)
    return {"check": "idle keep-alive", "connections": n, "normal_status": status, "normal_seconds": round(seconds, 2),
            "closed_after_s_max": round(max(c or 0 for c in closed), 1), "still_open": still_open,
            "ok": status == 200 and seconds <= 2 and still_open == 0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--slow", type=int, default=64, help="slow-header and slow-body connections, each")
    p.add_argument("--deadline", type=float, default=15, help="stalled connections must be closed within this")
    p.add_argument("--abusive", action="store_true", help="also the other abusive inputs")
    p.add_argument("--idle", type=int, default=0, help="also this many idle keep-alive connections")
    p.add_argument("--photo", default=str(PHOTO))
    args = p.parse_args(argv)
    photo = Path(args.photo).read_bytes()
    results = [check_slowloris(args.url, args.slow, args.deadline, photo)]
    if args.abusive:
        results.append(check_abusive(args.url, args.deadline, photo))
    if args.idle:
        results.append(check_idle(args.url, args.idle, args.deadline + 5, photo))
    for result in results:
        print(json.dumps(result))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
