"""Structural OpenAPI v3 schemas of CustomResourceDefinitions: defaulting, pruning, validation.

Implemented directly (not with ``jsonschema``) because Kubernetes semantics differ in ways that
matter to clients: unknown fields are pruned rather than rejected, defaults are applied before
validation, ``x-kubernetes-*`` extensions change the rules, and errors are reported per field
with kube-apiserver's wording (``spec.syncInterval: Invalid value: "x": spec.syncInterval in body
must be of type integer: "x"``) so a 422 from here reads like one from a real cluster.
"""

from __future__ import annotations

import copy
import datetime
import math
import re
from typing import Any

from hsmd.sandbox.status import Cause

_ROOT_KEEP = ("apiVersion", "kind", "metadata")
_METADATA_FIELDS = {
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation", "creationTimestamp",
    "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations", "ownerReferences", "finalizers",
    "managedFields",
}


def _props(schema: dict[str, Any]) -> dict[str, Any] | None:
    props = schema.get("properties")
    return props if isinstance(props, dict) else None


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Fill ``default``s of absent (or null, non-nullable) properties, recursively, in place."""
    if not schema:
        return value
    if isinstance(value, dict):
        props = _props(schema)
        if props:
            for key, sub in props.items():
                if not isinstance(sub, dict):
                    continue
                if "default" in sub and (key not in value or (value[key] is None and not sub.get("nullable"))):
                    value[key] = copy.deepcopy(sub["default"])
                if key in value and value[key] is not None:
                    value[key] = apply_defaults(value[key], sub)
        addl = schema.get("additionalProperties")
        if isinstance(addl, dict):
            for key in list(value):
                if value[key] is not None:
                    value[key] = apply_defaults(value[key], addl)
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                if item is not None:
                    value[i] = apply_defaults(item, items)
    return value


def prune(value: Any, schema: dict[str, Any], *, root: bool = False, removed: list[str] | None = None,
          path: str = "") -> Any:
    """Drop fields the schema does not specify (unless x-kubernetes-preserve-unknown-fields);
    the dropped fields' paths are appended to ``removed`` (for fieldValidation Strict/Warn)."""
    if not schema:
        return value
    if isinstance(value, dict):
        if root or schema.get("x-kubernetes-embedded-resource"):
            meta = value.get("metadata")
            if isinstance(meta, dict):
                for key in [k for k in meta if k not in _METADATA_FIELDS]:
                    del meta[key]
                    if removed is not None:
                        removed.append(_dot(_dot(path, "metadata"), key))
        props = _props(schema)
        addl = schema.get("additionalProperties")
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        for key in list(value):
            if (root or schema.get("x-kubernetes-embedded-resource")) and key in _ROOT_KEEP:
                continue
            if props is not None and key in props:
                sub = props[key]
                if isinstance(sub, dict) and value[key] is not None:
                    value[key] = prune(value[key], sub, removed=removed, path=_dot(path, key))
            elif isinstance(addl, dict):
                if value[key] is not None:
                    value[key] = prune(value[key], addl, removed=removed, path=_dot(path, key))
            elif addl is True or preserve:
                continue
            else:
                del value[key]
                if removed is not None:
                    removed.append(_dot(path, key))
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                if item is not None:
                    value[i] = prune(item, items, removed=removed, path=f"{path}[{i}]")
    return value


def _dot(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_ok(value: Any, wanted: str) -> bool:
    have = _type_name(value)
    if wanted == "number":
        return have in ("integer", "number")
    if wanted == "integer" and have == "number":
        return float(value).is_integer() and not math.isinf(value)
    return have == wanted


_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$")
_FORMATS: dict[str, re.Pattern[str]] = {
    "date-time": _DATE_TIME,
    "datetime": _DATE_TIME,
    "date": re.compile(r"^\d{4}-\d{2}-\d{2}$"),
    "uuid": re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"),
    "hostname": re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
    "ipv4": re.compile(r"^(\d{1,3}\.){3}\d{1,3}$"),
    "byte": re.compile(r"^[A-Za-z0-9+/]*={0,2}$"),
}


def _valid_duration(text: str) -> bool:
    return bool(re.fullmatch(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+|0", text))


def _check_format(fmt: str, value: str) -> bool:
    if fmt == "duration":
        return _valid_duration(value)
    if fmt in ("date-time", "datetime"):
        if not _DATE_TIME.match(value):
            return False
        try:
            datetime.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            return False
        return True
    pattern = _FORMATS.get(fmt)
    return True if pattern is None else bool(pattern.match(value))


def validate(value: Any, schema: dict[str, Any], path: str = "", *, root: bool = False) -> list[Cause]:
    """Field errors of ``value`` against a structural schema, kube-apiserver style."""
    errors: list[Cause] = []
    _validate(value, schema, path, errors, root)
    return errors


def _fmt_num(n: Any) -> str:
    if isinstance(n, float) and n.is_integer():
        return str(int(n))
    return str(n)


def _validate(value: Any, schema: dict[str, Any], path: str, errors: list[Cause], root: bool = False) -> None:
    if not schema:
        return
    name = path or "<root>"
    if value is None:
        if schema.get("nullable") or (schema.get("x-kubernetes-preserve-unknown-fields") and "type" not in schema):
            return
        if "type" in schema:
            errors.append(Cause("FieldValueTypeInvalid", path, f"{name} in body must be of type "
                                f"{schema['type']}: \"null\"", "null"))
        return
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            errors.append(Cause("FieldValueTypeInvalid", path,
                                f"{name} in body must be of type integer,string: \"{_type_name(value)}\"",
                                _type_name(value)))
            return
    elif "type" in schema:
        wanted = schema["type"]
        if not _type_ok(value, wanted):
            errors.append(Cause("FieldValueTypeInvalid", path,
                                f"{name} in body must be of type {wanted}: \"{_type_name(value)}\"", _type_name(value)))
            return
    if "enum" in schema and isinstance(schema["enum"], list) and value not in schema["enum"]:
        supported = ", ".join(_quote(v) for v in schema["enum"])
        errors.append(Cause("FieldValueNotSupported", path, f"supported values: {supported}", value))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema:
            excl = schema.get("exclusiveMinimum") is True
            if (value <= schema["minimum"]) if excl else (value < schema["minimum"]):
                rel = "greater than" if excl else "greater than or equal to"
                errors.append(Cause("FieldValueInvalid", path,
                                    f"{name} in body should be {rel} {_fmt_num(schema['minimum'])}", value))
        if "maximum" in schema:
            excl = schema.get("exclusiveMaximum") is True
            if (value >= schema["maximum"]) if excl else (value > schema["maximum"]):
                rel = "less than" if excl else "less than or equal to"
                errors.append(Cause("FieldValueInvalid", path,
                                    f"{name} in body should be {rel} {_fmt_num(schema['maximum'])}", value))
        if schema.get("multipleOf"):
            q = value / schema["multipleOf"]
            if not float(q).is_integer():
                errors.append(Cause("FieldValueInvalid", path,
                                    f"{name} in body should be a multiple of {_fmt_num(schema['multipleOf'])}",
                                    value))
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(Cause("FieldValueTooLong", path, f"may not be more than {schema['maxLength']} bytes",
                                value))
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(Cause("FieldValueInvalid", path,
                                f"{name} in body should be at least {schema['minLength']} chars long", value))
        if "pattern" in schema:
            try:
                ok = re.search(schema["pattern"], value) is not None
            except re.error:
                ok = True
            if not ok:
                errors.append(Cause("FieldValueInvalid", path,
                                    f"{name} in body should match '{schema['pattern']}'", value))
        if "format" in schema and not _check_format(schema["format"], value):
            errors.append(Cause("FieldValueInvalid", path,
                                f"{name} in body must be of type {schema['format']}: {_quote(value)}", value))
    if isinstance(value, list):
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(Cause("FieldValueTooMany", path, f"must have at most {schema['maxItems']} items",
                                len(value), show_value=True))
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(Cause("FieldValueInvalid", path,
                                f"{name} in body should have at least {schema['minItems']} items", len(value)))
        list_type = schema.get("x-kubernetes-list-type")
        if schema.get("uniqueItems") or list_type == "set":
            seen: list[Any] = []
            for i, item in enumerate(value):
                if item in seen:
                    errors.append(Cause("FieldValueDuplicate", f"{path}[{i}]", "", item))
                else:
                    seen.append(item)
        if list_type == "map":
            keys = schema.get("x-kubernetes-list-map-keys") or []
            seen_keys: list[tuple[Any, ...]] = []
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    k = tuple(item.get(x) for x in keys)
                    if k in seen_keys:
                        errors.append(Cause("FieldValueDuplicate", f"{path}[{i}]", "", item))
                    seen_keys.append(k)
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                _validate(item, items, f"{path}[{i}]", errors)
    if isinstance(value, dict):
        props = _props(schema) or {}
        for req in schema.get("required") or []:
            if req not in value:
                errors.append(Cause("FieldValueRequired", _join(path, req)))
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            errors.append(Cause("FieldValueTooMany", path, f"must have at most {schema['maxProperties']} items",
                                len(value), show_value=True))
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            errors.append(Cause("FieldValueInvalid", path,
                                f"{name} in body should have at least {schema['minProperties']} properties",
                                len(value)))
        addl = schema.get("additionalProperties")
        for key, item in value.items():
            if (root or schema.get("x-kubernetes-embedded-resource")) and key in _ROOT_KEEP:
                continue
            if key in props:
                _validate(item, props[key], _join(path, key), errors)
            elif isinstance(addl, dict):
                _validate(item, addl, _join(path, key), errors)
        if schema.get("x-kubernetes-embedded-resource"):
            for req in ("apiVersion", "kind"):
                if not value.get(req):
                    errors.append(Cause("FieldValueRequired", _join(path, req), "must not be empty"))
    for sub in schema.get("allOf") or []:
        if isinstance(sub, dict):
            _validate(value, sub, path, errors)
    if isinstance(schema.get("anyOf"), list) and not any(
            not validate(value, s, path) for s in schema["anyOf"] if isinstance(s, dict)):
        errors.append(Cause("FieldValueInvalid", path, f"{name} in body must validate at least one schema (anyOf)",
                            value))
    if isinstance(schema.get("oneOf"), list):
        n_ok = sum(1 for s in schema["oneOf"] if isinstance(s, dict) and not validate(value, s, path))
        if n_ok != 1:
            errors.append(Cause("FieldValueInvalid", path,
                                f"{name} in body must validate one and only one schema (oneOf)", value))
    if isinstance(schema.get("not"), dict) and not validate(value, schema["not"], path):
        errors.append(Cause("FieldValueInvalid", path, f"{name} in body must not validate the schema (not)",
                            value))


def _join(path: str, key: str) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key}]" if path else key


def _quote(v: Any) -> str:
    import json

    return json.dumps(v) if isinstance(v, str) else str(v)


def check_structural(schema: Any, path: str) -> list[Cause]:
    """The CRD-level checks on a version's schema that clients hit in practice."""
    errors: list[Cause] = []
    if not isinstance(schema, dict) or not schema:
        errors.append(Cause("FieldValueRequired", path, "schemas are required"))
        return errors
    if schema.get("type") != "object":
        errors.append(Cause("FieldValueRequired", f"{path}.type", "must not be empty at the root"
                            if "type" not in schema else "must be object at the root"))
    _check_node(schema, path, errors)
    return errors


def _check_node(schema: dict[str, Any], path: str, errors: list[Cause]) -> None:
    props = schema.get("properties")
    if isinstance(props, dict):
        for key, sub in props.items():
            if not isinstance(sub, dict):
                continue
            p = f"{path}.properties[{key}]"
            if "type" not in sub and not sub.get("x-kubernetes-int-or-string") and not sub.get(
                    "x-kubernetes-preserve-unknown-fields"):
                errors.append(Cause("FieldValueRequired", f"{p}.type", "must not be empty for specified object "
                                    "fields"))
            _check_node(sub, p, errors)
    items = schema.get("items")
    if isinstance(items, dict):
        _check_node(items, f"{path}.items", errors)
    addl = schema.get("additionalProperties")
    if isinstance(addl, dict):
        _check_node(addl, f"{path}.additionalProperties", errors)
        if isinstance(props, dict) and props:
            errors.append(Cause("FieldValueForbidden", f"{path}.additionalProperties",
                                "additionalProperties and properties are mutual exclusive"))
