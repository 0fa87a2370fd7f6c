"""The broker's OpenAPI 3 document, served at /api/v1/openapi.json.

Kept beside the routes it describes; tests/proxy check that every Flask rule appears here with
the same methods and the other way round, and that the document is structurally valid OpenAPI.
"""

from __future__ import annotations

from typing import Any

from hsmd import __version__

_ERROR_CODES = [
    "invalid_argument",
    "unauthenticated",
    "forbidden",
    "permission_denied",
    "not_found",
    "already_exists",
    "conflict",
    "failed_precondition",
    "resource_exhausted",
    "data_loss",
    "internal",
    "unavailable",
    "busy",
    "deadline_exceeded",
    "method_not_allowed",
    "payload_too_large",
    "unsupported_media_type",
    "uri_too_long",
    "length_required",
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    text = {
        400: "invalid input",
        401: "missing, expired or wrong-audience token",
        403: "the policy denies it",
        404: "no such secret",
        409: "already exists, or changed since expectedChecksum",
        413: "body larger than the limit",
        415: "body is not application/json",
        503: "agents unreachable or quorum not reached (see Retry-After)",
    }
    return {str(s): {"$ref": f"#/components/responses/E{s}"} for s in statuses if s in text}


_PATH_PARAM = {
    "name": "path",
    "in": "path",
    "required": True,
    "description": "secret path: segments of [A-Za-z0-9._-]+ joined by '/' (nested paths are sent unescaped)",
    "schema": {"type": "string", "maxLength": 255},
}
_PREFIX_PARAM = {
    "name": "prefix",
    "in": "query",
    "required": False,
    "description": "list only paths under this prefix (whole segments)",
    "schema": {"type": "string"},
}
_KEY_PARAM = {
    "name": "key",
    "in": "query",
    "required": False,
    "description": "delete only this key",
    "schema": {"type": "string"},
}
_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": "compare-and-swap on the checksum (same as expectedChecksum)",
    "schema": {"type": "string"},
}
_AUTH_ERRORS = (400, 401, 403, 503)


def document() -> dict[str, Any]:
    write_response = _json(_ref("WriteResult"), "written; quorum reached")
    paths: dict[str, Any] = {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "the process serves",
                "security": [],
                "tags": ["health"],
                "responses": {"200": _json(_ref("Status"), "alive")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "enough agents answer for a write quorum",
                "security": [],
                "tags": ["health"],
                "responses": {"200": _json(_ref("Status"), "ready"), "503": _json(_ref("Status"), "not ready")},
            }
        },
        "/api/v1/health": {
            "get": {
                "operationId": "health",
                "summary": "broker and agent health",
                "security": [],
                "tags": ["health"],
                "responses": {
                    "200": _json(_ref("Health"), "healthy or degraded"),
                    "503": _json(_ref("Health"), "unavailable"),
                },
            }
        },
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "this document",
                "tags": ["meta"],
                "responses": {"200": _json({"type": "object"}, "OpenAPI 3 document"), **_errors(401)},
            }
        },
        "/api/v1/hsm/secrets": {
            "get": {
                "operationId": "listSecrets",
                "summary": "list secret paths the caller may list",
                "tags": ["secrets"],
                "parameters": [_PREFIX_PARAM],
                "responses": {"200": _json(_ref("SecretList"), "paths"), **_errors(*_AUTH_ERRORS)},
            }
        },
        "/api/v1/hsm/secrets/{path}": {
            "parameters": [_PATH_PARAM],
            "get": {
                "operationId": "readSecret",
                "summary": "read a secret (values base64)",
                "tags": ["secrets"],
                "responses": {
                    "200": _json(_ref("Secret"), "the secret; ETag is its checksum"),
                    **_errors(*_AUTH_ERRORS, 404),
                },
            },
            "post": {
                "operationId": "createSecret",
                "summary": "create a secret (409 if it exists)",
                "tags": ["secrets"],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SecretInput")}}},
                "responses": {"201": _json(_ref("WriteResult"), "created"), **_errors(*_AUTH_ERRORS, 409, 413, 415)},
            },
            "put": {
                "operationId": "replaceSecret",
                "summary": "replace (or create) a secret",
                "tags": ["secrets"],
                "parameters": [_IF_MATCH],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SecretReplace")}}},
                "responses": {"200": write_response, **_errors(*_AUTH_ERRORS, 404, 409, 413, 415)},
            },
            "patch": {
                "operationId": "patchSecret",
                "summary": "merge keys (null removes a key)",
                "tags": ["secrets"],
                "parameters": [_IF_MATCH],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SecretPatch")}}},
                "responses": {"200": write_response, **_errors(*_AUTH_ERRORS, 404, 409, 413, 415)},
            },
            "delete": {
                "operationId": "deleteSecret",
                "summary": "delete a secret, or one key",
                "tags": ["secrets"],
                "parameters": [_KEY_PARAM],
                "responses": {"200": _json(_ref("WriteResult"), "deleted"), **_errors(*_AUTH_ERRORS, 404)},
            },
        },
        "/api/v1/hsm/checksum/{path}": {
            "parameters": [_PATH_PARAM],
            "get": {
                "operationId": "getChecksum",
                "summary": "the secret's checksum",
                "tags": ["secrets"],
                "responses": {"200": _json(_ref("Checksum"), "checksum"), **_errors(*_AUTH_ERRORS, 404)},
            },
        },
        "/api/v1/hsm/import": {
            "post": {
                "operationId": "importSecrets",
                "summary": "write many secrets; per-item results",
                "tags": ["bulk"],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("ImportRequest")}}},
                "responses": {
                    "200": _json(_ref("ImportResult"), "every item succeeded"),
                    "207": _json(_ref("ImportResult"), "some items failed"),
                    **_errors(*_AUTH_ERRORS, 413, 415),
                },
            }
        },
        "/api/v1/hsm/export": {
            "get": {
                "operationId": "exportSecrets",
                "summary": "read many secrets the caller may export",
                "tags": ["bulk"],
                "parameters": [_PREFIX_PARAM],
                "responses": {
                    "200": _json(_ref("Export"), "the secrets"),
                    "207": _json(_ref("Export"), "some secrets could not be read"),
                    **_errors(*_AUTH_ERRORS),
                },
            }
        },
        "/api/v1/hsm/info": {
            "get": {
                "operationId": "info",
                "summary": "devices, token info, PIN flags, repair queue, read cache",
                "tags": ["devices"],
                "responses": {"200": _json(_ref("Info"), "device information"), **_errors(*_AUTH_ERRORS)},
            }
        },
        "/api/v1/hsm/pin": {
            "post": {
                "operationId": "rotatePin",
                "summary": "change the user PIN of the pool's devices (TLS only)",
                "tags": ["devices"],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("PinChange")}}},
                "responses": {
                    "200": _json(_ref("PinResult"), "changed on every device"),
                    "207": _json(_ref("PinResult"), "changed on some devices"),
                    **_errors(*_AUTH_ERRORS, 409, 415),
                },
            }
        },
    }
    b64map = {"type": "object", "additionalProperties": {"type": "string", "format": "byte"}}
    metadata_in: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "description": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "format": {"type": "string"},
            "dataType": {"type": "string"},
            "source": {"type": "string"},
        },
    }
    metadata_out = {
        "type": "object",
        "properties": {
            **metadata_in["properties"],
            "createdAt": {"type": "string", "description": "time of the last write"},
        },
    }
    agent_result = {
        "type": "object",
        "required": ["agent", "ok"],
        "properties": {
            "agent": {"type": "string"},
            "ok": {"type": "boolean"},
            "checksum": {"type": "string"},
            "changed": {"type": "boolean"},
            "error": _ref("ErrorDetail"),
        },
    }
    disagreement = {
        "type": "object",
        "properties": {
            "resolvedBy": {"type": "string", "enum": ["majority", "newest"]},
            "agents": {"type": "array", "items": _ref("AgentResult")},
        },
    }
    schemas: dict[str, Any] = {
        "ErrorDetail": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "enum": _ERROR_CODES},
                "message": {"type": "string"},
                "requestId": {"type": "string"},
            },
        },
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": _ref("ErrorDetail"), "agents": {"type": "array", "items": _ref("AgentResult")}},
        },
        "Status": {"type": "object", "properties": {"status": {"type": "string"}}},
        "Health": {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["healthy", "degraded", "unavailable"]},
                "agents": {
                    "type": "object",
                    "properties": {"healthy": {"type": "integer"}, "total": {"type": "integer"}},
                },
                "quorum": {"type": "object"},
                "repairPending": {"type": "integer"},
            },
        },
        "AgentResult": agent_result,
        "Disagreement": disagreement,
        "Metadata": metadata_out,
        "MetadataInput": metadata_in,
        "Secret": {
            "type": "object",
            "required": ["path", "data", "checksum", "metadata"],
            "properties": {
                "path": {"type": "string"},
                "data": b64map,
                "checksum": {"type": "string"},
                "metadata": _ref("Metadata"),
                "disagreement": _ref("Disagreement"),
            },
        },
        "SecretInput": {
            "type": "object",
            "required": ["data"],
            "additionalProperties": False,
            "properties": {"data": b64map, "metadata": _ref("MetadataInput")},
        },
        "SecretReplace": {
            "type": "object",
            "required": ["data"],
            "additionalProperties": False,
            "properties": {"data": b64map, "metadata": _ref("MetadataInput"), "expectedChecksum": {"type": "string"}},
        },
        "SecretPatch": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "data": {
                    "type": "object",
                    "additionalProperties": {"type": "string", "format": "byte", "nullable": True},
                },
                "metadata": _ref("MetadataInput"),
                "expectedChecksum": {"type": "string"},
            },
        },
        "WriteResult": {
            "type": "object",
            "required": ["path", "changed", "quorum", "agents"],
            "properties": {
                "path": {"type": "string"},
                "checksum": {"type": "string"},
                "changed": {"type": "boolean"},
                "created": {"type": "boolean"},
                "deleted": {"type": "boolean"},
                "key": {"type": "string"},
                "attempts": {"type": "integer"},
                "quorum": {
                    "type": "object",
                    "properties": {
                        "mode": {"type": "string", "enum": ["majority", "all", "one"]},
                        "required": {"type": "integer"},
                        "acknowledged": {"type": "integer"},
                        "agents": {"type": "integer"},
                    },
                },
                "agents": {"type": "array", "items": _ref("AgentResult")},
                "repairQueued": {"type": "array", "items": {"type": "string"}},
            },
        },
        "SecretList": {
            "type": "object",
            "properties": {
                "prefix": {"type": "string"},
                "paths": {"type": "array", "items": {"type": "string"}},
                "count": {"type": "integer"},
                "disagreement": {"type": "array", "items": {"type": "string"}},
            },
        },
        "Checksum": {
            "type": "object",
            "properties": {
                "path": {"type": "string"},
                "checksum": {"type": "string"},
                "disagreement": _ref("Disagreement"),
            },
        },
        "ImportRequest": {
            "type": "object",
            "required": ["secrets"],
            "additionalProperties": False,
            "properties": {
                "overwrite": {"type": "boolean", "default": False},
                "secrets": {
                    "type": "array",
                    "maxItems": 1000,
                    "items": {
                        "type": "object",
                        "required": ["path", "data"],
                        "additionalProperties": False,
                        "properties": {
                            "path": {"type": "string"},
                            "data": b64map,
                            "metadata": _ref("MetadataInput"),
                            "checksum": {"type": "string", "description": "ignored (export documents carry it)"},
                        },
                    },
                },
            },
        },
        "ImportResult": {
            "type": "object",
            "properties": {
                "results": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "path": {"type": "string"},
                            "status": {"type": "string", "enum": ["created", "updated", "unchanged", "failed"]},
                            "checksum": {"type": "string"},
                            "error": _ref("ErrorDetail"),
                            "agents": {"type": "array", "items": _ref("AgentResult")},
                        },
                    },
                },
                "summary": {
                    "type": "object",
                    "properties": {
                        "total": {"type": "integer"},
                        "succeeded": {"type": "integer"},
                        "failed": {"type": "integer"},
                    },
                },
            },
        },
        "Export": {
            "type": "object",
            "properties": {
                "prefix": {"type": "string"},
                "count": {"type": "integer"},
                "secrets": {"type": "array", "items": _ref("Secret")},
                "errors": {"type": "array", "items": {"type": "object"}},
            },
        },
        "Info": {
            "type": "object",
            "properties": {
                "devices": {"type": "array", "items": {"type": "object"}},
                "quorum": {"type": "object"},
                "repair": {"type": "object"},
                "readCache": {"type": "object"},
                "policy": {"type": "object"},
            },
        },
        "PinChange": {
            "type": "object",
            "required": ["oldPin", "newPin"],
            "additionalProperties": False,
            "properties": {
                "oldPin": {"type": "string", "format": "password"},
                "newPin": {"type": "string", "format": "password"},
                "agents": {"type": "array", "items": {"type": "string"}},
            },
        },
        "PinResult": {
            "type": "object",
            "properties": {
                "changed": {"type": "integer"},
                "failed": {"type": "integer"},
                "agents": {"type": "array", "items": _ref("AgentResult")},
            },
        },
    }
    responses = {
        f"E{status}": _json(_ref("Error"), text)
        for status, text in {
            400: "invalid input",
            401: "missing, expired or wrong-audience token",
            403: "the access policy denies it",
            404: "not found",
            409: "already exists, or changed since expectedChecksum",
            413: "body larger than the limit",
            415: "body is not application/json",
            503: "agents unreachable or quorum not reached; retry after Retry-After",
        }.items()
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "hsmd secrets broker",
            "version": __version__,
            "description": "HSM-backed secrets: CRUD fanned out to the agents of a pool, "
            "Kubernetes ServiceAccount identity, per-path policy, audit.",
        },
        "servers": [{"url": "/"}],
        "security": [{"serviceAccountToken": []}],
        "tags": [{"name": n} for n in ("health", "meta", "secrets", "bulk", "devices")],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "serviceAccountToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "a Kubernetes ServiceAccount token for the broker's audience (default hsmd)",
                }
            },
            "schemas": schemas,
            "responses": responses,
        },
    }
