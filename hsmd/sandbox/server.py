"""HTTP front of the sandbox: routing of Kubernetes API paths, discovery documents, bearer-token
authentication, fault injection, Table output, and watch streams (chunked JSON lines).

Built on the standard library's ThreadingHTTPServer (HTTP/1.1, keep-alive, one thread per
connection). The request path is kept short on purpose: split the path, two dict lookups, and
one ``sendall`` of headers plus the object's pre-serialized bytes (which also avoids the
Nagle/delayed-ACK stall two separate writes would cause).
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import os
import select
import socket
import ssl
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote

from hsmd.sandbox import protobuf, tables
from hsmd.sandbox.auth import ANONYMOUS, ISSUER, UserInfo
from hsmd.sandbox.cluster import SERVER_VERSION, Cluster, Options
from hsmd.sandbox.faults import FaultInjector
from hsmd.sandbox.resources import ResourceType
from hsmd.sandbox.selectors import field_matcher, label_matcher
from hsmd.sandbox.status import Cause, StatusError, bad_request, invalid, method_not_allowed, not_found
from hsmd.sandbox.store import ADDED, CLOSE, DELETED, MODIFIED, Event, Stored, Watcher, dumps

log = logging.getLogger("hsmd.sandbox")

_STATUS_TEXT = {200: "OK", 201: "Created", 202: "Accepted", 400: "Bad Request", 401: "Unauthorized",
                403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 406: "Not Acceptable",
                409: "Conflict", 410: "Gone", 413: "Request Entity Too Large", 415: "Unsupported Media Type",
                422: "Unprocessable Entity", 429: "Too Many Requests", 500: "Internal Server Error",
                503: "Service Unavailable", 504: "Gateway Timeout"}
MAX_BODY = 3 * 1024 * 1024
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
NOT_FOUND_BODY = dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": "the server could not find the requested resource", "reason": "NotFound",
                        "details": {}, "code": 404})


class _Date:
    """The Date header, formatted once per second."""

    def __init__(self) -> None:
        self._sec = 0
        self._text = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._sec:
            self._sec = now
            self._text = email.utils.formatdate(now, usegmt=True).encode()
        return self._text


_DATE = _Date()


class SandboxServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], cluster: Cluster, *, require_auth: bool = False,
                 ssl_context: ssl.SSLContext | None = None, bookmark_interval: float = 60.0,
                 watch_timeout: float = 1800.0) -> None:
        self.cluster = cluster
        self.require_auth = require_auth
        self.ssl_context = ssl_context
        self.bookmark_interval = bookmark_interval
        self.watch_timeout = watch_timeout
        self.faults = FaultInjector()
        self.faults.close_watches_hook = self.close_watches
        self._connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self._discovery_cache: dict[tuple[int, str], bytes] = {}
        self.stopping = False
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)

    @property
    def url(self) -> str:
        host, port = str(self.server_address[0]), self.server_address[1]
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            try:
                request.settimeout(10)
                request = self.ssl_context.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (ssl.SSLError, OSError):
                return
        with self._conn_lock:
            self._connections.add(request)
        try:
            Handler(request, client_address, self)
        finally:
            with self._conn_lock:
                self._connections.discard(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection error", exc_info=True)

    def close_watches(self) -> int:
        watchers = self.cluster.store.watchers()
        for w in watchers:
            w.queue.put(CLOSE)
        return len(watchers)

    def stop(self) -> None:
        self.stopping = True
        self.faults.resume()
        self.shutdown()
        self.close_watches()
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.server_close()

    def discovery(self, kind: str, build: Any) -> bytes:
        key = (self.cluster.registry.generation, kind)
        cached = self._discovery_cache.get(key)
        if cached is None:
            if len(self._discovery_cache) > 256:
                self._discovery_cache.clear()
            cached = self._discovery_cache[key] = dumps(build())
        return cached


class _Headers(dict[str, str]):
    """Request headers by lower-cased name (all the API layer needs of email.message.Message)."""

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return dict.get(self, name.lower(), default)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hsmd-sandbox"
    server: SandboxServer
    headers: Any
    _warnings: list[str] = []
    _started = 0.0

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def handle_one_request(self) -> None:
        """Parse one HTTP/1.1 request with a minimal header reader (the stdlib's email-based
        parser costs more than serving a GET from the store) and dispatch it."""
        try:
            line = self.rfile.readline(65537)
        except (OSError, ValueError):
            self.close_connection = True
            return
        if not line or len(line) > 65536:
            self.close_connection = True
            return
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self.close_connection = True
            self.wfile.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        self.raw_requestline = line
        self.command = method = parts[0].decode("latin-1")
        self.path = parts[1].decode("latin-1")
        self.request_version = version = parts[2].decode("latin-1")
        headers = _Headers()
        count = 0
        while True:
            hline = self.rfile.readline(65537)
            if hline in (b"\r\n", b"\n", b""):
                break
            count += 1
            if count > 100 or len(hline) > 65536:
                self.close_connection = True
                self.wfile.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
                return
            name, _, value = hline.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        self.headers = headers
        conn = headers.get("connection", "").lower()
        self.close_connection = conn == "close" or (version == "HTTP/1.0" and conn != "keep-alive")
        if headers.get("expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if log.isEnabledFor(logging.DEBUG):
            self._started = time.perf_counter()
        if method in _METHODS:
            self._handle(method)
        else:
            self._send(405, dumps(method_not_allowed().body()))

    # --- plumbing ------------------------------------------------------------------------

    def _send(self, code: int, body: bytes, content_type: bytes = b"application/json",
              extra: list[tuple[str, str]] | None = None) -> None:
        head = [b"HTTP/1.1 %d %s\r\n" % (code, _STATUS_TEXT.get(code, "Unknown").encode()),
                b"Content-Type: " + content_type + b"\r\n",
                b"Content-Length: %d\r\n" % len(body),
                b"Cache-Control: no-cache, private\r\n",
                b"Date: " + _DATE.get() + b"\r\n"]
        for name, value in extra or ():
            head.append(f"{name}: {value}\r\n".encode())
        warnings = self._warnings
        if warnings:
            self._warnings = []
            for text in warnings:
                head.append(b'Warning: 299 - "' + text.replace('"', '\\"').encode() + b'"\r\n')
        if self.close_connection:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        self.wfile.write(b"".join(head) + (body if self.command != "HEAD" else b""))
        if log.isEnabledFor(logging.DEBUG):
            log.debug("request", extra={"method": self.command, "path": self.path, "status": code,
                                        "ms": round((time.perf_counter() - self._started) * 1000, 2)})

    def _error(self, err: StatusError) -> None:
        extra = [("Retry-After", str(err.retry_after))] if err.retry_after is not None else None
        self._send(err.http_status, dumps(err.body()), extra=extra)

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length:
            try:
                n = int(length)
            except ValueError:
                self.close_connection = True
                raise bad_request(f"invalid Content-Length: {length!r}") from None
            if n > MAX_BODY:
                self.close_connection = True
                raise StatusError(413, "RequestEntityTooLarge", f"Request entity too large: limit is {MAX_BODY}")
            return self.rfile.read(n)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                total += size
                if total > MAX_BODY:
                    self.close_connection = True
                    raise StatusError(413, "RequestEntityTooLarge", f"Request entity too large: limit is {MAX_BODY}")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return b""

    def _user(self) -> UserInfo:
        header = self.headers.get("Authorization")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return self.server.cluster.authenticate_request(token.strip())
            raise StatusError(401, "Unauthorized", "Unauthorized")
        if self.server.require_auth:
            raise StatusError(401, "Unauthorized", "Unauthorized")
        return ANONYMOUS

    def _handle(self, method: str) -> None:
        try:
            raw_path, _, qs = self.path.partition("?")
            query = dict(parse_qsl(qs, keep_blank_values=True)) if qs else {}
            body = self._body() if method in ("POST", "PUT", "PATCH", "DELETE") else b""
            if body and self.headers.get("Content-Type", "").startswith("application/vnd.kubernetes.protobuf"):
                body = dumps(protobuf.decode(body))  # kubectl's typed create commands send protobuf
            path = unquote(raw_path)
            if path.startswith("/sandbox/"):
                self._admin(method, path, body)
                return
            user = self._user()
            self._route(method, path, query, body, user)
        except StatusError as err:
            self._error(err)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True
        except Exception as exc:
            log.exception("request failed", extra={"method": method, "path": self.path.partition("?")[0]})
            failure = StatusError(500, "InternalError", f"Internal error occurred: {type(exc).__name__}: {exc}")
            try:
                self._error(failure)
            except OSError:
                self.close_connection = True

    # --- routing -------------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes, user: UserInfo) -> None:
        segs = [s for s in path.split("/") if s]
        server = self.server
        cluster = server.cluster
        if not segs:
            self._nonresource(method, "/", query)
            return
        root = segs[0]
        if root == "api":
            if len(segs) == 1:
                self._check_discovery_accept()
                server.faults.before("get", "")
                self._send(200, server.discovery("api", lambda: {
                    "kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": self._host()}]}))
                return
            group, version, rest = "", segs[1], segs[2:]
        elif root == "apis":
            if len(segs) == 1:
                self._check_discovery_accept()
                server.faults.before("get", "")
                self._send(200, server.discovery("apis", self._api_group_list))
                return
            if len(segs) == 2:
                server.faults.before("get", "")
                doc = self._api_group(segs[1])
                if doc is None:
                    raise StatusError(404, "NotFound", "the server could not find the requested resource")
                self._send(200, doc)
                return
            group, version, rest = segs[1], segs[2], segs[3:]
        else:
            self._nonresource(method, path, query)
            return
        if version not in cluster.registry.groups().get(group, ()):
            self._send(404, NOT_FOUND_BODY)
            return
        if not rest:
            server.faults.before("get", "")
            self._send(200, server.discovery(f"{group}/{version}", lambda: self._resource_list(group, version)))
            return
        watch_path = False
        if rest[0] == "watch":
            watch_path = True
            rest = rest[1:]
            query = dict(query, watch="true")
        namespace: str | None = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            candidate = cluster.registry.get(group, version, rest[2])
            if candidate is not None and candidate.namespaced:
                namespace = rest[1]
                rest = rest[2:]
        if not rest:
            self._send(404, NOT_FOUND_BODY)
            return
        rt = cluster.registry.get(group, version, rest[0])
        if rt is None or len(rest) > 3:
            self._send(404, NOT_FOUND_BODY)
            return
        name = rest[1] if len(rest) >= 2 else None
        sub = rest[2] if len(rest) == 3 else ""
        if rt.namespaced and namespace is None and name is not None:
            self._send(404, NOT_FOUND_BODY)  # a namespaced object needs /namespaces/{ns}/
            return
        if sub and sub not in rt.subresources:
            self._send(404, NOT_FOUND_BODY)
            return
        verb = self._verb(method, name, query, watch_path)
        resource = f"{rt.plural}/{sub}" if sub else rt.plural
        server.faults.before(verb, resource)
        if verb not in rt.verbs and not sub:
            raise method_not_allowed()
        self._serve(rt, version, namespace, name, sub, verb, query, body, user)

    def _verb(self, method: str, name: str | None, query: dict[str, str], watch_path: bool) -> str:
        if method in ("GET", "HEAD"):
            if watch_path or query.get("watch") in ("true", "1"):
                return "watch"
            return "get" if name is not None else "list"
        if method == "POST":
            return "create"
        if method == "PUT":
            return "update"
        if method == "PATCH":
            return "patch"
        if method == "DELETE":
            return "delete" if name is not None else "deletecollection"
        raise method_not_allowed()

    def _serve(self, rt: ResourceType, version: str, namespace: str | None, name: str | None, sub: str, verb: str,
               query: dict[str, str], body: bytes, user: UserInfo) -> None:
        cluster = self.server.cluster
        ns = namespace or ""
        accept = self.headers.get("Accept", "")
        if rt.virtual:
            if verb != "create" or name is not None:
                raise method_not_allowed()
            self._send(201, cluster.review(rt, ns, body, user))
            return
        if sub == "scale" and name is not None and verb in ("get", "update", "patch"):
            code, out = cluster.scale(rt, version, ns, name, verb, body, self.headers.get("Content-Type", ""),
                                      Options.from_query(query, self.headers.get("User-Agent", "")))
            self._send(code, out)
            return
        if verb == "get":
            assert name is not None
            if sub == "token":
                raise method_not_allowed()
            if "as=Table" in accept:
                stored = cluster.store.get(rt.key, ns if rt.namespaced else "", name)
                if stored is None:
                    raise not_found(rt.plural, rt.group, name)
                self._send(200, dumps(tables.table(rt, version, [stored], stored.rv,
                                                   query.get("includeObject", "Metadata"))))
                return
            if "as=PartialObjectMetadata" in accept and "as=PartialObjectMetadataList" not in accept:
                stored = cluster.store.get(rt.key, ns if rt.namespaced else "", name)
                if stored is None:
                    raise not_found(rt.plural, rt.group, name)
                self._send(200, dumps(tables.partial_metadata(stored)))
                return
            self._send(200, cluster.get(rt, version, ns, name))
            return
        if verb == "list":
            list_ns = namespace if rt.namespaced else None
            if "as=Table" in accept:
                items, meta = cluster.list_page(rt, list_ns, query)
                self._send(200, dumps(tables.table(rt, version, items, int(meta["resourceVersion"]),
                                                   query.get("includeObject", "Metadata"), meta.get("continue"))))
                return
            if "as=PartialObjectMetadataList" in accept:
                items, meta = cluster.list_page(rt, list_ns, query)
                self._send(200, dumps({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                                       "metadata": meta, "items": [tables.partial_metadata(s) for s in items]}))
                return
            self._send(200, cluster.list_json(rt, version, list_ns, query))
            return
        if verb == "watch":
            if name is not None:  # the deprecated single-object watch path: a watch with a name selector
                selector = query.get("fieldSelector", "")
                query = dict(query, fieldSelector=f"metadata.name={name}" + (f",{selector}" if selector else ""))
            self._watch(rt, version, namespace if rt.namespaced else None, query)
            return
        opts = Options.from_query(query, self.headers.get("User-Agent", ""))
        self._warnings = opts.warnings
        if verb == "create":
            if name is not None:
                if sub == "token":
                    self._send(201, cluster.token_request(ns, name, body))
                    return
                raise method_not_allowed()
            self._send(201, cluster.create(rt, version, ns, body, opts))
            return
        assert name is not None or verb == "deletecollection"
        if verb == "update":
            assert name is not None
            if sub not in ("", "status", "finalize"):
                raise method_not_allowed()
            self._send(200, cluster.update(rt, version, ns, name, body, opts, sub))
            return
        if verb == "patch":
            assert name is not None
            if sub not in ("", "status"):
                raise method_not_allowed()
            if self.headers.get("Content-Type", "").startswith("application/apply-patch") and not query.get(
                    "fieldManager"):
                raise bad_request("PATCH, application/apply-patch+yaml requests must supply a fieldManager")
            code, out = cluster.patch(rt, version, ns, name, body, self.headers.get("Content-Type", ""), opts, sub)
            self._send(code, out)
            return
        if verb == "delete":
            assert name is not None
            if sub:
                raise method_not_allowed()
            code, out = cluster.delete(rt, version, ns, name, body, query)
            self._send(code, out)
            return
        if verb == "deletecollection":
            self._send(200, cluster.delete_collection(rt, version, namespace if rt.namespaced else None, body,
                                                      query))
            return
        raise method_not_allowed()

    # --- watch ---------------------------------------------------------------------------

    def _watch(self, rt: ResourceType, version: str, namespace: str | None, query: dict[str, str]) -> None:
        server = self.server
        store = server.cluster.store
        api_version = rt.api_version(version)
        labels = label_matcher(query.get("labelSelector"))
        allowed = rt.field_selectors
        if rt.crd is not None:
            allowed = tuple(f for fs in rt.crd.selectable_fields.values() for f in fs)
        fields, _ = field_matcher(query.get("fieldSelector"), allowed)
        timeout = server.watch_timeout
        if query.get("timeoutSeconds"):
            try:
                timeout = max(0.0, float(query["timeoutSeconds"]))
            except ValueError:
                raise bad_request(f"invalid timeoutSeconds: {query['timeoutSeconds']!r}") from None
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        send_initial = query.get("sendInitialEvents") in ("true", "1")
        rv_param = query.get("resourceVersion", "")
        if send_initial:
            causes = []
            if query.get("resourceVersionMatch") != "NotOlderThan":
                causes.append(Cause("FieldValueForbidden", "sendInitialEvents",
                                    "sendInitialEvents is forbidden for watch unless resourceVersionMatch is set to "
                                    "NotOlderThan"))
            if not bookmarks:
                causes.append(Cause("FieldValueForbidden", "allowWatchBookmarks",
                                    "allowWatchBookmarks must be set to true when sendInitialEvents is set"))
            if causes:
                raise invalid("ListOptions", "meta.k8s.io", "", causes)

        def match(s: Stored) -> bool:
            if labels is not None and not labels(s.labels):
                return False
            return fields is None or fields(s.obj)

        if rv_param not in ("", "0"):
            try:
                want_rv = int(rv_param)
            except ValueError:
                raise bad_request(f"invalid resourceVersion: {rv_param!r}") from None
            if want_rv > store.rv:
                server.cluster.wait_for_rv(want_rv)  # 504 "Too large resource version" after 3 s
        watcher = Watcher(rt.key, namespace)
        initial: list[bytes] = []
        expired_msg: str | None = None
        with store.lock:
            if server.faults.take_watch_expiry():
                expired_msg = f"too old resource version: {rv_param or store.rv} ({store.rv + 1})"
            elif rv_param in ("", "0") or send_initial:
                items, _ = store.list_objects(rt.key, namespace)
                initial = [_event_line("ADDED", s.view(api_version)) for s in items if match(s)]
                store.add_watcher(watcher)
            else:
                try:
                    want = int(rv_param)
                except ValueError:
                    raise bad_request(f"invalid resourceVersion: {rv_param!r}") from None
                events = store.events_since(rt.key, namespace, want)
                if events is None:
                    expired_msg = f"too old resource version: {want} ({store.oldest_rv()})"
                else:
                    for ev in events:
                        line = _translate(ev, match, api_version)
                        if line is not None:
                            initial.append(line)
                    store.add_watcher(watcher)
            start_rv = store.rv
        try:
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                             b"Cache-Control: no-cache, private\r\nDate: " + _DATE.get() + b"\r\n\r\n")
            if expired_msg is not None:
                status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                          "message": expired_msg, "reason": "Expired", "code": 410}
                self._chunk(dumps({"type": "ERROR", "object": status}) + b"\n")
                self._chunk(b"")
                return
            if send_initial and bookmarks:
                initial.append(self._bookmark(rt, api_version, start_rv, initial_end=True))
            if initial:
                self._chunk(b"".join(initial))
            self._stream(rt, api_version, watcher, match, timeout, bookmarks, start_rv)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            self.close_connection = True
        finally:
            store.remove_watcher(watcher)

    def _stream(self, rt: ResourceType, api_version: str, watcher: Watcher, match: Any, timeout: float,
                bookmarks: bool, start_rv: int) -> None:
        server = self.server
        q = watcher.queue
        deadline = time.monotonic() + timeout
        next_bookmark = time.monotonic() + server.bookmark_interval
        last_rv = start_rv
        while True:
            now = time.monotonic()
            if now >= deadline:
                if bookmarks:
                    self._chunk(self._bookmark(rt, api_version, self._settled_rv(watcher, last_rv)))
                self._chunk(b"")
                return
            wait = min(deadline - now, 1.0)
            if bookmarks:
                wait = min(wait, max(0.0, next_bookmark - now))
            try:
                item = q.get(timeout=wait)
            except Exception:
                item = None
            if item is None:
                if self._client_gone():
                    self.close_connection = True
                    return
                if bookmarks and time.monotonic() >= next_bookmark:
                    if not server.faults.paused:
                        self._chunk(self._bookmark(rt, api_version, self._settled_rv(watcher, last_rv)))
                    next_bookmark = time.monotonic() + server.bookmark_interval
                continue
            batch = [item]
            while True:
                try:
                    batch.append(q.get_nowait())
                except Exception:
                    break
            out: list[bytes] = []
            closing = False
            for ev in batch:
                if ev is CLOSE:
                    closing = True
                    break
                assert isinstance(ev, Event)
                last_rv = ev.rv
                line = _translate(ev, match, api_version)
                if line is not None:
                    out.append(line)
            if server.faults.paused and not closing:
                server.faults.wait_running()
            if out:
                self._chunk(b"".join(out))
            if closing or server.stopping:
                self._chunk(b"")
                self.close_connection = True
                return

    def _settled_rv(self, watcher: Watcher, last_rv: int) -> int:
        """The newest resourceVersion this watcher is known to be complete up to."""
        store = self.server.cluster.store
        with store.lock:
            if watcher.queue.empty():
                return store.rv
        return last_rv

    def _bookmark(self, rt: ResourceType, api_version: str, rv: int, initial_end: bool = False) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(rv), "creationTimestamp": None}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return dumps({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": api_version,
                                                     "metadata": meta}}) + b"\n"

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _client_gone(self) -> bool:
        """True when the peer closed the connection (checked while a watch is idle)."""
        conn = self.connection
        try:
            readable, _, _ = select.select([conn], [], [], 0)
        except (OSError, ValueError):
            return True
        if not readable:
            return False
        try:
            if isinstance(conn, ssl.SSLSocket):
                dup = socket.socket(fileno=os.dup(conn.fileno()))
                try:
                    return bool(dup.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"")
                finally:
                    dup.close()
            return bool(conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"")
        except BlockingIOError:
            return False
        except OSError:
            return True

    # --- discovery -----------------------------------------------------------------------

    def _host(self) -> str:
        return self.server.url.split("//", 1)[1]

    def _check_discovery_accept(self) -> None:
        accept = self.headers.get("Accept", "")
        if "as=APIGroupDiscoveryList" in accept:
            plain = [p.strip() for p in accept.split(",") if "as=" not in p]
            if not any(p.startswith(("application/json", "*/*")) for p in plain):
                raise StatusError(406, "NotAcceptable", "only the following media types are accepted: "
                                  "application/json, application/yaml, application/vnd.kubernetes.protobuf")

    def _api_group(self, group: str) -> bytes | None:
        versions = self.server.cluster.registry.groups().get(group)
        if not versions or not group:
            return None
        return self.server.discovery(f"group:{group}", lambda: _group_doc(group, versions))

    def _api_group_list(self) -> dict[str, Any]:
        groups = self.server.cluster.registry.groups()
        order = ["apps", "events.k8s.io", "authentication.k8s.io", "authorization.k8s.io", "batch",
                 "networking.k8s.io", "policy", "rbac.authorization.k8s.io", "coordination.k8s.io",
                 "apiextensions.k8s.io"]
        names = sorted((g for g in groups if g), key=lambda g: (order.index(g) if g in order else len(order), g))
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group_doc(g, groups[g]) for g in names]}

    def _resource_list(self, group: str, version: str) -> dict[str, Any]:
        resources: list[dict[str, Any]] = []
        for rt in sorted(self.server.cluster.registry.in_group_version(group, version), key=lambda r: r.plural):
            resources.extend(rt.discovery_entries(version))
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{version}" if group
                else version, "resources": resources}

    def _openapi_v3(self, gv: str) -> dict[str, Any] | None:
        """A skeleton OpenAPI v3 document for one group-version: operations with their GVK and query
        parameters but no schemas. kubectl reads it to learn that the server validates fields itself
        (``fieldValidation``); it then skips client-side schema validation."""
        parts = gv.split("/")
        if parts[0] == "api" and len(parts) == 2:
            group, version = "", parts[1]
        elif parts[0] == "apis" and len(parts) == 3:
            group, version = parts[1], parts[2]
        else:
            return None
        registry = self.server.cluster.registry
        if version not in registry.groups().get(group, ()):
            return None
        params = [{"name": n, "in": "query", "schema": {"type": "string"}, "uniqueItems": True}
                  for n in ("dryRun", "fieldManager", "fieldValidation", "force")]
        paths: dict[str, Any] = {}
        prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
        for rt in registry.in_group_version(group, version):
            gvk = {"group": rt.group, "version": version, "kind": rt.kind}
            op = {"x-kubernetes-group-version-kind": gvk, "parameters": params, "responses": {}}
            base = f"{prefix}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced else f"{prefix}/{rt.plural}"
            if rt.virtual:
                paths[base] = {"post": op}
                continue
            paths[base] = {"post": op, "get": dict(op, parameters=[])}
            paths[f"{base}/{{name}}"] = {"get": dict(op, parameters=[]), "put": op, "patch": op, "delete": op}
        return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
                "paths": paths, "components": {"schemas": {}}}

    def _nonresource(self, method: str, path: str, query: dict[str, str]) -> None:
        if method not in ("GET", "HEAD"):
            raise method_not_allowed()
        path = path.rstrip("/") or "/"
        cluster = self.server.cluster
        if path in ("/healthz", "/livez", "/readyz") or path.startswith(("/healthz/", "/livez/", "/readyz/")):
            self._send(200, b"ok", b"text/plain; charset=utf-8")
        elif path == "/version":
            self._send(200, dumps(SERVER_VERSION))
        elif path == "/":
            paths = ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/readyz", "/version",
                     "/openid/v1/jwks", "/.well-known/openid-configuration"]
            paths += [f"/apis/{g}/{v}" for g, vs in cluster.registry.groups().items() if g for v in vs]
            self._send(200, dumps({"paths": sorted(paths)}))
        elif path == "/.well-known/openid-configuration":
            self._send(200, dumps({"issuer": ISSUER, "jwks_uri": f"{self.server.url}/openid/v1/jwks",
                                   "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                                   "id_token_signing_alg_values_supported": ["ES256"]}))
        elif path == "/openapi/v3":
            groups = cluster.registry.groups()
            gvs = [("api/v1" if not g else f"apis/{g}/{v}") for g, vs in groups.items() for v in vs]
            self._send(200, dumps({"paths": {gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash="
                                                                        f"{cluster.registry.generation}"}
                                             for gv in gvs}}))
        elif path.startswith("/openapi/v3/"):
            gv = path[len("/openapi/v3/"):]
            doc = self._openapi_v3(gv)
            if doc is None:
                self._send(404, NOT_FOUND_BODY)
            else:
                self._send(200, self.server.discovery(f"openapi:{gv}", lambda: doc))
        elif path == "/openid/v1/jwks":
            self._send(200, dumps(cluster.auth.jwks()), b"application/jwk-set+json")
        else:
            self._send(404, NOT_FOUND_BODY)

    # --- admin ---------------------------------------------------------------------------

    def _admin(self, method: str, path: str, body: bytes) -> None:
        """/sandbox/faults: drive fault injection from another process (admin token when auth is required)."""
        if self.server.require_auth:
            user = self._user()
            if "system:masters" not in user.groups:
                raise StatusError(403, "Forbidden", "the sandbox admin endpoint needs the admin token")
        faults = self.server.faults
        if path.rstrip("/") == "/sandbox/faults":
            if method == "GET":
                self._send(200, dumps(faults.state()))
            elif method == "DELETE":
                faults.clear()
                self._send(200, dumps(faults.state()))
            elif method == "POST":
                try:
                    command = json.loads(body or b"{}")
                except ValueError:
                    raise bad_request("the fault command must be a JSON object") from None
                if not isinstance(command, dict):
                    raise bad_request("the fault command must be a JSON object")
                from hsmd.errors import InvalidArgument

                try:
                    self._send(200, dumps(faults.apply_command(command)))
                except InvalidArgument as exc:
                    raise bad_request(str(exc)) from None
            else:
                raise method_not_allowed()
            return
        if path.rstrip("/") == "/sandbox/info" and method == "GET":
            store = self.server.cluster.store
            self._send(200, dumps({"url": self.server.url, "resourceVersion": store.rv,
                                   "oldestWatchableResourceVersion": store.oldest_rv(),
                                   "watches": len(store.watchers()), "id": str(uuid.uuid5(uuid.NAMESPACE_URL,
                                                                                        self.server.url))}))
            return
        self._send(404, NOT_FOUND_BODY)


def _event_line(kind: str, raw: bytes) -> bytes:
    return b'{"type":"' + kind.encode() + b'","object":' + raw + b"}\n"


def _translate(ev: Event, match: Any, api_version: str) -> bytes | None:
    """The event a filtered watch sees: objects entering or leaving the selection appear as ADDED/DELETED."""
    if match is None:
        return _event_line(ev.type, ev.new.view(api_version))
    new_ok = match(ev.new)
    if ev.type == ADDED:
        return _event_line(ADDED, ev.new.view(api_version)) if new_ok else None
    if ev.type == DELETED:
        old_ok = match(ev.old) if ev.old is not None else new_ok
        return _event_line(DELETED, ev.new.view(api_version)) if old_ok else None
    old_ok = ev.old is not None and match(ev.old)
    if new_ok and old_ok:
        return _event_line(MODIFIED, ev.new.view(api_version))
    if new_ok:
        return _event_line(ADDED, ev.new.view(api_version))
    if old_ok and ev.old is not None:
        prev = dict(ev.old.obj)
        prev["metadata"] = dict(prev["metadata"], resourceVersion=str(ev.rv))
        prev["apiVersion"] = api_version
        return _event_line(DELETED, dumps(prev))
    return None


def _group_doc(group: str, versions: list[str]) -> dict[str, Any]:
    vs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": vs, "preferredVersion": vs[0]}
