"""The service for real: gunicorn on a loopback port, and the web page in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
import uuid

import pytest

from captioner.checkpoint import save
from service.loopback import GunicornServer

from . import fuzz


@pytest.fixture(scope="module")
def server(small_captioner, tmp_path_factory):
    model = tmp_path_factory.mktemp("srv") / "tiny.safetensors"
    save(model, small_captioner.checkpoint())
    with GunicornServer(model, {"CAPTIONER_THREADS": "4"}, ready_timeout=90) as srv:
        yield srv.url, srv.proc, srv


def multipart(data: bytes, fields: dict) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
                 f"Content-Type: image/jpeg\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(url: str, body: bytes, ctype: str, path: str = "/v1/captions") -> tuple[int, dict]:
    req = urllib.request.Request(url + path, data=body, headers={"Content-Type": ctype}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.slow
def test_gunicorn_captions_a_real_photo_and_survives_bad_input(server, cat_photo):
    url, proc, _ = server
    status, body = post(url, *multipart(cat_photo.read_bytes(), {"n_best": "2"}))
    assert status == 200 and len(body["captions"]) == 2
    status, body = post(url, b"GIF89a garbage", "image/gif")
    assert status == 415 and body["error"]["code"] == "undecodable_image"
    status, _ = post(url, *multipart(cat_photo.read_bytes(), {}))
    assert status == 200 and proc.poll() is None  # the worker survived the bad request


@pytest.mark.slow
def test_fuzzed_uploads_never_get_a_5xx_or_kill_the_worker(server, cat_photo):
    """300 seeded malformed uploads (tests/fuzz.py); `make bench-serve`'s soak sends thousands."""
    url, proc, srv = server
    workers = srv.workers()
    assert workers
    statuses = {}
    for path, body, ctype in fuzz.cases(cat_photo, 300, seed=1):
        status, reply = post(url, body, ctype, path)
        assert status in (200, 400, 413, 415, 422), (status, reply, path, ctype, body[:40])
        assert ("captions" in reply) if status == 200 else set(reply["error"]) == {"code", "message"}
        statuses[status] = statuses.get(status, 0) + 1
    assert statuses.get(200, 0) > 20 and statuses.get(415, 0) > 20, statuses  # the mix reaches both paths
    assert proc.poll() is None and srv.workers() == workers  # same worker: none crashed or was replaced
    with urllib.request.urlopen(url + "/readyz", timeout=10) as r:
        assert r.status == 200


def chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.mark.slow
def test_web_page_uploads_a_photo_and_shows_captions(server, cat_photo, tmp_path):
    found = chromium()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install chromium and chromium-driver (see .ci/run)")
        pytest.skip("chromium / chromedriver not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(found[1]), options=opts)
    try:
        url, _, _ = server
        driver.get(url + "/")
        driver.find_element(By.ID, "file").send_keys(str(cat_photo))
        WebDriverWait(driver, 10).until(EC.element_to_be_clickable((By.ID, "submit"))).click()
        WebDriverWait(driver, 30).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#captions li.caption")))
        items = driver.find_elements(By.CSS_SELECTOR, "#captions li.caption")
        assert len(items) == 3  # the page asks for n-best 3 by default
        assert "log p =" in items[0].text and items[0].text.split("p =")[0].strip()
        driver.save_screenshot(str(tmp_path / "page.png"))
    finally:
        driver.quit()
