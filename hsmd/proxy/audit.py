"""The audit log: one JSON line per request, to a file or standard output.

A line says who (namespace, ServiceAccount, uid), what (method, verb, path or prefix), the policy
decision, the HTTP status and each agent's result. It never holds a secret value, a PIN or a
token: lines are built from a ``RequestRecord`` (what hsmd.proxy.app and the views note while
serving one request), which has no field for them.

Each line is one ``write(2)`` on an ``O_APPEND`` descriptor before the response leaves: the line
reaches the OS whatever happens to the process next, lines of concurrent requests never
interleave, and there is no user-space buffer to flush nor an fsync per line.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hsmd.fanout import AgentOutcome
    from hsmd.proxy.auth import Identity

_encode = json.JSONEncoder(separators=(",", ":"), default=str, ensure_ascii=True).encode


@dataclass(slots=True)
class RequestRecord:
    """What one request did, noted as it is served; the audit line and error bodies read it."""

    request_id: str
    started: float  # time.perf_counter() when the request arrived
    method: str
    remote: str | None
    identity: Identity | None = None
    decision: str | None = None
    verb: str | None = None
    target: str | None = None
    hidden: int = 0
    error_code: str | None = None
    agent_outcomes: tuple[AgentOutcome, ...] = ()
    items: list[dict[str, object]] | None = field(default=None)

    def audit_entry(self, endpoint: str | None, status: int) -> dict[str, Any]:
        ident = self.identity
        entry: dict[str, Any] = {
            "time": utc_stamp(),
            "requestId": self.request_id,
            "remote": self.remote,
            "caller": ident.to_json() if ident else None,
            "method": self.method,
            "endpoint": endpoint,
            "verb": self.verb,
            "path": self.target,
            "decision": self.decision or ("allow" if ident else None),
            "status": status,
        }
        if self.hidden:
            entry["hidden"] = self.hidden
        if self.error_code:
            entry["error"] = self.error_code
        if self.agent_outcomes:
            entry["agents"] = [{"agent": o.agent, "result": o.result} for o in self.agent_outcomes]
        if self.items:
            entry["items"] = self.items
        entry["durationMs"] = round((time.perf_counter() - self.started) * 1000, 3)
        return entry


_second: tuple[int, str] = (0, "")


def utc_stamp() -> str:
    """Now as ``2025-01-01T12:00:00.123456Z``; the part up to the second is formatted once a second."""
    global _second
    now = time.time()
    whole = int(now)
    cached = _second
    if cached[0] != whole:
        cached = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
        _second = cached  # a tuple swap: safe without a lock
    return f"{cached[1]}.{int((now - whole) * 1_000_000):06d}Z"


class AuditLog:
    def __init__(self, target: str | None) -> None:
        """``target``: a file path (appended, created 0600), ``-`` for stdout, None to disable."""
        self.target = target
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._stdout = target == "-"
        if target and not self._stdout:
            self._fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @property
    def enabled(self) -> bool:
        return self._fd is not None or self._stdout

    def write(self, entry: Mapping[str, Any]) -> None:
        if self._fd is None and not self._stdout:
            return
        line = _encode(entry) + "\n"
        with self._lock:
            if self._fd is not None:
                data = line.encode("utf-8")
                while data:  # a regular file takes the whole line at once; be correct for pipes too
                    data = data[os.write(self._fd, data) :]
            elif self._stdout:
                sys.stdout.write(line)
                sys.stdout.flush()

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
            self._fd = None
            self._stdout = False
