"""Shared pytest configuration. Fixtures live in tests/fixtures/, one plugin per component:

- softhsm.py: throwaway SoftHSM2 tokens (SOFTHSM2_CONF in a temp dir)
- agent.py:   a real ``hsmd agent`` on port 0 over real gRPC (plain and mTLS) and its client
- sandbox.py: a running sandbox Kubernetes API server and clients for it
"""

import os

# Tests hold gRPC channels while ansible-runner forks ansible-playbook; see hsmd/agent/__init__.py.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

pytest_plugins = [
    "tests.fixtures.softhsm",
    "tests.fixtures.agent",
    "tests.fixtures.sandbox",
]
