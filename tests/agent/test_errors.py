"""Errors travel as proper gRPC status codes with the exact hsmd code in trailing metadata, messages
never carry values or PINs, and AgentClient rebuilds the same hsmd.errors class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from hsmd import errors
from hsmd.agent.client import AgentClient
from hsmd.agent.errors import CODE_KEY, PATH_KEY, STATUS_BY_CODE, error_from_rpc, status_for, trailing_metadata
from hsmd.proto.hsm.v1 import hsm_pb2, hsm_pb2_grpc
from tests.fixtures.agent import RunningAgent

MARKER = b"VALUE-MUST-NOT-LEAK-7f3a"


@pytest.fixture(scope="module")
def stub(shared_agent: RunningAgent) -> Any:
    if shared_agent.tls is None:
        channel = grpc.insecure_channel(shared_agent.address)
    else:
        pki = shared_agent.tls
        creds = grpc.ssl_channel_credentials(
            Path(pki.ca).read_bytes(), Path(pki.client_key).read_bytes(), Path(pki.client_cert).read_bytes()
        )
        channel = grpc.secure_channel(shared_agent.address, creds)
    yield hsm_pb2_grpc.HSMAgentStub(channel)
    channel.close()


def _fail(call: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10)
    return info.value


def _meta(err: grpc.RpcError) -> dict[str, str]:
    return {m.key: m.value for m in err.trailing_metadata() or ()}


def _data(**values: bytes) -> Any:
    return hsm_pb2.SecretData(data=values)


def test_not_found(stub: Any, prefix: str) -> None:
    err = _fail(stub.ReadSecret, hsm_pb2.ReadSecretRequest(path=f"{prefix}/missing"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert _meta(err) == {CODE_KEY: "not_found", PATH_KEY: f"{prefix}/missing"}
    for call, request in [
        (stub.ReadMetadata, hsm_pb2.ReadMetadataRequest(path=f"{prefix}/missing")),
        (stub.GetChecksum, hsm_pb2.GetChecksumRequest(path=f"{prefix}/missing")),
        (stub.DeleteSecret, hsm_pb2.DeleteSecretRequest(path=f"{prefix}/missing")),
    ]:
        assert _fail(call, request).code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("path", ["", "../etc", "a//b", "a/./b", "spaces not allowed", "x" * 300])
def test_invalid_path(stub: Any, path: str) -> None:
    err = _fail(stub.ReadSecret, hsm_pb2.ReadSecretRequest(path=path))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _meta(err)[CODE_KEY] == "invalid_argument"
    assert err.details()


def test_invalid_writes_never_echo_values(stub: Any, prefix: str) -> None:
    cases = [
        hsm_pb2.WriteSecretRequest(path=f"{prefix}/x", secret_data=_data()),  # no keys
        hsm_pb2.WriteSecretRequest(path=f"{prefix}/x", secret_data=hsm_pb2.SecretData(data={"bad key!": MARKER})),
        hsm_pb2.WriteSecretRequest(path=f"{prefix}/x", secret_data=hsm_pb2.SecretData(data={"_metadata": MARKER})),
        hsm_pb2.WriteSecretRequest(path="bad//path", secret_data=_data(k=MARKER)),
    ]
    for request in cases:
        err = _fail(stub.WriteSecret, request)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
        assert MARKER.decode() not in err.details()


def test_value_too_large_is_resource_exhausted(stub: Any, prefix: str) -> None:
    big = MARKER * (70 * 1024 // len(MARKER))  # over the generic profile's 64 KiB per object
    err = _fail(stub.WriteSecret, hsm_pb2.WriteSecretRequest(path=f"{prefix}/big", secret_data=_data(k=big)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert _meta(err)[CODE_KEY] == "resource_exhausted"
    assert MARKER.decode() not in err.details()
    assert _fail(stub.ReadSecret, hsm_pb2.ReadSecretRequest(path=f"{prefix}/big")).code() == grpc.StatusCode.NOT_FOUND


def test_already_exists_and_aborted(stub: Any, prefix: str) -> None:
    path = f"{prefix}/once"
    stub.WriteSecret(hsm_pb2.WriteSecretRequest(path=path, secret_data=_data(k=b"1"), create_only=True), timeout=10)
    err = _fail(stub.WriteSecret, hsm_pb2.WriteSecretRequest(path=path, secret_data=_data(k=b"2"), create_only=True))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    err = _fail(
        stub.WriteSecret,
        hsm_pb2.WriteSecretRequest(path=path, secret_data=_data(k=b"2"), expected_checksum="sha256:" + "0" * 64),
    )
    assert err.code() == grpc.StatusCode.ABORTED
    assert _meta(err)[CODE_KEY] == "conflict"


def test_batch_limits(stub: Any) -> None:
    err = _fail(stub.ReadSecrets, hsm_pb2.ReadSecretsRequest(paths=[f"p{i}" for i in range(1001)]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = _fail(stub.ListSecrets, hsm_pb2.ListSecretsRequest(prefix="../x"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_wrong_old_pin_is_permission_denied_and_not_logged(agent: RunningAgent) -> None:
    client = agent.client()
    with pytest.raises(errors.PermissionDenied) as info:
        client.change_pin("000000-wrong", "1234567")
    assert "000000-wrong" not in str(info.value) and "1234567" not in str(info.value)
    with pytest.raises(errors.InvalidArgument):
        client.change_pin("", "1234567")
    # the good PIN still works (no lockout from one wrong attempt), and PINs never reach the logs
    client.change_pin(agent.pin, "new-pin-9876")
    client.change_pin("new-pin-9876", agent.pin)
    logs = agent.logs()
    for secret in ("000000-wrong", "1234567", "new-pin-9876", agent.pin):
        assert secret not in logs


def test_client_maps_every_status_back() -> None:
    class FakeRpcError(grpc.RpcError):  # the shape grpc gives a failed call; no PKCS#11 involved
        def __init__(self, code: Any, details: str, trailers: tuple[tuple[str, str], ...] = ()) -> None:
            self._code, self._details = code, details
            self._trailers = trailers

        def code(self) -> Any:
            return self._code

        def details(self) -> str:
            return self._details

        def trailing_metadata(self) -> Any:
            return self._trailers

    for code, cls in errors.ERRORS_BY_CODE.items():
        err = cls("boom", path="a/b")
        rebuilt = error_from_rpc(FakeRpcError(status_for(err), "boom", trailing_metadata(err)))
        assert type(rebuilt) is cls and rebuilt.message == "boom" and rebuilt.path == "a/b"
        assert code in STATUS_BY_CODE
    # peers without our metadata (the Go agent, or grpc itself) map by status code
    plain = {
        grpc.StatusCode.NOT_FOUND: errors.NotFound,
        grpc.StatusCode.ABORTED: errors.Conflict,
        grpc.StatusCode.DATA_LOSS: errors.IntegrityError,
        grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
        grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
        grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
        grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
        grpc.StatusCode.UNKNOWN: errors.Internal,
    }
    for status, cls in plain.items():
        assert type(error_from_rpc(FakeRpcError(status, "x"))) is cls
    assert error_from_rpc(FakeRpcError(grpc.StatusCode.UNAVAILABLE, "x")).temporary


def test_unreachable_agent_is_unavailable() -> None:
    with AgentClient("127.0.0.1:1", timeout=2) as client, pytest.raises(errors.Unavailable) as info:
        client.read("a")
    assert "127.0.0.1:1" in str(info.value)
