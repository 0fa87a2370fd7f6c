"""Following an agent's WatchChanges stream: ``ChangeSubscriber``.

The operator subscribes to learn which HSMSecrets to resync; the broker subscribes to keep its read
cache (hsmd.fanout) honest. Both need the same loop: connect, hand each WRITTEN/DELETED change on,
reconnect with backoff after an interruption and resume from the last sequence, and say when events
may have been missed (RESYNC from the agent, a new epoch). The client is anything with an
``address`` and ``watch_changes`` (``hsmd.agent.client.AgentClient``); this module imports no gRPC.

A stream can die without a word (a peer that vanished without a TCP reset, a stuck proxy): the agent
sends a HEARTBEAT every ``--heartbeat-interval`` (15 s by default) on an idle stream, so a connected
stream that brings nothing for ``stale_after`` seconds (45 by default) is dropped and reconnected,
which reports it down and up again (and the broker's read cache is cleared on the way).

``connected`` is set from the first event of a connection (the agent's HEARTBEAT or RESYNC, which
carries its epoch) until the stream breaks; ``on_connection(address, up)`` reports each transition,
``up`` before that first event is handled and ``down`` as soon as the break is noticed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from hsmd.errors import FailedPrecondition, Unavailable
from hsmd.service import backoff_delay

if TYPE_CHECKING:
    from hsmd.agent.client import Change

log = logging.getLogger("hsmd.changestream")


class ChangeSource(Protocol):
    """The part of ``AgentClient`` a subscriber uses."""

    address: str

    def watch_changes(self, prefix: str = "", since: int = 0) -> Iterator[Change]: ...


class ChangeSubscriber:
    """Follows one agent's change stream until stopped; reconnects with backoff.

    ``on_change(address, change)`` gets WRITTEN/DELETED changes; ``on_resync(address, why)`` is
    called when events may have been missed (RESYNC from the agent, a new epoch after a restart);
    ``on_connection(address, up)`` (optional) when the stream connects or breaks."""

    def __init__(
        self,
        client: ChangeSource,
        on_change: Callable[[str, Change], None],
        on_resync: Callable[[str, str], None],
        *,
        on_connection: Callable[[str, bool], None] | None = None,
        backoff_cap: float = 10.0,
        stale_after: float | None = 45.0,
        unsupported_retry: float = 300.0,
    ) -> None:
        self.client = client
        self.on_change = on_change
        self.on_resync = on_resync
        self.on_connection = on_connection
        self.backoff_cap = backoff_cap
        self.stale_after = stale_after
        self.unsupported_retry = unsupported_retry
        self._last_event = time.monotonic()
        self._stop = threading.Event()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, name=f"changes-{client.address}", daemon=True)
        self.epoch = ""
        self.sequence = 0
        self.connected = threading.Event()

    def start(self) -> None:
        self._thread.start()
        if self.stale_after:
            threading.Thread(target=self._watchdog, name=f"changes-watchdog-{self.client.address}",
                             daemon=True).start()

    def _watchdog(self) -> None:
        """Drop a connected stream that brought nothing, not even a heartbeat, for ``stale_after``."""
        assert self.stale_after
        period = min(5.0, self.stale_after / 3)
        while not self._stop.wait(period):
            stream = self._stream
            silent = time.monotonic() - self._last_event
            if stream is None or not self.connected.is_set() or silent <= self.stale_after:
                continue
            log.warning("agent change stream silent; reconnecting",
                        extra={"agent": self.client.address, "silent_s": round(silent, 1)})
            self._last_event = time.monotonic()
            with contextlib.suppress(Exception):
                stream.stop()

    def stop(self) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):  # already gone
                stream.stop()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _set_connected(self, up: bool) -> None:
        if up == self.connected.is_set():
            return
        if up:
            self.connected.set()
        else:
            self.connected.clear()
        if self.on_connection is not None:
            self.on_connection(self.client.address, up)

    def _unsupported(self, exc: Exception) -> bool:
        """Did the stream fail because the agent lacks hsmd's additive RPCs (WatchChanges among them)?
        UNIMPLEMENTED arrives as FailedPrecondition; only then is the agent asked (a paused agent
        would otherwise hold every reconnect for a call timeout)."""
        probe = getattr(self.client, "supports_additive", None)
        if probe is None or not isinstance(exc, FailedPrecondition):
            return False
        try:
            return not probe()
        except Exception:  # unreachable: an ordinary interruption
            return False

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._stream = self.client.watch_changes(since=self.sequence if self.epoch else 0)
                first = True
                self._last_event = time.monotonic()
                for change in self._stream:
                    self._last_event = time.monotonic()
                    if self._stop.is_set():
                        break
                    if first:
                        first = False
                        failures = 0
                        self._set_connected(True)
                        if change.epoch != self.epoch:
                            # a new agent process (or our first connection): we cannot know what changed
                            if self.epoch:
                                self.on_resync(self.client.address, "agent restarted")
                            self.epoch = change.epoch
                    if change.kind == "resync":
                        self.on_resync(self.client.address, "agent asked for a resync")
                    elif change.kind in ("written", "deleted"):
                        self.on_change(self.client.address, change)
                    if change.sequence:
                        self.sequence = max(self.sequence, change.sequence)
                if self._stop.is_set():
                    break
                raise Unavailable("change stream ended")
            except Exception as exc:
                if self._stop.is_set():
                    break
                self._set_connected(False)
                failures += 1
                if self._unsupported(exc):
                    # an agent without WatchChanges (the Go agent): nothing to follow; look again now
                    # and then, in case it is upgraded in place, without a warning every few seconds
                    if failures == 1:
                        log.info("agent has no change stream; checking again every %g s", self.unsupported_retry,
                                 extra={"agent": self.client.address})
                    self._stop.wait(self.unsupported_retry)
                    continue
                delay = backoff_delay(failures, 0.2, self.backoff_cap, jitter=True)
                if failures == 1 or failures % 10 == 0:
                    log.warning("agent change stream interrupted", extra={"agent": self.client.address,
                                                                          "error": str(exc)[:200], "retry_in": delay})
                self._stop.wait(delay)
        self._set_connected(False)
