"""OpenAPI 3.1 description of the service. Tests validate real responses against these schemas."""

from __future__ import annotations

from captioner import __version__
from captioner.backends import BACKENDS
from captioner.explain import MAX_N_BEST
from captioner.grounding import IMPROBABLE, UNFAMILIAR
from captioner.options import OPTION_FIELDS, PUBLIC_OPTIONS, DecodeOptions, option_type

_ERROR = {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def option_schemas(defaults: DecodeOptions) -> dict:
    """One JSON schema per public decoding option, from DecodeOptions' own types, ranges and help."""
    out = {}
    for name in PUBLIC_OPTIONS:
        meta = OPTION_FIELDS[name].metadata
        schema = {"type": _JSON_TYPES[option_type(name)], "description": meta["help"]}
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


_PROB = {"type": "number", "minimum": 0, "maximum": 1}
_EXPLAIN = {"type": "boolean", "default": False,
            "description": f"add an explanation to each caption (slower; n_best at most {MAX_N_BEST})"}
_EXPLANATION = {
    "type": "object", "required": ["words", "cells", "grid", "saliency_method"], "additionalProperties": False,
    "description": "per word (the caption's words, then <end> if it finished): probability, alternatives, entropy "
                   "and occlusion saliency; the cells whose activation varies most over the caption",
    "properties": {
        "grid": {"type": "integer", "minimum": 1, "description": "saliency maps are grid x grid, row-major from the top left"},
        "saliency_method": {"type": "string", "enum": ["occlusion"]},
        "words": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["word", "prob", "entropy", "alternatives", "saliency"], "additionalProperties": False,
            "properties": {
                "word": {"type": "string"}, "prob": _PROB, "entropy": {"type": "number", "minimum": 0},
                "alternatives": {"type": "array", "items": {"type": "object", "required": ["word", "prob"],
                                                            "properties": {"word": {"type": "string"}, "prob": _PROB}}},
                "saliency": {"type": "array", "items": {"type": "array", "items": {"type": "number"}},
                             "description": "drop in the word's log-probability when each region is greyed out"}}}},
        "cells": {"type": "array", "items": {
            "type": "object", "required": ["cell", "activation"], "additionalProperties": False,
            "properties": {"cell": {"type": "integer", "minimum": 0},
                           "activation": {"type": "array", "items": {"type": "number", "minimum": -1, "maximum": 1}}}}},
    },
}


_EVIDENCE = {
    "type": "array", "description": "each object the caption names, with the photo's evidence for it",
    "items": {"type": "object", "required": ["word", "concept", "prob", "source"], "additionalProperties": False,
              "properties": {"word": {"type": "string"}, "concept": {"type": "string"}, "prob": _PROB,
                             "source": {"type": "string", "enum": ["imagenet", "detector"],
                                        "description": "the encoder's ImageNet head, or a detector learned "
                                                       "from training captions"}}}}
_GROUNDING = {
    "type": ["object", "null"], "required": ["low_confidence", "reason", "note", "labels", "concepts"],
    "additionalProperties": False,
    "description": "the photo's evidence (null for a model without grounding)",
    "properties": {
        "low_confidence": {"type": "boolean", "description": "do not trust the caption (see reason); alt_text "
                                                             "then says what the photo probably shows instead"},
        "reason": {"enum": [UNFAMILIAR, IMPROBABLE, None],
                   "description": f"why low_confidence: {UNFAMILIAR} (the ImageNet head is sure of a class the model "
                                  f"never learned to talk about) or {IMPROBABLE} (the decoder itself finds its best "
                                  "caption improbable)"},
        "note": {"type": ["string", "null"], "description": "a sentence for the reader when low_confidence"},
        "labels": {"type": "array", "description": "the ImageNet head's likeliest classes", "items": {
            "type": "object", "required": ["label", "prob"], "additionalProperties": False,
            "properties": {"label": {"type": "string"}, "prob": _PROB}}},
        "concepts": {"type": "object", "description": "every concept's evidence", "additionalProperties": _PROB}}}


def openapi_spec(defaults: DecodeOptions | None = None) -> dict:
    """The document; option defaults are the served model's own when given, else DecodeOptions'."""
    options = option_schemas(defaults or DecodeOptions())
    return {
        "openapi": "3.1.0",
        "info": {"title": "captioner", "version": __version__,
                 "description": "Image captioning: POST a photo, get captions. Options may be given as query "
                                "parameters, multipart form fields or JSON fields."},
        "paths": _paths({**options, "explain": _EXPLAIN}),
        "components": {"schemas": _schemas(options)},
    }


def _paths(fields: dict) -> dict:
    """Every route: the captioning endpoint with its options as query, form or JSON fields, and the rest."""
    params = [{"name": k, "in": "query", "required": False, "schema": v} for k, v in fields.items()]
    return {
        "/v1/captions": {"post": {
            "summary": "Caption one image",
            "parameters": params,
            "requestBody": {"required": True, "content": {
                "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
                    "image": {"type": "string", "format": "binary"}, **fields}}},
                "application/json": {"schema": {"type": "object", "required": ["image"], "properties": {
                    "image": {"type": "string", "contentEncoding": "base64"}, **fields},
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
        "/explain.js": {"get": {"summary": "The web page's explanation renderer", "responses": {"200": {
            "description": "JavaScript", "content": {"text/javascript": {"schema": {"type": "string"}}}}}}},
        "/": {"get": {"summary": "Web page to try the service", "responses": {"200": {
            "description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
    }


def _schemas(options: dict) -> dict:
    """The response bodies' schemas (the tests validate real responses against them)."""
    return {
        "Caption": {"type": "object", "required": ["text", "log_prob", "tokens"], "properties": {
            "text": {"type": "string"},
            "log_prob": {"type": "number", "maximum": 0,
                         "description": "the decoder's log-probability of the caption; decoded grounded, plus "
                                        "the log evidence of each object it names (the score it was chosen by)"},
            "tokens": {"type": "array", "items": {"type": "string"}},
            "evidence": _EVIDENCE,
            "explanation": {"$ref": "#/components/schemas/Explanation"}}},
        "Explanation": _EXPLANATION,
        "CaptionResponse": {"type": "object", "required": ["alt_text", "captions", "grounding", "model", "timing_ms",
                                                           "options", "batch_size"],
                            "properties": {
            "alt_text": {"type": "string", "description": "for an image's alt attribute: the best caption as a "
                         "sentence or, when grounding.low_confidence, what the photo probably shows and why there "
                         "is no caption"},
            "captions": {"type": "array", "minItems": 1, "items": {"$ref": "#/components/schemas/Caption"}},
            "grounding": _GROUNDING,
            "options": {"type": "object", "description": "the options used, the model's defaults filled in",
                        "required": list(PUBLIC_OPTIONS), "additionalProperties": False,
                        "properties": {**options, "seed": {"type": ["integer", "null"]}}},
            "model": {"type": "object", "required": ["name", "checkpoint_sha256"], "properties": {
                "name": {"type": "string"}, "checkpoint_sha256": {"type": ["string", "null"]}}},
            "timing_ms": {"type": "object", "required": ["total"],
                          "additionalProperties": {"type": "number", "minimum": 0}},
            "batch_size": {"type": "integer", "minimum": 1}}},
        "ModelInfo": {"type": "object", "required": ["name", "encoder", "backend", "decoder", "vocab_size", "checkpoint_sha256", "metrics"],
                      "properties": {
            "name": {"type": "string"}, "encoder": {"type": "string"},
            "backend": {"type": "string", "enum": list(BACKENDS),
                        "description": "what runs the encoder and the decoding step (CAPTIONER_BACKEND)"},
            "int8": {"type": ["string", "null"], "enum": ["encoder", "step", None],
                     "description": "what the backend runs in int8 on this host's CPU (onnx-int8 only)"},
            "decoder": {"type": "object", "required": ["cell"], "properties": {"cell": {"type": "string", "enum": ["rnn", "lstm", "gru"]}}},
            "vocab_size": {"type": "integer", "minimum": 4}, "checkpoint_sha256": {"type": ["string", "null"]},
            "metrics": {"type": "object"}, "preprocess": {"type": "object"}, "load_seconds": {"type": "number"},
            "grounding": {"type": ["object", "null"], "description": "concepts with their evidence source and "
                                                                      "threshold; null without grounding"}}},
        "Status": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["code", "message"], "additionalProperties": False,
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
    }
