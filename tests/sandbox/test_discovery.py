"""Discovery as kubernetes.dynamic, kubernetes.core and kubectl consume it."""

from __future__ import annotations

import json

import pytest
from kubernetes import client, dynamic

from tests.sandbox.conftest import GROUP, Cluster, raw


def _get(cluster: Cluster, path: str, accept: str = "application/json") -> tuple[int, dict]:
    status, _, body = raw(cluster.api, "GET", path, accept=accept)
    return status, json.loads(body) if body.startswith(b"{") else {}


def test_version_and_core_group(cluster: Cluster) -> None:
    version = client.VersionApi(cluster.api).get_code()
    assert version.major and version.minor and version.git_version.startswith("v1.")
    _, apis = _get(cluster, "/api")
    assert apis["kind"] == "APIVersions" and "v1" in apis["versions"]
    _, core = _get(cluster, "/api/v1")
    assert core["kind"] == "APIResourceList" and core["groupVersion"] == "v1"
    by_name = {r["name"]: r for r in core["resources"]}
    assert by_name["namespaces"]["namespaced"] is False and "ns" in by_name["namespaces"]["shortNames"]
    assert by_name["secrets"]["kind"] == "Secret" and by_name["secrets"]["namespaced"] is True
    assert set(by_name["secrets"]["verbs"]) >= {"create", "delete", "deletecollection", "get", "list", "patch",
                                                 "update", "watch"}
    assert by_name["configmaps"]["shortNames"] == ["cm"]
    assert by_name["pods/status"]["verbs"] == ["get", "patch", "update"]
    assert by_name["serviceaccounts/token"]["kind"] == "TokenRequest"
    assert by_name["serviceaccounts/token"]["verbs"] == ["create"]


def test_group_list_and_group_versions(cluster: Cluster) -> None:
    _, groups = _get(cluster, "/apis")
    names = {g["name"]: g for g in groups["groups"]}
    for group in ("apps", "coordination.k8s.io", "rbac.authorization.k8s.io", "apiextensions.k8s.io",
                  "authentication.k8s.io", "networking.k8s.io", "policy"):
        assert group in names, group
        assert names[group]["preferredVersion"]["version"] in [v["version"] for v in names[group]["versions"]]
    _, apps = _get(cluster, "/apis/apps")
    assert apps["name"] == "apps" and apps["preferredVersion"]["groupVersion"] == "apps/v1"
    _, resources = _get(cluster, "/apis/apps/v1")
    deploy = next(r for r in resources["resources"] if r["name"] == "deployments")
    assert deploy["kind"] == "Deployment" and "deploy" in deploy["shortNames"] and "all" in deploy["categories"]
    assert any(r["name"] == "deployments/status" for r in resources["resources"])
    _, leases = _get(cluster, "/apis/coordination.k8s.io/v1")
    assert any(r["name"] == "leases" and r["kind"] == "Lease" for r in leases["resources"])


def test_unknown_group_version_is_404(cluster: Cluster) -> None:
    status, _ = _get(cluster, "/apis/nonexistent.hsmd.test/v1")
    assert status == 404


def test_plain_json_served_when_aggregated_discovery_is_also_offered(cluster: Cluster) -> None:
    accept = ("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
              "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json")
    status, doc = _get(cluster, "/apis", accept)
    assert status == 200 and doc["kind"] in ("APIGroupList", "APIGroupDiscoveryList")


@pytest.mark.sandbox_only
def test_aggregated_discovery_alone_is_not_acceptable(cluster: Cluster) -> None:
    """The sandbox serves only unaggregated discovery, like servers before aggregated discovery."""
    status, _ = _get(cluster, "/apis", "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")
    assert status == 406


def test_crd_appears_in_discovery_with_details(cluster: Cluster, widget_crd: dict) -> None:
    _, doc = _get(cluster, f"/apis/{GROUP}/v1")
    by_name = {r["name"]: r for r in doc["resources"]}
    assert by_name["widgets"]["kind"] == "Widget"
    assert by_name["widgets"]["singularName"] == "widget"
    assert by_name["widgets"]["shortNames"] == ["wdg"]
    assert by_name["widgets"]["categories"] == ["hsmdtest"]
    assert by_name["widgets"]["namespaced"] is True
    assert "widgets/status" in by_name
    dyn = dynamic.DynamicClient(cluster.api)
    res = dyn.resources.get(api_version=f"{GROUP}/v1", kind="Widget")
    assert res.namespaced and res.name == "widgets"
    assert res.subresources["status"]


def test_dynamic_client_resolves_builtin_kinds(cluster: Cluster) -> None:
    dyn = dynamic.DynamicClient(cluster.api)
    for api_version, kind, plural in (("v1", "Secret", "secrets"), ("apps/v1", "Deployment", "deployments"),
                                      ("coordination.k8s.io/v1", "Lease", "leases"),
                                      ("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles"),
                                      ("apiextensions.k8s.io/v1", "CustomResourceDefinition",
                                       "customresourcedefinitions")):
        assert dyn.resources.get(api_version=api_version, kind=kind).name == plural
