"""Request bodies in, JSON out: strict parsing of the broker's JSON documents.

Everything a client sends is checked here before anything reaches an agent: the content type,
well-formed JSON, an object with only known fields, keys that a Kubernetes Secret can hold, strict
base64 values, metadata field types. Errors are ``InvalidArgument`` (400) naming the field, never
echoing a value. Responses encode values as base64 and metadata with the Go field names.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import replace
from typing import Any

from flask import Request
from werkzeug.exceptions import UnsupportedMediaType

from hsmd.errors import InvalidArgument
from hsmd.model import DATA_TYPES, Secret, SecretMetadata, validate_key

METADATA_FIELDS = ("description", "labels", "format", "dataType", "source")


def json_body(
    request: Request, allowed: AbstractSet[str], *, required: AbstractSet[str] = frozenset()
) -> dict[str, Any]:
    """The request's JSON object, with unknown or missing fields refused."""
    mimetype = request.mimetype
    if mimetype != "application/json" and not (mimetype.startswith("application/") and mimetype.endswith("+json")):
        raise UnsupportedMediaType(f"send the body as application/json (got {mimetype or 'no content type'!r})")
    raw = request.get_data(cache=True)  # raises 413 past MAX_CONTENT_LENGTH
    try:
        doc = json.loads(raw)
    except UnicodeDecodeError:
        raise InvalidArgument("request body is not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise InvalidArgument(
            f"request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(doc, dict):
        raise InvalidArgument("request body must be a JSON object")
    check_fields(doc, allowed, "request body", required=required)
    return doc


def check_fields(
    doc: Mapping[str, Any], allowed: AbstractSet[str], where: str, *, required: AbstractSet[str] = frozenset()
) -> None:
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise InvalidArgument(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(allowed))}"
        )
    missing = sorted(required - set(doc))
    if missing:
        raise InvalidArgument(f"{where}: missing required field(s) {', '.join(map(repr, missing))}")


def decode_value(key: str, value: object, where: str = "data") -> bytes:
    if not isinstance(value, str):
        raise InvalidArgument(f"{where}[{key!r}] must be a base64 string")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise InvalidArgument(f"{where}[{key!r}] is not valid base64") from None
    # only the canonical encoding: no stray padding or trailing bits that silently change meaning
    if base64.b64encode(raw).decode("ascii") != value:
        raise InvalidArgument(f"{where}[{key!r}] is not canonical base64 (check the padding)")
    return raw


def decode_data(raw: object, *, where: str = "data") -> dict[str, bytes]:
    """``{"key": "<base64>"}`` -> ``{"key": b"..."}``; keys validated as Kubernetes Secret keys."""
    if not isinstance(raw, dict):
        raise InvalidArgument(f"{where} must be an object of key to base64 value")
    out: dict[str, bytes] = {}
    for key, value in raw.items():
        validate_key(key)
        out[key] = decode_value(key, value, where)
    return out


def decode_patch_data(raw: object) -> dict[str, bytes | None]:
    """Like decode_data, but ``null`` removes a key."""
    if not isinstance(raw, dict):
        raise InvalidArgument("data must be an object of key to base64 value or null")
    out: dict[str, bytes | None] = {}
    for key, value in raw.items():
        validate_key(key)
        out[key] = None if value is None else decode_value(key, value)
    return out


def decode_metadata(
    raw: object, base: SecretMetadata | None = None, *, ignore_created_at: bool = False
) -> SecretMetadata:
    """Client metadata over ``base`` (fields not given keep the base's values). ``createdAt`` is
    refused (or, for export documents being imported, ignored): the broker stamps the write time."""
    base = base or SecretMetadata()
    if raw is None:
        return base
    if not isinstance(raw, dict):
        raise InvalidArgument("metadata must be an object")
    allowed = {*METADATA_FIELDS, "createdAt"} if ignore_created_at else set(METADATA_FIELDS)
    check_fields(raw, allowed, "metadata")
    changes: dict[str, Any] = {}
    for name in ("description", "format", "source"):
        if name in raw:
            if not isinstance(raw[name], str) or len(raw[name]) > 1024:
                raise InvalidArgument(f"metadata.{name} must be a string of at most 1024 characters")
            changes[name] = raw[name]
    if "dataType" in raw:
        data_type = raw["dataType"]
        if not isinstance(data_type, str) or (data_type and data_type not in DATA_TYPES):
            raise InvalidArgument(f"metadata.dataType must be one of {', '.join(DATA_TYPES)}")
        changes["data_type"] = data_type
    if "labels" in raw:
        labels = raw["labels"]
        if not isinstance(labels, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 317 and len(v) <= 1024
            for k, v in labels.items()
        ):
            raise InvalidArgument("metadata.labels must be an object of string to string")
        changes["labels"] = dict(labels)
    return replace(base, created_at="", **changes)


def encode_data(data: Mapping[str, bytes]) -> dict[str, str]:
    return {key: base64.b64encode(value).decode("ascii") for key, value in sorted(data.items())}


def secret_json(secret: Secret) -> dict[str, object]:
    return {
        "path": secret.path,
        "data": encode_data(secret.data),
        "checksum": secret.checksum,
        "metadata": secret.metadata.to_json_dict(),
    }
