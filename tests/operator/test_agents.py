"""What the operator hands the role about its agents, and the AgentGroup it reads through (no I/O:
gRPC channels connect lazily)."""

from __future__ import annotations

from hsmd.fanout import AgentSet
from hsmd.operator.agents import AgentGroup, Agents
from hsmd.operator.controller import agent_vars


def test_every_agent_of_a_group_reaches_the_role() -> None:
    assert agent_vars(()) == {}
    assert agent_vars(("10.0.0.1:9090",)) == {"hsm_secret_agent": "10.0.0.1:9090"}
    assert agent_vars(("10.0.0.1:9090", "10.0.0.2:9090")) == {"hsm_secret_agents": ["10.0.0.1:9090", "10.0.0.2:9090"]}


def test_a_group_is_an_agent_set_keyed_by_its_sorted_addresses() -> None:
    agents = Agents(["127.0.0.1:2", "127.0.0.1:1", "127.0.0.1:2"])
    try:
        group = agents.static
        assert isinstance(group, AgentGroup) and isinstance(group, AgentSet)
        assert group.key == ("127.0.0.1:1", "127.0.0.1:2") and group.addresses == list(group.key)
        assert [c.address for c in group.clients] == list(group.key)
        assert agents.first_address() == "127.0.0.1:1"
        assert agent_vars(group.key) == {"hsm_secret_agents": ["127.0.0.1:1", "127.0.0.1:2"]}
    finally:
        agents.close()
