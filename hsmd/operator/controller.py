"""The reconcile loops: watch events -> work queues -> ansible-runner runs (or the fast path).

Per watch (kind) there is an informer, a work queue (the "role lane") and
``maxConcurrentReconciles`` workers. A worker takes a batch of keys and, per object:

- being deleted with our finalizer: runs the finalizer (role/playbook, its vars) for the batch,
  then removes the finalizer;
- otherwise adds the finalizer if it is missing (first reconcile) and runs the role for the batch
  (``hsm_batch`` with a ``batch`` setting, else one run per object as operator-sdk does);
- on success: forgets the key's failures and requeues it after ``reconcilePeriod`` if set; on
  failure: requeues it with exponential backoff.

Only changes that matter enqueue: a new generation (spec), deletion, finalizers, labels (and
annotations with watchAnnotationsChanges). Status-only updates never do, so writing status can
never start a loop.

HSMSecret has a second lane, the fast path, which runs no Ansible at all. Objects whose Ready
condition already describes their current generation (the role has reconciled that spec) are
kept in sync in-process with ``hsmd.sync`` - the same engine the role's module runs:

- a periodic resync (apscheduler) asks the agents for the checksums of every due object in one
  batch RPC per agent, takes the Secrets' checksums from the Secret watch, and lets
  ``hsmd.render.needs_sync`` pick the objects to sync: nothing changed => no sync, no run;
- the agents' change streams enqueue the objects whose HSM path was written, at once;
- the Secret watch enqueues the owner of an edited or deleted Secret (a repair).

A key is processed by one lane at a time (``_claim``), so the role and the fast path never work
on the same object concurrently.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hsmd import kube, render, sync
from hsmd import status as status_rules
from hsmd.agent.client import Change
from hsmd.errors import HsmdError
from hsmd.operator.agents import AgentGroup, Agents, ChangeSubscriber
from hsmd.operator.informer import Informer, key_of
from hsmd.operator.metrics import Metrics
from hsmd.operator.runner import AnsibleRunner, RunResult
from hsmd.operator.watches import Watch
from hsmd.operator.workqueue import Backoff, WorkQueue
from hsmd.policy import Policy, PolicyFile

log = logging.getLogger("hsmd.operator")

Obj = dict[str, Any]
Key = tuple[str, str]

SECRETS = kube.Resource("v1", "Secret", "secrets", namespaced=True, has_status=False)
DEFAULT_SYNC_INTERVAL = 300.0
FAST_LANE_MAX_WAIT = 0.05
# A burst of new objects is taken as one batch once no new one arrived for this long.
BATCH_IDLE = 0.25
FAST_LANE_MAX_SIZE = 1000


@dataclass
class OperatorSettings:
    namespaces: list[str] = field(default_factory=list)
    kubeconfig: str | None = None
    runner_dir: Path = Path("/tmp/hsmd-operator")  # noqa: S108 - overridden by the cli
    max_concurrent_runs: int = 1
    fast_path: bool = True
    resync_tick: float = 5.0
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    watch_timeout: int = 300
    policy_file: str | None = None
    agent_tls_files: dict[str, str] = field(default_factory=dict)  # hsm_secret_agent_ca_file, ...
    ansible_config: str | None = None
    collections_paths: list[str] = field(default_factory=list)
    roles_paths: list[str] = field(default_factory=list)
    run_timeout: float | None = None


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _is_hsmsecret(watch: Watch) -> bool:
    return watch.group == render.GROUP and watch.kind == render.KIND


def _strip(obj: Mapping[str, Any]) -> Obj:
    """What a run needs of an object (managedFields can be most of its size and never matter)."""
    out = dict(obj)
    meta = dict(_meta(obj))
    meta.pop("managedFields", None)
    out["metadata"] = meta
    return out


def relevant_change(old: Mapping[str, Any] | None, new: Mapping[str, Any], *, annotations: bool = False) -> bool:
    """Whether an update needs a reconcile: spec (generation), deletion, finalizers, labels, and
    annotations when asked. A status-only update never does."""
    if old is None:
        return True
    a, b = _meta(old), _meta(new)
    if a.get("generation") != b.get("generation"):
        return True
    if b.get("generation") is None and old.get("spec") != new.get("spec"):
        return True  # a kind without generation tracking
    if bool(a.get("deletionTimestamp")) != bool(b.get("deletionTimestamp")):
        return True
    if (a.get("finalizers") or []) != (b.get("finalizers") or []):
        return True
    if (a.get("labels") or {}) != (b.get("labels") or {}):
        return True
    return annotations and (a.get("annotations") or {}) != (b.get("annotations") or {})


def only_finalizer_added(
    old: Mapping[str, Any] | None, new: Mapping[str, Any], finalizer: str, *, annotations: bool = False
) -> bool:
    """The update is our own finalizer patch echoing back (nothing else that matters changed)."""
    if old is None:
        return False
    before = list(_meta(old).get("finalizers") or [])
    after = list(_meta(new).get("finalizers") or [])
    if after != [*before, finalizer]:
        return False
    same_finalizers = dict(old, metadata=dict(_meta(old), finalizers=after))
    return not relevant_change(same_finalizers, new, annotations=annotations)


class KindController:
    """One watch: informer, role lane, workers."""

    def __init__(self, operator: Operator, watch: Watch) -> None:
        self.operator = operator
        self.watch = watch
        self.kind = watch.kind
        self.resource = _resource_for(operator.api, watch)
        self.queue = WorkQueue(
            f"{watch.kind}",
            backoff=Backoff(operator.settings.backoff_base, operator.settings.backoff_cap),
            on_depth=lambda name, depth: operator.metrics.queue_depth.labels(name).set(depth),
        )
        self.informer = Informer(
            operator.api,
            self.resource,
            self.on_event,
            namespaces=operator.settings.namespaces,
            label_selector=watch.selector,
            watch_timeout=operator.settings.watch_timeout,
            name=watch.kind,
            on_relist=lambda name: operator.metrics.watch_relists_total.labels(name).inc(),
        )
        self._threads: list[threading.Thread] = []

    # --- events ------------------------------------------------------------------------------

    def on_event(self, etype: str, old: Obj | None, new: Obj | None) -> None:
        if etype == "DELETED":
            assert old is not None
            self.forget(key_of(old))
            self.operator.on_dependent_event(self.watch, etype, old)
            return
        assert new is not None
        if etype == "ADDED" or (
            relevant_change(old, new, annotations=self.watch.watch_annotations_changes)
            and not self._only_our_finalizer_added(old, new)
        ):
            self.enqueue(key_of(new))
            if etype == "MODIFIED":
                self.operator.on_dependent_event(self.watch, etype, new)

    def _only_our_finalizer_added(self, old: Obj | None, new: Obj) -> bool:
        fin = self.watch.finalizer
        return fin is not None and only_finalizer_added(
            old, new, fin.name, annotations=self.watch.watch_annotations_changes
        )

    def enqueue(self, key: Key, delay: float = 0.0) -> None:
        self.queue.add(key, delay)

    def forget(self, key: Key) -> None:
        self.queue.forget(key)

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.informer.start()
        for index in range(self.watch.max_concurrent_reconciles):
            thread = threading.Thread(target=self._worker, name=f"worker-{self.kind}-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self.queue.shutdown()
        self.informer.stop()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _worker(self) -> None:
        batch = self.watch.batch
        max_size = batch.max_size if batch else 1
        max_wait = batch.max_wait if batch else 0.0
        idle = min(BATCH_IDLE, max_wait)
        while not self.operator.stopping.is_set():
            keys = self.queue.get_batch(max_size, max_wait, idle=idle)
            if not keys:
                continue
            claimed = self.operator.claim(self.kind, keys)
            try:
                if claimed:
                    self.process([k for k in claimed if isinstance(k, tuple)])  # type: ignore[misc]
            except Exception:
                log.exception("reconcile batch failed", extra={"kind": self.kind})
                for key in claimed:
                    self.queue.retry(key)
            finally:
                self.operator.release(self.kind, claimed)
                self.queue.done(keys)
                for key in set(keys) - set(claimed):
                    self.queue.add(key, 0.2)  # the other lane has it; look again shortly

    # --- reconcile ---------------------------------------------------------------------------

    def process(self, keys: list[Key]) -> None:
        if not self.operator.may_reconcile():
            for key in keys:
                self.queue.add(key, 1.0)
            return
        started = time.monotonic()
        finalize: list[Obj] = []
        reconcile: list[Obj] = []
        uptodate: list[Obj] = []
        fin = self.watch.finalizer
        for key in keys:
            obj = self.informer.get(*key)
            if obj is None:
                self.queue.forget(key)
                continue
            meta = _meta(obj)
            if meta.get("deletionTimestamp"):
                if fin is not None and fin.name in (meta.get("finalizers") or []):
                    finalize.append(obj)
                else:
                    self.queue.forget(key)
                continue
            if not self.needs_role(obj):
                uptodate.append(obj)
                continue
            reconcile.append(obj)
        if uptodate:
            self.check_uptodate(uptodate)
        if finalize:
            self._finalize(finalize)
        if reconcile:
            # The finalizer goes on while the role runs (the Secret's ownerReference already ties
            # it to the object, so the order does not matter and the batch saves the round trips).
            adder = threading.Thread(target=self._ensure_finalizers, args=(reconcile,), daemon=True,
                                     name=f"finalizers-{self.kind}")
            adder.start()
            try:
                self._reconcile(reconcile)
            finally:
                adder.join()
        self.operator.metrics.reconcile_duration.labels(self.kind, "role").observe(time.monotonic() - started)

    def needs_role(self, obj: Mapping[str, Any]) -> bool:
        return True

    def check_uptodate(self, objects: list[Obj]) -> None:
        """Objects whose spec the role has already reconciled (only kinds with a fast path)."""
        for obj in objects:
            self.queue.forget(key_of(obj))

    def note_role_done(self, key: Key, obj: Mapping[str, Any]) -> None:
        """A role run returned a result for ``obj`` (its status write may still be on its way)."""

    def _ensure_finalizers(self, objects: list[Obj]) -> list[Obj]:
        """Add our finalizer to the objects that lack it (operator-sdk does it on first reconcile)."""
        fin = self.watch.finalizer
        if fin is None:
            return objects
        out: list[Obj] = []
        missing = [o for o in objects if fin.name not in (_meta(o).get("finalizers") or [])]
        present = [o for o in objects if fin.name in (_meta(o).get("finalizers") or [])]
        out.extend(present)

        def add(obj: Obj) -> Obj | None:
            # The finalizers list is replaced as a whole, so the patch is conditional on the
            # resourceVersion it was computed from; a conflict (the run writing status meanwhile)
            # reads the object again and retries.
            err: HsmdError | None = None
            for _attempt in range(4):
                meta = _meta(obj)
                if fin.name in (meta.get("finalizers") or []):
                    return obj
                patch = {"metadata": {"finalizers": [*(meta.get("finalizers") or []), fin.name],
                                      "resourceVersion": meta.get("resourceVersion")}}
                try:
                    updated = kube.merge_patch(self.operator.api, self.resource, meta["name"], meta.get("namespace"),
                                               patch)
                    self.informer.update_local(updated)
                    return updated
                except HsmdError as exc:
                    err = exc
                    if exc.code != "conflict":
                        break
                    try:
                        obj = kube.get_object(self.operator.api, self.resource, meta["name"], meta.get("namespace"))
                    except HsmdError as again:
                        err = again
                        break
            if err is not None and err.code == "not_found":
                return None  # deleted meanwhile
            log.info("adding the finalizer failed; will retry",
                     extra={"kind": self.kind, "object": "/".join(key_of(obj)), "error": str(err)[:200]})
            self.queue.retry(key_of(obj))
            return None

        if missing:
            for updated in self.operator.pool_map(add, missing):
                if updated is not None:
                    out.append(updated)
        return out

    def _run_groups(self, objects: list[Obj]) -> list[tuple[list[Obj], dict[str, Any]]]:
        """Objects that can share one run, with the extravars they need."""
        return [(objects, {})]

    def _runs(self, objects: list[Obj], *, finalizer_run: bool) -> list[tuple[list[Obj], RunResult]]:
        out: list[tuple[list[Obj], RunResult]] = []
        for group, extra in self._run_groups(objects):
            chunks = [group] if self.watch.batch else [[o] for o in group]

            def one(chunk: list[Obj], extra: dict[str, Any] = extra) -> tuple[list[Obj], RunResult]:
                return chunk, self.operator.run(self.watch, chunk, finalizer_run, extra)

            out.extend(self.operator.pool_map(one, chunks))
        return out

    def _reconcile(self, objects: list[Obj]) -> None:
        for chunk, result in self._runs(objects, finalizer_run=False):
            if self.operator.stopping.is_set():
                return  # canceled by shutdown: the next start reconciles these again
            per_object = self.results_by_key(result)
            for obj in chunk:
                key = key_of(obj)
                outcome = per_object.get(key)
                ok = result.ok if outcome is None else not outcome.get("temporary")
                if outcome is not None:
                    self.note_role_done(key, obj)
                    label = str(outcome.get("reason") or ("ok" if ok else "failed"))
                else:
                    label = "successful" if ok else "failed"
                self.operator.metrics.reconcile_total.labels(self.kind, label).inc()
                if ok:
                    self.queue.forget(key)
                    if self.watch.reconcile_period > 0:
                        self.queue.add(key, self.watch.reconcile_period)
                else:
                    delay = self.queue.retry(key)
                    log.warning(
                        "reconcile failed; retrying",
                        extra={"kind": self.kind, "object": "/".join(key), "retry_in": delay,
                               "error": (outcome or {}).get("message") or result.summary()},
                    )
            if self.watch.manage_status:
                self._manage_status(chunk, result)

    def results_by_key(self, result: RunResult) -> dict[Key, Mapping[str, Any]]:
        return {}

    def _finalize(self, objects: list[Obj]) -> None:
        fin = self.watch.finalizer
        assert fin is not None
        for chunk, result in self._runs(objects, finalizer_run=True):
            if self.operator.stopping.is_set():
                return
            for obj in chunk:
                key = key_of(obj)
                if not result.ok:
                    delay = self.queue.retry(key)
                    self.operator.metrics.reconcile_total.labels(self.kind, "finalize_failed").inc()
                    log.warning("finalizer run failed; retrying", extra={
                        "kind": self.kind, "object": "/".join(key), "retry_in": delay, "error": result.summary()})
                    continue
                if self._remove_finalizer(key):
                    self.queue.forget(key)
                    self.operator.metrics.reconcile_total.labels(self.kind, "finalized").inc()
                else:
                    self.queue.retry(key)

    def _remove_finalizer(self, key: Key) -> bool:
        fin = self.watch.finalizer
        assert fin is not None
        for _attempt in range(3):
            obj = self.informer.get(*key)
            if obj is None:
                return True
            meta = _meta(obj)
            remaining = [f for f in (meta.get("finalizers") or []) if f != fin.name]
            if len(remaining) == len(meta.get("finalizers") or []):
                return True
            patch = {"metadata": {"finalizers": remaining or None, "resourceVersion": meta.get("resourceVersion")}}
            try:
                updated = kube.merge_patch(self.operator.api, self.resource, key[1], key[0] or None, patch)
                self.informer.update_local(updated)
                return True
            except HsmdError as err:
                if err.code == "not_found":
                    return True
                if err.code != "conflict":
                    log.warning("removing the finalizer failed", extra={"object": "/".join(key), "error": str(err)})
                    return False
                try:  # someone else changed it: read it again
                    fresh = kube.get_object(self.operator.api, self.resource, key[1], key[0] or None)
                    self.informer.update_local(fresh)
                except HsmdError:
                    return False
        return False

    def _manage_status(self, objects: list[Obj], result: RunResult) -> None:
        """operator-sdk's manageStatus: Successful / Failure conditions after each run."""
        now = status_rules.rfc3339()
        if result.ok:
            conditions = [
                {"type": "Running", "status": "True", "reason": "Successful",
                 "message": "Awaiting next reconciliation"},
                {"type": "Successful", "status": "True", "reason": "Successful",
                 "message": "Last reconciliation succeeded"},
                {"type": "Failure", "status": "False", "reason": "Successful", "message": ""},
            ]
        else:
            conditions = [
                {"type": "Running", "status": "False", "reason": "Failed", "message": "Running reconciliation"},
                {"type": "Successful", "status": "False", "reason": "Failed", "message": result.summary()[:1000]},
                {"type": "Failure", "status": "True", "reason": "Failed", "message": result.summary()[:1000]},
            ]
        for obj in objects:
            current = (obj.get("status") or {}).get("conditions")
            merged = status_rules.merge_conditions(current, conditions, now=now)
            meta = _meta(obj)
            try:
                kube.merge_patch(self.operator.api, self.resource, meta["name"], meta.get("namespace"),
                                 {"status": {"conditions": merged}}, subresource="status")
            except HsmdError as err:
                log.info("could not write status", extra={"object": "/".join(key_of(obj)), "error": str(err)[:200]})


class HSMSecretController(KindController):
    """HSMSecret: the role lane for new specs and deletions, the fast lane for data."""

    def __init__(self, operator: Operator, watch: Watch) -> None:
        super().__init__(operator, watch)
        self.fast = WorkQueue(
            "HSMSecret/fast",
            backoff=Backoff(operator.settings.backoff_base, operator.settings.backoff_cap),
            on_depth=lambda name, depth: operator.metrics.queue_depth.labels(name).set(depth),
        )
        self._paths: dict[Key, str] = {}
        self._by_path: dict[str, set[Key]] = {}
        self._last_check: dict[Key, float] = {}
        self._role_done: dict[Key, tuple[int, float]] = {}
        self._index_lock = threading.Lock()
        self.secrets: Informer | None = None
        if watch.watch_dependent_resources:
            self.secrets = Informer(
                operator.api,
                SECRETS,
                self.on_secret_event,
                namespaces=operator.settings.namespaces,
                label_selector=render.MANAGED_SELECTOR,
                watch_timeout=operator.settings.watch_timeout,
                name="Secret",
                on_relist=lambda name: operator.metrics.watch_relists_total.labels(name).inc(),
            )

    # --- indexes and events ------------------------------------------------------------------

    def _index(self, key: Key, obj: Mapping[str, Any] | None) -> None:
        path: str | None = None
        if obj is not None:
            try:
                path = render.parse_target(obj).path
            except HsmdError:
                path = None
        with self._index_lock:
            old = self._paths.pop(key, None)
            if old is not None:
                self._by_path.get(old, set()).discard(key)
            if path is not None:
                self._paths[key] = path
                self._by_path.setdefault(path, set()).add(key)

    def keys_for_path(self, path: str) -> list[Key]:
        with self._index_lock:
            return list(self._by_path.get(path, ()))

    def on_event(self, etype: str, old: Obj | None, new: Obj | None) -> None:
        obj = new if new is not None else old
        assert obj is not None
        key = key_of(obj)
        self._index(key, new)
        if new is not None:
            self.operator.record_last_sync(key, new)
        else:
            self.operator.record_last_sync(key, None)
            with self._index_lock:
                self._last_check.pop(key, None)
                self._role_done.pop(key, None)
            self.fast.forget(key)
        super().on_event(etype, old, new)

    def on_secret_event(self, etype: str, old: Obj | None, new: Obj | None) -> None:
        """An owned Secret was edited or deleted behind our back: repair it (fast lane)."""
        secret = new if new is not None else old
        assert secret is not None
        ref = render.controller_of(secret)
        if ref is None or ref.get("kind") != render.KIND:
            return
        namespace = str(_meta(secret).get("namespace") or "")
        owner_key = (namespace, str(ref.get("name") or ""))
        owner = self.informer.get(*owner_key)
        if owner is None or owner.get("metadata", {}).get("uid") != ref.get("uid"):
            return
        if _meta(owner).get("deletionTimestamp"):
            return
        if etype == "DELETED":
            self.enqueue_fast(owner_key)
            return
        if etype == "ADDED":
            return  # we created it (a relist after downtime is covered by the start-up check)
        current = render.secret_checksum(secret)
        written = (_meta(secret).get("annotations") or {}).get(render.CHECKSUM_ANNOTATION)
        recorded = (owner.get("status") or {}).get("secretChecksum")
        # edited by hand: its data no longer matches what we wrote (or what the status records)
        if current != written or current != recorded:
            self.enqueue_fast(owner_key)

    def enqueue_fast(self, key: Key, delay: float = 0.0) -> None:
        if self.operator.settings.fast_path:
            self.fast.add(key, delay)
        else:
            self.queue.add(key, delay)

    def needs_role(self, obj: Mapping[str, Any]) -> bool:
        """The role has not reconciled this spec yet: no Ready condition for this generation."""
        if not self.operator.settings.fast_path:
            return True
        fin = self.watch.finalizer
        if fin is not None and fin.name not in (_meta(obj).get("finalizers") or []):
            return True
        generation = _meta(obj).get("generation") or 0
        cond = render.ready_condition(obj.get("status"))
        if cond is not None and cond.get("observedGeneration") == generation:
            return False
        with self._index_lock:
            done = self._role_done.get(key_of(obj))
        # the role reconciled this generation moments ago; its status write is on its way
        return not (done is not None and done[0] == generation and time.monotonic() - done[1] < 30)

    def note_role_done(self, key: Key, obj: Mapping[str, Any]) -> None:
        now = time.monotonic()
        with self._index_lock:
            self._role_done[key] = (_meta(obj).get("generation") or 0, now)
            self._last_check[key] = now  # just synced: the next periodic check is a syncInterval away

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        if self.secrets is not None:
            self.secrets.start()
        super().start()
        thread = threading.Thread(target=self._fast_worker, name="worker-HSMSecret-fast", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self.fast.shutdown()
        if self.secrets is not None:
            self.secrets.stop()
        super().stop()

    # --- role lane: which agent, results -----------------------------------------------------

    def _run_groups(self, objects: list[Obj]) -> list[tuple[list[Obj], dict[str, Any]]]:
        groups: dict[tuple[str, ...], list[Obj]] = {}
        for obj in objects:
            group = self.operator.agents.for_object(obj)
            groups.setdefault(group.key if group else (), []).append(obj)
        out: list[tuple[list[Obj], dict[str, Any]]] = []
        for addresses, members in groups.items():
            extra = dict(self.operator.role_vars)
            extra.update(agent_vars(addresses))
            out.append((members, extra))
        return out

    def _reconcile(self, objects: list[Obj]) -> None:
        served: list[Obj] = []
        unserved: list[Obj] = []
        for obj in objects:
            (served if self.operator.agents.for_object(obj) is not None else unserved).append(obj)
        if unserved:
            # No agent serves these (no --agent, no HSMPool with ready agents): a run could only
            # fail. Record Unavailable in-process; the fast lane retries with backoff.
            for obj in unserved:
                self.queue.forget(key_of(obj))
                self.note_role_done(key_of(obj), obj)
            self.sync_now(unserved)
        if served:
            super()._reconcile(served)

    def results_by_key(self, result: RunResult) -> dict[Key, Mapping[str, Any]]:
        out: dict[Key, Mapping[str, Any]] = {}
        for res in result.results.get("hsm_secret_sync", []):
            for entry in res.get("results") or []:
                out[(str(entry.get("namespace") or ""), str(entry.get("name") or ""))] = entry
        return out

    # --- fast lane -----------------------------------------------------------------------------

    def _fast_worker(self) -> None:
        while not self.operator.stopping.is_set():
            keys = self.fast.get_batch(FAST_LANE_MAX_SIZE, FAST_LANE_MAX_WAIT)
            if not keys:
                continue
            claimed = self.operator.claim(self.kind, keys)
            try:
                if claimed:
                    self.fast_process([k for k in claimed if isinstance(k, tuple)])  # type: ignore[misc]
            except Exception:
                log.exception("fast-path batch failed")
                for key in claimed:
                    self.fast.retry(key)
            finally:
                self.operator.release(self.kind, claimed)
                self.fast.done(keys)
                for key in set(keys) - set(claimed):
                    self.fast.add(key, 0.2)

    def fast_process(self, keys: list[Key]) -> None:
        if not self.operator.may_reconcile():
            for key in keys:
                self.fast.add(key, 1.0)
            return
        started = time.monotonic()
        objects: list[Obj] = []
        for key in keys:
            obj = self.informer.get(*key)
            if obj is None:
                self.fast.forget(key)
                continue
            if _meta(obj).get("deletionTimestamp") or self.needs_role(obj):
                self.fast.forget(key)
                self.queue.add(key)  # the role lane's job
                continue
            objects.append(obj)
        if not objects:
            return
        self.sync_now(objects)
        self.operator.metrics.reconcile_duration.labels(self.kind, "fast").observe(time.monotonic() - started)

    def sync_now(self, objects: list[Obj]) -> None:
        """hsmd.sync in this process: the same engine as the role's module, no ansible run."""
        by_group: dict[tuple[str, ...], tuple[AgentGroup | None, list[Obj]]] = {}
        for obj in objects:
            group = self.operator.agents.for_object(obj)
            entry = by_group.setdefault(group.key if group else (), (group, []))
            entry[1].append(obj)
        policy = self.operator.policy()
        for group, members in by_group.values():
            outcomes = sync.sync_batch(
                [_strip(o) for o in members], agent=group, api_client=self.operator.api, policy=policy
            )
            errors = sync.write_status(self.operator.api, outcomes)
            sync.emit_events(self.operator.api, outcomes)
            for outcome in outcomes:
                key = (outcome.namespace, outcome.name)
                label = outcome.reason or "skipped"
                self.operator.metrics.reconcile_total.labels(self.kind, label).inc()
                if errors.get(key) is not None or outcome.temporary:
                    delay = self.fast.retry(key)
                    log.info("sync incomplete; retrying", extra={
                        "object": "/".join(key), "reason": outcome.reason, "retry_in": delay,
                        "error": str(errors.get(key) or outcome.message)[:300]})
                else:
                    self.fast.forget(key)
                if outcome.secret_changed:
                    log.info("secret synced", extra={"object": "/".join(key), "action": outcome.action,
                                                     "path": outcome.path})

    # --- resync and change streams -------------------------------------------------------------

    def sync_interval(self, obj: Mapping[str, Any]) -> float:
        spec = obj.get("spec") or {}
        interval = spec.get("syncInterval") if isinstance(spec, Mapping) else None
        if isinstance(interval, int | float) and not isinstance(interval, bool) and interval > 0:
            return float(interval)
        if self.watch.reconcile_period > 0:
            return self.watch.reconcile_period
        return DEFAULT_SYNC_INTERVAL

    def check_uptodate(self, objects: list[Obj]) -> None:
        for obj in objects:
            self.queue.forget(key_of(obj))
        self.check(objects)

    def resync(self, *, everything: bool = False) -> dict[str, int]:
        """The periodic resync: check every object whose syncInterval has passed."""
        if not self.operator.may_reconcile() or not self.informer.synced:
            return {"checked": 0, "stale": 0, "unavailable": 0}
        now = time.monotonic()
        due: list[Obj] = []
        for obj in self.informer.items():
            with self._index_lock:
                last = self._last_check.get(key_of(obj), 0.0)
            if everything or now - last >= self.sync_interval(obj):
                due.append(obj)
        if not due:
            return {"checked": 0, "stale": 0, "unavailable": 0}
        started = time.monotonic()
        counts = self.check(due)
        self.operator.metrics.resync_seconds.observe(time.monotonic() - started)
        return counts

    def check(self, objects: list[Obj]) -> dict[str, int]:
        """Compare checksums - HSM from the agents (one batch RPC per agent), Secret from the watch -
        with each object's recorded status and enqueue only what differs (``render.needs_sync``).
        Returns counts (checked, stale, unavailable)."""
        if self.secrets is not None and not self.secrets.wait_synced(30):
            for obj in objects:
                self.enqueue_fast(key_of(obj), 1.0)
            return {"checked": 0, "stale": len(objects), "unavailable": 0}
        now = time.monotonic()
        checked = stale = unavailable = 0
        by_group: dict[tuple[str, ...], tuple[AgentGroup | None, list[tuple[Obj, str]]]] = {}
        for obj in objects:
            key = key_of(obj)
            if _meta(obj).get("deletionTimestamp"):
                continue
            with self._index_lock:
                self._last_check[key] = now
                path = self._paths.get(key)
            if self.needs_role(obj):
                if not self.queue.contains(key):
                    self.queue.add(key)
                stale += 1
                continue
            if path is None:
                continue  # invalid spec: the status says so; nothing changes until the spec does
            group = self.operator.agents.for_object(obj)
            by_group.setdefault(group.key if group else (), (group, []))[1].append((obj, path))
        policy = self.operator.policy()
        for group, members in by_group.values():
            if group is None:
                unavailable += len(members)
                for obj, _path in members:
                    self.enqueue_fast(key_of(obj))  # records "no agent" in the status
                continue
            try:
                sums = group.checksums(sorted({p for _o, p in members}))
            except HsmdError as err:
                unavailable += len(members)
                log.warning("resync: agents unavailable", extra={"agents": list(group.addresses), "error": str(err)})
                for obj, _path in members:
                    cond = render.ready_condition(obj.get("status")) or {}
                    if cond.get("reason") != render.UNAVAILABLE:
                        self.enqueue_fast(key_of(obj))
                continue
            for obj, path in members:
                hsm = sums.get(path)  # absent: no secret there
                if isinstance(hsm, HsmdError):
                    # not known now (e.g. absent on the agents that answered, another silent)
                    unavailable += 1
                    cond = render.ready_condition(obj.get("status")) or {}
                    if cond.get("reason") != render.UNAVAILABLE:
                        self.enqueue_fast(key_of(obj))
                    continue
                checked += 1
                if render.needs_sync(obj, hsm, self._secret_checksum(obj), policy=policy):
                    stale += 1
                    self.enqueue_fast(key_of(obj))
        self.operator.metrics.resync_total.labels("checked").inc(checked)
        self.operator.metrics.resync_total.labels("stale").inc(stale)
        self.operator.metrics.resync_total.labels("unavailable").inc(unavailable)
        return {"checked": checked, "stale": stale, "unavailable": unavailable}

    def _secret_checksum(self, obj: Mapping[str, Any]) -> str | None:
        """Checksum of the object's target Secret, from the Secret watch (None: none of ours)."""
        if self.secrets is None:
            recorded = (obj.get("status") or {}).get("secretChecksum")
            return str(recorded) if recorded else None
        meta = _meta(obj)
        spec = obj.get("spec") or {}
        name = str((spec.get("secretName") if isinstance(spec, Mapping) else None) or meta.get("name") or "")
        secret = self.secrets.get(str(meta.get("namespace") or ""), name)
        if secret is None:
            return None
        # a Secret that is not ours (Conflict) counts too: needs_sync only asks whether it is there
        return render.secret_checksum(secret)

    def on_change(self, address: str, change: Change) -> None:
        self.operator.metrics.change_events_total.labels(change.kind).inc()
        for key in self.keys_for_path(change.path):
            obj = self.informer.get(*key)
            if obj is None:
                continue
            spec = obj.get("spec") or {}
            if isinstance(spec, Mapping) and spec.get("autoSync") is False:
                continue  # autoSync: false - HSM changes are not followed
            recorded = (obj.get("status") or {}).get("hsmChecksum")
            now = change.checksum if change.kind == "written" else None
            if now != recorded or render.ready_condition(obj.get("status")) is None:
                self.enqueue_fast(key)

    def on_resync(self, address: str, why: str) -> None:
        self.operator.metrics.change_events_total.labels("resync").inc()
        log.info("full resync", extra={"agent": address, "why": why})
        self.operator.request_resync()


class Operator:
    """All controllers of one watches.yaml, the agents, the policy, the scheduler."""

    def __init__(
        self,
        api: Any,
        watches: Sequence[Watch],
        settings: OperatorSettings,
        *,
        agents: Agents,
        metrics: Metrics | None = None,
    ) -> None:
        self.api = api
        self.watches = list(watches)
        self.settings = settings
        self.agents = agents
        self.metrics = metrics or Metrics()
        self.stopping = threading.Event()
        self.cancel = threading.Event()
        self._policy_file = PolicyFile(settings.policy_file, missing=Policy.operator_default()) if (
            settings.policy_file) else None
        self._run_slots = threading.BoundedSemaphore(max(1, settings.max_concurrent_runs))
        self._claims: dict[Hashable, str] = {}
        self._claims_lock = threading.Lock()
        self._leading = threading.Event()
        self._resync_requested = threading.Event()
        self.runner = AnsibleRunner(
            settings.runner_dir,
            kubeconfig=settings.kubeconfig,
            collections_paths=settings.collections_paths,
            roles_paths=settings.roles_paths,
            ansible_config=settings.ansible_config,
            extra_env={"HSMD_AGENT": agents.first_address() or ""} if agents.first_address() else None,
            result_actions=["hsm.secrets.hsm_secret_sync", "hsm_secret_sync"],
            cancel=self.cancel,
            timeout=settings.run_timeout,
        )
        self.role_vars: dict[str, Any] = {}
        if settings.kubeconfig:
            self.role_vars["hsm_secret_kubeconfig"] = settings.kubeconfig
        if settings.policy_file:
            self.role_vars["hsm_secret_policy_file"] = settings.policy_file
        self.role_vars.update(settings.agent_tls_files)
        self.controllers: list[KindController] = []
        self.secret_controller: HSMSecretController | None = None
        for watch in self.watches:
            controller: KindController
            if _is_hsmsecret(watch):
                controller = HSMSecretController(self, watch)
                self.secret_controller = controller  # type: ignore[assignment]
            else:
                controller = KindController(self, watch)
            self.controllers.append(controller)
        self._by_kind = {(c.watch.group, c.watch.kind): c for c in self.controllers}
        self._subscribers: dict[str, ChangeSubscriber] = {}
        self._subscribers_lock = threading.Lock()
        self._scheduler: Any = None
        agents.on_new_group = lambda _group: self._refresh_subscriptions(resolve=False)
        self._executor_lock = threading.Lock()

    # --- shared services ---------------------------------------------------------------------

    def policy(self) -> Policy:
        return self._policy_file.current() if self._policy_file is not None else Policy.operator_default()

    def may_reconcile(self) -> bool:
        return self._leading.is_set() and not self.stopping.is_set()

    def claim(self, lane: str, keys: Sequence[Hashable]) -> list[Hashable]:
        """Mark keys as being worked on; keys another lane holds are left out."""
        out: list[Hashable] = []
        with self._claims_lock:
            for key in keys:
                full = (lane, key)
                if full not in self._claims:
                    self._claims[full] = threading.current_thread().name
                    out.append(key)
        return out

    def release(self, lane: str, keys: Sequence[Hashable]) -> None:
        with self._claims_lock:
            for key in keys:
                self._claims.pop((lane, key), None)

    def pool_map(self, func: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """Run ``func`` over items with a few threads (API calls, concurrent runs)."""
        if len(items) <= 1:
            return [func(i) for i in items]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(8, len(items))) as pool:
            return list(pool.map(func, items))

    def run(self, watch: Watch, objects: list[Obj], finalizer_run: bool, extra: Mapping[str, Any]) -> RunResult:
        """One ansible-runner run, within the global limit on concurrent runs."""
        purpose = "finalize" if finalizer_run else "reconcile"
        with self._run_slots:
            if self.stopping.is_set():
                return RunResult(ident="", status="canceled", rc=-1, duration=0.0)
            self.metrics.ansible_runs_total.labels(watch.kind, purpose).inc()
            log.info("ansible run", extra={"kind": watch.kind, "purpose": purpose, "objects": len(objects)})
            result = self.runner.run(watch, [_strip(o) for o in objects], finalizer_run=finalizer_run,
                                     extra_vars=extra)
        self.metrics.ansible_run_seconds.labels(watch.kind, "ok" if result.ok else "failed").observe(result.duration)
        level = logging.INFO if result.ok else logging.WARNING
        log.log(level, "ansible run finished", extra={
            "kind": watch.kind, "purpose": purpose, "objects": len(objects), "ident": result.ident,
            "status": result.status, "seconds": round(result.duration, 2),
            **({} if result.ok else {"error": result.summary()})})
        return result

    def record_last_sync(self, key: Key, obj: Mapping[str, Any] | None) -> None:
        gauge = self.metrics.secret_last_sync
        if obj is None:
            with contextlib.suppress(KeyError):
                gauge.remove(key[0], key[1])
            return
        stamp = (obj.get("status") or {}).get("lastSyncTime")
        if isinstance(stamp, str) and stamp:
            try:
                moment = datetime.strptime(stamp.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S%z")
            except ValueError:
                return
            gauge.labels(key[0], key[1]).set(moment.astimezone(UTC).timestamp())

    def on_dependent_event(self, watch: Watch, etype: str, obj: Mapping[str, Any]) -> None:
        """An object owned by another watched kind had its spec changed or went away: reconcile its
        owner (watchDependentResources), e.g. an HSMPool deleted behind its HSMDevice's back.
        Status updates of the dependent (its own reconciles) are not a reason."""
        meta = _meta(obj)
        for ref in meta.get("ownerReferences") or []:
            if not isinstance(ref, Mapping) or not ref.get("controller"):
                continue
            group = str(ref.get("apiVersion") or "").split("/")[0] if "/" in str(ref.get("apiVersion")) else ""
            owner = self._by_kind.get((group, str(ref.get("kind"))))
            if owner is not None and owner.watch.watch_dependent_resources:
                owner.enqueue((str(meta.get("namespace") or ""), str(ref.get("name"))))

    # --- lifecycle ---------------------------------------------------------------------------

    def start_leading(self) -> None:
        """Leadership (or no election): start watching and reconciling."""
        self._leading.set()
        self.metrics.leader.set(1)
        for controller in self.controllers:
            controller.start()
        if self.secret_controller is not None:
            self._start_scheduler()
            self._refresh_subscriptions()

    def stop_leading(self) -> None:
        self._leading.clear()
        self.metrics.leader.set(0)

    def wait_synced(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        for controller in self.controllers:
            remaining = max(0.0, deadline - time.monotonic())
            if not controller.informer.wait_synced(remaining):
                return False
            secrets = controller.secrets if isinstance(controller, HSMSecretController) else None
            if secrets is not None and not secrets.wait_synced(max(0.0, deadline - time.monotonic())):
                return False
        return True

    def request_resync(self) -> None:
        self._resync_requested.set()
        if self.secret_controller is not None and self._scheduler is not None:
            self._scheduler.add_job(self._resync_job, kwargs={"force": True}, id="resync-now",
                                    replace_existing=True, misfire_grace_time=None)

    def _start_scheduler(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1})
        scheduler.add_job(self._resync_job, "interval", seconds=self.settings.resync_tick, id="resync",
                          next_run_time=datetime.now(UTC))
        if self.agents.api is not None and self.agents.static is None:
            scheduler.add_job(self._refresh_subscriptions, "interval", seconds=30, id="agents")
        scheduler.start()
        self._scheduler = scheduler

    def _resync_job(self, force: bool = False) -> None:
        controller = self.secret_controller
        if controller is None or self.stopping.is_set():
            return
        everything = force or self._resync_requested.is_set()
        self._resync_requested.clear()
        try:
            controller.resync(everything=everything)
        except Exception:
            log.exception("resync failed")

    def _refresh_subscriptions(self, resolve: bool = True) -> None:
        """One change-stream subscription per agent in use (new pools and members come and go)."""
        controller = self.secret_controller
        if controller is None or not self.settings.fast_path or not self._leading.is_set():
            return
        if resolve and self.agents.static is None and controller.informer.synced:
            for obj in controller.informer.items():
                self.agents.for_object(obj)  # resolves pools, creating their groups
        wanted: dict[str, Any] = {}
        for group in self.agents.groups():
            for client in group.clients:
                wanted[client.address] = client
        stale: list[ChangeSubscriber] = []
        with self._subscribers_lock:
            for address, client in wanted.items():
                if address not in self._subscribers:
                    subscriber = ChangeSubscriber(client, controller.on_change, controller.on_resync)
                    self._subscribers[address] = subscriber
                    subscriber.start()
            if resolve:
                for address in list(self._subscribers):
                    if address not in wanted:
                        stale.append(self._subscribers.pop(address))
        for subscriber in stale:
            subscriber.stop()

    def stop(self) -> None:
        """Stop watching, cancel running ansible runs, wait for the workers."""
        self.stopping.set()
        self.cancel.set()
        if self._scheduler is not None:
            with contextlib.suppress(Exception):  # it may not have started
                self._scheduler.shutdown(wait=False)
        with self._subscribers_lock:
            subscribers = list(self._subscribers.values())
            self._subscribers.clear()
        for subscriber in subscribers:
            subscriber.stop()
        for controller in self.controllers:
            controller.stop()
        for controller in self.controllers:
            controller.join(10.0)
        self.stop_leading()
        self.agents.close()

    def snapshot(self) -> dict[str, Any]:
        """Counts for logs and the dev tool."""
        return {
            c.kind: {"objects": len(c.informer), "queued": c.queue.depth(), "in_flight": c.queue.processing()}
            for c in self.controllers
        }


def agent_vars(addresses: Sequence[str]) -> dict[str, Any]:
    """The role's agent variables for a group: one agent as ``hsm_secret_agent``; the mirrors of a
    pool as ``hsm_secret_agents``, so the module resolves reads across all of them like the fast path
    does (a secret missing while one mirror is down is Unavailable there, never SourceMissing)."""
    if not addresses:
        return {}
    if len(addresses) == 1:
        return {"hsm_secret_agent": addresses[0]}
    return {"hsm_secret_agents": list(addresses)}


def _resource_for(api: Any, watch: Watch) -> kube.Resource:
    """Where a watched kind lives (discovery: plural, scope). If the API does not serve it yet (CRD
    not installed), assume a namespaced kind with the usual plural; the informer retries."""
    try:
        return kube.resolve_resource(api, watch.api_version, watch.kind)
    except HsmdError as err:
        log.warning("kind not served (yet); watching it by its usual plural",
                    extra={"kind": watch.kind, "apiVersion": watch.api_version, "error": str(err)})
        plural = kube.PLURALS.get(watch.kind) or watch.kind.lower() + "s"
        return kube.Resource(watch.api_version, watch.kind, plural, namespaced=True, has_status=True)


def deep_copy(obj: Mapping[str, Any]) -> Obj:
    return copy.deepcopy(dict(obj))
