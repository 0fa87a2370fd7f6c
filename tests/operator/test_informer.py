"""The informer against the sandbox: list then watch, every change seen once the watch is dropped,
expired (410) or failing, and the cache equal to the server's state."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from hsmd import kube
from hsmd.operator.informer import Informer
from hsmd.sandbox import SandboxHandle, run_sandbox
from tests.operator.stack import ensure_namespace, wait_until

CONFIGMAPS = kube.Resource("v1", "ConfigMap", "configmaps", namespaced=True, has_status=False)


@pytest.fixture()
def cluster() -> Iterator[tuple[SandboxHandle, Any]]:
    with run_sandbox() as sandbox:
        api = kube.api_client(sandbox.kubeconfig)
        ensure_namespace(api, "inf")
        yield sandbox, api
        api.close()


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, str, str | None]] = []

    def __call__(self, etype: str, old: Any, new: Any) -> None:
        obj = new if new is not None else old
        with self.lock:
            self.events.append((etype, obj["metadata"]["name"], ((new or {}).get("data") or {}).get("v")))

    def seen(self, etype: str, name: str, value: str | None = None) -> bool:
        with self.lock:
            return any(e == (etype, name, value) or (value is None and e[:2] == (etype, name)) for e in self.events)


def configmap(api: Any, name: str, value: str) -> None:
    kube.request(api, "POST", "/api/v1/namespaces/inf/configmaps",
                 body={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"v": value}})


def update(api: Any, name: str, value: str) -> None:
    kube.request(api, "PATCH", f"/api/v1/namespaces/inf/configmaps/{name}", body={"data": {"v": value}},
                 content_type=kube.MERGE_PATCH)


def server_state(api: Any) -> dict[str, str]:
    items = kube.request(api, "GET", "/api/v1/namespaces/inf/configmaps")["items"]
    return {i["metadata"]["name"]: (i.get("data") or {}).get("v") for i in items}


def cache_state(informer: Informer) -> dict[str, str]:
    return {o["metadata"]["name"]: (o.get("data") or {}).get("v") for o in informer.items()}


def test_list_then_watch_and_no_change_missed_across_faults(cluster: tuple[SandboxHandle, Any]) -> None:
    sandbox, api = cluster
    configmap(api, "before", "0")
    recorder = Recorder()
    informer = Informer(api, CONFIGMAPS, recorder, namespaces=["inf"], watch_timeout=30, backoff_base=0.05,
                        backoff_cap=0.5)
    informer.start()
    try:
        assert informer.wait_synced(10)
        assert recorder.seen("ADDED", "before")
        configmap(api, "a", "1")
        update(api, "before", "1")
        wait_until(lambda: recorder.seen("MODIFIED", "before", "1") and recorder.seen("ADDED", "a"), 10, "watch events")

        # the server drops every watch: re-watch from the last resourceVersion
        sandbox.faults.close_watches()
        update(api, "a", "2")
        wait_until(lambda: recorder.seen("MODIFIED", "a", "2"), 10, "the change after a dropped watch")

        # the history is gone (410): relist, and report what changed meanwhile, deletions included
        relists = informer.relists
        sandbox.faults.expire_next_watch(2)
        sandbox.faults.close_watches()
        kube.request(api, "DELETE", "/api/v1/namespaces/inf/configmaps/before")
        configmap(api, "b", "3")
        wait_until(lambda: informer.relists > relists, 10, "a relist after 410 Gone")
        wait_until(lambda: recorder.seen("DELETED", "before") and recorder.seen("ADDED", "b"), 10,
                   "changes made around the relist")

        # the API fails for a while: back off and recover
        sandbox.faults.fail_next(3, verb="watch", status=503)
        sandbox.faults.fail_next(2, verb="list", status=500)
        sandbox.faults.expire_next_watch(1)
        sandbox.faults.close_watches()
        update(api, "b", "4")
        configmap(api, "c", "5")
        wait_until(lambda: cache_state(informer) == server_state(api), 20, "the cache to match the server")
        assert recorder.seen("MODIFIED", "b", "4") or recorder.seen("ADDED", "b", "4")
        assert recorder.seen("ADDED", "c")
    finally:
        informer.stop()


def test_bookmarks_move_the_resource_version(cluster: tuple[SandboxHandle, Any]) -> None:
    """With only other kinds changing, bookmarks keep the watch resumable (no relist needed)."""
    _sandbox, api = cluster
    recorder = Recorder()
    informer = Informer(api, CONFIGMAPS, recorder, namespaces=["inf"], watch_timeout=2)
    informer.start()
    try:
        assert informer.wait_synced(10)
        for i in range(3):
            kube.request(api, "POST", "/api/v1/namespaces/inf/secrets",
                         body={"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"s{i}"}})
        wait_until(lambda: informer.watch_restarts >= 2, 15, "the watch to time out and resume")
        assert informer.relists == 1
    finally:
        informer.stop()
