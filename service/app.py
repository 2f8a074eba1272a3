"""The Flask app factory: `create_app()` loads the model, warms it up, and serves captions.

    gunicorn -c service/gunicorn.conf.py "service.app:create_app()"
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from pathlib import Path

import numpy as np
import torch
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, send_from_directory
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from PIL import Image
from werkzeug.exceptions import HTTPException

from captioner import Captioner, ImageError, ImageTooLarge, load

from .batching import Batcher
from .metrics import ServiceMetrics
from .openapi import openapi_spec
from .options import OptionError, parse_options
from .settings import Settings

log = logging.getLogger("captioner.service")
STATIC = Path(__file__).parent / "static"
bp = Blueprint("captioner", __name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class ServiceState:
    """The model, its batcher and readiness, shared by the request threads of one worker."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics):
        self.settings, self.metrics = settings, metrics
        self.model: Captioner | None = None
        self.batcher: Batcher | None = None
        self.ready = False
        self.load_error: str | None = None
        self.load_seconds: float | None = None

    def load(self, model: Captioner | None = None) -> None:
        t0 = time.perf_counter()
        try:
            model = model or load(self.settings.model_path)
            self.batcher = Batcher(model, self.settings.batch_wait_ms, self.settings.max_batch,
                                   on_batch=self.metrics.batch_size.observe)
            self.model = model
            warm = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1)), "L").convert("RGB")
            self.batcher.submit(model.preprocess(warm), parse_options({}, len(model.vocab)), timeout=120)
        except Exception as exc:  # stay up and say why on /readyz instead of crash-looping
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load from %s", self.settings.model_path)
            return
        self.load_seconds = time.perf_counter() - t0
        self.metrics.model_load.set(self.load_seconds)
        self.metrics.ready.set(1)
        self.ready = True
        log.info("model %s loaded and warm in %.2f s", self.settings.model_path, self.load_seconds)


def state() -> ServiceState:
    return current_app.extensions["captioner"]


def ready_state() -> ServiceState:
    """The state, or a 503 that says why the model is not (yet) there."""
    st = state()
    if not st.ready:
        raise ApiError(503, "not_ready", st.load_error or "model is loading")
    return st


def error(status: int, code: str, message: str):
    return jsonify({"error": {"code": code, "message": message}}), status


# -- request parsing ------------------------------------------------------------------------------
def _first_values(multidict) -> dict:
    return {k: multidict.get(k) for k in multidict.keys()}


def read_request() -> tuple[bytes, dict]:
    """The image bytes and raw options, from multipart, JSON (base64) or a raw image body."""
    mimetype = request.mimetype or ""
    options = _first_values(request.args)
    if mimetype == "multipart/form-data":
        upload = request.files.get("image")
        if upload is None:
            raise ApiError(400, "missing_image", "multipart body needs a file field named 'image'")
        options.update(_first_values(request.form))
        return upload.read(), options
    if mimetype == "application/json":
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise ApiError(400, "malformed_json", "body must be a JSON object like {\"image\": \"<base64>\"}")
        encoded = body.pop("image", None)
        if not isinstance(encoded, str) or not encoded:
            raise ApiError(400, "missing_image", "JSON body needs 'image': a base64-encoded image")
        if encoded.startswith("data:") and "," in encoded:
            encoded = encoded.split(",", 1)[1]  # accept data URLs as browsers make them
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "invalid_base64", "'image' is not valid base64") from None
        options.update(body)
        return data, options
    if mimetype.startswith("image/") or mimetype == "application/octet-stream":
        return request.get_data(), options
    if not mimetype and not request.content_length:
        raise ApiError(400, "missing_image", "send an image: multipart field 'image', a raw image/* body, "
                       "or JSON {\"image\": \"<base64>\"}")
    raise ApiError(415, "unsupported_media_type", f"unsupported content type {mimetype!r}; use multipart/form-data, "
                   "image/*, or application/json")


# -- routes ---------------------------------------------------------------------------------------
@bp.post("/v1/captions")
def captions():
    st = ready_state()
    t0 = time.perf_counter()
    data, raw_options = read_request()
    if not data:
        raise ApiError(400, "missing_image", "the image is empty (0 bytes)")
    try:
        options = parse_options(raw_options, len(st.model.vocab))
    except OptionError as exc:
        raise ApiError(422, "invalid_option", str(exc)) from None
    t1 = time.perf_counter()
    try:
        image = st.model.preprocess(data, max_pixels=st.settings.max_pixels)
    except ImageTooLarge as exc:
        raise ApiError(413, "image_too_large", str(exc)) from None
    except ImageError as exc:
        raise ApiError(415, "undecodable_image", str(exc)) from None
    t2 = time.perf_counter()
    try:
        result = st.batcher.submit(image, options, timeout=st.settings.request_timeout_s)
    except TimeoutError:
        raise ApiError(503, "overloaded", f"no result within {st.settings.request_timeout_s:g} s; try again") from None
    total = (time.perf_counter() - t0) * 1000
    return jsonify({
        "captions": [c.to_dict() for c in result.captions],
        "options": options.to_dict(),
        "model": model_summary(st),
        "timing_ms": {"read": round((t1 - t0) * 1000, 2), "preprocess": round((t2 - t1) * 1000, 2),
                      "queue": round(result.queue_ms, 2), "encode": round(result.encode_ms, 2),
                      "decode": round(result.decode_ms, 2), "total": round(total, 2)},
        "batch_size": result.batch_size,
    })


def model_summary(st: ServiceState) -> dict:
    return {"name": Path(st.settings.model_path).stem, "checkpoint_sha256": st.model.checkpoint_sha256}


@bp.get("/v1/model")
def model_info():
    st = ready_state()
    return jsonify({"name": model_summary(st)["name"], **st.model.describe(), "load_seconds": round(st.load_seconds or 0.0, 3)})


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    ready_state()
    return jsonify({"status": "ready"})


@bp.get("/metrics")
def metrics():
    return Response(generate_latest(state().metrics.registry), mimetype=CONTENT_TYPE_LATEST)


@bp.get("/openapi.json")
def openapi():
    return jsonify(openapi_spec())


@bp.get("/")
def index():
    return send_from_directory(STATIC, "index.html")


# -- factory --------------------------------------------------------------------------------------
def create_app(settings: Settings | None = None, model: Captioner | None = None, load_in_background: bool = False) -> Flask:
    """Build the app. The model loads (or `model` is used) and is warmed before this returns, unless
    `load_in_background`, in which case /readyz answers 503 until it is ready."""
    settings = settings or Settings.from_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(settings.resolved_torch_threads())
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = int(settings.max_body_mb * 1024 * 1024)
    app.json.sort_keys = False
    st = ServiceState(settings, ServiceMetrics())
    app.extensions["captioner"] = st
    app.register_blueprint(bp)

    @app.before_request
    def _start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def _count(response):
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        st.metrics.requests.labels(endpoint, str(response.status_code)).inc()
        st.metrics.latency.labels(endpoint).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return error(exc.status, exc.code, exc.message)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name
        if exc.code == 413:
            message = f"request body is over the {settings.max_body_mb:g} MB limit"
        return error(exc.code or 500, code, message)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return error(500, "internal_error", "internal error; it has been logged")

    if model is not None:
        st.load(model)
    elif load_in_background:
        threading.Thread(target=st.load, name="captioner-load", daemon=True).start()
    else:
        st.load()
    return app
