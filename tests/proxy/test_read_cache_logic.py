"""hsmd.fanout's per-agent read cache, pure logic: in-memory agents (tests/proxy/fakes.py) and an
in-test change stream, so races are set up as facts (a read held inside the agent, a stream that
breaks on cue) rather than timing guesses. The same behaviour against real agents and a real
broker is in test_read_cache.py."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from hsmd.agent.client import Change
from hsmd.changestream import ChangeSubscriber
from hsmd.errors import HsmdError, NotFound, Unavailable
from hsmd.fanout import AgentReadCache, AgentSet, ReadCacheSettings
from hsmd.model import Secret
from tests.proxy.fakes import FakeAgent
from tests.proxy.helpers import wait_until

SETTINGS = ReadCacheSettings(ttl=30.0)


class CountingAgent(FakeAgent):
    """Counts agent calls; while ``gate`` is set, a read waits on it after it took its answer."""

    def __init__(self, address: str, **values: bytes) -> None:
        super().__init__(address)
        self.reads: list[str] = []
        self.batches: list[tuple[str, ...]] = []
        self.gate: threading.Event | None = None
        self.inside = threading.Event()
        self.write_gate: threading.Event | None = None
        for path, value in values.items():
            super().write(path.replace("_", "/"), {"k": value})

    def read(self, path: str) -> Secret:
        self.reads.append(path)
        gate = self.gate
        answer = super().read(path)
        if gate is not None:
            self.inside.set()
            gate.wait(10)
        return answer

    def write(self, path: str, data: Any, metadata: Any = None, **kw: Any) -> Any:
        gate = self.write_gate
        if gate is not None:
            self.inside.set()
            gate.wait(10)
        return super().write(path, data, metadata, **kw)

    def read_many(self, paths: Sequence[str]) -> dict[str, Secret | HsmdError]:
        self.batches.append(tuple(paths))
        self._up()
        out: dict[str, Secret | HsmdError] = {}
        for path in paths:
            try:
                out[path] = FakeAgent.read(self, path)
            except NotFound as exc:
                out[path] = exc
        return out

    def behind_the_back(self, path: str, value: bytes | None) -> None:
        """A change the broker does not make (another broker replica, the operator, pkcs11-tool)."""
        if value is None:
            FakeAgent.delete(self, path)
        else:
            FakeAgent.write(self, path, {"k": value})


def cache_of(agent_set: AgentSet, address: str) -> AgentReadCache:
    found = agent_set.read_cache_of(address)
    assert found is not None
    return found


def live_set(*agents: FakeAgent) -> AgentSet:
    """An AgentSet with the read cache on and every agent's change stream marked connected."""
    agent_set = AgentSet(list(agents), read_cache=SETTINGS)
    for agent in agents:
        cache_of(agent_set, agent.address).on_connection(agent.address, True)
    return agent_set


def stats(agent_set: AgentSet, address: str) -> dict[str, Any]:
    return cache_of(agent_set, address).stats()


def change(kind: str, path: str = "", sequence: int = 0, epoch: str = "e1") -> Change:
    return Change(kind=kind, path=path, checksum="", sequence=sequence, epoch=epoch)


def test_off_by_default_and_with_a_zero_ttl() -> None:
    agent = CountingAgent("a:1", s_one=b"v1")
    for agent_set in (AgentSet([agent]), AgentSet([agent], read_cache=ReadCacheSettings(ttl=0))):
        assert agent_set.read_cache is None and agent_set.read_cache_stats() is None
        assert agent_set.read_cache_of("a:1") is None
        agent_set.read("s/one")
        agent_set.read("s/one")
    assert agent.reads == ["s/one"] * 4


def test_hits_skip_the_agent_and_answer_like_the_agent() -> None:
    agent = CountingAgent("a:1", s_one=b"v1")
    agent_set = live_set(agent)
    first = agent_set.read("s/one")
    second = agent_set.read("s/one")
    assert agent.reads == ["s/one"]  # the second read never reached the agent
    assert first == second == AgentSet([agent]).read("s/one")
    assert (stats(agent_set, "a:1")["hits"], stats(agent_set, "a:1")["fills"]) == (1, 1)


def test_resolution_runs_on_every_read_with_per_agent_hits() -> None:
    agents = [CountingAgent(f"a:{i}", s_one=b"v1") for i in range(3)]
    agent_set = live_set(*agents)
    agent_set.read("s/one")
    agents[2].behind_the_back("s/one", b"stray")
    cache_of(agent_set, "a:2").on_change("a:2", change("written", "s/one"))
    outcome = agent_set.read("s/one")
    assert [len(a.reads) for a in agents] == [1, 1, 2]  # only the invalidated agent was asked again
    assert outcome.require().data == {"k": b"v1"} and outcome.resolved_by == "majority" and outcome.disagreement


def test_fresh_reads_ask_the_agents() -> None:
    agent = CountingAgent("a:1", s_one=b"v1")
    agent_set = live_set(agent)
    agent_set.read("s/one")
    agent.behind_the_back("s/one", b"v2")
    assert agent_set.read("s/one").require().data == {"k": b"v1"}  # no change event: the TTL bounds it
    assert agent_set.read("s/one", fresh=True).require().data == {"k": b"v2"}
    assert agent_set.read("s/one").require().data == {"k": b"v2"}  # and the fresh answer refilled it


def test_nothing_is_served_or_filled_until_the_stream_connects() -> None:
    agent = CountingAgent("a:1", s_one=b"v1")
    agent_set = AgentSet([agent], read_cache=SETTINGS)
    for _ in range(3):
        agent_set.read("s/one")
    assert agent.reads == ["s/one"] * 3
    assert stats(agent_set, "a:1")["fills"] == 0 and stats(agent_set, "a:1")["bypassed"] == 3
    assert stats(agent_set, "a:1")["live"] is False


def test_not_found_and_errors_are_never_cached() -> None:
    agent = CountingAgent("a:1")
    agent_set = live_set(agent)
    for _ in range(2):
        with pytest.raises(NotFound):
            agent_set.read("s/none").require()
    agent.down = True
    with pytest.raises(Unavailable):
        agent_set.read("s/none")
    assert stats(agent_set, "a:1")["entries"] == 0 and agent.reads == ["s/none"] * 3


def test_own_writes_and_deletes_are_seen_at_once() -> None:
    agent = CountingAgent("a:1", s_one=b"v1")
    agent_set = live_set(agent)
    agent_set.read("s/one")
    assert agent_set.write("s/one", {"k": b"v2"}).ok
    assert agent_set.read("s/one").require().data == {"k": b"v2"}
    assert agent_set.delete("s/one").ok
    with pytest.raises(NotFound):
        agent_set.read("s/one").require()


def test_a_failed_write_invalidates_too() -> None:
    agent = CountingAgent("a:1", s_one=b"v1")
    agent_set = live_set(agent)
    agent_set.read("s/one")
    agent.behind_the_back("s/one", b"behind")
    outcome = agent_set.write("s/one", {"k": b"v2"}, expected_checksum="sha256:" + "0" * 64)
    assert not outcome.ok
    assert agent_set.read("s/one").require().data == {"k": b"behind"}


def hold_a_read(agent_set: AgentSet, agent: CountingAgent, path: str) -> tuple[threading.Thread, threading.Event,
                                                                               list[Secret]]:
    """Start a read of ``path`` that took the agent's answer and waits before returning it."""
    gate = threading.Event()
    agent.gate, agent.inside = gate, threading.Event()
    got: list[Secret] = []
    reader = threading.Thread(target=lambda: got.append(agent_set.read(path).require()))
    reader.start()
    assert agent.inside.wait(5)
    agent.gate = None
    return reader, gate, got


def test_a_read_that_raced_a_write_never_refills_the_old_value() -> None:
    agent = CountingAgent("a:1", s_one=b"old")
    agent_set = live_set(agent)
    reader, gate, got = hold_a_read(agent_set, agent, "s/one")
    assert agent_set.write("s/one", {"k": b"new"}).ok
    gate.set()
    reader.join(5)
    assert got[0].data == {"k": b"old"}  # that read answers what it read, but may not cache it
    assert stats(agent_set, "a:1")["refused"] == 1
    assert agent_set.read("s/one").require().data == {"k": b"new"}


def test_a_read_during_a_write_is_dropped_when_the_write_finishes() -> None:
    agent = CountingAgent("a:1", s_one=b"old")
    agent_set = live_set(agent)
    gate = threading.Event()
    agent.write_gate, agent.inside = gate, threading.Event()
    writer = threading.Thread(target=lambda: agent_set.write("s/one", {"k": b"new"}))
    writer.start()
    assert agent.inside.wait(5)  # the write is on its way to the agent, not yet applied
    agent.write_gate = None
    assert agent_set.read("s/one").require().data == {"k": b"old"}  # filled after the write began ...
    gate.set()
    writer.join(5)
    assert agent_set.read("s/one").require().data == {"k": b"new"}  # ... and dropped when it finished


def test_a_read_that_raced_a_change_event_never_refills_the_old_value() -> None:
    agent = CountingAgent("a:1", s_one=b"old")
    agent_set = live_set(agent)
    reader, gate, _ = hold_a_read(agent_set, agent, "s/one")
    agent.behind_the_back("s/one", b"new")
    cache_of(agent_set, "a:1").on_change("a:1", change("written", "s/one"))
    gate.set()
    reader.join(5)
    assert agent_set.read("s/one").require().data == {"k": b"new"}


def test_a_fill_whose_ticket_predates_a_reconnect_is_refused() -> None:
    agent = CountingAgent("a:1", s_one=b"old")
    agent_set = live_set(agent)
    cache = cache_of(agent_set, "a:1")
    reader, gate, _ = hold_a_read(agent_set, agent, "s/one")
    cache.on_connection("a:1", False)
    agent.behind_the_back("s/one", b"new")  # while the stream was down: no event will ever say so
    cache.on_connection("a:1", True)
    gate.set()
    reader.join(5)
    assert stats(agent_set, "a:1")["refused"] == 1 and stats(agent_set, "a:1")["entries"] == 0
    assert agent_set.read("s/one").require().data == {"k": b"new"}


def test_a_broken_stream_clears_and_stops_the_cache_until_it_reconnects() -> None:
    agent = CountingAgent("a:1", s_one=b"v1")
    agent_set = live_set(agent)
    cache = cache_of(agent_set, "a:1")
    agent_set.read("s/one")
    cache.on_connection("a:1", False)
    assert stats(agent_set, "a:1")["entries"] == 0
    agent_set.read("s/one")
    agent_set.read("s/one")
    assert agent.reads == ["s/one"] * 3 and stats(agent_set, "a:1")["entries"] == 0  # neither served nor filled
    cache.on_connection("a:1", True)
    agent_set.read("s/one")
    agent_set.read("s/one")
    assert agent.reads == ["s/one"] * 4


def test_resync_clears() -> None:
    agent = CountingAgent("a:1", s_one=b"v1", s_two=b"v2")
    agent_set = live_set(agent)
    agent_set.read("s/one")
    agent_set.read("s/two")
    cache_of(agent_set, "a:1").on_resync("a:1", "agent restarted")
    assert stats(agent_set, "a:1")["entries"] == 0 and stats(agent_set, "a:1")["clears"] >= 2


def test_read_many_asks_each_agent_only_for_its_misses() -> None:
    agents = [CountingAgent(f"a:{i}", s_one=b"1", s_two=b"2", s_three=b"3") for i in range(2)]
    agent_set = live_set(*agents)
    agent_set.read("s/one")
    cache_of(agent_set, "a:1").invalidate("s/one")
    answers = agent_set.read_many(["s/one", "s/two", "s/none"])
    assert agents[0].batches == [("s/two", "s/none")]
    assert agents[1].batches == [("s/one", "s/two", "s/none")]
    assert isinstance(answers["s/none"], NotFound)
    assert {p: a.data for p, a in answers.items() if isinstance(a, Secret)} == {"s/one": {"k": b"1"},
                                                                               "s/two": {"k": b"2"}}
    again = agent_set.read_many(["s/one", "s/two"])
    assert len(agents[0].batches) == len(agents[1].batches) == 1 and again == {
        p: a for p, a in answers.items() if p != "s/none"}


def test_read_many_with_a_failing_agent_keeps_its_hits() -> None:
    agents = [CountingAgent(f"a:{i}", s_one=b"1", s_two=b"2") for i in range(2)]
    agent_set = live_set(*agents)
    agent_set.read("s/one")
    for agent in agents:
        agent.down = True
    answers = agent_set.read_many(["s/one", "s/two"])
    assert isinstance(answers["s/one"], Secret) and isinstance(answers["s/two"], Unavailable)


def test_membership_change_drops_the_caches_of_removed_agents() -> None:
    made: dict[str, CountingAgent] = {}

    def factory(address: str) -> CountingAgent:
        made[address] = CountingAgent(address, s_one=b"v")
        return made[address]

    agent_set = AgentSet([factory("a:1"), factory("a:2")], factory=factory, read_cache=SETTINGS)
    old = cache_of(agent_set, "a:2")
    old.on_connection("a:2", True)
    assert agent_set.set_addresses(["a:1", "a:3"])
    assert agent_set.read_cache_of("a:2") is None and agent_set.read_cache_of("a:3") is not None
    assert old.live is False
    assert agent_set.set_addresses(["a:1", "a:2"])
    assert agent_set.read_cache_of("a:2") is not old
    stats_json = agent_set.read_cache_stats()
    assert stats_json is not None and [a["agent"] for a in stats_json["agents"]] == ["a:1", "a:2"]


# --- the change stream drives the cache (ChangeSubscriber, with an in-test stream) --------------


class ScriptedStream:
    """A change stream fed by the test: put Changes, or an exception to break it."""

    def __init__(self) -> None:
        self.events: queue.Queue[Change | BaseException | None] = queue.Queue()

    def __iter__(self) -> ScriptedStream:
        return self

    def __next__(self) -> Change:
        event = self.events.get(timeout=10)
        if event is None:
            raise StopIteration
        if isinstance(event, BaseException):
            raise event
        return event

    def stop(self) -> None:
        self.events.put(None)


class StreamingAgent(CountingAgent):
    def __init__(self, address: str, **values: bytes) -> None:
        super().__init__(address, **values)
        self.streams: queue.Queue[ScriptedStream] = queue.Queue()
        self.sinces: list[int] = []

    def watch_changes(self, prefix: str = "", since: int = 0) -> Iterator[Change]:
        self.sinces.append(since)
        stream = ScriptedStream()
        self.streams.put(stream)
        return stream


def test_the_change_stream_drives_the_cache() -> None:
    agent = StreamingAgent("a:1", s_one=b"v1", s_two=b"v2")
    agent_set = AgentSet([agent], read_cache=SETTINGS)
    agent_set.follow_changes()
    try:
        cache = cache_of(agent_set, "a:1")
        stream = agent.streams.get(timeout=5)
        assert not cache.live
        stream.events.put(change("heartbeat", sequence=10))
        wait_until(lambda: cache.live, 5)
        agent_set.read("s/one")
        agent_set.read("s/two")
        agent.behind_the_back("s/one", b"new")
        stream.events.put(change("written", "s/one", sequence=11))
        wait_until(lambda: agent_set.read("s/one").require().data == {"k": b"new"}, 5)
        assert agent_set.read("s/two").require().data == {"k": b"v2"} and agent.reads.count("s/two") == 1

        stream.events.put(Unavailable("connection reset"))  # the stream breaks: cleared, not trusted
        wait_until(lambda: not cache.live, 5)
        assert stats(agent_set, "a:1")["entries"] == 0
        second = agent.streams.get(timeout=5)
        assert agent.sinces == [0, 11]  # resumes after the last sequence seen
        agent.behind_the_back("s/two", b"changed while down")
        second.events.put(change("heartbeat", sequence=12))
        wait_until(lambda: cache.live, 5)
        assert agent_set.read("s/two").require().data == {"k": b"changed while down"}

        agent_set.read("s/two")
        assert stats(agent_set, "a:1")["entries"] == 1
        second.events.put(change("resync", sequence=13))
        wait_until(lambda: stats(agent_set, "a:1")["entries"] == 0, 5)
    finally:
        agent_set.close()
    assert not cache.live


def test_change_subscriber_reports_connection_transitions_once() -> None:
    agent = StreamingAgent("a:1")
    seen: list[tuple[str, object]] = []
    subscriber = ChangeSubscriber(
        agent,
        lambda _a, c: seen.append(("change", c.path)),
        lambda _a, why: seen.append(("resync", why)),
        on_connection=lambda _a, up: seen.append(("up" if up else "down", None)),
        backoff_cap=0.05,
    )
    subscriber.start()
    try:
        first = agent.streams.get(timeout=5)
        first.events.put(change("heartbeat", sequence=5, epoch="e1"))
        first.events.put(change("written", "p", sequence=6, epoch="e1"))
        first.events.put(change("heartbeat", sequence=6, epoch="e1"))
        wait_until(lambda: ("change", "p") in seen, 5)
        first.events.put(Unavailable("gone"))
        second = agent.streams.get(timeout=5)
        second.events.put(change("heartbeat", sequence=100, epoch="e2"))  # a restarted agent
        wait_until(lambda: len(seen) >= 5, 5)
    finally:
        subscriber.stop()
    assert seen == [("up", None), ("change", "p"), ("down", None), ("up", None), ("resync", "agent restarted"),
                    ("down", None)]


def test_a_silent_stream_is_dropped_and_reconnected() -> None:
    """No event, not even the agent's heartbeat, for stale_after seconds: the stream died without a
    word. The subscriber drops it (down), reconnects from the last sequence (up) and the broker's
    cache is cleared on the way."""
    agent = StreamingAgent("a:1", s_one=b"v1")
    transitions: list[bool] = []
    subscriber = ChangeSubscriber(
        agent, lambda _a, _c: None, lambda _a, _w: None,
        on_connection=lambda _a, up: transitions.append(up), backoff_cap=0.05, stale_after=0.5,
    )
    subscriber.start()
    try:
        first = agent.streams.get(timeout=5)
        first.events.put(change("heartbeat", sequence=7, epoch="e1"))
        wait_until(lambda: transitions == [True], 5)
        # ... then nothing: the watchdog gives up on it and a new stream is opened
        second = agent.streams.get(timeout=5)
        second.events.put(change("heartbeat", sequence=7, epoch="e1"))
        wait_until(lambda: transitions == [True, False, True], 5)
        assert agent.sinces == [0, 7]
        # a stream that keeps bringing heartbeats is left alone
        for _ in range(8):
            second.events.put(change("heartbeat", sequence=7, epoch="e1"))
            threading.Event().wait(0.15)
        assert transitions == [True, False, True] and agent.streams.empty()
    finally:
        subscriber.stop()
