"""Kind-specific rules: status subresource, Secrets, CRD schemas, namespaces, finalizers, GC."""

from __future__ import annotations

import base64
import json

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.sandbox.conftest import GROUP, Cluster, gone, raw, unique, wait_for, widget


def _causes(err: ApiException) -> list[dict]:
    body = json.loads(err.body)
    assert body["reason"] == "Invalid" and err.status == 422
    return body["details"]["causes"]


# --- status subresource -------------------------------------------------------------------


def test_status_subresource_splits_spec_and_status(cluster: Cluster, ns: str, widget_crd: dict) -> None:
    co = cluster.custom
    made = co.create_namespaced_custom_object(GROUP, "v1", ns, "widgets",
                                              dict(widget("st", 1), status={"phase": "Ignored"}))
    assert "status" not in made  # status is dropped on create
    made["status"] = {"phase": "FromMain"}
    made["spec"]["size"] = 2
    updated = co.replace_namespaced_custom_object(GROUP, "v1", ns, "widgets", "st", made)
    assert updated["spec"]["size"] == 2 and "status" not in updated
    updated["status"] = {"phase": "Ready", "observed": 2}
    updated["spec"]["size"] = 50
    via_status = co.replace_namespaced_custom_object_status(GROUP, "v1", ns, "widgets", "st", updated)
    assert via_status["status"] == {"phase": "Ready", "observed": 2}
    assert via_status["spec"]["size"] == 2  # spec changes through /status are ignored
    assert via_status["metadata"]["generation"] == updated["metadata"]["generation"]


def test_status_schema_is_validated(cluster: Cluster, ns: str, widget_crd: dict) -> None:
    cluster.custom.create_namespaced_custom_object(GROUP, "v1", ns, "widgets", widget("sv", 1))
    with pytest.raises(ApiException) as err:
        cluster.custom.patch_namespaced_custom_object_status(GROUP, "v1", ns, "widgets", "sv",
                                                             {"status": {"observed": "many"}})
    assert _causes(err.value)[0]["field"] == "status.observed"


# --- CRD schemas ----------------------------------------------------------------------------


def test_crd_schema_validation_reports_field_causes(cluster: Cluster, ns: str, widget_crd: dict) -> None:
    with pytest.raises(ApiException) as err:
        cluster.custom.create_namespaced_custom_object(GROUP, "v1", ns, "widgets", {
            "apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "bad"},
            "spec": {"size": 0, "color": "pink", "name": "UPPER", "tags": ["a", "b", "c", "d"]}})
    by_field = {c["field"]: c for c in _causes(err.value)}
    assert by_field["spec.size"]["reason"] == "FieldValueInvalid"
    assert "should be greater than or equal to 1" in by_field["spec.size"]["message"]
    assert by_field["spec.color"]["reason"] == "FieldValueNotSupported"
    assert '"red"' in by_field["spec.color"]["message"]
    assert "should match '^[a-z]+$'" in by_field["spec.name"]["message"]
    assert by_field["spec.tags"]["reason"] == "FieldValueTooMany"
    body = json.loads(err.value.body)
    assert body["message"].startswith(f'Widget.{GROUP} "bad" is invalid: [')


def test_crd_required_and_type_errors(cluster: Cluster, ns: str, widget_crd: dict) -> None:
    with pytest.raises(ApiException) as err:
        cluster.custom.create_namespaced_custom_object(GROUP, "v1", ns, "widgets", {
            "apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "req"}, "spec": {}})
    causes = _causes(err.value)
    assert causes == [{"reason": "FieldValueRequired", "message": "Required value", "field": "spec.size"}]
    with pytest.raises(ApiException) as err:
        cluster.custom.create_namespaced_custom_object(GROUP, "v1", ns, "widgets", widget("typ", "big"))
    (cause,) = _causes(err.value)
    assert cause["field"] == "spec.size" and cause["reason"] == "FieldValueTypeInvalid"
    assert "must be of type integer" in cause["message"]


def test_crd_defaults_and_pruning(cluster: Cluster, ns: str, widget_crd: dict) -> None:
    made = cluster.custom.create_namespaced_custom_object(GROUP, "v1", ns, "widgets", {
        "apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "prune"},
        "spec": {"size": 3, "unknown": "dropped", "extra": {"anything": {"goes": [1, 2]}}},
        "topLevelJunk": True})
    assert made["spec"]["color"] == "red" and made["spec"]["syncInterval"] == 30
    assert "unknown" not in made["spec"] and "topLevelJunk" not in made
    assert made["spec"]["extra"] == {"anything": {"goes": [1, 2]}}


def test_crd_printer_columns_in_table(cluster: Cluster, ns: str, widget_crd: dict) -> None:
    cluster.custom.create_namespaced_custom_object(GROUP, "v1", ns, "widgets", widget("tbl", 7))
    status, _, body = raw(cluster.api, "GET", f"/apis/{GROUP}/v1/namespaces/{ns}/widgets",
                          accept="application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
    table = json.loads(body)
    assert status == 200 and table["kind"] == "Table"
    names = [c["name"] for c in table["columnDefinitions"]]
    assert names[:3] == ["Name", "Size", "Phase"] and "Age" in names
    row = next(r for r in table["rows"] if r["cells"][0] == "tbl")
    assert row["cells"][1] == 7
    assert row["object"]["kind"] == "PartialObjectMetadata"


def test_crd_deletion_removes_its_objects_and_endpoint(cluster: Cluster, ns: str) -> None:
    ext = client.ApiextensionsV1Api(cluster.api)
    group = f"{unique('g')}.hsmd.test"
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": f"gadgets.{group}"},
           "spec": {"group": group, "scope": "Namespaced", "names": {"plural": "gadgets", "kind": "Gadget"},
                    "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                        "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}]}}
    ext.create_custom_resource_definition(crd)
    wait_for(lambda: raw(cluster.api, "GET", f"/apis/{group}/v1")[0] == 200, what="CRD served")

    def create() -> bool:
        try:
            cluster.custom.create_namespaced_custom_object(group, "v1", ns, "gadgets", {
                "apiVersion": f"{group}/v1", "kind": "Gadget", "metadata": {"name": "g1"}, "x": 1})
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    wait_for(create, what="CR creatable")
    ext.delete_custom_resource_definition(crd["metadata"]["name"])
    wait_for(lambda: gone(lambda: ext.read_custom_resource_definition(crd["metadata"]["name"])), what="CRD gone")
    assert raw(cluster.api, "GET", f"/apis/{group}/v1/namespaces/{ns}/gadgets")[0] == 404


def test_invalid_crd_is_rejected(cluster: Cluster) -> None:
    ext = client.ApiextensionsV1Api(cluster.api)
    with pytest.raises(ApiException) as err:
        ext.create_custom_resource_definition({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "wrong.name.hsmd.test"},
            "spec": {"group": "other.hsmd.test", "scope": "Namespaced", "names": {"plural": "things", "kind": "Thing"},
                     "versions": [{"name": "v1", "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": {"type": "object"}}}]}})
    assert "metadata.name" in {c["field"] for c in _causes(err.value)}


# --- Secrets ------------------------------------------------------------------------------


def test_secret_string_data_merges_and_type_defaults(cluster: Cluster, ns: str) -> None:
    made = cluster.core.create_namespaced_secret(ns, client.V1Secret(
        metadata=client.V1ObjectMeta(name="sd"), data={"a": base64.b64encode(b"1").decode()},
        string_data={"b": "two", "a": "one"}))
    assert made.type == "Opaque"
    assert made.string_data is None
    assert {k: base64.b64decode(v) for k, v in made.data.items()} == {"a": b"one", "b": b"two"}


def test_secret_bad_base64_is_rejected(cluster: Cluster, ns: str) -> None:
    status, _, body = raw(cluster.api, "POST", f"/api/v1/namespaces/{ns}/secrets", content_type="application/json",
                          body={"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "b64"},
                                "data": {"k": "not base64!"}})
    assert status == 400 and json.loads(body)["reason"] == "BadRequest"


def test_secret_size_limit(cluster: Cluster, ns: str) -> None:
    big = base64.b64encode(b"x" * (512 * 1024)).decode()
    with pytest.raises(ApiException) as err:
        cluster.core.create_namespaced_secret(ns, client.V1Secret(
            metadata=client.V1ObjectMeta(name="big"), data={"a": big, "b": big, "c": big}))
    assert err.value.status in (413, 422)
    ok = cluster.core.create_namespaced_secret(ns, client.V1Secret(
        metadata=client.V1ObjectMeta(name="fits"), data={"a": big}))
    assert len(base64.b64decode(ok.data["a"])) == 512 * 1024


def test_secret_type_rules(cluster: Cluster, ns: str) -> None:
    with pytest.raises(ApiException) as err:
        cluster.core.create_namespaced_secret(ns, client.V1Secret(
            metadata=client.V1ObjectMeta(name="tls"), type="kubernetes.io/tls", string_data={"tls.crt": "x"}))
    assert {c["field"] for c in _causes(err.value)} == {"data[tls.key]"}
    made = cluster.core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name="typed")))
    made.type = "kubernetes.io/basic-auth"
    with pytest.raises(ApiException) as err:
        cluster.core.replace_namespaced_secret("typed", ns, made)
    assert _causes(err.value)[0]["field"] == "type"
    with pytest.raises(ApiException) as err:
        cluster.core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name="key"),
                                                                  string_data={"bad key": "x"}))
    assert _causes(err.value)[0]["field"] == "data[bad key]"


def test_immutable_secret(cluster: Cluster, ns: str) -> None:
    made = cluster.core.create_namespaced_secret(ns, client.V1Secret(
        metadata=client.V1ObjectMeta(name="imm"), string_data={"a": "1"}, immutable=True))
    with pytest.raises(ApiException) as err:
        cluster.core.patch_namespaced_secret("imm", ns, {"stringData": {"a": "2"}})
    assert err.value.status == 422
    assert cluster.core.read_namespaced_secret("imm", ns).data == made.data


# --- finalizers, garbage collection, namespaces -------------------------------------------------


def test_finalizers_hold_deletion(cluster: Cluster, ns: str) -> None:
    cluster.core.create_namespaced_config_map(ns, {"metadata": {"name": "fin", "finalizers": ["hsmd.test/hold"]}})
    cluster.core.delete_namespaced_config_map("fin", ns)
    held = cluster.core.read_namespaced_config_map("fin", ns)
    assert held.metadata.deletion_timestamp is not None
    assert held.metadata.deletion_grace_period_seconds == 0
    with pytest.raises(ApiException) as err:
        cluster.core.patch_namespaced_config_map("fin", ns, {"metadata": {"finalizers": ["hsmd.test/hold",
                                                                                       "hsmd.test/new"]}})
    assert err.value.status == 422
    cluster.core.patch_namespaced_config_map("fin", ns, {"metadata": {"finalizers": None}})
    assert gone(lambda: cluster.core.read_namespaced_config_map("fin", ns))


def _owned(name: str, owner: object, block: bool = False) -> dict:
    return {"metadata": {"name": name, "ownerReferences": [{
        "apiVersion": "v1", "kind": "ConfigMap", "name": owner.metadata.name, "uid": owner.metadata.uid,  # type: ignore[attr-defined]
        "blockOwnerDeletion": block, "controller": True}]}}


def test_background_garbage_collection(cluster: Cluster, ns: str) -> None:
    owner = cluster.core.create_namespaced_config_map(ns, {"metadata": {"name": "owner"}})
    cluster.core.create_namespaced_config_map(ns, _owned("child", owner))
    cluster.core.create_namespaced_secret(ns, _owned("child-secret", owner))
    cluster.core.delete_namespaced_config_map("owner", ns, propagation_policy="Background")
    assert gone(lambda: cluster.core.read_namespaced_config_map("owner", ns))
    wait_for(lambda: gone(lambda: cluster.core.read_namespaced_config_map("child", ns)), what="child collected")
    wait_for(lambda: gone(lambda: cluster.core.read_namespaced_secret("child-secret", ns)), what="secret collected")


def test_foreground_deletion_waits_for_blocking_dependents(cluster: Cluster, ns: str) -> None:
    owner = cluster.core.create_namespaced_config_map(ns, {"metadata": {"name": "fg"}})
    child = _owned("fg-child", owner, block=True)
    child["metadata"]["finalizers"] = ["hsmd.test/slow"]
    cluster.core.create_namespaced_config_map(ns, child)
    cluster.core.delete_namespaced_config_map("fg", ns, propagation_policy="Foreground")
    deleting = cluster.core.read_namespaced_config_map("fg", ns)
    assert deleting.metadata.deletion_timestamp and "foregroundDeletion" in deleting.metadata.finalizers
    wait_for(lambda: cluster.core.read_namespaced_config_map("fg-child", ns).metadata.deletion_timestamp,
             what="dependent marked for deletion")
    assert cluster.core.read_namespaced_config_map("fg", ns).metadata.deletion_timestamp
    cluster.core.patch_namespaced_config_map("fg-child", ns, {"metadata": {"finalizers": None}})
    wait_for(lambda: gone(lambda: cluster.core.read_namespaced_config_map("fg", ns)), what="owner deleted")


def test_orphan_deletion_keeps_dependents(cluster: Cluster, ns: str) -> None:
    owner = cluster.core.create_namespaced_config_map(ns, {"metadata": {"name": "orph"}})
    cluster.core.create_namespaced_config_map(ns, _owned("orph-child", owner))
    cluster.core.delete_namespaced_config_map("orph", ns, propagation_policy="Orphan")
    wait_for(lambda: gone(lambda: cluster.core.read_namespaced_config_map("orph", ns)), what="owner deleted")
    child = cluster.core.read_namespaced_config_map("orph-child", ns)
    assert not child.metadata.owner_references


def test_dependent_with_missing_owner_is_collected(cluster: Cluster, ns: str) -> None:
    cluster.core.create_namespaced_config_map(ns, {"metadata": {"name": "stray", "ownerReferences": [{
        "apiVersion": "v1", "kind": "ConfigMap", "name": "never", "uid": "5f6c4cb4-0000-4000-8000-000000000000"}]}})
    wait_for(lambda: gone(lambda: cluster.core.read_namespaced_config_map("stray", ns)), what="stray collected")


def test_namespace_deletion_terminates_then_removes_content(cluster: Cluster) -> None:
    name = unique("hsmd-conf-del")
    made = cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    assert made.status.phase == "Active" and made.metadata.labels["kubernetes.io/metadata.name"] == name
    cluster.core.create_namespaced_config_map(name, {"metadata": {"name": "held", "finalizers": ["hsmd.test/x"]}})
    cluster.core.create_namespaced_secret(name, client.V1Secret(metadata=client.V1ObjectMeta(name="s")))
    cluster.core.delete_namespace(name)
    terminating = cluster.core.read_namespace(name)
    assert terminating.status.phase == "Terminating" and terminating.metadata.deletion_timestamp
    with pytest.raises(ApiException) as err:
        cluster.core.create_namespaced_config_map(name, {"metadata": {"name": "late"}})
    assert err.value.status == 403
    wait_for(lambda: gone(lambda: cluster.core.read_namespaced_secret("s", name)), what="content removed")
    assert cluster.core.read_namespace(name).status.phase == "Terminating"  # held by the finalizer
    cluster.core.patch_namespace(name, {"metadata": {"labels": {"touched": "yes"}}})
    assert cluster.core.read_namespace(name).metadata.labels["touched"] == "yes"  # still terminating, not gone
    cluster.core.patch_namespaced_config_map("held", name, {"metadata": {"finalizers": None}})
    wait_for(lambda: gone(lambda: cluster.core.read_namespace(name)), timeout=30, what="namespace removed")


def test_new_namespace_gets_default_service_account(cluster: Cluster, ns: str) -> None:
    wait_for(lambda: any(sa.metadata.name == "default"
                         for sa in cluster.core.list_namespaced_service_account(ns).items), what="default SA")


def test_deployment_defaults_and_selector_validation(cluster: Cluster, ns: str) -> None:
    made = cluster.apps.create_namespaced_deployment(ns, {
        "metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "d"}}, "template": {
            "metadata": {"labels": {"app": "d"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}})
    assert made.spec.replicas == 1 and made.spec.strategy.type == "RollingUpdate"
    assert made.metadata.generation == 1
    with pytest.raises(ApiException) as err:
        cluster.apps.create_namespaced_deployment(ns, {
            "metadata": {"name": "bad"}, "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": {
                "metadata": {"labels": {"app": "y"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}})
    assert "spec.template.metadata.labels" in {c["field"] for c in _causes(err.value)}


def test_field_validation_strict_and_warn(cluster: Cluster, ns: str, widget_crd: dict) -> None:
    body = {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": "strict"},
            "spec": {"size": 1, "sizee": 2}}
    status, _, out = raw(cluster.api, "POST", f"/apis/{GROUP}/v1/namespaces/{ns}/widgets?fieldValidation=Strict",
                         body=body, content_type="application/json")
    assert status == 400 and 'unknown field "spec.sizee"' in json.loads(out)["message"]
    status, headers, out = raw(cluster.api, "POST", f"/apis/{GROUP}/v1/namespaces/{ns}/widgets?fieldValidation=Warn",
                               body=body, content_type="application/json")
    assert status == 201 and "sizee" not in json.loads(out)["spec"]
    assert 'unknown field \\"spec.sizee\\"' in headers.get("Warning", "")
