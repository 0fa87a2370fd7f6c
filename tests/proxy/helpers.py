"""Helpers shared by tests/proxy and tests/hsmctl: a real ``hsmd proxy`` subprocess, ServiceAccount
tokens minted by the sandbox's TokenRequest, the access policy ConfigMap."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from hsmd.service import stop_process, wait_for_ready_file

ROOT = Path(__file__).resolve().parents[2]
POLICY_NAMESPACE = "hsm-system"


@dataclass
class RunningProxy:
    url: str
    address: str
    process: subprocess.Popen[bytes]
    log_path: Path
    audit_path: Path

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def audit(self) -> str:
        return self.audit_path.read_text() if self.audit_path.exists() else ""


@contextmanager
def start_proxy(workdir: Path, *, agents: list[str] | None = None, pool: str | None = None,
                kubeconfig: str, extra: list[str] | None = None, env: dict[str, str] | None = None
                ) -> Iterator[RunningProxy]:
    workdir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    ready = workdir / f"proxy-{tag}.ready"
    log_path = workdir / f"proxy-{tag}.log"
    audit_path = workdir / f"proxy-{tag}.audit"
    cmd = [sys.executable, "-m", "hsmd", "proxy", "--listen", "127.0.0.1:0", "--kubeconfig", kubeconfig,
           "--audit-log", str(audit_path), "--ready-file", str(ready), "--agent-timeout", "2"]
    for address in agents or []:
        cmd += ["--agent", address]
    if pool:
        cmd += ["--pool", pool]
    cmd += extra or []
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        try:
            info = wait_for_ready_file(ready, 30, process=process)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"proxy did not start: {exc}\n{log_path.read_text(errors='replace')[-3000:]}") from None
        yield RunningProxy(info["url"], info["http"], process, log_path, audit_path)
    finally:
        stop_process(process, 15)


def ensure_namespace(api: Any, name: str) -> None:
    try:
        k8s.CoreV1Api(api).create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    except ApiException as exc:
        if exc.status != 409:
            raise


def service_account(api: Any, namespace: str, name: str) -> None:
    ensure_namespace(api, namespace)
    try:
        k8s.CoreV1Api(api).create_namespaced_service_account(
            namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=name)))
    except ApiException as exc:
        if exc.status != 409:
            raise


def mint(api: Any, namespace: str, name: str, audience: str = "hsmd", seconds: int = 3600) -> str:
    """A ServiceAccount token from the sandbox's TokenRequest (creating the account if needed)."""
    service_account(api, namespace, name)
    answer = k8s.CoreV1Api(api).create_namespaced_service_account_token(
        name, namespace, k8s.AuthenticationV1TokenRequest(
            spec=k8s.V1TokenRequestSpec(audiences=[audience], expiration_seconds=seconds)))
    return str(answer.status.token)


def set_policy(api: Any, text: str, *, namespace: str = POLICY_NAMESPACE, name: str = "hsm-access-policy") -> None:
    ensure_namespace(api, namespace)
    core = k8s.CoreV1Api(api)
    body = k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name=name), data={"policy.yaml": text})
    try:
        core.create_namespaced_config_map(namespace, body)
    except ApiException as exc:
        if exc.status != 409:
            raise
        core.replace_namespaced_config_map(name, namespace, body)


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
