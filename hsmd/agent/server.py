"""The hsm.v1.HSMAgent servicer and the gRPC server around it.

The servicer is an adapter: it turns messages into calls on the device worker (which runs
hsmd.pkcs11.token.Token in its own process) and results back into messages; errors are translated
once, by hsmd.agent.errors. Writes and deletes that changed the token are recorded in the
ChangeLog, in device order, for WatchChanges.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped]
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hsmd import model
from hsmd.agent import convert, framing
from hsmd.agent.changes import DELETED, HEARTBEAT, RESYNC, WRITTEN, ChangeLog, ChangeRecord
from hsmd.agent.device import DeviceWorker
from hsmd.agent.errors import abort
from hsmd.agent.reads import CachedReads, secret_size
from hsmd.errors import FailedPrecondition, HsmdError, Internal, InvalidArgument, NotFound, ResourceExhausted
from hsmd.model import TokenInfo
from hsmd.proto.hsm.v1 import hsm_pb2, hsm_pb2_grpc
from hsmd.readcache import ReadCacheSettings

log = logging.getLogger("hsmd.agent.server")

SERVICE_NAME = "hsm.v1.HSMAgent"
MAX_BATCH = 1000

_KIND = {
    WRITTEN: hsm_pb2.ChangeEvent.WRITTEN,
    DELETED: hsm_pb2.ChangeEvent.DELETED,
    RESYNC: hsm_pb2.ChangeEvent.RESYNC,
    HEARTBEAT: hsm_pb2.ChangeEvent.HEARTBEAT,
}

F = TypeVar("F", bound=Callable[..., Any])


def _rpc(fn: F) -> F:
    """Translate hsmd errors (and surprises) into gRPC statuses, once for every RPC."""

    @functools.wraps(fn)
    def wrapper(self: AgentServicer, request: Any, context: Any) -> Any:
        try:
            return fn(self, request, context)
        except HsmdError as err:
            abort(context, err)
        except Exception:
            log.exception("unexpected error in an RPC", extra={"rpc": fn.__name__})
            abort(context, Internal(f"internal error in {fn.__name__} (see the agent log)"))

    return wrapper  # type: ignore[return-value]


@dataclass
class AgentOptions:
    profile: str = "generic"
    probe_timeout: float = 5.0
    heartbeat_interval: float = 15.0
    max_watchers: int = 32
    # device calls queued or running before further ones are refused with Busy (UNAVAILABLE): a
    # flood of slow calls must not take every server thread from Health and IsConnected
    max_queued: int = 48
    spare_threads: int = 16
    # hsmd.agent.reads: whole secrets read recently, dropped on every change made through this
    # agent; ttl bounds how long a change made behind its back stays unseen (0 turns it off)
    read_cache: ReadCacheSettings = field(default_factory=ReadCacheSettings)


class AgentServicer(hsm_pb2_grpc.HSMAgentServicer):  # type: ignore[misc]
    def __init__(self, device: DeviceWorker, changes: ChangeLog, options: AgentOptions) -> None:
        self.device = device
        self.changes = changes
        self.options = options
        self.reads = CachedReads(device, options.read_cache.new_cache(secret_size))
        self._watchers = 0
        self._watchers_lock = threading.Lock()

    # --- the ten RPCs of the Go agent ----------------------------------------------------------

    @_rpc
    def GetInfo(self, request: Any, context: Any) -> hsm_pb2.GetInfoResponse:
        info: TokenInfo = self.device.call("info")
        return hsm_pb2.GetInfoResponse(hsm_info=convert.hsm_info_to_proto(info))

    @_rpc
    def ReadSecret(self, request: Any, context: Any) -> hsm_pb2.ReadSecretResponse:
        _, data, meta, checksum = self.reads.read(request.path)
        return hsm_pb2.ReadSecretResponse(
            secret_data=hsm_pb2.SecretData(data=data),
            checksum=checksum,
            metadata=convert.metadata_to_proto(framing.unpack_metadata(meta)),
        )

    @_rpc
    def WriteSecret(self, request: Any, context: Any) -> hsm_pb2.WriteSecretResponse:
        path = request.path
        data = convert.data_from_proto(request.secret_data)
        metadata = convert.metadata_from_proto(request.metadata) if request.HasField("metadata") else None

        def record(result: tuple[str, bool]) -> None:
            if result[1]:
                self.reads.changed(path)
                self.changes.record(WRITTEN, path, result[0])

        with self.reads.changing(path):
            checksum, changed = self.device.call(
                "write", path, data, metadata, request.create_only, request.expected_checksum or None,
                on_result=record,
            )
        log.debug("secret written", extra={"path": path, "changed": changed, "keys": len(data)})
        return hsm_pb2.WriteSecretResponse(checksum=checksum, changed=changed)

    @_rpc
    def ReadMetadata(self, request: Any, context: Any) -> hsm_pb2.ReadMetadataResponse:
        meta = framing.unpack_metadata(self.reads.metadata(request.path))
        return hsm_pb2.ReadMetadataResponse(metadata=convert.metadata_to_proto(meta))

    @_rpc
    def DeleteSecret(self, request: Any, context: Any) -> hsm_pb2.DeleteSecretResponse:
        path = request.path
        key = request.key or None

        def record(after: str | None) -> None:
            self.reads.changed(path)
            if after is None:
                self.changes.record(DELETED, path)
            else:
                self.changes.record(WRITTEN, path, after)

        with self.reads.changing(path):
            self.device.call("delete", path, key, on_result=record)
        log.debug("secret deleted", extra={"path": path, "key": key})
        return hsm_pb2.DeleteSecretResponse()

    @_rpc
    def ListSecrets(self, request: Any, context: Any) -> hsm_pb2.ListSecretsResponse:
        paths: list[str] = self.device.call("list", request.prefix)
        return hsm_pb2.ListSecretsResponse(paths=paths)

    @_rpc
    def GetChecksum(self, request: Any, context: Any) -> hsm_pb2.GetChecksumResponse:
        return hsm_pb2.GetChecksumResponse(checksum=self.reads.checksum(request.path))

    @_rpc
    def IsConnected(self, request: Any, context: Any) -> hsm_pb2.IsConnectedResponse:
        ok, _ = self.device.probe(self.options.probe_timeout)
        return hsm_pb2.IsConnectedResponse(connected=ok)

    @_rpc
    def Health(self, request: Any, context: Any) -> hsm_pb2.HealthResponse:
        ok, message = self.device.probe(self.options.probe_timeout)
        return hsm_pb2.HealthResponse(status="healthy" if ok else "unhealthy", message=message)

    @_rpc
    def ChangePIN(self, request: Any, context: Any) -> hsm_pb2.ChangePINResponse:
        if not request.old_pin or not request.new_pin:
            raise InvalidArgument("both the old and the new PIN are required")
        self.device.call("change_pin", request.old_pin, request.new_pin)
        log.warning("user PIN changed; update the agent's PIN file or variable before its next restart")
        return hsm_pb2.ChangePINResponse()

    # --- additive ------------------------------------------------------------------------------

    @_rpc
    def ReadSecrets(self, request: Any, context: Any) -> hsm_pb2.ReadSecretsResponse:
        paths = _batch(request.paths)
        results = []
        for path, ok, outcome in self.reads.read_many(paths):
            if ok:
                _, data, meta, checksum = outcome
                results.append(
                    hsm_pb2.SecretResult(
                        path=path,
                        secret_data=hsm_pb2.SecretData(data=data),
                        metadata=convert.metadata_to_proto(framing.unpack_metadata(meta)),
                        checksum=checksum,
                    )
                )
            else:
                code, message = outcome
                results.append(hsm_pb2.SecretResult(path=path, error=hsm_pb2.ItemError(code=code, message=message)))
        return hsm_pb2.ReadSecretsResponse(results=results)

    @_rpc
    def GetChecksums(self, request: Any, context: Any) -> hsm_pb2.GetChecksumsResponse:
        if request.paths:
            paths = _batch(request.paths)
            found: dict[str, str] = self.device.call("checksums", paths, "")
            results = [
                hsm_pb2.ChecksumResult(path=p, checksum=found[p])
                if p in found
                else hsm_pb2.ChecksumResult(
                    path=p, error=hsm_pb2.ItemError(code=NotFound.code, message=f"secret {p!r} not found")
                )
                for p in paths
            ]
        else:
            found = self.device.call("checksums", None, request.prefix)
            results = [hsm_pb2.ChecksumResult(path=p, checksum=c) for p, c in sorted(found.items())]
        return hsm_pb2.GetChecksumsResponse(results=results)

    @_rpc
    def GetTokenInfo(self, request: Any, context: Any) -> hsm_pb2.GetTokenInfoResponse:
        info, count = self.device.call("summary")
        prof = model.profile(self.options.profile)
        return hsm_pb2.GetTokenInfoResponse(
            hsm_info=convert.hsm_info_to_proto(info),
            free_memory=-1 if info.free_memory is None else info.free_memory,
            total_memory=-1 if info.total_memory is None else info.total_memory,
            pin=hsm_pb2.PinFlags(
                count_low=info.pin.count_low,
                final_try=info.pin.final_try,
                locked=info.pin.locked,
                to_be_changed=info.pin.to_be_changed,
            ),
            profile=prof.name,
            max_object_bytes=prof.max_object_bytes,
            slot=-1 if info.slot is None else info.slot,
            secret_count=count,
        )

    def WatchChanges(self, request: Any, context: Any) -> Iterator[hsm_pb2.ChangeEvent]:
        try:
            prefix = model.validate_prefix(request.prefix)
            with self._watchers_lock:
                if self._watchers >= self.options.max_watchers:
                    raise ResourceExhausted(
                        f"this agent already serves {self._watchers} change streams (the limit)"
                    )
                self._watchers += 1
        except HsmdError as err:
            abort(context, err)
        try:
            yield from self._watch(prefix, int(request.since), context)
        finally:
            with self._watchers_lock:
                self._watchers -= 1

    def _watch(self, prefix: str, since: int, context: Any) -> Iterator[hsm_pb2.ChangeEvent]:
        changes = self.changes
        context.add_callback(changes.wake)
        epoch = changes.epoch

        def event(kind: str, sequence: int, path: str = "", checksum: str = "") -> hsm_pb2.ChangeEvent:
            return hsm_pb2.ChangeEvent(kind=_KIND[kind], path=path, checksum=checksum, sequence=sequence, epoch=epoch)

        replay, cursor = changes.replay(since)
        if replay is None:
            yield event(RESYNC, cursor)
        else:
            # First message tells the subscriber the epoch and where it stands, even if nothing changed.
            yield event(HEARTBEAT, cursor)
            for rec in replay:
                cursor = rec.sequence
                if model.path_matches_prefix(rec.path, prefix):
                    yield _event_of(rec, epoch)
        while context.is_active() and not changes.closed:
            records = changes.wait_after(cursor, self.options.heartbeat_interval)
            if not context.is_active() or changes.closed:
                return
            if records is None:  # this subscriber fell behind the retained history
                cursor = changes.sequence
                yield event(RESYNC, cursor)
            elif not records:
                yield event(HEARTBEAT, cursor)
            else:
                for rec in records:
                    cursor = rec.sequence
                    if model.path_matches_prefix(rec.path, prefix):
                        yield _event_of(rec, epoch)


def _event_of(rec: ChangeRecord, epoch: str) -> hsm_pb2.ChangeEvent:
    return hsm_pb2.ChangeEvent(
        kind=_KIND[rec.kind], path=rec.path, checksum=rec.checksum, sequence=rec.sequence, epoch=epoch
    )


def _batch(paths: Sequence[str]) -> list[str]:
    if len(paths) > MAX_BATCH:
        raise InvalidArgument(f"a batch holds at most {MAX_BATCH} paths, got {len(paths)}")
    return list(paths)


@dataclass(frozen=True)
class ServerTLS:
    cert_file: str
    key_file: str
    client_ca_file: str


def server_credentials(tls: ServerTLS) -> Any:
    """mTLS: the client must present a certificate issued by ``client_ca_file``."""
    with open(tls.key_file, "rb") as k, open(tls.cert_file, "rb") as c, open(tls.client_ca_file, "rb") as ca:
        key, cert, roots = k.read(), c.read(), ca.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=roots, require_client_auth=True)


class AgentServer:
    """The gRPC server: HSMAgent + grpc.health.v1, bound to one address."""

    def __init__(
        self,
        device: DeviceWorker,
        changes: ChangeLog,
        options: AgentOptions,
        *,
        address: str,
        tls: ServerTLS | None = None,
    ) -> None:
        # Threads for every allowed change stream and queued device call, plus spares that keep
        # Health / IsConnected / grpc.health answering whatever the device does.
        max_workers = options.max_watchers + options.max_queued + options.spare_threads
        self.servicer = AgentServicer(device, changes, options)
        self.health = health.HealthServicer()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
            # no SO_REUSEPORT: a second agent on the same port must fail, not share it silently
            options=[*convert.GRPC_OPTIONS, ("grpc.so_reuseport", 0)],
        )
        hsm_pb2_grpc.add_HSMAgentServicer_to_server(self.servicer, self.server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        try:
            if tls is None:
                port = self.server.add_insecure_port(address)
            else:
                port = self.server.add_secure_port(address, server_credentials(tls))
        except RuntimeError:
            port = 0
        if port == 0:
            raise FailedPrecondition(f"cannot listen on {address} for gRPC (address in use or not local)")
        host = address.rsplit(":", 1)[0]
        self.address = f"{host}:{port}"
        self.set_serving(False)

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            self.health.set(service, status)

    def start(self) -> None:
        self.server.start()

    def stop(self, grace: float) -> None:
        """Refuse new RPCs now; let in-flight ones finish for up to ``grace`` seconds."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
