"""Shared agents for tests/agent: one token + agent per module (plain and mTLS), so the bulk of the
RPC tests do not pay an agent start each. Tests use unique paths so they do not interfere."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from hsmd.agent.client import AgentClient
from tests.fixtures.agent import RunningAgent, make_agent_token, make_pki, start_agent


@pytest.fixture(scope="module", params=["plain", "mtls"])
def shared_agent(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    base = tmp_path_factory.mktemp(f"agent-{request.param}")
    tok = make_agent_token(base / "token")
    pki = make_pki(base / "pki") if request.param == "mtls" else None
    with start_agent(tok.token, pin_file=tok.pin_file, workdir=base / "agent", tls=pki,
                     heartbeat_interval=0.5) as running:
        yield running


@pytest.fixture(scope="module")
def shared_client(shared_agent: RunningAgent) -> AgentClient:
    return shared_agent.client()


@pytest.fixture
def prefix() -> str:
    """A path prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:10]}"
