"""Every hsm.v1 RPC through AgentClient against a real agent on a real SoftHSM token (plain and mTLS)."""

from __future__ import annotations

import threading

import pytest

from hsmd import errors, model
from hsmd.agent.client import AgentClient
from hsmd.model import SecretMetadata
from tests.fixtures.agent import RunningAgent


def test_write_then_read_round_trips_data_metadata_and_checksum(shared_client: AgentClient, prefix: str) -> None:
    path = f"{prefix}/db"
    data = {"username": b"app", "password": b"\x00s3cr3t\xff", "empty": b""}
    meta = SecretMetadata(description="db creds", labels={"team": "a"}, format="json", data_type="json",
                          source="test")
    result = shared_client.write(path, data, meta)
    assert result.changed is True
    assert result.checksum == model.checksum(data)

    secret = shared_client.read(path)
    assert secret.path == path
    assert dict(secret.data) == data
    assert secret.checksum == model.checksum(data)
    assert secret.metadata.description == "db creds"
    assert dict(secret.metadata.labels) == {"team": "a"}
    assert secret.metadata.data_type == "json"
    assert secret.metadata.created_at  # set by the token layer

    again = shared_client.write(path, data, meta)
    assert again == type(again)(model.checksum(data), False)

    changed = shared_client.write(path, {"username": b"app2"})
    assert changed.changed is True
    assert dict(shared_client.read(path).data) == {"username": b"app2"}  # a full replace
    assert shared_client.metadata(path).description == "db creds"  # metadata=None keeps it


def test_list_is_exact_and_sorted(shared_client: AgentClient, prefix: str) -> None:
    for name in ("db", "db2", "db/x", "other/y"):
        shared_client.write(f"{prefix}/{name}", {"k": b"v"})
    assert shared_client.list(f"{prefix}/db") == [f"{prefix}/db", f"{prefix}/db/x"]
    assert shared_client.list(f"{prefix}/db2") == [f"{prefix}/db2"]
    assert shared_client.list(prefix) == sorted(f"{prefix}/{n}" for n in ("db", "db2", "db/x", "other/y"))
    assert shared_client.list(f"{prefix}/nothing") == []


def test_checksum_and_checksums(shared_client: AgentClient, prefix: str) -> None:
    a, b = f"{prefix}/a", f"{prefix}/b"
    shared_client.write(a, {"k": b"1"})
    shared_client.write(b, {"k": b"2"})
    assert shared_client.checksum(a) == model.checksum({"k": b"1"})
    assert shared_client.checksums([a, b, f"{prefix}/missing"]) == {
        a: model.checksum({"k": b"1"}),
        b: model.checksum({"k": b"2"}),
    }
    assert shared_client.checksums(prefix=prefix) == {a: model.checksum({"k": b"1"}), b: model.checksum({"k": b"2"})}
    with pytest.raises(errors.NotFound):
        shared_client.checksum(f"{prefix}/missing")


def test_read_many_reports_each_path(shared_client: AgentClient, prefix: str) -> None:
    present = [f"{prefix}/s{i}" for i in range(4)]
    for i, path in enumerate(present):
        shared_client.write(path, {"i": str(i).encode()})
    missing = [f"{prefix}/missing{i}" for i in range(100)]  # with the rest: more than one chunk (100)
    found = shared_client.read_many([*present, *missing, "bad//path", present[0]])
    assert len(found) == len(present) + len(missing) + 1
    for i, path in enumerate(present):
        secret = found[path]
        assert isinstance(secret, model.Secret)
        assert secret.data == {"i": str(i).encode()}
        assert secret.checksum == model.checksum({"i": str(i).encode()})
    assert all(isinstance(found[p], errors.NotFound) and found[p].path == p for p in missing)
    assert isinstance(found["bad//path"], errors.InvalidArgument)
    assert shared_client.read_many([]) == {}


def test_delete_key_then_secret(shared_client: AgentClient, prefix: str) -> None:
    path = f"{prefix}/multi"
    shared_client.write(path, {"a": b"1", "b": b"2"})
    shared_client.delete(path, "a")
    assert dict(shared_client.read(path).data) == {"b": b"2"}
    with pytest.raises(errors.NotFound):
        shared_client.delete(path, "a")
    shared_client.delete(path)
    with pytest.raises(errors.NotFound):
        shared_client.read(path)
    with pytest.raises(errors.NotFound):
        shared_client.delete(path)


def test_create_only_and_compare_and_swap(shared_client: AgentClient, prefix: str) -> None:
    path = f"{prefix}/cas"
    first = shared_client.write(path, {"v": b"1"}, create_only=True)
    with pytest.raises(errors.AlreadyExists):
        shared_client.write(path, {"v": b"2"}, create_only=True)
    with pytest.raises(errors.Conflict):
        shared_client.write(path, {"v": b"2"}, expected_checksum=model.checksum({"v": b"other"}))
    second = shared_client.write(path, {"v": b"2"}, expected_checksum=first.checksum)
    assert second.changed and dict(shared_client.read(path).data) == {"v": b"2"}


def test_info_health_and_connection(shared_client: AgentClient, shared_agent: RunningAgent) -> None:
    info = shared_client.info()
    assert info.label == shared_agent.token.label
    assert info.serial == shared_agent.token.serial
    assert info.manufacturer == "SoftHSM project"
    assert info.profile == "generic"
    assert info.pin.locked is False
    assert shared_client.secret_count() == len(shared_client.list())
    assert shared_client.health() == ("healthy", "token responsive")
    assert shared_client.is_connected() is True
    assert shared_client.supports_additive() is True


def test_concurrent_calls_through_one_client(shared_client: AgentClient, prefix: str) -> None:
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(3):
                path = f"{prefix}/c{n}/{i}"
                data = {"n": f"{n}-{i}".encode()}
                shared_client.write(path, data)
                assert dict(shared_client.read(path).data) == data
                assert path in shared_client.list(f"{prefix}/c{n}")
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    assert len(shared_client.list(prefix)) == 30


def test_text_values_are_refused_before_sending(shared_client: AgentClient, prefix: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="must be bytes, not str"):
        shared_client.write(f"{prefix}/x", {"k": "text"})  # type: ignore[dict-item]
