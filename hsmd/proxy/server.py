"""Serving the broker: waitress on the listen address, or waitress on a private Unix socket
behind hsmd.proxy.tls.TlsFront when a certificate is given.

waitress is tuned for small JSON answers: a response (headers and body) leaves in one ``send`` from
the event loop (``send_bytes`` above any answer of a read) instead of two sends from the worker
thread, which measured ~25% less server CPU per request. Behind the TLS front, waitress's address
for a connection is the front's: ``fix_addr`` asks the front for the real client instead.
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from waitress.adjustments import Adjustments
from waitress.server import create_server

from hsmd.proxy.tls import TlsFront

log = logging.getLogger("hsmd.proxy")

# Answers below this size leave in one send from the event loop (see the module docstring).
SEND_BYTES = 64 * 1024


class RateLimit(logging.Filter):
    """Let one record through per ``seconds``, saying how many were dropped in between.

    waitress logs "Task queue depth is N" for every request that waits for a worker thread; under
    load that is a log line per request, costing CPU exactly when there is none to spare."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self._next = 0.0
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now < self._next:
            self._dropped += 1
            return False
        self._next = now + self.seconds
        if self._dropped:
            record.msg = f"{record.msg} (and {self._dropped} more such messages)"
            self._dropped = 0
        return True


def _quiet_queue_warnings() -> None:
    queue_log = logging.getLogger("waitress.queue")
    if not any(isinstance(f, RateLimit) for f in queue_log.filters):
        queue_log.addFilter(RateLimit(30.0))


@dataclass
class RunningServer:
    url: str
    address: str
    _server: Any
    _thread: threading.Thread
    _front: TlsFront | None = None
    _tmpdir: str | None = None
    _closed: bool = field(default=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._front is not None:
            self._front.close()
        # let running requests finish before the trigger they answer through is closed
        self._server.task_dispatcher.shutdown(timeout=5)
        self._server.close()
        if self._tmpdir:
            for name in os.listdir(self._tmpdir):
                os.unlink(os.path.join(self._tmpdir, name))
            os.rmdir(self._tmpdir)


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def start_server(
    app: Flask,
    host: str,
    port: int,
    *,
    threads: int = 8,
    max_body: int = 1024 * 1024,
    tls_cert: str | None = None,
    tls_key: str | None = None,
) -> RunningServer:
    """Start serving in a background thread; returns the bound address."""
    _quiet_queue_warnings()
    common: dict[str, Any] = {
        "threads": threads,
        "ident": "hsmd-proxy",
        # Flask answers oversized bodies with a JSON 413 (MAX_CONTENT_LENGTH); waitress's own
        # limit only bounds what it buffers before Flask sees the request.
        "max_request_body_size": max(4 * max_body, 8 * 1024 * 1024),
        "channel_timeout": 120,
        "expose_tracebacks": False,
        "clear_untrusted_proxy_headers": True,
        "connection_limit": 1000,
    }
    if "send_bytes" in Adjustments._param_map:  # deprecated in waitress 3: only while it exists
        common["send_bytes"] = SEND_BYTES
    if tls_cert and tls_key:
        context = tls_context(tls_cert, tls_key)
        tmpdir = tempfile.mkdtemp(prefix="hsmd-proxy-")
        sock_path = os.path.join(tmpdir, "http.sock")
        server = _create(app, unix_socket=sock_path, unix_socket_perms="600", url_scheme="https", **common)
        front = TlsFront(host, port, context, sock_path)
        # Only the front can reach this socket (0600 in a private directory), so its word is trusted.
        server.fix_addr = lambda addr: front.peer_address(addr) or ("localhost", None)
        thread = threading.Thread(target=server.run, name="waitress", daemon=True)
        thread.start()
        front.start()
        address = _join(front.host, front.port)
        return RunningServer(f"https://{address}", address, server, thread, front, tmpdir)
    server = _create(app, host=host, port=port, **common)
    thread = threading.Thread(target=server.run, name="waitress", daemon=True)
    thread.start()
    address = _join(str(server.effective_host), int(server.effective_port))
    return RunningServer(f"http://{address}", address, server, thread)


def _create(app: Flask, **kw: Any) -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "send_bytes", DeprecationWarning)
        return create_server(app, **kw)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
