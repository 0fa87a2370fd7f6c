"""Fixtures shared by the collection's component tests: a SoftHSM-backed agent per test module and
a client for the session's sandbox with the project CRDs installed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from hsmd.kube import install_crds
from hsmd.sandbox import SandboxHandle
from tests.fixtures.agent import RunningAgent, make_agent_token, start_agent


@pytest.fixture(scope="module")
def module_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    root = tmp_path_factory.mktemp("collection-agent")
    token = make_agent_token(root / "token")
    with start_agent(token.token, pin_file=token.pin_file, workdir=root / "agent", device_profile="softhsm") as agent:
        yield agent


@pytest.fixture(scope="module")
def api(sandbox: SandboxHandle) -> Iterator[Any]:
    client = sandbox.api_client()
    install_crds(client)
    yield client
    client.close()
