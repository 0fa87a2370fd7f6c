"""The one place where errors become HTTP responses.

Domain errors (hsmd.errors) keep their stable ``code``; werkzeug's HTTP errors (unknown route,
method, body too large, content type) get codes of their own. Every error body is
``{"error": {"code", "message", "requestId"}}`` plus, for fan-out failures, the per-agent results
the view recorded in the request's ``RequestRecord``. Temporary errors carry ``Retry-After``.
"""

from __future__ import annotations

import logging
import traceback

from flask import Flask, Response, g, jsonify
from werkzeug.exceptions import HTTPException

from hsmd.errors import HsmdError
from hsmd.proxy.audit import RequestRecord

log = logging.getLogger("hsmd.proxy")

STATUS_BY_CODE: dict[str, int] = {
    "invalid_argument": 400,
    "unauthenticated": 401,
    "forbidden": 403,
    "permission_denied": 403,
    "not_found": 404,
    "already_exists": 409,
    "conflict": 409,
    "failed_precondition": 409,
    "resource_exhausted": 507,
    "data_loss": 500,
    "internal": 500,
    "unavailable": 503,
    "busy": 503,
    "deadline_exceeded": 504,
}

# werkzeug HTTP errors -> stable codes
CODE_BY_HTTP_STATUS: dict[int, str] = {
    400: "invalid_argument",
    404: "not_found",
    405: "method_not_allowed",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
}

RETRY_AFTER_SECONDS = 2


def _record() -> RequestRecord | None:
    rec: RequestRecord | None = g.get("hsmd_record")
    return rec


def _note_error(rec: RequestRecord | None, code: str) -> None:
    if rec is not None:
        rec.error_code = code


def error_body(code: str, message: str, rec: RequestRecord | None = None) -> dict[str, object]:
    """The JSON error document; ``rec`` defaults to the current Flask request's record."""
    rec = rec if rec is not None else _record()
    error: dict[str, object] = {"code": code, "message": message}
    if rec is not None and rec.request_id:
        error["requestId"] = rec.request_id
    body: dict[str, object] = {"error": error}
    if rec is not None and rec.agent_outcomes:
        body["agents"] = [o.to_json() for o in rec.agent_outcomes]
    return body


def hsmd_error_parts(err: HsmdError, rec: RequestRecord | None) -> tuple[int, dict[str, object], list[tuple[str, str]]]:
    """(status, body, extra headers) of a domain error; noted in the request record."""
    status = STATUS_BY_CODE.get(err.code, 500)
    _note_error(rec, err.code)
    headers = []
    if err.temporary:
        headers.append(("Retry-After", str(RETRY_AFTER_SECONDS)))
    if status == 401:
        headers.append(("WWW-Authenticate", 'Bearer realm="hsmd"'))
    return status, error_body(err.code, err.message, rec), headers


def unexpected_error_parts(err: Exception, rec: RequestRecord | None) -> tuple[int, dict[str, object]]:
    """(status, body) of a bug: logged with its type and frames, never its message (it may hold
    request data)."""
    log.error(
        "unhandled error",
        extra={
            "request_id": rec.request_id if rec is not None else None,
            "error_type": type(err).__name__,
            "traceback": "".join(traceback.format_tb(err.__traceback__)),
        },
    )
    _note_error(rec, "internal")
    return 500, error_body("internal", "internal error; see the proxy log for this request id", rec)


def hsmd_error_response(err: HsmdError) -> Response:
    status, body, headers = hsmd_error_parts(err, _record())
    response = jsonify(body)
    response.status_code = status
    for name, value in headers:
        response.headers[name] = value
    return response


def http_error_response(err: HTTPException) -> Response:
    status = err.code or 500
    code = CODE_BY_HTTP_STATUS.get(status, "invalid_argument" if 400 <= status < 500 else "internal")
    message = {
        404: "no such endpoint",
        405: "method not allowed on this endpoint",
        413: "request body too large",
    }.get(status, err.description or err.name)
    _note_error(_record(), code)
    response = jsonify(error_body(code, message))
    response.status_code = status
    if status == 405 and err.get_headers():
        for name, value in err.get_headers():
            if name.lower() == "allow":
                response.headers["Allow"] = value
    return response


def unexpected_error_response(err: Exception) -> Response:
    if isinstance(err, HTTPException):
        return http_error_response(err)
    if isinstance(err, HsmdError):
        return hsmd_error_response(err)
    status, body = unexpected_error_parts(err, _record())
    response = jsonify(body)
    response.status_code = status
    return response


def register(app: Flask) -> None:
    app.register_error_handler(HsmdError, hsmd_error_response)
    app.register_error_handler(HTTPException, http_error_response)
    app.register_error_handler(Exception, unexpected_error_response)
