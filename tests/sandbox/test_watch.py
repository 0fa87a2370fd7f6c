"""Watch semantics: events from a resourceVersion, bookmarks, timeouts, 410 Gone, selectors."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from hsmd.sandbox import SandboxHandle, run_sandbox
from tests.sandbox.conftest import Cluster, unique


def _cm(name: str, labels: dict | None = None, **data: str) -> dict:
    return {"metadata": {"name": name, "labels": labels or {}}, "data": data}


def _collect(stream: Iterator[dict], n: int, into: list, done: threading.Event) -> None:
    for ev in stream:
        into.append((ev["type"], ev["object"]))
        if len(into) >= n:
            break
    done.set()


def test_watch_from_resource_version_sees_changes_in_order(cluster: Cluster, ns: str) -> None:
    start = cluster.core.list_namespaced_config_map(ns).metadata.resource_version
    cluster.core.create_namespaced_config_map(ns, _cm("w1", a="1"))
    cluster.core.patch_namespaced_config_map("w1", ns, {"data": {"a": "2"}})
    cluster.core.delete_namespaced_config_map("w1", ns)
    events = []
    for ev in watch.Watch().stream(cluster.core.list_namespaced_config_map, ns, resource_version=start,
                                   timeout_seconds=1):
        events.append((ev["type"], ev["object"].metadata.name, int(ev["object"].metadata.resource_version)))
    mine = [e for e in events if e[1] == "w1"]
    assert [t for t, _, _ in mine] == ["ADDED", "MODIFIED", "DELETED"]
    assert [rv for _, _, rv in mine] == sorted(rv for _, _, rv in mine)


def test_watch_without_resource_version_starts_with_current_state(cluster: Cluster, ns: str) -> None:
    cluster.core.create_namespaced_config_map(ns, _cm("pre"))
    seen = [(ev["type"], ev["object"].metadata.name)
            for ev in watch.Watch().stream(cluster.core.list_namespaced_config_map, ns, timeout_seconds=1)]
    assert ("ADDED", "pre") in seen


def test_watch_streams_live_events(cluster: Cluster, ns: str) -> None:
    rv = cluster.core.list_namespaced_config_map(ns).metadata.resource_version
    got: list = []
    done = threading.Event()
    w = watch.Watch()
    stream = w.stream(cluster.core.list_namespaced_config_map, ns, resource_version=rv, timeout_seconds=10)
    t = threading.Thread(target=_collect, args=(stream, 2, got, done), daemon=True)
    t.start()
    time.sleep(0.2)
    cluster.core.create_namespaced_config_map(ns, _cm("live"))
    cluster.core.patch_namespaced_config_map("live", ns, {"data": {"x": "y"}})
    assert done.wait(10), got
    w.stop()
    assert [(t, o.metadata.name) for t, o in got] == [("ADDED", "live"), ("MODIFIED", "live")]


def test_timeout_seconds_is_honoured(cluster: Cluster, ns: str) -> None:
    started = time.monotonic()
    list(watch.Watch().stream(cluster.core.list_namespaced_config_map, ns, timeout_seconds=2,
                              resource_version=cluster.core.list_namespaced_config_map(ns).metadata.resource_version))
    elapsed = time.monotonic() - started
    assert 1.5 <= elapsed < 6


def test_cluster_wide_watch_spans_namespaces(cluster: Cluster, ns: str) -> None:
    other = unique("hsmd-conf-b")
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    try:
        rv = cluster.core.list_config_map_for_all_namespaces(limit=1).metadata.resource_version
        label = {"hsmd.test/watch": unique("x")}
        cluster.core.create_namespaced_config_map(ns, _cm("a", label))
        cluster.core.create_namespaced_config_map(other, _cm("b", label))
        selector = ",".join(f"{k}={v}" for k, v in label.items())
        seen = {(ev["object"].metadata.namespace, ev["object"].metadata.name)
                for ev in watch.Watch().stream(cluster.core.list_config_map_for_all_namespaces,
                                               resource_version=rv, label_selector=selector, timeout_seconds=1)}
        assert seen == {(ns, "a"), (other, "b")}
    finally:
        cluster.core.delete_namespace(other)


def test_label_selector_watch_reports_objects_leaving_the_selection(cluster: Cluster, ns: str) -> None:
    rv = cluster.core.list_namespaced_config_map(ns).metadata.resource_version
    cluster.core.create_namespaced_config_map(ns, _cm("sel", {"team": "a"}))
    cluster.core.patch_namespaced_config_map("sel", ns, {"metadata": {"labels": {"team": "b"}}})
    cluster.core.patch_namespaced_config_map("sel", ns, {"metadata": {"labels": {"team": "a"}}})
    events = [ev["type"] for ev in watch.Watch().stream(cluster.core.list_namespaced_config_map, ns,
                                                        resource_version=rv, label_selector="team=a",
                                                        timeout_seconds=1)]
    assert events == ["ADDED", "DELETED", "ADDED"]


@pytest.fixture
def small_history() -> Iterator[SandboxHandle]:
    with run_sandbox(history_window=5, bookmark_interval=0.2) as handle:
        yield handle


def test_watch_from_a_compacted_resource_version_is_gone(cluster: Cluster, request: pytest.FixtureRequest) -> None:
    """A real cluster has long compacted resourceVersion 1; the sandbox gets a 5-event history window."""
    if cluster.is_sandbox:
        handle = request.getfixturevalue("small_history")
        api = handle.api_client()
        ns = "default"
    else:
        api = cluster.api
        ns = request.getfixturevalue("ns")
    core = client.CoreV1Api(api)
    old = "1" if not cluster.is_sandbox else core.list_namespaced_config_map(ns).metadata.resource_version
    for i in range(10):
        core.create_namespaced_config_map(ns, _cm(f"h{i}"))
    with pytest.raises(ApiException) as err:
        list(watch.Watch().stream(core.list_namespaced_config_map, ns, resource_version=old, timeout_seconds=2))
    assert err.value.status == 410 and "Expired" in str(err.value.reason)
    recent = core.list_namespaced_config_map(ns).metadata.resource_version
    assert list(watch.Watch().stream(core.list_namespaced_config_map, ns, resource_version=recent,
                                     timeout_seconds=1)) == []
    if cluster.is_sandbox:
        api.close()


@pytest.mark.sandbox_only
def test_bookmarks_carry_the_current_resource_version(small_history: SandboxHandle) -> None:
    api = small_history.api_client()
    core = client.CoreV1Api(api)
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("kube-system", _cm("elsewhere"))
    w = watch.Watch()
    events = list(w.stream(core.list_namespaced_config_map, "default", resource_version=rv,
                           allow_watch_bookmarks=True, timeout_seconds=1, deserialize=False))
    bookmarks = [e for e in events if e["type"] == "BOOKMARK"]
    assert bookmarks, events
    latest = bookmarks[-1]["object"]
    assert latest["kind"] == "ConfigMap" and set(latest["metadata"]) <= {"resourceVersion", "creationTimestamp",
                                                                          "annotations"}
    assert int(latest["metadata"]["resourceVersion"]) > int(rv)
    api.close()


def test_send_initial_events_ends_with_marked_bookmark(cluster: Cluster, ns: str) -> None:
    cluster.core.create_namespaced_config_map(ns, _cm("init"))
    try:
        events = list(watch.Watch().stream(cluster.core.list_namespaced_config_map, ns, timeout_seconds=1,
                                           allow_watch_bookmarks=True, send_initial_events=True,
                                           resource_version_match="NotOlderThan", resource_version="",
                                           deserialize=False))
    except ApiException as exc:
        if not cluster.is_sandbox and exc.status in (400, 422):
            pytest.skip("WatchList is not enabled on this cluster")
        raise
    names = [e["object"]["metadata"].get("name") for e in events if e["type"] == "ADDED"]
    assert "init" in names
    marks = [e for e in events if e["type"] == "BOOKMARK"
             and (e["object"]["metadata"].get("annotations") or {}).get("k8s.io/initial-events-end") == "true"]
    assert len(marks) == 1
