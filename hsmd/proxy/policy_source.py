"""Where the broker's access policy comes from, kept current without a restart.

Three sources share one question, ``current() -> Policy``: a fixed policy, a file
(``hsmd.policy.PolicyFile``, re-read when it changes) and the ConfigMap ``hsm-access-policy``
(key ``policy.yaml``) watched through the Kubernetes API. A source that turns invalid keeps the
last good policy and reports ``last_error``; with nothing configured the broker denies everything.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Protocol

from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

from hsmd.errors import InvalidArgument
from hsmd.policy import POLICY_CONFIGMAP, POLICY_CONFIGMAP_KEY, Policy

log = logging.getLogger("hsmd.proxy.policy")


class PolicySource(Protocol):
    last_error: str | None

    def current(self) -> Policy: ...


class StaticPolicy:
    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self.last_error: str | None = None

    def current(self) -> Policy:
        return self._policy


class ConfigMapPolicy:
    """The policy in ConfigMap ``namespace/name`` (key ``policy.yaml``), followed with a watch.

    A missing ConfigMap means deny-all; an invalid one keeps the last good policy."""

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        name: str = POLICY_CONFIGMAP,
        *,
        key: str = POLICY_CONFIGMAP_KEY,
        watch_timeout: int = 300,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.key = key
        self.watch_timeout = watch_timeout
        self.last_error: str | None = None
        self._core = k8s.CoreV1Api(api_client)
        self._policy = Policy.deny_all()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch: Any = None
        self.generation = 0  # bumped on every applied change (tests wait on it)
        self.changed = threading.Condition(self._lock)

    def current(self) -> Policy:
        with self._lock:
            return self._policy

    def _apply(self, configmap: Any | None) -> None:
        where = f"configmap {self.namespace}/{self.name}"
        if configmap is None:
            policy, error = Policy.deny_all(), f"{where} does not exist; denying everything"
        else:
            text = (configmap.data or {}).get(self.key)
            if text is None:
                policy, error = None, f"{where} has no key {self.key!r}; keeping the last good policy"
            else:
                try:
                    policy, error = Policy.parse(text, source=f"{where}[{self.key}]"), None
                except InvalidArgument as exc:
                    policy, error = None, f"{exc}; keeping the last good policy"
        with self._lock:
            if policy is not None:
                self._policy = policy
            self.last_error = error
            self.generation += 1
            self.changed.notify_all()
        if error:
            log.warning("access policy not applied", extra={"source": where, "reason": error})
        else:
            log.info("access policy loaded", extra={"source": where, "rules": len(policy.rules) if policy else 0})

    def load(self) -> str:
        """Read the ConfigMap once; returns its resourceVersion for the watch."""
        try:
            listing = self._core.list_namespaced_config_map(
                self.namespace, field_selector=f"metadata.name={self.name}", _request_timeout=10
            )
        except ApiException as exc:
            raise InvalidArgument(f"cannot read configmap {self.namespace}/{self.name}: HTTP {exc.status}") from None
        items = listing.items or []
        self._apply(items[0] if items else None)
        return str(listing.metadata.resource_version or "") if listing.metadata is not None else ""

    def start(self) -> None:
        """Initial read (fails fast when the API refuses it), then follow changes in a thread."""
        version = self.load()
        self._thread = threading.Thread(target=self._run, args=(version,), name="policy-configmap", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watch is not None:
            self._watch.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self, version: str) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._watch = k8s_watch.Watch()  # type: ignore[no-untyped-call]
                for event in self._watch.stream(
                    self._core.list_namespaced_config_map,
                    self.namespace,
                    field_selector=f"metadata.name={self.name}",
                    resource_version=version,
                    timeout_seconds=self.watch_timeout,
                    allow_watch_bookmarks=True,
                ):
                    if self._stop.is_set():
                        return
                    kind = event.get("type")
                    obj = event.get("object")
                    meta = getattr(obj, "metadata", None)
                    if meta is not None and meta.resource_version:
                        version = str(meta.resource_version)
                    if kind in ("ADDED", "MODIFIED"):
                        self._apply(obj)
                    elif kind == "DELETED":
                        self._apply(None)
                backoff = 0.5
            except ApiException as exc:
                if exc.status == 410:  # our resourceVersion is too old: read again
                    version = self._reload_quietly(version)
                    continue
                log.warning("policy watch failed", extra={"status": exc.status})
            except Exception as exc:
                if self._stop.is_set():
                    return
                log.warning("policy watch failed", extra={"error_type": type(exc).__name__})
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, 30.0)
            version = self._reload_quietly(version)

    def _reload_quietly(self, version: str) -> str:
        try:
            return self.load()
        except Exception:
            return version
