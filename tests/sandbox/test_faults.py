"""Fault injection (sandbox only): failures, latency, dropped watches, forced 410, pause — in
process through ``SandboxHandle.faults`` and from another process through /sandbox/faults."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from hsmd.sandbox import SandboxHandle, run_sandbox
from tests.fixtures.sandbox import start_sandbox_process

pytestmark = pytest.mark.sandbox_only


@pytest.fixture
def sb() -> Iterator[tuple[SandboxHandle, client.CoreV1Api]]:
    with run_sandbox() as handle:
        api = handle.api_client()
        yield handle, client.CoreV1Api(api)
        api.close()


def test_fail_next_matching_requests(sb: tuple[SandboxHandle, client.CoreV1Api]) -> None:
    handle, core = sb
    handle.faults.fail_next(2, verb="list", resource="configmaps", status=503)
    core.list_namespaced_secret("default")  # other resources unaffected
    for _ in range(2):
        with pytest.raises(ApiException) as err:
            core.list_namespaced_config_map("default")
        assert err.value.status == 503
    core.list_namespaced_config_map("default")  # the third succeeds


def test_429_carries_retry_after(sb: tuple[SandboxHandle, client.CoreV1Api]) -> None:
    handle, core = sb
    handle.faults.fail_next(1, verb="create", status=429, retry_after=3)
    with pytest.raises(ApiException) as err:
        core.create_namespaced_config_map("default", {"metadata": {"name": "x"}})
    assert err.value.status == 429
    assert err.value.headers["Retry-After"] == "3"
    assert '"retryAfterSeconds":3' in err.value.body


def test_latency(sb: tuple[SandboxHandle, client.CoreV1Api]) -> None:
    handle, core = sb
    handle.faults.add_latency(0.3, verb="get", count=1)
    core.create_namespaced_config_map("default", {"metadata": {"name": "slow"}})
    started = time.monotonic()
    core.read_namespaced_config_map("slow", "default")
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    core.read_namespaced_config_map("slow", "default")
    assert time.monotonic() - started < 0.3


def test_close_watches_ends_streams(sb: tuple[SandboxHandle, client.CoreV1Api]) -> None:
    handle, core = sb
    ended = threading.Event()

    def run() -> None:
        resp = core.list_namespaced_config_map("default", watch=True, _preload_content=False, timeout_seconds=30)
        for _ in resp.stream():
            pass
        ended.set()

    threading.Thread(target=run, daemon=True).start()
    time.sleep(0.3)
    assert handle.faults.close_watches() >= 1
    assert ended.wait(5)


def test_expire_next_watch(sb: tuple[SandboxHandle, client.CoreV1Api]) -> None:
    handle, core = sb
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    handle.faults.expire_next_watch()
    with pytest.raises(ApiException) as err:
        list(watch.Watch().stream(core.list_namespaced_config_map, "default", resource_version=rv,
                                  timeout_seconds=1))
    assert err.value.status == 410
    assert list(watch.Watch().stream(core.list_namespaced_config_map, "default", resource_version=rv,
                                     timeout_seconds=1)) == []


def test_pause_and_resume(sb: tuple[SandboxHandle, client.CoreV1Api]) -> None:
    handle, core = sb
    handle.faults.pause()
    done = threading.Event()

    def call() -> None:
        core.list_namespace()
        done.set()

    threading.Thread(target=call, daemon=True).start()
    assert not done.wait(0.5)
    handle.faults.resume()
    assert done.wait(5)


def test_remote_fault_control_of_a_sandbox_process(tmp_path: Path) -> None:
    with start_sandbox_process(tmp_path, "--require-auth") as proc:
        configuration = client.Configuration()
        from kubernetes import config

        config.load_kube_config(config_file=proc.kubeconfig, client_configuration=configuration)
        with client.ApiClient(configuration) as api:
            core = client.CoreV1Api(api)
            proc.faults.fail_next(1, resource="namespaces", status=500, message="boom")
            with pytest.raises(ApiException) as err:
                core.list_namespace()
            assert err.value.status == 500 and "boom" in err.value.body
            assert core.list_namespace().items
            state = proc.faults.state()
            assert state["fail"] == [] and state["paused"] is False
            proc.faults.pause()
            assert proc.faults.state()["paused"] is True
            proc.faults.resume()
            assert core.list_namespace().items
