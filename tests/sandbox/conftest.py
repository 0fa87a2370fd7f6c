"""Conformance suite setup: the same tests run against the sandbox (default) or a real cluster
(``KUBECONFIG`` set). Every test works in its own throwaway namespace; cluster-scoped objects get
unique names. Tests that need sandbox internals (fault injection, restarts, flags) are marked
``sandbox_only`` and skipped on a real cluster.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

REAL_CLUSTER = bool(os.environ.get("KUBECONFIG"))
GROUP = "conformance.hsmd.test"

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"widgets.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wdg"],
                  "categories": ["hsmdtest"]},
        "versions": [{
            "name": "v1",
            "served": True,
            "storage": True,
            "subresources": {"status": {}},
            "additionalPrinterColumns": [
                {"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            ],
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object",
                        "required": ["size"],
                        "properties": {
                            "size": {"type": "integer", "minimum": 1, "maximum": 100},
                            "color": {"type": "string", "enum": ["red", "green", "blue"], "default": "red"},
                            "syncInterval": {"type": "integer", "default": 30},
                            "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 10},
                            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
                            "ports": {"type": "array", "x-kubernetes-list-type": "map",
                                      "x-kubernetes-list-map-keys": ["name"],
                                      "items": {"type": "object", "required": ["name"],
                                                "properties": {"name": {"type": "string"},
                                                               "port": {"type": "integer"}}}},
                            "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        },
                    },
                    "status": {
                        "type": "object",
                        "properties": {"phase": {"type": "string"}, "observed": {"type": "integer"}},
                    },
                },
            }},
        }],
    },
}


@dataclass
class Cluster:
    """What a conformance test gets: an ApiClient and whether it is the sandbox."""

    api: Any
    is_sandbox: bool
    handle: Any = None  # SandboxHandle when is_sandbox

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not REAL_CLUSTER:
        return
    skip = pytest.mark.skip(reason="sandbox-specific (fault injection / process control); KUBECONFIG is set")
    for item in items:
        if "sandbox_only" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sandbox_only: needs the sandbox itself (skipped against a real cluster)")


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    if REAL_CLUSTER:
        api = config.new_client_from_config(config_file=os.environ["KUBECONFIG"])
        yield Cluster(api, False)
    else:
        handle = request.getfixturevalue("sandbox")
        api = handle.api_client()
        yield Cluster(api, True, handle)
    api.close()


def raw(api: Any, method: str, path: str, *, accept: str = "application/json", body: Any = None,
        content_type: str | None = None) -> tuple[int, Any, bytes]:
    """One request through the client's own transport and auth: (status, headers, body bytes)."""
    headers = {"Accept": accept}
    if content_type:
        headers["Content-Type"] = content_type
    m, url, hdrs, data, post = api.param_serialize(method, path, header_params=headers, body=body,
                                                   auth_settings=["BearerToken"])
    resp = api.call_api(m, url, hdrs, data, post)
    return resp.status, resp.headers, resp.read()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def gone(read: Any) -> bool:
    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


@pytest.fixture
def ns(cluster: Cluster) -> Iterator[str]:
    name = unique("hsmd-conf")
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=name, labels={"hsmd.test/conformance": "true"})))
    # Like a real cluster, controllers add the default ServiceAccount and the kube-root-ca.crt
    # ConfigMap to a new namespace shortly after it is created; tests that list or watch ConfigMaps
    # start once they are there, so they see only their own objects come and go.
    deadline = time.monotonic() + 30
    while True:
        names = {cm.metadata.name for cm in cluster.core.list_namespaced_config_map(name).items}
        accounts = {sa.metadata.name for sa in cluster.core.list_namespaced_service_account(name).items}
        if "kube-root-ca.crt" in names and "default" in accounts:
            break
        assert time.monotonic() < deadline, f"namespace {name} was not initialised within 30 s"
        time.sleep(0.05)
    try:
        yield name
    finally:
        try:
            cluster.core.delete_namespace(name)
        except ApiException as exc:
            if exc.status != 404:
                raise


@pytest.fixture(scope="session")
def widget_crd(cluster: Cluster) -> Iterator[dict[str, Any]]:
    """The test CRD (widgets.conformance.hsmd.test), installed once per session."""
    from tests.fixtures.sandbox import install_crds

    ext = client.ApiextensionsV1Api(cluster.api)
    import json
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        json.dump(WIDGET_CRD, handle)
    install_crds(cluster.api, [handle.name])
    os.unlink(handle.name)
    yield WIDGET_CRD
    if REAL_CLUSTER:
        ext.delete_custom_resource_definition(WIDGET_CRD["metadata"]["name"])


def widget(name: str, size: int = 1, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": name}, "spec": {"size": size, **spec}}
