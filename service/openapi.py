"""OpenAPI 3.1 description of the service. Tests validate real responses against these schemas."""

from __future__ import annotations

from captioner import __version__
from captioner.options import OPTION_FIELDS, PUBLIC_OPTIONS, DecodeOptions

_ERROR = {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_JSON_TYPES = {int: "integer", float: "number", str: "string"}


def option_schemas(defaults: DecodeOptions) -> dict:
    """One JSON schema per public decoding option, from DecodeOptions' own types, ranges and help."""
    out = {}
    for name in PUBLIC_OPTIONS:
        meta = OPTION_FIELDS[name].metadata
        kind = type(getattr(DecodeOptions(), name)) if name != "seed" else int
        schema = {"type": _JSON_TYPES[kind], "description": meta["help"]}
        if meta["choices"]:
            schema["enum"] = list(meta["choices"])
        if meta["lo"] is not None:
            schema["exclusiveMinimum" if meta["lo_open"] else "minimum"] = meta["lo"]
        if meta["hi"] is not None:
            schema["maximum"] = meta["hi"]
        if getattr(defaults, name) is not None:
            schema["default"] = getattr(defaults, name)
        out[name] = schema
    return out


def openapi_spec(defaults: DecodeOptions | None = None) -> dict:
    """The document; option defaults are the served model's own when given, else DecodeOptions'."""
    options = option_schemas(defaults or DecodeOptions())
    params = [{"name": k, "in": "query", "required": False, "schema": v} for k, v in options.items()]
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
                        "image": {"type": "string", "format": "binary"}, **options}}},
                    "application/json": {"schema": {"type": "object", "required": ["image"], "properties": {
                        "image": {"type": "string", "contentEncoding": "base64"}, **options},
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
                "options": {"type": "object", "description": "the options used, the model's defaults filled in",
                            "required": list(PUBLIC_OPTIONS), "additionalProperties": False,
                            "properties": {**options, "seed": {"type": ["integer", "null"]}}},
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
