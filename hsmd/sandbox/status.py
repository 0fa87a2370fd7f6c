"""Kubernetes ``Status`` errors: the sandbox's one error type, rendered once by the HTTP layer.

``StatusError`` is an ``HsmdError`` (so the project's error model still applies: ``.code`` and
``.temporary``) that also carries what the wire needs — HTTP status, ``reason``, ``details`` with
field ``causes`` — built by the helpers below with the messages kube-apiserver uses.
"""

from __future__ import annotations

from typing import Any

from hsmd.errors import HsmdError

_CODES = {
    400: "invalid_argument", 401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "invalid_argument",
    406: "invalid_argument", 409: "conflict", 410: "failed_precondition", 413: "resource_exhausted",
    415: "invalid_argument", 422: "invalid_argument", 429: "busy", 500: "internal", 503: "unavailable",
    504: "deadline_exceeded",
}
_TEMPORARY = {429, 500, 503, 504}


class StatusError(HsmdError):
    """An API error as a Kubernetes Status object."""

    def __init__(self, http_status: int, reason: str, message: str, details: dict[str, Any] | None = None,
                 *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.reason = reason
        self.details = details
        self.retry_after = retry_after
        self.code = _CODES.get(http_status, "internal")
        self.temporary = http_status in _TEMPORARY

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                               "message": self.message, "reason": self.reason}
        details = dict(self.details or {})
        if self.retry_after is not None:
            details["retryAfterSeconds"] = self.retry_after
        if details:
            out["details"] = details
        out["code"] = self.http_status
        return out


def success(name: str | None = None, group: str = "", kind: str = "", uid: str | None = None) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    if kind:
        details["kind"] = kind
    if uid:
        details["uid"] = uid
    out: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
    if details:
        out["details"] = details
    return out


def _details(name: str | None, group: str, kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if name:
        out["name"] = name
    if group:
        out["group"] = group
    out["kind"] = kind
    return out


def _qual(plural: str, group: str) -> str:
    return f"{plural}.{group}" if group else plural


def not_found(plural: str, group: str, name: str) -> StatusError:
    return StatusError(404, "NotFound", f'{_qual(plural, group)} "{name}" not found', _details(name, group, plural))


def already_exists(plural: str, group: str, name: str) -> StatusError:
    return StatusError(409, "AlreadyExists", f'{_qual(plural, group)} "{name}" already exists',
                       _details(name, group, plural))


def conflict(plural: str, group: str, name: str, why: str = "") -> StatusError:
    why = why or "the object has been modified; please apply your changes to the latest version and try again"
    return StatusError(409, "Conflict", f'Operation cannot be fulfilled on {_qual(plural, group)} "{name}": {why}',
                       _details(name, group, plural))


def bad_request(message: str) -> StatusError:
    return StatusError(400, "BadRequest", message)


def method_not_allowed(message: str = "the server does not allow this method on the requested resource"
                       ) -> StatusError:
    return StatusError(405, "MethodNotAllowed", message)


def forbidden(message: str, details: dict[str, Any] | None = None) -> StatusError:
    return StatusError(403, "Forbidden", message, details)


def unauthorized() -> StatusError:
    return StatusError(401, "Unauthorized", "Unauthorized")


def gone(message: str) -> StatusError:
    return StatusError(410, "Expired", message)


def internal(message: str) -> StatusError:
    return StatusError(500, "InternalError", f"Internal error occurred: {message}")


def unsupported_media(accepted: str) -> StatusError:
    return StatusError(415, "UnsupportedMediaType",
                       f"the body of the request was in an unknown format - accepted media types include: {accepted}")


def too_large(message: str = "Request entity too large: limit is 3145728") -> StatusError:
    return StatusError(413, "RequestEntityTooLarge", message)


class Cause:
    """One field error: ``field: Reason-text: detail`` as k8s.io/apimachinery's field.Error prints it."""

    TEXT = {
        "FieldValueRequired": "Required value",
        "FieldValueInvalid": "Invalid value",
        "FieldValueNotSupported": "Unsupported value",
        "FieldValueForbidden": "Forbidden",
        "FieldValueTooLong": "Too long",
        "FieldValueTooMany": "Too many",
        "FieldValueDuplicate": "Duplicate value",
        "FieldValueTypeInvalid": "Invalid value",
    }

    def __init__(self, reason: str, field: str, detail: str = "", value: Any = None, *,
                 show_value: bool = False) -> None:
        self.reason = reason
        self.field = field
        self.detail = detail
        self.value = value
        self.show_value = show_value

    def message(self) -> str:
        text = self.TEXT.get(self.reason, "Invalid value")
        if self.show_value or self.reason in ("FieldValueInvalid", "FieldValueNotSupported",
                                              "FieldValueDuplicate", "FieldValueTypeInvalid"):
            text += ": " + _render(self.value)
        if self.detail:
            text += ": " + self.detail
        return text

    def full(self) -> str:
        return f"{self.field}: {self.message()}" if self.field else self.message()


def _render(value: Any) -> str:
    import json

    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_render(v)}" for k, v in value.items()) + "]"
    if isinstance(value, list):
        return "[]interface {}{" + ", ".join(_render(v) for v in value) + "}"
    return str(value)


def invalid(kind: str, group: str, name: str, causes: list[Cause]) -> StatusError:
    """422 Invalid, message and causes as kube-apiserver formats an aggregate field error list."""
    texts = [c.full() for c in causes]
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    qual = f"{kind}.{group}" if group else kind
    details: dict[str, Any] = {"name": name, "kind": kind}
    if group:
        details["group"] = group
    details["causes"] = [{"reason": c.reason, "message": c.message(), "field": c.field} for c in causes]
    return StatusError(422, "Invalid", f'{qual} "{name}" is invalid: {joined}', details)
