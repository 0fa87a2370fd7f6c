"""The collection's platform half against the sandbox API, through real ansible-playbook runs:
modules k8s_status, hsm_pool and hsm_device_info, roles hsm_device and hsm_pool, and the
``hsmd discovery`` daemon as a real subprocess. CRDs come from the chart via hsmd.kube.install_crds.

State modules: check mode, real, check again, real again, asserting ``changed`` each time. Several
module calls share one playbook (ansible-playbook start-up dominates the cost).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from hsmd import kube
from hsmd.pool import DEVICE_REPORT_ANNOTATION, agent_name, build_device_report
from hsmd.service import wait_for_ready_file
from tests.collection.playbook import PlaybookRun, localhost_play, run_playbook
from tests.fixtures.sysfs import standard_tree

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[2]
API = "hsm.j5t.io/v1alpha1"
T0 = datetime(2025, 8, 19, 10, 0, 0, tzinfo=UTC)


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class Cluster:
    """A namespace of its own on the session sandbox, with helpers to create objects."""

    def __init__(self, api: Any, kubeconfig: str, namespace: str) -> None:
        self.api, self.kubeconfig, self.namespace = api, kubeconfig, namespace

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(kube.request(self.api, "POST", path.format(ns=self.namespace), body=body))

    def get(self, path: str) -> dict[str, Any]:
        return dict(kube.request(self.api, "GET", path.format(ns=self.namespace)))

    def hsm_device(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.create(f"/apis/{API}/namespaces/{{ns}}/hsmdevices",
                           {"apiVersion": API, "kind": "HSMDevice", "metadata": {"name": name}, "spec": spec})

    def discovery_pod(self, name: str, node: str, report: str | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/component": "discovery"}}
        if report is not None:
            meta["annotations"] = {DEVICE_REPORT_ANNOTATION: report}
        return self.create("/api/v1/namespaces/{ns}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"nodeName": node, "containers": [{"name": "discovery", "image": "hsmd"}]}})

    def env(self) -> dict[str, str]:
        return {"K8S_AUTH_KUBECONFIG": self.kubeconfig}


@pytest.fixture(scope="module")
def crds_installed(sandbox: Any) -> str:
    api = kube.api_client(sandbox.kubeconfig)
    try:
        kube.install_crds(api)
    finally:
        api.close()
    return str(sandbox.kubeconfig)


@pytest.fixture
def cluster(crds_installed: str) -> Iterator[Cluster]:
    api = kube.api_client(crds_installed)
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    kube.request(api, "POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace",
                                                          "metadata": {"name": namespace}})
    try:
        yield Cluster(api, crds_installed, namespace)
    finally:
        api.close()


def check_real_twice(module: str, args: dict[str, Any]) -> list[dict[str, Any]]:
    """The idempotence sequence: tasks "check", "real", "check again", "real again" (see changed_sequence)."""
    return [
        {"name": "check", module: args, "check_mode": True},
        {"name": "real", module: args},
        {"name": "check again", module: args, "check_mode": True},
        {"name": "real again", module: args},
    ]


def changed_sequence(run: PlaybookRun, *names: str) -> list[bool]:
    return [bool(run.result(name).get("changed")) for name in names]


def report(node: str, devices: list[dict[str, Any]], at: datetime, device: str = "pico", ns: str = "") -> str:
    entries = [dict(d, hsmDeviceName=device, hsmDeviceNamespace=ns, lastSeen=stamp(at)) for d in devices]
    return build_device_report(device, node, entries, at)


# --- k8s_status -----------------------------------------------------------------------------------


def test_k8s_status_check_real_idempotent(cluster: Cluster, tmp_path: Path) -> None:
    cluster.create(f"/apis/{API}/namespaces/{{ns}}/hsmsecrets",
                   {"apiVersion": API, "kind": "HSMSecret", "metadata": {"name": "db"}, "spec": {"hsmPath": "a/db"}})
    ref = {"api_version": API, "kind": "HSMSecret", "name": "db", "namespace": cluster.namespace}
    ready = {**ref, "status": {"syncStatus": "InSync", "hsmChecksum": "sha256:aa", "lastError": "old"},
             "conditions": [{"type": "Ready", "status": "True", "reason": "Synced", "message": "in sync",
                             "observedGeneration": 1}]}
    m = "hsm.secrets.k8s_status"
    tasks = [
        *check_real_twice(m, ready),
        {"name": "message only", m: {**ref, "conditions": [{"type": "Ready", "status": "True", "reason": "Synced",
                                                             "message": "still in sync"}]}},
        {"name": "flip", m: {**ref, "status": {"syncStatus": "Error", "lastError": None},
                             "conditions": [{"type": "Ready", "status": "False", "reason": "Unavailable",
                                             "message": "agent down"}]}, "diff": True},
        {"name": "short name and force", m: {**ref, "kind": "hsmsec", "force": True,
                                              "status": {"syncStatus": "Pending"}}},
        {"name": "bad reason", m: {**ref, "conditions": [{"type": "Ready", "status": "True", "reason": "not camel"}]},
         "ignore_errors": True},
        {"name": "missing object", m: {**ref, "name": "nope", "status": {"syncStatus": "Pending"}},
         "ignore_errors": True},
    ]
    run = run_playbook(tmp_path, [localhost_play(tasks)], env=cluster.env())
    assert changed_sequence(run, "check", "real", "check again", "real again") == [True, True, False, False]
    first = run.result("real")["result"]["status"]["conditions"][0]
    second = run.result("message only")["result"]["status"]["conditions"][0]
    assert run.result("message only")["changed"] and second["message"] == "still in sync"
    assert second["lastTransitionTime"] == first["lastTransitionTime"]  # status unchanged -> time kept
    assert "observedGeneration" not in second  # the whole condition is the one given
    flipped = run.result("flip")
    assert flipped["changed"] and flipped["diff"]["before"]["status"]["syncStatus"] == "InSync"
    status = flipped["result"]["status"]
    assert status["syncStatus"] == "Error" and "lastError" not in status and status["hsmChecksum"] == "sha256:aa"
    assert status["conditions"][0]["status"] == "False"
    assert run.result("short name and force")["result"]["status"] == {"syncStatus": "Pending"}
    assert "CamelCase" in run.result("bad reason")["msg"]
    missing = run.result("missing object")
    assert missing["failed"] and missing["error_code"] == "not_found"
    stored = cluster.get(f"/apis/{API}/namespaces/{{ns}}/hsmsecrets/db")
    assert stored["status"] == {"syncStatus": "Pending"}
    assert stored["spec"]["hsmPath"] == "a/db"


# --- hsm_pool and hsm_device_info -------------------------------------------------------------------


def test_hsm_pool_module_and_device_info(cluster: Cluster, tmp_path: Path) -> None:
    ns = cluster.namespace
    cluster.hsm_device("pico", {"deviceType": "PicoHSM", "discovery": {"autoDiscovery": True},
                                "pkcs11": {"libraryPath": "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so",
                                           "pinSecret": {"name": "pico-pin", "key": "pin"}}})
    cluster.create(f"/apis/{API}/namespaces/{{ns}}/hsmpools", {"apiVersion": API, "kind": "HSMPool",
                                                               "metadata": {"name": "pico-pool"},
                                                               "spec": {"hsmDeviceRefs": ["pico"]}})
    cluster.discovery_pod("disc-a", "w1", report("w1", [{"devicePath": "/dev/bus/usb/001/005",
                                                        "serialNumber": "S1"}], T0, ns=ns))
    cluster.discovery_pod("disc-b", "w2", "{not json")
    cluster.discovery_pod("disc-c", "w3")  # not reported yet
    sysfs = standard_tree(tmp_path / "sys")
    pool = {"name": "pico-pool", "namespace": ns, "now": stamp(T0 + timedelta(seconds=30)), "expected_pods": 2}
    m = "hsm.secrets.hsm_pool"
    tasks = [
        *check_real_twice(m, pool),
        {"name": "later, within grace", m: {**pool, "now": stamp(T0 + timedelta(minutes=4))}},
        {"name": "pure", m: {"pods": [{"metadata": {"name": "x", "annotations": {DEVICE_REPORT_ANNOTATION: "[]"}}}],
                             "now": stamp(T0)}},
        {"name": "devices", "hsm.secrets.hsm_device_info": {"sysfs_root": str(sysfs), "auto_discovery": True,
                                                             "device_type": "SmartCard-HSM"}},
        {"name": "bad sysfs", "hsm.secrets.hsm_device_info": {"sysfs_root": str(tmp_path / "none")},
         "ignore_errors": True},
    ]
    run = run_playbook(tmp_path / "run", [localhost_play(tasks)], env=cluster.env())
    assert changed_sequence(run, "check", "real", "check again", "real again") == [True, True, False, False]
    status = run.result("real")["status"]
    assert status["phase"] == "Partial" and status["expectedPods"] == 2
    pods = {p["podName"]: p for p in status["reportingPods"]}
    assert set(pods) == {"disc-a", "disc-b"} and pods["disc-b"]["discoveryStatus"] == "error"
    assert [d["serialNumber"] for d in status["aggregatedDevices"]] == ["S1"]
    agents = run.result("real")["agents"]
    assert [a["name"] for a in agents] == [agent_name("pico-pool", "S1")]
    assert agents[0]["pinSecretName"] == "pico-pin" and "--pcscd" in agents[0]["args"]
    assert run.result("check")["status"] == status
    # the stored status is what the module returned; re-aggregation 4 minutes later changes only freshness
    stored = cluster.get(f"/apis/{API}/namespaces/{{ns}}/hsmpools/pico-pool")["status"]
    assert stored["phase"] == "Partial" and stored["aggregatedDevices"][0]["available"] is True
    later = run.result("later, within grace")["status"]
    assert later["aggregatedDevices"][0]["available"] is True and later["availableDevices"] == 1
    pure = run.result("pure")
    assert not pure["changed"] and pure["status"]["phase"] == "Error"
    devices = run.result("devices")["devices"]
    assert sorted(d["serialNumber"] for d in devices) == ["DENK0102345", "DENK0200001"]
    assert devices[0]["devicePath"].startswith("/dev/bus/usb/") and devices[0]["vendorId"]
    bad = run.result("bad sysfs")
    assert bad["failed"] and bad["error_code"] == "failed_precondition"


# --- roles hsm_device and hsm_pool ------------------------------------------------------------------


def pool_role(now: datetime, ns: str) -> dict[str, Any]:
    return {"name": f"hsm_pool at {stamp(now)}", "ansible.builtin.include_role": {"name": "hsm_pool"},
            "vars": {"hsm_pool_now": stamp(now), "hsm_pool_discovery_namespace": ns,
                     "hsm_pool_discovery_daemonset": "", "ansible_operator_meta": {"name": "pico-pool",
                                                                                  "namespace": ns}}}


def agents(cluster: Cluster) -> dict[str, dict[str, Any]]:
    listing = kube.request(cluster.api, "GET", f"/apis/apps/v1/namespaces/{cluster.namespace}/deployments",
                           query={"labelSelector": "app.kubernetes.io/name=hsm-agent,hsm.j5t.io/pool=pico-pool"})
    return {d["metadata"]["name"]: d for d in listing["items"]}


def reports(cluster: Cluster, at: datetime, w1: list[dict[str, Any]], w2: list[dict[str, Any]]) -> None:
    for pod, node, devices in (("disc-w1", "w1", w1), ("disc-w2", "w2", w2)):
        kube.patch_pod_annotations(cluster.api, cluster.namespace, pod,
                                   {DEVICE_REPORT_ANNOTATION: report(node, devices, at, ns=cluster.namespace)})


def test_device_and_pool_roles(cluster: Cluster, tmp_path: Path) -> None:
    ns = cluster.namespace
    device = cluster.hsm_device("pico", {
        "deviceType": "PicoHSM", "discovery": {"usb": {"vendorId": "2e8a", "productId": "10fd"}},
        "pkcs11": {"libraryPath": "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so", "tokenLabel": "PicoHSM",
                   "pinSecret": {"name": "pico-pin", "key": "pin"}},
        "mirroring": {"policy": "ReadOnly"}})
    cluster.discovery_pod("disc-w1", "w1")
    cluster.discovery_pod("disc-w2", "w2")
    s1 = {"devicePath": "/dev/bus/usb/001/005", "serialNumber": "PICO-S1"}
    s2 = {"devicePath": "/dev/bus/usb/002/007", "serialNumber": "PICO-S2"}
    t2, t7 = T0 + timedelta(minutes=2), T0 + timedelta(minutes=7)
    a1, a2 = agent_name("pico-pool", "PICO-S1"), agent_name("pico-pool", "PICO-S2")
    reports(cluster, T0, [s1], [s2])
    first = run_playbook(tmp_path / "first", [localhost_play([
        {"name": "hsm_device role", "ansible.builtin.include_role": {"name": "hsm_device"},
         "vars": {"_hsm_j5t_io_hsmdevice": device, "ansible_operator_meta": {"name": "pico", "namespace": ns}}},
        {"name": "hsm_device role again", "ansible.builtin.include_role": {"name": "hsm_device"},
         "vars": {"hsm_batch": [device]}},
        pool_role(T0, ns),
        pool_role(T0, ns),
    ])], env=cluster.env())
    assert not first.failed, first.failed

    pool = cluster.get(f"/apis/{API}/namespaces/{{ns}}/hsmpools/pico-pool")
    owner = pool["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "HSMDevice", "pico", device["metadata"]["uid"], True)
    assert pool["spec"]["hsmDeviceRefs"] == ["pico"] and pool["spec"]["gracePeriod"] == "5m"
    assert pool["spec"]["mirroring"]["policy"] == "ReadOnly"
    dev_status = cluster.get(f"/apis/{API}/namespaces/{{ns}}/hsmdevices/pico")["status"]
    assert dev_status["pool"] == "pico-pool" and dev_status["conditions"][0]["status"] == "True"
    assert [r["changed"] for r in first.results["Ensure the HSMPool owned by each HSMDevice"]] == [True, False]
    assert [r["changed"] for r in first.results["Report the pool on each HSMDevice"]] == [True, False]
    aggregate = first.results["Aggregate discovery reports into the pool status"]
    assert [r["changed"] for r in aggregate] == [True, False]
    assert aggregate[0]["status"]["phase"] == "Ready" and aggregate[0]["status"]["availableDevices"] == 2
    assert [r["changed"] for r in first.results["Ensure one agent per available device"]] == [True, False]

    deployed = agents(cluster)
    assert set(deployed) == {a1, a2}
    d1 = deployed[a1]
    pod_spec = d1["spec"]["template"]["spec"]
    assert pod_spec["nodeSelector"] == {"kubernetes.io/hostname": "w1"}
    assert pod_spec["automountServiceAccountToken"] is False
    args = pod_spec["containers"][0]["args"]
    assert args[:5] == ["agent", "--pkcs11-library", "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so",
                        "--token-label", "PicoHSM"]
    assert args[args.index("--pin-file") + 1] == "/var/run/hsmd/pin/pin" and "--pcscd" in args
    pin_volume = next(v for v in pod_spec["volumes"] if v["name"] == "pin")
    assert pin_volume["secret"]["secretName"] == "pico-pin"
    assert d1["metadata"]["ownerReferences"][0]["kind"] == "HSMPool"
    assert d1["metadata"]["ownerReferences"][0]["uid"] == pool["metadata"]["uid"]
    assert d1["metadata"]["annotations"]["hsm.j5t.io/serial"] == "PICO-S1"
    assert deployed[a2]["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "w2"}

    # S2 unplugged: w2 no longer reports it; within the grace period its agent stays ...
    reports(cluster, t2, [s1], [])
    second = run_playbook(tmp_path / "second", [localhost_play([pool_role(t2, ns)])], env=cluster.env())
    assert not second.failed, second.failed
    assert set(agents(cluster)) == {a1, a2}
    assert second.result("Aggregate discovery reports into the pool status")["status"]["availableDevices"] == 2

    # ... and goes once the device has been gone longer than the 5m grace period
    reports(cluster, t7, [s1], [])
    third = run_playbook(tmp_path / "third", [localhost_play([pool_role(t7, ns)])], env=cluster.env())
    assert not third.failed, third.failed
    assert set(agents(cluster)) == {a1}
    assert third.result("Remove agents whose device has been gone longer than the grace period")["changed"]
    status = cluster.get(f"/apis/{API}/namespaces/{{ns}}/hsmpools/pico-pool")["status"]
    assert [d["serialNumber"] for d in status["aggregatedDevices"]] == ["PICO-S1"]
    assert status["phase"] == "Ready" and status["lastAggregationTime"] == stamp(t7)
    planned = next(c for c in status["conditions"] if c["type"] == "AgentsPlanned")
    assert planned["status"] == "True"


# --- hsmd discovery -------------------------------------------------------------------------------


def discovery(cluster: Cluster, sysfs: Path, *extra: str, pod: str = "disc-n1") -> list[str]:
    return [sys.executable, "-m", "hsmd", "discovery", "--kubeconfig", cluster.kubeconfig, "--sysfs-root",
            str(sysfs), "--namespace", cluster.namespace, "--node-name", "n1", "--pod-name", pod,
            "--pod-namespace", cluster.namespace, *extra]


def pod_report(cluster: Cluster, pod: str = "disc-n1") -> dict[str, Any]:
    obj = cluster.get(f"/api/v1/namespaces/{{ns}}/pods/{pod}")
    return dict(json.loads(obj["metadata"]["annotations"][DEVICE_REPORT_ANNOTATION]))


def test_discovery_daemon_writes_its_pod_annotation(cluster: Cluster, tmp_path: Path) -> None:
    sysfs = standard_tree(tmp_path / "sys")
    cluster.hsm_device("pico", {"deviceType": "PicoHSM", "discovery": {"autoDiscovery": True}})
    cluster.hsm_device("yubi", {"deviceType": "YubiHSM", "discovery": {"autoDiscovery": True},
                                "nodeSelector": {"hsm": "yubi"}})  # n1 has no such label: not served
    cluster.discovery_pod("disc-n1", "n1")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    once = subprocess.run(discovery(cluster, sysfs, "--once"), env=env, capture_output=True, text=True, timeout=60)
    assert once.returncode == 0, once.stderr
    first = pod_report(cluster)
    assert first["hsmDeviceName"] == "pico" and first["reportingNode"] == "n1"
    assert first["discoveryStatus"] == "completed"
    assert sorted(d["serialNumber"] for d in first["discoveredDevices"]) == ["DENK0200001", "PICO0001"]
    assert all(d["hsmDeviceNamespace"] == cluster.namespace for d in first["discoveredDevices"])

    # the loop: reports again every interval, stops cleanly on SIGTERM
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(discovery(cluster, sysfs, "--interval", "0.3", "--ready-file", str(ready)), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = wait_for_ready_file(ready, timeout=30, process=proc)
        assert info["pod"] == "disc-n1"
        before = pod_report(cluster)["lastReportTime"]
        deadline = time.monotonic() + 10
        while pod_report(cluster)["lastReportTime"] == before and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pod_report(cluster)["lastReportTime"] != before
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
    assert proc.returncode == 0, stderr
    assert "PICO0001" not in stderr and '"level":"error"' not in stderr

    # an unreadable sysfs is reported in the annotation (for the pool to see), exit status 1
    broken = subprocess.run(discovery(cluster, tmp_path / "missing", "--once"), env=env, capture_output=True,
                            text=True, timeout=60)
    assert broken.returncode == 1
    failed = pod_report(cluster)
    assert failed["discoveryStatus"] == "error" and "does not exist" in failed["error"]
    assert failed["discoveredDevices"] == []


# --- bootstrap: softhsm + operator roles --------------------------------------------------------------


def test_bootstrap_installs_everything_idempotently(cluster: Cluster, tmp_path: Path) -> None:
    ns = cluster.namespace
    play = f"""
- import_playbook: {ROOT}/playbooks/bootstrap.yml
- import_playbook: {ROOT}/playbooks/bootstrap.yml
"""
    # The CRDs are installed by hsmd.kube.install_crds (fixture). The role's own CRD task is left out:
    # the sandbox rejects a patch of a CRD that carries its customresourcecleanup finalizer (422), which
    # a real API server accepts (reported to the sandbox's owner).
    extravars = {"bootstrap_kubeconfig": cluster.kubeconfig, "bootstrap_namespace": ns,
                 "softhsm_directory": str(tmp_path / "softhsm"), "operator_install_crds": False,
                 "operator_access_policy": {"rules": [{"namespaces": ["team-a"], "paths": ["team-a/**"],
                                                       "verbs": ["get", "list"]}]}}
    run = run_playbook(tmp_path / "run", play, extravars=extravars)
    assert not run.failed, run.failed
    # the second run changes nothing (a skipped task leaves no ok result)
    assert [r.get("changed") for r in run.results["Initialise the token"]] == [True]
    for task in ("Apply the namespace, RBAC, policies and workloads", "Describe the token as an HSMDevice"):
        assert [r.get("changed") for r in run.results[task]] == [True, False], (task, run.results[task])
    pin = (tmp_path / "softhsm" / "pin").read_text()
    run.assert_never_wrote([pin])

    def get(path: str) -> dict[str, Any]:
        return cluster.get(path)

    for sa in ("operator", "discovery", "agent", "proxy"):
        get(f"/api/v1/namespaces/{{ns}}/serviceaccounts/hsm-{sa}")
    assert get("/api/v1/namespaces/{ns}/serviceaccounts/hsm-agent")["automountServiceAccountToken"] is False
    discovery_rules = get("/apis/rbac.authorization.k8s.io/v1/clusterroles/hsm-discovery")["rules"]
    assert {r["apiGroups"][0]: sorted(r["verbs"]) for r in discovery_rules} == {
        "hsm.j5t.io": ["get", "list", "watch"], "": ["get"]}
    assert get("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/hsm-discovery-report")["rules"][0][
        "verbs"] == ["get", "patch"]
    policies = kube.request(cluster.api, "GET", f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies")
    assert {p["metadata"]["name"] for p in policies["items"]} >= {"hsm-default-deny", "hsm-agent"}
    assert get("/api/v1/namespaces/{ns}/resourcequotas/hsm-quota")["spec"]["hard"]["pods"] == "50"
    policy = get("/api/v1/namespaces/{ns}/configmaps/hsm-access-policy")["data"]["policy.yaml"]
    assert "team-a/**" in policy
    from hsmd.policy import Policy

    assert Policy.parse(policy).allows("team-a", "get", "team-a/db")
    daemonset = get("/apis/apps/v1/namespaces/{ns}/daemonsets/hsm-discovery")
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:3] == ["discovery", "--sysfs-root", "/host/sys"]
    assert {e["name"] for e in container["env"]} == {"POD_NAME", "POD_NAMESPACE", "NODE_NAME"}
    proxy = get("/apis/apps/v1/namespaces/{ns}/deployments/hsm-proxy")["spec"]["template"]["spec"]["containers"][0]
    assert f"{ns}/softhsm-dev-pool" in proxy["args"]
    device = get(f"/apis/{API}/namespaces/{{ns}}/hsmdevices/softhsm-dev")["spec"]
    assert device["deviceType"] == "SoftHSM" and device["pkcs11"]["pinSecret"] == {"name": "hsm-dev-pin", "key": "pin"}
    secret = get("/api/v1/namespaces/{ns}/secrets/hsm-dev-pin")
    import base64

    assert base64.b64decode(secret["data"]["pin"]).decode() == pin
