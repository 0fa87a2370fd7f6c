"""hsmd.render: the HSMSecret -> Secret decisions, status, Events and the fast-path check (pure)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from hsmd import model, render
from hsmd.errors import InvalidArgument, NotFound, PermissionDenied, Unavailable
from hsmd.policy import Policy

UID = "0b3f7c2e-1111-4d2b-9a43-9f1b2c3d4e5f"
VALUE = b"s3cr3t-value-never-shown"
NOW = "2026-01-02T03:04:05Z"
LATER = "2026-01-02T04:00:00Z"


def hsmsecret(name: str = "db", namespace: str = "team-a", **spec: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": render.API_VERSION,
        "kind": render.KIND,
        "metadata": {"name": name, "namespace": namespace, "uid": UID, "generation": 3},
        "spec": {"hsmPath": f"{namespace}/{name}", **spec},
    }
    return obj


def source(data: dict[str, bytes], path: str = "team-a/db") -> model.Secret:
    return model.Secret(path, data, model.SecretMetadata(), model.checksum(data))


def existing_from(decision: render.Decision, **meta: Any) -> dict[str, Any]:
    """What the API server would hold after a create with ``decision.body``."""
    assert decision.body is not None
    body = json.loads(json.dumps(decision.body))
    body["metadata"].update({"uid": "secret-uid", "resourceVersion": "7"}, **meta)
    return body


def target(**spec: Any) -> render.Target:
    return render.parse_target(hsmsecret(**spec))


# --- parsing ---------------------------------------------------------------------------------


def test_target_defaults_to_the_object_name() -> None:
    obj = hsmsecret()
    del obj["spec"]["hsmPath"]
    t = render.parse_target(obj)
    assert (t.path, t.secret_name, t.secret_type, t.deletion_policy, t.generation) == ("db", "db", "Opaque", "Retain", 3)


def test_target_takes_spec_fields() -> None:
    t = target(secretName="db-creds", secretType="kubernetes.io/tls", deletionPolicy="Delete", autoSync=False)
    assert (t.path, t.secret_name, t.secret_type, t.deletion_policy, t.auto_sync) == (
        "team-a/db", "db-creds", "kubernetes.io/tls", "Delete", False
    )


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"hsmPath": "a//b"}, "spec.hsmPath"),
        ({"hsmPath": "../etc"}, "spec.hsmPath"),
        ({"secretName": "Not_Valid"}, "spec.secretName"),
        ({"deletionPolicy": "Sometimes"}, "spec.deletionPolicy"),
        ({"secretType": "bad type"}, "spec.secretType"),
    ],
)
def test_invalid_spec_is_explained(spec: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment.replace(".", r"\.")):
        target(**spec)


def test_object_without_uid_is_refused() -> None:
    obj = hsmsecret()
    del obj["metadata"]["uid"]
    with pytest.raises(InvalidArgument, match="uid"):
        render.parse_target(obj)


# --- rendering ---------------------------------------------------------------------------------


def test_rendered_secret_carries_data_labels_annotations_and_controller_reference() -> None:
    src = source({"password": VALUE, "user": b"app"})
    body = render.render_secret(target(secretName="db-creds"), src)
    assert body["metadata"]["name"] == "db-creds" and body["metadata"]["namespace"] == "team-a"
    assert body["type"] == "Opaque"
    assert {k: base64.b64decode(v) for k, v in body["data"].items()} == {"password": VALUE, "user": b"app"}
    assert body["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "hsmd", "hsm.j5t.io/hsmsecret": "db"}
    assert body["metadata"]["annotations"] == {"hsm.j5t.io/hsm-path": "team-a/db", "hsm.j5t.io/checksum": src.checksum}
    assert body["metadata"]["ownerReferences"] == [
        {"apiVersion": "hsm.j5t.io/v1alpha1", "kind": "HSMSecret", "name": "db", "uid": UID,
         "controller": True, "blockOwnerDeletion": True}
    ]
    assert render.secret_checksum(body) == src.checksum


def test_a_key_that_cannot_be_a_secret_key_fails_the_sync_without_the_value() -> None:
    decision = render.decide(target(), source({"bad key": VALUE}), None)
    assert decision.reason == render.SYNC_FAILED and decision.action == "none"
    assert "bad key" in decision.message and VALUE.decode() not in decision.message


# --- decisions ---------------------------------------------------------------------------------


def test_create_then_nothing_to_do() -> None:
    t = target()
    src = source({"password": VALUE})
    created = render.decide(t, src, None)
    assert (created.action, created.reason) == ("create", render.SYNCED)
    again = render.decide(t, src, existing_from(created))
    assert (again.action, again.reason, again.body) == ("none", render.SYNCED, None)


def test_value_change_patches_only_the_data_with_the_resource_version() -> None:
    t = target()
    secret = existing_from(render.decide(t, source({"password": b"old", "user": b"app"}), None))
    decision = render.decide(t, source({"password": VALUE, "user": b"app"}), secret)
    assert decision.action == "patch"
    assert decision.body is not None
    assert decision.body["data"] == {"password": base64.b64encode(VALUE).decode()}
    assert decision.body["metadata"]["resourceVersion"] == "7"


def test_moving_a_character_between_key_and_value_is_a_change() -> None:
    t = target()
    secret = existing_from(render.decide(t, source({"a": b"bc"}), None))
    decision = render.decide(t, source({"ab": b"c"}), secret)
    assert decision.action == "patch"
    assert decision.body is not None
    assert decision.body["data"] == {"a": None, "ab": base64.b64encode(b"c").decode()}
    assert decision.hsm_checksum != decision.before_checksum


def test_foreign_labels_and_annotations_are_kept_and_ours_repaired() -> None:
    t = target()
    secret = existing_from(render.decide(t, source({"k": VALUE}), None))
    secret["metadata"]["labels"] = {"team": "a"}  # somebody replaced our labels
    secret["metadata"]["annotations"]["note"] = "hi"
    decision = render.decide(t, source({"k": VALUE}), secret)
    assert decision.action == "patch" and decision.body is not None
    assert "data" not in decision.body
    assert decision.body["metadata"]["labels"] == render.managed_labels(t)
    assert "annotations" not in decision.body["metadata"]


def test_type_change_replaces_the_secret() -> None:
    secret = existing_from(render.decide(target(), source({"k": VALUE}), None))
    decision = render.decide(target(secretType="kubernetes.io/basic-auth"), source({"k": VALUE}), secret)
    assert decision.action == "replace" and decision.body is not None
    assert decision.body["type"] == "kubernetes.io/basic-auth"


def test_a_secret_we_do_not_own_is_a_conflict_and_never_touched() -> None:
    unowned = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "team-a"},
               "data": {"k": base64.b64encode(b"theirs").decode()}}
    decision = render.decide(target(), source({"k": VALUE}), unowned)
    assert (decision.action, decision.reason, decision.body) == ("conflict", render.CONFLICT, None)

    other_owner = existing_from(render.decide(target(), source({"k": VALUE}), None))
    other_owner["metadata"]["ownerReferences"][0]["uid"] = "another-uid"
    assert render.decide(target(), source({"k": VALUE}), other_owner).action == "conflict"
    # a missing source with deletionPolicy Delete still never deletes someone else's Secret
    gone = render.decide(target(deletionPolicy="Delete"), NotFound("x"), unowned)
    assert gone.action == "none" and gone.reason == render.SOURCE_MISSING


def test_forbidden_path_gets_no_secret() -> None:
    decision = render.decide(target(), None, None, allowed=False)
    assert (decision.action, decision.reason) == ("none", render.FORBIDDEN)
    assert not decision.secret_exists


@pytest.mark.parametrize(("policy", "action", "kept"), [("Retain", "none", True), ("Delete", "delete", False)])
def test_source_missing_keeps_or_deletes_per_policy(policy: str, action: str, kept: bool) -> None:
    t = target(deletionPolicy=policy)
    secret = existing_from(render.decide(t, source({"k": VALUE}), None))
    decision = render.decide(t, NotFound("gone"), secret)
    assert (decision.action, decision.reason, decision.secret_exists) == (action, render.SOURCE_MISSING, kept)


@pytest.mark.parametrize("policy", ["Retain", "Delete"])
def test_unavailable_agent_never_deletes(policy: str) -> None:
    t = target(deletionPolicy=policy)
    secret = existing_from(render.decide(t, source({"k": VALUE}), None))
    decision = render.decide(t, Unavailable("agent down"), secret)
    assert (decision.action, decision.reason, decision.secret_exists) == ("none", render.UNAVAILABLE, True)


def test_permanent_read_error_is_sync_failed() -> None:
    decision = render.decide(target(), PermissionDenied("pin locked"), None)
    assert (decision.action, decision.reason) == ("none", render.SYNC_FAILED)


# --- status ------------------------------------------------------------------------------------


def apply_status(obj: dict[str, Any], decision: render.Decision, now: str, changed: bool) -> dict[str, Any]:
    status = render.build_status(obj, decision, now=now, target=render.parse_target(obj), changed=changed)
    obj["status"] = {k: v for k, v in status.items() if v is not None}
    return status


def test_synced_status_and_stable_transition_time() -> None:
    obj = hsmsecret()
    src = source({"k": VALUE})
    created = render.decide(render.parse_target(obj), src, None)
    status = apply_status(obj, created, NOW, changed=True)
    assert status["syncStatus"] == "InSync"
    assert status["hsmChecksum"] == status["secretChecksum"] == src.checksum
    assert status["lastSyncTime"] == NOW and status["lastError"] is None
    assert status["secretRef"] == {"name": "db", "namespace": "team-a"}
    assert status["observedGeneration"] == 3
    (ready,) = status["conditions"]
    assert ready == {"type": "Ready", "status": "True", "reason": "Synced", "message": created.message,
                     "observedGeneration": 3, "lastTransitionTime": NOW}

    # nothing changed an hour later: the very same status, so nothing to write
    same = render.decide(render.parse_target(obj), src, existing_from(created))
    again = render.build_status(obj, same, now=LATER, target=render.parse_target(obj), changed=False)
    assert again["conditions"][0]["lastTransitionTime"] == NOW
    assert again["lastSyncTime"] == NOW
    assert not render.status_differs(obj["status"], again)
    assert render.events_for(obj, same, changed=False) == []


def test_transition_time_moves_only_when_status_changes() -> None:
    obj = hsmsecret()
    t = render.parse_target(obj)
    apply_status(obj, render.decide(t, source({"k": VALUE}), None), NOW, changed=True)
    down = apply_status(obj, render.decide(t, Unavailable("agent down"), None), LATER, changed=False)
    assert down["conditions"][0]["lastTransitionTime"] == LATER
    assert down["conditions"][0]["reason"] == "Unavailable"
    # Unavailable keeps what was known
    assert down["hsmChecksum"] == model.checksum({"k": VALUE}) and down["lastSyncTime"] == NOW
    assert down["syncStatus"] == "Error" and "agent down" in down["lastError"]
    still_down = apply_status(obj, render.decide(t, Unavailable("agent still down"), None), "2026-01-02T05:00:00Z",
                              changed=False)
    assert still_down["conditions"][0]["lastTransitionTime"] == LATER


def test_other_conditions_are_kept() -> None:
    obj = hsmsecret()
    obj["status"] = {"conditions": [{"type": "Running", "status": "True", "reason": "Ok", "message": "",
                                     "lastTransitionTime": NOW}]}
    status = render.build_status(obj, render.decide(target(), source({"k": VALUE}), None), now=LATER,
                                 target=target(), changed=True)
    assert [c["type"] for c in status["conditions"]] == ["Running", "Ready"]


def test_conflict_status_records_no_checksum_of_the_foreign_secret() -> None:
    obj = hsmsecret()
    unowned = {"metadata": {"name": "db", "namespace": "team-a"}, "data": {"k": base64.b64encode(b"x").decode()}}
    decision = render.decide(render.parse_target(obj), source({"k": VALUE}), unowned)
    status = render.build_status(obj, decision, now=NOW, target=render.parse_target(obj))
    assert status["secretChecksum"] is None and status["secretRef"] is None
    assert status["syncStatus"] == "Error" and status["conditions"][0]["reason"] == "Conflict"


def test_source_missing_is_out_of_sync() -> None:
    obj = hsmsecret()
    t = render.parse_target(obj)
    secret = existing_from(render.decide(t, source({"k": VALUE}), None))
    status = render.build_status(obj, render.decide(t, NotFound("gone"), secret), now=NOW, target=t)
    assert status["syncStatus"] == "OutOfSync" and status["hsmChecksum"] is None
    assert status["secretChecksum"] == model.checksum({"k": VALUE}) and status["secretRef"]["name"] == "db"


# --- events ------------------------------------------------------------------------------------


def test_events_only_on_change_or_transition() -> None:
    obj = hsmsecret()
    t = render.parse_target(obj)
    created = render.decide(t, source({"k": VALUE}), None)
    assert [e.reason for e in render.events_for(obj, created, changed=True)] == ["Synced"]
    apply_status(obj, created, NOW, changed=True)
    same = render.decide(t, source({"k": VALUE}), existing_from(created))
    assert render.events_for(obj, same, changed=False) == []
    forbidden = render.decide(t, None, None, allowed=False)
    (event,) = render.events_for(obj, forbidden, changed=False)
    assert (event.type, event.reason) == ("Warning", "Forbidden")
    unavailable = render.decide(t, Unavailable("down"), None)
    assert render.events_for(obj, unavailable, changed=False)[0].reason == "SyncFailed"


# --- fast path ---------------------------------------------------------------------------------


def synced_object(**spec: Any) -> tuple[dict[str, Any], str]:
    obj = hsmsecret(**spec)
    t = render.parse_target(obj)
    src = source({"k": VALUE})
    apply_status(obj, render.decide(t, src, None), NOW, changed=True)
    return obj, src.checksum


def test_needs_sync_is_false_when_nothing_changed() -> None:
    obj, checksum = synced_object()
    assert not render.needs_sync(obj, checksum, checksum)


def test_needs_sync_on_hsm_change_secret_edit_or_deletion_and_spec_change() -> None:
    obj, checksum = synced_object()
    other = model.checksum({"k": b"new"})
    assert render.needs_sync(obj, other, checksum)  # HSM changed
    assert render.needs_sync(obj, checksum, other)  # Secret edited by hand
    assert render.needs_sync(obj, checksum, None)  # Secret deleted
    assert render.needs_sync(obj, None, checksum)  # source gone
    obj["metadata"]["generation"] = 4
    assert render.needs_sync(obj, checksum, checksum)  # spec changed


def test_needs_sync_without_status_and_after_temporary_failures() -> None:
    assert render.needs_sync(hsmsecret(), None, None)
    obj, checksum = synced_object()
    apply_status(obj, render.decide(render.parse_target(obj), Unavailable("down"), None), LATER, changed=False)
    assert render.needs_sync(obj, checksum, checksum)


def test_needs_sync_waits_on_permanent_failures_until_an_input_changes() -> None:
    obj = hsmsecret()
    t = render.parse_target(obj)
    apply_status(obj, render.decide(t, None, None, allowed=False), NOW, changed=False)
    assert not render.needs_sync(obj, None, None)
    assert not render.needs_sync(obj, None, None, policy=Policy.operator_default().deny_all())
    assert render.needs_sync(obj, None, None, policy=Policy.operator_default())  # now allowed

    unowned = {"metadata": {"name": "db", "namespace": "team-a"}, "data": {}}
    conflict = hsmsecret()
    apply_status(conflict, render.decide(t, source({"k": VALUE}), unowned), NOW, changed=False)
    assert not render.needs_sync(conflict, model.checksum({"k": VALUE}), model.checksum({}))
    assert render.needs_sync(conflict, model.checksum({"k": VALUE}), None)  # foreign Secret removed


def test_needs_sync_with_auto_sync_off_ignores_hsm_changes_but_repairs_the_secret() -> None:
    obj, checksum = synced_object(autoSync=False)
    other = model.checksum({"k": b"new"})
    assert not render.needs_sync(obj, other, checksum)
    assert render.needs_sync(obj, checksum, None)


# --- diffs ---------------------------------------------------------------------------------------


def test_decision_diff_has_key_names_and_checksums_only() -> None:
    t = target()
    secret = existing_from(render.decide(t, source({"a": b"bc"}), None))
    decision = render.decide(t, source({"ab": VALUE}), secret)
    diff = render.decision_diff(t, decision)
    assert diff["before"] == {"keys": ["a"], "checksum": model.checksum({"a": b"bc"})}
    assert diff["after"] == {"keys": ["ab"], "checksum": model.checksum({"ab": VALUE})}
    text = json.dumps(diff)
    assert VALUE.decode() not in text and base64.b64encode(VALUE).decode() not in text


def test_timestamp_is_rfc3339_utc() -> None:
    assert render.timestamp(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == NOW


def test_source_gone_settles_after_the_delete() -> None:
    obj = hsmsecret(deletionPolicy="Delete")
    t = render.parse_target(obj)
    secret = existing_from(render.decide(t, source({"k": VALUE}), None))
    apply_status(obj, render.decide(t, source({"k": VALUE}), None), NOW, changed=True)
    deleted = render.decide(t, NotFound("gone"), secret)
    apply_status(obj, deleted, NOW, changed=True)
    later = render.decide(t, NotFound("gone"), None)
    assert later.action == "none" and later.message == deleted.message
    status = render.build_status(obj, later, now=LATER, target=t)
    assert not render.status_differs(obj["status"], status)
    assert render.events_for(obj, later, changed=False) == []
