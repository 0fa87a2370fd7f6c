"""The agent: one PKCS#11 token served over gRPC (hsm.v1.HSMAgent), and the client for it.

- ``client``: AgentClient, what every other part of hsmd uses to reach an agent.
- ``cli``: ``hsmd agent``; ``server``: the servicer; ``device`` + ``worker``: the token runs in a
  child process so device calls cannot freeze the server; ``health``: /healthz and /readyz;
  ``pcscd``: pcscd supervision; ``locks``: one agent per token; ``errors``: gRPC status mapping.

Nothing is imported here, so ``hsmd agent`` can configure grpc before it loads.
"""
