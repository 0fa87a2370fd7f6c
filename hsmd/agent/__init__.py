"""The agent: one PKCS#11 token served over gRPC (hsm.v1.HSMAgent), and the client for it.

- ``client``: AgentClient, what every other part of hsmd uses to reach an agent.
- ``cli``: ``hsmd agent``; ``server``: the servicer; ``device`` + ``worker``: the token runs in a
  child process so device calls cannot freeze the server; ``health``: /healthz and /readyz;
  ``pcscd``: pcscd supervision; ``locks``: one agent per token; ``errors``: gRPC status mapping.

Nothing else is imported here, so ``hsmd agent`` can configure grpc before it loads.
"""

import os

# Processes that hold gRPC channels also fork children (ansible-runner's pexpect, the device worker,
# pcscd). None of those children uses gRPC before exec, so gRPC's fork handlers are not needed; with
# them, a child forked while a channel is busy can log epoll errors into the child's output.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
