"""The sandbox's storage: objects by (type key, namespace, name), one cluster-wide resourceVersion
counter, a bounded event history for watches, watcher fan-out, and an optional journal file.

Design for speed on the read path: a stored object is immutable once committed and keeps its JSON
serialization (``Stored.raw``), so a GET is two dict lookups and one socket write; a LIST joins
pre-serialized bytes. Writes take one lock, bump the resourceVersion, serialize once, append to the
history and push the event into each matching watcher's queue (the watcher's own thread filters
and writes it). ``history_window`` bounds how far back a watch may start: older resourceVersions
get 410 Gone, as etcd compaction does on a real cluster.

With a journal path, every commit is appended as one JSON line (no fsync: it must survive a killed
process, not a power cut) and the file is compacted to a snapshot on load, so resourceVersions
continue across restarts.
"""

from __future__ import annotations

import json
import os
import queue
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"


class Stored:
    """One committed object version: the dict (never mutated after commit) and its JSON bytes."""

    __slots__ = ("obj", "raw", "rv", "views")

    def __init__(self, obj: dict[str, Any], raw: bytes, rv: int) -> None:
        self.obj = obj
        self.raw = raw
        self.rv = rv
        self.views: dict[str, bytes] | None = None

    def view(self, api_version: str) -> bytes:
        """The serialization for another served version (CRDs with several versions, conversion None)."""
        if self.obj.get("apiVersion") == api_version:
            return self.raw
        views = self.views
        if views is None:
            views = self.views = {}
        raw = views.get(api_version)
        if raw is None:
            obj = dict(self.obj)
            obj["apiVersion"] = api_version
            raw = views[api_version] = dumps(obj)
        return raw

    @property
    def labels(self) -> dict[str, str]:
        labels: dict[str, str] = self.obj["metadata"].get("labels") or {}
        return labels


@dataclass
class Event:
    rv: int
    type: str
    key: str
    namespace: str
    name: str
    new: Stored
    old: Stored | None


CLOSE = object()  # sentinel pushed to a watcher queue to end its stream (fault injection, shutdown)


@dataclass(eq=False)
class Watcher:
    key: str
    namespace: str | None
    queue: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class Store:
    def __init__(self, history_window: int = 10000, journal: str | Path | None = None) -> None:
        self.lock = threading.RLock()
        self.rv = 0
        self.history_window = max(1, history_window)
        self._data: dict[str, dict[str, dict[str, Stored]]] = {}
        self._history: deque[Event] = deque()
        self.compacted = 0  # events with rv <= compacted are no longer available to watches
        self._watchers: dict[str, set[Watcher]] = {}
        self._sorted: dict[str, list[tuple[str, str]]] = {}
        self._uids: dict[str, tuple[str, str, str]] = {}
        self._dependents: dict[str, set[tuple[str, str, str]]] = {}
        self._journal_path = Path(journal) if journal else None
        self._journal: Any = None
        self._journal_records = 0  # appended since the last snapshot
        if self._journal_path is not None:
            self._load()

    # --- reads (lock-free: committed objects are immutable and dict lookups are atomic) -----

    def get(self, key: str, namespace: str, name: str) -> Stored | None:
        by_ns = self._data.get(key)
        if by_ns is None:
            return None
        objs = by_ns.get(namespace)
        return None if objs is None else objs.get(name)

    def by_uid(self, uid: str) -> tuple[str, str, str] | None:
        return self._uids.get(uid)

    def dependents(self, uid: str) -> set[tuple[str, str, str]]:
        return set(self._dependents.get(uid, ()))

    def list_objects(self, key: str, namespace: str | None) -> tuple[list[Stored], int]:
        """Objects sorted by (namespace, name) as etcd returns them, and the list resourceVersion."""
        with self.lock:
            by_ns = self._data.get(key) or {}
            if namespace is not None:
                objs = by_ns.get(namespace) or {}
                return [objs[n] for n in sorted(objs)], self.rv
            order = self._sorted.get(key)
            if order is None:
                order = self._sorted[key] = sorted((ns, n) for ns, objs in by_ns.items() for n in objs)
            return [by_ns[ns][n] for ns, n in order], self.rv

    def count(self, key: str, namespace: str | None = None) -> int:
        by_ns = self._data.get(key) or {}
        if namespace is not None:
            return len(by_ns.get(namespace) or {})
        return sum(len(v) for v in by_ns.values())

    def keys(self) -> list[str]:
        return list(self._data)

    def namespaces_of(self, key: str) -> list[str]:
        return [ns for ns, objs in (self._data.get(key) or {}).items() if objs]

    # --- writes (caller holds self.lock) ---------------------------------------------------

    def next_rv(self) -> int:
        return self.rv + 1

    def put(self, key: str, namespace: str, name: str, obj: dict[str, Any], *, event: str) -> Stored:
        """Commit ``obj`` (its metadata.resourceVersion is set here) and notify watchers."""
        self.rv += 1
        rv = self.rv
        obj["metadata"]["resourceVersion"] = str(rv)
        raw = dumps(obj)
        stored = Stored(obj, raw, rv)
        objs = self._data.setdefault(key, {}).setdefault(namespace, {})
        old = objs.get(name)
        if old is None:
            self._sorted.pop(key, None)
        else:
            self._unindex(key, namespace, name, old)
        objs[name] = stored
        self._index(key, namespace, name, stored)
        self._emit(Event(rv, event, key, namespace, name, stored, old))
        if self._journal is not None:
            self._journal.write(b'{"k":%s,"ns":%s,"n":%s,"o":%s}\n' % (dumps(key), dumps(namespace), dumps(name),
                                                                          raw))
            self._journal.flush()
            self._journal_written()
        return stored

    def remove(self, key: str, namespace: str, name: str, final: dict[str, Any]) -> Stored:
        """Delete an object; the DELETED event carries ``final`` at the deletion's resourceVersion."""
        objs = self._data.get(key, {}).get(namespace, {})
        old = objs.pop(name, None)
        if old is not None:
            self._unindex(key, namespace, name, old)
        self._sorted.pop(key, None)
        self.rv += 1
        rv = self.rv
        final["metadata"]["resourceVersion"] = str(rv)
        stored = Stored(final, dumps(final), rv)
        self._emit(Event(rv, DELETED, key, namespace, name, stored, old))
        if self._journal is not None:
            self._journal.write(b'{"k":%s,"ns":%s,"n":%s,"rv":%d}\n' % (dumps(key), dumps(namespace), dumps(name),
                                                                           rv))
            self._journal.flush()
            self._journal_written()
        return stored

    def _index(self, key: str, namespace: str, name: str, stored: Stored) -> None:
        meta = stored.obj["metadata"]
        ref = (key, namespace, name)
        uid = meta.get("uid")
        if uid:
            self._uids[uid] = ref
        for owner in meta.get("ownerReferences") or ():
            ouid = owner.get("uid")
            if ouid:
                self._dependents.setdefault(ouid, set()).add(ref)

    def _unindex(self, key: str, namespace: str, name: str, stored: Stored) -> None:
        meta = stored.obj["metadata"]
        ref = (key, namespace, name)
        uid = meta.get("uid")
        if uid and self._uids.get(uid) == ref:
            del self._uids[uid]
        for owner in meta.get("ownerReferences") or ():
            deps = self._dependents.get(owner.get("uid", ""))
            if deps is not None:
                deps.discard(ref)
                if not deps:
                    del self._dependents[owner["uid"]]

    def _emit(self, event: Event) -> None:
        history = self._history
        history.append(event)
        while len(history) > self.history_window:
            self.compacted = history.popleft().rv
        for watcher in self._watchers.get(event.key, ()):
            if watcher.namespace is None or watcher.namespace == event.namespace:
                watcher.queue.put(event)

    # --- watches -------------------------------------------------------------------------

    def add_watcher(self, watcher: Watcher) -> None:
        with self.lock:
            self._watchers.setdefault(watcher.key, set()).add(watcher)

    def remove_watcher(self, watcher: Watcher) -> None:
        with self.lock:
            self._watchers.get(watcher.key, set()).discard(watcher)

    def watchers(self) -> list[Watcher]:
        with self.lock:
            return [w for ws in self._watchers.values() for w in ws]

    def events_since(self, key: str, namespace: str | None, rv: int) -> list[Event] | None:
        """Retained events after ``rv`` for a key, or None when ``rv`` is older than the window."""
        if rv < self.compacted:
            return None
        return [e for e in self._history
                if e.rv > rv and e.key == key and (namespace is None or e.namespace == namespace)]

    def oldest_rv(self) -> int:
        return self.compacted + 1

    # --- persistence ---------------------------------------------------------------------

    def _load(self) -> None:
        assert self._journal_path is not None
        path = self._journal_path
        max_rv = 0
        if path.exists():
            with path.open("rb") as handle:
                for line in handle:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        break  # a torn last line from a killed process: everything before it is good
                    key, ns, name = rec["k"], rec["ns"], rec["n"]
                    if not key:  # the snapshot header: the resourceVersion the cluster had reached
                        max_rv = max(max_rv, int(rec.get("rv", 0)))
                        continue
                    objs = self._data.setdefault(key, {}).setdefault(ns, {})
                    if "o" in rec:
                        obj = rec["o"]
                        rv = int(obj["metadata"]["resourceVersion"])
                        old = objs.get(name)
                        if old is not None:
                            self._unindex(key, ns, name, old)
                        objs[name] = Stored(obj, dumps(obj), rv)
                        self._index(key, ns, name, objs[name])
                    else:
                        rv = int(rec["rv"])
                        old = objs.pop(name, None)
                        if old is not None:
                            self._unindex(key, ns, name, old)
                    max_rv = max(max_rv, rv)
        self.rv = max_rv
        self.compacted = max_rv  # history is not persisted: older watches get 410, as after a restart
        self._snapshot()

    def _journal_written(self) -> None:
        self._journal_records += 1
        if self._journal_records > max(20000, 2 * sum(len(o) for by_ns in self._data.values()
                                                       for o in by_ns.values())):
            self._snapshot()

    def _snapshot(self) -> None:
        """Rewrite the journal as a snapshot of the live objects, then append from there."""
        assert self._journal_path is not None
        path = self._journal_path
        if self._journal is not None:
            self._journal.close()
        tmp = path.with_suffix(".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as out:
            out.write(b'{"k":"","ns":"","n":"","rv":%d}\n' % self.rv)
            for key, by_ns in self._data.items():
                for ns, objs in by_ns.items():
                    for name, stored in objs.items():
                        out.write(b'{"k":%s,"ns":%s,"n":%s,"o":%s}\n' % (dumps(key), dumps(ns), dumps(name),
                                                                          stored.raw))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        self._journal = path.open("ab")
        self._journal_records = 0

    def close(self) -> None:
        with self.lock:
            if self._journal is not None:
                self._journal.close()
                self._journal = None

    def all_objects(self) -> Iterator[tuple[str, str, str, Stored]]:
        for key, by_ns in list(self._data.items()):
            for ns, objs in list(by_ns.items()):
                for name, stored in list(objs.items()):
                    yield key, ns, name, stored

    def drop_key(self, key: str, names: Iterable[tuple[str, str]] = ()) -> None:
        """Forget an empty type's bookkeeping (a deleted CRD)."""
        self._sorted.pop(key, None)
