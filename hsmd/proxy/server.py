"""Serving the broker: waitress on the listen address, or waitress on a private Unix socket
behind hsmd.proxy.tls.TlsFront when a certificate is given."""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from waitress.server import create_server

from hsmd.proxy.tls import TlsFront

log = logging.getLogger("hsmd.proxy")


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
    if tls_cert and tls_key:
        context = tls_context(tls_cert, tls_key)
        tmpdir = tempfile.mkdtemp(prefix="hsmd-proxy-")
        sock_path = os.path.join(tmpdir, "http.sock")
        server = create_server(app, unix_socket=sock_path, unix_socket_perms="600", url_scheme="https", **common)
        front = TlsFront(host, port, context, sock_path)
        thread = threading.Thread(target=server.run, name="waitress", daemon=True)
        thread.start()
        front.start()
        address = _join(front.host, front.port)
        return RunningServer(f"https://{address}", address, server, thread, front, tmpdir)
    server = create_server(app, host=host, port=port, **common)
    thread = threading.Thread(target=server.run, name="waitress", daemon=True)
    thread.start()
    address = _join(str(server.effective_host), int(server.effective_port))
    return RunningServer(f"http://{address}", address, server, thread)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
