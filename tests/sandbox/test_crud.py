"""Object semantics: identity, resourceVersion, generation, errors as Status, list options."""

from __future__ import annotations

import json

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from tests.sandbox.conftest import GROUP, Cluster, unique, widget


def _status(err: ApiException) -> dict:
    body = json.loads(err.body)
    assert body["kind"] == "Status" and body["apiVersion"] == "v1" and body["status"] == "Failure"
    assert body["code"] == err.status
    return body


def _cm(name: str, labels: dict | None = None, **data: str) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels=labels), data=data or None)


def test_create_sets_identity_and_resource_version(cluster: Cluster, ns: str) -> None:
    made = cluster.core.create_namespaced_config_map(ns, _cm("one", a="1"))
    assert made.metadata.uid and made.metadata.creation_timestamp and made.metadata.resource_version
    assert made.metadata.namespace == ns
    again = cluster.core.read_namespaced_config_map("one", ns)
    assert again.metadata.uid == made.metadata.uid
    assert again.metadata.resource_version == made.metadata.resource_version
    assert again.data == {"a": "1"}


def test_resource_version_increases_across_kinds(cluster: Cluster, ns: str) -> None:
    rvs = []
    for i in range(3):
        rvs.append(int(cluster.core.create_namespaced_config_map(ns, _cm(f"c{i}")).metadata.resource_version))
        rvs.append(int(cluster.core.create_namespaced_secret(ns, client.V1Secret(
            metadata=client.V1ObjectMeta(name=f"s{i}"))).metadata.resource_version))
    assert rvs == sorted(rvs) and len(set(rvs)) == len(rvs)
    listed = cluster.core.list_namespaced_config_map(ns)
    assert int(listed.metadata.resource_version) >= rvs[-1]


def test_already_exists_and_not_found_are_status_errors(cluster: Cluster, ns: str) -> None:
    cluster.core.create_namespaced_config_map(ns, _cm("dup"))
    with pytest.raises(ApiException) as err:
        cluster.core.create_namespaced_config_map(ns, _cm("dup"))
    body = _status(err.value)
    assert err.value.status == 409 and body["reason"] == "AlreadyExists"
    assert body["details"] == {"name": "dup", "kind": "configmaps"}
    assert body["message"] == 'configmaps "dup" already exists'
    with pytest.raises(ApiException) as err:
        cluster.core.read_namespaced_config_map("missing", ns)
    body = _status(err.value)
    assert err.value.status == 404 and body["reason"] == "NotFound"
    assert body["message"] == 'configmaps "missing" not found'


def test_create_in_missing_namespace_is_404(cluster: Cluster) -> None:
    with pytest.raises(ApiException) as err:
        cluster.core.create_namespaced_config_map(unique("nope"), _cm("x"))
    assert err.value.status == 404 and _status(err.value)["details"]["kind"] == "namespaces"


def test_update_with_stale_resource_version_conflicts(cluster: Cluster, ns: str) -> None:
    first = cluster.core.create_namespaced_config_map(ns, _cm("cas", a="1"))
    first.data = {"a": "2"}
    second = cluster.core.replace_namespaced_config_map("cas", ns, first)
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    first.data = {"a": "3"}  # still carries the old resourceVersion
    with pytest.raises(ApiException) as err:
        cluster.core.replace_namespaced_config_map("cas", ns, first)
    body = _status(err.value)
    assert err.value.status == 409 and body["reason"] == "Conflict"
    assert "the object has been modified" in body["message"]
    assert cluster.core.read_namespaced_config_map("cas", ns).data == {"a": "2"}


def test_noop_update_keeps_resource_version(cluster: Cluster, ns: str) -> None:
    made = cluster.core.create_namespaced_config_map(ns, _cm("same", a="1"))
    again = cluster.core.replace_namespaced_config_map("same", ns, made)
    assert again.metadata.resource_version == made.metadata.resource_version
    patched = cluster.core.patch_namespaced_config_map("same", ns, {"data": {"a": "1"}})
    assert patched.metadata.resource_version == made.metadata.resource_version


def test_generate_name(cluster: Cluster, ns: str) -> None:
    made = cluster.core.create_namespaced_config_map(ns, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(generate_name="gen-")))
    assert made.metadata.name.startswith("gen-") and len(made.metadata.name) == len("gen-") + 5


def test_invalid_name_is_422_with_cause(cluster: Cluster, ns: str) -> None:
    with pytest.raises(ApiException) as err:
        cluster.core.create_namespaced_config_map(ns, _cm("Bad_Name"))
    body = _status(err.value)
    assert err.value.status == 422 and body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    assert body["message"].startswith('ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name"')


def test_namespace_in_body_must_match_url(cluster: Cluster, ns: str) -> None:
    body = _cm("x")
    body.metadata.namespace = "kube-system"
    with pytest.raises(ApiException) as err:
        cluster.core.create_namespaced_config_map(ns, body)
    assert err.value.status == 400 and _status(err.value)["reason"] == "BadRequest"


def test_generation_bumps_only_on_spec_changes(cluster: Cluster, ns: str, widget_crd: dict) -> None:
    co = cluster.custom
    made = co.create_namespaced_custom_object(GROUP, "v1", ns, "widgets", widget("gen", 1))
    assert made["metadata"]["generation"] == 1
    labelled = co.patch_namespaced_custom_object(GROUP, "v1", ns, "widgets", "gen",
                                                 {"metadata": {"labels": {"x": "y"}}})
    assert labelled["metadata"]["generation"] == 1
    assert int(labelled["metadata"]["resourceVersion"]) > int(made["metadata"]["resourceVersion"])
    status = co.patch_namespaced_custom_object_status(GROUP, "v1", ns, "widgets", "gen",
                                                      {"status": {"phase": "Ready"}})
    assert status["metadata"]["generation"] == 1
    resized = co.patch_namespaced_custom_object(GROUP, "v1", ns, "widgets", "gen", {"spec": {"size": 2}})
    assert resized["metadata"]["generation"] == 2


def test_custom_resource_update_requires_resource_version(cluster: Cluster, ns: str, widget_crd: dict) -> None:
    co = cluster.custom
    made = co.create_namespaced_custom_object(GROUP, "v1", ns, "widgets", widget("rv", 1))
    del made["metadata"]["resourceVersion"]
    made["spec"]["size"] = 3
    with pytest.raises(ApiException) as err:
        co.replace_namespaced_custom_object(GROUP, "v1", ns, "widgets", "rv", made)
    assert err.value.status == 422
    assert _status(err.value)["details"]["causes"][0]["field"] == "metadata.resourceVersion"


def test_label_selectors(cluster: Cluster, ns: str) -> None:
    for name, labels in (("a", {"app": "web", "tier": "front"}), ("b", {"app": "web", "tier": "back"}),
                         ("c", {"app": "db"}), ("d", None)):
        cluster.core.create_namespaced_config_map(ns, _cm(name, labels))

    def names(selector: str) -> list[str]:
        items = cluster.core.list_namespaced_config_map(ns, label_selector=selector).items
        return sorted(i.metadata.name for i in items if i.metadata.name != "kube-root-ca.crt")

    assert names("app=web") == ["a", "b"]
    assert names("app==web") == ["a", "b"]
    assert names("app!=web") == ["c", "d"]
    assert names("tier in (front,back)") == ["a", "b"]
    assert names("app notin (web)") == ["c", "d"]
    assert names("tier") == ["a", "b"]
    assert names("!tier") == ["c", "d"]
    assert names("app=web,tier=back") == ["b"]
    with pytest.raises(ApiException) as err:
        names("app in (")
    assert err.value.status == 400


def test_field_selectors(cluster: Cluster, ns: str) -> None:
    cluster.core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name="plain")))
    cluster.core.create_namespaced_secret(ns, client.V1Secret(
        metadata=client.V1ObjectMeta(name="tls"), type="kubernetes.io/tls",
        string_data={"tls.crt": "c", "tls.key": "k"}))
    by_name = cluster.core.list_namespaced_secret(ns, field_selector="metadata.name=plain").items
    assert [s.metadata.name for s in by_name] == ["plain"]
    by_type = cluster.core.list_namespaced_secret(ns, field_selector="type=kubernetes.io/tls").items
    assert [s.metadata.name for s in by_type] == ["tls"]
    across = cluster.core.list_secret_for_all_namespaces(field_selector=f"metadata.namespace={ns}").items
    assert {s.metadata.name for s in across} >= {"plain", "tls"}
    not_plain = cluster.core.list_namespaced_secret(ns, field_selector="metadata.name!=plain").items
    assert "plain" not in [s.metadata.name for s in not_plain]
    with pytest.raises(ApiException) as err:
        cluster.core.list_namespaced_secret(ns, field_selector="spec.nothing=x")
    assert err.value.status == 400


def test_limit_and_continue(cluster: Cluster, ns: str) -> None:
    for i in range(7):
        cluster.core.create_namespaced_config_map(ns, _cm(f"page-{i}", {"page": "yes"}))
    seen: list[str] = []
    token = None
    pages = 0
    while True:
        page = cluster.core.list_namespaced_config_map(ns, label_selector="page=yes", limit=3, _continue=token)
        pages += 1
        seen += [i.metadata.name for i in page.items]
        token = page.metadata._continue
        if not token:
            break
        assert page.metadata.remaining_item_count is None or page.metadata.remaining_item_count > 0
    assert pages == 3 and seen == sorted(seen) and len(seen) == 7


def test_delete_and_deletecollection(cluster: Cluster, ns: str) -> None:
    for name, labels in (("keep", {"role": "keep"}), ("drop1", {"role": "drop"}), ("drop2", {"role": "drop"})):
        cluster.core.create_namespaced_config_map(ns, _cm(name, labels))
    status = cluster.core.delete_collection_namespaced_config_map(ns, label_selector="role=drop")
    assert status.status == "Success" or status.kind
    left = {i.metadata.name for i in cluster.core.list_namespaced_config_map(ns, label_selector="role").items}
    assert left == {"keep"}
    cluster.core.delete_namespaced_config_map("keep", ns)
    with pytest.raises(ApiException) as err:
        cluster.core.delete_namespaced_config_map("keep", ns)
    assert err.value.status == 404


def test_delete_precondition_uid(cluster: Cluster, ns: str) -> None:
    cluster.core.create_namespaced_config_map(ns, _cm("pre"))
    with pytest.raises(ApiException) as err:
        cluster.core.delete_namespaced_config_map("pre", ns, body=client.V1DeleteOptions(
            preconditions=client.V1Preconditions(uid="00000000-0000-0000-0000-000000000000")))
    assert err.value.status == 409


def test_dry_run_create_stores_nothing(cluster: Cluster, ns: str) -> None:
    made = cluster.core.create_namespaced_config_map(ns, _cm("dry", a="1"), dry_run="All")
    assert made.metadata.name == "dry" and made.metadata.uid
    with pytest.raises(ApiException) as err:
        cluster.core.read_namespaced_config_map("dry", ns)
    assert err.value.status == 404


def test_cluster_scoped_objects(cluster: Cluster) -> None:
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    name = unique("hsmd-conf-role")
    role = rbac.create_cluster_role(client.V1ClusterRole(
        metadata=client.V1ObjectMeta(name=name),
        rules=[client.V1PolicyRule(api_groups=[""], resources=["secrets"], verbs=["get"])]))
    try:
        assert role.metadata.namespace is None
        assert rbac.read_cluster_role(name).rules[0].resources == ["secrets"]
    finally:
        rbac.delete_cluster_role(name)


def test_events_and_leases(cluster: Cluster, ns: str) -> None:
    ev = cluster.core.create_namespaced_event(ns, client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="ev-"),
        involved_object=client.V1ObjectReference(kind="ConfigMap", name="x", namespace=ns),
        reason="Tested", message="hello", type="Normal"))
    found = cluster.core.list_namespaced_event(ns, field_selector="involvedObject.name=x,reason=Tested").items
    assert [e.metadata.name for e in found] == [ev.metadata.name]
    coord = client.CoordinationV1Api(cluster.api)
    lease = coord.create_namespaced_lease(ns, client.V1Lease(
        metadata=client.V1ObjectMeta(name="lock"),
        spec=client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=15)))
    lease.spec.holder_identity = "b"
    updated = coord.replace_namespaced_lease("lock", ns, lease)
    assert updated.spec.holder_identity == "b"


def test_optimistic_concurrency_under_contention(cluster: Cluster, ns: str) -> None:
    """Concurrent read-modify-write loops with conflict retries lose no increment."""
    import threading

    cluster.core.create_namespaced_config_map(ns, _cm("counter", n="0"))
    conflicts = []

    def bump(times: int) -> None:
        for _ in range(times):
            while True:
                cm = cluster.core.read_namespaced_config_map("counter", ns)
                cm.data["n"] = str(int(cm.data["n"]) + 1)
                try:
                    cluster.core.replace_namespaced_config_map("counter", ns, cm)
                    break
                except ApiException as exc:
                    assert exc.status == 409
                    conflicts.append(1)

    threads = [threading.Thread(target=bump, args=(10,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert cluster.core.read_namespaced_config_map("counter", ns).data["n"] == "40"
