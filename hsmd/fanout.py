"""Fan-out over the agents of a pool: quorum writes, resolved reads, disagreement, repair.

An HSMPool mirrors every secret on each of its devices; each device has its own agent. The
broker (hsmd.proxy) and the operator talk to a pool through one ``AgentSet``:

* writes go to every agent in parallel; the write succeeds when ``quorum`` agents acknowledge it
  (``majority`` by default, ``all`` or ``one``). Agents that failed while the quorum succeeded are
  queued for repair: a background pass copies the acknowledged version onto them, guarded by a
  compare-and-swap so a repair never overwrites a newer write.
* reads ask every agent and resolve the answers (``resolve_versions``): a strict majority wins when
  three or more agents answer, otherwise the newest version (metadata ``createdAt``, which the
  writers here stamp on every write) wins; any difference is reported as a disagreement.
  ``read_many`` and ``checksums`` answer like an ``AgentClient`` (``Secret | HsmdError`` per path;
  checksums with absent paths left out), so callers that read many secrets (``hsmd.sync``, the
  operator) take an AgentSet or a single client alike; ``read`` and ``read_many_outcomes`` keep
  the per-agent detail the broker reports. A path that the answering agents lack while another
  agent did not answer is ``Unavailable`` there, never NotFound or absent (``settle_read``): the
  silent agent may hold it, and a caller that took absence for a fact might delete a Secret.
* a write that does not reach its quorum is never reported as a success: ``WriteOutcome.ok`` is
  False and ``error`` is the domain error to raise (``Unavailable`` when agents were unreachable).
* optionally (the broker turns it on; off by default, so the operator's AgentGroup never caches)
  each agent's Secret answers are kept in a short-lived ``hsmd.readcache.ReadCache`` per agent
  (``AgentReadCache``): reads ask an agent only for what its cache lacks, and resolution across the
  mirrors still runs on every read. An agent's cache is used only while its change stream
  (``hsmd.changestream.ChangeSubscriber``) is connected: every WRITTEN/DELETED change invalidates
  the path, a RESYNC, new epoch, break or reconnect clears it. Writes, deletes and repairs of this
  process invalidate the path on every agent before they send and again when they finished.

The decisions (``required_acks``, ``resolve_versions``, ``decide_write``) are pure functions; the
``AgentSet`` is the I/O around them. ``agents_from_pool`` finds the agent addresses of an HSMPool.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import logging
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from hsmd.errors import (
    AlreadyExists,
    Conflict,
    HsmdError,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
    error_from_code,
)
from hsmd.model import Secret, SecretMetadata, TokenInfo, path_matches_prefix
from hsmd.readcache import ReadCache, ReadCacheSettings, Ticket
from hsmd.service import backoff_delay

if TYPE_CHECKING:
    from hsmd.agent.client import Change, ClientTLS
    from hsmd.changestream import ChangeSubscriber

log = logging.getLogger("hsmd.fanout")

QUORUMS = ("majority", "all", "one")
T = TypeVar("T")


class AgentLike(Protocol):
    """The part of ``hsmd.agent.client.AgentClient`` the fan-out uses."""

    address: str

    def read(self, path: str) -> Secret: ...
    def read_many(self, paths: Sequence[str]) -> Mapping[str, Secret | HsmdError]: ...
    def write(
        self,
        path: str,
        data: Mapping[str, bytes],
        metadata: SecretMetadata | None = None,
        *,
        create_only: bool = False,
        expected_checksum: str | None = None,
    ) -> Any: ...
    def delete(self, path: str, key: str | None = None) -> None: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def checksum(self, path: str) -> str: ...
    def checksums(self, paths: Sequence[str] | None = None, prefix: str = "") -> Mapping[str, str]: ...
    def info(self) -> TokenInfo: ...
    def health(self) -> tuple[str, str]: ...
    def change_pin(self, old_pin: str, new_pin: str) -> None: ...
    def close(self) -> None: ...


# --- pure decisions -------------------------------------------------------------------------


def validate_quorum(quorum: str) -> str:
    if quorum not in QUORUMS:
        raise InvalidArgument(f"unknown quorum {quorum!r}; use one of {', '.join(QUORUMS)}")
    return quorum


def required_acks(quorum: str, total: int) -> int:
    """How many agents must acknowledge a write: majority = more than half, all, or one."""
    validate_quorum(quorum)
    if total <= 0:
        return 1
    if quorum == "all":
        return total
    if quorum == "one":
        return 1
    return total // 2 + 1


def now_stamp() -> str:
    """The write time stamped into metadata ``createdAt`` (RFC 3339, UTC, microseconds)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _stamp_key(stamp: str) -> float:
    """Order ``createdAt`` values; unparsable or empty stamps sort oldest."""
    if not stamp:
        return float("-inf")
    text = stamp.strip().replace("Z", "+00:00")
    # Go writes RFC3339Nano (up to 9 fractional digits); Python parses at most 6.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        text = f"{head}.{digits[:6].ljust(6, '0')}{rest}"
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return float("-inf")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


@dataclass(frozen=True)
class Version:
    """What one agent holds for a path: its checksum and write time (``None`` checksum = absent)."""

    checksum: str | None
    written_at: str = ""


@dataclass(frozen=True)
class Resolution:
    winner: Version
    resolved_by: str  # "unanimous" | "majority" | "newest"
    disagreement: bool


def resolve_versions(answers: Sequence[Version]) -> Resolution:
    """Pick the version a read returns from the agents that answered (in agent order).

    Three or more answers: a strict majority wins. Otherwise (or with no majority) the newest
    present version wins (``written_at``; ties go to the version more agents hold, then to the
    first agent). A present version beats absence when no majority decides: a secret that one of
    two agents lacks is more likely not yet repaired than deleted (deletes need a quorum too)."""
    if not answers:
        raise Unavailable("no agent answered")
    if len(answers) == 1:  # one agent (the common single-device pool): nothing to resolve
        return Resolution(answers[0], "unanimous", False)
    groups: dict[str | None, list[Version]] = collections.defaultdict(list)
    for version in answers:
        groups[version.checksum].append(version)
    if len(groups) == 1:
        return Resolution(answers[0], "unanimous", False)
    if len(answers) >= 3:
        for versions in groups.values():
            if len(versions) * 2 > len(answers):
                return Resolution(versions[0], "majority", True)
    present = [(index, v) for index, v in enumerate(answers) if v.checksum is not None]
    _, newest = max(
        present,
        key=lambda item: (_stamp_key(item[1].written_at), len(groups[item[1].checksum]), -item[0]),
    )
    return Resolution(newest, "newest", True)


@dataclass(frozen=True)
class AgentOutcome:
    """One agent's answer to one operation."""

    agent: str
    ok: bool
    checksum: str | None = None
    changed: bool | None = None
    error: HsmdError | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"agent": self.agent, "ok": self.ok}
        if self.checksum is not None:
            out["checksum"] = self.checksum
        if self.changed is not None:
            out["changed"] = self.changed
        if self.error is not None:
            out["error"] = {"code": self.error.code, "message": self.error.message}
        return out

    @property
    def result(self) -> str:
        """A one-word result for audit lines: ``ok`` or the error code."""
        return "ok" if self.ok else (self.error.code if self.error else "error")


def decide_write(outcomes: Sequence[AgentOutcome], required: int, quorum: str) -> HsmdError | None:
    """None when enough agents acknowledged; else the error the whole write reports.

    Any temporary failure (an agent unreachable or busy) makes the write ``Unavailable`` so the
    caller retries; otherwise the most common permanent error (e.g. AlreadyExists, Conflict)."""
    succeeded = sum(1 for o in outcomes if o.ok)
    if succeeded >= required:
        return None
    failures = [o.error for o in outcomes if not o.ok and o.error is not None]
    total = len(outcomes)
    summary = f"{succeeded} of {total} agent(s) acknowledged; quorum {quorum!r} needs {required}"
    if not failures:
        return Unavailable(f"write not acknowledged: {summary}")
    if any(f.temporary for f in failures):
        return Unavailable(
            f"write not acknowledged: {summary}; unreachable agents: "
            + ", ".join(o.agent for o in outcomes if o.error is not None and o.error.temporary)
        )
    codes = collections.Counter(f.code for f in failures)
    code = codes.most_common(1)[0][0]
    first = next(f for f in failures if f.code == code)
    message = first.message if succeeded == 0 else f"{first.message} ({summary})"
    return error_from_code(code, message, path=first.path)


@dataclass(frozen=True)
class WriteOutcome:
    path: str
    ok: bool
    quorum: str
    required: int
    agents: tuple[AgentOutcome, ...]
    checksum: str | None = None  # the acknowledged checksum (None after a delete)
    changed: bool = False
    error: HsmdError | None = None
    repair_queued: tuple[str, ...] = ()

    @property
    def succeeded(self) -> int:
        return sum(1 for o in self.agents if o.ok)

    def raise_for_error(self) -> None:
        if self.error is not None:
            raise self.error

    def quorum_json(self) -> dict[str, object]:
        return {
            "mode": self.quorum,
            "required": self.required,
            "acknowledged": self.succeeded,
            "agents": len(self.agents),
        }


@dataclass(frozen=True)
class ReadOutcome:
    path: str
    secret: Secret | None  # None: resolved as absent
    resolved_by: str
    disagreement: bool
    agents: tuple[AgentOutcome, ...]

    def require(self) -> Secret:
        if self.secret is None:
            raise NotFound(f"secret {self.path!r} not found", path=self.path)
        return self.secret

    def report(self) -> dict[str, object] | None:
        """The disagreement report a response carries (None when the agents agree)."""
        if not self.disagreement:
            return None
        return {"resolvedBy": self.resolved_by, "agents": [o.to_json() for o in self.agents]}


def settle_read(outcome: ReadOutcome) -> Secret | HsmdError:
    """A resolved read as a plain answer (what ``AgentClient.read_many`` gives per path): the
    secret; NotFound when every agent answered and it resolved as absent; Unavailable when it
    resolved as absent but some agent did not answer (that agent may hold it)."""
    if outcome.secret is not None:
        return outcome.secret
    silent = [o for o in outcome.agents if not o.ok]
    if silent:
        return Unavailable(
            f"secret {outcome.path!r} is absent on the agents that answered; "
            f"{len(silent)} of {len(outcome.agents)} agent(s) did not answer",
            path=outcome.path,
        )
    return NotFound(f"secret {outcome.path!r} not found", path=outcome.path)


@dataclass(frozen=True)
class ListOutcome:
    paths: list[str]
    agents: tuple[AgentOutcome, ...]
    disagreeing_paths: list[str] = field(default_factory=list)


@dataclass
class RepairItem:
    """A path to converge on one agent: ``want`` the checksum it must reach (None = deleted)."""

    path: str
    agent: str
    want: str | None
    reason: str
    queued_at: float = field(default_factory=time.time)
    attempts: int = 0
    last_error: str | None = None
    next_attempt: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "agent": self.agent,
            "want": self.want if self.want is not None else "deleted",
            "reason": self.reason,
            "queuedAt": dt.datetime.fromtimestamp(self.queued_at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "attempts": self.attempts,
            "lastError": self.last_error,
        }


# --- read coalescing ----------------------------------------------------------------------------


class _PendingRead:
    __slots__ = ("batch", "done", "error", "path", "secret")

    def __init__(self, path: str) -> None:
        self.path = path
        self.done = threading.Event()
        self.secret: Secret | None = None
        self.error: BaseException | None = None
        self.batch: list[_PendingRead] | None = None  # set on the read that sends its batch


class ReadCoalescer:
    """Single-secret reads of one agent that share RPCs under concurrency (group commit).

    A read with nothing in flight goes out at once (ReadSecret). Reads that arrive while one is in
    flight wait; when it returns, they go out together as one ReadSecrets, sent by the first of
    them: the client pays one RPC and the agent reads them in one pass. Without concurrency nothing
    waits. A batch is sent only after every read in it arrived, so each read still sees every write
    acknowledged before it began; per-path results are what single reads give, and a failure of the
    whole call (agent unreachable) fails each read in it. The price: a read may wait behind one slow
    call to the same agent (at most one call's duration). Agents without ReadSecrets (the Go agent)
    are read one by one."""

    MAX_BATCH = 100

    def __init__(self, agent: AgentLike) -> None:
        self.agent = agent
        self._lock = threading.Lock()
        self._busy = False
        self._queue: list[_PendingRead] = []
        self._batching: bool | None = None  # None: not known yet
        self.batches = 0  # ReadSecrets calls sent for waiting reads (observability and tests)

    def _can_batch(self) -> bool:
        if self._batching is None:
            probe = getattr(self.agent, "supports_additive", None)
            if not callable(probe):
                self._batching = False
            else:
                try:
                    self._batching = bool(probe())
                except HsmdError:
                    return False  # unreachable now: ask again next time
        return self._batching

    def read(self, path: str) -> Secret:
        if not self._can_batch():
            return self.agent.read(path)
        with self._lock:
            mine: _PendingRead | None = None
            if self._busy:
                mine = _PendingRead(path)
                self._queue.append(mine)
            else:
                self._busy = True
        if mine is None:
            try:
                return self.agent.read(path)
            finally:
                self._hand_over()
        mine.done.wait()
        if mine.batch is not None:
            self._send(mine.batch)
        if mine.error is not None:
            raise mine.error
        assert mine.secret is not None
        return mine.secret

    def _hand_over(self) -> None:
        """The call in flight returned: wake the first waiting read to send the waiting batch."""
        with self._lock:
            if not self._queue:
                self._busy = False
                return
            batch, self._queue = self._queue[: self.MAX_BATCH], self._queue[self.MAX_BATCH :]
        batch[0].batch = batch
        batch[0].done.set()

    def _send(self, batch: list[_PendingRead]) -> None:
        try:
            results: Mapping[str, Secret | HsmdError] = {}
            failure: HsmdError | None = None
            try:
                if len(batch) == 1:
                    results = {batch[0].path: self.agent.read(batch[0].path)}
                else:
                    self.batches += 1
                    results = self.agent.read_many([p.path for p in batch])
            except HsmdError as err:
                results, failure = {}, err
            except Exception as exc:
                log.exception("batched read failed unexpectedly", extra={"agent": self.agent.address})
                results, failure = {}, Internal(f"agent {self.agent.address}: unexpected {type(exc).__name__}")
            for pending in batch:
                if pending.path in results:
                    result = results[pending.path]
                elif failure is not None:
                    result = failure
                else:
                    result = Internal(f"agent {self.agent.address} did not answer for {pending.path!r}")
                if isinstance(result, HsmdError):  # each reader raises its own instance
                    pending.error = type(result)(result.message, path=result.path)
                else:
                    pending.secret = result
        finally:
            for pending in batch:
                if pending.secret is None and pending.error is None:
                    pending.error = Internal(f"agent {self.agent.address}: batched read failed")
                pending.done.set()
            self._hand_over()


# --- per-agent read cache ----------------------------------------------------------------------


class AgentReadCache:
    """One agent's Secret answers, trusted only while that agent's change stream is connected.

    While the stream is down (before its first event, after a break) nothing is served from the
    cache and no ticket is handed out, so nothing is filled; connecting and breaking both clear it,
    which also refuses every fill whose ticket was taken before. Entries are shared between readers:
    callers treat the Secrets as read-only."""

    def __init__(self, address: str, settings: ReadCacheSettings) -> None:
        self.address = address
        self.cache: ReadCache[Secret] = settings.new_cache(Secret.approx_size)
        self.live = False
        self.subscriber: ChangeSubscriber | None = None
        self._bypassed = 0  # reads that could not use the cache: the change stream was down
        self._lock = threading.Lock()

    def get(self, path: str) -> Secret | None:
        if not self.live:
            with self._lock:
                self._bypassed += 1
            return None
        return self.cache.get(path)

    def ticket(self) -> Ticket | None:
        """A ticket for a read about to go to the agent; None (do not fill) while the stream is down."""
        return self.cache.ticket() if self.live else None

    def put(self, path: str, secret: Secret, ticket: Ticket | None) -> None:
        if ticket is not None:
            self.cache.put(path, secret, ticket)

    def invalidate(self, path: str) -> None:
        self.cache.invalidate(path)

    # -- the change stream (ChangeSubscriber callbacks) ------------------------------------------

    def on_change(self, _address: str, change: Change) -> None:
        self.cache.invalidate(change.path)

    def on_resync(self, _address: str, _why: str) -> None:
        self.cache.clear()

    def on_connection(self, _address: str, up: bool) -> None:
        # Up: events may have been missed while down, and a fill whose ticket predates this moment
        # must be refused: clear first, then trust. Down: stop trusting first, then clear.
        if up:
            self.cache.clear()
            self.live = True
        else:
            self.live = False
            self.cache.clear()

    def follow(self, source: Any) -> None:
        """Follow ``source``'s change stream (an AgentClient); without one the cache stays unused."""
        if self.subscriber is not None or not callable(getattr(source, "watch_changes", None)):
            return
        from hsmd.changestream import ChangeSubscriber

        self.subscriber = ChangeSubscriber(
            source, self.on_change, self.on_resync, on_connection=self.on_connection
        )
        self.subscriber.start()

    def close(self) -> None:
        subscriber, self.subscriber = self.subscriber, None
        if subscriber is not None:
            subscriber.stop()
        self.on_connection(self.address, False)

    def stats(self) -> dict[str, object]:
        with self._lock:
            bypassed = self._bypassed
        return {"agent": self.address, "live": self.live, **self.cache.stats().to_json(), "bypassed": bypassed}


# --- the agent set ------------------------------------------------------------------------------


class AgentSet:
    """Several agents mirroring one pool. Thread-safe; one instance per process is enough."""

    MAX_REPAIR_ATTEMPTS = 30
    _LOCK_STRIPES = 64

    def __init__(
        self,
        agents: Sequence[AgentLike],
        *,
        quorum: str = "majority",
        factory: Callable[[str], AgentLike] | None = None,
        max_workers: int | None = None,
        coalesce_reads: bool = False,
        read_cache: ReadCacheSettings | None = None,
    ) -> None:
        self.quorum = validate_quorum(quorum)
        # concurrent reads of one secret each share agent RPCs (ReadCoalescer); the broker turns it on
        self.coalesce_reads = coalesce_reads
        self._readers: dict[str, ReadCoalescer] = {}
        self._factory = factory
        self._agents: list[AgentLike] = list(agents)
        self._members_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max_workers or 32, thread_name_prefix="fanout")
        # Writes and repairs of one path go out one at a time from this process, so two writes
        # never interleave differently on different agents (which no quorum could untangle).
        self._path_locks = [threading.RLock() for _ in range(self._LOCK_STRIPES)]
        self._repairs: dict[tuple[str, str], RepairItem] = {}
        self._repairs_lock = threading.Lock()
        self._repaired = 0
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        # per-agent read caches by address (replaced, never mutated, so readers need no lock)
        self.read_cache = read_cache if read_cache is not None and read_cache.enabled else None
        self._caches: dict[str, AgentReadCache] = {}
        self._following = False
        if self.read_cache is not None:
            self._caches = {a.address: AgentReadCache(a.address, self.read_cache) for a in self._agents}

    @classmethod
    def from_addresses(
        cls,
        addresses: Sequence[str],
        *,
        quorum: str = "majority",
        tls: ClientTLS | None = None,
        timeout: float = 10.0,
        coalesce_reads: bool = False,
        read_cache: ReadCacheSettings | None = None,
    ) -> AgentSet:
        """An AgentSet of real ``AgentClient``s (an address given twice is one agent)."""
        from hsmd.agent.client import AgentClient

        def factory(address: str) -> AgentLike:
            client: AgentLike = AgentClient(address, tls=tls, timeout=timeout)
            return client

        unique = list(dict.fromkeys(addresses))
        return cls(
            [factory(a) for a in unique],
            quorum=quorum,
            factory=factory,
            coalesce_reads=coalesce_reads,
            read_cache=read_cache,
        )

    # -- membership ------------------------------------------------------------------------------

    @property
    def agents(self) -> list[AgentLike]:
        with self._members_lock:
            return list(self._agents)

    @property
    def addresses(self) -> list[str]:
        return [a.address for a in self.agents]

    def set_addresses(self, addresses: Iterable[str]) -> bool:
        """Follow pool membership: open clients for new addresses, close removed ones.
        Returns True when the membership changed."""
        if self._factory is None:
            raise Internal("this AgentSet was built from clients and cannot follow addresses")
        wanted = list(dict.fromkeys(addresses))
        with self._members_lock:
            current = {a.address: a for a in self._agents}
            if list(current) == wanted:
                return False
            new_agents = [current.get(addr) or self._factory(addr) for addr in wanted]
            removed = [a for addr, a in current.items() if addr not in wanted]
            self._agents = new_agents
            for agent in removed:
                self._readers.pop(agent.address, None)
            dropped: list[AgentReadCache] = []
            added: list[tuple[AgentReadCache, AgentLike]] = []
            if self.read_cache is not None:
                caches = dict(self._caches)
                dropped = [c for addr, c in caches.items() if addr not in wanted]
                for agent in new_agents:
                    if agent.address not in caches:
                        caches[agent.address] = AgentReadCache(agent.address, self.read_cache)
                        added.append((caches[agent.address], agent))
                self._caches = {addr: c for addr, c in caches.items() if addr in wanted}
        for cache in dropped:
            cache.close()
        if self._following:
            for cache, agent in added:
                cache.follow(agent)
        for agent in removed:
            _close_quietly(agent)
        log.info("agent set changed", extra={"agents": wanted})
        return True

    def close(self) -> None:
        self.stop()
        self._following = False
        for cache in list(self._caches.values()):
            cache.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for agent in self.agents:
            _close_quietly(agent)

    # -- fan-out helper -------------------------------------------------------------------------

    def _each(self, agents: Sequence[AgentLike], call: Callable[[AgentLike], T]) -> list[T | HsmdError]:
        """Run ``call`` on every agent in parallel; domain errors become values, in agent order."""

        def guarded(agent: AgentLike) -> T | HsmdError:
            try:
                return call(agent)
            except HsmdError as exc:
                return exc
            except Exception as exc:  # a client bug must not take the whole request down
                log.exception("agent call failed unexpectedly", extra={"agent": agent.address})
                return Internal(f"agent {agent.address}: unexpected {type(exc).__name__}")

        if len(agents) == 1:
            return [guarded(agents[0])]
        futures = [self._pool.submit(guarded, agent) for agent in agents]
        return [f.result() for f in futures]

    def _require_agents(self) -> list[AgentLike]:
        agents = self.agents
        if not agents:
            raise Unavailable("no agents are known for this pool")
        return agents

    def _path_lock(self, path: str) -> threading.RLock:
        return self._path_locks[zlib.crc32(path.encode()) % self._LOCK_STRIPES]

    def path_lock(self, path: str) -> threading.RLock:
        """Hold this around a read-modify-write of ``path`` (re-entrant: ``write`` takes it too), so
        this process's writers of one path take turns; other writers are caught by the checksum."""
        return self._path_lock(path)

    # -- reads ----------------------------------------------------------------------------------

    def _reader(self, agent: AgentLike) -> ReadCoalescer:
        reader = self._readers.get(agent.address)
        if reader is None or reader.agent is not agent:
            with self._members_lock:
                reader = self._readers.get(agent.address)
                if reader is None or reader.agent is not agent:
                    reader = self._readers[agent.address] = ReadCoalescer(agent)
        return reader

    def follow_changes(self) -> None:
        """With the read cache on: follow every agent's change stream (the cache of an agent is
        used only while its stream is connected). ``start`` calls it."""
        self._following = self.read_cache is not None
        if not self._following:
            return
        agents = {a.address: a for a in self.agents}
        for address, cache in list(self._caches.items()):
            if address in agents:
                cache.follow(agents[address])

    def read_cache_of(self, address: str) -> AgentReadCache | None:
        return self._caches.get(address)

    def read_cache_stats(self) -> dict[str, object] | None:
        """The read cache's settings and per-agent counters (None when it is off)."""
        if self.read_cache is None:
            return None
        caches = self._caches
        return {
            "ttlSeconds": self.read_cache.ttl,
            "maxEntries": self.read_cache.max_entries,
            "maxBytes": self.read_cache.max_bytes,
            "agents": [caches[a].stats() for a in self.addresses if a in caches],
        }

    def _fetch(self, agent: AgentLike, path: str, cache: AgentReadCache | None) -> Secret:
        """One agent's answer for ``path`` from the agent itself, offered to its cache."""
        ticket = cache.ticket() if cache is not None else None  # before the call: see hsmd.readcache
        secret = self._reader(agent).read(path) if self.coalesce_reads else agent.read(path)
        if cache is not None:
            cache.put(path, secret, ticket)
        return secret

    def read(self, path: str, *, fresh: bool = False) -> ReadOutcome:
        """``path`` resolved across the agents. Each agent's answer comes from its read cache when
        it has one; ``fresh`` asks every agent (and refills the caches) — for read-modify-writes."""
        agents = self._require_agents()
        caches = self._caches
        if not caches:
            return _resolve_read(path, agents, self._each(agents, lambda a: self._fetch(a, path, None)))
        hits = [None if fresh or (c := caches.get(a.address)) is None else c.get(path) for a in agents]
        missing = [a for a, hit in zip(agents, hits, strict=True) if hit is None]
        fetched = iter(self._each(missing, lambda a: self._fetch(a, path, caches.get(a.address))) if missing else ())
        results = [hit if hit is not None else next(fetched) for hit in hits]
        return _resolve_read(path, agents, results)

    def read_many(self, paths: Sequence[str]) -> dict[str, Secret | HsmdError]:
        """Many secrets, resolved across the agents, answered like ``AgentClient.read_many``: per
        path the Secret or its error (``settle_read``: absence while an agent was silent is
        Unavailable). Raises only when no agent answered at all."""
        resolved = self._read_resolved(paths)
        return {p: r if isinstance(r, HsmdError) else settle_read(r) for p, r in resolved.items()}

    def read_many_outcomes(self, paths: Sequence[str]) -> dict[str, ReadOutcome]:
        """Many secrets with every agent's answer and the disagreement report (the broker's
        export). Raises when some path got no answer from any agent."""
        out: dict[str, ReadOutcome] = {}
        for path, result in self._read_resolved(paths).items():
            if isinstance(result, HsmdError):
                raise result
            out[path] = result
        return out

    def _read_resolved(self, paths: Sequence[str]) -> dict[str, ReadOutcome | HsmdError]:
        """One ReadSecrets per agent (in parallel), each path resolved; a path no agent could
        answer maps to its error. Raises when every agent's call failed."""
        agents = self._require_agents()
        unique = list(dict.fromkeys(paths))
        if not unique:
            return {}
        caches = self._caches
        batches = self._each(agents, lambda a: self._fetch_many(a, unique, caches.get(a.address)))
        if all(isinstance(b, HsmdError) for b in batches):
            raise _unavailable_from(
                [AgentOutcome(a.address, False, error=b) for a, b in zip(agents, batches, strict=True)
                 if isinstance(b, HsmdError)],
                "read",
            )
        out: dict[str, ReadOutcome | HsmdError] = {}
        for path in unique:
            per_agent: list[Secret | HsmdError] = []
            for agent, batch in zip(agents, batches, strict=True):
                if isinstance(batch, HsmdError):
                    per_agent.append(batch)
                else:
                    # an answer without this path is a failure of that agent, never absence
                    per_agent.append(
                        batch[path] if path in batch
                        else Internal(f"agent {agent.address} did not answer for {path!r}", path=path)
                    )
            try:
                out[path] = _resolve_read(path, agents, per_agent)
            except HsmdError as err:
                out[path] = err
        return out

    @staticmethod
    def _fetch_many(
        agent: AgentLike, paths: Sequence[str], cache: AgentReadCache | None
    ) -> Mapping[str, Secret | HsmdError]:
        """One agent's answers for ``paths``: its cache's hits, the rest in one ReadSecrets (offered
        to the cache). A failed call fails the misses (and the whole agent when nothing was hit)."""
        if cache is None:
            return agent.read_many(paths)
        out: dict[str, Secret | HsmdError] = {}
        missing: list[str] = []
        for path in paths:
            hit = cache.get(path)
            if hit is None:
                missing.append(path)
            else:
                out[path] = hit
        if not missing:
            return out
        ticket = cache.ticket()
        try:
            answers = agent.read_many(missing)
        except HsmdError as err:
            if not out:
                raise
            answers = dict.fromkeys(missing, err)
        for path, answer in answers.items():
            if isinstance(answer, Secret):
                cache.put(path, answer, ticket)
        out.update(answers)
        return out

    def list_paths(self, prefix: str = "") -> ListOutcome:
        """Paths under ``prefix``: with three or more answers the paths a majority holds, else
        the union. Paths not held by every answering agent are reported."""
        agents = self._require_agents()
        results = self._each(agents, lambda a: a.list(prefix))
        answered = [r for r in results if not isinstance(r, HsmdError)]
        outcomes = tuple(
            AgentOutcome(a.address, False, error=r) if isinstance(r, HsmdError) else AgentOutcome(a.address, True)
            for a, r in zip(agents, results, strict=True)
        )
        if not answered:
            raise _unavailable_from(outcomes, "list")
        counts: collections.Counter[str] = collections.Counter()
        for paths in answered:
            counts.update(set(paths))
        n = len(answered)
        keep = [p for p, c in counts.items() if (c * 2 > n if n >= 3 else True)]
        disagreeing = sorted(p for p, c in counts.items() if c != n)
        return ListOutcome(sorted(p for p in keep if path_matches_prefix(p, prefix)), outcomes, disagreeing)

    def checksum(self, path: str) -> tuple[str, ReadOutcome | None, tuple[AgentOutcome, ...]]:
        """The resolved checksum. Cheap when the agents agree (checksums only); a disagreement
        falls back to a full resolved read, which knows the write times."""
        agents = self._require_agents()
        results = self._each(agents, lambda a: a.checksum(path))
        outcomes = tuple(_outcome(a.address, r) for a, r in zip(agents, results, strict=True))
        answers = {r for r in results if isinstance(r, str | NotFound)}
        if not answers:
            raise _unavailable_from(outcomes, "checksum")
        strings = {r for r in answers if isinstance(r, str)}
        if len(strings) == 1 and len(answers) == len(strings):
            return next(iter(strings)), None, outcomes
        resolved = self.read(path)
        secret = resolved.require()
        return secret.checksum, resolved, resolved.agents

    def checksums(self, paths: Sequence[str] | None = None, prefix: str = "") -> dict[str, str | HsmdError]:
        """Resolved checksums of ``paths`` (or of every secret under ``prefix``), like
        ``AgentClient.checksums``: one GetChecksums per agent, absent paths left out. Paths the
        agents disagree about are resolved by a full read (``read_many``: the write times decide).
        A path absent on the agents that answered while another agent did not answer maps to
        Unavailable (never left out as absent); so does every path whose resolution failed.
        With ``prefix`` every agent must answer (a silent agent's paths cannot be named): Unavailable
        otherwise. Raises when no agent answered."""
        agents = self._require_agents()
        wanted: list[str] | None = None
        if paths is not None:
            wanted = list(dict.fromkeys(paths))
            if not wanted:
                return {}
            asked = wanted
            results = self._each(agents, lambda a: a.checksums(paths=asked))
        else:
            results = self._each(agents, lambda a: a.checksums(prefix=prefix))
        outcomes = tuple(_outcome(a.address, r) for a, r in zip(agents, results, strict=True))
        answered = [r for r in results if not isinstance(r, HsmdError)]
        if not answered:
            raise _unavailable_from(outcomes, "checksums")
        silent = len(agents) - len(answered)
        if wanted is None:
            if silent:
                raise _unavailable_from(
                    [o for o in outcomes if not o.ok], f"checksums under {prefix!r} (every agent must answer)"
                )
            wanted = sorted({p for r in answered for p in r})
        out: dict[str, str | HsmdError] = {}
        disagreeing: list[str] = []
        for path in wanted:
            seen = {r.get(path) for r in answered}
            if len(seen) > 1:
                disagreeing.append(path)
                continue
            value = next(iter(seen))
            if value is not None:
                out[path] = value
            elif silent:
                out[path] = Unavailable(
                    f"secret {path!r} is absent on the agents that answered; "
                    f"{silent} of {len(agents)} agent(s) did not answer",
                    path=path,
                )
        if disagreeing:
            try:
                read = self.read_many(disagreeing)
            except HsmdError as err:
                read = dict.fromkeys(disagreeing, err)
            for path in disagreeing:
                answer = read[path] if path in read else Internal(f"no answer for {path!r}", path=path)
                if isinstance(answer, Secret):
                    out[path] = answer.checksum
                elif not isinstance(answer, NotFound):
                    out[path] = answer
        return out

    # -- writes ---------------------------------------------------------------------------------

    def write(
        self,
        path: str,
        data: Mapping[str, bytes],
        metadata: SecretMetadata | None = None,
        *,
        create_only: bool = False,
        expected_checksum: str | None = None,
    ) -> WriteOutcome:
        """Replace ``path`` on every agent. ``metadata.created_at`` is stamped with the write time
        when empty (the "newest" rule of reads relies on it)."""
        meta = metadata or SecretMetadata()
        if not meta.created_at:
            meta = replace(meta, created_at=now_stamp())
        with self._path_lock(path), self._changing(path):
            agents = self._require_agents()
            results = self._each(
                agents,
                lambda a: a.write(path, data, meta, create_only=create_only, expected_checksum=expected_checksum),
            )
            outcomes = tuple(
                AgentOutcome(a.address, False, error=r)
                if isinstance(r, HsmdError)
                else AgentOutcome(
                    a.address, True, checksum=getattr(r, "checksum", None), changed=getattr(r, "changed", None)
                )
                for a, r in zip(agents, results, strict=True)
            )
            return self._finish_write(path, outcomes, want_from_outcomes=True)

    def delete(self, path: str, key: str | None = None) -> WriteOutcome:
        """Delete a secret (or one key) on every agent; an agent that already lacks it counts as
        done, but when no agent had it the result is NotFound."""
        with self._path_lock(path), self._changing(path):
            agents = self._require_agents()
            results = self._each(agents, lambda a: a.delete(path, key))
            outcomes: list[AgentOutcome] = []
            deleted_somewhere = False
            for agent, result in zip(agents, results, strict=True):
                if isinstance(result, NotFound):
                    outcomes.append(AgentOutcome(agent.address, True, changed=False))
                elif isinstance(result, HsmdError):
                    outcomes.append(AgentOutcome(agent.address, False, error=result))
                else:
                    deleted_somewhere = True
                    outcomes.append(AgentOutcome(agent.address, True, changed=True))
            if not deleted_somewhere and all(o.ok for o in outcomes):
                what = f"key {key!r} of secret {path!r}" if key else f"secret {path!r}"
                err = NotFound(f"{what} not found", path=path)
                return WriteOutcome(
                    path, False, self.quorum, required_acks(self.quorum, len(agents)), tuple(outcomes), error=err
                )
            want: str | None = None
            if key is not None:
                # the acknowledged state after removing one key is whatever an agent now holds
                want = self._checksum_after(agents, outcomes, path)
            return self._finish_write(
                path, tuple(outcomes), want=want, want_from_outcomes=False, changed=deleted_somewhere
            )

    @contextlib.contextmanager
    def _changing(self, path: str) -> Iterator[None]:
        """Around every change this process sends: ``path`` leaves every agent's read cache before
        the change goes out and again when it finished, whatever the outcome (hsmd.readcache)."""
        with contextlib.ExitStack() as changing:
            for cache in self._caches.values():
                changing.enter_context(cache.cache.changing(path))
            yield

    def _checksum_after(self, agents: Sequence[AgentLike], outcomes: Sequence[AgentOutcome], path: str) -> str | None:
        for agent, outcome in zip(agents, outcomes, strict=True):
            if outcome.ok and outcome.changed:
                try:
                    return agent.checksum(path)
                except NotFound:
                    return None  # deleting the last key removed the secret
                except HsmdError:
                    continue
        return None

    def _finish_write(
        self,
        path: str,
        outcomes: tuple[AgentOutcome, ...],
        *,
        want: str | None = None,
        want_from_outcomes: bool,
        changed: bool | None = None,
    ) -> WriteOutcome:
        required = required_acks(self.quorum, len(outcomes))
        error = decide_write(outcomes, required, self.quorum)
        if want_from_outcomes:
            acked = collections.Counter(o.checksum for o in outcomes if o.ok and o.checksum)
            want = acked.most_common(1)[0][0] if acked else None
        if changed is None:
            changed = any(o.ok and o.changed for o in outcomes)
        if error is not None:
            return WriteOutcome(path, False, self.quorum, required, outcomes, want, changed, error)
        queued = []
        with self._repairs_lock:
            for outcome in outcomes:
                key = (path, outcome.agent)
                if outcome.ok:
                    self._repairs.pop(key, None)  # this write supersedes an older repair
                else:
                    assert outcome.error is not None
                    self._repairs[key] = RepairItem(path, outcome.agent, want, outcome.error.code)
                    queued.append(outcome.agent)
        if queued:
            log.warning(
                "write reached quorum; lagging agents queued for repair", extra={"path": path, "agents": queued}
            )
        return WriteOutcome(path, True, self.quorum, required, outcomes, want, changed, None, tuple(queued))

    # -- device level ---------------------------------------------------------------------------

    def info(self) -> list[tuple[str, TokenInfo | HsmdError]]:
        agents = self._require_agents()
        return [(a.address, r) for a, r in zip(agents, self._each(agents, lambda a: a.info()), strict=True)]

    def health(self) -> list[tuple[str, tuple[str, str] | HsmdError]]:
        agents = self.agents
        if not agents:
            return []
        return [(a.address, r) for a, r in zip(agents, self._each(agents, lambda a: a.health()), strict=True)]

    def change_pin(self, old_pin: str, new_pin: str, only: Sequence[str] | None = None) -> tuple[AgentOutcome, ...]:
        """Change the user PIN on every agent (or the listed ones). Never retried: a wrong PIN
        retried locks real tokens."""
        agents = self._require_agents()
        if only:
            unknown = sorted(set(only) - {a.address for a in agents})
            if unknown:
                raise InvalidArgument(f"unknown agent(s) {unknown}; known: {[a.address for a in agents]}")
            agents = [a for a in agents if a.address in only]
        results = self._each(agents, lambda a: a.change_pin(old_pin, new_pin))
        return tuple(_outcome(a.address, r) for a, r in zip(agents, results, strict=True))

    # -- repair queue ----------------------------------------------------------------------------

    def pending_repairs(self) -> list[RepairItem]:
        with self._repairs_lock:
            return [replace(item) for item in self._repairs.values()]

    def repair_stats(self) -> dict[str, object]:
        items = self.pending_repairs()
        return {"pending": len(items), "repaired": self._repaired, "items": [i.to_json() for i in items]}

    def run_repairs(self, *, now: float | None = None) -> int:
        """One pass over the due repair items; returns how many converged."""
        now = time.time() if now is None else now
        with self._repairs_lock:
            due = [replace(i) for i in self._repairs.values() if i.next_attempt <= now]
        done = 0
        for item in due:
            with self._path_lock(item.path):
                with self._repairs_lock:
                    current = self._repairs.get((item.path, item.agent))
                if current is None or current.queued_at != item.queued_at:
                    continue  # superseded by a newer write while we waited
                try:
                    with self._changing(item.path):
                        outcome = self._repair_one(item)
                except HsmdError as exc:
                    outcome = f"error: {exc.code}: {exc.message}"
                with self._repairs_lock:
                    current = self._repairs.get((item.path, item.agent))
                    if current is None or current.queued_at != item.queued_at:
                        continue
                    if outcome in ("repaired", "superseded", "gone"):
                        del self._repairs[(item.path, item.agent)]
                        if outcome == "repaired":
                            self._repaired += 1
                            done += 1
                        log.info("repair finished", extra={"path": item.path, "agent": item.agent, "result": outcome})
                        continue
                    current.attempts += 1
                    current.last_error = outcome
                    current.next_attempt = time.time() + backoff_delay(current.attempts + 1, 0.5, 60.0)
                    if current.attempts >= self.MAX_REPAIR_ATTEMPTS:
                        log.error("repair gave up", extra={"path": item.path, "agent": item.agent, "error": outcome})
                        current.next_attempt = float("inf")
        return done

    def _repair_one(self, item: RepairItem) -> str:
        agents = {a.address: a for a in self.agents}
        target = agents.get(item.agent)
        if target is None:
            return "gone"  # the agent left the pool
        if item.want is None:
            with contextlib.suppress(NotFound):
                target.delete(item.path)
            return "repaired"
        try:
            current: str | None = target.checksum(item.path)
        except NotFound:
            current = None
        if current == item.want:
            return "repaired"
        source_secret: Secret | None = None
        for address, agent in agents.items():
            if address == item.agent:
                continue
            try:
                secret = agent.read(item.path)
            except HsmdError:
                continue
            if secret.checksum == item.want:
                source_secret = secret
                break
        if source_secret is None:
            # no agent holds the acknowledged version any more: a later write (from elsewhere)
            # replaced it, and that writer owns convergence now
            return "superseded"
        try:
            target.write(
                item.path,
                source_secret.data,
                source_secret.metadata,
                create_only=current is None,
                expected_checksum=current,
            )
        except (Conflict, AlreadyExists):
            return "error: conflict: the agent changed during repair; retrying"
        return "repaired"

    def start(self, interval: float = 2.0) -> None:
        """Run the repair queue in a background thread until ``stop``, and follow the agents' change
        streams when the read cache is on."""
        self.follow_changes()
        if self._worker is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.run_repairs()
                except Exception:
                    log.exception("repair pass failed")

        self._worker = threading.Thread(target=loop, name="fanout-repair", daemon=True)
        self._worker.start()

    def stop(self) -> None:
        self._stop.set()
        if self._worker is not None:
            self._worker.join(timeout=5)
            self._worker = None


def _outcome(address: str, result: object) -> AgentOutcome:
    if isinstance(result, HsmdError):
        return AgentOutcome(address, False, error=result)
    return AgentOutcome(address, True, checksum=result if isinstance(result, str) else None)


def _unavailable_from(outcomes: Sequence[AgentOutcome], what: str) -> HsmdError:
    errors = [o.error for o in outcomes if o.error is not None]
    permanent = [e for e in errors if not e.temporary]
    if errors and len(permanent) == len(errors):
        return permanent[0]
    detail = "; ".join(f"{o.agent}: {o.error.code}" for o in outcomes if o.error is not None)
    return Unavailable(f"no agent answered the {what} ({detail})")


def _resolve_read(path: str, agents: Sequence[AgentLike], results: Sequence[Secret | HsmdError]) -> ReadOutcome:
    outcomes: list[AgentOutcome] = []
    answers: list[Version] = []
    by_checksum: dict[str, Secret] = {}
    for agent, result in zip(agents, results, strict=True):
        if isinstance(result, NotFound):
            outcomes.append(AgentOutcome(agent.address, True, checksum=None))
            answers.append(Version(None))
        elif isinstance(result, HsmdError):
            outcomes.append(AgentOutcome(agent.address, False, error=result))
        else:
            outcomes.append(AgentOutcome(agent.address, True, checksum=result.checksum))
            answers.append(Version(result.checksum, result.metadata.created_at))
            by_checksum.setdefault(result.checksum, result)
    if not answers:
        raise _unavailable_from(outcomes, f"read of {path!r}")
    resolution = resolve_versions(answers)
    secret = by_checksum.get(resolution.winner.checksum) if resolution.winner.checksum else None
    return ReadOutcome(path, secret, resolution.resolved_by, resolution.disagreement, tuple(outcomes))


def _close_quietly(agent: AgentLike) -> None:
    try:
        agent.close()
    except Exception:
        log.debug("closing agent client failed", exc_info=True, extra={"agent": agent.address})


# --- finding a pool's agents ------------------------------------------------------------------

AGENT_NAME_LABEL = "app.kubernetes.io/name"
AGENT_NAME_VALUE = "hsm-agent"
DEVICE_LABEL = "hsm.j5t.io/device"
POOL_LABEL = "hsm.j5t.io/pool"
AGENT_PORT_NAME = "grpc"
DEFAULT_AGENT_PORT = 9090


def pool_device_name(pool: Mapping[str, Any]) -> str:
    """The HSMDevice an HSMPool aggregates: its owner of kind HSMDevice, else the Go operator's
    naming (``<device>-pool``), else the pool's own name."""
    meta = pool.get("metadata") or {}
    for owner in meta.get("ownerReferences") or []:
        if owner.get("kind") == "HSMDevice" and owner.get("name"):
            return str(owner["name"])
    name = str(meta.get("name") or "")
    return name[: -len("-pool")] if name.endswith("-pool") else name


def agent_addresses(pods: Iterable[Mapping[str, Any]]) -> list[str]:
    """``ip:port`` of every running, ready, not-terminating agent pod (port: the container port
    named ``grpc``, else 9090), sorted."""
    out = set()
    for pod in pods:
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        if meta.get("deletionTimestamp") or status.get("phase") != "Running" or not status.get("podIP"):
            continue
        conditions = status.get("conditions") or []
        ready = [c for c in conditions if c.get("type") == "Ready"]
        if ready and ready[0].get("status") != "True":
            continue
        port = DEFAULT_AGENT_PORT
        for container in (pod.get("spec") or {}).get("containers") or []:
            for p in container.get("ports") or []:
                if p.get("name") == AGENT_PORT_NAME and p.get("containerPort"):
                    port = int(p["containerPort"])
        ip = str(status["podIP"])
        out.add(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")
    return sorted(out)


def agents_from_pool(api_client: Any, namespace: str, name: str) -> list[str]:
    """Addresses of the agents serving HSMPool ``namespace/name``: the ready pods labelled
    ``app.kubernetes.io/name=hsm-agent`` and either ``hsm.j5t.io/pool=<pool>`` or
    ``hsm.j5t.io/device=<the pool's HSMDevice>`` (the Go operator's labels)."""
    from hsmd import kube

    hsmpools = kube.Resource("hsm.j5t.io/v1alpha1", "HSMPool", "hsmpools", namespaced=True, has_status=True)
    pool = kube.get_object(api_client, hsmpools, name, namespace)
    device = pool_device_name(pool)
    pods: dict[str, Mapping[str, Any]] = {}
    for selector in (
        f"{AGENT_NAME_LABEL}={AGENT_NAME_VALUE},{POOL_LABEL}={name}",
        f"{AGENT_NAME_LABEL}={AGENT_NAME_VALUE},{DEVICE_LABEL}={device}",
    ):
        for pod in kube.iter_pods(api_client, namespace, selector):
            pods[str((pod.get("metadata") or {}).get("uid") or id(pod))] = pod
    return agent_addresses(pods.values())
