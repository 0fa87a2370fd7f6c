"""Shared fixtures for the broker tests: a pool of three real SoftHSM agents (subprocesses on
port 0) and a sandbox API server (TokenRequest/TokenReview, ConfigMaps), both for the package."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent import RunningAgent, make_agent_token, start_agent


@contextlib.contextmanager
def one_agent(directory: Path) -> Iterator[RunningAgent]:
    tok = make_agent_token(directory / "token")
    with start_agent(tok.token, pin_file=tok.pin_file, workdir=directory / "agent") as running:
        yield running


@pytest.fixture(scope="package")
def three_agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RunningAgent]]:
    """Three real agents, each on its own SoftHSM token: one pool of three mirrored devices."""
    base = tmp_path_factory.mktemp("pool3")
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(one_agent(base / f"a{i}")) for i in range(3)]


@pytest.fixture(scope="package")
def broker_sandbox() -> Iterator[Any]:
    """A sandbox API server (hsmd.sandbox.run_sandbox) for TokenReview, TokenRequest, ConfigMaps."""
    from hsmd.sandbox import run_sandbox

    with run_sandbox() as handle:
        yield handle
