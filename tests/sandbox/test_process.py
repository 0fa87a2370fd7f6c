"""``hsmd sandbox`` as a process: persistence across restarts, TLS, kubectl, CLI errors."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client, config

from hsmd.sandbox import run_sandbox
from tests.fixtures.sandbox import install_crds, start_sandbox_process
from tests.sandbox.conftest import GROUP, WIDGET_CRD, Cluster, widget

pytestmark = pytest.mark.sandbox_only


def _core(kubeconfig: str) -> tuple[client.ApiClient, client.CoreV1Api]:
    configuration = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    api = client.ApiClient(configuration)
    return api, client.CoreV1Api(api)


def test_state_survives_a_killed_process_and_resource_versions_continue(tmp_path: Path) -> None:
    state = tmp_path / "state"
    crd_file = tmp_path / "crd.yaml"
    import json

    crd_file.write_text(json.dumps(WIDGET_CRD))
    with start_sandbox_process(tmp_path / "run1", state_dir=state) as first:
        api, core = _core(first.kubeconfig)
        core.create_namespaced_secret("default", client.V1Secret(
            metadata=client.V1ObjectMeta(name="kept"), string_data={"k": "v"}))
        install_crds(api, [crd_file])
        client.CustomObjectsApi(api).create_namespaced_custom_object(GROUP, "v1", "default", "widgets",
                                                                     widget("persisted", 4))
        core.create_namespaced_config_map("default", {"metadata": {"name": "gone"}})
        core.delete_namespaced_config_map("gone", "default")
        last_rv = int(core.list_namespace().metadata.resource_version)
        token = first.admin_token
        api.close()
        first.process.kill()  # SIGKILL: nothing acknowledged may be lost
        first.process.wait(timeout=10)
    with start_sandbox_process(tmp_path / "run2", state_dir=state) as second:
        assert second.admin_token == token  # the kubeconfig of the first run stays valid
        api, core = _core(second.kubeconfig)
        kept = core.read_namespaced_secret("kept", "default")
        assert kept.data == {"k": "dg=="}
        assert "gone" not in [c.metadata.name for c in core.list_namespaced_config_map("default").items]
        widget_obj = client.CustomObjectsApi(api).get_namespaced_custom_object(GROUP, "v1", "default", "widgets",
                                                                               "persisted")
        assert widget_obj["spec"]["size"] == 4
        made = core.create_namespaced_config_map("default", {"metadata": {"name": "after"}})
        assert int(made.metadata.resource_version) > last_rv
        api.close()


def test_tls_sandbox(tmp_path: Path) -> None:
    with run_sandbox(tls=True) as handle:
        assert handle.url.startswith("https://")
        api = handle.api_client()
        assert client.CoreV1Api(api).list_namespace().items
        api.close()


def test_cli_rejects_a_bad_listen_address(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "hsmd", "sandbox", "--listen", "nonsense",
                             "--kubeconfig-out", str(tmp_path / "kc")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "HOST:PORT" in result.stderr


def test_cli_rejects_a_missing_tokens_file(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "hsmd", "sandbox", "--kubeconfig-out", str(tmp_path / "kc"),
                             "--tokens", str(tmp_path / "missing.csv")], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "token file" in result.stderr


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_get_with_printer_columns(cluster: Cluster, widget_crd: dict, ns: str) -> None:
    cluster.custom.create_namespaced_custom_object(GROUP, "v1", ns, "widgets", widget("shown", 9))
    kubeconfig = cluster.handle.kubeconfig
    out = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "get", "ns", ns], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:3] == ["NAME", "STATUS", "AGE"] and "Active" in out.stdout
    out = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "-n", ns, "get", "wdg"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.strip().splitlines()
    assert header.split() == ["NAME", "SIZE", "PHASE", "AGE"]
    assert row.split()[:2] == ["shown", "9"]


DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: c, image: "nginx:1"}]
"""


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_apply_create_scale_and_whoami_over_tls(tmp_path: Path) -> None:
    """kubectl sends credentials only over TLS, validates through OpenAPI v3 and creates built-ins as protobuf."""
    with run_sandbox(tls=True, require_auth=True) as handle:
        def kubectl(*args: str, stdin: str | None = None) -> str:
            out = subprocess.run(["kubectl", "--kubeconfig", handle.kubeconfig, *args], capture_output=True,
                                 text=True, input=stdin, timeout=60)
            assert out.returncode == 0, (args, out.stderr)
            return out.stdout

        assert "sandbox-admin" in kubectl("auth", "whoami")
        kubectl("apply", "-f", "-", stdin=DEPLOYMENT)
        kubectl("apply", "-f", "-", stdin=DEPLOYMENT.replace("nginx:1", "nginx:2"))
        kubectl("scale", "deployment", "web", "--replicas=3")
        kubectl("create", "secret", "generic", "creds", "--from-literal=user=admin")
        kubectl("create", "configmap", "settings", "--from-literal=a=b")
        token = kubectl("create", "token", "default", "--audience", "hsmd-proxy").strip()
        api = handle.api_client()
        try:
            deploy = client.AppsV1Api(api).read_namespaced_deployment("web", "default")
            assert deploy.spec.replicas == 3 and deploy.spec.template.spec.containers[0].image == "nginx:2"
            secret = client.CoreV1Api(api).read_namespaced_secret("creds", "default")
            assert secret.data == {"user": "YWRtaW4="} and secret.type == "Opaque"
            assert client.CoreV1Api(api).read_namespaced_config_map("settings", "default").data == {"a": "b"}
            review = client.AuthenticationV1Api(api).create_token_review(client.V1TokenReview(
                spec=client.V1TokenReviewSpec(token=token, audiences=["hsmd-proxy"])))
            assert review.status.user.username == "system:serviceaccount:default:default"
        finally:
            api.close()
