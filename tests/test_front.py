"""The front (service/front.py): nginx reads every request whole, with deadlines, before gunicorn sees it, so
slow and abusive clients get a 4xx or a closed connection while normal requests keep being answered, and
the worker never notices them. Live tests on loopback, bounded in count and time; they need nginx (CI
installs it: `.ci/run`), and skip without it elsewhere."""

import json
import os
import subprocess
import time

import pytest

from captioner import default_model_path
from service.front import FrontCounts, nginx_config, nginx_path, read_counts
from service.loopback import GunicornServer
from service.metrics import ServiceMetrics
from service.settings import Settings

from . import abuse

NGINX = nginx_path()
needs_nginx = pytest.mark.skipif(NGINX is None and not os.environ.get("CI"), reason="nginx is not installed")
DEADLINE = 2  # seconds: the header and body deadlines the live front runs with
PHOTO = abuse.PHOTO.read_bytes()


def test_counts_of_the_fronts_own_answers_reach_metrics(tmp_path):
    counts = FrontCounts(tmp_path / "front.json")
    for status, upstream in ((408, ""), (408, ""), (413, ""), (200, "200"), (413, "413")):
        counts.record(json.dumps({"status": status, "upstream_status": upstream}))
    counts.record("not json")
    counts.flush()
    assert read_counts(str(tmp_path / "front.json")) == {"408": 2, "413": 1}  # answers gunicorn gave are not its
    from prometheus_client import generate_latest

    text = generate_latest(ServiceMetrics(str(tmp_path / "front.json")).registry).decode()  # what /metrics serves
    assert 'captioner_front_rejected_total{status="408"} 2.0' in text
    assert 'captioner_front_rejected_total{status="413"} 1.0' in text
    assert read_counts(str(tmp_path / "missing.json")) == {}


@needs_nginx
def test_the_rendered_config_is_valid_nginx(tmp_path):
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_config(Settings(port=8000, max_body_mb=3), tmp_path, tmp_path / "g.sock"))
    proc = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-e", "stderr", "-c", str(conf)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "client_max_body_size 3072k;" in conf.read_text()


@pytest.fixture(scope="module")
def front():
    env = {"CAPTIONER_HEADER_TIMEOUT_S": str(DEADLINE), "CAPTIONER_BODY_TIMEOUT_S": str(DEADLINE),
           "CAPTIONER_KEEPALIVE_TIMEOUT_S": str(DEADLINE), "CAPTIONER_THREADS": "4", "CAPTIONER_MAX_INFLIGHT": "4"}
    with GunicornServer(default_model_path(), env, ready_timeout=90, front=True) as srv:
        yield srv


@needs_nginx
@pytest.mark.slow
def test_slowloris_is_closed_and_normal_requests_are_answered(front):
    workers = front.workers()
    assert workers and front.nginx()
    before = read_counts_over_http(front.url).get("408", 0)
    stalled = abuse.slow_headers(front.url, 16) + abuse.slow_bodies(front.url, 16, PHOTO)  # 16 + 16 > 4 threads
    status, seconds = abuse.caption(front.url, PHOTO)
    assert status == 200 and seconds < 2, (status, seconds)
    closed = abuse.seconds_until_closed(stalled, DEADLINE + 5)
    assert None not in closed, closed
    time.sleep(1.5)  # the front writes its counts once a second
    assert read_counts_over_http(front.url).get("408", 0) - before >= 32
    assert front.workers() == workers  # the worker never noticed


@needs_nginx
@pytest.mark.slow
def test_abusive_requests_get_a_4xx_or_a_close(front):
    for name, payload in abuse.abusive_requests(front.url).items():
        status, body = abuse.raw_exchange(front.url, payload, wait=DEADLINE + 5)
        assert status is None or 400 <= status < 500, (name, status, body)
        if status is not None:
            assert body.startswith(b'{"error"'), (name, body)  # the service's JSON error, from nginx or the app
    status, seconds = abuse.endless_chunked(front.url, seconds=DEADLINE + 10)
    assert status in (None, 413) and seconds < DEADLINE + 10, (status, seconds)
    assert abuse.caption(front.url, PHOTO)[0] == 200


@needs_nginx
@pytest.mark.slow
def test_idle_keepalive_connections_cost_no_thread(front):
    idle = abuse.idle_keepalive(front.url, 300)
    status, seconds = abuse.caption(front.url, PHOTO)
    assert status == 200 and seconds < 2
    assert None not in abuse.seconds_until_closed(idle, DEADLINE + 5)  # keepalive_timeout closes them


@needs_nginx
@pytest.mark.slow
def test_overload_is_refused_at_once_with_retry_after(front):
    """More requests at once than the front hands gunicorn (4 here): the rest get 503 with Retry-After in
    milliseconds, the admitted ones their captions, nothing else; a health check meanwhile is answered (a
    busy replica is not a dead one)."""
    import http.client
    import threading
    import urllib.request

    answers, lock = [], threading.Lock()

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=60)
        t0 = time.perf_counter()
        conn.request("POST", "/v1/captions", body=PHOTO, headers={"Content-Type": "image/jpeg"})
        resp = conn.getresponse()
        body = resp.read()
        with lock:
            answers.append((resp.status, time.perf_counter() - t0, resp.getheader("Retry-After"), body))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(24)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    with urllib.request.urlopen(front.url + "/healthz", timeout=30) as r:
        assert r.status == 200
    for t in threads:
        t.join()
    refused = [a for a in answers if a[0] == 503]
    assert {a[0] for a in answers} == {200, 503} and len(refused) >= 8, [a[:3] for a in answers]
    assert all(a[2] == "1" and json.loads(a[3])["error"]["code"] == "unavailable" for a in refused)
    assert max(a[1] for a in refused) < 1.0  # told at once, not after a queue
    assert abuse.caption(front.url, PHOTO)[0] == 200


def read_counts_over_http(url: str) -> dict[str, int]:
    import urllib.request

    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return {line.split('"')[1]: int(float(line.rsplit(" ", 1)[1]))
            for line in text.splitlines() if line.startswith("captioner_front_rejected_total{")}
