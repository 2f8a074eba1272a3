"""The service for real: gunicorn on a loopback port, and the web page in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request

import pytest

from captioner import default_model_path
from service.loopback import GunicornServer

from . import fuzz


@pytest.fixture(scope="module")
def server():
    """gunicorn serving the shipped model, as an operator runs it."""
    with GunicornServer(default_model_path(), {"CAPTIONER_THREADS": "4"}, ready_timeout=90) as srv:
        yield srv.url, srv.proc, srv


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
    status, body = post(url, *fuzz.multipart(cat_photo.read_bytes(), {"n_best": "2"}))
    assert status == 200 and len(body["captions"]) == 2
    status, body = post(url, b"GIF89a garbage", "image/gif")
    assert status == 415 and body["error"]["code"] == "undecodable_image"
    status, _ = post(url, *fuzz.multipart(cat_photo.read_bytes(), {}))
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


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium (Debian's chromium + chromium-driver): skipped without them, except under CI."""
    found = chromium()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install chromium and chromium-driver (see .ci/run)")
        pytest.skip("chromium / chromedriver not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1000,1400", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(found[1]), options=opts)
    yield driver
    driver.quit()


def upload(driver, url: str, photo, explain: bool = False) -> list:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "/")
    driver.find_element(By.ID, "file").send_keys(str(photo))
    if explain:
        driver.find_element(By.ID, "explain").click()
    WebDriverWait(driver, 10).until(EC.element_to_be_clickable((By.ID, "submit"))).click()
    WebDriverWait(driver, 60).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#captions li.caption")))
    return driver.find_elements(By.CSS_SELECTOR, "#captions li.caption")


@pytest.mark.slow
def test_web_page_uploads_a_photo_and_shows_captions(server, cat_photo, browser, tmp_path):
    items = upload(browser, server[0], cat_photo)
    assert len(items) == 3  # the page asks for n-best 3 by default
    assert "log p =" in items[0].text and items[0].text.split("p =")[0].strip()
    assert not browser.find_elements("css selector", ".explain-word")  # explain is off by default
    browser.save_screenshot(str(tmp_path / "page.png"))


@pytest.mark.slow
def test_web_page_explains_a_caption_and_overlays_a_words_saliency(server, cat_photo, browser):
    from selenium.webdriver.common.by import By

    items = upload(browser, server[0], cat_photo, explain=True)
    first = items[0]
    words = first.find_elements(By.CSS_SELECTOR, ".explain-word")
    status, body = post(server[0], *fuzz.multipart(cat_photo.read_bytes(), {"explain": "true", "n_best": "3"}))
    explanation = body["captions"][0]["explanation"]
    assert [w.text for w in words] == [w["word"] for w in explanation["words"]]  # the API's numbers, drawn
    canvas = browser.find_element(By.CSS_SELECTOR, "canvas.saliency")
    assert not canvas.is_displayed()
    support = [sum(max(0.0, v) for row in w["saliency"] for v in row) for w in explanation["words"]]
    t = support.index(max(support))  # the word some region supports most: its map has something to draw
    assert support[t] > 0
    words[t].click()
    assert canvas.is_displayed() and canvas.get_attribute("data-word") == explanation["words"][t]["word"]
    alternatives = first.find_elements(By.CSS_SELECTOR, ".alternatives li")
    assert [a.text.split()[0] for a in alternatives] == [a["word"] for a in explanation["words"][t]["alternatives"]]
    assert len(first.find_elements(By.CSS_SELECTOR, ".cell-row")) == len(explanation["cells"]) == 8
    painted = browser.execute_script(
        "const c = arguments[0]; const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;", canvas)
    assert painted > 0  # the heatmap was drawn over the photo


@pytest.mark.slow
def test_web_page_shows_evidence_and_says_when_it_cannot_describe_a_photo(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    from .conftest import FIXTURES

    items = upload(browser, server[0], FIXTURES / "imagenet-labrador.jpg")
    assert "evidence: dog" in items[0].find_element(By.CSS_SELECTOR, ".evidence").text
    assert not browser.find_element(By.ID, "warning").is_displayed()
    upload(browser, server[0], FIXTURES / "imagenet-cheeseburger.jpg")
    warning = browser.find_element(By.ID, "warning")
    assert warning.is_displayed() and warning.text.startswith("Probably a cheeseburger.")
    assert "cheeseburger" in warning.text.split("ImageNet labels:")[1]
    assert "unreliable" in browser.find_element(By.ID, "captions").get_attribute("class")  # shown as such
    browser.save_screenshot(str(tmp_path / "page.png"))
