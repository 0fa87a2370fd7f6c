"""Fixtures for the operator tests: one stack (sandbox + SoftHSM agent + operator) per test module.

Tests in a module share the stack and use their own object names, which keeps the suite within
its time budget; modules that stop agents or kill operators get a stack of their own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hsmd import kube
from hsmd.sandbox import run_sandbox
from tests.fixtures.agent import make_agent_token, start_agent
from tests.operator.stack import Stack, ensure_namespace, start_operator

NAMESPACE = "op-e2e"


@pytest.fixture(scope="module")
def base_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Sandbox + CRDs + namespace + a SoftHSM token behind a real agent; no operator yet."""
    workdir = tmp_path_factory.mktemp("operator-stack")
    with run_sandbox() as sandbox:
        api = kube.api_client(sandbox.kubeconfig)
        kube.install_crds(api)
        ensure_namespace(api, NAMESPACE)
        token = make_agent_token(workdir / "token")
        with start_agent(token.token, pin_file=token.pin_file, workdir=workdir / "agent",
                         device_profile="softhsm") as agent:
            stack = Stack(kubeconfig=sandbox.kubeconfig, api=api, agent=agent, token=token, namespace=NAMESPACE,
                          workdir=workdir, faults=sandbox.faults)
            try:
                yield stack
            finally:
                api.close()


@pytest.fixture(scope="module")
def stack(base_stack: Stack) -> Iterator[Stack]:
    """base_stack plus one operator (static --agent) shared by the module's tests."""
    with start_operator(base_stack.kubeconfig, [base_stack.agent.address], base_stack.workdir / "operator") as op:
        base_stack.operator = op
        try:
            yield base_stack
        finally:
            base_stack.operator = None


@pytest.fixture
def names(request: pytest.FixtureRequest) -> Iterator[str]:
    """A name prefix unique to the test (object names stay DNS labels)."""
    yield request.node.name.replace("_", "-").lower()[:40].strip("-")

