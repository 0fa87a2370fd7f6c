"""The batch sync engine: HSMSecrets -> Kubernetes Secrets, many objects per call.

Used twice, the same way: by the ``hsm.secrets.hsm_secret_sync`` module (one invocation per
batch inside an Ansible run) and directly by the operator's fast path. Per call there is one
agent (or AgentSet) and one Kubernetes ApiClient, and for N objects:

1. every HSMSecret is validated (``hsmd.render.parse_target``; bad ones get InvalidSpec) and its
   path checked against the access policy (``Policy.allows(namespace, "get", path)``; denied ones
   get Forbidden, are never read and never get a Secret);
2. the allowed paths are read in batch RPCs (``agent.read_many``, chunks of ``read_chunk``);
3. the existing Secrets are looked at: for a namespace with many objects, the Secrets hsmd manages
   there are listed once (label selector ``app.kubernetes.io/managed-by=hsmd``) — a Secret we do
   not manage shows up only when a create answers 409, and is then read and reported as a
   Conflict, never touched; for a few objects (``small_batch``, the operator's usual fast-path
   batch of one) each target Secret is read with a GET and only those objects' own Secrets are
   listed (by label, to find Secrets left under an old ``secretName``), in parallel — the same
   outcomes without reading the whole namespace;
4. ``hsmd.render.decide`` says create / patch / replace / delete / nothing / conflict, and only the
   Secrets that differ are written (in parallel, ``max_workers`` requests at a time), patches
   carrying the resourceVersion they were computed against;
5. each object gets a ``SyncOutcome``: the complete new status, whether it differs from the
   current one, the Events to emit, and whether the Secret changed.

Status and Events are NOT written by ``sync_batch``: the caller decides (the module does it
when ``write_status: true``; the operator may batch them with its own bookkeeping) with
``write_status`` and ``emit_events`` below. ``finalize_batch`` is the deletion path: it removes
the Secrets an HSMSecret controls and never touches HSM data.

An unreachable agent never deletes anything (Unavailable); the API server's own failures
(5xx, 429, connection errors) are Unavailable too, and retried by the caller with backoff.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import quote

from kubernetes.client.exceptions import ApiException

from hsmd import kube, model, render
from hsmd.errors import Forbidden, HsmdError, Internal, InvalidArgument, Unavailable
from hsmd.policy import Policy
from hsmd.render import Decision, Event, Target, needs_sync

__all__ = [
    "SecretReader",
    "SyncOutcome",
    "emit_events",
    "finalize_batch",
    "needs_sync",
    "secret_checksums",
    "sync_batch",
    "write_status",
]

log = logging.getLogger("hsmd.sync")

MERGE_PATCH = kube.MERGE_PATCH
DEFAULT_WORKERS = 8
DEFAULT_READ_CHUNK = 500
# Up to this many objects in a namespace, GET their Secrets instead of listing the namespace's.
DEFAULT_SMALL_BATCH = 20
COMPONENT = "hsmd"


class SecretReader(Protocol):
    """What sync needs from the HSM side: ``read_many`` answering ``Secret | HsmdError`` per path
    (an AgentClient, a Token, or an ``hsmd.fanout.AgentSet``, whose answer for a path absent on the
    agents that answered while another did not is Unavailable, so a partial outage never reads as
    SourceMissing)."""

    def read_many(self, paths: Sequence[str]) -> Mapping[str, model.Secret | HsmdError]: ...


@dataclass
class SyncOutcome:
    """The result of syncing one HSMSecret."""

    namespace: str
    name: str
    uid: str
    reason: str
    message: str
    action: str  # created | updated | replaced | deleted | unchanged | conflict | none | skipped
    secret_changed: bool = False
    status: dict[str, Any] | None = None  # complete new status (None values: remove); None: skipped
    status_changed: bool = False
    events: list[Event] = field(default_factory=list)
    path: str | None = None
    secret_name: str | None = None
    diff: dict[str, Any] | None = None

    @property
    def ready(self) -> bool:
        return self.reason == render.SYNCED

    @property
    def temporary(self) -> bool:
        """A retry with backoff may succeed without any input changing."""
        return self.reason in render.TEMPORARY_REASONS

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for module results and logs (no values: checksums and names only)."""
        return {
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
            "path": self.path,
            "secretName": self.secret_name,
            "reason": self.reason,
            "ready": self.ready,
            "temporary": self.temporary,
            "message": self.message,
            "action": self.action,
            "secretChanged": self.secret_changed,
            "statusChanged": self.status_changed,
            "status": {k: v for k, v in (self.status or {}).items() if v is not None} if self.status else None,
            "events": [{"type": e.type, "reason": e.reason, "message": e.message} for e in self.events],
        }


_DONE_ACTION = {
    "create": "created",
    "patch": "updated",
    "replace": "replaced",
    "delete": "deleted",
    "none": "unchanged",
    "conflict": "conflict",
}


# --- Kubernetes plumbing (raw JSON: render works on dicts, and it skips model (de)serialization) ---


def api_error(exc: BaseException, what: str) -> HsmdError:
    """An API failure as a domain error (hsmd.kube.api_error); connection errors are Unavailable."""
    if isinstance(exc, ApiException):
        return kube.api_error(exc, what)
    if isinstance(exc, HsmdError):
        return exc
    return Unavailable(f"{what}: {type(exc).__name__}: {exc}")


class _Api:
    """Raw JSON requests (hsmd.kube.request): render works on dicts, and skipping the generated
    models' (de)serialization is most of the client-side cost of a 1,000-object batch."""

    def __init__(self, api_client: Any, timeout: float = 30.0) -> None:
        self.client = api_client
        self.timeout = timeout

    def call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str | None = None,
    ) -> dict[str, Any]:
        result = kube.request(
            self.client, method, path, body=body, query=query, content_type=content_type, timeout=self.timeout
        )
        return result if isinstance(result, dict) else {}


class _Secrets(_Api):
    """Secret CRUD on raw JSON."""

    @staticmethod
    def _path(namespace: str, name: str | None = None) -> str:
        base = f"/api/v1/namespaces/{quote(namespace, safe='')}/secrets"
        return base if name is None else f"{base}/{quote(name, safe='')}"

    def list_managed(self, namespace: str, selector: str = render.MANAGED_SELECTOR) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cont = ""
        while True:
            query = {"labelSelector": selector, "limit": "500"} | ({"continue": cont} if cont else {})
            page = self.call("GET", self._path(namespace), query=query)
            items.extend(page.get("items") or [])
            cont = (page.get("metadata") or {}).get("continue") or ""
            if not cont:
                return items

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.call("GET", self._path(namespace, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.call("POST", self._path(body["metadata"]["namespace"]), body=dict(body))

    def patch(self, namespace: str, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return self.call("PATCH", self._path(namespace, name), body=dict(patch), content_type=MERGE_PATCH)

    def delete(self, namespace: str, name: str, uid: str | None, resource_version: str | None = None) -> None:
        """Delete exactly the object we looked at (uid/resourceVersion preconditions); gone is fine."""
        preconditions: dict[str, str] = {}
        if uid:
            preconditions["uid"] = uid
        if resource_version:
            preconditions["resourceVersion"] = resource_version
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": preconditions}
        try:
            self.call("DELETE", self._path(namespace, name), body=body)
        except ApiException as exc:
            if exc.status != 404:
                raise


# --- the batch ----------------------------------------------------------------------------------


@dataclass
class _Item:
    obj: Mapping[str, Any]
    target: Target | None = None
    decision: Decision | None = None
    allowed: bool = True
    source: render.SourceResult = None
    existing: dict[str, Any] | None = None
    failure: HsmdError | None = None  # looking at the existing Secret failed
    changed: bool = False
    done: str = "none"
    orphans: list[dict[str, Any]] = field(default_factory=list)


def sync_batch(
    hsmsecrets: Sequence[Mapping[str, Any]],
    *,
    agent: SecretReader | None,
    api_client: Any,
    policy: Policy | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
    max_workers: int = DEFAULT_WORKERS,
    read_chunk: int = DEFAULT_READ_CHUNK,
    small_batch: int = DEFAULT_SMALL_BATCH,
) -> list[SyncOutcome]:
    """Sync a batch of HSMSecret objects (dicts as the API returns them); one outcome each, in order.

    ``policy`` None means the operator default (namespace N may sync ``N/**``). ``dry_run``
    decides everything (reading what exists) but writes nothing. ``small_batch``: up to this many
    objects in a namespace, their Secrets are fetched one by one instead of listing every Secret
    hsmd manages there (same outcomes; see ``_find_existing``). Never raises for a per-object
    problem; raises only for programming errors.
    """
    policy = policy if policy is not None else Policy.operator_default()
    stamp = render.timestamp(now)
    secrets = _Secrets(api_client)
    items = [_Item(obj) for obj in hsmsecrets]
    active: list[_Item] = []
    for item in items:
        if render.being_deleted(item.obj):
            item.done = "skipped"
            continue
        try:
            item.target = render.parse_target(item.obj)
        except InvalidArgument as exc:
            item.decision = render.invalid_spec(str(exc))
            continue
        item.allowed = policy.allows(item.target.namespace, "get", item.target.path)
        active.append(item)

    _read_sources(agent, [i for i in active if i.allowed], read_chunk)
    _find_existing(secrets, active, max_workers, small_batch)
    for item in active:
        assert item.target is not None
        if item.failure is not None:
            item.decision = render.failed(item.failure)
        else:
            item.decision = render.decide(item.target, item.source, item.existing, allowed=item.allowed)

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        list(pool.map(lambda it: _apply(secrets, it, dry_run), active))

    return [_outcome(item, stamp) for item in items]


def _read_sources(agent: SecretReader | None, items: list[_Item], chunk: int) -> None:
    by_path: dict[str, list[_Item]] = {}
    for item in items:
        assert item.target is not None
        by_path.setdefault(item.target.path, []).append(item)
    paths = sorted(by_path)
    for start in range(0, len(paths), max(1, chunk)):
        part = paths[start : start + max(1, chunk)]
        found: Mapping[str, model.Secret | HsmdError]
        if agent is None:
            err: HsmdError = Unavailable("no HSM agent is configured")
            found = {p: err for p in part}
        else:
            try:
                found = agent.read_many(part)
            except HsmdError as exc:
                found = {p: exc for p in part}
            except Exception as exc:  # a client bug must not abort the other objects
                found = {p: Internal(f"reading from the agent failed: {type(exc).__name__}") for p in part}
        for path in part:
            # an answer without the path is the reader's failure, never absence (which may delete)
            result = found[path] if path in found else Internal(f"the agent's answer has no entry for {path!r}")
            for item in by_path[path]:
                item.source = result


def _find_existing(secrets: _Secrets, items: list[_Item], workers: int, small_batch: int) -> None:
    """The existing target Secret of each item, and the Secrets it still controls under an old name.

    A namespace with at most ``small_batch`` items: one GET per target Secret plus one list of just
    those HSMSecrets' Secrets (label ``hsm.j5t.io/hsmsecret in (...)``, for renamed targets), all in
    parallel - a batch of one costs two small requests, not a list of the whole namespace. A larger
    namespace: one labelled list of every Secret hsmd manages there (per-object GETs if listing is
    refused). Either way the same Secrets are found, so the decisions are the same."""
    by_namespace: dict[str, list[_Item]] = {}
    for item in items:
        assert item.target is not None
        by_namespace.setdefault(item.target.namespace, []).append(item)
    need_get: list[_Item] = []
    owner_lists: list[tuple[str, list[_Item]]] = []
    for namespace in sorted(by_namespace):
        members = by_namespace[namespace]
        if len(members) <= small_batch:
            need_get.extend(members)
            owner_lists.append((namespace, members))
            continue
        try:
            found = secrets.list_managed(namespace)
        except Exception as exc:
            error = api_error(exc, f"listing Secrets in {namespace}")
            for item in members:
                if isinstance(error, Forbidden):
                    need_get.append(item)  # RBAC without list: fall back to GETs
                else:
                    item.failure = error
            continue
        index = {s["metadata"]["name"]: s for s in found}
        by_owner = _by_owner(found)
        for item in members:
            assert item.target is not None
            item.existing = index.get(item.target.secret_name)
            item.orphans = _orphans(item, by_owner)

    def fetch(it: _Item) -> None:
        assert it.target is not None
        try:
            it.existing = secrets.get(it.target.namespace, it.target.secret_name)
        except Exception as exc:
            it.failure = api_error(exc, f"reading Secret {it.target.namespace}/{it.target.secret_name}")

    def owned(namespace: str, members: list[_Item]) -> tuple[list[_Item], dict[str, list[dict[str, Any]]] | HsmdError]:
        names = sorted({render._label_value(m.target.name) for m in members if m.target is not None})
        selector = f"{render.MANAGED_SELECTOR},{render.HSMSECRET_LABEL} in ({','.join(names)})"
        try:
            return members, _by_owner(secrets.list_managed(namespace, selector))
        except Exception as exc:
            return members, api_error(exc, f"listing Secrets in {namespace}")

    if not need_get:
        return
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        lists = [pool.submit(owned, namespace, members) for namespace, members in owner_lists]
        list(pool.map(fetch, need_get))
        results = [f.result() for f in lists]
    for members, found_or_error in results:
        for item in members:
            if isinstance(found_or_error, Forbidden):
                continue  # RBAC without list: like the fallback above, no search for old names
            if isinstance(found_or_error, HsmdError):
                item.failure = item.failure or found_or_error
            else:
                item.orphans = _orphans(item, found_or_error)


def _by_owner(secrets: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Secrets by the uid of their controller (for targets that were renamed)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for secret in secrets:
        ref = render.controller_of(secret)
        if ref is not None and ref.get("uid"):
            out.setdefault(str(ref["uid"]), []).append(secret)
    return out


def _orphans(item: _Item, by_owner: Mapping[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Secrets this HSMSecret still controls under an old name (spec.secretName changed)."""
    target = item.target
    assert target is not None
    return [
        s for s in by_owner.get(target.uid, ())
        if s["metadata"]["name"] != target.secret_name and render.is_owned_by(s, target)
    ]


def _apply(secrets: _Secrets, item: _Item, dry_run: bool) -> None:
    """Carry out item.decision; on a 409 look at the Secret again and decide once more."""
    assert item.target is not None and item.decision is not None
    target = item.target
    for attempt in range(2):
        decision = item.decision
        action = decision.action
        ref = f"Secret {target.namespace}/{target.secret_name}"
        try:
            if action in ("none", "conflict"):
                item.done = _DONE_ACTION[action]
                break
            if dry_run:
                if action == "create" and attempt == 0:
                    # the create would tell us about a Secret we do not manage: ask directly
                    existing = secrets.get(target.namespace, target.secret_name)
                    if existing is not None:
                        item.existing = existing
                        item.decision = render.decide(target, item.source, existing, allowed=item.allowed)
                        continue
                item.done = _DONE_ACTION[action]
                item.changed = True
                break
            if action == "create":
                assert decision.body is not None
                secrets.create(decision.body)
            elif action == "patch":
                assert decision.body is not None
                secrets.patch(target.namespace, target.secret_name, decision.body)
            elif action == "replace":
                assert decision.body is not None and item.existing is not None
                meta = item.existing.get("metadata") or {}
                secrets.delete(target.namespace, target.secret_name, meta.get("uid"), meta.get("resourceVersion"))
                secrets.create(decision.body)
            elif action == "delete":
                assert item.existing is not None
                meta = item.existing.get("metadata") or {}
                secrets.delete(target.namespace, target.secret_name, meta.get("uid"), meta.get("resourceVersion"))
            item.done = _DONE_ACTION[action]
            item.changed = True
            break
        except ApiException as exc:
            if exc.status == 409 and attempt == 0:
                # created or changed by someone else meanwhile: look again, decide again, once
                try:
                    item.existing = secrets.get(target.namespace, target.secret_name)
                except Exception as again:
                    _failed(item, api_error(again, f"reading {ref}"))
                    return
                item.decision = render.decide(target, item.source, item.existing, allowed=item.allowed)
                continue
            _failed(item, api_error(exc, f"{_VERB[action]} {ref}"))
            return
        except Exception as exc:
            _failed(item, api_error(exc, f"{_VERB.get(action, action)} {ref}"))
            return

    if item.decision is not None and item.decision.reason == render.SYNCED and item.orphans and not dry_run:
        for orphan in item.orphans:
            meta = orphan.get("metadata") or {}
            try:
                secrets.delete(target.namespace, meta["name"], meta.get("uid"), meta.get("resourceVersion"))
                item.changed = True
            except Exception as exc:
                log.warning("could not delete a Secret under its old name",
                            extra={"namespace": target.namespace, "secret": meta.get("name"), "error": str(exc)})


_VERB = {"create": "creating", "patch": "updating", "replace": "replacing", "delete": "deleting"}


def _failed(item: _Item, error: HsmdError) -> None:
    prev = item.decision
    assert prev is not None
    item.decision = render.failed(error, prev)
    item.done = "none"


def _outcome(item: _Item, stamp: str) -> SyncOutcome:
    namespace, name = render.object_key(item.obj)
    meta = item.obj.get("metadata") if isinstance(item.obj, Mapping) else None
    uid = str((meta or {}).get("uid") or "")
    if item.done == "skipped":
        return SyncOutcome(namespace, name, uid, "", "being deleted; the finalizer handles it", "skipped")
    decision = item.decision
    assert decision is not None
    status = render.build_status(item.obj, decision, now=stamp, target=item.target, changed=item.changed)
    outcome = SyncOutcome(
        namespace=namespace,
        name=name,
        uid=uid,
        reason=decision.reason,
        message=decision.message,
        action=item.done if item.target is not None else "none",
        secret_changed=item.changed,
        status=status,
        status_changed=render.status_differs(item.obj.get("status"), status),
        events=render.events_for(item.obj, decision, changed=item.changed),
        path=item.target.path if item.target else None,
        secret_name=item.target.secret_name if item.target else None,
        diff=render.decision_diff(item.target, decision) if item.target else None,
    )
    return outcome


# --- status and Events (the caller chooses to write them) ----------------------------------------


def write_status(
    api_client: Any,
    outcomes: Iterable[SyncOutcome],
    *,
    only_changed: bool = True,
    max_workers: int = DEFAULT_WORKERS,
) -> dict[tuple[str, str], HsmdError | None]:
    """Write each outcome's status through the status subresource (JSON merge patch).

    Outcomes whose status did not change are skipped (``only_changed``). An HSMSecret deleted
    meanwhile is not an error. Returns the error per object that could not be written."""
    api = _Api(api_client)
    todo = [o for o in outcomes if o.status is not None and (o.status_changed or not only_changed)]

    def one(outcome: SyncOutcome) -> tuple[tuple[str, str], HsmdError | None]:
        assert outcome.status is not None
        try:
            path = (
                f"/apis/{render.GROUP}/{render.VERSION}/namespaces/{quote(outcome.namespace, safe='')}"
                f"/{render.PLURAL}/{quote(outcome.name, safe='')}/status"
            )
            api.call("PATCH", path, body=render.status_patch(outcome.status), content_type=MERGE_PATCH)
            return (outcome.namespace, outcome.name), None
        except Exception as exc:
            if isinstance(exc, ApiException) and exc.status == 404:
                return (outcome.namespace, outcome.name), None
            return (outcome.namespace, outcome.name), api_error(exc, f"writing status of {outcome.name}")

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        return dict(pool.map(one, todo))


def emit_events(
    api_client: Any,
    outcomes: Iterable[SyncOutcome],
    *,
    now: datetime | None = None,
    component: str = COMPONENT,
    max_workers: int = DEFAULT_WORKERS,
) -> int:
    """Create the outcomes' Events (core/v1) on their HSMSecrets; best effort. Returns how many."""
    api = _Api(api_client)
    stamp = render.timestamp(now)
    todo = [(o, e) for o in outcomes for e in o.events]

    def one(pair: tuple[SyncOutcome, Event]) -> bool:
        outcome, event = pair
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{outcome.name}.", "namespace": outcome.namespace},
            "involvedObject": {
                "apiVersion": render.API_VERSION,
                "kind": render.KIND,
                "name": outcome.name,
                "namespace": outcome.namespace,
                "uid": outcome.uid,
            },
            "type": event.type,
            "reason": event.reason,
            "message": event.message[:1024],
            "source": {"component": component},
            "reportingComponent": component,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            api.call("POST", f"/api/v1/namespaces/{quote(outcome.namespace, safe='')}/events", body=body)
            return True
        except Exception as exc:
            log.warning("could not create an Event", extra={"object": outcome.name, "error": str(exc)})
            return False

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        return sum(pool.map(one, todo))


# --- deletion -----------------------------------------------------------------------------------


@dataclass
class FinalizeOutcome:
    namespace: str
    name: str
    deleted: list[str]
    kept: list[str]  # Secrets with the target name that this HSMSecret does not control
    error: HsmdError | None = None

    @property
    def changed(self) -> bool:
        return bool(self.deleted)

    def to_dict(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "deleted": self.deleted,
            "kept": self.kept,
            "error": str(self.error) if self.error else None,
            "temporary": bool(self.error and self.error.temporary),
        }


def finalize_batch(
    hsmsecrets: Sequence[Mapping[str, Any]],
    *,
    api_client: Any,
    dry_run: bool = False,
    max_workers: int = DEFAULT_WORKERS,
) -> list[FinalizeOutcome]:
    """An HSMSecret is being deleted: delete every Secret it controls (by ownerReference uid), keep
    every other one. HSM data is never touched. Works for objects whose spec is invalid too."""
    secrets = _Secrets(api_client)

    def one(obj: Mapping[str, Any]) -> FinalizeOutcome:
        namespace, name = render.object_key(obj)
        uid = str(((obj.get("metadata") or {}) if isinstance(obj, Mapping) else {}).get("uid") or "")
        outcome = FinalizeOutcome(namespace, name, [], [])
        if not namespace or not name or not uid:
            outcome.error = InvalidArgument("the object has no namespace, name or uid")
            return outcome
        owner = Target(namespace, name, uid, 0, name, name, render.DEFAULT_SECRET_TYPE, render.RETAIN)
        try:
            candidates = {
                s["metadata"]["name"]: s
                for s in secrets.list_managed(namespace, f"{render.HSMSECRET_LABEL}={render._label_value(name)}")
            }
            try:
                target_name = render.parse_target(obj).secret_name
            except InvalidArgument:
                target_name = None
            if target_name and target_name not in candidates:
                found = secrets.get(namespace, target_name)
                if found is not None:
                    candidates[target_name] = found
            for secret_name, secret in sorted(candidates.items()):
                if not render.is_owned_by(secret, owner):
                    outcome.kept.append(secret_name)
                    continue
                if not dry_run:
                    meta = secret.get("metadata") or {}
                    secrets.delete(namespace, secret_name, meta.get("uid"))
                outcome.deleted.append(secret_name)
        except Exception as exc:
            outcome.error = api_error(exc, f"cleaning up the Secrets of {namespace}/{name}")
        return outcome

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        return list(pool.map(one, hsmsecrets))


# --- the fast path's other half --------------------------------------------------------------------


def secret_checksums(
    api_client: Any, namespaces: Iterable[str]
) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(namespace, Secret name) -> (controller uid, checksum) of every Secret hsmd manages in the
    given namespaces: one list per namespace. With the agent's ``checksums`` this feeds
    ``needs_sync`` without reading any HSM value."""
    secrets = _Secrets(api_client)
    out: dict[tuple[str, str], tuple[str, str | None]] = {}
    for namespace in sorted(set(namespaces)):
        for secret in secrets.list_managed(namespace):
            ref = render.controller_of(secret) or {}
            out[(namespace, secret["metadata"]["name"])] = (str(ref.get("uid") or ""), render.secret_checksum(secret))
    return out


# --- helpers for adapters (the module) ------------------------------------------------------------


def load_policy(policy_file: str | None = None, policy: Mapping[str, Any] | None = None) -> Policy:
    """The access policy from a file or an inline mapping; neither: the operator default."""
    if policy_file and policy is not None:
        raise InvalidArgument("give the access policy as a file or inline, not both")
    if policy is not None:
        return Policy.from_dict(dict(policy), source="policy")
    if policy_file:
        try:
            with open(policy_file, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise InvalidArgument(f"cannot read the policy file {policy_file}: {exc.strerror}") from None
        return Policy.parse(text, source=policy_file)
    return Policy.operator_default()


def summarize(outcomes: Iterable[SyncOutcome]) -> dict[str, dict[str, int]]:
    """Counts per Ready reason and per action."""
    summary = render.Summary()
    for outcome in outcomes:
        summary.add(outcome.reason or "Skipped", outcome.action)
    return {"reasons": summary.reasons, "actions": summary.actions}
