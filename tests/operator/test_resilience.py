"""Failures around the operator: its watches dropped or expired by the API server, its agent gone and
back, and the operator itself killed in the middle of a batch. Each test starts its own operator
(two unelected operators must never run at once)."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hsmd import kube, render
from hsmd.sandbox import run_sandbox
from tests.fixtures.agent import AgentToken, RunningAgent, make_agent_token, start_agent
from tests.operator.stack import Stack, ensure_namespace, start_operator, wait_until

pytestmark = pytest.mark.slow
NAMESPACE = "op-chaos"


class Agent:
    """The stack's agent, stoppable and restartable on the same port."""

    def __init__(self, token: AgentToken, workdir: Path) -> None:
        self.token = token
        self.workdir = workdir
        self.listen = "127.0.0.1:0"
        self._ctx: contextlib.ExitStack | None = None
        self.running: RunningAgent | None = None

    def start(self) -> RunningAgent:
        ctx = contextlib.ExitStack()
        self.running = ctx.enter_context(start_agent(self.token.token, pin_file=self.token.pin_file,
                                                     workdir=self.workdir, listen=self.listen,
                                                     device_profile="softhsm"))
        self.listen = self.running.address
        self._ctx = ctx
        return self.running

    def stop(self) -> None:
        if self._ctx is not None:
            self._ctx.close()
        self._ctx = None
        self.running = None


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Agent]]:
    workdir = tmp_path_factory.mktemp("operator-chaos")
    with run_sandbox() as sandbox:
        api = kube.api_client(sandbox.kubeconfig)
        kube.install_crds(api)
        ensure_namespace(api, NAMESPACE)
        agent = Agent(make_agent_token(workdir / "token"), workdir / "agent")
        running = agent.start()
        stack = Stack(kubeconfig=sandbox.kubeconfig, api=api, agent=running, token=agent.token, namespace=NAMESPACE,
                      workdir=workdir, faults=sandbox.faults)
        try:
            yield stack, agent
        finally:
            agent.stop()
            api.close()


def managed_secrets(stack: Stack) -> list[dict[str, Any]]:
    return list(kube.request(stack.api, "GET", f"/api/v1/namespaces/{stack.namespace}/secrets",
                             query={"labelSelector": render.MANAGED_SELECTOR})["items"])


def ansible_processes_of(runner_dir: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if b"ansible" in cmdline and (str(runner_dir).encode() in cmdline or cwd.startswith(str(runner_dir))):
            found.append(int(proc.name))
    return found


def test_dropped_and_expired_watches_miss_no_change(chaos: tuple[Stack, Agent], names: str) -> None:
    stack, _agent = chaos
    client = stack.client()
    for suffix in ("keep", "gone", "edit"):
        client.write(stack.path(f"{names}-{suffix}"), {"v": suffix.encode()})
        stack.create(f"{names}-{suffix}")
    with start_operator(stack.kubeconfig, [stack.agent.address], stack.workdir / "op-watch") as op:
        stack.operator = op
        for suffix in ("keep", "gone", "edit"):
            stack.wait_data(f"{names}-{suffix}", {"v": suffix.encode()}, timeout=120)
            stack.wait_reason(f"{names}-{suffix}", "Synced")
        relists = op.metric_sum("hsmd_watch_relists_total")

        # every watch is dropped and the next ones answer 410 Gone while changes happen
        stack.faults.expire_next_watch(6)
        stack.faults.close_watches()
        client.write(stack.path(f"{names}-new"), {"v": b"new"})
        stack.create(f"{names}-new")
        stack.delete(f"{names}-gone")
        kube.request(stack.api, "PATCH", f"/api/v1/namespaces/{stack.namespace}/secrets/{names}-edit",
                     body={"data": {"v": base64.b64encode(b"tampered").decode()}}, content_type=kube.MERGE_PATCH)
        stack.faults.close_watches()

        stack.wait_data(f"{names}-new", {"v": b"new"}, timeout=120)
        wait_until(lambda: stack.hsmsecret(f"{names}-gone") is None, 60, "the deleted HSMSecret to be finalized")
        stack.wait_gone(f"{names}-gone")
        stack.wait_data(f"{names}-edit", {"v": b"edit"}, timeout=60)
        assert stack.secret_data(f"{names}-keep") == {"v": b"keep"}
        assert op.metric_sum("hsmd_watch_relists_total") > relists
        stack.operator = None


def test_agent_down_keeps_secrets_reports_unavailable_and_recovers(chaos: tuple[Stack, Agent], names: str) -> None:
    stack, agent = chaos
    stack.client().write(stack.path(names), {"v": b"before"})
    stack.create(names)
    with start_operator(stack.kubeconfig, [stack.agent.address], stack.workdir / "op-agent") as op:
        stack.operator = op
        stack.wait_data(names, {"v": b"before"}, timeout=120)
        stack.wait_reason(names, "Synced")
        agent.stop()
        op.process.send_signal(signal.SIGUSR1)  # resync now instead of after syncInterval
        cond = stack.wait_reason(names, "Unavailable", timeout=60)
        assert cond["status"] == "False"
        assert stack.secret_data(names) == {"v": b"before"}  # nothing deleted while the agent is away
        time.sleep(2)
        assert stack.secret_data(names) == {"v": b"before"}

        stack.agent = agent.start()  # same port, same token
        stack.wait_reason(names, "Synced", timeout=60)
        stack.client().write(stack.path(names), {"v": b"after"})
        stack.wait_data(names, {"v": b"after"}, timeout=30)  # the change stream is back too
        stack.operator = None


def test_operator_killed_mid_batch_converges_with_nothing_orphaned(chaos: tuple[Stack, Agent], names: str) -> None:
    stack, _agent = chaos
    client = stack.client()
    count = 30
    for i in range(count):
        client.write(stack.path(f"{names}-{i}"), {"i": str(i).encode()})
    workdir = stack.workdir / "op-kill"
    with start_operator(stack.kubeconfig, [stack.agent.address], workdir) as first:
        for i in range(count):
            stack.create(f"{names}-{i}")
        # kill it while the batch's module is writing: as soon as one of its Secrets appears
        def batch_writing() -> bool:
            return any(s["metadata"]["name"].startswith(f"{names}-") for s in managed_secrets(stack))

        wait_until(batch_writing, 120, "the batch to start writing Secrets", interval=0.02)
        first.stop(signal.SIGKILL)
        killed_runner_dir = first.runner_dir
    # the run dies with its operator: nothing of it keeps running or writing
    wait_until(lambda: not ansible_processes_of(killed_runner_dir), 10,
               "the killed operator's ansible processes to go away")
    ready_at_kill = [i for i in range(count) if stack.ready(f"{names}-{i}").get("reason") == "Synced"]
    time.sleep(2)
    assert [i for i in range(count) if stack.ready(f"{names}-{i}").get("reason") == "Synced"] == ready_at_kill
    assert len(ready_at_kill) < count, "the batch had finished before the kill; nothing was interrupted"
    # while it is down: two objects are deleted (their finalizer must still run)
    stack.delete(f"{names}-0")
    stack.delete(f"{names}-1")
    with start_operator(stack.kubeconfig, [stack.agent.address], workdir) as second:
        stack.operator = second
        for i in range(2, count):
            stack.wait_data(f"{names}-{i}", {"i": str(i).encode()}, timeout=120)
        for i in range(2, count):
            stack.wait_reason(f"{names}-{i}", "Synced", timeout=60)
        for i in (0, 1):
            wait_until(lambda i=i: stack.hsmsecret(f"{names}-{i}") is None, 60, "deleted objects finalized")
            stack.wait_gone(f"{names}-{i}")
        owners = {o["metadata"]["uid"] for o in kube.request(
            stack.api, "GET", f"/apis/{kube.API_VERSION}/namespaces/{stack.namespace}/hsmsecrets")["items"]}
        orphans = [s["metadata"]["name"] for s in managed_secrets(stack)
                   if (render.controller_of(s) or {}).get("uid") not in owners]
        assert orphans == []
        stack.operator = None


def test_agents_are_found_through_the_pool_without_static_agents(chaos: tuple[Stack, Agent], names: str) -> None:
    """In a cluster there is no --agent: an HSMSecret's parentRef names its HSMPool, whose agent pods
    (as the hsm_pool role creates them) give the address."""
    stack, _agent = chaos
    pool = f"{names}-pool"[:50]
    kube.request(stack.api, "POST", f"/apis/{kube.API_VERSION}/namespaces/{stack.namespace}/hsmpools",
                 body={"apiVersion": kube.API_VERSION, "kind": "HSMPool", "metadata": {"name": pool},
                       "spec": {"hsmDeviceRefs": ["softhsm"]}})
    host, port = stack.agent.address.rsplit(":", 1)
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"{pool}-agent", "labels": {"app.kubernetes.io/name": "hsm-agent",
                                                           "hsm.j5t.io/pool": pool}},
           "spec": {"containers": [{"name": "agent", "image": "hsmd",
                                    "ports": [{"name": "grpc", "containerPort": int(port)}]}]}}
    kube.request(stack.api, "POST", f"/api/v1/namespaces/{stack.namespace}/pods", body=pod)
    kube.request(stack.api, "PATCH", f"/api/v1/namespaces/{stack.namespace}/pods/{pool}-agent/status",
                 body={"status": {"phase": "Running", "podIP": host,
                                  "conditions": [{"type": "Ready", "status": "True"}]}},
                 content_type=kube.MERGE_PATCH)
    stack.client().write(stack.path(names), {"via": b"pool"})
    stack.create(names, parentRef={"kind": "HSMPool", "name": pool})
    stack.create(f"{names}-nopool", parentRef={"kind": "HSMPool", "name": "no-such-pool"})
    with start_operator(stack.kubeconfig, [], stack.workdir / "op-pool") as op:
        stack.operator = op
        stack.wait_data(names, {"via": b"pool"}, timeout=120)
        cond = stack.wait_reason(f"{names}-nopool", "Unavailable", timeout=60)
        assert "agent" in cond["message"]
        written = op.metric_sum("hsmd_agent_change_events_total", kind="written")
        stack.client().write(stack.path(names), {"via": b"pool-change-stream"})
        stack.wait_data(names, {"via": b"pool-change-stream"}, timeout=60)
        assert op.metric_sum("hsmd_agent_change_events_total", kind="written") > written  # the pool agent's stream
        stack.operator = None


def test_mirrored_agents_role_reads_every_mirror_and_an_outage_deletes_nothing(chaos: tuple[Stack, Agent],
                                                                              names: str) -> None:
    """Two --agent mirrors: the role gets both (hsm_secret_agents), so a secret that only the mirror
    sorted last holds (the role used to get the first one) reaches its Secret through the role lane.
    With that mirror stopped, a secret the other one lacks is Unavailable (resync checksums and the
    sync alike) and no Secret is deleted, even with deletionPolicy Delete; back up, Synced again."""
    stack, first = chaos
    mirror = Agent(make_agent_token(stack.workdir / f"{names}-token"), stack.workdir / f"{names}-agent")
    mirror.start()
    by_address = {stack.agent.address: first, mirror.listen: mirror}
    holder_address, other_address = max(by_address), min(by_address)
    holder = by_address[holder_address]
    clients = {a.listen: a.running.client() for a in by_address.values() if a.running is not None}
    clients[holder_address].write(stack.path(f"{names}-only"), {"v": b"one-mirror"})
    for client in clients.values():
        client.write(stack.path(f"{names}-both"), {"v": b"both"})
    try:
        stack.create(f"{names}-only")
        stack.create(f"{names}-both", deletionPolicy="Delete")
        with start_operator(stack.kubeconfig, list(by_address), stack.workdir / "op-mirrors") as op:
            stack.operator = op
            stack.wait_data(f"{names}-only", {"v": b"one-mirror"}, timeout=120)
            stack.wait_data(f"{names}-both", {"v": b"both"}, timeout=60)
            stack.wait_reason(f"{names}-both", "Synced")
            assert op.ansible_runs() >= 1  # new objects go through the role
            # ... which read both mirrors: never SourceMissing on the way (the fast path would mend that later)
            assert [e["reason"] for e in stack.events(f"{names}-only")] == ["Synced"]

            holder.stop()
            clients[other_address].delete(stack.path(f"{names}-both"))
            op.process.send_signal(signal.SIGUSR1)  # resync now
            stack.wait_reason(f"{names}-both", "Unavailable", timeout=60)
            stack.wait_reason(f"{names}-only", "Unavailable", timeout=60)
            time.sleep(1)
            assert stack.secret_data(f"{names}-both") == {"v": b"both"}
            assert stack.secret_data(f"{names}-only") == {"v": b"one-mirror"}

            holder.start()  # same port, same token: the mirrors disagree, the present version wins
            stack.wait_reason(f"{names}-both", "Synced", timeout=60)
            stack.wait_reason(f"{names}-only", "Synced", timeout=60)
            assert stack.secret_data(f"{names}-both") == {"v": b"both"}
            stack.operator = None
    finally:
        if first.running is None:
            first.start()
        if first.running is not None:
            stack.agent = first.running
        mirror.stop()
