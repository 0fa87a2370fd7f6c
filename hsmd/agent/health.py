"""The agent's HTTP health endpoints (``--health-listen``), for kubelet probes.

``/healthz`` (liveness) and ``/readyz`` (readiness) both actively touch the token through the
device worker with a timeout (DeviceWorker.probe), so they answer from the agent process even
while a slow device call is running in the worker. ``/readyz`` also fails while the agent is
starting or draining. Answers are JSON: {"status": "ok"|"unavailable", "message": ..., ...}.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("hsmd.agent.health")

# () -> (healthy, message, details)
Check = Callable[[], tuple[bool, str, dict[str, Any]]]


class _Handler(BaseHTTPRequestHandler):
    server: HealthServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        checks = {"/healthz": self.server.liveness, "/readyz": self.server.readiness}
        check = checks.get(path)
        if check is None:
            self._answer(404, {"status": "not_found", "message": f"no endpoint {path}"})
            return
        ok, message, details = check()
        self._answer(200 if ok else 503, {"status": "ok" if ok else "unavailable", "message": message, **details})

    def _answer(self, code: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("health request", extra={"request": format % args})


class HealthServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], liveness: Check, readiness: Check) -> None:
        super().__init__(address, _Handler)
        self.liveness = liveness
        self.readiness = readiness
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        host, port = self.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="health-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
