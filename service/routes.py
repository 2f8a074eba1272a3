"""The HTTP API as one blueprint: captions, model info, health, metrics, OpenAPI and the web page."""

from __future__ import annotations

import base64
import binascii
import time
from pathlib import Path

from flask import Blueprint, Response, jsonify, request, send_from_directory
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from captioner import ImageError, ImageTooLarge
from captioner.explain import VIEW_JS, check_explainable
from captioner.grounding import sentence
from captioner.options import OptionError, parse_bool

from .errors import ApiError
from .model_state import ServiceState, current_state, ready_state
from .openapi import openapi_spec

STATIC = Path(__file__).parent / "static"
bp = Blueprint("captioner", __name__)


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


@bp.post("/v1/captions")
def captions():
    st = ready_state()
    t0 = time.perf_counter()
    data, raw_options = read_request()
    if not data:
        raise ApiError(400, "missing_image", "the image is empty (0 bytes)")
    try:
        explain = parse_bool("explain", raw_options.pop("explain", False))
        options = st.model.default_options.updated(raw_options, len(st.model.vocab), public_only=True)
        if explain:
            check_explainable(options.n_best)
    except OptionError as exc:
        raise ApiError(422, "invalid_option", str(exc)) from None
    t1 = time.perf_counter()
    try:
        image = st.model.preprocess(data, max_pixels=st.settings.resolved_max_pixels())
    except ImageTooLarge as exc:
        raise ApiError(413, "image_too_large", str(exc)) from None
    except ImageError as exc:
        raise ApiError(415, "undecodable_image", str(exc)) from None
    t2 = time.perf_counter()
    try:
        result = st.batcher.submit(image, options, timeout=st.settings.request_timeout_s, explain=explain)
    except TimeoutError:
        raise ApiError(503, "overloaded", f"no result within {st.settings.request_timeout_s:g} s; try again") from None
    total = (time.perf_counter() - t0) * 1000
    best, image = result.captions[0], result.captions[0].image
    return jsonify({
        "alt_text": image.alt_text(best.text) if image is not None else sentence(best.text),
        "captions": [c.to_dict() for c in result.captions],
        "grounding": image.to_dict() if image is not None else None,
        "options": options.public_dict(),
        "model": model_summary(st),
        "timing_ms": {"read": round((t1 - t0) * 1000, 2), "preprocess": round((t2 - t1) * 1000, 2),
                      "queue": round(result.queue_ms, 2), "encode": round(result.encode_ms, 2),
                      "decode": round(result.decode_ms, 2), "total": round(total, 2)},
        "batch_size": result.batch_size,
    })


def model_summary(st: ServiceState) -> dict:
    return {"name": Path(st.settings.resolved_model_path()).stem, "checkpoint_sha256": st.model.checkpoint_sha256}


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
    return Response(generate_latest(current_state().metrics.registry), mimetype=CONTENT_TYPE_LATEST)


@bp.get("/openapi.json")
def openapi():
    st = current_state()
    return jsonify(openapi_spec(st.model.default_options if st.ready else None))


@bp.get("/")
def index():
    return send_from_directory(STATIC, "index.html")


@bp.get("/explain.js")
def explain_view():
    """The explanation renderer the CLI's HTML pages inline, served to the web page."""
    return Response(VIEW_JS.read_text(), mimetype="text/javascript")
