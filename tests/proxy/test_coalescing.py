"""hsmd.fanout.ReadCoalescer: concurrent reads of one agent share RPCs without changing any read's
answer. The ordering cases use an in-test agent whose calls block until released (so "a read is in
flight" is a fact, not a timing guess); the last test runs concurrent reads against three real
agents through AgentSet and checks every answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from hsmd.agent.client import AgentClient
from hsmd.errors import HsmdError, NotFound, Unavailable
from hsmd.fanout import AgentSet, ReadCoalescer
from hsmd.model import Secret, SecretMetadata, checksum
from tests.fixtures.agent import RunningAgent


class GatedAgent:
    """Reads answer from a dict, each call blocking until the test opens its gate."""

    address = "gated:1"

    def __init__(self, additive: bool = True) -> None:
        self.store = {f"p/{i}": {"k": f"v{i}".encode()} for i in range(8)}
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.gates: list[threading.Event] = []
        self.fail_next_batch: HsmdError | None = None
        self._lock = threading.Lock()
        if not additive:
            self.supports_additive = None  # type: ignore[assignment]

    def supports_additive(self) -> bool:
        return True

    def _enter(self, kind: str, paths: Sequence[str]) -> threading.Event:
        gate = threading.Event()
        with self._lock:
            self.calls.append((kind, tuple(paths)))
            self.gates.append(gate)
        return gate

    def _secret(self, path: str) -> Secret:
        if path not in self.store:
            raise NotFound(f"secret {path!r} not found", path=path)
        data = self.store[path]
        return Secret(path, dict(data), SecretMetadata(), checksum(data))

    def read(self, path: str) -> Secret:
        self._enter("read", [path]).wait(10)
        return self._secret(path)

    def read_many(self, paths: Sequence[str]) -> Mapping[str, Secret | HsmdError]:
        self._enter("read_many", paths).wait(10)
        if self.fail_next_batch is not None:
            err, self.fail_next_batch = self.fail_next_batch, None
            raise err
        out: dict[str, Secret | HsmdError] = {}
        for p in paths:
            try:
                out[p] = self._secret(p)
            except NotFound as exc:
                out[p] = exc
        return out

    def open_gate(self, index: int) -> None:
        wait_for(lambda: len(self.gates) > index)
        self.gates[index].set()


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met")
        time.sleep(0.005)


def queued(coalescer: ReadCoalescer) -> int:
    return len(coalescer._queue)


def test_reads_that_wait_go_out_together_and_each_gets_its_own_answer() -> None:
    agent = GatedAgent()
    coalescer = ReadCoalescer(agent)
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(coalescer.read, "p/0")
        wait_for(lambda: len(agent.calls) == 1)  # in flight, blocked at the agent
        waiting = [pool.submit(coalescer.read, p) for p in ("p/1", "p/2", "missing", "p/1")]
        wait_for(lambda: queued(coalescer) == 4)
        assert len(agent.calls) == 1  # nothing else was sent while the first read is in flight
        agent.open_gate(0)
        assert first.result(10).data == {"k": b"v0"}
        agent.open_gate(1)
        assert agent.calls[1] == ("read_many", ("p/1", "p/2", "missing", "p/1"))
        assert waiting[0].result(10).data == {"k": b"v1"} and waiting[3].result(10).data == {"k": b"v1"}
        assert waiting[1].result(10).data == {"k": b"v2"}
        with pytest.raises(NotFound):
            waiting[2].result(10)
    assert coalescer.batches == 1 and not coalescer._busy


def test_a_lone_read_is_sent_at_once_and_a_batch_of_one_is_a_plain_read() -> None:
    agent = GatedAgent()
    coalescer = ReadCoalescer(agent)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(coalescer.read, "p/3")
        wait_for(lambda: len(agent.calls) == 1)
        second = pool.submit(coalescer.read, "p/4")
        wait_for(lambda: queued(coalescer) == 1)
        agent.open_gate(0)
        agent.open_gate(1)
        assert first.result(10).data == {"k": b"v3"} and second.result(10).data == {"k": b"v4"}
    assert [kind for kind, _ in agent.calls] == ["read", "read"] and coalescer.batches == 0


def test_a_failed_batch_fails_each_waiting_read_and_the_next_reads_still_flow() -> None:
    agent = GatedAgent()
    coalescer = ReadCoalescer(agent)
    agent.fail_next_batch = Unavailable("agent gated:1 unreachable")
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(coalescer.read, "p/0")
        wait_for(lambda: len(agent.calls) == 1)
        waiting = [pool.submit(coalescer.read, p) for p in ("p/1", "p/2")]
        wait_for(lambda: queued(coalescer) == 2)
        agent.open_gate(0)
        agent.open_gate(1)
        errors = []
        for future in waiting:
            with pytest.raises(Unavailable) as info:
                future.result(10)
            errors.append(info.value)
        assert errors[0] is not errors[1]  # each thread raises its own instance
        assert first.result(10).data == {"k": b"v0"}
        after = pool.submit(coalescer.read, "p/5")
        agent.open_gate(2)
        assert after.result(10).data == {"k": b"v5"}
    assert not coalescer._busy and not coalescer._queue


def test_agents_without_batch_reads_are_read_one_by_one() -> None:
    agent = GatedAgent(additive=False)
    coalescer = ReadCoalescer(agent)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(coalescer.read, p) for p in ("p/0", "p/1", "p/2")]
        wait_for(lambda: len(agent.calls) == 3)  # all three in flight at once: nothing queues
        for index in range(3):
            agent.open_gate(index)
        assert sorted(f.result(10).data["k"] for f in futures) == [b"v0", b"v1", b"v2"]
    assert {kind for kind, _ in agent.calls} == {"read"}


def test_concurrent_reads_against_real_agents(three_agents: list[RunningAgent]) -> None:
    agents = AgentSet.from_addresses([a.address for a in three_agents], timeout=5, coalesce_reads=True)
    try:
        expected: dict[str, dict[str, bytes] | None] = {"coalesce/missing": None}
        for i in range(12):
            data = {"k": f"value-{i}".encode(), "n": bytes([i, 255 - i])}
            assert agents.write(f"coalesce/s{i:02d}", data).ok
            expected[f"coalesce/s{i:02d}"] = data
        paths = sorted(expected)

        def read(n: int) -> tuple[str, dict[str, bytes] | None]:
            path = paths[n % len(paths)]
            try:
                return path, dict(agents.read(path).require().data)
            except NotFound:
                return path, None

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(read, range(240)))
        assert len(results) == 240
        for path, data in results:
            assert data == expected[path], path
        assert sum(agents._reader(a).batches for a in agents.agents) > 0  # reads did share calls
        with AgentClient(three_agents[0].address) as direct:  # and the agents still hold what was written
            assert dict(direct.read("coalesce/s03").data) == expected["coalesce/s03"]
    finally:
        agents.close()
