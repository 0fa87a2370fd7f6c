"""The operator under test, for real: a sandbox API server, a SoftHSM token behind a real agent
subprocess, and ``hsmd operator`` as a subprocess running the real roles through ansible-runner.

``Stack`` bundles them with the helpers the end-to-end tests share (create HSMSecrets, read
Secrets, wait for conditions, scrape metrics). Every process is stopped by its context manager.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from hsmd import kube
from hsmd.agent.client import AgentClient
from hsmd.service import stop_process, wait_for_ready_file
from tests.fixtures.agent import AgentToken, RunningAgent, start_agent

ROOT = Path(__file__).resolve().parents[2]
HSMSECRETS = f"/apis/{kube.API_VERSION}/namespaces/{{ns}}/hsmsecrets"

# Short periods so the suite stays fast; production defaults are in the cli.
FAST_FLAGS = ["--resync-tick", "1", "--backoff-base", "0.3", "--backoff-cap", "3", "--watch-timeout", "20",
              "--metrics-listen", "127.0.0.1:0", "--ansible-verbosity", "0", "--log-level", "info"]


@dataclass(eq=False)
class OperatorProcess:
    process: subprocess.Popen[bytes]
    ready_file: Path
    log_path: Path
    runner_dir: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def metrics_url(self) -> str:
        return f"http://{self.info['metrics']}/metrics"

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:  # noqa: S310 - loopback
            text = response.read().decode()
        out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def metric_sum(self, name: str, **labels: str) -> float:
        total = 0.0
        for (sample, sample_labels), value in self.metrics().items():
            if sample == name and all(dict(sample_labels).get(k) == v for k, v in labels.items()):
                total += value
        return total

    def ansible_runs(self, kind: str = "HSMSecret") -> float:
        return self.metric_sum("hsmd_ansible_runs_total", kind=kind)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        return stop_process(self.process, timeout, sig)


@contextlib.contextmanager
def start_operator(
    kubeconfig: str, agents: list[str], workdir: Path, *flags: str, wait_ready: bool = True, env: dict[str, str] | None = None
) -> Iterator[OperatorProcess]:
    workdir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:6]
    ready = workdir / f"operator-{tag}.ready"
    log_path = workdir / f"operator-{tag}.log"
    runner_dir = workdir / f"runner-{tag}"
    argv = [sys.executable, "-m", "hsmd", "operator", "--watches", str(ROOT / "watches.yaml"),
            "--kubeconfig", kubeconfig, "--ready-file", str(ready), "--runner-dir", str(runner_dir),
            *[a for agent in agents for a in ("--agent", agent)], *FAST_FLAGS, *flags]
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    full_env.update(env or {})
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    op = OperatorProcess(process, ready, log_path, runner_dir)
    try:
        if wait_ready:
            try:
                op.info = wait_for_ready_file(ready, 90, process=process)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"operator did not start: {exc}\n{op.logs()[-4000:]}") from None
        yield op
    finally:
        op.stop()


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except ApiException as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {str(last)[:500]})")


@dataclass
class Stack:
    kubeconfig: str
    api: Any
    agent: RunningAgent
    token: AgentToken
    namespace: str
    workdir: Path
    operator: OperatorProcess | None = None
    faults: Any = None

    def client(self) -> AgentClient:
        return self.agent.client()

    # --- objects -------------------------------------------------------------------------

    def path(self, name: str) -> str:
        return f"{self.namespace}/{name}"

    def create(self, name: str, *, path: str | None = None, namespace: str | None = None, **spec: Any) -> dict[str, Any]:
        ns = namespace or self.namespace
        body = {"apiVersion": kube.API_VERSION, "kind": "HSMSecret", "metadata": {"name": name},
                "spec": {"hsmPath": path or f"{ns}/{name}", **spec}}
        result: dict[str, Any] = kube.request(self.api, "POST", HSMSECRETS.format(ns=ns), body=body)
        return result

    def hsmsecret(self, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = kube.request(self.api, "GET", f"{HSMSECRETS.format(ns=namespace or self.namespace)}/{name}")
            return obj
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def delete(self, name: str, namespace: str | None = None) -> None:
        kube.request(self.api, "DELETE", f"{HSMSECRETS.format(ns=namespace or self.namespace)}/{name}")

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        kube.request(self.api, "PATCH", f"{HSMSECRETS.format(ns=self.namespace)}/{name}", body={"spec": spec},
                     content_type=kube.MERGE_PATCH)

    def secret(self, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = kube.request(
                self.api, "GET", f"/api/v1/namespaces/{namespace or self.namespace}/secrets/{name}")
            return obj
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def secret_data(self, name: str) -> dict[str, bytes] | None:
        secret = self.secret(name)
        if secret is None:
            return None
        return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}

    def ready(self, name: str) -> dict[str, Any]:
        obj = self.hsmsecret(name) or {}
        for cond in (obj.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Ready":
                return dict(cond)
        return {}

    def events(self, name: str) -> list[dict[str, Any]]:
        listing = kube.request(self.api, "GET", f"/api/v1/namespaces/{self.namespace}/events")
        return [e for e in listing.get("items") or [] if (e.get("involvedObject") or {}).get("name") == name]

    # --- waiting -------------------------------------------------------------------------

    def wait_reason(self, name: str, reason: str, timeout: float = 60) -> dict[str, Any]:
        return wait_until(lambda: (c := self.ready(name)).get("reason") == reason and c, timeout,
                          f"HSMSecret {name} Ready reason {reason} (now {self.ready(name)})")  # type: ignore[no-any-return]

    def wait_data(self, name: str, data: dict[str, bytes], timeout: float = 60) -> float:
        start = time.monotonic()
        wait_until(lambda: self.secret_data(name) == data, timeout, f"Secret {name} with the expected data")
        return time.monotonic() - start

    def wait_gone(self, name: str, timeout: float = 60) -> None:
        wait_until(lambda: self.secret(name) is None, timeout, f"Secret {name} to be deleted")


def ensure_namespace(api: Any, name: str) -> None:
    try:
        kube.request(api, "POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace",
                                                               "metadata": {"name": name}})
    except ApiException as exc:
        if exc.status != 409:
            raise


def dump(stack: Stack) -> str:
    """What to print when a test fails: the operator's log tail."""
    if stack.operator is None:
        return ""
    return json.dumps({"operator_log_tail": stack.operator.logs()[-3000:]})


__all__ = ["ROOT", "OperatorProcess", "Stack", "ensure_namespace", "start_agent", "start_operator", "wait_until"]
