"""``hsmd proxy --pool NS/NAME``: the agents come from the HSMPool's ready agent pods in the sandbox
(labels and the ``grpc`` port as the hsm_pool role deploys them), and follow the pool as pods
come and go."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from hsmd import kube
from hsmd.fanout import agents_from_pool
from tests.fixtures.agent import RunningAgent
from tests.proxy.helpers import ensure_namespace, mint, start_proxy, wait_until

NS = "hsm-pool-test"
POLICY = 'rules: [{namespaces: [ops], paths: ["**"], verbs: ["*"]}]\n'


def add_agent_pod(api: Any, name: str, agent: RunningAgent, pool: str = "pico-pool") -> None:
    port = int(agent.address.rsplit(":", 1)[1])
    pod = {"metadata": {"name": name, "labels": {"app.kubernetes.io/name": "hsm-agent", "hsm.j5t.io/pool": pool}},
           "spec": {"containers": [{"name": "agent", "image": "hsmd", "ports": [
               {"name": "grpc", "containerPort": port}, {"name": "health", "containerPort": 8093}]}]}}
    created = kube.request(api, "POST", f"/api/v1/namespaces/{NS}/pods", body=pod)
    created["status"] = {"phase": "Running", "podIP": "127.0.0.1",
                         "conditions": [{"type": "Ready", "status": "True"}]}
    kube.request(api, "PUT", f"/api/v1/namespaces/{NS}/pods/{name}/status", body=created)


def test_proxy_follows_the_pool(three_agents: list[RunningAgent], broker_sandbox: Any, tmp_path: Path) -> None:
    api = broker_sandbox.api_client()
    kube.install_crds(api)
    ensure_namespace(api, NS)
    kube.request(api, "POST", f"/apis/hsm.j5t.io/v1alpha1/namespaces/{NS}/hsmpools", body={
        "apiVersion": "hsm.j5t.io/v1alpha1", "kind": "HSMPool", "metadata": {"name": "pico-pool"},
        "spec": {"hsmDeviceRefs": ["pico"]}})
    add_agent_pod(api, "hsm-agent-0", three_agents[0])
    add_agent_pod(api, "unrelated-agent", three_agents[1], pool="other-pool")
    assert agents_from_pool(api, NS, "pico-pool") == [three_agents[0].address]
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    token = mint(api, "ops", "admin")
    with start_proxy(tmp_path, pool=f"{NS}/pico-pool", kubeconfig=broker_sandbox.kubeconfig,
                     extra=["--policy", str(policy), "--pool-refresh", "0.2"]) as proxy:
        import requests

        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"

        def agents_now() -> list[str]:
            return [d["agent"] for d in session.get(proxy.url + "/api/v1/hsm/info", timeout=10).json()["devices"]]

        assert agents_now() == [three_agents[0].address]
        add_agent_pod(api, "hsm-agent-1", three_agents[1])
        add_agent_pod(api, "hsm-agent-2", three_agents[2])
        wait_until(lambda: len(agents_now()) == 3, 10)
        r = session.put(proxy.url + "/api/v1/hsm/secrets/pool/test",
                        json={"data": {"k": base64.b64encode(b"v").decode()}}, timeout=10)
        assert r.status_code == 200 and r.json()["quorum"]["acknowledged"] == 3, r.text
        kube.request(api, "DELETE", f"/api/v1/namespaces/{NS}/pods/hsm-agent-2")
        wait_until(lambda: len(agents_now()) == 2, 10)
        assert session.delete(proxy.url + "/api/v1/hsm/secrets/pool/test", timeout=10).json()["quorum"]["agents"] == 2
