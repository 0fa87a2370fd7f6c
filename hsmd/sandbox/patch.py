"""Patch formats the API accepts: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and
strategic merge patch for built-in kinds.

Strategic merge needs to know which lists merge by key; the real server reads that from the Go
types' ``patchMergeKey`` tags. We keep the subset the project and its tools touch, keyed by the
field name (``containers`` by ``name``, container ``ports`` by ``containerPort`` ...), in
``MERGE_KEYS`` — the same table server-side apply uses for associative lists.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hsmd.sandbox.status import StatusError, bad_request

# field name -> merge key, for lists of objects in built-in kinds (patchStrategy=merge)
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
    "ownerReferences": "uid",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "taints": "key",
}
# primitive lists with patchStrategy=merge (merged as sets)
MERGE_PRIMITIVE = {"finalizers"}


def merge_key_for(field: str, parent_path: tuple[str, ...]) -> str | None:
    if field == "ports":
        # container ports merge by containerPort, service ports by port
        return "containerPort" if parent_path and parent_path[-1] in ("containers", "initContainers",
                                                                       "ephemeralContainers") else "port"
    return MERGE_KEYS.get(field)


def invalid_patch(message: str) -> StatusError:
    return StatusError(422, "Invalid", message)


# --- JSON merge patch -------------------------------------------------------------------


# JSON merge patch (RFC 7386) is hsmd.status.merge_patch: one implementation for all of hsmd.


# --- JSON patch -------------------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise invalid_patch(f"the server rejected our request due to an error in our request: "
                            f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _container(doc: Any, parts: list[str], path: str) -> Any:
    cur = doc
    for part in parts[:-1]:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise invalid_patch(f"the server rejected our request due to an error in our request: "
                                f"doc is missing path: {path!r}")
    return cur


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _container(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise invalid_patch(f"the server rejected our request due to an error in our request: "
                        f"doc is missing path: {path!r}")


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _container(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise invalid_patch(f"the server rejected our request due to an error in our request: "
                                f"add operation does not apply: index out of range: {path!r}")
    else:
        raise invalid_patch(f"the server rejected our request due to an error in our request: "
                            f"add operation does not apply: doc is missing path: {path!r}")
    return doc


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    parent = _container(doc, parts, path)
    last = parts[-1] if parts else ""
    if isinstance(parent, dict) and last in parent:
        del parent[last]
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        del parent[int(last)]
    else:
        raise invalid_patch(f"the server rejected our request due to an error in our request: "
                            f"remove operation does not apply: doc is missing path: {path!r}")
    return doc


def json_patch(doc: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    for op in ops:
        if not isinstance(op, dict) or "op" not in op:
            raise bad_request("the server rejected our request due to an error in our request: missing op")
        kind = op["op"]
        path = op.get("path")
        if not isinstance(path, str):
            raise invalid_patch(f"the server rejected our request due to an error in our request: "
                                f"missing path in {kind} operation")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            doc = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)
            doc = _remove(doc, path) if _pointer(path) else doc
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind in ("move", "copy"):
            src = op.get("from")
            if not isinstance(src, str):
                raise invalid_patch(f"the server rejected our request due to an error in our request: "
                                    f"missing from in {kind} operation")
            value = copy.deepcopy(_get(doc, src))
            if kind == "move":
                doc = _remove(doc, src)
            doc = _add(doc, path, value)
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise invalid_patch(f"the server rejected our request due to an error in our request: "
                                    f"testing value {path} failed: test failed")
        else:
            raise bad_request(f"Unexpected kind: {kind}")
    return doc


# --- strategic merge patch --------------------------------------------------------------


def strategic_merge(target: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    """Apply a strategic merge patch (the directives kubectl and the clients emit)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    result = dict(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list) and isinstance(value, list):
                result[field] = [x for x in result[field] if x not in value]
            continue
        if value is None:
            result.pop(key, None)
            continue
        current = result.get(key)
        if isinstance(value, list):
            result[key] = _merge_list(key, current, value, path)
        elif isinstance(value, dict):
            merged = strategic_merge(current, value, (*path, key))
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = value
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(field: str, current: Any, patch: list[Any], path: tuple[str, ...]) -> list[Any]:
    cur = list(current) if isinstance(current, list) else []
    if field in MERGE_PRIMITIVE:
        out = list(cur)
        for v in patch:
            if v not in out:
                out.append(v)
        return out
    key = merge_key_for(field, path)
    if key is None or not all(isinstance(x, dict) for x in patch):
        if any(isinstance(x, dict) and x.get("$patch") == "replace" for x in patch):
            return [x for x in patch if not (isinstance(x, dict) and "$patch" in x)]
        return copy.deepcopy(patch)
    if any(isinstance(x, dict) and x.get("$patch") == "replace" for x in patch):
        return [copy.deepcopy(x) for x in patch if "$patch" not in x]
    out = list(cur)
    for item in patch:
        directive = item.get("$patch")
        if key not in item:
            raise invalid_patch(f"map: {item} does not contain declared merge key: {key}")
        idx = next((i for i, x in enumerate(out) if isinstance(x, dict) and x.get(key) == item[key]), None)
        if directive == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        clean = {k: v for k, v in item.items() if k != "$patch"}
        if idx is None:
            out.append(strategic_merge({}, clean, (*path, field)))
        else:
            out[idx] = strategic_merge(out[idx], clean, (*path, field))
    return out


def parse_json(body: bytes, what: str = "body") -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"error decoding {what}: {exc}") from None
