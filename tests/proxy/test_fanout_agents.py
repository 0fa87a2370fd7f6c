"""hsmd.fanout.AgentSet against a pool of three real agents on SoftHSM tokens: quorum writes,
an unreachable agent (SIGSTOP: the address stays, calls time out), repair after it returns,
disagreement between devices, deletes."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from hsmd.agent.client import AgentClient
from hsmd.errors import AlreadyExists, NotFound, Unavailable
from hsmd.fanout import AgentSet
from hsmd.model import Secret, SecretMetadata
from tests.fixtures.agent import RunningAgent


@pytest.fixture
def agent_set(three_agents: list[RunningAgent]) -> Iterator[AgentSet]:
    s = AgentSet.from_addresses([a.address for a in three_agents], timeout=1.5)
    yield s
    s.close()


@pytest.fixture
def direct(three_agents: list[RunningAgent]) -> Iterator[list[AgentClient]]:
    clients = [AgentClient(a.address, timeout=5) for a in three_agents]
    yield clients
    for c in clients:
        c.close()


@contextmanager
def paused(agent: RunningAgent) -> Iterator[None]:
    """The agent process stops answering (its address stays the same), then resumes."""
    os.kill(agent.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(agent.process.pid, signal.SIGCONT)


def test_write_reaches_every_device_and_reads_agree(agent_set: AgentSet, direct: list[AgentClient]) -> None:
    data = {"password": b"\x00\x01binary\xff", "user": b"app"}
    outcome = agent_set.write("fan/db", data, SecretMetadata(description="db"))
    assert outcome.ok and outcome.succeeded == 3 and outcome.changed
    assert {c.checksum("fan/db") for c in direct} == {outcome.checksum}
    read = agent_set.read("fan/db")
    assert read.require().data == data and not read.disagreement and read.resolved_by == "unanimous"
    assert read.require().metadata.created_at  # stamped: the "newest" rule relies on it
    again = agent_set.write("fan/db", data, SecretMetadata(description="db"), create_only=True)
    assert not again.ok and isinstance(again.error, AlreadyExists)
    assert agent_set.list_paths("fan").paths == ["fan/db"]


def test_unreachable_minority_is_repaired(three_agents: list[RunningAgent], agent_set: AgentSet,
                                          direct: list[AgentClient]) -> None:
    with paused(three_agents[2]):
        outcome = agent_set.write("fan/repair", {"k": b"v1"})
        assert outcome.ok and outcome.succeeded == 2
        assert outcome.repair_queued == (three_agents[2].address,)
        failed = outcome.agents[2]
        assert not failed.ok and failed.error is not None and failed.error.temporary
        assert [i.path for i in agent_set.pending_repairs()] == ["fan/repair"]
    # The write reached the paused agent's socket; grpc-timeout is relative, so on resume the agent
    # may still perform it if it sees the request before the client's cancellation. Either way the
    # agent holds nothing but v1, and the repair (idempotent) settles it.
    with contextlib.suppress(NotFound):
        assert direct[2].read("fan/repair").data == {"k": b"v1"}
    assert agent_set.run_repairs() == 1
    assert direct[2].read("fan/repair").data == {"k": b"v1"}
    assert direct[2].checksum("fan/repair") == outcome.checksum
    assert agent_set.pending_repairs() == []


def test_unreachable_majority_fails_and_queues_nothing(three_agents: list[RunningAgent], agent_set: AgentSet) -> None:
    with paused(three_agents[1]), paused(three_agents[2]):
        outcome = agent_set.write("fan/noquorum", {"k": b"v"})
    assert not outcome.ok and isinstance(outcome.error, Unavailable)
    assert outcome.succeeded == 1 and agent_set.pending_repairs() == []


def test_a_diverged_device_is_outvoted_and_reported(agent_set: AgentSet, direct: list[AgentClient]) -> None:
    agent_set.write("fan/diverge", {"k": b"agreed"})
    direct[0].write("fan/diverge", {"k": b"stray"}, SecretMetadata(created_at="2999-01-01T00:00:00Z"))
    read = agent_set.read("fan/diverge")
    assert read.require().data == {"k": b"agreed"}
    assert read.disagreement and read.resolved_by == "majority"
    checksum, resolved, _ = agent_set.checksum("fan/diverge")
    assert checksum == read.require().checksum and resolved is not None
    outcomes = agent_set.read_many_outcomes(["fan/diverge", "fan/none"])
    assert outcomes["fan/diverge"].require().data == {"k": b"agreed"}
    assert outcomes["fan/diverge"].disagreement and outcomes["fan/diverge"].report() is not None
    assert outcomes["fan/none"].secret is None
    # the AgentClient-shaped answers: Secret or error per path, absent paths left out of checksums
    many = agent_set.read_many(["fan/diverge", "fan/none"])
    diverged = many["fan/diverge"]
    assert isinstance(diverged, Secret) and diverged.data == {"k": b"agreed"}
    assert isinstance(many["fan/none"], NotFound)
    assert agent_set.checksums(["fan/diverge", "fan/none"]) == {"fan/diverge": diverged.checksum}
    assert agent_set.checksums(prefix="fan/diverge") == {"fan/diverge": diverged.checksum}


def test_a_partial_outage_is_unavailable_never_absent(three_agents: list[RunningAgent],
                                                      direct: list[AgentClient]) -> None:
    """Absent on the agents that answered while another is silent: Unavailable, not NotFound or
    left out (the silent one may hold it, and hsmd.sync would otherwise delete a Secret)."""
    agent_set = AgentSet.from_addresses([a.address for a in three_agents], timeout=0.5)
    try:
        _partial_outage(three_agents, agent_set, direct)
    finally:
        agent_set.close()


def _partial_outage(three_agents: list[RunningAgent], agent_set: AgentSet, direct: list[AgentClient]) -> None:
    agent_set.write("fan/outage-kept", {"k": b"v"})
    agent_set.write("fan/outage-gone", {"k": b"v"})
    for client in direct[:2]:
        client.delete("fan/outage-gone")  # only the agent about to fall silent still holds it
    kept = direct[0].checksum("fan/outage-kept")
    with paused(three_agents[2]):
        many = agent_set.read_many(["fan/outage-kept", "fan/outage-gone"])
        sums = agent_set.checksums(["fan/outage-kept", "fan/outage-gone"])
        with pytest.raises(Unavailable):
            agent_set.checksums(prefix="fan")  # a silent agent's paths cannot be named
    assert isinstance(many["fan/outage-kept"], Secret) and many["fan/outage-kept"].checksum == kept
    assert isinstance(many["fan/outage-gone"], Unavailable)
    assert sums["fan/outage-kept"] == kept and isinstance(sums["fan/outage-gone"], Unavailable)
    # every agent answering again: the mirrors disagree and the read decides (two of three: deleted)
    assert agent_set.checksums(["fan/outage-gone"]) == {}
    assert isinstance(agent_set.read_many(["fan/outage-gone"])["fan/outage-gone"], NotFound)
    for client in direct:
        client.delete("fan/outage-kept")
    assert isinstance(agent_set.read_many(["fan/outage-kept"])["fan/outage-kept"], NotFound)
    assert agent_set.checksums(["fan/outage-kept"]) == {}


def test_deletes(agent_set: AgentSet, direct: list[AgentClient]) -> None:
    agent_set.write("fan/del", {"a": b"1", "b": b"2"})
    outcome = agent_set.delete("fan/del", "a")
    assert outcome.ok and outcome.checksum == direct[1].checksum("fan/del")
    assert all(c.read("fan/del").data == {"b": b"2"} for c in direct)
    assert agent_set.delete("fan/del").ok
    missing = agent_set.delete("fan/del")
    assert not missing.ok and isinstance(missing.error, NotFound)
