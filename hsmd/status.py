"""Pure status and condition merging for custom resources (no I/O).

The k8s_status module (operator-sdk compatible), the hsm_pool/hsm_device roles and the secret
sync (hsmd.render / hsmd.sync) all write ``status.conditions``; the rules live here once:

- conditions are keyed by ``type``; a new condition replaces the old one of its type;
- ``lastTransitionTime`` changes only when ``status`` changes (or when the caller sets it);
- the rest of ``status`` merges like an RFC 7386 JSON merge patch (``None`` deletes a key),
  or is replaced wholesale with ``replace=True``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from hsmd.errors import InvalidArgument

CONDITION_STATUSES = ("True", "False", "Unknown")
CONDITION_FIELDS = (
    "type",
    "status",
    "reason",
    "message",
    "lastTransitionTime",
    "lastHeartbeatTime",
    "observedGeneration",
)
_TYPE = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d)?(\.\d+)?(([+-]\d\d:\d\d)|Z)$")

Status = dict[str, Any]
Condition = dict[str, Any]


def rfc3339(moment: datetime | None = None) -> str:
    """UTC timestamp in the form Kubernetes writes (second precision, trailing Z)."""
    moment = moment or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    """RFC 3339 timestamp -> aware datetime; InvalidArgument when malformed."""
    if not isinstance(text, str) or not _RFC3339.match(text.strip()):
        raise InvalidArgument(f"{text!r} is not an RFC 3339 timestamp")
    value = text.strip().replace(" ", "T")
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidArgument(f"{text!r} is not an RFC 3339 timestamp") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def validate_condition(condition: Mapping[str, Any]) -> Condition:
    """A normalised copy of ``condition`` (bool status -> "True"/"False"); InvalidArgument when wrong."""
    if not isinstance(condition, Mapping):
        raise InvalidArgument("each condition must be an object")
    unknown = sorted(set(condition) - set(CONDITION_FIELDS))
    if unknown:
        raise InvalidArgument(
            f"unknown condition field(s) {', '.join(unknown)}; allowed: {', '.join(CONDITION_FIELDS)}"
        )
    result = {k: v for k, v in condition.items() if v is not None}
    status = result.get("status")
    if isinstance(status, bool):
        result["status"] = "True" if status else "False"
    ctype = result.get("type")
    if not isinstance(ctype, str) or not ctype:
        raise InvalidArgument("condition 'type' must be set")
    if not _TYPE.match(ctype) or len(ctype) > 316:
        raise InvalidArgument(f"condition type {ctype!r} must be CamelCase (optionally prefixed by a DNS name/)")
    if result.get("status") not in CONDITION_STATUSES:
        raise InvalidArgument(f"condition {ctype} status must be one of True, False, Unknown, not {status!r}")
    reason = result.get("reason")
    if reason is not None and (not isinstance(reason, str) or (reason and not _REASON.match(reason))):
        raise InvalidArgument(f"condition {ctype} reason {reason!r} must be a single CamelCase word")
    if "message" in result and not isinstance(result["message"], str):
        result["message"] = str(result["message"])
    for key in ("lastTransitionTime", "lastHeartbeatTime"):
        if key in result:
            parse_time(result[key])
    generation = result.get("observedGeneration")
    if generation is not None and (isinstance(generation, bool) or not isinstance(generation, int) or generation < 0):
        raise InvalidArgument(f"condition {ctype} observedGeneration must be a non-negative integer")
    return result


def merge_conditions(
    old: Sequence[Mapping[str, Any]] | None,
    new: Sequence[Mapping[str, Any]],
    *,
    now: str | None = None,
    replace: bool = False,
) -> list[Condition]:
    """Old conditions updated by ``new`` (by type, order kept, new types appended).

    ``lastTransitionTime`` of a condition whose status did not change is kept from ``old`` unless the
    caller gives one; a changed or new condition gets the caller's value or ``now``. With
    ``replace``, conditions not in ``new`` are dropped."""
    stamp = now or rfc3339()
    previous = {str(c.get("type")): dict(c) for c in (old or []) if isinstance(c, Mapping)}
    merged: list[Condition] = [] if replace else [dict(c) for c in (old or []) if isinstance(c, Mapping)]
    index = {str(c.get("type")): i for i, c in enumerate(merged)}
    seen: set[str] = set()
    for raw in new:
        condition = validate_condition(raw)
        ctype = condition["type"]
        if ctype in seen:
            raise InvalidArgument(f"condition type {ctype} given twice")
        seen.add(ctype)
        before = previous.get(ctype)
        if "lastTransitionTime" not in condition:
            kept = before.get("lastTransitionTime") if before and before.get("status") == condition["status"] else None
            condition["lastTransitionTime"] = kept or stamp
        condition.setdefault("message", "")
        if ctype in index:
            merged[index[ctype]] = condition
        else:
            index[ctype] = len(merged)
            merged.append(condition)
    return merged


def set_condition(
    conditions: Sequence[Mapping[str, Any]] | None,
    condition_type: str,
    status: str | bool,
    reason: str,
    message: str = "",
    *,
    observed_generation: int | None = None,
    now: str | None = None,
) -> list[Condition]:
    """``conditions`` with one condition set (the common case: the Ready condition of a reconcile)."""
    condition: Condition = {"type": condition_type, "status": status, "reason": reason, "message": message}
    if observed_generation is not None:
        condition["observedGeneration"] = observed_generation
    return merge_conditions(conditions, [condition], now=now)


def find_condition(conditions: Sequence[Mapping[str, Any]] | None, condition_type: str) -> Condition | None:
    for condition in conditions or []:
        if isinstance(condition, Mapping) and condition.get("type") == condition_type:
            return dict(condition)
    return None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``None`` deletes, anything else (lists too) replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def merge_status(
    old: Mapping[str, Any] | None,
    status: Mapping[str, Any] | None = None,
    conditions: Sequence[Mapping[str, Any]] | None = None,
    *,
    replace: bool = False,
    replace_lists: bool = False,
    now: str | None = None,
) -> Status:
    """The status after applying ``status`` and ``conditions`` to ``old`` (operator-sdk k8s_status rules).

    ``replace``: the result is exactly ``status`` + ``conditions`` (still with stable transition times).
    ``replace_lists``: the given conditions replace the whole list instead of merging by type."""
    status = dict(status or {})
    given_conditions = list(conditions or [])
    if "conditions" in status:
        if given_conditions:
            raise InvalidArgument("conditions given both in 'status' and in 'conditions'")
        inline = status.pop("conditions")
        if inline is not None and not isinstance(inline, list):
            raise InvalidArgument("status.conditions must be a list")
        given_conditions = list(inline or [])
        if inline is None and not replace:
            status["conditions"] = None  # explicit removal, merge-patch style
    old_status = dict(old or {})
    old_conditions = old_status.get("conditions") if isinstance(old_status.get("conditions"), list) else []
    result: Status = {k: copy.deepcopy(v) for k, v in status.items() if v is not None} if replace else merge_patch(
        old_status, status
    )
    if given_conditions:
        result["conditions"] = merge_conditions(
            old_conditions, given_conditions, now=now, replace=replace or replace_lists
        )
    return result


def status_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    return dict(old or {}) != dict(new)
