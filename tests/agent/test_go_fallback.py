"""AgentClient against a Go-like agent: only the ten Go RPCs, answers without the additive fields.

The "Go agent" here is a gRPC server on port 0 that forwards the ten RPCs to a real agent and strips
every additive field from the answers; the additive RPCs answer UNIMPLEMENTED, as on a Go agent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from hsmd import errors, model
from hsmd.agent.client import AgentClient
from hsmd.model import SecretMetadata
from hsmd.proto.hsm.v1 import hsm_pb2, hsm_pb2_grpc
from tests.fixtures.agent import RunningAgent


class GoLikeAgent(hsm_pb2_grpc.HSMAgentServicer):
    def __init__(self, upstream: Any) -> None:
        self.up = upstream

    def _forward(self, name: str, request: Any, context: Any) -> Any:
        try:
            return getattr(self.up, name)(request, timeout=10)
        except grpc.RpcError as exc:  # re-raise the status without our metadata, like a Go agent
            context.abort(exc.code(), exc.details())

    def GetInfo(self, request: Any, context: Any) -> Any:
        return self._forward("GetInfo", request, context)

    def ReadSecret(self, request: Any, context: Any) -> Any:
        full = self._forward("ReadSecret", request, context)
        return hsm_pb2.ReadSecretResponse(secret_data=full.secret_data)

    def WriteSecret(self, request: Any, context: Any) -> Any:
        go = hsm_pb2.WriteSecretRequest(path=request.path, secret_data=request.secret_data)
        if request.HasField("metadata"):
            go.metadata.CopyFrom(request.metadata)
        self._forward("WriteSecret", go, context)  # a Go agent ignores create_only / expected_checksum
        return hsm_pb2.WriteSecretResponse()

    def ReadMetadata(self, request: Any, context: Any) -> Any:
        return self._forward("ReadMetadata", request, context)

    def DeleteSecret(self, request: Any, context: Any) -> Any:
        return self._forward("DeleteSecret", request, context)

    def ListSecrets(self, request: Any, context: Any) -> Any:
        return self._forward("ListSecrets", request, context)

    def GetChecksum(self, request: Any, context: Any) -> Any:
        return self._forward("GetChecksum", request, context)

    def IsConnected(self, request: Any, context: Any) -> Any:
        return self._forward("IsConnected", request, context)

    def Health(self, request: Any, context: Any) -> Any:
        return self._forward("Health", request, context)

    def ChangePIN(self, request: Any, context: Any) -> Any:
        return self._forward("ChangePIN", request, context)
    # ReadSecrets, GetChecksums, GetTokenInfo, WatchChanges: the base class answers UNIMPLEMENTED


@pytest.fixture
def go_client(agent: RunningAgent) -> Iterator[AgentClient]:
    channel = grpc.insecure_channel(agent.address)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    hsm_pb2_grpc.add_HSMAgentServicer_to_server(GoLikeAgent(hsm_pb2_grpc.HSMAgentStub(channel)), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with AgentClient(f"127.0.0.1:{port}") as client:
            yield client
    finally:
        server.stop(0)
        channel.close()


def test_client_falls_back_to_the_ten_rpcs(go_client: AgentClient) -> None:
    assert go_client.supports_additive() is False
    data = {"a": b"1"}
    result = go_client.write("go/x", data, SecretMetadata(description="d"))
    assert result.checksum == model.checksum(data)
    secret = go_client.read("go/x")
    assert dict(secret.data) == data and secret.checksum == model.checksum(data)
    assert secret.metadata.description == "d"  # fetched with ReadMetadata
    go_client.write("go/y", {"b": b"2"})
    found = go_client.read_many(["go/x", "go/y", "go/missing"])
    assert isinstance(found["go/x"], model.Secret) and isinstance(found["go/missing"], errors.NotFound)
    assert go_client.checksums(prefix="go") == {"go/x": model.checksum(data), "go/y": model.checksum({"b": b"2"})}
    assert go_client.checksums(["go/y", "go/missing"]) == {"go/y": model.checksum({"b": b"2"})}
    info = go_client.info()
    assert info.serial and info.free_memory is None
    assert go_client.secret_count() == 2
    # preconditions are checked with a read first on a Go agent
    with pytest.raises(errors.AlreadyExists):
        go_client.write("go/x", {"a": b"2"}, create_only=True)
    with pytest.raises(errors.Conflict):
        go_client.write("go/x", {"a": b"2"}, expected_checksum=model.checksum({"a": b"0"}))
    assert go_client.write("go/x", {"a": b"2"}, expected_checksum=model.checksum(data)).changed
    with pytest.raises(errors.NotFound):  # mapped from the bare status code
        go_client.read("go/missing")
    with pytest.raises(errors.FailedPrecondition):  # no change stream on a Go agent
        next(go_client.watch_changes())


def test_a_change_subscriber_waits_quietly_on_an_agent_without_change_streams(
    go_client: AgentClient, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker and the operator follow every agent's WatchChanges; a Go agent has none. The
    subscriber notices, says so once at info level, and looks again only every unsupported_retry
    seconds instead of retrying with warnings every few seconds."""
    from hsmd.changestream import ChangeSubscriber

    attempts: list[int] = []
    watch = go_client.watch_changes

    def counted(prefix: str = "", since: int = 0) -> Any:
        attempts.append(since)
        return watch(prefix, since)

    go_client.watch_changes = counted  # type: ignore[method-assign]
    ups: list[bool] = []
    subscriber = ChangeSubscriber(go_client, lambda _a, _c: None, lambda _a, _w: None,
                                  on_connection=lambda _a, up: ups.append(up), backoff_cap=0.05,
                                  unsupported_retry=30.0)
    with caplog.at_level(logging.INFO, logger="hsmd.changestream"):
        subscriber.start()
        try:
            time.sleep(1.5)
        finally:
            subscriber.stop()
    assert len(attempts) == 1 and ups == []
    messages = [r.getMessage() for r in caplog.records if r.name == "hsmd.changestream"]
    assert any("has no change stream" in m for m in messages), messages
    assert not any(r.levelno >= logging.WARNING for r in caplog.records if r.name == "hsmd.changestream")
