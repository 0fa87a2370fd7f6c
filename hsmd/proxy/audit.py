"""The audit log: one JSON line per request, to a file or standard output.

A line says who (namespace, ServiceAccount, uid), what (method, verb, path or prefix), the policy
decision, the HTTP status and each agent's result. It never holds a secret value, a PIN or a
token: entries are built from ``hsmd.proxy.app``'s request record, which has no field for them.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Mapping
from typing import IO, Any


class AuditLog:
    def __init__(self, target: str | None) -> None:
        """``target``: a file path (appended, created 0600), ``-`` for stdout, None to disable."""
        self.target = target
        self._lock = threading.Lock()
        self._stream: IO[str] | None = None
        if target == "-":
            self._stream = sys.stdout
        elif target:
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._stream = os.fdopen(fd, "a", encoding="utf-8")

    def write(self, entry: Mapping[str, Any]) -> None:
        if self._stream is None:
            return
        line = json.dumps(entry, separators=(",", ":"), default=str, sort_keys=False)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    def close(self) -> None:
        if self._stream is not None and self._stream is not sys.stdout:
            self._stream.close()
        self._stream = None
