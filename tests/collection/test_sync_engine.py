"""hsmd.sync against the sandbox API (project CRDs) and a real SoftHSM agent, in-process.

The engine the module and the operator share: create, nothing-to-do, HSM changes (including
{"a": "bc"} -> {"ab": "c"}), repair of an edited Secret, Forbidden, Conflict with an unowned
Secret (left byte-for-byte alone), SourceMissing with Retain and Delete, an unreachable agent,
a renamed target, a type change, status through the status subresource, Events, the finalizer.
"""

from __future__ import annotations

import base64
import itertools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from hsmd import model, render, sync
from hsmd.agent.client import AgentClient
from hsmd.errors import Unavailable
from hsmd.policy import Policy
from tests.fixtures.agent import RunningAgent, make_agent_token, start_agent

pytestmark = pytest.mark.slow
_ns = itertools.count(1)


@pytest.fixture
def agent(module_agent: RunningAgent) -> AgentClient:
    return module_agent.client()


@pytest.fixture
def ns(api: Any) -> str:
    name = f"sync-{next(_ns)}"
    k8s.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    return name


def create_hsmsecret(api: Any, ns: str, name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("hsmPath", f"{ns}/{name}")
    body = {"apiVersion": render.API_VERSION, "kind": render.KIND, "metadata": {"name": name}, "spec": spec}
    obj: dict[str, Any] = k8s.CustomObjectsApi(api).create_namespaced_custom_object(
        render.GROUP, render.VERSION, ns, render.PLURAL, body
    )
    return obj


def get_hsmsecret(api: Any, ns: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = k8s.CustomObjectsApi(api).get_namespaced_custom_object(
        render.GROUP, render.VERSION, ns, render.PLURAL, name
    )
    return obj


def get_secret(api: Any, ns: str, name: str) -> dict[str, Any] | None:
    try:
        return api.sanitize_for_serialization(k8s.CoreV1Api(api).read_namespaced_secret(name, ns))  # type: ignore[no-any-return]
    except k8s.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def decoded(secret: dict[str, Any] | None) -> dict[str, bytes]:
    assert secret is not None
    return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}


def run(api: Any, agent: Any, objs: list[dict[str, Any]], **kw: Any) -> list[sync.SyncOutcome]:
    """Sync, write status, and return the outcomes (objects re-read by the caller as needed)."""
    outcomes = sync.sync_batch(objs, agent=agent, api_client=api, **kw)
    if not kw.get("dry_run"):
        assert all(err is None for err in sync.write_status(api, outcomes).values())
    return outcomes


def test_create_then_nothing_then_changes_are_followed(api: Any, agent: AgentClient, ns: str) -> None:
    agent.write(f"{ns}/db", {"a": b"bc", "user": b"app"})
    obj = create_hsmsecret(api, ns, "db", secretName="db-creds")
    (first,) = run(api, agent, [obj])
    assert (first.reason, first.action, first.secret_changed) == ("Synced", "created", True)
    assert [e.reason for e in first.events] == ["Synced"]
    secret = get_secret(api, ns, "db-creds")
    assert decoded(secret) == {"a": b"bc", "user": b"app"}
    assert secret is not None
    ref = secret["metadata"]["ownerReferences"][0]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("HSMSecret", "db", obj["metadata"]["uid"], True)
    assert secret["metadata"]["labels"]["hsm.j5t.io/hsmsecret"] == "db"
    assert secret["metadata"]["annotations"]["hsm.j5t.io/checksum"] == model.checksum({"a": b"bc", "user": b"app"})
    status = get_hsmsecret(api, ns, "db")["status"]
    assert status["syncStatus"] == "InSync" and status["secretRef"] == {"name": "db-creds", "namespace": ns}
    ready = status["conditions"][0]
    assert (ready["type"], ready["status"], ready["reason"], ready["observedGeneration"]) == ("Ready", "True", "Synced", 1)

    # nothing changed: no write of any kind, no Event
    rv = secret["metadata"]["resourceVersion"]
    (again,) = run(api, agent, [get_hsmsecret(api, ns, "db")])
    assert (again.action, again.secret_changed, again.status_changed, again.events) == ("unchanged", False, False, [])
    assert get_secret(api, ns, "db-creds")["metadata"]["resourceVersion"] == rv  # type: ignore[index]

    # {"a": "bc"} -> {"ab": "c"}: the same bytes in another split are a change
    agent.write(f"{ns}/db", {"ab": b"c", "user": b"app"})
    (moved,) = run(api, agent, [get_hsmsecret(api, ns, "db")])
    assert (moved.action, moved.secret_changed) == ("updated", True)
    assert decoded(get_secret(api, ns, "db-creds")) == {"ab": b"c", "user": b"app"}
    status = get_hsmsecret(api, ns, "db")["status"]
    assert status["hsmChecksum"] == status["secretChecksum"] == model.checksum({"ab": b"c", "user": b"app"})
    assert status["conditions"][0]["lastTransitionTime"] == ready["lastTransitionTime"]

    # edited by hand: repaired, other people's labels kept
    core = k8s.CoreV1Api(api)
    core.patch_namespaced_secret("db-creds", ns, {"metadata": {"labels": {"team": "a"}},
                                                  "data": {"user": base64.b64encode(b"mallory").decode()}})
    (repaired,) = run(api, agent, [get_hsmsecret(api, ns, "db")])
    assert repaired.action == "updated"
    repaired_secret = get_secret(api, ns, "db-creds")
    assert decoded(repaired_secret) == {"ab": b"c", "user": b"app"}
    assert repaired_secret is not None and repaired_secret["metadata"]["labels"]["team"] == "a"


def test_forbidden_path_gets_no_secret(api: Any, agent: AgentClient, ns: str) -> None:
    agent.write("other-team/db", {"password": b"not-yours"})
    obj = create_hsmsecret(api, ns, "steal", hsmPath="other-team/db")
    (outcome,) = run(api, agent, [obj])
    assert (outcome.reason, outcome.action, outcome.secret_changed) == ("Forbidden", "unchanged", False)
    assert get_secret(api, ns, "steal") is None
    status = get_hsmsecret(api, ns, "steal")["status"]
    assert status["conditions"][0]["status"] == "False" and "hsmChecksum" not in status
    # a policy that grants it
    policy = Policy.parse(f"rules: [{{namespaces: [{ns}], paths: ['other-team/**'], verbs: [get]}}]")
    (allowed,) = run(api, agent, [get_hsmsecret(api, ns, "steal")], policy=policy)
    assert allowed.reason == "Synced" and decoded(get_secret(api, ns, "steal")) == {"password": b"not-yours"}


def test_unowned_secret_is_a_conflict_and_untouched(api: Any, agent: AgentClient, ns: str) -> None:
    core = k8s.CoreV1Api(api)
    core.create_namespaced_secret(ns, {"metadata": {"name": "taken", "labels": {"app.kubernetes.io/managed-by": "hsmd"}},
                                       "data": {"mine": base64.b64encode(b"keep-me").decode()}})
    before = get_secret(api, ns, "taken")
    agent.write(f"{ns}/taken", {"k": b"hsm-value"})
    obj = create_hsmsecret(api, ns, "taken", deletionPolicy="Delete")
    (outcome,) = run(api, agent, [obj])
    assert (outcome.reason, outcome.action, outcome.secret_changed) == ("Conflict", "conflict", False)
    assert get_secret(api, ns, "taken") == before
    status = get_hsmsecret(api, ns, "taken")["status"]
    assert "secretChecksum" not in status and status["conditions"][0]["reason"] == "Conflict"
    # source gone + deletionPolicy Delete still never deletes someone else's Secret
    agent.delete(f"{ns}/taken")
    (gone,) = run(api, agent, [get_hsmsecret(api, ns, "taken")])
    assert gone.reason == "SourceMissing" and get_secret(api, ns, "taken") == before
    # nor does the finalizer
    (final,) = sync.finalize_batch([get_hsmsecret(api, ns, "taken")], api_client=api)
    assert final.deleted == [] and final.kept == ["taken"] and get_secret(api, ns, "taken") == before


def test_source_missing_keeps_or_deletes_per_policy(api: Any, agent: AgentClient, ns: str) -> None:
    agent.write(f"{ns}/keep", {"k": b"v1"})
    agent.write(f"{ns}/drop", {"k": b"v2"})
    objs = [create_hsmsecret(api, ns, "keep"), create_hsmsecret(api, ns, "drop", deletionPolicy="Delete")]
    assert [o.action for o in run(api, agent, objs)] == ["created", "created"]
    agent.delete(f"{ns}/keep")
    agent.delete(f"{ns}/drop")
    keep, drop = run(api, agent, [get_hsmsecret(api, ns, "keep"), get_hsmsecret(api, ns, "drop")])
    assert (keep.reason, keep.action) == ("SourceMissing", "unchanged")
    assert decoded(get_secret(api, ns, "keep")) == {"k": b"v1"}
    assert (drop.reason, drop.action, drop.secret_changed) == ("SourceMissing", "deleted", True)
    assert get_secret(api, ns, "drop") is None
    status = get_hsmsecret(api, ns, "keep")["status"]
    assert status["syncStatus"] == "OutOfSync" and status["secretChecksum"] == model.checksum({"k": b"v1"})
    assert [e.reason for e in keep.events] == ["SourceMissing"]


def test_unreachable_agent_never_deletes(api: Any, agent: AgentClient, ns: str) -> None:
    agent.write(f"{ns}/db", {"k": b"v"})
    obj = create_hsmsecret(api, ns, "db", deletionPolicy="Delete")
    run(api, agent, [obj])
    with AgentClient("127.0.0.1:9", timeout=1.0) as dead:
        (outcome,) = run(api, dead, [get_hsmsecret(api, ns, "db")])
    assert (outcome.reason, outcome.action, outcome.temporary) == ("Unavailable", "unchanged", True)
    assert decoded(get_secret(api, ns, "db")) == {"k": b"v"}
    status = get_hsmsecret(api, ns, "db")["status"]
    assert status["syncStatus"] == "Error" and status["hsmChecksum"] == model.checksum({"k": b"v"})
    # recovers by itself
    (back,) = run(api, agent, [get_hsmsecret(api, ns, "db")])
    assert back.reason == "Synced" and get_hsmsecret(api, ns, "db")["status"]["syncStatus"] == "InSync"


def test_rename_and_type_change(api: Any, agent: AgentClient, ns: str) -> None:
    agent.write(f"{ns}/cred", {"username": b"u", "password": b"p"})
    obj = create_hsmsecret(api, ns, "cred", secretName="old-name")
    run(api, agent, [obj])
    custom = k8s.CustomObjectsApi(api)
    custom.patch_namespaced_custom_object(render.GROUP, render.VERSION, ns, render.PLURAL, "cred",
                                          {"spec": {"secretName": "new-name", "secretType": "kubernetes.io/basic-auth"}})
    (renamed,) = run(api, agent, [get_hsmsecret(api, ns, "cred")])
    assert renamed.action == "created" and get_secret(api, ns, "old-name") is None
    new = get_secret(api, ns, "new-name")
    assert new is not None and new["type"] == "kubernetes.io/basic-auth"
    assert get_hsmsecret(api, ns, "cred")["status"]["conditions"][0]["observedGeneration"] == 2
    custom.patch_namespaced_custom_object(render.GROUP, render.VERSION, ns, render.PLURAL, "cred",
                                          {"spec": {"secretType": "Opaque"}})
    (retyped,) = run(api, agent, [get_hsmsecret(api, ns, "cred")])
    assert retyped.action == "replaced" and get_secret(api, ns, "new-name")["type"] == "Opaque"  # type: ignore[index]


def test_invalid_spec_events_and_dry_run(api: Any, agent: AgentClient, ns: str) -> None:
    agent.write(f"{ns}/ok", {"k": b"v"})
    ok = create_hsmsecret(api, ns, "ok")
    bad = dict(create_hsmsecret(api, ns, "bad"))
    bad["spec"] = {"hsmPath": "a//b"}  # the CRD schema refuses this; the engine must too
    dry = sync.sync_batch([ok, bad], agent=agent, api_client=api, dry_run=True)
    assert [(o.reason, o.action, o.secret_changed) for o in dry] == [("Synced", "created", True),
                                                                   ("InvalidSpec", "none", False)]
    assert get_secret(api, ns, "ok") is None  # dry run wrote nothing
    outcomes = sync.sync_batch([ok, bad], agent=agent, api_client=api)
    assert sync.emit_events(api, outcomes) == 2
    events = k8s.CoreV1Api(api).list_namespaced_event(ns).items
    assert sorted((e.involved_object.name, e.reason, e.type) for e in events) == [
        ("bad", "SyncFailed", "Warning"), ("ok", "Synced", "Normal")]


def test_finalizer_removes_only_owned_secrets(api: Any, agent: AgentClient, ns: str) -> None:
    agent.write(f"{ns}/app", {"k": b"v"})
    obj = create_hsmsecret(api, ns, "app")
    run(api, agent, [obj])
    (outcome,) = sync.finalize_batch([get_hsmsecret(api, ns, "app")], api_client=api)
    assert outcome.deleted == ["app"] and outcome.error is None
    assert get_secret(api, ns, "app") is None
    assert agent.read(f"{ns}/app").data == {"k": b"v"}  # HSM data untouched


def test_many_objects_in_one_batch(api: Any, agent: AgentClient, ns: str, tmp_path: Path) -> None:
    """Batch shape: one list per namespace, batch reads, only differing Secrets written."""
    n = 150  # more than one ReadSecrets chunk of the client (100)
    for i in range(n):
        agent.write(f"{ns}/s{i}", {"k": f"v{i}".encode()})
    objs = [create_hsmsecret(api, ns, f"s{i}") for i in range(n)]
    first = sync.sync_batch(objs, agent=agent, api_client=api)
    assert {o.action for o in first} == {"created"}
    agent.write(f"{ns}/s7", {"k": b"changed"})
    second = sync.sync_batch(objs, agent=agent, api_client=api)
    assert [o.name for o in second if o.secret_changed] == ["s7"]


def test_agent_set_partial_outage_never_deletes(api: Any, module_agent: RunningAgent, ns: str, tmp_path: Path) -> None:
    """Two agents mirroring a pool (hsmd.fanout.AgentSet): synced from both; when one is down and the
    other no longer has the secret, that is Unavailable - not SourceMissing, so Delete does not fire."""
    from hsmd.fanout import AgentSet

    token = make_agent_token(tmp_path / "token2")
    with start_agent(token.token, pin_file=token.pin_file, workdir=tmp_path / "agent2",
                     device_profile="softhsm") as second:
        first_client, second_client = module_agent.client(), second.client()
        for client in (first_client, second_client):
            client.write(f"{ns}/mirrored", {"k": b"same-on-both"})
        pool = AgentSet.from_addresses([module_agent.address, second.address], timeout=2.0)
        try:
            obj = create_hsmsecret(api, ns, "mirrored", deletionPolicy="Delete")
            (synced,) = run(api, pool, [obj])
            assert synced.reason == "Synced" and decoded(get_secret(api, ns, "mirrored")) == {"k": b"same-on-both"}
            assert synced.status is not None
            assert pool.checksums([f"{ns}/mirrored"]) == {f"{ns}/mirrored": synced.status["hsmChecksum"]}
            second.terminate()
            first_client.delete(f"{ns}/mirrored")
            # the operator's resync question and the read both say "not known now", never "absent"
            assert isinstance(pool.checksums([f"{ns}/mirrored"])[f"{ns}/mirrored"], Unavailable)
            (outage,) = run(api, pool, [get_hsmsecret(api, ns, "mirrored")])
            assert (outage.reason, outage.action) == ("Unavailable", "unchanged")
            assert decoded(get_secret(api, ns, "mirrored")) == {"k": b"same-on-both"}
        finally:
            pool.close()


FIXED_NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)


def _two_rounds(api: Any, agent: AgentClient, ns: str, small_batch: int) -> list[list[sync.SyncOutcome]]:
    """One scenario, two syncs: creates first; then unchanged, edited by hand, renamed target (old
    Secret deleted), source gone with Delete, a Secret we do not manage at all and one labelled as
    ours but not owned (both Conflict, untouched), a missing Secret for a new object, a missing
    source, a forbidden path."""
    core = k8s.CoreV1Api(api)
    custom = k8s.CustomObjectsApi(api)
    for name in ("fresh", "same", "edited", "unowned", "labelled", "renamed", "dropped"):
        agent.write(f"{ns}/{name}", {"k": f"{name}-v1".encode()})
    first = [create_hsmsecret(api, ns, "same"), create_hsmsecret(api, ns, "edited"),
             create_hsmsecret(api, ns, "renamed", secretName="renamed-old"),
             create_hsmsecret(api, ns, "dropped", deletionPolicy="Delete")]
    round1 = run(api, agent, first, small_batch=small_batch, now=FIXED_NOW)

    core.patch_namespaced_secret("edited", ns, {"data": {"k": base64.b64encode(b"by-hand").decode()}})
    custom.patch_namespaced_custom_object(render.GROUP, render.VERSION, ns, render.PLURAL, "renamed",
                                          {"spec": {"secretName": "renamed-new"}})
    agent.delete(f"{ns}/dropped")
    core.create_namespaced_secret(ns, {"metadata": {"name": "unowned"},
                                       "data": {"mine": base64.b64encode(b"keep-me").decode()}})
    core.create_namespaced_secret(ns, {"metadata": {"name": "labelled", "labels": {render.MANAGED_BY_LABEL: "hsmd"}},
                                       "data": {"mine": base64.b64encode(b"keep-me-too").decode()}})
    for name, spec in (("unowned", {"deletionPolicy": "Delete"}), ("labelled", {}), ("fresh", {}),
                       ("missing", {}), ("forbidden", {"hsmPath": "other-team/x"})):
        create_hsmsecret(api, ns, name, **spec)
    names = ["same", "edited", "renamed", "dropped", "unowned", "labelled", "fresh", "missing", "forbidden"]
    round2 = run(api, agent, [get_hsmsecret(api, ns, n) for n in names], small_batch=small_batch, now=FIXED_NOW)
    return [round1, round2]


def _comparable(outcomes: list[sync.SyncOutcome], ns: str) -> list[Any]:
    out = []
    for outcome in outcomes:
        doc = outcome.to_dict()
        doc.pop("uid")
        out.append(json.loads(json.dumps(doc).replace(ns, "NS")))
    return out


def _cluster_state(api: Any, ns: str) -> dict[str, Any]:
    secrets = k8s.CoreV1Api(api).list_namespaced_secret(ns).items
    return {s.metadata.name: (s.data, s.type, s.metadata.labels,
                              [(r.kind, r.name) for r in s.metadata.owner_references or []]) for s in secrets}


def test_small_and_large_batches_give_identical_outcomes(api: Any, agent: AgentClient, ns: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A few objects per namespace: their Secrets are fetched by GET (plus a list of just their own
    Secrets, for renamed targets); many: one list of the namespace. Same outcomes, same cluster."""
    lists: list[tuple[str, str]] = []
    real_list = sync._Secrets.list_managed

    def spy(self: Any, namespace: str, selector: str = render.MANAGED_SELECTOR) -> list[dict[str, Any]]:
        lists.append((namespace, selector))
        return real_list(self, namespace, selector)

    monkeypatch.setattr(sync._Secrets, "list_managed", spy)
    ns_get = f"{ns}-get"
    k8s.CoreV1Api(api).create_namespace({"metadata": {"name": ns_get}})

    listed = _two_rounds(api, agent, ns, small_batch=0)
    assert {sel for n, sel in lists if n == ns} == {render.MANAGED_SELECTOR}  # the whole namespace, per batch
    fetched = _two_rounds(api, agent, ns_get, small_batch=sync.DEFAULT_SMALL_BATCH)
    own = [sel for n, sel in lists if n == ns_get]
    assert len(own) == 2 and all(f"{render.HSMSECRET_LABEL} in (" in sel for sel in own)  # only the batch's own

    for by_list, by_get in zip(listed, fetched, strict=True):
        assert _comparable(by_list, ns) == _comparable(by_get, ns_get)
    assert [(o.name, o.reason, o.action) for o in fetched[1]] == [
        ("same", "Synced", "unchanged"), ("edited", "Synced", "updated"), ("renamed", "Synced", "created"),
        ("dropped", "SourceMissing", "deleted"), ("unowned", "Conflict", "conflict"),
        ("labelled", "Conflict", "conflict"), ("fresh", "Synced", "created"),
        ("missing", "SourceMissing", "unchanged"), ("forbidden", "Forbidden", "unchanged")]
    state = _cluster_state(api, ns_get)
    assert state == _cluster_state(api, ns)
    assert "renamed-old" not in state and "dropped" not in state and "missing" not in state
    assert decoded(get_secret(api, ns_get, "unowned")) == {"mine": b"keep-me"}
    assert decoded(get_secret(api, ns_get, "labelled")) == {"mine": b"keep-me-too"}
