"""hsmd.secret_state: desired vs actual for the hsm_secret module (pure decisions).

The backend here is an in-memory dict with the token's write semantics (create_only,
expected_checksum); it stands in for nothing PKCS#11-specific. The module is tested against a
real SoftHSM token through a real agent in tests/collection.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from hsmd import model, secret_state
from hsmd.errors import AlreadyExists, Conflict, HsmdError, InvalidArgument, NotFound, ResourceExhausted
from hsmd.secret_state import Desired

VALUE = b"do-not-print-me"
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@dataclass(frozen=True)
class Written:
    checksum: str
    changed: bool


class MemoryBackend:
    """Dict store with the write contract of Token/AgentClient; records every call."""

    def __init__(self) -> None:
        self.store: dict[str, model.Secret] = {}
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.fail_on: str | None = None

    def read_many(self, paths: Sequence[str]) -> dict[str, model.Secret | HsmdError]:
        self.calls.append(("read_many", ",".join(paths), {}))
        return {p: self.store.get(p) or NotFound(p) for p in paths}

    def write(self, path: str, data: Mapping[str, bytes], metadata: model.SecretMetadata | None = None, *,
              create_only: bool = False, expected_checksum: str | None = None) -> Written:
        self.calls.append(("write", path, {"create_only": create_only, "expected_checksum": expected_checksum}))
        if path == self.fail_on:
            raise ResourceExhausted("token full")
        current = self.store.get(path)
        if create_only and current is not None:
            raise AlreadyExists(path)
        if expected_checksum is not None and (current is None or current.checksum != expected_checksum):
            raise Conflict(path)
        secret = model.Secret(path, dict(data), metadata or model.SecretMetadata(), model.checksum(data))
        self.store[path] = secret
        return Written(secret.checksum, True)

    def delete(self, path: str, key: str | None = None) -> None:
        self.calls.append(("delete", path, {}))
        if path not in self.store:
            raise NotFound(path)
        del self.store[path]

    def writes(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [c for c in self.calls if c[0] in ("write", "delete")]


def run(backend: MemoryBackend, items: list[Desired], check: bool = False) -> list[secret_state.ItemResult]:
    return secret_state.apply(backend, items, check_mode=check, now=NOW)


def test_create_check_real_check_real() -> None:
    backend = MemoryBackend()
    item = Desired("team-a/db", data={"password": VALUE}, metadata={"description": "db", "labels": {"a": "b"}})
    (checked,) = run(backend, [item], check=True)
    assert (checked.action, checked.changed) == ("created", True) and backend.writes() == []
    (created,) = run(backend, [item])
    assert (created.action, created.changed, created.keys) == ("created", True, ["password"])
    assert backend.writes()[-1][2] == {"create_only": True, "expected_checksum": None}
    assert backend.store["team-a/db"].metadata.description == "db"
    assert backend.store["team-a/db"].metadata.created_at == "2026-01-02T03:04:05Z"
    n = len(backend.writes())
    (again_check,) = run(backend, [item], check=True)
    (again,) = run(backend, [item])
    assert not again_check.changed and not again.changed and again.action == "unchanged"
    assert len(backend.writes()) == n


def test_update_is_compare_and_swap_and_keeps_created_at() -> None:
    backend = MemoryBackend()
    run(backend, [Desired("p", data={"a": b"bc"})])
    before = backend.store["p"]
    (result,) = run(backend, [Desired("p", data={"ab": b"c"})])  # same bytes, different split
    assert (result.action, result.changed, result.keys) == ("updated", True, ["ab"])
    assert backend.writes()[-1][2] == {"create_only": False, "expected_checksum": before.checksum}
    assert backend.store["p"].metadata.created_at == before.metadata.created_at


def test_metadata_only_change_is_a_change() -> None:
    backend = MemoryBackend()
    run(backend, [Desired("p", data={"k": VALUE}, metadata={"description": "one"})])
    (result,) = run(backend, [Desired("p", data={"k": VALUE}, metadata={"description": "two"})])
    assert result.changed and backend.store["p"].metadata.description == "two"
    # metadata not given: whatever is stored stays, nothing to do
    (same,) = run(backend, [Desired("p", data={"k": VALUE})])
    assert not same.changed


def test_absent_deletes_once() -> None:
    backend = MemoryBackend()
    run(backend, [Desired("p", data={"k": VALUE})])
    (checked,) = run(backend, [Desired("p", state="absent")], check=True)
    assert checked.changed and "p" in backend.store
    (deleted,) = run(backend, [Desired("p", state="absent")])
    assert (deleted.action, deleted.changed) == ("deleted", True) and "p" not in backend.store
    (again,) = run(backend, [Desired("p", state="absent")])
    assert (again.action, again.changed) == ("unchanged", False)


def test_diffs_carry_key_names_checksums_and_metadata_never_values() -> None:
    backend = MemoryBackend()
    (created,) = run(backend, [Desired("p", data={"password": VALUE}, metadata={"labels": {"team": "a"}})])
    (updated,) = run(backend, [Desired("p", data={"password": VALUE + b"2", "user": b"bob"})])
    (deleted,) = run(backend, [Desired("p", state="absent")])
    assert created.diff["before"] == {}
    assert created.diff["after"]["keys"] == ["password"]
    assert updated.diff["before"]["checksum"] == model.checksum({"password": VALUE})
    assert updated.diff["after"]["keys"] == ["password", "user"]
    assert updated.diff["after"]["metadata"]["labels"] == {"team": "a"}
    assert deleted.diff["after"] == {}
    text = json.dumps([created.diff, updated.diff, deleted.diff, [r.to_dict() for r in (created, updated, deleted)]])
    assert VALUE.decode() not in text and "bob" not in text


@pytest.mark.parametrize(
    ("items", "fragment"),
    [
        ([Desired("ok", data={"k": b"v"}), Desired("bad//path", data={"k": b"v"})], "secrets\\[1\\]"),
        ([Desired("ok", data={"k": b"v"}), Desired("ok", data={"k": b"w"})], "more than once"),
        ([Desired("ok", data={"bad key": b"v"})], "bad key"),
        ([Desired("ok")], "needs data"),
        ([Desired("ok", data={"k": b"v"}, metadata={"colour": "red"})], "unknown field"),
        ([Desired("ok", data={"k": b"v"}, metadata={"dataType": "nonsense"})], "dataType"),
    ],
)
def test_bad_input_fails_before_any_write(items: list[Desired], fragment: str) -> None:
    backend = MemoryBackend()
    with pytest.raises(InvalidArgument, match=fragment):
        run(backend, items)
    assert backend.writes() == [] and backend.store == {}


def test_value_too_large_for_the_device_profile_is_refused_up_front() -> None:
    backend = MemoryBackend()
    with pytest.raises(ResourceExhausted, match="picohsm"):
        secret_state.apply(backend, [Desired("p", data={"k": b"x" * 5000})], profile=model.profile("picohsm"))
    assert backend.writes() == []


def test_failure_midway_reports_what_was_done() -> None:
    backend = MemoryBackend()
    backend.fail_on = "second"
    with pytest.raises(secret_state.BatchFailed) as info:
        run(backend, [Desired("first", data={"k": b"1"}), Desired("second", data={"k": b"2"})])
    assert info.value.path == "second" and isinstance(info.value.error, ResourceExhausted)
    assert [r.path for r in info.value.results] == ["first"] and "first" in backend.store


def test_batch_reads_current_state_in_one_call() -> None:
    backend = MemoryBackend()
    run(backend, [Desired(f"p{i}", data={"k": b"v"}) for i in range(20)])
    assert [c[0] for c in backend.calls].count("read_many") == 1


def test_metadata_accepts_go_and_snake_case_names() -> None:
    assert secret_state.normalize_metadata({"data_type": "json", "description": "d"}) == {
        "dataType": "json", "description": "d"
    }
