"""Label and field selectors with the grammar and error messages of k8s.io/apimachinery.

Label selectors: ``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x,y)``, ``a``, ``!a``,
``a>1``, ``a<1``, comma-separated (AND). Field selectors: ``path=value``, ``path==value``,
``path!=value`` over the fields a kind supports (``metadata.name``, ``metadata.namespace`` and
the kind's own, e.g. Secret ``type``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from hsmd.sandbox.status import bad_request

_KEY_NAME = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)"
_KEY_RE = re.compile(rf"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_KEY_NAME}$")
_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

Requirement = tuple[str, str, tuple[str, ...]]  # key, operator, values
Matcher = Callable[[Mapping[str, str]], bool]


def _check_key(key: str, raw: str) -> None:
    if not key or len(key.rpartition("/")[2]) > 63 or not _KEY_RE.match(key):
        raise bad_request(f"unable to parse requirement: values[0][{key}]: Invalid value: \"{key}\": name part "
                          "must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                          f"with an alphanumeric character (selector {raw!r})")


def _check_value(value: str, key: str) -> None:
    if len(value) > 63 or not _VALUE_RE.match(value):
        raise bad_request(f"unable to parse requirement: values[0][{key}]: Invalid value: \"{value}\": a valid "
                          "label must be an empty string or consist of alphanumeric characters, '-', '_' or "
                          "'.', and must start and end with an alphanumeric character")


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


_SET_RE = re.compile(r"^\s*(\S+)\s+(in|notin)\s*\((.*)\)\s*$")
_OP_RE = re.compile(r"^\s*([^!=<>\s]+)\s*(==|!=|=|<|>)\s*(\S*)\s*$")


def parse_label_selector(text: str) -> list[Requirement]:
    reqs: list[Requirement] = []
    if not text.strip():
        return reqs
    for part in _split_top(text):
        raw = part.strip()
        if not raw:
            raise bad_request(f"unable to parse requirement: found '', expected: identifier (selector {text!r})")
        m = _SET_RE.match(raw)
        if m:
            key, op, inner = m.group(1), m.group(2), m.group(3)
            _check_key(key, text)
            values = tuple(v.strip() for v in inner.split(",")) if inner.strip() else ()
            if not values:
                raise bad_request(f"unable to parse requirement: for 'in', 'notin' operators, values set can't "
                                  f"be empty (selector {text!r})")
            for v in values:
                _check_value(v, key)
            reqs.append((key, op, values))
            continue
        m = _OP_RE.match(raw)
        if m:
            key, op, value = m.group(1), m.group(2), m.group(3)
            _check_key(key, text)
            if op in ("<", ">"):
                if not re.fullmatch(r"-?\d+", value):
                    raise bad_request(f"unable to parse requirement: for 'Gt', 'Lt' operators, the value must "
                                      f"be an integer (selector {text!r})")
            else:
                _check_value(value, key)
            reqs.append((key, {"==": "=", "=": "="}.get(op, op), (value,)))
            continue
        if raw.startswith("!"):
            key = raw[1:].strip()
            _check_key(key, text)
            reqs.append((key, "!", ()))
            continue
        if re.fullmatch(r"\S+", raw):
            _check_key(raw, text)
            reqs.append((raw, "exists", ()))
            continue
        raise bad_request(f"unable to parse requirement: {raw!r} (selector {text!r})")
    return reqs


def label_matcher(text: str | None) -> Matcher | None:
    """A predicate over a labels mapping, or None when the selector selects everything."""
    if not text:
        return None
    reqs = parse_label_selector(text)
    if not reqs:
        return None

    def match(labels: Mapping[str, str]) -> bool:
        for key, op, values in reqs:
            present = key in labels
            if op == "=":
                if not present or labels[key] != values[0]:
                    return False
            elif op == "!=":
                if present and labels[key] == values[0]:
                    return False
            elif op == "in":
                if not present or labels[key] not in values:
                    return False
            elif op == "notin":
                if present and labels[key] in values:
                    return False
            elif op == "exists":
                if not present:
                    return False
            elif op == "!":
                if present:
                    return False
            elif op in ("<", ">"):
                if not present:
                    return False
                try:
                    have = int(labels[key])
                except ValueError:
                    return False
                if (op == "<" and not have < int(values[0])) or (op == ">" and not have > int(values[0])):
                    return False
        return True

    return match


def selector_from_label_selector(sel: Mapping[str, Any] | None) -> Matcher | None:
    """A predicate for a metav1.LabelSelector object (matchLabels + matchExpressions)."""
    if not sel:
        return None
    parts = [f"{k}={v}" for k, v in (sel.get("matchLabels") or {}).items()]
    for expr in sel.get("matchExpressions") or []:
        op = expr.get("operator")
        key = expr.get("key")
        vals = ",".join(expr.get("values") or [])
        parts.append({"In": f"{key} in ({vals})", "NotIn": f"{key} notin ({vals})", "Exists": f"{key}",
                      "DoesNotExist": f"!{key}"}.get(op, f"{key}"))
    return label_matcher(",".join(parts))


def get_field(obj: Mapping[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
        if cur is None:
            return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur) if not isinstance(cur, (dict, list)) else ""


def field_matcher(text: str | None, allowed: tuple[str, ...],
                  kind: str = "") -> tuple[Callable[[Mapping[str, Any]], bool] | None, str | None]:
    """(predicate over an object, exact metadata.name if the selector pins it)."""
    if not text or not text.strip():
        return None, None
    reqs: list[tuple[str, bool, str]] = []
    exact_name: str | None = None
    for part in _split_top(text):
        raw = part.strip()
        m = re.fullmatch(r"([^!=]+?)\s*(==|!=|=)\s*(.*)", raw)
        if not m:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{raw}'")
        path, op, value = m.group(1).strip(), m.group(2), m.group(3).strip()
        if path not in ("metadata.name", "metadata.namespace") and path not in allowed:
            raise bad_request(f"field label not supported: {path}")
        reqs.append((path, op != "!=", value))
        if path == "metadata.name" and op != "!=":
            exact_name = value

    def match(obj: Mapping[str, Any]) -> bool:
        return all((get_field(obj, path) == value) == equal for path, equal, value in reqs)

    return match, exact_name
