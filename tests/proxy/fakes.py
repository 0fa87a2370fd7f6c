"""In-test fakes for the HTTP-layer unit tests ONLY (validation, error mapping, OpenAPI shape,
audit format). Everything that claims to test the system uses real agents and the sandbox's
TokenReview (test_e2e.py, test_fanout_agents.py)."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hsmd.errors import AlreadyExists, Conflict, HsmdError, NotFound, PermissionDenied, Unauthenticated, Unavailable
from hsmd.model import Secret, SecretMetadata, TokenInfo, checksum, path_matches_prefix
from hsmd.proxy.auth import Identity


@dataclass(frozen=True)
class FakeWriteResult:
    checksum: str
    changed: bool


class FakeAgent:
    """The AgentClient interface over a dict."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.store: dict[str, tuple[dict[str, bytes], SecretMetadata]] = {}
        self.down = False
        self.writes = 0
        self.pin = "old-pin-1234"  # never a substring of a request id or a number by chance
        self._lock = threading.Lock()

    def _up(self) -> None:
        if self.down:
            raise Unavailable(f"agent {self.address} unreachable")

    def read(self, path: str) -> Secret:
        self._up()
        with self._lock:
            if path not in self.store:
                raise NotFound(f"secret {path!r} not found", path=path)
            data, meta = self.store[path]
            return Secret(path, dict(data), meta, checksum(data))

    def read_many(self, paths: Sequence[str]) -> dict[str, Secret | HsmdError]:
        self._up()
        out: dict[str, Secret | HsmdError] = {}
        for p in paths:
            try:
                out[p] = self.read(p)
            except NotFound as exc:
                out[p] = exc
        return out

    def write(self, path: str, data: Mapping[str, bytes], metadata: SecretMetadata | None = None, *,
              create_only: bool = False, expected_checksum: str | None = None) -> FakeWriteResult:
        self._up()
        with self._lock:
            current = self.store.get(path)
            if create_only and current is not None:
                raise AlreadyExists(f"secret {path!r} already exists", path=path)
            if expected_checksum is not None and (current is None or checksum(current[0]) != expected_checksum):
                raise Conflict(f"secret {path!r} changed", path=path)
            changed = current is None or current[0] != dict(data)
            self.store[path] = (dict(data), metadata or SecretMetadata())
            self.writes += 1
            return FakeWriteResult(checksum(data), changed)

    def delete(self, path: str, key: str | None = None) -> None:
        self._up()
        with self._lock:
            if path not in self.store:
                raise NotFound(f"secret {path!r} not found", path=path)
            if key is None:
                del self.store[path]
                return
            data = self.store[path][0]
            if key not in data:
                raise NotFound(f"key {key!r} not found", path=path)
            del data[key]
            if not data:
                del self.store[path]

    def list(self, prefix: str = "") -> list[str]:
        self._up()
        return sorted(p for p in self.store if path_matches_prefix(p, prefix))

    def checksum(self, path: str) -> str:
        return self.read(path).checksum

    def checksums(self, paths: Sequence[str] | None = None, prefix: str = "") -> dict[str, str]:
        self._up()
        return {p: checksum(d) for p, (d, _) in self.store.items() if (paths is None or p in paths)}

    def info(self) -> TokenInfo:
        self._up()
        return TokenInfo("fake", "hsmd tests", "dict", self.address, "1.0", free_memory=1000, total_memory=2000)

    def health(self) -> tuple[str, str]:
        self._up()
        return "healthy", ""

    def change_pin(self, old_pin: str, new_pin: str) -> None:
        self._up()
        if old_pin != self.pin:
            raise PermissionDenied("the token refused the PIN")
        self.pin = new_pin

    def close(self) -> None:
        pass


class TableAuthenticator:
    """token -> identity; stands in for TokenReview in HTTP-layer unit tests."""

    def __init__(self, table: dict[str, Identity]) -> None:
        self.table = table

    def authenticate(self, token: str) -> Identity:
        if token not in self.table:
            raise Unauthenticated("token rejected: unknown token")
        return self.table[token]
