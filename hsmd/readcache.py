"""A short-lived read cache that never hands back a value older than the last change it was told of.

Used where one process answers many reads of the same secrets: the agent (in front of its device
worker, invalidated by its own writes and deletes) and the broker (in front of its agents,
invalidated by its own writes and by every agent's change stream). It is pure bookkeeping: no I/O,
no clock but ``time.monotonic``.

The rule that makes it safe under concurrency is the *ticket*. A reader takes a ticket before it
asks the backend, and offers the answer with that ticket; the answer is refused when the path was
invalidated (or the whole cache cleared) after the ticket was taken. So a read that raced a write
(the read saw the old value, the write finished first) cannot put the old value back::

    hit = cache.get(path)
    if hit is None:
        ticket = cache.ticket()
        hit = backend.read(path)
        cache.put(path, hit, ticket)

Writers wrap each change in ``changing(path)``, which invalidates the path before the change is
sent *and* after it finished (whatever the outcome), and call ``clear()`` when anything may have
changed behind their back (the backend restarted, a change stream was interrupted). Entries also
expire ``ttl`` seconds after their read *started*, which bounds how long a change made behind the
cache's back (another writer on the token) can stay unseen. Size is bounded by entry count and by
bytes (least recently used entries go first).

Negative answers (not found, errors) are never cached.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from hsmd.errors import InvalidArgument

V = TypeVar("V")

DEFAULT_TTL = 1.0
DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
# Invalidations remembered per path for open tickets; past this many the cache forgets them all at
# once and refuses every ticket taken before (a conservative miss, never a stale fill).
_REMEMBERED_INVALIDATIONS = 4096
MIB = 1024 * 1024


@dataclass(frozen=True)
class ReadCacheSettings:
    """``--read-cache-ttl``, ``--read-cache-entries``, ``--read-cache-mib`` (the agent's and the
    broker's, per agent); a ttl, entry or byte bound of 0 turns the cache off."""

    ttl: float = DEFAULT_TTL
    max_entries: int = DEFAULT_MAX_ENTRIES
    max_bytes: int = DEFAULT_MAX_BYTES

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.max_entries > 0 and self.max_bytes > 0

    def new_cache(self, size_of: Callable[[V], int]) -> ReadCache[V]:
        return ReadCache(self.ttl, max_entries=self.max_entries, max_bytes=self.max_bytes, size_of=size_of)


def add_flags(parser: argparse.ArgumentParser, ttl_help: str, scope: str = "",
              entries_aliases: tuple[str, ...] = ()) -> None:
    """The three read-cache flags, with the same names and defaults wherever a cache is kept;
    ``scope`` says what one cache covers (" per agent" in the broker)."""
    parser.add_argument("--read-cache-ttl", type=float, default=DEFAULT_TTL, metavar="SECONDS",
                        help=f"{ttl_help} (default {DEFAULT_TTL:g}; 0: off)")
    parser.add_argument("--read-cache-entries", *entries_aliases, dest="read_cache_entries", type=int,
                        default=DEFAULT_MAX_ENTRIES, metavar="N",
                        help=f"secrets the read cache holds{scope} at most (default {DEFAULT_MAX_ENTRIES})")
    parser.add_argument("--read-cache-mib", type=int, default=DEFAULT_MAX_BYTES // MIB, metavar="MIB",
                        help=f"memory the read cache holds{scope} at most (default {DEFAULT_MAX_BYTES // MIB} MiB)")


def settings_from_args(args: argparse.Namespace) -> ReadCacheSettings:
    """The flags of ``add_flags``, checked: each 0 (off) or a positive (finite) number."""
    checks = (("--read-cache-ttl", args.read_cache_ttl, "seconds"),
              ("--read-cache-entries", args.read_cache_entries, "secrets"),
              ("--read-cache-mib", args.read_cache_mib, "MiB"))
    for flag, value, unit in checks:
        if not (math.isfinite(value) and value >= 0):
            raise InvalidArgument(f"{flag} must be 0 (off) or a positive number of {unit}, got {value:g} "
                                  "(it must not be negative)")
    return ReadCacheSettings(args.read_cache_ttl, args.read_cache_entries, args.read_cache_mib * MIB)


@dataclass(frozen=True)
class Ticket:
    serial: int
    started: float


@dataclass(frozen=True)
class CacheStats:
    entries: int
    bytes: int
    hits: int
    misses: int
    fills: int
    refused: int
    evictions: int
    invalidations: int
    clears: int

    def to_json(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.__dict__.items()}


class ReadCache(Generic[V]):
    """Path -> value, with tickets (see the module docstring). ``ttl <= 0`` disables it: ``get``
    always misses and ``put`` stores nothing, so callers need no second code path."""

    def __init__(
        self,
        ttl: float = DEFAULT_TTL,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        size_of: Callable[[V], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl < 0 or max_entries < 0 or max_bytes < 0:
            raise ValueError("read cache ttl, max_entries and max_bytes must not be negative")
        self.ttl = float(ttl)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._size_of = size_of or (lambda _v: 0)
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, int, V]] = OrderedDict()  # path -> (expires, size, value)
        self._bytes = 0
        self._serial = 0  # bumped by every invalidation and clear
        self._floor = 0  # tickets below this are refused (a clear, or forgotten invalidations)
        self._invalidated: dict[str, int] = {}  # path -> serial of its last invalidation
        self._hits = self._misses = self._fills = self._refused = 0
        self._evictions = self._invalidations = self._clears = 0

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.max_entries > 0 and self.max_bytes > 0

    def get(self, path: str) -> V | None:
        if not self.enabled:
            return None
        now = self._clock()
        with self._lock:
            entry = self._entries.get(path)
            if entry is None:
                self._misses += 1
                return None
            expires, size, value = entry
            if expires <= now:
                del self._entries[path]
                self._bytes -= size
                self._misses += 1
                return None
            self._entries.move_to_end(path)
            self._hits += 1
            return value

    def ticket(self) -> Ticket:
        with self._lock:
            return Ticket(self._serial, self._clock())

    def put(self, path: str, value: V, ticket: Ticket) -> bool:
        """Store ``value`` read under ``ticket``; False when refused (stale ticket, too big, expired)."""
        if not self.enabled:
            return False
        size = self._size_of(value)
        expires = ticket.started + self.ttl
        with self._lock:
            if ticket.serial < self._floor or self._invalidated.get(path, -1) > ticket.serial:
                self._refused += 1
                return False
            if size > self.max_bytes or expires <= self._clock():
                self._refused += 1
                return False
            old = self._entries.pop(path, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[path] = (expires, size, value)
            self._bytes += size
            self._fills += 1
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, (_, evicted, _) = self._entries.popitem(last=False)
                self._bytes -= evicted
                self._evictions += 1
            return True

    def invalidate(self, path: str) -> None:
        """Forget ``path`` and refuse fills of it by reads that started before now."""
        with self._lock:
            self._serial += 1
            self._invalidations += 1
            old = self._entries.pop(path, None)
            if old is not None:
                self._bytes -= old[1]
            self._invalidated[path] = self._serial
            if len(self._invalidated) > _REMEMBERED_INVALIDATIONS:
                self._invalidated.clear()
                self._floor = self._serial

    @contextlib.contextmanager
    def changing(self, path: str) -> Iterator[None]:
        """Around a change of ``path`` sent to the backend: invalidated before it goes out and again
        when it finished, whatever the outcome."""
        self.invalidate(path)
        try:
            yield
        finally:
            self.invalidate(path)

    def clear(self) -> None:
        """Forget everything and refuse fills by reads that started before now."""
        with self._lock:
            self._serial += 1
            self._floor = self._serial
            self._clears += 1
            self._entries.clear()
            self._invalidated.clear()
            self._bytes = 0

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                entries=len(self._entries), bytes=self._bytes, hits=self._hits, misses=self._misses,
                fills=self._fills, refused=self._refused, evictions=self._evictions,
                invalidations=self._invalidations, clears=self._clears,
            )
