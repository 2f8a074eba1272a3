"""Every error is JSON `{"error": {"code", "message"}}` with the right status: `ApiError` for the ones the
routes raise, and handlers for Flask's own (404, 405, 413) and for anything unexpected (a logged 500)."""

from __future__ import annotations

import logging

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger("captioner.service")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str):
    return jsonify({"error": {"code": code, "message": message}}), status


def _api_error(exc: ApiError):
    return error_response(exc.status, exc.code, exc.message)


def _http_error(exc: HTTPException):
    code = (exc.name or "error").lower().replace(" ", "_")
    message = exc.description or exc.name
    if exc.code == 413:
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        if (request.content_length or 0) <= limit:  # within the size: werkzeug's cap on form parts
            message = f"the form has more than {request.max_form_parts} parts"
        else:
            message = f"request body is over the {limit / 2**20:g} MB limit"
    return error_response(exc.code or 500, code, message)


def _unexpected(exc: Exception):
    log.exception("unhandled error")
    return error_response(500, "internal_error", "internal error; it has been logged")


def init_app(app: Flask) -> None:
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
