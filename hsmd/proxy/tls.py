"""A TLS front for the waitress server (waitress itself speaks plain HTTP only).

Each accepted connection gets its own thread: the TLS handshake happens there (bounded by a
timeout, so a silent client cannot stall the accept loop), then bytes are pumped between the TLS
connection and waitress's private Unix socket. Connections are capped; excess ones are closed.

The client's address survives the hop without touching the byte stream: the front's end of each
Unix connection is auto-bound by the kernel to a unique abstract name, and ``peer_address`` maps
that name back to the TLS client's (host, port) for as long as the connection lives. The server
asks it for every connection it accepts on its private socket (hsmd.proxy.server), so the address
is never taken from anything a client sends.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading

log = logging.getLogger("hsmd.proxy.tls")


class TlsFront:
    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext,
        backend_path: str,
        *,
        max_connections: int = 512,
        handshake_timeout: float = 10.0,
        idle_timeout: float = 300.0,
    ) -> None:
        self.context = context
        self.backend_path = backend_path
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(128)
        self.host, self.port = self._sock.getsockname()[:2]
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="tls-accept", daemon=True)
        self._peers: dict[object, tuple[str, int]] = {}

    def peer_address(self, backend_name: object) -> tuple[str, int] | None:
        """The TLS client behind a connection the backend accepted from ``backend_name``."""
        return self._peers.get(backend_name)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                conn, addr = self._sock.accept()
            except OSError:
                if self._closed.is_set():
                    return
                continue
            if not self._slots.acquire(blocking=False):
                conn.close()
                log.warning("too many TLS connections; refused one")
                continue
            peer = (str(addr[0]), int(addr[1]))
            threading.Thread(target=self._serve, args=(conn, peer), name="tls-conn", daemon=True).start()

    def _serve(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        tls: ssl.SSLSocket | None = None
        backend: socket.socket | None = None
        name: object = None
        try:
            conn.settimeout(self.handshake_timeout)
            tls = self.context.wrap_socket(conn, server_side=True)
            tls.settimeout(None)
            backend = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            backend.bind("")  # Linux autobind: a unique abstract name the backend sees as our address
            name = backend.getsockname()
            self._peers[name] = peer
            backend.connect(self.backend_path)
            self._pump(tls, backend)
        except (OSError, ssl.SSLError) as exc:
            log.debug("TLS connection ended", extra={"error_type": type(exc).__name__})
        finally:
            if name is not None:
                self._peers.pop(name, None)
            for s in (backend, tls or conn):
                if s is not None:
                    with contextlib.suppress(OSError):
                        s.close()
            self._slots.release()

    def _pump(self, tls: ssl.SSLSocket, backend: socket.socket) -> None:
        while not self._closed.is_set():
            # decrypted bytes may wait inside the TLS object while the socket looks idle
            ready = [tls] if tls.pending() else select.select([tls, backend], [], [], self.idle_timeout)[0]
            if not ready:
                return  # idle too long
            if tls in ready:
                data = tls.recv(65536)
                if not data:
                    return
                backend.sendall(data)
            if backend in ready:
                data = backend.recv(65536)
                if not data:
                    return
                tls.sendall(data)
