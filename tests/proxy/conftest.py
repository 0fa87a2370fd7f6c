"""Shared fixtures for the broker tests: a pool of real SoftHSM agents (subprocesses on port 0)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.agent import RunningAgent, make_agent_token, start_agent


@contextlib.contextmanager
def _one(directory: Path) -> Iterator[RunningAgent]:
    tok = make_agent_token(directory / "token")
    with start_agent(tok.token, pin_file=tok.pin_file, workdir=directory / "agent") as running:
        yield running


@pytest.fixture(scope="module")
def three_agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RunningAgent]]:
    """Three real agents, each on its own SoftHSM token: one pool of three mirrored devices."""
    base = tmp_path_factory.mktemp("pool3")
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(_one(base / f"a{i}")) for i in range(3)]
