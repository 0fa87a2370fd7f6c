"""List-then-watch of one resource into a local cache, without ever missing a change.

The loop, per namespace (or cluster-wide):

1. LIST (paged) -> replace the cache; every difference to the previous cache is reported as an
   event (so objects deleted while we were away are reported as deleted); remember the list's
   resourceVersion;
2. WATCH from that resourceVersion with bookmarks; every event moves the resourceVersion on, a
   BOOKMARK too; when the server ends the watch (timeoutSeconds, a dropped connection), watch
   again from the last resourceVersion after a short backoff;
3. 410 Gone (as an HTTP status or an ERROR event): the history we need is compacted -> go to 1.

Handlers are called from the informer's thread as ``handler(event_type, old, new)`` with
event_type ADDED / MODIFIED / DELETED (old is None for ADDED, new is None for DELETED).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from kubernetes.client.exceptions import ApiException

from hsmd import kube
from hsmd.service import backoff_delay

log = logging.getLogger("hsmd.operator.informer")

Obj = dict[str, Any]
Key = tuple[str, str]
Handler = Callable[[str, Obj | None, Obj | None], None]


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


class GoneError(Exception):
    """The watch's resourceVersion is too old (HTTP 410 / ERROR event with code 410)."""


class Informer:
    def __init__(
        self,
        api: Any,
        resource: kube.Resource,
        handler: Handler,
        *,
        namespaces: Sequence[str] | None = None,
        label_selector: str = "",
        field_selector: str = "",
        watch_timeout: int = 300,
        page_size: int = 500,
        backoff_base: float = 0.2,
        backoff_cap: float = 10.0,
        name: str | None = None,
        on_relist: Callable[[str], None] | None = None,
    ) -> None:
        self.api = api
        self.resource = resource
        self.handler = handler
        # None or [] = all namespaces (one cluster-wide watch); cluster-scoped kinds ignore namespaces
        self.namespaces: list[str | None] = (
            list(namespaces) if (namespaces and resource.namespaced) else [None]  # type: ignore[list-item]
        )
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.watch_timeout = watch_timeout
        self.page_size = page_size
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.name = name or resource.kind
        self.on_relist = on_relist
        self._cache: dict[Key, Obj] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._responses: dict[str | None, Any] = {}
        self._synced: dict[str | None, threading.Event] = {ns: threading.Event() for ns in self.namespaces}
        self.relists = 0
        self.watch_restarts = 0

    # --- public ------------------------------------------------------------------------------

    def start(self) -> None:
        for namespace in self.namespaces:
            thread = threading.Thread(
                target=self._run, args=(namespace,), name=f"informer-{self.name}-{namespace or 'all'}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            responses = list(self._responses.values())
        for response in responses:
            _shutdown(response)
        for thread in self._threads:
            thread.join(timeout=5)

    def wait_synced(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        for event in self._synced.values():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not event.wait(remaining):
                return False
        return True

    @property
    def synced(self) -> bool:
        return all(e.is_set() for e in self._synced.values())

    def get(self, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self._cache.get((namespace, name))

    def items(self) -> list[Obj]:
        with self._lock:
            return list(self._cache.values())

    def keys(self) -> list[Key]:
        with self._lock:
            return list(self._cache)

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)

    def update_local(self, obj: Obj) -> None:
        """Put a newer object we wrote ourselves into the cache (the watch will confirm it); an
        older resourceVersion never replaces a newer one."""
        key = key_of(obj)
        with self._lock:
            current = self._cache.get(key)
            if current is None or _rv(obj) >= _rv(current):
                self._cache[key] = obj

    # --- the loop ----------------------------------------------------------------------------

    def _run(self, namespace: str | None) -> None:
        resource_version: str | None = None
        failures = 0
        while not self._stop.is_set():
            try:
                if resource_version is None:
                    resource_version = self._relist(namespace)
                    self._synced[namespace].set()
                resource_version = self._watch(namespace, resource_version)
                failures = 0
                self.watch_restarts += 1
            except GoneError:
                log.info("watch history expired; listing again", extra={"resource": self.name, "namespace": namespace})
                resource_version = None
                failures = 0
            except Exception as exc:
                if self._stop.is_set():
                    break
                failures += 1
                # jitter: many informers must not reconnect in step
                delay = backoff_delay(failures, self.backoff_base, self.backoff_cap, jitter=True)
                log.warning(
                    "list/watch failed; retrying",
                    extra={"resource": self.name, "namespace": namespace, "error": _describe(exc), "retry_in": delay},
                )
                self._stop.wait(delay)

    def _query(self, extra: Mapping[str, str]) -> dict[str, str]:
        query = dict(extra)
        if self.label_selector:
            query["labelSelector"] = self.label_selector
        if self.field_selector:
            query["fieldSelector"] = self.field_selector
        return query

    def _relist(self, namespace: str | None) -> str:
        path = self.resource.collection_path(namespace)
        items: dict[Key, Obj] = {}
        cont = ""
        resource_version = ""
        while True:
            query = self._query({"limit": str(self.page_size)} | ({"continue": cont} if cont else {}))
            try:
                page = kube.request(self.api, "GET", path, query=query, timeout=60)
            except ApiException as exc:
                if exc.status == 410 and cont:
                    cont = ""  # the continue token expired: start the list over
                    items.clear()
                    continue
                raise
            for item in page.get("items") or []:
                item.setdefault("apiVersion", self.resource.api_version)
                item.setdefault("kind", self.resource.kind)
                items[key_of(item)] = item
            meta = page.get("metadata") or {}
            cont = meta.get("continue") or ""
            resource_version = str(meta.get("resourceVersion") or resource_version)
            if not cont:
                break
        self.relists += 1
        events: list[tuple[str, Obj | None, Obj | None]] = []
        with self._lock:
            mine = {k: v for k, v in self._cache.items() if namespace is None or k[0] == namespace}
            for key, gone in mine.items():
                if key not in items:
                    del self._cache[key]
                    events.append(("DELETED", gone, None))
            for key, new in items.items():
                previous = self._cache.get(key)
                self._cache[key] = new
                if previous is None:
                    events.append(("ADDED", None, new))
                elif (previous.get("metadata") or {}).get("resourceVersion") != (new.get("metadata") or {}).get(
                    "resourceVersion"
                ):
                    events.append(("MODIFIED", previous, new))
        if self.on_relist is not None:
            self.on_relist(self.name)
        for event in events:
            self._dispatch(*event)
        return resource_version

    def _watch(self, namespace: str | None, resource_version: str) -> str:
        path = self.resource.collection_path(namespace)
        timeout = max(1, int(self.watch_timeout * (0.9 + random.random() / 5)))
        query = self._query(
            {
                "watch": "true",
                "resourceVersion": resource_version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": str(timeout),
            }
        )
        headers = {"Accept": "application/json"}
        params = self.api.param_serialize(
            method="GET", resource_path=path, query_params=list(query.items()), header_params=headers,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*params, _request_timeout=(10, timeout + 30))
        raw = response.response
        if response.status != 200:
            body = raw.read()
            raw.release_conn()
            if response.status == 410:
                raise GoneError()
            raise ApiException(status=response.status, reason=response.reason, body=body)
        with self._lock:
            self._responses[namespace] = raw
        try:
            if self._stop.is_set():
                return resource_version
            for line in _lines(raw):
                event = json.loads(line)
                etype = event.get("type")
                obj = event.get("object") or {}
                if etype == "ERROR":
                    if obj.get("code") == 410 or obj.get("reason") in ("Expired", "Gone"):
                        raise GoneError()
                    raise ApiException(status=int(obj.get("code") or 500), reason=str(obj.get("message") or ""))
                new_rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
                if etype == "BOOKMARK":
                    resource_version = new_rv or resource_version
                    continue
                if etype not in ("ADDED", "MODIFIED", "DELETED"):
                    continue
                obj.setdefault("apiVersion", self.resource.api_version)
                obj.setdefault("kind", self.resource.kind)
                key = key_of(obj)
                with self._lock:
                    old = self._cache.get(key)
                    if etype == "DELETED":
                        self._cache.pop(key, None)
                    else:
                        self._cache[key] = obj
                if new_rv:
                    resource_version = new_rv
                if etype == "DELETED":
                    self._dispatch("DELETED", old or obj, None)
                else:
                    self._dispatch("ADDED" if old is None else "MODIFIED", old, obj)
            return resource_version
        finally:
            with self._lock:
                self._responses.pop(namespace, None)
            with contextlib.suppress(Exception):  # the connection is going away either way
                raw.release_conn()

    def _dispatch(self, etype: str, old: Obj | None, new: Obj | None) -> None:
        try:
            self.handler(etype, old, new)
        except Exception:
            log.exception("event handler failed", extra={"resource": self.name, "event": etype})


def _rv(obj: Mapping[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


def _lines(raw: Any) -> Iterator[bytes]:
    """Newline-delimited JSON from a streaming response, yielded as soon as each line is complete."""
    buffer = b""
    while True:
        chunk = raw.read1(65536) if hasattr(raw, "read1") else raw.read(65536)
        if not chunk:
            break
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


def _shutdown(response: Any) -> None:
    for method in ("shutdown", "close"):
        func = getattr(response, method, None)
        if func is not None:
            try:
                func()
            except Exception:  # noqa: S112 - best effort on the way out
                continue


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"
