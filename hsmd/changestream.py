"""Following an agent's WatchChanges stream: ``ChangeSubscriber``.

The operator subscribes to learn which HSMSecrets to resync; the broker subscribes to keep its read
cache (hsmd.fanout) honest. Both need the same loop: connect, hand each WRITTEN/DELETED change on,
reconnect with backoff after an interruption and resume from the last sequence, and say when events
may have been missed (RESYNC from the agent, a new epoch). The client is anything with an
``address`` and ``watch_changes`` (``hsmd.agent.client.AgentClient``); this module imports no gRPC.

``connected`` is set from the first event of a connection (the agent's HEARTBEAT or RESYNC, which
carries its epoch) until the stream breaks; ``on_connection(address, up)`` reports each transition,
``up`` before that first event is handled and ``down`` as soon as the break is noticed.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from hsmd.errors import Unavailable

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
    ) -> None:
        self.client = client
        self.on_change = on_change
        self.on_resync = on_resync
        self.on_connection = on_connection
        self.backoff_cap = backoff_cap
        self._stop = threading.Event()
        self._stream: Any = None
        self._thread = threading.Thread(target=self._run, name=f"changes-{client.address}", daemon=True)
        self.epoch = ""
        self.sequence = 0
        self.connected = threading.Event()

    def start(self) -> None:
        self._thread.start()

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

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._stream = self.client.watch_changes(since=self.sequence if self.epoch else 0)
                first = True
                for change in self._stream:
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
                delay = min(self.backoff_cap, 0.2 * 2 ** min(failures - 1, 8)) * (0.5 + random.random() / 2)
                if failures == 1 or failures % 10 == 0:
                    log.warning("agent change stream interrupted", extra={"agent": self.client.address,
                                                                          "error": str(exc)[:200], "retry_in": delay})
                self._stop.wait(delay)
        self._set_connected(False)
