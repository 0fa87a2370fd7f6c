"""hsmd.kube without a server: client configuration loading, API error translation, resource paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from hsmd import errors, kube


def kubeconfig(path: Path, server: str = "https://127.0.0.1:6443", token: str = "t0ken") -> str:  # noqa: S107
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "main",
        "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}},
                     {"name": "other", "cluster": {"server": "https://10.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "main", "context": {"cluster": "c", "user": "u"}},
                     {"name": "second", "context": {"cluster": "other", "user": "u"}}],
    }))
    return str(path)


def test_api_client_from_kubeconfig_and_context(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "config")
    api = kube.api_client(path)
    assert api.configuration.host == "https://127.0.0.1:6443"
    assert api.configuration.api_key["BearerToken"].endswith("t0ken")
    assert kube.api_client(path, "second").configuration.host == "https://10.0.0.1:6443"
    override = kube.api_client(path, host="https://example:1", api_key="abc", validate_certs=False)
    assert override.configuration.host == "https://example:1" and override.configuration.verify_ssl is False
    assert override.configuration.api_key == {"BearerToken": "Bearer abc"}


def test_api_client_without_any_config_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(errors.FailedPrecondition):
        kube.api_client()
    with pytest.raises(errors.FailedPrecondition):
        kube.api_client(str(tmp_path / "nope"))


def test_in_cluster_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a pod without a kubeconfig the ServiceAccount is used (token and CA from the mount)."""
    from kubernetes.config import incluster_config

    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("not really a cert")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(tmp_path / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    api = kube.api_client()
    assert api.configuration.host == "https://10.96.0.1:443"
    assert "sa-token" in api.configuration.api_key["BearerToken"]


@pytest.mark.parametrize(("status", "reason", "error"), [
    (404, "NotFound", errors.NotFound), (409, "AlreadyExists", errors.AlreadyExists), (409, "Conflict", errors.Conflict),
    (422, "Invalid", errors.InvalidArgument), (400, "BadRequest", errors.InvalidArgument),
    (401, "Unauthorized", errors.Unauthenticated), (403, "Forbidden", errors.Forbidden), (429, "", errors.Busy),
    (500, "", errors.Unavailable), (503, "", errors.Unavailable), (504, "", errors.DeadlineExceeded),
    (0, "", errors.Unavailable), (418, "", errors.Internal),
])
def test_api_error_mapping(status: int, reason: str, error: type[errors.HsmdError]) -> None:
    exc = ApiException(status=status, reason="x")
    exc.body = json.dumps({"kind": "Status", "reason": reason, "message": "details here"})
    mapped = kube.api_error(exc, "get thing")
    assert type(mapped) is error and str(mapped).startswith("get thing")
    assert mapped.temporary == (status in (0, 429, 500, 503, 504))


def test_resource_paths() -> None:
    pools = kube.Resource(kube.API_VERSION, "HSMPool", "hsmpools", namespaced=True, has_status=True)
    assert pools.object_path("p", "ns") == "/apis/hsm.j5t.io/v1alpha1/namespaces/ns/hsmpools/p"
    assert pools.collection_path() == "/apis/hsm.j5t.io/v1alpha1/hsmpools"
    pods = kube.Resource("v1", "Pod", "pods", namespaced=True, has_status=True)
    assert pods.object_path("x", "ns") == "/api/v1/namespaces/ns/pods/x"
    nodes = kube.Resource("v1", "Node", "nodes", namespaced=False, has_status=True)
    assert nodes.object_path("n1", "ignored") == "/api/v1/nodes/n1"
