"""Pure decisions of hsmd.fanout: quorum sizes, read resolution, settled answers, write verdicts, pool
addresses."""

from __future__ import annotations

import pytest

from hsmd.errors import AlreadyExists, Conflict, IntegrityError, InvalidArgument, NotFound, Unavailable
from hsmd.fanout import (
    AgentOutcome,
    ReadOutcome,
    Version,
    agent_addresses,
    decide_write,
    pool_device_name,
    required_acks,
    resolve_versions,
    settle_read,
)
from hsmd.model import Secret, SecretMetadata, checksum


@pytest.mark.parametrize(("quorum", "total", "need"), [
    ("majority", 1, 1), ("majority", 2, 2), ("majority", 3, 2), ("majority", 4, 3), ("majority", 5, 3),
    ("all", 3, 3), ("one", 3, 1), ("all", 1, 1),
])
def test_required_acks(quorum: str, total: int, need: int) -> None:
    assert required_acks(quorum, total) == need


def test_unknown_quorum() -> None:
    with pytest.raises(InvalidArgument):
        required_acks("most", 3)


def test_unanimous_and_majority() -> None:
    a, b = Version("sha256:a", "2024-01-01T00:00:00Z"), Version("sha256:b", "2030-01-01T00:00:00Z")
    assert resolve_versions([a, a]) .resolved_by == "unanimous"
    r = resolve_versions([a, b, a])
    assert (r.winner, r.resolved_by, r.disagreement) == (a, "majority", True)
    # absence can win a majority too (deleted on two of three)
    r = resolve_versions([Version(None), b, Version(None)])
    assert r.winner.checksum is None and r.resolved_by == "majority"


def test_newest_when_fewer_than_three_answer_or_no_majority() -> None:
    old, new = Version("sha256:a", "2024-01-01T00:00:00.5Z"), Version("sha256:b", "2024-01-01T00:00:00.75Z")
    assert resolve_versions([old, new]).winner == new
    assert resolve_versions([new, old]).winner == new
    c = Version("sha256:c", "2023-01-01T00:00:00Z")
    assert resolve_versions([old, new, c]).resolved_by == "newest"
    # Go writes RFC3339Nano with 9 digits; unparsable stamps are oldest
    go = Version("sha256:g", "2024-01-01T00:00:00.123456789Z")
    assert resolve_versions([Version("sha256:x", "garbage"), go]).winner == go
    # present beats absent with two answers
    assert resolve_versions([Version(None), old]).winner == old


def test_no_answer_is_unavailable() -> None:
    with pytest.raises(Unavailable):
        resolve_versions([])


def ok(agent: str) -> AgentOutcome:
    return AgentOutcome(agent, True, checksum="sha256:x", changed=True)


def test_decide_write() -> None:
    down = AgentOutcome("c", False, error=Unavailable("down"))
    exists = AgentOutcome("b", False, error=AlreadyExists("exists"))
    assert decide_write([ok("a"), ok("b"), down], 2, "majority") is None
    err = decide_write([ok("a"), down, down], 2, "majority")
    assert isinstance(err, Unavailable) and "1 of 3" in err.message
    err = decide_write([exists, AgentOutcome("c", False, error=AlreadyExists("exists"))], 1, "one")
    assert isinstance(err, AlreadyExists)
    err = decide_write([ok("a"), exists, AgentOutcome("c", False, error=Conflict("changed"))], 3, "all")
    assert isinstance(err, AlreadyExists | Conflict) and "1 of 3" in err.message
    assert isinstance(decide_write([AgentOutcome("a", False, error=NotFound("x"))], 1, "one"), NotFound)


def test_settle_read_absence_is_a_fact_only_when_every_agent_answered() -> None:
    secret = Secret("p", {"k": b"v"}, SecretMetadata(), checksum({"k": b"v"}))
    absent = AgentOutcome("a", True, checksum=None)
    silent = AgentOutcome("b", False, error=Unavailable("down"))
    assert settle_read(ReadOutcome("p", secret, "newest", True, (absent, silent))) is secret
    assert isinstance(settle_read(ReadOutcome("p", None, "unanimous", False, (absent, absent))), NotFound)
    gone = settle_read(ReadOutcome("p", None, "unanimous", False, (absent, silent)))
    assert isinstance(gone, Unavailable) and gone.temporary and "1 of 2" in gone.message
    # a per-path permanent failure on the other agent does not make absence a fact either
    corrupt = AgentOutcome("b", False, error=IntegrityError("bad object"))
    assert isinstance(settle_read(ReadOutcome("p", None, "unanimous", False, (absent, corrupt))), Unavailable)


def test_pool_device_name_and_agent_addresses() -> None:
    assert pool_device_name({"metadata": {"name": "pico-pool"}}) == "pico"
    assert pool_device_name({"metadata": {"name": "p", "ownerReferences": [{"kind": "HSMDevice", "name": "d"}]}}) == "d"
    running = {"phase": "Running", "podIP": "10.1.2.3", "conditions": [{"type": "Ready", "status": "True"}]}
    pods = [
        {"metadata": {}, "status": running,
         "spec": {"containers": [{"ports": [{"name": "grpc", "containerPort": 9443}]}]}},
        {"metadata": {}, "status": {**running, "podIP": "10.1.2.4"}, "spec": {"containers": [{}]}},
        {"metadata": {}, "status": {**running, "podIP": "fd00::1"}, "spec": {}},
        {"metadata": {}, "status": {**running, "podIP": "10.9.9.9",
                                    "conditions": [{"type": "Ready", "status": "False"}]}},
        {"metadata": {"deletionTimestamp": "now"}, "status": {**running, "podIP": "10.9.9.8"}},
        {"metadata": {}, "status": {"phase": "Pending", "podIP": "10.9.9.7"}},
    ]
    assert agent_addresses(pods) == ["10.1.2.3:9443", "10.1.2.4:9090", "[fd00::1]:9090"]
