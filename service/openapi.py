"""OpenAPI 3.1 description of the service. Tests validate real responses against these schemas."""

from __future__ import annotations

from captioner import __version__

from .options import DEFAULTS, LIMITS, MAX_SEED, METHODS

_ERROR = {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}

def _bounded(kind: str, name: str, exclusive_min: bool = False) -> dict:
    lo, hi = LIMITS[name]
    return {"type": kind, "exclusiveMinimum" if exclusive_min else "minimum": lo, "maximum": hi,
            "default": getattr(DEFAULTS, name)}


_OPTIONS = {
    "method": {"type": "string", "enum": list(METHODS), "default": DEFAULTS.method},
    "beam_size": _bounded("integer", "beam_size"),
    "n_best": {**_bounded("integer", "n_best"), "description": "at most beam_size; >1 needs beam"},
    "max_length": _bounded("integer", "max_length"),
    "temperature": _bounded("number", "temperature", exclusive_min=True),
    "top_k": {"type": "integer", "minimum": 0, "default": DEFAULTS.top_k, "description": "0 = no limit"},
    "top_p": _bounded("number", "top_p", exclusive_min=True),
    "seed": {"type": "integer", "minimum": 0, "maximum": MAX_SEED, "description": "makes method=sample reproducible"},
}


def openapi_spec() -> dict:
    params = [{"name": k, "in": "query", "required": False, "schema": v} for k, v in _OPTIONS.items()]
    return {
        "openapi": "3.1.0",
        "info": {"title": "captioner", "version": __version__,
                 "description": "Image captioning: POST a photo, get captions. Options may be given as query "
                                "parameters, multipart form fields or JSON fields."},
        "paths": {
            "/v1/captions": {"post": {
                "summary": "Caption one image",
                "parameters": params,
                "requestBody": {"required": True, "content": {
                    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                        "image": {"type": "string", "format": "binary"}, **_OPTIONS}}},
                    "application/json": {"schema": {"type": "object", "required": ["image"], "properties": {
                        "image": {"type": "string", "contentEncoding": "base64"}, **_OPTIONS},
                        "additionalProperties": False}},
                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                }},
                "responses": {
                    "200": {"description": "Captions, best first", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/CaptionResponse"}}}},
                    "400": _ERROR, "413": _ERROR, "415": _ERROR, "422": _ERROR, "503": _ERROR,
                },
            }},
            "/v1/model": {"get": {"summary": "The loaded model", "responses": {
                "200": {"description": "Model description", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/ModelInfo"}}}}, "503": _ERROR}}},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "Alive", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}}}}},
            "/readyz": {"get": {"summary": "Readiness: model loaded and warm", "responses": {
                "200": {"description": "Ready", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Status"}}}},
                "503": _ERROR}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
                "description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {
                "description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
            "/": {"get": {"summary": "Web page to try the service", "responses": {"200": {
                "description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
        },
        "components": {"schemas": {
            "Caption": {"type": "object", "required": ["text", "log_prob", "tokens"], "properties": {
                "text": {"type": "string"}, "log_prob": {"type": "number", "maximum": 0},
                "tokens": {"type": "array", "items": {"type": "string"}}}},
            "CaptionResponse": {"type": "object", "required": ["captions", "model", "timing_ms", "options", "batch_size"],
                                "properties": {
                "captions": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Caption"}},
                "options": {"type": "object", "description": "the options used, defaults filled in",
                            "properties": {**_OPTIONS, "seed": {"type": ["integer", "null"]}}},
                "model": {"type": "object", "required": ["name", "checkpoint_sha256"], "properties": {
                    "name": {"type": "string"}, "checkpoint_sha256": {"type": ["string", "null"]}}},
                "timing_ms": {"type": "object", "required": ["total"],
                              "additionalProperties": {"type": "number", "minimum": 0}},
                "batch_size": {"type": "integer", "minimum": 1}}},
            "ModelInfo": {"type": "object", "required": ["name", "encoder", "decoder", "vocab_size", "checkpoint_sha256", "metrics"],
                          "properties": {
                "name": {"type": "string"}, "encoder": {"type": "string"},
                "decoder": {"type": "object", "required": ["cell"], "properties": {"cell": {"type": "string", "enum": ["rnn", "lstm", "gru"]}}},
                "vocab_size": {"type": "integer", "minimum": 4}, "checkpoint_sha256": {"type": ["string", "null"]},
                "metrics": {"type": "object"}, "preprocess": {"type": "object"}, "load_seconds": {"type": "number"}}},
            "Status": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["code", "message"], "additionalProperties": False,
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
        }},
    }
