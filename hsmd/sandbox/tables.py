"""Server-side printing: ``meta.k8s.io/v1 Table`` responses (what ``kubectl get`` asks for with
``Accept: application/json;as=Table;v=v1;g=meta.k8s.io``) from a kind's printer columns — the CRD's
``additionalPrinterColumns`` or the built-in columns in resources.py — and the small JSONPath
dialect those columns use (``.status.conditions[?(@.type=="Ready")].status``).
"""

from __future__ import annotations

import datetime
import re
from typing import Any

from hsmd.sandbox.resources import PrinterColumn, ResourceType
from hsmd.sandbox.store import Stored

_SEG = re.compile(r"""\.([A-Za-z0-9_\-$]+)|\[(\d+|\*)\]"""
                  r"""|\[\?\(@\.([A-Za-z0-9_.\-]+)\s*==\s*["']([^"']*)["']\)\]|\['([^']+)'\]""")


def jsonpath(obj: Any, path: str) -> list[Any]:
    """Evaluate a printer-column JSONPath; returns all matches (empty when absent)."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    if path.startswith("$"):
        path = path[1:]
    current = [obj]
    pos = 0
    while pos < len(path):
        m = _SEG.match(path, pos)
        if not m:
            return []
        pos = m.end()
        nxt: list[Any] = []
        for node in current:
            if m.group(1) is not None or m.group(5) is not None:
                key = m.group(1) if m.group(1) is not None else m.group(5)
                if isinstance(node, dict) and key in node:
                    nxt.append(node[key])
            elif m.group(2) is not None:
                if isinstance(node, list):
                    if m.group(2) == "*":
                        nxt.extend(node)
                    elif int(m.group(2)) < len(node):
                        nxt.append(node[int(m.group(2))])
            else:
                field, want = m.group(3), m.group(4)
                if isinstance(node, list):
                    for item in node:
                        got = jsonpath(item, "." + field)
                        if got and str(got[0]) == want:
                            nxt.append(item)
        current = nxt
    return current


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    s = int(seconds)
    if s < 0:
        return "<invalid>"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rem = s % 60
        return f"{minutes}m{rem}s" if rem else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rem = (s % 3600) // 60
        return f"{hours}h{rem}m" if rem else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rem = hours % 24
        return f"{hours // 24}d{rem}h" if rem else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = hours // 24
        return f"{days // 365}y{days % 365}d" if days % 365 else f"{days // 365}y"
    return f"{hours // 24 // 365}y"


def _age(ts: Any) -> str:
    if not isinstance(ts, str) or not ts:
        return "<unknown>"
    try:
        when = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return "<invalid>"
    return human_duration((datetime.datetime.now(datetime.UTC) - when).total_seconds())


def _cell(obj: dict[str, Any], col: PrinterColumn) -> Any:
    path = col.json_path
    if path.endswith("@count"):
        found = jsonpath(obj, path[: -len("@count")])
        return len(found[0]) if found and isinstance(found[0], (dict, list)) else 0
    if path.endswith("@ofspec"):
        found = jsonpath(obj, path[: -len("@ofspec")])
        want = jsonpath(obj, ".spec.replicas")
        return f"{found[0] if found else 0}/{want[0] if want else 0}"
    found = jsonpath(obj, path)
    if not found:
        return None
    value = found[0] if len(found) == 1 else ",".join(str(v) for v in found)
    if col.type == "date":
        return _age(value)
    if col.type == "integer" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if col.type == "number" and isinstance(value, (int, float)):
        return value
    if col.type == "boolean" and isinstance(value, bool):
        return value
    if isinstance(value, (dict, list)):
        import json

        return json.dumps(value, separators=(",", ":"))
    return str(value) if not isinstance(value, (int, float, bool)) else value


def table(rt: ResourceType, version: str, items: list[Stored], rv: int, include_object: str = "Metadata",
          cont: str | None = None) -> dict[str, Any]:
    columns = rt.printer_columns.get(version) or rt.printer_columns.get(rt.storage_version) or [
        PrinterColumn("Age", "date", ".metadata.creationTimestamp")]
    defs: list[dict[str, Any]] = [{"name": "Name", "type": "string", "format": "name",
                                   "description": "Name must be unique within a namespace. Is required when "
                                                  "creating resources, although some resources may allow a client "
                                                  "to request the generation of an appropriate name automatically.",
                                   "priority": 0}]
    for col in columns:
        defs.append({"name": col.name, "type": col.type, "format": col.format, "description": col.description,
                     "priority": col.priority})
    rows = []
    for stored in items:
        obj = stored.obj
        row: dict[str, Any] = {"cells": [obj["metadata"]["name"], *[_cell(obj, c) for c in columns]]}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                             "metadata": obj["metadata"]}
        rows.append(row)
    meta: dict[str, Any] = {"resourceVersion": str(rv)}
    if cont:
        meta["continue"] = cont
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": defs,
            "rows": rows}


def partial_metadata(stored: Stored) -> dict[str, Any]:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": stored.obj["metadata"]}
