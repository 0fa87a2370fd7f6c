"""End to end on one shared stack: sandbox API + real SoftHSM agent + ``hsmd operator`` running the
real hsm_secret role through ansible-runner."""

from __future__ import annotations

import base64
import os
import subprocess
import time
from pathlib import Path

import pytest

from hsmd import kube, render
from tests.operator.stack import Stack, wait_until

pytestmark = pytest.mark.slow


def test_create_gives_secret_with_data_owner_finalizer_status_and_event(stack: Stack, names: str) -> None:
    data = {"username": b"admin", "password": b"pw-\x00\xff-create"}
    stack.client().write(stack.path(names), data)
    created = stack.create(names, secretName=f"{names}-secret")
    stack.wait_data(f"{names}-secret", data, timeout=90)

    secret = stack.secret(f"{names}-secret")
    assert secret is not None
    (owner,) = secret["metadata"]["ownerReferences"]
    assert owner["kind"] == "HSMSecret" and owner["uid"] == created["metadata"]["uid"] and owner["controller"]
    assert secret["metadata"]["labels"][render.MANAGED_BY_LABEL] == render.MANAGED_BY
    assert secret["type"] == "Opaque"

    cond = stack.wait_reason(names, "Synced")
    assert cond["status"] == "True" and cond["observedGeneration"] == 1
    obj = stack.hsmsecret(names)
    assert obj is not None
    status = obj["status"]
    assert status["syncStatus"] == "InSync"
    assert status["hsmChecksum"] == status["secretChecksum"] == stack.client().checksum(stack.path(names))
    assert status["secretRef"]["name"] == f"{names}-secret"
    assert status["lastSyncTime"]
    assert "hsm.j5t.io/finalizer" in obj["metadata"]["finalizers"]
    wait_until(lambda: any(e["reason"] == "Synced" for e in stack.events(names)), 30, "a Synced Event")
    assert stack.operator is not None
    assert stack.operator.ansible_runs() >= 1


def test_hsm_change_through_the_agent_reaches_the_secret_fast(stack: Stack, names: str) -> None:
    client = stack.client()
    client.write(stack.path(names), {"v": b"1"})
    stack.create(names)
    stack.wait_data(names, {"v": b"1"}, timeout=90)
    stack.wait_reason(names, "Synced")
    assert stack.operator is not None
    runs_before = stack.operator.ansible_runs()
    latencies = []
    for i in range(2, 7):
        start = time.monotonic()
        client.write(stack.path(names), {"v": str(i).encode()})
        stack.wait_data(names, {"v": str(i).encode()}, timeout=30)
        latencies.append(time.monotonic() - start)
    latencies.sort()
    print(f"change-to-Secret latencies: {[round(x, 3) for x in latencies]}")
    assert latencies[len(latencies) // 2] < 5.0  # the benchmark holds the real goal (p95 <= 2 s)
    assert stack.operator.ansible_runs() == runs_before  # data changes take the fast path, no ansible run


def test_moving_bytes_between_key_and_value_is_a_change(stack: Stack, names: str) -> None:
    client = stack.client()
    client.write(stack.path(names), {"a": b"bc"})
    stack.create(names)
    stack.wait_data(names, {"a": b"bc"}, timeout=90)
    stack.wait_reason(names, "Synced")
    client.write(stack.path(names), {"ab": b"c"})
    stack.wait_data(names, {"ab": b"c"}, timeout=30)
    wait_until(lambda: (stack.hsmsecret(names) or {}).get("status", {}).get("hsmChecksum")
               == client.checksum(stack.path(names)), 30, "status with the new checksum")


def test_secret_edited_or_deleted_by_hand_is_repaired(stack: Stack, names: str) -> None:
    data = {"token": b"from-the-hsm"}
    stack.client().write(stack.path(names), data)
    stack.create(names)
    stack.wait_data(names, data, timeout=90)
    stack.wait_reason(names, "Synced")
    kube.request(stack.api, "PATCH", f"/api/v1/namespaces/{stack.namespace}/secrets/{names}",
                 body={"data": {"token": base64.b64encode(b"tampered").decode(), "extra": "eA=="}},
                 content_type=kube.MERGE_PATCH)
    stack.wait_data(names, data, timeout=30)
    kube.request(stack.api, "DELETE", f"/api/v1/namespaces/{stack.namespace}/secrets/{names}")
    stack.wait_data(names, data, timeout=30)


def test_deleting_the_hsmsecret_removes_its_secret_and_finalizer(stack: Stack, names: str) -> None:
    stack.client().write(stack.path(names), {"k": b"v"})
    stack.create(names)
    stack.wait_data(names, {"k": b"v"}, timeout=90)
    stack.wait_reason(names, "Synced")
    stack.delete(names)
    wait_until(lambda: stack.hsmsecret(names) is None, 60, "the HSMSecret to be gone (finalizer removed)")
    stack.wait_gone(names, timeout=30)
    assert stack.client().read(stack.path(names)).data == {"k": b"v"}  # HSM data untouched


def test_existing_unowned_secret_is_left_alone_with_conflict(stack: Stack, names: str) -> None:
    foreign = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": names},
               "stringData": {"mine": "not-yours"}}
    kube.request(stack.api, "POST", f"/api/v1/namespaces/{stack.namespace}/secrets", body=foreign)
    stack.client().write(stack.path(names), {"k": b"hsm"})
    stack.create(names)
    cond = stack.wait_reason(names, "Conflict", timeout=90)
    assert cond["status"] == "False"
    assert stack.secret_data(names) == {"mine": b"not-yours"}
    assert not (stack.secret(names) or {})["metadata"].get("ownerReferences")
    wait_until(lambda: any(e["reason"] == "Conflict" for e in stack.events(names)), 30, "a Conflict Event")


def test_forbidden_path_gets_no_secret(stack: Stack, names: str) -> None:
    stack.client().write(f"other-team/{names}", {"k": b"v"})
    stack.create(names, path=f"other-team/{names}")
    cond = stack.wait_reason(names, "Forbidden", timeout=90)
    assert "access policy" in cond["message"]
    time.sleep(1)
    assert stack.secret(names) is None
    wait_until(lambda: any(e["reason"] == "Forbidden" for e in stack.events(names)), 30, "a Forbidden Event")


def test_missing_source_keeps_state_and_status_only_updates_do_not_loop(stack: Stack, names: str) -> None:
    stack.create(names)
    stack.wait_reason(names, "SourceMissing", timeout=90)
    assert stack.secret(names) is None
    assert stack.operator is not None
    runs = stack.operator.ansible_runs()
    # a status-only update (what the operator itself writes) must not start a reconcile
    kube.request(stack.api, "PATCH", f"/apis/{kube.API_VERSION}/namespaces/{stack.namespace}/hsmsecrets/{names}/status",
                 body={"status": {"lastError": "poke"}}, content_type=kube.MERGE_PATCH)
    time.sleep(3)
    assert stack.operator.ansible_runs() == runs
    # the source appears: the agent's change stream brings it in without a run
    stack.client().write(stack.path(names), {"late": b"arrival"})
    stack.wait_data(names, {"late": b"arrival"}, timeout=30)
    assert stack.operator.ansible_runs() == runs
    # a spec change is a new generation: the role reconciles it
    stack.patch_spec(names, {"secretName": f"{names}-renamed"})
    stack.wait_data(f"{names}-renamed", {"late": b"arrival"}, timeout=90)
    wait_until(lambda: stack.ready(names).get("observedGeneration") == 2, 30, "Ready for generation 2")
    stack.wait_gone(names)  # the Secret under the old name is removed
    assert stack.operator.ansible_runs() > runs


def test_write_behind_the_agents_back_is_caught_by_the_resync(stack: Stack, names: str, tmp_path: Path) -> None:
    stack.create(names, syncInterval=10)
    stack.wait_reason(names, "SourceMissing", timeout=90)
    value = tmp_path / "value"
    value.write_bytes(b"written-with-pkcs11-tool")
    token = stack.token.token
    env = dict(os.environ, SOFTHSM2_CONF=token.conf, PKCS11_TEST_PIN=stack.token.pin)
    done = subprocess.run(
        ["pkcs11-tool", "--module", token.library, "--token-label", token.label, "--login", "--pin",
         "env:PKCS11_TEST_PIN", "--write-object", str(value), "--type", "data", "--private",
         "--label", f"{stack.path(names)}/key", "--application-label", "hsm-secrets-operator"],
        env=env, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    stack.wait_data(names, {"key": b"written-with-pkcs11-tool"}, timeout=60)


def test_no_secret_value_in_runner_artifacts_or_logs(stack: Stack) -> None:
    """Every value the tests above wrote stays out of the runner's files and the operator's log."""
    assert stack.operator is not None
    files = [p for p in stack.operator.runner_dir.rglob("*") if p.is_file()]
    assert files, "no runner artifacts were kept"
    needles = [b"pw-\x00\xff-create", b"from-the-hsm", b"written-with-pkcs11-tool", b"arrival"]
    for path in [*files, stack.operator.log_path]:
        content = path.read_bytes()
        for needle in needles:
            assert needle not in content, f"{needle!r} found in {path}"
            assert base64.b64encode(needle) not in content, f"base64 of {needle!r} found in {path}"


def test_auto_sync_off_does_not_follow_hsm_changes(stack: Stack, names: str) -> None:
    client = stack.client()
    client.write(stack.path(names), {"v": b"first"})
    stack.create(names, autoSync=False, syncInterval=10)
    stack.wait_data(names, {"v": b"first"}, timeout=90)
    stack.wait_reason(names, "Synced")
    client.write(stack.path(names), {"v": b"second"})
    time.sleep(4)  # change stream and resync ticks come and go
    assert stack.secret_data(names) == {"v": b"first"}
    assert stack.ready(names)["reason"] == "Synced"
