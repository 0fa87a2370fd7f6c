"""HSMSecret -> Kubernetes Secret: every decision of the sync, as pure functions.

``hsmd.sync`` (the batch engine used by the ``hsm_secret_sync`` module and the operator's fast
path) does the I/O; this module decides. Given an HSMSecret object (a dict as the API returns
it), the HSM secret it names and the Secret that exists now, it says:

- what the Secret should look like (``render_secret``): name ``spec.secretName`` or the object
  name, the HSMSecret's namespace, ``spec.secretType`` (default Opaque), base64 data, our labels
  and annotations, and a controller ownerReference to the HSMSecret;
- what to do about it (``decide``): create, patch (only what differs), replace (the Secret type
  is immutable), delete (only an owned Secret, only when ``spec.deletionPolicy: Delete`` and the
  source is gone or forbidden), nothing, or conflict (a Secret we do not own is never touched);
- what the HSMSecret status becomes (``build_status``): the legacy fields (syncStatus,
  hsmChecksum, secretChecksum, lastSyncTime, lastError, secretRef) and a ``Ready`` condition whose
  lastTransitionTime changes only when its status does; and which Events to emit;
- whether the operator's fast path must run a sync at all (``needs_sync``).

No values ever leave this module in a message, a diff or an Event: only paths, names, key names
and checksums. Reasons of the Ready condition: Synced, Forbidden, Conflict, SourceMissing,
Unavailable, InvalidSpec, SyncFailed.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from hsmd import model
from hsmd import status as status_rules
from hsmd.errors import HsmdError, InvalidArgument, NotFound
from hsmd.policy import Policy

GROUP = "hsm.j5t.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "HSMSecret"
PLURAL = "hsmsecrets"

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "hsmd"
HSMSECRET_LABEL = f"{GROUP}/hsmsecret"
PATH_ANNOTATION = f"{GROUP}/hsm-path"
CHECKSUM_ANNOTATION = f"{GROUP}/checksum"
# Selects every Secret hsmd manages in a namespace (one list per namespace per batch).
MANAGED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"

READY = "Ready"
# Ready condition reasons
SYNCED = "Synced"
FORBIDDEN = "Forbidden"
CONFLICT = "Conflict"
SOURCE_MISSING = "SourceMissing"
UNAVAILABLE = "Unavailable"
INVALID_SPEC = "InvalidSpec"
SYNC_FAILED = "SyncFailed"
REASONS = (SYNCED, FORBIDDEN, CONFLICT, SOURCE_MISSING, UNAVAILABLE, INVALID_SPEC, SYNC_FAILED)
# Reasons that a later attempt can fix without any input changing (retry with backoff).
TEMPORARY_REASONS = frozenset({UNAVAILABLE, SYNC_FAILED})

# legacy status.syncStatus values
IN_SYNC = "InSync"
OUT_OF_SYNC = "OutOfSync"
ERROR = "Error"
PENDING = "Pending"

# Event reasons (Unavailable and InvalidSpec are reported as SyncFailed events)
EVENT_REASON = {
    SYNCED: "Synced",
    FORBIDDEN: "Forbidden",
    CONFLICT: "Conflict",
    SOURCE_MISSING: "SourceMissing",
    UNAVAILABLE: "SyncFailed",
    INVALID_SPEC: "SyncFailed",
    SYNC_FAILED: "SyncFailed",
}

RETAIN = "Retain"
DELETE = "Delete"
DELETION_POLICIES = (RETAIN, DELETE)
DEFAULT_SECRET_TYPE = "Opaque"  # noqa: S105 - a Secret type, not a password

Action = Literal["create", "patch", "replace", "delete", "none", "conflict"]

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_SECRET_TYPE = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_./]*")


# --- the HSMSecret, validated -----------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What one HSMSecret asks for, validated. Built by ``parse_target``."""

    namespace: str
    name: str
    uid: str
    generation: int
    path: str
    secret_name: str
    secret_type: str
    deletion_policy: str
    auto_sync: bool = True

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def owner_reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def object_key(hsmsecret: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name) of an object, tolerant of a malformed one (for reporting)."""
    meta = hsmsecret.get("metadata") if isinstance(hsmsecret, Mapping) else None
    meta = meta if isinstance(meta, Mapping) else {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def parse_target(hsmsecret: Mapping[str, Any]) -> Target:
    """Validate an HSMSecret object; InvalidArgument (reason InvalidSpec) says what is wrong."""
    if not isinstance(hsmsecret, Mapping):
        raise InvalidArgument("an HSMSecret must be a mapping (the object as the API returns it)")
    kind = hsmsecret.get("kind")
    if kind not in (None, KIND):
        raise InvalidArgument(f"object of kind {kind!r} is not an {KIND}")
    meta = hsmsecret.get("metadata")
    if not isinstance(meta, Mapping):
        raise InvalidArgument("HSMSecret has no metadata")
    name = meta.get("name")
    namespace = meta.get("namespace")
    uid = meta.get("uid")
    if not isinstance(name, str) or not name:
        raise InvalidArgument("HSMSecret metadata.name is missing")
    if not isinstance(namespace, str) or not namespace:
        raise InvalidArgument(f"HSMSecret {name!r} has no metadata.namespace")
    if not isinstance(uid, str) or not uid:
        raise InvalidArgument(
            f"HSMSecret {namespace}/{name} has no metadata.uid (pass the object as read from the API)"
        )
    generation = meta.get("generation") or 0
    if not isinstance(generation, int):
        raise InvalidArgument(f"HSMSecret {namespace}/{name}: metadata.generation must be an integer")
    spec = hsmsecret.get("spec") or {}
    if not isinstance(spec, Mapping):
        raise InvalidArgument(f"HSMSecret {namespace}/{name}: spec must be a mapping")

    raw_path = spec.get("hsmPath") or name
    if not isinstance(raw_path, str):
        raise InvalidArgument("spec.hsmPath must be a string")
    try:
        path = model.validate_path(raw_path)
    except InvalidArgument as exc:
        raise InvalidArgument(f"spec.hsmPath: {exc}") from None

    secret_name = spec.get("secretName") or name
    if not isinstance(secret_name, str) or len(secret_name) > 253 or not _DNS_SUBDOMAIN.fullmatch(secret_name):
        raise InvalidArgument(
            f"spec.secretName {str(secret_name)[:64]!r} is not a valid Secret name "
            "(lowercase letters, digits, '-' and '.', at most 253 characters)"
        )
    secret_type = spec.get("secretType") or DEFAULT_SECRET_TYPE
    if not isinstance(secret_type, str) or len(secret_type) > 253 or not _SECRET_TYPE.fullmatch(secret_type):
        raise InvalidArgument(f"spec.secretType {str(secret_type)[:64]!r} is not a valid Secret type")
    deletion_policy = spec.get("deletionPolicy") or RETAIN
    if deletion_policy not in DELETION_POLICIES:
        raise InvalidArgument(
            f"spec.deletionPolicy {str(deletion_policy)[:32]!r} is not one of {', '.join(DELETION_POLICIES)}"
        )
    auto_sync = spec.get("autoSync", True)
    return Target(
        namespace=namespace,
        name=name,
        uid=uid,
        generation=generation,
        path=path,
        secret_name=secret_name,
        secret_type=secret_type,
        deletion_policy=str(deletion_policy),
        auto_sync=auto_sync is not False,
    )


def being_deleted(hsmsecret: Mapping[str, Any]) -> bool:
    meta = hsmsecret.get("metadata") or {}
    return bool(isinstance(meta, Mapping) and meta.get("deletionTimestamp"))


# --- the Secret ---------------------------------------------------------------------------------


def render_secret(target: Target, source: model.Secret) -> dict[str, Any]:
    """The desired Kubernetes Secret for ``target`` holding ``source``'s data.

    InvalidArgument when a key of the HSM secret cannot be a Secret key (e.g. written by another
    tool); the message names the key, never a value."""
    data: dict[str, str] = {}
    for key, value in source.data.items():
        try:
            model.validate_key(key)
        except InvalidArgument as exc:
            raise InvalidArgument(f"HSM secret {target.path!r}: {exc}") from None
        data[key] = base64.b64encode(bytes(value)).decode("ascii")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": target.secret_name,
            "namespace": target.namespace,
            "labels": managed_labels(target),
            "annotations": managed_annotations(target, source.checksum),
            "ownerReferences": [target.owner_reference()],
        },
        "type": target.secret_type,
        "data": data,
    }


def managed_labels(target: Target) -> dict[str, str]:
    return {MANAGED_BY_LABEL: MANAGED_BY, HSMSECRET_LABEL: _label_value(target.name)}


def managed_annotations(target: Target, hsm_checksum: str) -> dict[str, str]:
    return {PATH_ANNOTATION: target.path, CHECKSUM_ANNOTATION: hsm_checksum}


def _label_value(name: str) -> str:
    # Label values are at most 63 characters; longer HSMSecret names are shortened (the
    # ownerReference, not the label, is what ownership is decided on).
    return name if len(name) <= 63 else name[:63].rstrip("-_.")


def secret_data(secret: Mapping[str, Any]) -> dict[str, bytes]:
    """The decoded data of a Secret object (``data`` is base64 on the wire)."""
    raw = secret.get("data") or {}
    out: dict[str, bytes] = {}
    for key, value in raw.items():
        try:
            out[str(key)] = base64.b64decode(value or "", validate=True)
        except (binascii.Error, ValueError, TypeError):
            # never happens with a real API server; treat undecodable as different content
            out[str(key)] = b"\x00invalid-base64"
    return out


def secret_checksum(secret: Mapping[str, Any] | None) -> str | None:
    """hsmd.model.checksum over a Secret's decoded data; None when there is no Secret."""
    if secret is None:
        return None
    return model.checksum(secret_data(secret))


def controller_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    meta = obj.get("metadata") or {}
    for ref in meta.get("ownerReferences") or ():
        if isinstance(ref, Mapping) and ref.get("controller"):
            return ref
    return None


def is_owned_by(obj: Mapping[str, Any], target: Target) -> bool:
    """Owned = its controller ownerReference is this HSMSecret (same uid). Nothing else counts:
    a Secret with our labels but no such reference is somebody else's."""
    ref = controller_of(obj)
    return bool(
        ref is not None
        and ref.get("uid") == target.uid
        and ref.get("kind") == KIND
        and str(ref.get("apiVersion", "")).split("/")[0] == GROUP
    )


def secret_patch(desired: Mapping[str, Any], existing: Mapping[str, Any]) -> dict[str, Any] | None:
    """A JSON merge patch turning an owned ``existing`` Secret into ``desired``; None when equal.

    Only our labels and annotations are touched (others' stay); removed keys are set to null;
    the patch carries the resourceVersion it was computed against so a concurrent change makes
    the server answer 409 instead of us overwriting something we did not look at."""
    patch: dict[str, Any] = {}
    want = secret_data(desired)
    have = secret_data(existing)
    if model.checksum(want) != model.checksum(have):
        data: dict[str, str | None] = {k: None for k in have if k not in want}
        data.update({k: v for k, v in (desired.get("data") or {}).items() if have.get(k) != want[k]})
        patch["data"] = data
    meta_patch: dict[str, Any] = {}
    for field_name in ("labels", "annotations"):
        wanted = desired["metadata"].get(field_name) or {}
        current = (existing.get("metadata") or {}).get(field_name) or {}
        changed = {k: v for k, v in wanted.items() if current.get(k) != v}
        if changed:
            meta_patch[field_name] = changed
    if not patch and not meta_patch:
        return None
    resource_version = (existing.get("metadata") or {}).get("resourceVersion")
    if resource_version:
        meta_patch["resourceVersion"] = resource_version
    patch["metadata"] = meta_patch
    return patch


# --- the decision -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What to do for one HSMSecret, and the outcome if it is done successfully."""

    action: Action
    reason: str
    message: str
    body: dict[str, Any] | None = None  # create/replace: the Secret; patch: the merge patch
    hsm_checksum: str | None = None  # None: unknown (keep the previous status value)
    secret_checksum: str | None = None  # checksum of the owned Secret after the action, None: none
    secret_exists: bool = False  # an owned Secret exists after the action
    keys: tuple[str, ...] = ()  # key names of the desired Secret (for diffs; never values)
    before_keys: tuple[str, ...] = ()
    before_checksum: str | None = None


SourceResult = model.Secret | HsmdError | None


def decide(
    target: Target,
    source: SourceResult,
    existing: Mapping[str, Any] | None,
    *,
    allowed: bool = True,
) -> Decision:
    """Decide for one HSMSecret.

    ``source`` is the HSM secret, or the error reading it (NotFound: the path holds nothing), or
    None when it was not read (the path is forbidden). ``existing`` is the Secret named by the
    target as it is now (None: there is none). ``allowed``: the access policy grants the path.

    Order matters: a forbidden or unreadable source never creates anything; only then is a
    Secret we do not own reported as a Conflict (and left untouched in every case).
    """
    owned = existing is not None and is_owned_by(existing, target)
    before_keys, before_checksum = _before(existing if owned else None)
    ref = f"{target.namespace}/{target.secret_name}"

    if not allowed:
        return _source_gone(
            target, existing if owned else None, FORBIDDEN,
            f"the access policy does not allow namespace {target.namespace!r} to read HSM path {target.path!r}",
        )
    if isinstance(source, NotFound):
        return _source_gone(
            target, existing if owned else None, SOURCE_MISSING, f"HSM path {target.path!r} holds no secret"
        )
    if not isinstance(source, model.Secret):
        err = source if isinstance(source, HsmdError) else InvalidArgument("the HSM secret was not read")
        return Decision(
            "none", UNAVAILABLE if err.temporary else SYNC_FAILED, f"reading HSM path {target.path!r} failed: {err}",
            secret_checksum=before_checksum, secret_exists=owned, keys=before_keys,
            before_keys=before_keys, before_checksum=before_checksum,
        )
    if existing is not None and not owned:
        return Decision(
            "conflict", CONFLICT,
            f"Secret {ref} exists and is not controlled by this HSMSecret; it was left untouched",
            hsm_checksum=source.checksum,
        )
    try:
        desired = render_secret(target, source)
    except InvalidArgument as exc:
        return Decision(
            "none", SYNC_FAILED, str(exc), hsm_checksum=source.checksum,
            secret_checksum=before_checksum, secret_exists=owned, keys=before_keys,
            before_keys=before_keys, before_checksum=before_checksum,
        )

    def synced(action: Action, message: str, body: dict[str, Any] | None = None) -> Decision:
        return Decision(
            action, SYNCED, message, body=body, hsm_checksum=source.checksum, secret_checksum=source.checksum,
            secret_exists=True, keys=tuple(sorted(source.data)),
            before_keys=before_keys, before_checksum=before_checksum,
        )

    if existing is None:
        return synced("create", f"created Secret {ref} from HSM path {target.path!r}", desired)
    if (existing.get("type") or DEFAULT_SECRET_TYPE) != target.secret_type:
        # The type of a Secret is immutable: delete and create again.
        return synced("replace", f"replaced Secret {ref} (type {target.secret_type}) from HSM path {target.path!r}",
                      desired)
    patch = secret_patch(desired, existing)
    if patch is None:
        return synced("none", f"Secret {ref} is in sync with HSM path {target.path!r}")
    what = "data" if "data" in patch else "labels/annotations"
    return synced("patch", f"updated Secret {ref} ({what}) from HSM path {target.path!r}", patch)


def _before(owned: Mapping[str, Any] | None) -> tuple[tuple[str, ...], str | None]:
    if owned is None:
        return ((), None)
    data = secret_data(owned)
    return (tuple(sorted(data)), model.checksum(data))


def _source_gone(target: Target, owned: Mapping[str, Any] | None, reason: str, message: str) -> Decision:
    """The source is missing or forbidden: keep the owned Secret unless deletionPolicy: Delete.

    The message is the same when the Secret is deleted and on every later sync that finds it gone,
    so the status settles and no further Events are emitted."""
    ref = f"{target.namespace}/{target.secret_name}"
    if target.deletion_policy == DELETE:
        message = f"{message}; Secret {ref} is removed (deletionPolicy Delete)"
        if owned is None:
            return Decision("none", reason, message)
        keys, checksum = _before(owned)
        return Decision("delete", reason, message, before_keys=keys, before_checksum=checksum)
    if owned is None:
        return Decision("none", reason, message)
    keys, checksum = _before(owned)
    return Decision("none", reason, f"{message}; kept Secret {ref} (deletionPolicy Retain)",
                    secret_checksum=checksum, secret_exists=True, keys=keys, before_keys=keys, before_checksum=checksum)


def invalid_spec(message: str) -> Decision:
    return Decision("none", INVALID_SPEC, message)


def failed(error: HsmdError, planned: Decision | None = None) -> Decision:
    """Carrying out ``planned`` (or looking at the Secret) failed with ``error``: Unavailable when
    temporary, SyncFailed otherwise; the Secret is as it was before."""
    keys = planned.before_keys if planned else ()
    checksum = planned.before_checksum if planned else None
    return Decision(
        "none", UNAVAILABLE if error.temporary else SYNC_FAILED, str(error),
        hsm_checksum=planned.hsm_checksum if planned else None, secret_checksum=checksum,
        secret_exists=checksum is not None, keys=keys, before_keys=keys, before_checksum=checksum,
    )


# --- status, conditions, events -----------------------------------------------------------------


def timestamp(now: datetime | None = None) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes times."""
    return status_rules.rfc3339(now)


def sync_status_of(reason: str) -> str:
    if reason == SYNCED:
        return IN_SYNC
    if reason == SOURCE_MISSING:
        return OUT_OF_SYNC
    return ERROR


def ready_condition(status: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    for cond in (status or {}).get("conditions") or ():
        if isinstance(cond, Mapping) and cond.get("type") == READY:
            return cond
    return None


def build_status(
    hsmsecret: Mapping[str, Any],
    decision: Decision,
    *,
    now: str,
    target: Target | None = None,
    changed: bool = False,
) -> dict[str, Any]:
    """The complete HSMSecret status after ``decision`` was applied.

    Every legacy field is present; ``None`` marks one to remove (the status is written as a
    JSON merge patch). Unknown checksums (Unavailable) keep their previous values. lastSyncTime
    moves only when the Secret changed or the object just became in sync, so a resync that finds
    nothing to do yields the same status and needs no write."""
    prev: Mapping[str, Any] = hsmsecret.get("status") or {}
    meta = hsmsecret.get("metadata") or {}
    generation = meta.get("generation") or 0
    reason = decision.reason
    prev_hsm = prev.get("hsmChecksum") or None
    prev_secret = prev.get("secretChecksum") or None

    if reason == UNAVAILABLE:
        hsm_checksum, secret_checksum = prev_hsm, prev_secret
    elif reason in (SYNC_FAILED,):
        hsm_checksum = decision.hsm_checksum or prev_hsm
        secret_checksum = decision.secret_checksum
    elif reason in (FORBIDDEN, INVALID_SPEC, SOURCE_MISSING):
        hsm_checksum, secret_checksum = None, decision.secret_checksum
    elif reason == CONFLICT:
        # Never record a checksum of a Secret that is not ours: a status reader could confirm
        # guesses of its content with it.
        hsm_checksum, secret_checksum = decision.hsm_checksum, None
    else:
        hsm_checksum, secret_checksum = decision.hsm_checksum, decision.secret_checksum

    last_sync = prev.get("lastSyncTime") or None
    if reason == SYNCED and (
        changed or last_sync is None or prev.get("syncStatus") != IN_SYNC or prev_hsm != hsm_checksum
    ):
        last_sync = now

    secret_ref: dict[str, str] | None = None
    if target is not None and decision.secret_exists:
        secret_ref = {"name": target.secret_name, "namespace": target.namespace}

    message = decision.message
    prev_ready = ready_condition(prev)
    if reason == SYNCED and not changed and prev_ready is not None and prev_ready.get("reason") == SYNCED:
        # "in sync" after "created": keep the message of the sync that did something, so a resync
        # that changes nothing leaves the status byte-for-byte equal (no write, no Event)
        message = str(prev_ready.get("message") or message)
    condition = {
        "type": READY,
        "status": "True" if reason == SYNCED else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }
    return {
        "syncStatus": sync_status_of(reason),
        "hsmChecksum": hsm_checksum,
        "secretChecksum": secret_checksum,
        "lastSyncTime": last_sync,
        "lastError": None if reason == SYNCED else decision.message,
        "secretRef": secret_ref,
        "observedGeneration": generation,
        "conditions": status_rules.merge_conditions(prev.get("conditions"), [condition], now=now),
    }


def status_differs(previous: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing ``new`` (None = remove) would change ``previous``."""
    prev = previous or {}
    return any(prev.get(k) != v for k, v in new.items())


def status_patch(status: Mapping[str, Any]) -> dict[str, Any]:
    """The merge patch body for the status subresource."""
    return {"status": dict(status)}


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


def events_for(
    hsmsecret: Mapping[str, Any], decision: Decision, *, changed: bool
) -> list[Event]:
    """Events worth emitting: one for every change to the Secret, one when the Ready reason or
    message changes. A resync that changes nothing emits nothing (no Event spam)."""
    prev = ready_condition(hsmsecret.get("status"))
    transition = prev is None or prev.get("reason") != decision.reason
    if decision.reason != SYNCED and prev is not None and prev.get("message") != decision.message:
        transition = True
    if decision.reason == SYNCED:
        return [Event("Normal", EVENT_REASON[SYNCED], decision.message)] if (changed or transition) else []
    if changed or transition:
        return [Event("Warning", EVENT_REASON[decision.reason], decision.message)]
    return []


# --- the fast path --------------------------------------------------------------------------------


def needs_sync(
    hsmsecret: Mapping[str, Any],
    hsm_checksum: str | None,
    secret_checksum: str | None,
    *,
    policy: Policy | None = None,
) -> bool:
    """Whether a sync could change anything, from checksums alone (the operator's resync).

    ``hsm_checksum``: the HSM checksum of the source path now (None: no secret there).
    ``secret_checksum``: checksum of the target Secret's data now (None: no Secret).
    ``policy``: when given, a change of the policy's answer for the path also counts.

    True when the object was never synced or its spec changed (generation), after temporary
    failures (retry), and when the checksums differ from what the status recorded. Permanent
    failures (InvalidSpec, Forbidden, Conflict, SourceMissing) wait for their input to change.
    With ``spec.autoSync: false`` HSM changes are not followed, but a Secret that was edited or
    deleted is still repaired.
    """
    status: Mapping[str, Any] = hsmsecret.get("status") or {}
    cond = ready_condition(status)
    meta = hsmsecret.get("metadata") or {}
    if cond is None or cond.get("observedGeneration") != (meta.get("generation") or 0):
        return True
    reason = cond.get("reason")
    if reason in TEMPORARY_REASONS:
        return True
    if reason == INVALID_SPEC:
        return False
    try:
        target = parse_target(hsmsecret)
    except InvalidArgument:
        return True  # the status says valid, the object says not: let the sync record it
    if policy is not None:
        allowed = policy.allows(target.namespace, "get", target.path)
        if allowed != (reason != FORBIDDEN):
            return True
    if reason == FORBIDDEN:
        return False
    recorded_hsm = status.get("hsmChecksum") or None
    recorded_secret = status.get("secretChecksum") or None
    if reason == CONFLICT:
        return secret_checksum is None  # the foreign Secret is gone: ours can be created now
    if reason == SOURCE_MISSING:
        if hsm_checksum is not None:
            return True
        return secret_checksum != recorded_secret
    # Synced
    if secret_checksum != recorded_secret:
        return True
    if hsm_checksum != recorded_hsm:
        return target.auto_sync or hsm_checksum is None
    return False


# --- diffs (key names and checksums only) -------------------------------------------------------


def decision_diff(target: Target, decision: Decision) -> dict[str, Any]:
    """An Ansible diff for one Secret: key names and checksums, never values."""
    exists_after = decision.action in ("create", "patch", "replace") or decision.secret_exists
    after_keys = decision.keys if exists_after else ()
    return {
        "before_header": f"Secret {target.namespace}/{target.secret_name}",
        "after_header": f"Secret {target.namespace}/{target.secret_name}",
        "before": {"keys": list(decision.before_keys), "checksum": decision.before_checksum}
        if decision.before_checksum is not None
        else {},
        "after": {"keys": list(after_keys), "checksum": decision.secret_checksum} if exists_after else {},
    }


@dataclass
class Summary:
    """Counts per reason and action, for module results and logs."""

    reasons: dict[str, int] = field(default_factory=dict)
    actions: dict[str, int] = field(default_factory=dict)

    def add(self, reason: str, action: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1
        self.actions[action] = self.actions.get(action, 0) + 1
