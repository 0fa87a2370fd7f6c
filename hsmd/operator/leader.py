"""Leader election on a coordination.k8s.io/v1 Lease, so two operator replicas are safe.

The algorithm is client-go's: a candidate reads the Lease; it may take it when nobody holds it,
when it already holds it, or when the record has not changed for ``lease_duration`` on the
candidate's own clock (never comparing clocks across machines). Every write carries the
resourceVersion it read, so two candidates racing for the same Lease cannot both win: the
second gets 409 Conflict. The leader renews every ``retry_period``; when it has not renewed for
``renew_deadline`` (< lease_duration) it stops leading before anyone else may start. On a clean
shutdown it releases the Lease so a standby takes over at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from hsmd import kube

log = logging.getLogger("hsmd.operator.leader")

LEASES = kube.Resource("coordination.k8s.io/v1", "Lease", "leases", namespaced=True, has_status=False)


def _micro_time(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        api: Any,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_started_leading: Callable[[], None],
        on_stopped_leading: Callable[[], None],
    ) -> None:
        if not renew_deadline < lease_duration:
            raise ValueError("renew_deadline must be shorter than lease_duration")
        if not retry_period < renew_deadline:
            raise ValueError("retry_period must be shorter than renew_deadline")
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_started_leading = on_started_leading
        self.on_stopped_leading = on_stopped_leading
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._last_renew = 0.0
        self._leading = False

    @property
    def is_leader(self) -> bool:
        """Leading, and renewed recently enough that nobody else can have taken over."""
        return self._leading and time.monotonic() - self._last_renew < self.renew_deadline

    def _path(self) -> str:
        return LEASES.object_path(self.name, self.namespace)

    def try_acquire_or_renew(self) -> bool:
        now = time.monotonic()
        timeout = max(0.5, self.retry_period)
        try:
            lease = kube.request(self.api, "GET", self._path(), timeout=timeout)
        except ApiException as exc:
            if exc.status != 404:
                log.info("reading the lease failed", extra={"status": exc.status, "lease": self.name})
                return False
            body = {
                "apiVersion": LEASES.api_version,
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {
                    "holderIdentity": self.identity,
                    "leaseDurationSeconds": max(1, round(self.lease_duration)),
                    "acquireTime": _micro_time(),
                    "renewTime": _micro_time(),
                    "leaseTransitions": 0,
                },
            }
            try:
                kube.request(self.api, "POST", LEASES.collection_path(self.namespace), body=body, timeout=timeout)
            except ApiException as create_exc:
                log.info("creating the lease failed", extra={"status": create_exc.status, "lease": self.name})
                return False
            except Exception as other:
                log.info("creating the lease failed", extra={"error": str(other), "lease": self.name})
                return False
            self._last_renew = now
            return True
        except Exception as exc:
            log.info("reading the lease failed", extra={"error": str(exc), "lease": self.name})
            return False

        spec = dict(lease.get("spec") or {})
        meta = lease.get("metadata") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"), meta.get("resourceVersion"))
        if record != self._observed:
            self._observed = record
            self._observed_at = now
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and now < self._observed_at + duration:
            return False  # somebody else holds a lease that has not expired on our clock
        if holder != self.identity:
            spec["acquireTime"] = _micro_time()
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if holder else 0)
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = max(1, round(self.lease_duration))
        spec["renewTime"] = _micro_time()
        body = {
            "apiVersion": LEASES.api_version,
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace,
                         "resourceVersion": meta.get("resourceVersion")},
            "spec": spec,
        }
        try:
            updated = kube.request(self.api, "PUT", self._path(), body=body, timeout=timeout)
        except Exception as exc:
            status = exc.status if isinstance(exc, ApiException) else None
            log.info("updating the lease failed", extra={"status": status, "error": str(exc)[:200]})
            return False
        umeta = updated.get("metadata") or {}
        self._observed = (self.identity, spec["renewTime"], spec["leaseDurationSeconds"], umeta.get("resourceVersion"))
        self._observed_at = now
        self._last_renew = now
        return True

    def release(self) -> None:
        """Give the lease up (clean shutdown): a standby may take it immediately."""
        try:
            lease = kube.request(self.api, "GET", self._path(), timeout=2)
            spec = dict(lease.get("spec") or {})
            if spec.get("holderIdentity") != self.identity:
                return
            spec.update({"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _micro_time()})
            meta = lease.get("metadata") or {}
            body = {
                "apiVersion": LEASES.api_version,
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace,
                             "resourceVersion": meta.get("resourceVersion")},
                "spec": spec,
            }
            kube.request(self.api, "PUT", self._path(), body=body, timeout=2)
            log.info("released the lease", extra={"lease": self.name})
        except Exception as exc:
            log.info("could not release the lease", extra={"error": str(exc)[:200]})

    def run(self, stop: threading.Event) -> bool:
        """Block: acquire, lead, renew. Returns True when ``stop`` ended it (lease released),
        False when leadership was lost (the caller must stop reconciling, and exits)."""
        log.info("waiting for leadership", extra={"lease": f"{self.namespace}/{self.name}", "identity": self.identity})
        while not stop.is_set():
            if self.try_acquire_or_renew():
                break
            stop.wait(self.retry_period)
        if stop.is_set():
            return True
        self._leading = True
        log.info("became leader", extra={"lease": f"{self.namespace}/{self.name}", "identity": self.identity})
        self.on_started_leading()
        try:
            while not stop.wait(self.retry_period):
                if self.try_acquire_or_renew():
                    continue
                if time.monotonic() - self._last_renew >= self.renew_deadline:
                    self._leading = False
                    log.error("lost leadership", extra={"lease": f"{self.namespace}/{self.name}"})
                    self.on_stopped_leading()
                    return False
            return True
        finally:
            if self._leading:
                self._leading = False
                self.on_stopped_leading()
                self.release()
