"""hsm.secrets.hsm_secret_sync and the hsm_secret role, run by ansible-runner against the sandbox API
(project CRDs) and a real SoftHSM agent.

One playbook walks a batch through check / real / check again / real again, an HSM change
({"a": "bc"} -> {"ab": "c"}), sources going away (Retain keeps, Delete deletes), a forbidden path,
an unowned Secret (Conflict, untouched) and the finalizer. A second test runs the role the way the
operator does: a batch in ``hsm_batch``, then operator-sdk's single-object extravars, then the
finalizer for an object that is being deleted.
"""

from __future__ import annotations

import base64
import itertools
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from hsmd import model, render
from hsmd.sandbox import SandboxHandle
from tests.collection.playbook import localhost_play, run_playbook
from tests.fixtures.agent import RunningAgent, make_agent_token, start_agent

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
_ns = itertools.count(1)
SECRET_VALUES = ["conflict-value-Tg5h", "retain-value-Wq1e", "delete-value-Rf4d", "foreign-value-Yh8j",
                 "their-value-Ui2k", "role-value-Op0l"]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def ns(api: Any) -> str:
    name = f"module-{next(_ns)}"
    k8s.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    return name


def create_hsmsecret(api: Any, ns: str, name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("hsmPath", f"{ns}/{name}")
    body = {"apiVersion": render.API_VERSION, "kind": render.KIND, "metadata": {"name": name, **spec.pop("meta", {})},
            "spec": spec}
    obj: dict[str, Any] = k8s.CustomObjectsApi(api).create_namespaced_custom_object(
        render.GROUP, render.VERSION, ns, render.PLURAL, body)
    return obj


def secrets_in(api: Any, ns: str) -> dict[str, dict[str, bytes]]:
    items = k8s.CoreV1Api(api).list_namespaced_secret(ns).items
    return {s.metadata.name: {k: base64.b64decode(v) for k, v in (s.data or {}).items()} for s in items}


def by_name(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in results}


def test_hsm_secret_sync_module(api: Any, module_agent: RunningAgent, sandbox: SandboxHandle, ns: str,
                                tmp_path: Path) -> None:
    agent = module_agent.address
    k8s.CoreV1Api(api).create_namespaced_secret(ns, {"metadata": {"name": "conflict"},
                                                     "data": {"theirs": b64("their-value-Ui2k")}})
    for name, spec in [("app", {}), ("retain", {}), ("drop", {"deletionPolicy": "Delete"}), ("conflict", {}),
                       ("forbidden", {"hsmPath": "other-team/x"})]:
        create_hsmsecret(api, ns, name, **spec)
    kube = {"kubeconfig": sandbox.kubeconfig}
    hsm = "hsm.secrets.hsm_secret"
    sync = "hsm.secrets.hsm_secret_sync"
    read = {"name": "read the HSMSecrets", "kubernetes.core.k8s_info": {
        "api_version": render.API_VERSION, "kind": "HSMSecret", "namespace": ns, **kube}, "register": "crs"}
    tasks = [
        {"name": "hsm data", hsm: {"agent": agent, "secrets": [
            {"path": f"{ns}/app", "data_b64": {"a": b64("bc")}},
            {"path": f"{ns}/retain", "data": {"k": "retain-value-Wq1e"}},
            {"path": f"{ns}/drop", "data": {"k": "delete-value-Rf4d"}},
            {"path": f"{ns}/conflict", "data": {"k": "conflict-value-Tg5h"}},
            {"path": "other-team/x", "data": {"k": "foreign-value-Yh8j"}}]}},
        read,
        {"name": "sync check", sync: {"hsmsecrets": "{{ crs.resources }}", "agent": agent, **kube},
         "check_mode": True, "diff": True},
        {"name": "sync", sync: {"hsmsecrets": "{{ crs.resources }}", "agent": agent, "write_status": True, **kube},
         "diff": True},
        read,
        {"name": "sync again check", sync: {"hsmsecrets": "{{ crs.resources }}", "agent": agent,
                                            "write_status": True, **kube}, "check_mode": True},
        {"name": "sync again", sync: {"hsmsecrets": "{{ crs.resources }}", "agent": agent, "write_status": True,
                                      **kube}},
        {"name": "hsm changes", hsm: {"agent": agent, "secrets": [
            {"path": f"{ns}/app", "data_b64": {"ab": b64("c")}},
            {"path": f"{ns}/retain", "state": "absent"},
            {"path": f"{ns}/drop", "state": "absent"}]}},
        read,
        {"name": "sync changes", sync: {"hsmsecrets": "{{ crs.resources }}", "agent": "{{ hsm_agent }}",
                                        "write_status": True, **kube}, "diff": True},
        read,
        {"name": "sync changes again", sync: {"hsmsecrets": "{{ crs.resources }}", "agent": agent,
                                              "write_status": True, **kube}},
        {"name": "statuses", "kubernetes.core.k8s_info": {
            "api_version": render.API_VERSION, "kind": "HSMSecret", "namespace": ns, **kube}},
        {"name": "finalize check", sync: {"hsmsecrets": "{{ crs.resources }}", "state": "absent", **kube},
         "check_mode": True},
        {"name": "finalize", sync: {"hsmsecrets": "{{ crs.resources }}", "state": "absent", **kube}},
        {"name": "finalize again", sync: {"hsmsecrets": "{{ crs.resources }}", "state": "absent", **kube}},
    ]
    run = run_playbook(tmp_path / "run", [localhost_play(tasks)], extravars={"hsm_agent": agent})
    assert run.rc == 0, run.stdout[-5000:]

    def changed(task: str) -> bool:
        return bool(run.result(task)["changed"])

    assert changed("sync check") and changed("sync")
    assert not changed("sync again check") and not changed("sync again")
    assert changed("sync changes") and not changed("sync changes again")
    assert changed("finalize check") and changed("finalize") and not changed("finalize again")

    first = by_name(run.result("sync")["results"])
    assert {n: r["reason"] for n, r in first.items()} == {
        "app": "Synced", "retain": "Synced", "drop": "Synced", "conflict": "Conflict", "forbidden": "Forbidden"}
    assert by_name(run.result("sync check")["results"])["app"]["action"] == "created"
    check_diff = {d["after_header"]: d for d in run.result("sync check")["diff"]}
    assert check_diff[f"Secret {ns}/app"]["after"] == {"keys": ["a"], "checksum": model.checksum({"a": b"bc"})}
    assert run.result("sync")["summary"]["reasons"] == {"Synced": 3, "Conflict": 1, "Forbidden": 1}

    later = by_name(run.result("sync changes")["results"])
    assert (later["app"]["action"], later["app"]["secretChanged"]) == ("updated", True)
    assert (later["retain"]["reason"], later["retain"]["action"]) == ("SourceMissing", "unchanged")
    assert (later["drop"]["reason"], later["drop"]["action"]) == ("SourceMissing", "deleted")
    changes_diff = {d["after_header"]: d for d in run.result("sync changes")["diff"]}
    assert changes_diff[f"Secret {ns}/app"]["before"]["keys"] == ["a"]
    assert changes_diff[f"Secret {ns}/app"]["after"]["keys"] == ["ab"]

    statuses = {o["metadata"]["name"]: o["status"] for o in run.result("statuses")["resources"]}
    assert statuses["app"]["syncStatus"] == "InSync"
    assert statuses["app"]["hsmChecksum"] == model.checksum({"ab": b"c"})
    assert statuses["retain"]["syncStatus"] == "OutOfSync"
    assert statuses["conflict"]["conditions"][0]["reason"] == "Conflict"
    assert statuses["forbidden"]["conditions"][0]["reason"] == "Forbidden"
    assert all(s["conditions"][0]["observedGeneration"] == 1 for s in statuses.values())

    final = by_name(run.result("finalize")["results"])
    assert final["app"]["deleted"] == ["app"] and final["retain"]["deleted"] == ["retain"]
    assert final["conflict"] == {**final["conflict"], "deleted": [], "kept": ["conflict"]}
    # only the unowned Secret is left, exactly as it was
    assert secrets_in(api, ns) == {"conflict": {"theirs": b"their-value-Ui2k"}}
    events = {(e.involved_object.name, e.reason) for e in k8s.CoreV1Api(api).list_namespaced_event(ns).items}
    assert {("app", "Synced"), ("conflict", "Conflict"), ("forbidden", "Forbidden"),
            ("retain", "SourceMissing"), ("drop", "SourceMissing")} <= events
    run.assert_never_wrote(SECRET_VALUES)


def test_hsm_secret_role_batch_single_and_finalizer(api: Any, module_agent: RunningAgent, sandbox: SandboxHandle,
                                                    ns: str, tmp_path: Path) -> None:
    client = module_agent.client()
    for i in range(3):
        client.write(f"{ns}/batch{i}", {"k": f"role-value-Op0l-{i}".encode()})
    client.write(f"{ns}/single", {"k": b"role-value-Op0l"})
    batch = [create_hsmsecret(api, ns, f"batch{i}") for i in range(3)]
    single = create_hsmsecret(api, ns, "single", meta={"finalizers": ["hsm.j5t.io/finalizer"]})
    playbook = (ROOT / "playbooks" / "hsm_secret.yml").read_text()
    common = {"hsm_secret_agent": module_agent.address, "hsm_secret_kubeconfig": sandbox.kubeconfig}

    # the hsmd operator: a batch in hsm_batch
    run = run_playbook(tmp_path / "batch", playbook, extravars={**common, "hsm_batch": batch})
    assert run.rc == 0, run.stdout[-4000:]
    assert [r["action"] for r in run.result("Sync the HSMSecrets with the HSM")["results"]] == ["created"] * 3

    # operator-sdk: one object in _hsm_j5t_io_hsmsecret (+ ansible_operator_meta)
    meta = {"name": "single", "namespace": ns}
    run = run_playbook(tmp_path / "single", playbook,
                       extravars={**common, "ansible_operator_meta": meta, "_hsm_j5t_io_hsmsecret": single})
    assert run.rc == 0, run.stdout[-4000:]
    assert secrets_in(api, ns)["single"] == {"k": b"role-value-Op0l"}

    # only ansible_operator_meta: the role reads the object itself
    run = run_playbook(tmp_path / "meta", playbook, extravars={**common, "ansible_operator_meta": meta})
    assert run.rc == 0, run.stdout[-4000:]
    (result,) = run.result("Sync the HSMSecrets with the HSM")["results"]
    assert (result["name"], result["action"]) == ("single", "unchanged")

    # deletion: the object has a finalizer, so it stays with a deletionTimestamp; the role finalizes it
    custom = k8s.CustomObjectsApi(api)
    custom.delete_namespaced_custom_object(render.GROUP, render.VERSION, ns, render.PLURAL, "single")
    deleting = custom.get_namespaced_custom_object(render.GROUP, render.VERSION, ns, render.PLURAL, "single")
    assert deleting["metadata"].get("deletionTimestamp")
    run = run_playbook(tmp_path / "finalize", playbook,
                       extravars={**common, "ansible_operator_meta": meta, "_hsm_j5t_io_hsmsecret": deleting})
    assert run.rc == 0, run.stdout[-4000:]
    assert "single" not in secrets_in(api, ns)
    assert client.read(f"{ns}/single").data == {"k": b"role-value-Op0l"}  # HSM data untouched

    # an unreachable agent fails the run (so it is retried) and deletes nothing
    run = run_playbook(tmp_path / "down", playbook,
                       extravars={**common, "hsm_secret_agent": "127.0.0.1:9", "hsm_batch": batch})
    assert run.rc != 0
    assert sorted(secrets_in(api, ns)) == ["batch0", "batch1", "batch2"]
    status = custom.get_namespaced_custom_object(render.GROUP, render.VERSION, ns, render.PLURAL, "batch0")["status"]
    assert status["conditions"][0]["reason"] == "Unavailable"
    run.assert_never_wrote(["role-value-Op0l"])


def test_hsm_secret_role_reads_through_every_mirror(api: Any, module_agent: RunningAgent, sandbox: SandboxHandle,
                                                    ns: str, tmp_path: Path) -> None:
    """hsm_secret_agents (what the operator passes for a pool of several agents): both agents up, the
    batch is Synced; one stopped while the other lacks a secret, that secret is Unavailable (the run
    fails so it is retried) and its Secret is kept despite deletionPolicy Delete; back up, Synced.
    HSMD_AGENT in the environment (the operator sets it) never joins the list."""
    values = ["mirror-value-Zx3c", "mirror-value-Vb6n"]
    playbook = (ROOT / "playbooks" / "hsm_secret.yml").read_text()
    task = "Sync the HSMSecrets with the HSM"
    custom = k8s.CustomObjectsApi(api)
    token = make_agent_token(tmp_path / "token2")
    first = module_agent.client()
    with start_agent(token.token, pin_file=token.pin_file, workdir=tmp_path / "agent2",
                     device_profile="softhsm") as second:
        address = second.address
        for client in (first, second.client()):
            client.write(f"{ns}/kept", {"k": values[0].encode()})
            client.write(f"{ns}/gone", {"k": values[1].encode()})
        names = ["kept", "gone"]
        for name in names:
            create_hsmsecret(api, ns, name, deletionPolicy="Delete")
        common = {"hsm_secret_agents": [module_agent.address, address], "hsm_secret_kubeconfig": sandbox.kubeconfig}
        env = {"HSMD_AGENT": "127.0.0.1:9"}  # nothing listens there; it must not become a third mirror

        def batch() -> list[dict[str, Any]]:
            return [custom.get_namespaced_custom_object(render.GROUP, render.VERSION, ns, render.PLURAL, n)
                    for n in names]

        def reasons(results: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
            return {n: (r["reason"], r["action"]) for n, r in by_name(results).items()}

        run = run_playbook(tmp_path / "both", playbook, extravars={**common, "hsm_batch": batch()}, env=env)
        assert run.rc == 0, run.stdout[-4000:]
        assert reasons(run.result(task)["results"]) == {"kept": ("Synced", "created"), "gone": ("Synced", "created")}
        args = run.result(task)["invocation"]["module_args"]
        assert (args["agent"], args["agents"]) == ("", [module_agent.address, address])  # not HSMD_AGENT

        second.terminate()
        first.delete(f"{ns}/gone")
        run = run_playbook(tmp_path / "one-down", playbook, extravars={**common, "hsm_batch": batch()}, env=env)
        assert run.rc != 0 and task in run.failed, run.stdout[-4000:]
        assert reasons(run.failed[task]["results"]) == {"kept": ("Synced", "unchanged"),
                                                        "gone": ("Unavailable", "unchanged")}
        assert secrets_in(api, ns) == {"kept": {"k": values[0].encode()}, "gone": {"k": values[1].encode()}}
        statuses = {o["metadata"]["name"]: o["status"] for o in batch()}
        assert statuses["gone"]["conditions"][0]["reason"] == "Unavailable"
        assert statuses["kept"]["conditions"][0]["reason"] == "Synced"

        with start_agent(token.token, pin_file=token.pin_file, workdir=tmp_path / "agent2-again", listen=address,
                         device_profile="softhsm"):
            run = run_playbook(tmp_path / "back", playbook, extravars={**common, "hsm_batch": batch()}, env=env)
        assert run.rc == 0, run.stdout[-4000:]
        # two mirrors, one without the secret: the version present wins (resolve_versions), nothing deleted
        assert reasons(run.result(task)["results"]) == {"kept": ("Synced", "unchanged"), "gone": ("Synced", "unchanged")}
        assert sorted(secrets_in(api, ns)) == ["gone", "kept"]
        run.assert_never_wrote(values)
