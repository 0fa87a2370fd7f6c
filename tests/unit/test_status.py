"""hsmd.status: condition and status merging with the operator-sdk k8s_status rules (pure)."""

from __future__ import annotations

import pytest

from hsmd.errors import InvalidArgument
from hsmd.status import (
    find_condition,
    merge_conditions,
    merge_patch,
    merge_status,
    parse_time,
    rfc3339,
    set_condition,
    validate_condition,
)

T0, T1, T2 = "2025-01-01T00:00:00Z", "2025-01-01T00:01:00Z", "2025-01-01T00:02:00Z"


def test_new_condition_gets_now() -> None:
    merged = merge_conditions([], [{"type": "Ready", "status": "True", "reason": "Synced"}], now=T0)
    assert merged == [{"type": "Ready", "status": "True", "reason": "Synced", "message": "", "lastTransitionTime": T0}]


def test_transition_time_kept_when_status_unchanged() -> None:
    old = merge_conditions([], [{"type": "Ready", "status": "True", "reason": "Synced", "message": "a"}], now=T0)
    same = merge_conditions(old, [{"type": "Ready", "status": "True", "reason": "Synced", "message": "b"}], now=T1)
    assert same[0]["lastTransitionTime"] == T0 and same[0]["message"] == "b"
    flipped = merge_conditions(same, [{"type": "Ready", "status": "False", "reason": "Conflict"}], now=T2)
    assert flipped[0]["lastTransitionTime"] == T2 and flipped[0]["status"] == "False"


def test_explicit_transition_time_wins() -> None:
    old = merge_conditions([], [{"type": "Ready", "status": "True", "reason": "X"}], now=T0)
    given = merge_conditions(old, [{"type": "Ready", "status": "True", "lastTransitionTime": T2}], now=T1)
    assert given[0]["lastTransitionTime"] == T2


def test_merge_by_type_keeps_order_and_others() -> None:
    old = [
        {"type": "Ready", "status": "True", "reason": "A", "message": "", "lastTransitionTime": T0},
        {"type": "Custom", "status": "False", "reason": "B", "message": "", "lastTransitionTime": T0},
    ]
    merged = merge_conditions(old, [{"type": "Custom", "status": "True", "reason": "C"},
                                    {"type": "Extra", "status": "Unknown"}], now=T1)
    assert [c["type"] for c in merged] == ["Ready", "Custom", "Extra"]
    assert merged[0] == old[0]
    replaced = merge_conditions(old, [{"type": "Extra", "status": "True"}], now=T1, replace=True)
    assert [c["type"] for c in replaced] == ["Extra"]


@pytest.mark.parametrize("condition", [
    {"status": "True"}, {"type": "Ready"}, {"type": "Ready", "status": "yes"},
    {"type": "Ready", "status": "True", "reason": "two words"},
    {"type": "Ready", "status": "True", "lastTransitionTime": "yesterday"},
    {"type": "Ready", "status": "True", "bogus": 1}, {"type": "not valid!", "status": "True"},
    {"type": "Ready", "status": "True", "observedGeneration": -1}, "Ready",
])
def test_invalid_conditions(condition: object) -> None:
    with pytest.raises(InvalidArgument):
        validate_condition(condition)  # type: ignore[arg-type]


def test_bool_status_normalised_and_duplicate_types_rejected() -> None:
    assert validate_condition({"type": "Ready", "status": True})["status"] == "True"
    with pytest.raises(InvalidArgument):
        merge_conditions([], [{"type": "Ready", "status": "True"}, {"type": "Ready", "status": "False"}])


def test_merge_patch_rfc7386() -> None:
    assert merge_patch({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": None, "e": 4}, "f": [1]}) == {
        "a": 1, "b": {"d": 3, "e": 4}, "f": [1]}
    assert merge_patch({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}


def test_merge_status_merges_and_replaces() -> None:
    old = {"phase": "Ready", "keep": 1, "conditions": [
        {"type": "Ready", "status": "True", "reason": "A", "message": "", "lastTransitionTime": T0}]}
    merged = merge_status(old, {"phase": "Partial", "gone": None}, [{"type": "Ready", "status": "True", "reason": "A"}],
                          now=T1)
    assert merged == {"phase": "Partial", "keep": 1, "conditions": old["conditions"]}
    replaced = merge_status(old, {"phase": "X"}, replace=True, now=T1)
    assert replaced == {"phase": "X"}
    inline = merge_status(old, {"conditions": [{"type": "Other", "status": "False", "reason": "B"}]}, now=T1)
    assert [c["type"] for c in inline["conditions"]] == ["Ready", "Other"]
    lists = merge_status(old, conditions=[{"type": "Other", "status": "False"}], replace_lists=True, now=T1)
    assert [c["type"] for c in lists["conditions"]] == ["Other"] and lists["keep"] == 1
    with pytest.raises(InvalidArgument):
        merge_status(old, {"conditions": []}, [{"type": "Ready", "status": "True"}])


def test_set_and_find_condition() -> None:
    conditions = set_condition(None, "Ready", False, "Forbidden", "path denied", observed_generation=2, now=T0)
    found = find_condition(conditions, "Ready")
    assert found is not None and found["status"] == "False" and found["observedGeneration"] == 2
    assert find_condition(conditions, "Missing") is None


def test_time_helpers() -> None:
    assert rfc3339(parse_time("2025-01-01T01:00:00+01:00")) == T0
    assert parse_time("2025-01-01T00:00:00.123456789Z").microsecond == 123456
    with pytest.raises(InvalidArgument):
        parse_time("2025-13-01T00:00:00Z")
