"""The work queue: object keys, de-duplicated, retried with per-key exponential backoff, handed out
in batches.

Semantics follow client-go's rate-limited workqueue, plus batching:

- ``add(key)`` of a key already waiting is a no-op (it keeps the earlier due time); of a key being
  processed marks it dirty, and it is queued again when that processing is ``done`` — so a change
  that arrives mid-run is never lost and never processed twice at once;
- ``retry(key)`` re-adds after ``base * 2**(failures-1)`` seconds, capped; ``forget(key)`` resets;
- ``get_batch(max_size, max_wait, idle)`` blocks for the first due key, then waits up to ``max_wait``
  (from when that key became due) for the batch to fill to ``max_size`` - but no longer than
  ``idle`` after the last key arrived: a burst is taken whole as soon as it stops, and a single
  key does not wait the full ``max_wait``.

Keys are opaque hashables; the controller uses (namespace, name).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from hsmd.service import backoff_delay


@dataclass
class Backoff:
    """Per-key exponential backoff: base, 2*base, 4*base ... capped at ``cap`` seconds."""

    base: float = 1.0
    cap: float = 300.0
    _failures: dict[Hashable, int] = field(default_factory=dict)

    def next_delay(self, key: Hashable) -> float:
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        return backoff_delay(failures, self.base, self.cap)

    def failures(self, key: Hashable) -> int:
        return self._failures.get(key, 0)

    def forget(self, key: Hashable) -> None:
        self._failures.pop(key, None)


class WorkQueue:
    def __init__(
        self,
        name: str = "",
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        on_depth: Callable[[str, int], None] | None = None,
    ) -> None:
        self.name = name
        self.backoff = backoff or Backoff()
        self._clock = clock
        self._cond = threading.Condition()
        self._ready: dict[Hashable, float] = {}  # key -> when it became due (insertion ordered)
        self._delayed: dict[Hashable, float] = {}  # key -> due time
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()
        self._processing: set[Hashable] = set()
        self._dirty: dict[Hashable, float] = {}  # key -> delay to apply when its processing ends
        self._shutdown = False
        self._on_depth = on_depth
        self._last_add = 0.0

    # --- producers ---------------------------------------------------------------------------

    def add(self, key: Hashable, delay: float = 0.0) -> None:
        with self._cond:
            if self._shutdown:
                return
            self._add_locked(key, delay)
            self._cond.notify_all()
        self._report()

    def add_many(self, keys: list[Hashable], delay: float = 0.0) -> None:
        if not keys:
            return
        with self._cond:
            if self._shutdown:
                return
            for key in keys:
                self._add_locked(key, delay)
            self._cond.notify_all()
        self._report()

    def retry(self, key: Hashable) -> float:
        """Re-add after the key's next backoff delay; returns the delay."""
        with self._cond:
            delay = self.backoff.next_delay(key)
        self.add(key, delay)
        return delay

    def forget(self, key: Hashable) -> None:
        with self._cond:
            self.backoff.forget(key)

    def failures(self, key: Hashable) -> int:
        with self._cond:
            return self.backoff.failures(key)

    def _add_locked(self, key: Hashable, delay: float) -> None:
        now = self._clock()
        if key in self._processing:
            previous = self._dirty.get(key)
            self._dirty[key] = delay if previous is None else min(previous, delay)
            return
        if key in self._ready:
            return
        due = now + max(0.0, delay)
        if delay <= 0:
            self._delayed.pop(key, None)
            self._ready[key] = now
            self._last_add = now
            return
        current = self._delayed.get(key)
        if current is not None and current <= due:
            return
        self._delayed[key] = due
        heapq.heappush(self._heap, (due, next(self._seq), key))

    # --- consumers ---------------------------------------------------------------------------

    def _promote_locked(self, now: float) -> float | None:
        """Move due delayed keys to ready; return the next delayed due time, if any."""
        while self._heap:
            due, _, key = self._heap[0]
            if self._delayed.get(key) != due:
                heapq.heappop(self._heap)  # stale entry (re-added earlier or already promoted)
                continue
            if due > now:
                return due
            heapq.heappop(self._heap)
            del self._delayed[key]
            if key not in self._ready and key not in self._processing:
                self._ready[key] = due
                self._last_add = max(self._last_add, due)
        return None

    def get_batch(
        self, max_size: int = 1, max_wait: float = 0.0, *, idle: float | None = None, timeout: float | None = None
    ) -> list[Hashable]:
        """Up to ``max_size`` due keys, marked as processing; [] on shutdown or after ``timeout``."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                if self._shutdown:
                    return []
                now = self._clock()
                next_due = self._promote_locked(now)
                wake: float | None = next_due
                if self._ready:
                    first_due = next(iter(self._ready.values()))
                    fill_deadline = first_due + max_wait
                    if idle is not None:
                        fill_deadline = min(fill_deadline, max(first_due, self._last_add) + idle)
                    if len(self._ready) >= max_size or now >= fill_deadline:
                        return self._take_locked(max_size)
                    wake = fill_deadline if wake is None else min(wake, fill_deadline)
                if deadline is not None:
                    if now >= deadline:
                        return []
                    wake = deadline if wake is None else min(wake, deadline)
                self._cond.wait(None if wake is None else max(0.0, wake - now))

    def _take_locked(self, max_size: int) -> list[Hashable]:
        batch: list[Hashable] = []
        for key in list(self._ready)[:max_size]:
            del self._ready[key]
            self._processing.add(key)
            batch.append(key)
        self._report_locked()
        return batch

    def done(self, keys: list[Hashable] | tuple[Hashable, ...]) -> None:
        """Processing of ``keys`` ended; keys added meanwhile are queued again."""
        with self._cond:
            for key in keys:
                self._processing.discard(key)
                if key in self._dirty:
                    self._add_locked(key, self._dirty.pop(key))
            self._cond.notify_all()
        self._report()

    # --- introspection / lifecycle -----------------------------------------------------------

    def depth(self) -> int:
        """Keys waiting (due or delayed), not counting those being processed."""
        with self._cond:
            return len(self._ready) + len(self._delayed)

    def contains(self, key: Hashable) -> bool:
        with self._cond:
            return key in self._ready or key in self._delayed or key in self._processing or key in self._dirty

    def processing(self) -> int:
        with self._cond:
            return len(self._processing)

    def idle(self) -> bool:
        with self._cond:
            return not (self._ready or self._delayed or self._processing or self._dirty)

    def shutdown(self) -> None:
        with self._cond:
            self._shutdown = True
            self._cond.notify_all()

    def _report(self) -> None:
        if self._on_depth is not None:
            with self._cond:
                self._report_locked()

    def _report_locked(self) -> None:
        if self._on_depth is not None:
            self._on_depth(self.name, len(self._ready) + len(self._delayed))
