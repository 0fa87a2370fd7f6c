"""Work queue: dedupe, dirty re-queue, exponential backoff with a cap, batching by size and wait."""

from __future__ import annotations

import threading
import time

from hsmd.operator.workqueue import Backoff, WorkQueue


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_dedupe_and_batch_by_size() -> None:
    q = WorkQueue()
    for key in ["a", "b", "a", "c", "b"]:
        q.add(key)
    assert q.depth() == 3
    assert q.get_batch(max_size=2, max_wait=10) == ["a", "b"]
    assert q.get_batch(max_size=2, max_wait=0) == ["c"]


def test_key_added_while_processing_is_requeued_once_after_done() -> None:
    q = WorkQueue()
    q.add("a")
    assert q.get_batch() == ["a"]
    q.add("a")
    q.add("a")
    assert q.depth() == 0  # not handed out twice at once
    assert q.get_batch(timeout=0.05) == []
    q.done(["a"])
    assert q.get_batch(timeout=1) == ["a"]
    q.done(["a"])
    assert q.idle()


def test_batch_waits_up_to_max_wait_for_more() -> None:
    q = WorkQueue()
    q.add("a")
    threading.Timer(0.05, q.add, args=("b",)).start()
    start = time.monotonic()
    batch = q.get_batch(max_size=10, max_wait=0.3)
    assert sorted(batch) == ["a", "b"]  # type: ignore[type-var]
    assert 0.25 <= time.monotonic() - start < 2


def test_exponential_backoff_with_cap() -> None:
    backoff = Backoff(base=0.5, cap=4.0)
    assert [backoff.next_delay("k") for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.failures("k") == 6
    backoff.forget("k")
    assert backoff.next_delay("k") == 0.5


def test_retry_delays_the_key() -> None:
    clock = FakeClock()
    q = WorkQueue(backoff=Backoff(base=2.0, cap=10.0), clock=clock)
    q.add("a")
    assert q.get_batch() == ["a"]
    q.done(["a"])
    assert q.retry("a") == 2.0
    assert q.get_batch(timeout=0) == []
    clock.now += 2.0
    assert q.get_batch(timeout=0) == ["a"]
    q.done(["a"])
    assert q.retry("a") == 4.0
    q.forget("a")
    assert q.failures("a") == 0


def test_plain_add_beats_a_pending_retry() -> None:
    clock = FakeClock()
    q = WorkQueue(backoff=Backoff(base=60.0), clock=clock)
    q.retry("a")
    q.add("a")
    assert q.get_batch(timeout=0) == ["a"]


def test_shutdown_wakes_consumers() -> None:
    q = WorkQueue()
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(q.get_batch()))
    thread.start()
    time.sleep(0.05)
    q.shutdown()
    thread.join(2)
    assert result == [[]]


def test_depth_callback() -> None:
    seen: list[int] = []
    q = WorkQueue("HSMSecret", on_depth=lambda name, depth: seen.append(depth))
    q.add_many(["a", "b"])
    q.get_batch(max_size=5)
    assert seen[0] == 2 and seen[-1] == 0


def test_a_burst_is_taken_when_it_stops_not_after_max_wait() -> None:
    q = WorkQueue()
    q.add("a")
    threading.Timer(0.1, q.add, args=("b",)).start()
    start = time.monotonic()
    batch = q.get_batch(max_size=10, max_wait=5.0, idle=0.3)
    elapsed = time.monotonic() - start
    assert sorted(batch) == ["a", "b"]  # type: ignore[type-var]
    assert 0.35 <= elapsed < 2.0  # 0.3 s after the last key, far less than max_wait
