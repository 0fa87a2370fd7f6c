"""WatchChanges over real gRPC (events in device order, prefix filter, resume, RESYNC, heartbeats),
and the ChangeLog behind it."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from hsmd import model
from hsmd.agent.changes import DELETED, WRITTEN, ChangeLog
from hsmd.agent.client import AgentClient, Change, ChangeStream


class Collector:
    """Drains a ChangeStream on a thread so tests can wait with a timeout."""

    def __init__(self, stream: ChangeStream) -> None:
        self.stream = stream
        self.events: queue.Queue[Change | BaseException] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for change in self.stream:
                self.events.put(change)
        except BaseException as exc:
            self.events.put(exc)

    def next(self, timeout: float = 5.0, *, skip_heartbeats: bool = True) -> Change:
        deadline = time.monotonic() + timeout
        while True:
            item = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            if isinstance(item, BaseException):
                raise item
            if skip_heartbeats and item.kind == "heartbeat":
                continue
            return item

    def stop(self) -> None:
        self.stream.stop()
        self.thread.join(5)


def test_changes_in_order_filtered_by_prefix(shared_client: AgentClient, prefix: str) -> None:
    watch = Collector(shared_client.watch_changes(prefix=prefix))
    try:
        first = watch.next(skip_heartbeats=False)
        assert first.kind == "heartbeat" and first.epoch and first.sequence > 0

        shared_client.write(f"{prefix}/a", {"k": b"1"})
        shared_client.write(f"{prefix}/a", {"k": b"1"})  # unchanged: no event
        shared_client.write(f"other-{prefix}/b", {"k": b"1"})  # outside the prefix
        shared_client.write(f"{prefix}2/c", {"k": b"1"})  # not under the prefix either (whole segments)
        shared_client.write(f"{prefix}/a", {"k": b"1", "j": b"2"})
        shared_client.delete(f"{prefix}/a", "j")
        shared_client.delete(f"{prefix}/a")

        got = [watch.next() for _ in range(4)]
        assert [(c.kind, c.path) for c in got] == [("written", f"{prefix}/a")] * 3 + [("deleted", f"{prefix}/a")]
        assert got[0].checksum == model.checksum({"k": b"1"})
        assert got[1].checksum == model.checksum({"k": b"1", "j": b"2"})
        assert got[2].checksum == model.checksum({"k": b"1"})  # after deleting key j
        assert all(c.epoch == first.epoch for c in got)
        assert [c.sequence for c in got] == sorted(c.sequence for c in got)
        assert got[0].sequence > first.sequence

        # idle streams get heartbeats (the shared agent runs with --heartbeat-interval 0.5)
        beat = watch.next(timeout=3, skip_heartbeats=False)
        assert beat.kind == "heartbeat" and beat.sequence >= got[-1].sequence
    finally:
        watch.stop()

    # resume after the first event: the rest is replayed
    resumed = Collector(shared_client.watch_changes(prefix=prefix, since=got[0].sequence))
    try:
        assert resumed.next(skip_heartbeats=False).kind == "heartbeat"
        assert [(c.kind, c.sequence) for c in (resumed.next() for _ in range(3))] == [
            (c.kind, c.sequence) for c in got[1:]
        ]
    finally:
        resumed.stop()


def test_resync_when_since_is_not_in_history(shared_client: AgentClient) -> None:
    for since in (1, 2**63):  # older than the history (e.g. an earlier agent process), or from the future
        watch = Collector(shared_client.watch_changes(since=since))
        try:
            first = watch.next(skip_heartbeats=False)
            assert first.kind == "resync" and first.sequence > 0
        finally:
            watch.stop()


def test_stop_ends_iteration(shared_client: AgentClient) -> None:
    stream = shared_client.watch_changes()
    assert next(stream).kind == "heartbeat"
    stream.stop()
    with pytest.raises(StopIteration):
        next(stream)


def test_concurrent_writes_report_the_final_state_last(shared_client: AgentClient, prefix: str) -> None:
    path = f"{prefix}/race"
    watch = Collector(shared_client.watch_changes(prefix=path))
    try:
        watch.next(skip_heartbeats=False)
        threads = [
            threading.Thread(target=shared_client.write, args=(path, {"n": str(n).encode()})) for n in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        final = shared_client.checksum(path)
        events: list[Change] = []
        while not events or events[-1].checksum != final:
            events.append(watch.next(timeout=5))
        assert all(e.kind == "written" for e in events)
    finally:
        watch.stop()


# --- ChangeLog (pure) -----------------------------------------------------------------------


def test_changelog_replay_and_resync_rules() -> None:
    log = ChangeLog(retain=3, base=100)
    assert log.replay(0) == ([], 100)
    recs = [log.record(WRITTEN, f"p{i}", "c") for i in range(5)]  # 101..105, history keeps 103..105
    assert [r.sequence for r in recs] == [101, 102, 103, 104, 105]
    assert log.replay(105) == ([], 105)
    replay, _ = log.replay(102)
    assert replay is not None and [r.sequence for r in replay] == [103, 104, 105]
    assert log.replay(101)[0] is None  # 102 fell out of the history
    assert log.replay(106)[0] is None  # from the future: another epoch
    assert log.wait_after(105, 0.01) == []
    log.record(DELETED, "p9")
    waited = log.wait_after(105, 0.01)
    assert waited is not None and [(r.kind, r.sequence) for r in waited] == [(DELETED, 106)]


def test_changelog_wakes_waiters_and_closes() -> None:
    log = ChangeLog(base=0)
    results: list[object] = []
    t = threading.Thread(target=lambda: results.append(log.wait_after(0, 10)))
    t.start()
    time.sleep(0.05)
    log.record(WRITTEN, "x", "c")
    t.join(2)
    assert results and results[0] and results[0][0].path == "x"  # type: ignore[index]
    t = threading.Thread(target=lambda: results.append(log.wait_after(1, 10)))
    t.start()
    time.sleep(0.05)
    started = time.monotonic()
    log.close()
    t.join(2)
    assert time.monotonic() - started < 1 and results[-1] == []


def test_new_epoch_sequences_start_above_old_ones() -> None:
    first = ChangeLog()
    for _ in range(50):
        first.record(WRITTEN, "p")
    time.sleep(0.002)
    second = ChangeLog()
    assert second.sequence > first.sequence and second.epoch != first.epoch
    assert second.replay(first.sequence)[0] is None
