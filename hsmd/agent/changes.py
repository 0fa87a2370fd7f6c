"""The agent's change history behind WatchChanges: sequence numbers, an epoch, bounded replay.

Every write that changed a secret and every delete made through this agent is recorded in the
order the device performed it. A subscriber resumes with ``since`` (the last sequence it saw); if
that is older than the retained history, or belongs to another epoch, it is told to RESYNC.

Sequences of a new epoch start at (wall-clock milliseconds x 1024), so a ``since`` carried over
from an earlier agent process is always below the new epoch's history and yields RESYNC rather
than a wrong replay (this assumes fewer than 1024 changes per millisecond of uptime, which a
PKCS#11 device cannot approach, and a wall clock that does not jump back across a restart).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass

WRITTEN = "written"
DELETED = "deleted"
RESYNC = "resync"
HEARTBEAT = "heartbeat"


@dataclass(frozen=True)
class ChangeRecord:
    kind: str
    path: str
    checksum: str
    sequence: int


class ChangeLog:
    def __init__(self, retain: int = 10000, *, epoch: str | None = None, base: int | None = None) -> None:
        if retain < 1:
            raise ValueError("retain must be at least 1")
        self.epoch = epoch or uuid.uuid4().hex
        self._sequence = time.time_ns() // 1_000_000 * 1024 if base is None else base
        self._history: deque[ChangeRecord] = deque(maxlen=retain)
        self._cond = threading.Condition()
        self._closed = False

    @property
    def sequence(self) -> int:
        """The sequence of the latest change (the epoch's base before any)."""
        return self._sequence

    @property
    def closed(self) -> bool:
        return self._closed

    def record(self, kind: str, path: str, checksum: str = "") -> ChangeRecord:
        with self._cond:
            self._sequence += 1
            rec = ChangeRecord(kind, path, checksum, self._sequence)
            self._history.append(rec)
            self._cond.notify_all()
        return rec

    def _after(self, since: int) -> list[ChangeRecord] | None:
        """Records after ``since``; None when ``since`` cannot be replayed (caller must RESYNC)."""
        if since == self._sequence:
            return []
        if since > self._sequence:
            return None
        oldest = self._history[0].sequence if self._history else self._sequence + 1
        if since < oldest - 1:
            return None
        return [rec for rec in self._history if rec.sequence > since]

    def replay(self, since: int) -> tuple[list[ChangeRecord] | None, int]:
        """(records after ``since`` or None for RESYNC, the current sequence). ``since`` 0 = from now."""
        with self._cond:
            if since == 0:
                return [], self._sequence
            return self._after(since), self._sequence

    def wait_after(self, since: int, timeout: float) -> list[ChangeRecord] | None:
        """Block until there are records after ``since`` (returned), ``timeout`` passes or the log
        closes (both return []), or ``since`` fell out of the history (None)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                records = self._after(since)
                if records is None or records:
                    return records
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return []

    def wake(self) -> None:
        """Wake every waiter (a subscriber went away and should notice)."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """End every subscription (agent shutdown)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
