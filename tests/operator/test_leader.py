"""Leader election on a Lease: never two leaders, a standby takes over when the leader dies, a clean
shutdown hands over at once; and two operator replicas where only the leader reconciles."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hsmd import kube
from hsmd.operator.leader import LeaderElector
from hsmd.sandbox import run_sandbox
from hsmd.service import wait_for_ready_file
from tests.operator.stack import Stack, start_operator, wait_until


@pytest.fixture()
def api() -> Iterator[Any]:
    with run_sandbox() as sandbox:
        client = kube.api_client(sandbox.kubeconfig)
        yield client
        client.close()


class Candidate:
    def __init__(self, api: Any, identity: str, log: list[tuple[float, str, str]], lock: threading.Lock) -> None:
        self.stop = threading.Event()
        self.identity = identity
        self.log = log
        self.lock = lock
        self.elector = LeaderElector(api, namespace="default", name="test-lease", identity=identity,
                                     lease_duration=2.0, renew_deadline=1.5, retry_period=0.2,
                                     on_started_leading=lambda: self.note("start"),
                                     on_stopped_leading=lambda: self.note("stop"))
        self.thread = threading.Thread(target=self.elector.run, args=(self.stop,), daemon=True)

    def note(self, what: str) -> None:
        with self.lock:
            self.log.append((time.monotonic(), self.identity, what))


def leaders(candidates: list[Candidate]) -> list[str]:
    return [c.identity for c in candidates if c.elector.is_leader]


def test_one_leader_then_handover(api: Any) -> None:
    log: list[tuple[float, str, str]] = []
    lock = threading.Lock()
    candidates = [Candidate(api, f"c{i}", log, lock) for i in range(3)]
    for c in candidates:
        c.thread.start()
    try:
        wait_until(lambda: len(leaders(candidates)) == 1, 10, "one leader")
        end = time.monotonic() + 2
        while time.monotonic() < end:
            assert len(leaders(candidates)) <= 1
            time.sleep(0.05)
        (first,) = [c for c in candidates if c.elector.is_leader]
        # clean shutdown releases the lease: another candidate leads well before it would expire
        first.stop.set()
        first.thread.join(5)
        t0 = time.monotonic()
        wait_until(lambda: len(leaders(candidates)) == 1, 10, "a new leader")
        assert time.monotonic() - t0 < 2.0
        # the first leader had stopped leading before the second one started
        with lock:
            events = list(log)
        starts = [(when, who) for when, who, what in events if what == "start"]
        stops = {who: when for when, who, what in events if what == "stop"}
        assert len(starts) == 2
        (first_start, first_who), (second_start, second_who) = sorted(starts)
        assert first_who == first.identity and second_who != first_who
        assert first_start < stops[first_who] <= second_start
    finally:
        for c in candidates:
            c.stop.set()
        for c in candidates:
            c.thread.join(5)


@pytest.mark.slow
def test_two_operator_replicas_only_the_leader_reconciles(base_stack: Stack, names: str) -> None:
    flags = ["--leader-elect", "--lease-namespace", "default", "--lease-duration", "4", "--renew-deadline", "3",
             "--retry-period", "0.5"]
    workdir = base_stack.workdir / "replicas"
    client = base_stack.client()
    client.write(base_stack.path(f"{names}-1"), {"k": b"one"})
    client.write(base_stack.path(f"{names}-2"), {"k": b"two"})
    with start_operator(base_stack.kubeconfig, [base_stack.agent.address], workdir, *flags, "--identity", "a") as a, \
            start_operator(base_stack.kubeconfig, [base_stack.agent.address], workdir, *flags, "--identity", "b") as b:
        def leader_of() -> Any:
            states = {op: wait_for_ready_file(op.ready_file, 5).get("leader") for op in (a, b)}
            winners = [op for op, is_leader in states.items() if is_leader]
            return winners[0] if len(winners) == 1 else None

        leader = wait_until(leader_of, 30, "one replica to lead")
        follower = b if leader is a else a
        base_stack.create(f"{names}-1")
        base_stack.wait_data(f"{names}-1", {"k": b"one"}, timeout=90)
        assert leader.ansible_runs() >= 1
        assert follower.ansible_runs() == 0
        assert follower.metric_sum("hsmd_reconcile_total") == 0
        assert follower.metric_sum("hsmd_leader") == 0 and leader.metric_sum("hsmd_leader") == 1

        leader.stop(signal.SIGKILL)  # no release: the standby waits out the lease, then takes over
        wait_until(lambda: follower.metric_sum("hsmd_leader") == 1, 30, "the standby to take over")
        base_stack.create(f"{names}-2")
        base_stack.wait_data(f"{names}-2", {"k": b"two"}, timeout=90)
        assert follower.ansible_runs() >= 1
