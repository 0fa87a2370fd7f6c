"""AgentClient: the one way the rest of hsmd talks to an agent (grpc stays inside hsmd.agent).

It speaks hsmd.model values and raises hsmd.errors (rebuilt exactly from the agent's trailing
metadata by hsmd.agent.errors). Against an agent that lacks the additive RPCs (the Go agent), it
falls back to the ten Go RPCs: batch reads become one read per path, checksums are computed
locally from the data, and ``create_only``/``expected_checksum`` are checked with a read first
(not atomic there; our agent checks them on the device side, atomically).

Thread-safe: one channel, shared by every thread. Use as a context manager or call ``close()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped]

from hsmd import model
from hsmd.agent import convert
from hsmd.agent.errors import error_from_rpc, is_unimplemented
from hsmd.errors import AlreadyExists, Conflict, HsmdError, InvalidArgument, NotFound, Unavailable, error_from_code
from hsmd.model import PinStatus, Secret, SecretMetadata, TokenInfo, WriteResult
from hsmd.proto.hsm.v1 import hsm_pb2, hsm_pb2_grpc

T = TypeVar("T")

# ReadSecrets is chunked so one answer stays well under the message limit even for large secrets.
READ_BATCH = 100


@dataclass(frozen=True)
class ClientTLS:
    """mTLS to an agent: the CA that issued the agent's certificate, and our client certificate."""

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None  # expected name in the agent's certificate, if not the address host


@dataclass(frozen=True)
class Change:
    kind: str  # "written" | "deleted" | "resync" | "heartbeat"
    path: str
    checksum: str
    sequence: int
    epoch: str


_KINDS = {
    hsm_pb2.ChangeEvent.WRITTEN: "written",
    hsm_pb2.ChangeEvent.DELETED: "deleted",
    hsm_pb2.ChangeEvent.RESYNC: "resync",
    hsm_pb2.ChangeEvent.HEARTBEAT: "heartbeat",
}


class ChangeStream(Iterator[Change]):
    """Changes as the agent reports them. Iteration blocks until the next event; ``stop()`` (from
    any thread) ends it with StopIteration. If the agent ends the stream (it is shutting down) or
    the connection drops, ``next`` raises Unavailable: resubscribe with ``since`` = the last
    sequence seen."""

    def __init__(self, call: Any, address: str) -> None:
        self._call = call
        self._address = address
        self._stopped = False

    def __iter__(self) -> ChangeStream:
        return self

    def __next__(self) -> Change:
        if self._stopped:
            raise StopIteration
        try:
            event = next(self._call)
        except StopIteration:
            if self._stopped:
                raise
            raise Unavailable(f"agent {self._address} ended the change stream") from None
        except grpc.RpcError as exc:
            if self._stopped:
                raise StopIteration from None
            raise error_from_rpc(exc, address=self._address) from exc
        return Change(
            kind=_KINDS.get(event.kind, "unknown"),
            path=event.path,
            checksum=event.checksum,
            sequence=event.sequence,
            epoch=event.epoch,
        )

    def stop(self) -> None:
        self._stopped = True
        self._call.cancel()

    close = stop

    def __enter__(self) -> ChangeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AgentClient:
    def __init__(self, address: str, *, tls: ClientTLS | None = None, timeout: float = 10.0) -> None:
        self.address = address
        self.timeout = timeout
        options = list(convert.GRPC_OPTIONS)
        if tls is None:
            self._channel = grpc.insecure_channel(address, options=options)
        else:
            if tls.server_name:
                options.append(("grpc.ssl_target_name_override", tls.server_name))
            self._channel = grpc.secure_channel(address, _channel_credentials(tls), options=options)
        self._stub = hsm_pb2_grpc.HSMAgentStub(self._channel)  # type: ignore[no-untyped-call]
        self._additive: bool | None = None  # None: not known yet; False: a Go agent

    # --- plumbing ------------------------------------------------------------------------------

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel connects (raise Unavailable after ``timeout``)."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise Unavailable(f"agent {self.address} did not become reachable within {timeout:g} s") from None

    def _invoke(self, method: Callable[..., T], request: Any, timeout: float | None = None) -> T:
        try:
            return method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, address=self.address) from exc

    def _additive_call(self, method: Callable[..., T], request: Any, timeout: float | None = None) -> T | None:
        """Call an additive RPC; None if the agent does not have it (then use the Go RPCs)."""
        if self._additive is False:
            return None
        try:
            result = method(request, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            if is_unimplemented(exc):
                self._additive = False
                return None
            raise error_from_rpc(exc, address=self.address) from exc
        self._additive = True
        return result

    def supports_additive(self) -> bool:
        """Does the agent have hsmd's additive RPCs (ReadSecrets, WatchChanges, ...)?"""
        if self._additive is None:
            self._additive_call(self._stub.ReadSecrets, hsm_pb2.ReadSecretsRequest(paths=[]))
        return bool(self._additive)

    # --- secrets -------------------------------------------------------------------------------

    def read(self, path: str) -> Secret:
        response = self._invoke(self._stub.ReadSecret, hsm_pb2.ReadSecretRequest(path=path))
        data = convert.data_from_proto(response.secret_data)
        if response.HasField("metadata"):
            metadata = convert.metadata_from_proto(response.metadata)
        else:  # a Go agent: metadata is a separate call, and may not exist
            try:
                metadata = self.metadata(path)
            except NotFound:
                metadata = SecretMetadata()
        return Secret(path=path, data=data, metadata=metadata, checksum=response.checksum or model.checksum(data))

    def read_many(self, paths: Sequence[str]) -> dict[str, Secret | HsmdError]:
        """Read many secrets (ReadSecrets, chunked); a path that cannot be read maps to its error."""
        out: dict[str, Secret | HsmdError] = {}
        unique = list(dict.fromkeys(paths))
        for start in range(0, len(unique), READ_BATCH):
            chunk = unique[start : start + READ_BATCH]
            response = self._additive_call(
                self._stub.ReadSecrets,
                hsm_pb2.ReadSecretsRequest(paths=chunk),
                timeout=self.timeout + 0.05 * len(chunk),
            )
            if response is None:
                for path in unique[start:]:
                    try:
                        out[path] = self.read(path)
                    except HsmdError as err:
                        if err.temporary:
                            raise
                        out[path] = err
                return out
            for result in response.results:
                if result.HasField("error"):
                    out[result.path] = error_from_code(result.error.code, result.error.message, path=result.path)
                else:
                    data = convert.data_from_proto(result.secret_data)
                    out[result.path] = Secret(
                        path=result.path,
                        data=data,
                        metadata=convert.metadata_from_proto(result.metadata),
                        checksum=result.checksum or model.checksum(data),
                    )
        return out

    def write(
        self,
        path: str,
        data: Mapping[str, bytes],
        metadata: SecretMetadata | None = None,
        *,
        create_only: bool = False,
        expected_checksum: str | None = None,
    ) -> WriteResult:
        """Replace the secret at ``path`` with ``data`` (all keys). ``create_only``: AlreadyExists if
        it exists; ``expected_checksum``: Conflict unless the current checksum is that."""
        if (create_only or expected_checksum) and not self.supports_additive():
            self._check_precondition_legacy(path, create_only, expected_checksum)
        request = hsm_pb2.WriteSecretRequest(
            path=path,
            secret_data=hsm_pb2.SecretData(data=_wire_data(data)),
            create_only=create_only,
            expected_checksum=expected_checksum or "",
        )
        if metadata is not None:
            request.metadata.CopyFrom(convert.metadata_to_proto(metadata))
        response = self._invoke(self._stub.WriteSecret, request)
        if not response.checksum:  # a Go agent says nothing: assume it wrote what we sent
            return WriteResult(model.checksum(data), True)
        return WriteResult(response.checksum, response.changed)

    def _check_precondition_legacy(self, path: str, create_only: bool, expected: str | None) -> None:
        try:
            current: str | None = self.checksum(path)
        except NotFound:
            current = None
        if create_only and current is not None:
            raise AlreadyExists(f"secret {path!r} already exists", path=path)
        if expected and current != expected:
            raise Conflict(f"secret {path!r} changed (its checksum is not the expected one)", path=path)

    def delete(self, path: str, key: str | None = None) -> None:
        self._invoke(self._stub.DeleteSecret, hsm_pb2.DeleteSecretRequest(path=path, key=key or ""))

    def list(self, prefix: str = "") -> list[str]:
        response = self._invoke(self._stub.ListSecrets, hsm_pb2.ListSecretsRequest(prefix=prefix))
        return sorted(response.paths)

    def checksum(self, path: str) -> str:
        return str(self._invoke(self._stub.GetChecksum, hsm_pb2.GetChecksumRequest(path=path)).checksum)

    def checksums(self, paths: Sequence[str] | None = None, prefix: str = "") -> dict[str, str]:
        """Checksums of ``paths`` (missing ones absent), or of every secret under ``prefix``."""
        request = hsm_pb2.GetChecksumsRequest(paths=list(paths or ()), prefix=prefix)
        response = self._additive_call(self._stub.GetChecksums, request, timeout=self.timeout * 3)
        if response is not None:
            return {r.path: r.checksum for r in response.results if not r.HasField("error")}
        out: dict[str, str] = {}
        for path in paths if paths else self.list(prefix):
            try:
                out[path] = self.checksum(path)
            except NotFound:
                continue
        return out

    def metadata(self, path: str) -> SecretMetadata:
        response = self._invoke(self._stub.ReadMetadata, hsm_pb2.ReadMetadataRequest(path=path))
        return convert.metadata_from_proto(response.metadata)

    # --- token ---------------------------------------------------------------------------------

    def info(self) -> TokenInfo:
        response = self._additive_call(self._stub.GetTokenInfo, hsm_pb2.GetTokenInfoRequest())
        if response is None:
            hsm = self._invoke(self._stub.GetInfo, hsm_pb2.GetInfoRequest()).hsm_info
            return TokenInfo(hsm.label, hsm.manufacturer, hsm.model, hsm.serial_number, hsm.firmware_version)
        hsm = response.hsm_info
        return TokenInfo(
            label=hsm.label,
            manufacturer=hsm.manufacturer,
            model=hsm.model,
            serial=hsm.serial_number,
            firmware=hsm.firmware_version,
            free_memory=None if response.free_memory < 0 else response.free_memory,
            total_memory=None if response.total_memory < 0 else response.total_memory,
            pin=PinStatus(
                count_low=response.pin.count_low,
                final_try=response.pin.final_try,
                locked=response.pin.locked,
                to_be_changed=response.pin.to_be_changed,
            ),
            profile=response.profile or "generic",
            slot=None if response.slot < 0 else response.slot,
        )

    def secret_count(self) -> int:
        """How many secrets the token holds (GetTokenInfo; a list on a Go agent)."""
        response = self._additive_call(self._stub.GetTokenInfo, hsm_pb2.GetTokenInfoRequest())
        return len(self.list()) if response is None else int(response.secret_count)

    def health(self) -> tuple[str, str]:
        """(status, message): status is "healthy" or "unhealthy" (the Go agent's words)."""
        response = self._invoke(self._stub.Health, hsm_pb2.HealthRequest())
        return response.status, response.message

    def is_connected(self) -> bool:
        return bool(self._invoke(self._stub.IsConnected, hsm_pb2.IsConnectedRequest()).connected)

    def change_pin(self, old_pin: str, new_pin: str) -> None:
        self._invoke(self._stub.ChangePIN, hsm_pb2.ChangePINRequest(old_pin=old_pin, new_pin=new_pin))

    def watch_changes(self, prefix: str = "", since: int = 0) -> ChangeStream:
        """Subscribe to changes under ``prefix``. The first event is a HEARTBEAT carrying the epoch and
        the current sequence (or RESYNC when ``since`` cannot be replayed)."""
        call = self._stub.WatchChanges(hsm_pb2.WatchChangesRequest(prefix=prefix, since=since))
        return ChangeStream(call, self.address)


def _wire_data(data: Mapping[str, bytes]) -> dict[str, bytes]:
    """Values must be bytes (the agent validates everything else, once, in the token layer)."""
    out: dict[str, bytes] = {}
    for key, value in data.items():
        if not isinstance(value, bytes | bytearray | memoryview):
            raise InvalidArgument(f"value of key {key!r} must be bytes, not {type(value).__name__}")
        out[str(key)] = bytes(value)
    return out


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as handle:
        return handle.read()


def _channel_credentials(tls: ClientTLS) -> Any:
    try:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(tls.ca_file),
            private_key=_read(tls.key_file),
            certificate_chain=_read(tls.cert_file),
        )
    except OSError as exc:
        raise InvalidArgument(f"cannot read TLS material {exc.filename}: {exc.strerror}") from None
