"""managedFields bookkeeping and server-side apply.

Every write records which manager owns which fields (``metadata.managedFields``, FieldsV1), the
way kube-apiserver does: an Update operation gives its manager the fields it changed and takes
them from everyone else; an Apply (``application/apply-patch+yaml``) sets exactly the fields of the
applied configuration, merges them into the live object, removes fields the same manager applied
before but no longer does (unless another manager owns them) and reports a 409 conflict when it
would change a value another manager owns (unless ``force=true``).

Lists follow the Kubernetes list types: associative lists (``k:{"name":"x"}``) by merge key
(built-ins: patch.MERGE_KEYS; CRDs: ``x-kubernetes-list-type: map`` + ``list-map-keys``), sets
(``v:"x"``), everything else atomic.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from hsmd.sandbox.patch import MERGE_PRIMITIVE, merge_key_for
from hsmd.sandbox.status import StatusError

FieldPath = tuple[str, ...]
ListInfo = Callable[[tuple[str, ...]], tuple[str, tuple[str, ...]]]  # names -> ("map"|"set"|"atomic", keys)

SKIP_META = {"uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink",
             "deletionTimestamp", "deletionGracePeriodSeconds", "name", "namespace", "generateName"}
_GRANULAR = {"labels", "annotations", "data", "stringData", "binaryData", "matchLabels", "nodeSelector"}
_MISSING = object()


def builtin_list_info(names: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    field = names[-1]
    if field in MERGE_PRIMITIVE:
        return "set", ()
    parents = tuple(n for n in names[:-1] if n != "[]")
    key = merge_key_for(field, parents)
    return ("map", (key,)) if key else ("atomic", ())


def schema_list_info(schema: dict[str, Any]) -> ListInfo:
    def info(names: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
        if names and names[0] == "metadata":
            return builtin_list_info(names)
        node: Any = schema
        for name in names:
            if not isinstance(node, dict):
                return "atomic", ()
            if name == "[]":
                node = node.get("items")
            else:
                props = node.get("properties")
                if isinstance(props, dict) and name in props:
                    node = props[name]
                elif isinstance(node.get("additionalProperties"), dict):
                    node = node["additionalProperties"]
                else:
                    return "atomic", ()
        if not isinstance(node, dict):
            return "atomic", ()
        list_type = node.get("x-kubernetes-list-type")
        if list_type == "map":
            return "map", tuple(node.get("x-kubernetes-list-map-keys") or ())
        if list_type == "set":
            return "set", ()
        return "atomic", ()

    return info


def _item_key(item: dict[str, Any], keys: tuple[str, ...]) -> str:
    return "k:" + json.dumps({k: item[k] for k in keys}, separators=(",", ":"), sort_keys=True)


def flatten(obj: dict[str, Any], list_info: ListInfo) -> dict[FieldPath, Any]:
    """Leaf field paths (FieldsV1 keys) -> values, excluding the server-managed metadata."""
    out: dict[FieldPath, Any] = {}
    for key, value in obj.items():
        if key in ("apiVersion", "kind"):
            continue
        if key == "metadata" and isinstance(value, dict):
            for mk, mv in value.items():
                if mk not in SKIP_META:
                    _walk(mv, ("f:metadata", f"f:{mk}"), ("metadata", mk), out, list_info)
        else:
            _walk(value, (f"f:{key}",), (key,), out, list_info)
    return out


def _walk(value: Any, path: FieldPath, names: tuple[str, ...], out: dict[FieldPath, Any],
          list_info: ListInfo) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _walk(v, (*path, f"f:{k}"), (*names, k), out, list_info)
    elif isinstance(value, list) and value:
        mode, keys = list_info(names)
        if mode == "map" and keys and all(isinstance(x, dict) and all(k in x for k in keys) for x in value):
            for item in value:
                _walk(item, (*path, _item_key(item, keys)), (*names, "[]"), out, list_info)
        elif mode == "set" and all(not isinstance(x, (dict, list)) for x in value):
            for item in value:
                out[(*path, "v:" + json.dumps(item))] = item
        else:
            out[path] = value
    else:
        out[path] = value


def to_fields_v1(paths: set[FieldPath]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    for path in sorted(paths):
        node = root
        for i, part in enumerate(path):
            child = node.setdefault(part, {})
            if i < len(path) - 1 and (part.startswith("k:") or part[2:] in _GRANULAR):
                child.setdefault(".", {})
            node = child
    return root


def from_fields_v1(fields: Any, prefix: FieldPath = ()) -> set[FieldPath]:
    out: set[FieldPath] = set()
    if not isinstance(fields, dict):
        return out
    for key, sub in fields.items():
        if key == ".":
            continue
        children = {k: v for k, v in sub.items() if k != "."} if isinstance(sub, dict) else {}
        if children:
            out |= from_fields_v1(children, (*prefix, key))
        else:
            out.add((*prefix, key))
    return out


def _entries(obj: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not obj:
        return []
    entries = obj.get("metadata", {}).get("managedFields") or []
    return [e for e in entries if isinstance(e, dict)]


def _ident(entry: dict[str, Any]) -> tuple[str, str, str]:
    return entry.get("manager", ""), entry.get("operation", ""), entry.get("subresource", "")


def _entry(manager: str, operation: str, api_version: str, now: str, subresource: str,
           paths: set[FieldPath]) -> dict[str, Any]:
    e: dict[str, Any] = {"manager": manager, "operation": operation, "apiVersion": api_version, "time": now,
                         "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(paths)}
    if subresource:
        e["subresource"] = subresource
    return e


def record_update(old: dict[str, Any] | None, new: dict[str, Any], *, manager: str, api_version: str, now: str,
                  subresource: str, list_info: ListInfo) -> list[dict[str, Any]]:
    """managedFields after an Update (create/update/patch) by ``manager``."""
    new_flat = flatten(new, list_info)
    if old is None:
        return [_entry(manager, "Update", api_version, now, subresource, set(new_flat))] if new_flat else []
    old_flat = flatten(old, list_info)
    changed = {p for p, v in new_flat.items() if old_flat.get(p, _MISSING) != v}
    removed = set(old_flat) - set(new_flat)
    lost = changed | removed
    me = (manager, "Update", subresource)
    out: list[dict[str, Any]] = []
    mine: set[FieldPath] | None = None
    for entry in _entries(old):
        paths = from_fields_v1(entry.get("fieldsV1"))
        if _ident(entry) == me:
            mine = (paths - removed) | changed
            if mine:
                out.append(_entry(manager, "Update", api_version, now if changed else entry.get("time", now),
                                  subresource, mine))
            continue
        kept = paths - lost
        if kept == paths:
            out.append(entry)
        elif kept:
            out.append(dict(entry, fieldsV1=to_fields_v1(kept)))
    if mine is None and changed:
        out.append(_entry(manager, "Update", api_version, now, subresource, changed))
    return out


def apply(live: dict[str, Any] | None, config: dict[str, Any], *, manager: str, force: bool, api_version: str,
          now: str, subresource: str, list_info: ListInfo, plural: str, group: str
          ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Server-side apply of ``config`` over ``live``: (merged object, managedFields)."""
    config_flat = flatten(config, list_info)
    me = (manager, "Apply", subresource)
    if live is None:
        merged = copy.deepcopy(config)
        return merged, [_entry(manager, "Apply", api_version, now, subresource, set(config_flat))]
    live_flat = flatten(live, list_info)
    entries = _entries(live)
    owned = [(e, from_fields_v1(e.get("fieldsV1"))) for e in entries]
    conflicts: list[tuple[str, str, FieldPath]] = []
    for path, value in config_flat.items():
        if live_flat.get(path, _MISSING) == value:
            continue
        for entry, paths in owned:
            if _ident(entry) != me and path in paths:
                conflicts.append((entry.get("manager", ""), entry.get("apiVersion", ""), path))
    if conflicts and not force:
        raise _conflict_error(conflicts, plural, group, live["metadata"].get("name", ""))
    prev: set[FieldPath] = set()
    others: set[FieldPath] = set()
    for entry, paths in owned:
        if _ident(entry) == me:
            prev = paths
        else:
            others |= paths
    merged = _merge(copy.deepcopy(live), config, (), list_info)
    for path in prev - set(config_flat):
        if path not in others:
            _delete_path(merged, path)
    taken = {c[2] for c in conflicts}
    out: list[dict[str, Any]] = []
    placed = False
    for entry, paths in owned:
        if _ident(entry) == me:
            out.append(_entry(manager, "Apply", api_version, now, subresource, set(config_flat)))
            placed = True
            continue
        kept = paths - taken
        if kept == paths:
            out.append(entry)
        elif kept:
            out.append(dict(entry, fieldsV1=to_fields_v1(kept)))
    if not placed:
        out.append(_entry(manager, "Apply", api_version, now, subresource, set(config_flat)))
    return merged, out


def _merge(live: Any, config: Any, names: tuple[str, ...], list_info: ListInfo) -> Any:
    if isinstance(config, dict):
        result = live if isinstance(live, dict) else {}
        for k, v in config.items():
            if v is None:
                result.pop(k, None)
            else:
                result[k] = _merge(result.get(k), v, (*names, k), list_info)
        return result
    if isinstance(config, list) and names:
        mode, keys = list_info(names)
        if mode == "map" and keys and isinstance(live, list) and all(
                isinstance(x, dict) and all(k in x for k in keys) for x in config):
            out = list(live)
            for item in config:
                ident = {k: item[k] for k in keys}
                idx = next((i for i, x in enumerate(out)
                            if isinstance(x, dict) and {k: x.get(k) for k in keys} == ident), None)
                if idx is None:
                    out.append(copy.deepcopy(item))
                else:
                    out[idx] = _merge(out[idx], item, (*names, "[]"), list_info)
            return out
        if mode == "set" and isinstance(live, list):
            out = list(live)
            for item in config:
                if item not in out:
                    out.append(item)
            return out
    return copy.deepcopy(config)


def _delete_path(obj: Any, path: FieldPath) -> None:
    stack: list[tuple[Any, str]] = []
    node = obj
    for part in path:
        stack.append((node, part))
        node = _child(node, part)
        if node is _MISSING:
            return
    for i in range(len(stack) - 1, -1, -1):
        container, part = stack[i]
        _remove_child(container, part)
        # drop containers the removal left empty, but never the top-level sections themselves
        if i <= 1 or container not in ({}, []):
            break


def _child(node: Any, part: str) -> Any:
    if part.startswith("f:") and isinstance(node, dict):
        return node.get(part[2:], _MISSING)
    if part.startswith("k:") and isinstance(node, list):
        ident = json.loads(part[2:])
        for item in node:
            if isinstance(item, dict) and all(item.get(k) == v for k, v in ident.items()):
                return item
        return _MISSING
    if part.startswith("v:") and isinstance(node, list):
        value = json.loads(part[2:])
        return value if value in node else _MISSING
    return _MISSING


def _remove_child(node: Any, part: str) -> None:
    if part.startswith("f:") and isinstance(node, dict):
        node.pop(part[2:], None)
    elif part.startswith("k:") and isinstance(node, list):
        ident = json.loads(part[2:])
        node[:] = [x for x in node if not (isinstance(x, dict) and all(x.get(k) == v for k, v in ident.items()))]
    elif part.startswith("v:") and isinstance(node, list):
        value = json.loads(part[2:])
        node[:] = [x for x in node if x != value]


def _conflict_error(conflicts: list[tuple[str, str, FieldPath]], plural: str, group: str, name: str
                    ) -> StatusError:
    def dotted(path: FieldPath) -> str:
        out = ""
        for part in path:
            if part.startswith("f:"):
                out += "." + part[2:]
            elif part.startswith("k:"):
                out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in json.loads(part[2:]).items()) + "]"
            else:
                out += "[" + part[2:] + "]"
        return out

    causes = [{"reason": "FieldManagerConflict", "message": f'conflict with "{m}" using {v}', "field": dotted(p)}
              for m, v, p in conflicts]
    if len(conflicts) == 1:
        m, v, p = conflicts[0]
        msg = f'Apply failed with 1 conflict: conflict with "{m}" using {v}: {dotted(p)}'
    else:
        lines = "\n".join(f'- conflict with "{m}" using {v}: {dotted(p)}' for m, v, p in conflicts)
        msg = f"Apply failed with {len(conflicts)} conflicts: {lines}"
    details: dict[str, Any] = {"name": name, "kind": plural, "causes": causes}
    if group:
        details["group"] = group
    return StatusError(409, "Conflict", msg, details)
