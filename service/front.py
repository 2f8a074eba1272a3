"""The service as it is deployed: nginx in front of gunicorn, so that no request thread ever waits on a client.

    python -m service.front          (the Docker image's entrypoint; `make serve`)

gunicorn's threads block while they read a request, so a client that sends half its headers, or a body one
byte at a time, holds a thread for as long as it likes: a dozen such sockets stop a worker. nginx reads each
request whole first (headers within `header_timeout_s`, the body with pauses of at most `body_timeout_s`,
buffered to disk past 1 MB, at most `max_body_mb`), answers what breaks a limit itself (408 or a closed
connection, 400, 413, 429, each as the service's JSON error), and hands gunicorn, on a unix socket, only
complete requests. nginx is event-driven, so a thousand idle sockets cost it memory, not threads. It also
hands gunicorn at most `max_inflight` requests at once and answers the rest at once with 503 and
`Retry-After`, so overload is refused in milliseconds instead of queued without end (health checks and
metrics excepted: a busy replica is not a dead one).

This process starts both, echoes nginx's access log (one JSON line per request), counts the answers nginx
gave on its own by status into `front_stats` (a small JSON file the workers' /metrics reads), forwards
SIGTERM (nginx finishes in-flight requests, gunicorn drains), and exits if either child dies, so the
container restarts whole. Without nginx on PATH it runs gunicorn alone and says that this is for
development only.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "service" / "gunicorn.conf.py")]
APP = "service.app:create_app()"

# nginx's own answers, as the service's JSON errors: nginx status -> (status sent, code, message). A stalled
# connection (408) is simply closed: error_page cannot run before a request line has been read.
FRONT_ERRORS = {
    400: (400, "bad_request", "the request is malformed"),
    494: (400, "headers_too_large", "the request's headers are over {max_header_kb} KB"),
    413: (413, "payload_too_large", "request body is over the {max_body_mb:g} MB limit"),
    429: (429, "too_many_connections", "too many requests in flight from this address"),
    502: (503, "unavailable", "the service is at capacity, or starting; retry after the Retry-After seconds"),
    504: (503, "timeout", "the service did not answer in time"),
}


def _error_body(code: str, message: str) -> str:
    return json.dumps({"error": {"code": code, "message": message}}).replace("'", "\\'")


def nginx_config(s: Settings, workdir: Path, upstream: Path) -> str:
    """nginx.conf for the settings' limits, with every path it writes under `workdir` (read-only root)."""
    errors = "\n".join(
        f"        error_page {status} ={sent} /.front/{status};\n        location = /.front/{status} {{ internal; "
        f"default_type application/json; {'add_header Retry-After 1 always; ' if sent == 503 else ''}return {sent} "
        f"'{_error_body(code, message.format(max_body_mb=s.max_body_mb, max_header_kb=s.max_header_kb))}'; }}"
        for status, (sent, code, message) in FRONT_ERRORS.items())
    temp = "\n".join(f"    {kind}_temp_path {workdir / kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""daemon off;
worker_processes 1;
pid {workdir / "nginx.pid"};
error_log stderr error;
events {{ worker_connections 8192; }}
http {{
    log_format front escape=json '{{"time":"$time_iso8601","client":"$remote_addr","request":"$request",'
        '"status":$status,"upstream_status":"$upstream_status","bytes":$body_bytes_sent,"seconds":$request_time}}';
    access_log /dev/stdout front;
{temp}
    server_tokens off;
    client_header_timeout {s.header_timeout_s:g}s;
    client_body_timeout {s.body_timeout_s:g}s;
    client_header_buffer_size 4k;
    large_client_header_buffers 4 {s.max_header_kb}k;
    client_max_body_size {int(s.max_body_mb * 1024)}k;
    client_body_buffer_size 1m;
    keepalive_timeout {s.keepalive_timeout_s:g}s;
    send_timeout 30s;
    reset_timedout_connection on;
    limit_conn_zone $binary_remote_addr zone=per_client:4m;
    limit_conn per_client {s.max_conns_per_client};
    limit_conn_status 429;
    upstream gunicorn {{ server unix:{upstream} max_conns={s.resolved_max_inflight()}; keepalive 16; }}
    upstream gunicorn_probes {{ server unix:{upstream}; }}  # health and metrics: never refused at capacity
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_request_buffering on;
    proxy_connect_timeout 5s;
    proxy_read_timeout {s.gunicorn_timeout_s}s;
    server {{
        listen {s.bind}:{s.port} backlog=1024;
{errors}
        location / {{ proxy_pass http://gunicorn; }}
        location ~ ^/(healthz|readyz|metrics)$ {{ proxy_pass http://gunicorn_probes; }}
    }}
}}
"""


class FrontCounts:
    """Counts of the answers nginx gave without gunicorn, by status, kept in a JSON file the workers read."""

    def __init__(self, path: Path):
        self.path, self.counts, self.lock, self.written = path, Counter(), threading.Lock(), None
        self.flush()

    def record(self, line: str) -> None:
        try:
            entry = json.loads(line)
        except ValueError:
            return
        if not entry.get("upstream_status"):  # nginx answered (or closed) without asking gunicorn
            with self.lock:
                self.counts[str(entry.get("status"))] += 1

    def flush(self) -> None:
        with self.lock:
            snapshot = dict(self.counts)
        if snapshot != self.written:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(snapshot))
            os.replace(tmp, self.path)
            self.written = snapshot


def read_counts(path: str) -> dict[str, int]:
    """The front's counts by status ({} when there is no front, or it has written nothing yet)."""
    try:
        return {k: int(v) for k, v in json.loads(Path(path).read_text()).items()}
    except (OSError, ValueError):
        return {}


def _echo_and_count(stream, counts: FrontCounts) -> None:
    for line in stream:
        sys.stdout.write(line)
        counts.record(line)


def _flush_every_second(counts: FrontCounts, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        counts.flush()


def nginx_path() -> str | None:
    return shutil.which("nginx", path=os.environ.get("PATH", "") + os.pathsep + "/usr/sbin")


def run_front(s: Settings, nginx: str) -> int:
    """nginx and gunicorn until a signal or until one of them exits; the exit status is the service's."""
    workdir = Path(tempfile.mkdtemp(prefix="captioner-front-"))
    workdir.chmod(0o711)  # started as root, nginx's workers run as nobody: they must reach the socket
    socket_path, conf = workdir / "gunicorn.sock", workdir / "nginx.conf"
    conf.write_text(nginx_config(s, workdir, socket_path))
    counts = FrontCounts(workdir / "front.json")
    env = {**os.environ, "CAPTIONER_FRONT_STATS": str(counts.path)}
    gunicorn = subprocess.Popen([*GUNICORN, "--bind", f"unix:{socket_path}", APP], cwd=ROOT, env=env)
    front = subprocess.Popen([nginx, "-p", str(workdir), "-e", "stderr", "-c", str(conf)], stdout=subprocess.PIPE,
                             text=True, bufsize=1)
    stop = threading.Event()
    threading.Thread(target=_echo_and_count, args=(front.stdout, counts), daemon=True).start()
    threading.Thread(target=_flush_every_second, args=(counts, stop), daemon=True).start()
    return _supervise(front, gunicorn, stop, workdir)


def _supervise(front: subprocess.Popen, gunicorn: subprocess.Popen, stop: threading.Event, workdir: Path) -> int:
    """Wait; on SIGTERM/SIGINT stop nginx gracefully (SIGQUIT: in-flight requests finish) and gunicorn
    (SIGTERM: it drains); if either exits on its own, stop the other and fail."""
    def shutdown(*_):
        stop.set()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    while not stop.is_set() and front.poll() is None and gunicorn.poll() is None:
        time.sleep(0.2)
    if not stop.is_set():  # a terminal's Ctrl-C reaches the children too: let this process's handler run
        stop.wait(0.5)
    died = [] if stop.is_set() else [name for name, p in (("nginx", front), ("gunicorn", gunicorn)) if p.poll() is not None]
    stop.set()
    for proc, sig in ((front, signal.SIGQUIT), (gunicorn, signal.SIGTERM)):
        if proc.poll() is None:
            proc.send_signal(sig)
    codes = []
    for proc in (front, gunicorn):
        try:
            codes.append(proc.wait(timeout=35))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    shutil.rmtree(workdir, ignore_errors=True)
    if died:
        print(f"service.front: {' and '.join(died)} exited on its own (nginx {codes[0]}, gunicorn {codes[1]})",
              file=sys.stderr)
        return 1
    return 0 if all(c in (0, -signal.SIGQUIT, -signal.SIGTERM) for c in codes) else 1


def main() -> int:
    s = Settings.from_env()
    nginx = nginx_path()
    if nginx is None:
        print("service.front: nginx not found; serving with gunicorn alone, FOR DEVELOPMENT ONLY: slow clients "
              "can hold its request threads (install nginx, or use the Docker image)", file=sys.stderr)
        os.chdir(ROOT)
        os.execv(sys.executable, [*GUNICORN, APP])
    return run_front(s, nginx)


if __name__ == "__main__":
    sys.exit(main())
