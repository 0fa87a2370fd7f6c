"""Which agents serve an HSMSecret, and the two things the fast path asks them.

Static agents (``--agent HOST:PORT``, repeatable) serve every HSMSecret: one agent, or several
that are the mirrors of one pool. In a cluster, without ``--agent``, an HSMSecret is served by the
agents of its pool: ``spec.parentRef`` names an HSMPool (or an HSMDevice, whose pool is
``<device>-pool``); without a parentRef, the only HSMPool of its namespace. Pool membership comes
from ``hsmd.fanout.agents_from_pool`` and is refreshed every ``pool_ttl`` seconds.

An ``AgentGroup`` is the ``hsmd.fanout.AgentSet`` of one set of addresses: ``checksums`` is the
fast path's one batch RPC per agent and ``read_many`` is what ``hsmd.sync.sync_batch`` reads
through, both resolved across the mirrors the way the AgentSet resolves reads (a path absent on
the agents that answered while another did not is Unavailable). ``ChangeSubscriber`` (from
hsmd.changestream, re-exported here) follows one agent's WatchChanges stream, reconnecting with
backoff and resuming from the last sequence.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hsmd import fanout
from hsmd.agent.client import AgentClient, ClientTLS
from hsmd.changestream import ChangeSubscriber
from hsmd.errors import HsmdError, NotFound

__all__ = ["AgentGroup", "Agents", "ChangeSubscriber"]

log = logging.getLogger("hsmd.operator.agents")


class AgentGroup(fanout.AgentSet):
    """The AgentSet of one set of agents (one agent, or the mirrors of a pool), keyed by its
    sorted addresses; ``clients`` are its AgentClients (the change streams follow each one)."""

    def __init__(self, addresses: Sequence[str], *, tls: ClientTLS | None = None, timeout: float = 10.0) -> None:
        self.key: tuple[str, ...] = tuple(sorted(set(addresses)))
        self.clients = [AgentClient(a, tls=tls, timeout=timeout) for a in self.key]
        super().__init__(self.clients, quorum="majority")


class Agents:
    """Resolves the AgentGroup of each HSMSecret; owns the clients."""

    def __init__(
        self,
        static: Sequence[str] = (),
        *,
        tls: ClientTLS | None = None,
        timeout: float = 10.0,
        api: Any = None,
        pool_ttl: float = 30.0,
        on_new_group: Callable[[AgentGroup], None] | None = None,
    ) -> None:
        self.on_new_group = on_new_group
        self.tls = tls
        self.timeout = timeout
        self.api = api
        self.pool_ttl = pool_ttl
        self._lock = threading.Lock()
        self._static = AgentGroup(static, tls=tls, timeout=timeout) if static else None
        self._groups: dict[tuple[str, ...], AgentGroup] = {}
        self._pools: dict[tuple[str, str], tuple[float, tuple[str, ...]]] = {}
        self._namespace_pools: dict[str, tuple[float, tuple[str, ...]]] = {}

    @property
    def static(self) -> AgentGroup | None:
        return self._static

    def first_address(self) -> str | None:
        return self._static.key[0] if self._static else None

    def groups(self) -> list[AgentGroup]:
        with self._lock:
            out = list(self._groups.values())
        return ([self._static] if self._static else []) + out

    def _group(self, addresses: tuple[str, ...]) -> AgentGroup | None:
        if not addresses:
            return None
        created = False
        with self._lock:
            group = self._groups.get(addresses)
            if group is None:
                group = AgentGroup(addresses, tls=self.tls, timeout=self.timeout)
                self._groups[addresses] = group
                created = True
        if created and self.on_new_group is not None:
            self.on_new_group(group)  # e.g. subscribe to its change streams at once
        return group

    def pool_of(self, hsmsecret: Mapping[str, Any]) -> tuple[str, str] | None:
        """(namespace, HSMPool name) serving an HSMSecret in a cluster; None when undetermined."""
        meta = hsmsecret.get("metadata") or {}
        namespace = str(meta.get("namespace") or "")
        ref = (hsmsecret.get("spec") or {}).get("parentRef") or {}
        if isinstance(ref, Mapping) and ref.get("name"):
            ns = str(ref.get("namespace") or namespace)
            name = str(ref["name"])
            return (ns, name if ref.get("kind", "HSMPool") == "HSMPool" else f"{name}-pool")
        if self.api is None:
            return None
        now = time.monotonic()
        with self._lock:
            cached = self._namespace_pools.get(namespace)
        if cached is None or now - cached[0] > self.pool_ttl:
            from hsmd import kube

            try:
                listing = kube.request(self.api, "GET", f"/apis/{kube.API_VERSION}/namespaces/{namespace}/hsmpools")
                names = tuple(sorted(str(i["metadata"]["name"]) for i in listing.get("items") or []))
            except Exception:
                names = cached[1] if cached else ()
            cached = (now, names)
            with self._lock:
                self._namespace_pools[namespace] = cached
        return (namespace, cached[1][0]) if len(cached[1]) == 1 else None

    def for_object(self, hsmsecret: Mapping[str, Any]) -> AgentGroup | None:
        if self._static is not None:
            return self._static
        if self.api is None:
            return None
        pool = self.pool_of(hsmsecret)
        if pool is None:
            return None
        now = time.monotonic()
        with self._lock:
            cached = self._pools.get(pool)
        if cached is None or now - cached[0] > self.pool_ttl:
            try:
                addresses = tuple(sorted(fanout.agents_from_pool(self.api, pool[0], pool[1])))
            except NotFound:
                addresses = ()
            except HsmdError as err:
                log.warning("could not resolve the agents of a pool", extra={"pool": "/".join(pool), "error": str(err)})
                addresses = cached[1] if cached else ()
            with self._lock:
                self._pools[pool] = (now, addresses)
        else:
            addresses = cached[1]
        return self._group(addresses)

    def close(self) -> None:
        for group in self.groups():
            group.close()
