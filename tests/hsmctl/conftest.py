"""hsmctl end to end: a TLS ``hsmd proxy`` subprocess with a policy file, one real SoftHSM agent,
the sandbox for TokenRequest/TokenReview; hsmctl runs as a subprocess like a user runs it."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.agent import RunningAgent, make_pki
from tests.proxy.conftest import one_agent
from tests.proxy.helpers import ROOT, RunningProxy, mint, start_proxy

POLICY = """
rules:
  - namespaces: [team-a]
    serviceAccounts: [cli]
    paths: ["team-a/**"]
    verbs: [get, list, create, update, delete, import, export]
  - namespaces: [ops]
    paths: ["**"]
    verbs: ["*"]
"""


@dataclass
class Cli:
    proxy: RunningProxy
    agent: RunningAgent
    cacert: str
    kubeconfig: str
    api: Any
    tokens: dict[str, str]
    workdir: Path

    def env(self, who: str | None = "a", **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HSMCTL_")}
        env.update(PYTHONPATH=str(ROOT), HSMCTL_SERVER=self.proxy.url, HSMCTL_CACERT=self.cacert)
        if who:
            env["HSMCTL_TOKEN_FILE"] = self.tokens[who]
        env.update(extra)
        return env

    def run_process(self, *args: str, who: str | None = "a", stdin: bytes | None = None,
                    env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        """hsmctl as its own process, exactly as a user runs it."""
        return subprocess.run([sys.executable, "-m", "hsmd.hsmctl.cli", *args], cwd=ROOT, capture_output=True,
                              input=stdin, env=env or self.env(who), timeout=60, check=False)

    def run(self, *args: str, who: str | None = "a", stdin: bytes | None = None, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[bytes]:
        """hsmctl's ``main`` in this process (same code path, minus interpreter start-up) with its own
        environment, stdin and captured stdout/stderr."""
        from hsmd.hsmctl.cli import main

        out, err = io.BytesIO(), io.BytesIO()
        saved = (sys.stdout, sys.stderr, sys.stdin, dict(os.environ))
        wrappers = (io.TextIOWrapper(out, encoding="utf-8", write_through=True),
                    io.TextIOWrapper(err, encoding="utf-8", write_through=True),
                    io.TextIOWrapper(io.BytesIO(stdin or b""), encoding="utf-8"))
        sys.stdout, sys.stderr, sys.stdin = wrappers
        os.environ.clear()
        os.environ.update(env or self.env(who))
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 2
        finally:
            for wrapper in wrappers:
                wrapper.flush()
                wrapper.detach()  # keep the buffers open after the wrappers go
            sys.stdout, sys.stderr, sys.stdin = saved[0], saved[1], saved[2]
            os.environ.clear()
            os.environ.update(saved[3])
        return subprocess.CompletedProcess(["hsmctl", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="package")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    from hsmd.sandbox import run_sandbox

    base = tmp_path_factory.mktemp("hsmctl")
    pki = make_pki(base / "pki")
    policy = base / "policy.yaml"
    policy.write_text(POLICY)
    with run_sandbox() as sandbox, one_agent(base / "agent") as agent:
        api = sandbox.api_client()
        tokens = {}
        for who, (ns, sa) in {"a": ("team-a", "cli"), "ops": ("ops", "admin"), "b": ("team-b", "cli")}.items():
            path = base / f"{who}.token"
            path.write_text(mint(api, ns, sa))
            tokens[who] = str(path)
        with start_proxy(base / "proxy", agents=[agent.address], kubeconfig=sandbox.kubeconfig,
                         extra=["--policy", str(policy), "--tls-cert", pki.server_cert, "--tls-key", pki.server_key,
                                "--listen", "127.0.0.1:0"]) as proxy:
            yield Cli(proxy, agent, pki.ca, sandbox.kubeconfig, api, tokens, base)
