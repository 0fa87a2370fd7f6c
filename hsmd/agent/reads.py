"""The agent's read cache in front of its device worker.

An agent is the one writer of its token (hsmd.agent.locks), so it knows of every change made through
it: ``changing(path)`` wraps each write and delete in ``ReadCache.changing`` (the path is dropped
before the call goes to the device and again after it finished; hsmd.readcache explains why both),
and ``changed(path)`` invalidates it once more in the call's result hook, before the change log
announces it, so a WatchChanges subscriber that reads on the announcement sees the new value.
What it cannot know of is a change made behind its back (pkcs11-tool on the same token, a token
swapped while the worker was down): entries expire ``ttl`` seconds after their read started, and the
whole cache is dropped whenever the worker changes state or a device call reports the token
unavailable. Only whole secrets that were read successfully are kept; absence and errors never are.

ReadSecret, ReadSecrets, ReadMetadata and GetChecksum are answered from it; ListSecrets and
GetChecksums (the operator's drift check) always ask the device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from hsmd.agent.device import DeviceWorker
from hsmd.agent.framing import MetadataTuple, SecretTuple, unpack_secret
from hsmd.errors import HsmdError
from hsmd.readcache import ReadCache

# (path, True, packed secret) or (path, False, (code, message)): the worker's read_many answer
ReadResult = tuple[str, bool, Any]


def secret_size(packed: SecretTuple) -> int:
    """Bytes an entry holds, roughly (for the cache's byte bound)."""
    return unpack_secret(packed).approx_size()


class CachedReads:
    def __init__(self, device: DeviceWorker, cache: ReadCache[SecretTuple]) -> None:
        self.device = device
        self.cache = cache

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return self.device.call(method, *args)
        except HsmdError as err:
            if err.temporary:  # the token went away or the worker restarts: trust nothing we hold
                self.cache.clear()
            raise

    def read(self, path: str) -> SecretTuple:
        hit = self.cache.get(path)
        if hit is not None:
            return hit
        ticket = self.cache.ticket()
        packed: SecretTuple = self._call("read_secret", path)
        self.cache.put(path, packed, ticket)
        return packed

    def read_many(self, paths: Sequence[str]) -> list[ReadResult]:
        """Answers in the order of ``paths``; only the misses go to the device, in one call."""
        hits: dict[str, SecretTuple] = {}
        for path in paths:
            hit = self.cache.get(path)
            if hit is not None:
                hits[path] = hit
        misses = [p for p in dict.fromkeys(paths) if p not in hits]
        fetched: dict[str, ReadResult] = {}
        if misses:
            ticket = self.cache.ticket()
            for result in self._call("read_many", misses):
                fetched[result[0]] = result
                if result[1]:
                    self.cache.put(result[0], result[2], ticket)
        return [(p, True, hits[p]) if p in hits else fetched[p] for p in paths]

    def metadata(self, path: str) -> MetadataTuple:
        hit = self.cache.get(path)
        if hit is not None:
            return hit[2]
        meta: MetadataTuple = self._call("metadata", path)
        return meta

    def checksum(self, path: str) -> str:
        hit = self.cache.get(path)
        if hit is not None:
            return hit[3]
        checksum: str = self._call("checksum", path)
        return checksum

    @contextlib.contextmanager
    def changing(self, path: str) -> Iterator[None]:
        """Around a write or delete of ``path``."""
        with self.cache.changing(path):
            try:
                yield
            except HsmdError as err:
                if err.temporary:  # the token went away: trust nothing we hold
                    self.cache.clear()
                raise

    def changed(self, path: str) -> None:
        """From a write's or delete's result hook, before the change is announced (WatchChanges):
        a subscriber that reads on the announcement must not get the value the change replaced."""
        self.cache.invalidate(path)

    def clear(self) -> None:
        self.cache.clear()
