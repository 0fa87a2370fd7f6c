"""Decoding of Kubernetes protobuf request bodies for the few kinds kubectl's typed commands send.

kubectl (client-go) encodes built-in objects as ``application/vnd.kubernetes.protobuf`` when it
creates them (``kubectl create secret|configmap|namespace|serviceaccount|token``, ``kubectl auth
whoami``) and has no fallback to JSON. The wire format is the "k8s\\0" envelope around a
runtime.Unknown whose ``raw`` bytes are the object's protobuf message. We decode exactly the
messages listed in ``KINDS`` (field numbers from k8s.io/api generated.proto) into the JSON shape;
anything else gets 415 with a hint to use ``kubectl apply`` (which sends JSON).
"""

from __future__ import annotations

import base64
import datetime
from typing import Any

from hsmd.sandbox.status import StatusError

MAGIC = b"k8s\x00"

Schema = dict[int, tuple[str, Any]]

TIME: Schema = {1: ("seconds", "int"), 2: ("nanos", "int")}
OWNER_REF: Schema = {1: ("kind", "string"), 3: ("name", "string"), 4: ("uid", "string"),
                     5: ("apiVersion", "string"), 6: ("controller", "bool"), 7: ("blockOwnerDeletion", "bool")}
OBJECT_META: Schema = {
    1: ("name", "string"), 2: ("generateName", "string"), 3: ("namespace", "string"), 4: ("selfLink", "string"),
    5: ("uid", "string"), 6: ("resourceVersion", "string"), 7: ("generation", "int"),
    8: ("creationTimestamp", "time"), 9: ("deletionTimestamp", "time"), 10: ("deletionGracePeriodSeconds", "int"),
    11: ("labels", ("map", "string")), 12: ("annotations", ("map", "string")),
    13: ("ownerReferences", ("repeated", OWNER_REF)), 14: ("finalizers", ("repeated", "string")),
}
OBJECT_REF: Schema = {1: ("kind", "string"), 2: ("namespace", "string"), 3: ("name", "string"), 4: ("uid", "string"),
                      5: ("apiVersion", "string"), 6: ("resourceVersion", "string"), 7: ("fieldPath", "string")}
KINDS: dict[tuple[str, str], Schema] = {
    ("v1", "Secret"): {1: ("metadata", OBJECT_META), 2: ("data", ("map", "bytes")), 3: ("type", "string"),
                       4: ("stringData", ("map", "string")), 5: ("immutable", "bool")},
    ("v1", "ConfigMap"): {1: ("metadata", OBJECT_META), 2: ("data", ("map", "string")),
                          3: ("binaryData", ("map", "bytes")), 4: ("immutable", "bool")},
    ("v1", "Namespace"): {1: ("metadata", OBJECT_META), 2: ("spec", {1: ("finalizers", ("repeated", "string"))}),
                          3: ("status", {1: ("phase", "string")})},
    ("v1", "ServiceAccount"): {1: ("metadata", OBJECT_META), 2: ("secrets", ("repeated", OBJECT_REF)),
                               3: ("imagePullSecrets", ("repeated", {1: ("name", "string")})),
                               4: ("automountServiceAccountToken", "bool")},
    ("authentication.k8s.io/v1", "TokenRequest"): {
        1: ("metadata", OBJECT_META),
        2: ("spec", {1: ("audiences", ("repeated", "string")), 4: ("expirationSeconds", "int"),
                     3: ("boundObjectRef", {1: ("kind", "string"), 2: ("apiVersion", "string"),
                                            3: ("name", "string"), 4: ("uid", "string")})})},
    ("authentication.k8s.io/v1", "SelfSubjectReview"): {1: ("metadata", OBJECT_META)},
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): {
        1: ("metadata", OBJECT_META),
        2: ("spec", {1: ("resourceAttributes", {1: ("namespace", "string"), 2: ("verb", "string"),
                                                 3: ("group", "string"), 4: ("version", "string"),
                                                 5: ("resource", "string"), 6: ("subresource", "string"),
                                                 7: ("name", "string")}),
                     2: ("nonResourceAttributes", {1: ("path", "string"), 2: ("verb", "string")})})},
}


def _unsupported(what: str) -> StatusError:
    return StatusError(415, "UnsupportedMediaType",
                       f"the sandbox decodes protobuf bodies only for {', '.join(k for _, k in KINDS)} ({what}); "
                       "send JSON instead (e.g. kubectl apply -f)")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes) -> list[tuple[int, int, Any]]:
    out: list[tuple[int, int, Any]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value = buf[pos:pos + length]
            if len(value) != length:
                raise ValueError("truncated field")
            pos += length
        elif wire == 1:
            value = buf[pos:pos + 8]
            pos += 8
        elif wire == 5:
            value = buf[pos:pos + 4]
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        out.append((num, wire, value))
    return out


def _scalar(kind: Any, value: Any) -> Any:
    if kind == "string":
        return bytes(value).decode("utf-8")
    if kind == "bytes":
        return base64.b64encode(bytes(value)).decode()
    if kind == "int":
        return value - (1 << 64) if value >= 1 << 63 else value
    if kind == "bool":
        return bool(value)
    if kind == "time":
        t = _message(bytes(value), TIME)
        return datetime.datetime.fromtimestamp(t.get("seconds", 0), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(kind, dict):
        return _message(bytes(value), kind)
    raise ValueError(f"unknown field kind {kind!r}")


def _message(buf: bytes, schema: Schema) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for num, _wire, value in _fields(buf):
        if num not in schema:
            continue  # a field we do not model: ignored, as an older server would
        name, kind = schema[num]
        if isinstance(kind, tuple) and kind[0] == "repeated":
            out.setdefault(name, []).append(_scalar(kind[1], value))
        elif isinstance(kind, tuple) and kind[0] == "map":
            entry = {n: v for n, _w, v in _fields(bytes(value))}
            key = bytes(entry.get(1, b"")).decode("utf-8")
            out.setdefault(name, {})[key] = _scalar(kind[1], entry.get(2, b""))
        else:
            decoded = _scalar(kind, value)
            if decoded not in ("", 0, False) and not (kind == "time" and decoded.startswith("1970-")):
                out[name] = decoded  # proto3 zero values mean "unset" (the JSON form omits them)
    return out


def decode(body: bytes) -> dict[str, Any]:
    """The JSON-shaped object of a protobuf request body (415 for kinds not modelled here)."""
    if not body.startswith(MAGIC):
        raise StatusError(400, "BadRequest", "the protobuf body lacks the k8s envelope")
    try:
        unknown = {n: v for n, _w, v in _fields(body[len(MAGIC):])}
        type_meta = {n: bytes(v).decode() for n, _w, v in _fields(bytes(unknown.get(1, b"")))}
        api_version, kind = type_meta.get(1, ""), type_meta.get(2, "")
        schema = KINDS.get((api_version, kind))
        if schema is None:
            raise _unsupported(f"got {api_version} {kind}")
        obj = _message(bytes(unknown.get(2, b"")), schema)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StatusError(400, "BadRequest", f"cannot decode the protobuf body: {exc}") from None
    return {"apiVersion": api_version, "kind": kind, **obj}
