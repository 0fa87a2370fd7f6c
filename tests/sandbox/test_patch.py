"""Patch formats and server-side apply, as the kubernetes client and kubernetes.core send them."""

from __future__ import annotations

import json

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.sandbox.conftest import GROUP, Cluster, raw, widget


def _deployment(name: str, containers: list[dict]) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": containers}}}}


def _patch(cluster: Cluster, path: str, body: object, content_type: str, query: str = "") -> tuple[int, dict]:
    # the client serializes dict/list bodies for JSON content types and sends str bodies as they are
    status, _, out = raw(cluster.api, "PATCH", path + query, body=body, content_type=content_type)
    return status, json.loads(out)


def test_merge_patch_sets_and_removes_keys(cluster: Cluster, ns: str) -> None:
    cluster.core.create_namespaced_config_map(ns, {"metadata": {"name": "m"}, "data": {"a": "1", "b": "2"}})
    status, out = _patch(cluster, f"/api/v1/namespaces/{ns}/configmaps/m", {"data": {"a": "9", "b": None}},
                         "application/merge-patch+json")
    assert status == 200 and out["data"] == {"a": "9"}


def test_json_patch_and_failed_test_op(cluster: Cluster, ns: str) -> None:
    cluster.core.create_namespaced_config_map(ns, {"metadata": {"name": "j"}, "data": {"a": "1"}})
    ops = [{"op": "test", "path": "/data/a", "value": "1"}, {"op": "add", "path": "/data/b", "value": "2"},
           {"op": "remove", "path": "/data/a"}]
    status, out = _patch(cluster, f"/api/v1/namespaces/{ns}/configmaps/j", ops, "application/json-patch+json")
    assert status == 200 and out["data"] == {"b": "2"}
    status, out = _patch(cluster, f"/api/v1/namespaces/{ns}/configmaps/j",
                         [{"op": "test", "path": "/data/b", "value": "nope"}], "application/json-patch+json")
    assert status == 422 and out["kind"] == "Status"


def test_strategic_merge_merges_containers_by_name(cluster: Cluster, ns: str) -> None:
    cluster.apps.create_namespaced_deployment(ns, _deployment("web", [
        {"name": "app", "image": "nginx:1", "env": [{"name": "A", "value": "1"}]},
        {"name": "side", "image": "busybox:1"}]))
    patched = cluster.apps.patch_namespaced_deployment("web", ns, {"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "nginx:2", "env": [{"name": "B", "value": "2"}]}]}}}})
    containers = {c.name: c for c in patched.spec.template.spec.containers}
    assert set(containers) == {"app", "side"}
    assert containers["app"].image == "nginx:2"
    assert {e.name for e in containers["app"].env} == {"A", "B"}
    assert patched.metadata.generation == 2


def test_strategic_merge_delete_directive(cluster: Cluster, ns: str) -> None:
    cluster.apps.create_namespaced_deployment(ns, _deployment("dir", [
        {"name": "app", "image": "nginx:1"}, {"name": "side", "image": "busybox:1"}]))
    status, out = _patch(cluster, f"/apis/apps/v1/namespaces/{ns}/deployments/dir",
                         {"spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}},
                         "application/strategic-merge-patch+json")
    assert status == 200
    assert [c["name"] for c in out["spec"]["template"]["spec"]["containers"]] == ["app"]


def test_strategic_merge_is_unsupported_for_custom_resources(cluster: Cluster, ns: str, widget_crd: dict) -> None:
    cluster.custom.create_namespaced_custom_object(GROUP, "v1", ns, "widgets", widget("smp", 1))
    status, out = _patch(cluster, f"/apis/{GROUP}/v1/namespaces/{ns}/widgets/smp", {"spec": {"size": 2}},
                         "application/strategic-merge-patch+json")
    assert status == 415 and out["reason"] == "UnsupportedMediaType"


def test_patch_with_stale_resource_version_conflicts(cluster: Cluster, ns: str) -> None:
    made = cluster.core.create_namespaced_config_map(ns, {"metadata": {"name": "p"}, "data": {"a": "1"}})
    cluster.core.patch_namespaced_config_map("p", ns, {"data": {"a": "2"}})
    with pytest.raises(ApiException) as err:
        cluster.core.patch_namespaced_config_map("p", ns, {"metadata": {
            "resourceVersion": made.metadata.resource_version}, "data": {"a": "3"}})
    assert err.value.status == 409


def _apply(cluster: Cluster, path: str, doc: dict, manager: str, force: bool = False) -> tuple[int, dict]:
    query = f"?fieldManager={manager}" + ("&force=true" if force else "")
    return _patch(cluster, path, yaml.safe_dump(doc), "application/apply-patch+yaml", query)


def test_server_side_apply_create_update_and_field_removal(cluster: Cluster, ns: str) -> None:
    path = f"/api/v1/namespaces/{ns}/configmaps/ssa"
    doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa", "labels": {"a": "1"}},
           "data": {"x": "1", "y": "2"}}
    status, out = _apply(cluster, path, doc, "tool-a")
    assert status == 201 and out["data"] == {"x": "1", "y": "2"}
    managers = {m["manager"]: m for m in out["metadata"]["managedFields"]}
    assert managers["tool-a"]["operation"] == "Apply"
    assert "f:x" in managers["tool-a"]["fieldsV1"]["f:data"]
    doc["data"] = {"x": "1"}  # y no longer applied: removed
    status, out = _apply(cluster, path, doc, "tool-a")
    assert status == 200 and out["data"] == {"x": "1"}
    assert out["metadata"]["labels"] == {"a": "1"}


def test_server_side_apply_conflicts_with_other_manager(cluster: Cluster, ns: str) -> None:
    path = f"/api/v1/namespaces/{ns}/configmaps/own"
    _apply(cluster, path, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "own"},
                           "data": {"k": "a"}}, "owner")
    status, out = _apply(cluster, path, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "own"},
                                         "data": {"k": "b"}}, "intruder")
    assert status == 409 and out["reason"] == "Conflict"
    assert out["details"]["causes"][0]["field"] == ".data.k"
    assert 'conflict with "owner"' in out["message"]
    status, out = _apply(cluster, path, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "own"},
                                         "data": {"k": "b"}}, "intruder", force=True)
    assert status == 200 and out["data"] == {"k": "b"}
    owners = {m["manager"]: m for m in out["metadata"]["managedFields"]}
    assert "f:k" in owners["intruder"]["fieldsV1"]["f:data"]
    assert "owner" not in owners or "f:k" not in owners["owner"]["fieldsV1"].get("f:data", {})


def test_server_side_apply_requires_field_manager(cluster: Cluster, ns: str) -> None:
    status, _ = _patch(cluster, f"/api/v1/namespaces/{ns}/configmaps/x",
                       yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}),
                       "application/apply-patch+yaml")
    assert status in (400, 422)


def test_server_side_apply_on_custom_resource_merges_map_lists(cluster: Cluster, ns: str, widget_crd: dict) -> None:
    path = f"/apis/{GROUP}/v1/namespaces/{ns}/widgets/lists"
    doc = widget("lists", 2, ports=[{"name": "http", "port": 80}])
    status, out = _apply(cluster, path, doc, "a")
    assert status == 201 and out["spec"]["color"] == "red"  # defaulted
    other = {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "lists"},
             "spec": {"ports": [{"name": "https", "port": 443}]}}
    status, out = _apply(cluster, path, other, "b")
    assert status == 200
    assert sorted(p["name"] for p in out["spec"]["ports"]) == ["http", "https"]


def test_update_records_managed_fields(cluster: Cluster, ns: str) -> None:
    made = cluster.core.create_namespaced_config_map(ns, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="mf"), data={"a": "1"}), field_manager="creator")
    assert [m.manager for m in made.metadata.managed_fields] == ["creator"]
    assert made.metadata.managed_fields[0].operation == "Update"
    patched = cluster.core.patch_namespaced_config_map("mf", ns, {"data": {"b": "2"}}, field_manager="patcher")
    managers = {m.manager for m in patched.metadata.managed_fields}
    assert managers == {"creator", "patcher"}
