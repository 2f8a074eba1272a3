"""The HTTP service through Flask's test client: every endpoint, every error, batching invariance."""

import base64
import io
import threading

import jsonschema
import pytest

from captioner.options import DecodeOptions, OptionError
from service.app import create_app
from service.settings import Settings

from . import images
from .conftest import check_schema, post_multipart


@pytest.fixture(scope="module")
def app(small_captioner, tmp_path_factory):
    settings = Settings(model_path=str(tmp_path_factory.mktemp("m") / "tiny.safetensors"), batch_wait_ms=5, max_body_mb=1)
    return create_app(settings, model=small_captioner)


@pytest.fixture
def client(app):
    return app.test_client()


def test_caption_multipart_json_and_raw_agree(client, cat_photo):
    data = cat_photo.read_bytes()
    a = post_multipart(client, data, beam_size="4", n_best="2")
    b = client.post("/v1/captions", json={"image": base64.b64encode(data).decode(), "beam_size": 4, "n_best": 2})
    c = client.post("/v1/captions?beam_size=4&n_best=2", data=data, content_type="image/jpeg")
    for r in (a, b, c):
        assert r.status_code == 200, r.get_json()
        check_schema(r.get_json(), "CaptionResponse")
        assert len(r.get_json()["captions"]) == 2
    assert a.get_json()["captions"] == b.get_json()["captions"] == c.get_json()["captions"]


def test_methods_and_seeded_sampling(client, cat_photo):
    data = cat_photo.read_bytes()
    greedy = post_multipart(client, data, method="greedy").get_json()["captions"]
    beam1 = post_multipart(client, data, method="beam", beam_size="1").get_json()["captions"]
    assert greedy[0]["text"] == beam1[0]["text"]
    def sampled(seed: int) -> str:
        body = post_multipart(client, data, method="sample", seed=str(seed), temperature="1.5").get_json()
        return body["captions"][0]["text"]

    assert sampled(11) == sampled(11)  # the seed fixes the draw ...
    assert len({sampled(seed) for seed in range(6)}) > 1  # ... and is used: other seeds draw other captions


@pytest.mark.parametrize("path,schema", [("/v1/model", "ModelInfo"), ("/healthz", "Status"), ("/readyz", "Status")])
def test_info_endpoints_match_the_spec(client, path, schema):
    r = client.get(path)
    assert r.status_code == 200
    check_schema(r.get_json(), schema)


def test_model_endpoint_describes_the_model(client, small_captioner):
    body = client.get("/v1/model").get_json()
    assert body["vocab_size"] == len(small_captioner.vocab) and body["decoder"]["cell"] == "lstm"
    assert body["encoder"] == "efficientnet_lite0"


def test_openapi_lists_every_route(client, app):
    spec = client.get("/openapi.json").get_json()
    routes = {r.rule for r in app.url_map.iter_rules() if r.endpoint != "static"}
    assert routes == set(spec["paths"])
    jsonschema.Draft202012Validator.check_schema(spec["components"]["schemas"]["CaptionResponse"])


def test_index_page_and_metrics(client, cat_photo):
    page = client.get("/")
    assert page.status_code == 200 and b"/v1/captions" in page.data
    post_multipart(client, cat_photo.read_bytes())
    text = client.get("/metrics").get_data(as_text=True)
    assert 'captioner_requests_total{endpoint="/v1/captions",status="200"}' in text
    assert "captioner_batch_size_bucket" in text and "captioner_model_load_seconds" in text
    assert "captioner_request_latency_seconds_bucket" in text


BAD_BODIES = [
    ("truncated jpeg", images.truncated_jpeg(), "image/jpeg", 415),
    ("text as jpeg", b"this is not a picture at all", "image/jpeg", 415),
    ("zero bytes", b"", "image/jpeg", 400),
    ("decompression bomb", images.png_bomb(), "image/png", 413),
    ("plain text type", b"hello", "text/plain", 415),
    ("tiff missing dimensions", images.tiff_flipped(8, 0), "image/tiff", 415),
    ("tiff bad rational", images.tiff_flipped(72, 0), "image/tiff", 415),
]


@pytest.mark.parametrize("name,data,ctype,status", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_images_get_clear_errors(client, name, data, ctype, status):
    r = client.post("/v1/captions", data=data, content_type=ctype)
    assert r.status_code == status, r.get_json()
    check_schema(r.get_json(), "Error")


@pytest.mark.parametrize("make", [images.cmyk_jpeg, images.sixteen_bit_png, images.exif_rotated_jpeg,
                                  images.animated_gif, images.palette_transparency_png, images.grayscale_png])
def test_odd_but_valid_images_are_captioned(client, make):
    r = client.post("/v1/captions", data=make(), content_type="image/png")
    assert r.status_code == 200, r.get_json()


def test_request_shape_errors(client, cat_photo):
    r = client.post("/v1/captions", data={"file": (io.BytesIO(b"x"), "a.jpg")}, content_type="multipart/form-data")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "missing_image"
    assert client.post("/v1/captions").status_code == 400
    assert client.post("/v1/captions", data="{not json", content_type="application/json").status_code == 400
    r = client.post("/v1/captions", json={"image": "@@@not base64@@@"})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_base64"
    assert client.post("/v1/captions", json=["image"]).status_code == 400
    r = client.post("/v1/captions", data=b"x" * (1024 * 1024 + 10), content_type="image/jpeg")
    assert r.status_code == 413
    check_schema(r.get_json(), "Error")
    r = client.get("/v1/captions")
    assert r.status_code == 405 and r.get_json()["error"]["code"] == "method_not_allowed"
    assert client.get("/nope").get_json()["error"]["code"] == "not_found"


BAD_OPTIONS = [{"beam_size": "0"}, {"beam_size": "11"}, {"beam_size": "2.5"}, {"n_best": "4", "beam_size": "3"},
               {"max_length": "51"}, {"max_length": "-1"}, {"temperature": "nan"}, {"temperature": "0"},
               {"temperature": "-1"}, {"temperature": "inf"}, {"top_p": "0"}, {"top_p": "1.5"}, {"top_k": "-3"},
               {"seed": "-1"}, {"seed": "abc"}, {"method": "telepathy"}, {"colour": "blue"},
               {"method": "greedy", "n_best": "2"}]


@pytest.mark.parametrize("opts", BAD_OPTIONS, ids=[str(o) for o in BAD_OPTIONS])
def test_out_of_range_options_are_422(client, cat_photo, opts):
    r = post_multipart(client, cat_photo.read_bytes(), **opts)
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["error"]["code"] == "invalid_option"


def test_json_options_type_checks():
    parse = lambda raw: DecodeOptions().updated(raw, 100, public_only=True)  # noqa: E731  (as the service does)
    assert parse({"beam_size": 5, "temperature": 0.5}) == DecodeOptions(beam_size=5, temperature=0.5)
    assert parse({"beam_size": "5", "seed": ""}) == DecodeOptions(beam_size=5)
    for bad in ({"beam_size": True}, {"beam_size": [3]}, {"temperature": None}, {"top_k": 101},
                {"no_end_after": ["a"]}, {"length_penalty": -1}, {"min_length": 30, "max_length": 20}):
        with pytest.raises(OptionError):
            parse(bad)


def test_requests_start_from_the_models_own_defaults(small_captioner, cat_photo, tmp_path):
    """A model trained with length penalty 2 and a trigram block serves with them unless a request says
    otherwise; the response and /openapi.json show the values used."""
    from dataclasses import replace as dc_replace

    from captioner import load
    from captioner.checkpoint import save

    ck = dc_replace(small_captioner.checkpoint(), decoding={"length_penalty": 2.0, "no_repeat_ngram_size": 3})
    save(tmp_path / "tuned.safetensors", ck)
    client = create_app(Settings(model_path=str(tmp_path / "tuned.safetensors"))).test_client()
    used = post_multipart(client, cat_photo.read_bytes()).get_json()["options"]
    assert used["length_penalty"] == 2.0 and used["no_repeat_ngram_size"] == 3 and used["beam_size"] == 3
    assert "no_end_after" not in used
    used = post_multipart(client, cat_photo.read_bytes(), length_penalty="0").get_json()["options"]
    assert used["length_penalty"] == 0.0
    spec = client.get("/openapi.json").get_json()
    assert spec["components"]["schemas"]["CaptionResponse"]["properties"]["options"]["properties"]["length_penalty"]["default"] == 2.0
    assert load(tmp_path / "tuned.safetensors").default_options.length_penalty == 2.0


def test_not_ready_is_503_until_loaded(tmp_path):
    settings = Settings(model_path=str(tmp_path / "missing.safetensors"))
    app = create_app(settings)  # the file does not exist: the app stays up and says why
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    r = client.get("/readyz")
    assert r.status_code == 503 and "missing.safetensors" in r.get_json()["error"]["message"]
    r = client.post("/v1/captions", data=b"x", content_type="image/jpeg")
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "not_ready"


def test_batched_results_equal_alone(small_captioner, cat_photo, coffee_photo, tmp_path):
    """Concurrent requests that share a batch get exactly what each gets alone (batching off)."""
    photos = [cat_photo.read_bytes(), coffee_photo.read_bytes(), images.exif_rotated_jpeg(), images.cmyk_jpeg()]
    variants = [dict(method="beam", beam_size="3", n_best="2"), dict(method="greedy"),
                dict(method="sample", seed="5"), dict(method="beam", beam_size="3", n_best="2")]
    alone_app = create_app(Settings(model_path=str(tmp_path / "a.safetensors"), batch_wait_ms=0), model=small_captioner)
    alone = [post_multipart(alone_app.test_client(), p, **v).get_json() for p, v in zip(photos, variants)]
    batch_app = create_app(Settings(model_path=str(tmp_path / "b.safetensors"), batch_wait_ms=300, max_batch=8),
                           model=small_captioner)
    results = [None] * len(photos)

    def call(i):
        results[i] = post_multipart(batch_app.test_client(), photos[i], **variants[i]).get_json()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(photos))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(r["batch_size"] for r in results) > 1  # they really were batched
    for a, b in zip(alone, results):
        assert [c["text"] for c in a["captions"]] == [c["text"] for c in b["captions"]]
        for ca, cb in zip(a["captions"], b["captions"]):
            assert ca["log_prob"] == pytest.approx(cb["log_prob"], abs=1e-3)


def test_settings_from_environment():
    s = Settings.from_env({"CAPTIONER_MODEL": "/m.safetensors", "CAPTIONER_WORKERS": "2", "PORT": "9000",
                           "CAPTIONER_BATCH_WAIT_MS": "0"})
    assert (s.model_path, s.workers, s.port, s.batch_wait_ms) == ("/m.safetensors", 2, 9000, 0.0)
    with pytest.raises(ValueError, match="CAPTIONER_WORKERS"):
        Settings.from_env({"CAPTIONER_WORKERS": "many"})


def test_torch_threads_share_the_cores_between_workers(monkeypatch):
    monkeypatch.setattr("service.settings._cores", lambda: 8)
    assert Settings(workers=2, torch_threads=0).resolved_torch_threads() == 4
    assert Settings(workers=3, torch_threads=0).resolved_torch_threads() == 2
    assert Settings(workers=64, torch_threads=0).resolved_torch_threads() == 1  # never 0 threads
    assert Settings(workers=2, torch_threads=3).resolved_torch_threads() == 3  # an explicit count wins


class GatedCaptioner:
    """A real captioner whose decode can be held back (a slow batch) or made to fail (a bug in a batch)."""

    def __init__(self, inner):
        self.inner, self.gate, self.error = inner, threading.Event(), None
        self.gate.set()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def decode(self, *args, **kwargs):
        self.gate.wait(timeout=30)
        if self.error is not None:
            raise self.error
        return self.inner.decode(*args, **kwargs)


def test_a_request_whose_batch_does_not_finish_in_time_gets_503(small_captioner, cat_photo, tmp_path):
    model = GatedCaptioner(small_captioner)
    settings = Settings(model_path=str(tmp_path / "m.safetensors"), batch_wait_ms=5, request_timeout_s=0.3)
    client = create_app(settings, model=model).test_client()
    model.gate.clear()
    try:
        r = post_multipart(client, cat_photo.read_bytes())
    finally:
        model.gate.set()
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "overloaded", r.get_json()
    check_schema(r.get_json(), "Error")
    assert post_multipart(client, cat_photo.read_bytes()).status_code == 200  # the worker goes on serving


def test_an_unexpected_error_is_a_json_500(small_captioner, cat_photo, tmp_path):
    model = GatedCaptioner(small_captioner)
    client = create_app(Settings(model_path=str(tmp_path / "m.safetensors"), batch_wait_ms=0), model=model).test_client()
    model.error = RuntimeError("simulated bug in decoding")
    r = post_multipart(client, cat_photo.read_bytes())
    assert r.status_code == 500, r.get_data()
    assert r.get_json()["error"] == {"code": "internal_error", "message": "internal error; it has been logged"}
    check_schema(r.get_json(), "Error")
    model.error = None
    assert post_multipart(client, cat_photo.read_bytes()).status_code == 200


def test_a_failing_batch_fails_every_request_in_it(small_captioner):
    """No request waits forever on a batch that raised: each gets the batch's error, promptly."""
    import torch

    from service.batching import Batcher

    model = GatedCaptioner(small_captioner)
    model.error = RuntimeError("simulated bug in decoding")
    batcher = Batcher(model, wait_ms=200, max_batch=8)
    image = torch.zeros(3, 224, 224)
    outcomes = [None] * 4

    def call(i):
        try:
            batcher.submit(image, DecodeOptions(), timeout=10)
        except BaseException as exc:  # noqa: BLE001 - recorded and checked below
            outcomes[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert all(isinstance(o, RuntimeError) and "simulated bug" in str(o) for o in outcomes), outcomes
