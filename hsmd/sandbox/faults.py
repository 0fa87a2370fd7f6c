"""Fault injection for reliability tests: failed requests (500, 429 + Retry-After, 503 ...), added
latency, dropped watches, a forced 410 Gone on the next watch, and a paused server.

``FaultInjector`` lives in the server process (the HTTP layer consults it before routing);
tests in the same process use it directly through ``SandboxHandle.faults``. ``RemoteFaults``
drives the same injector over the admin endpoint ``/sandbox/faults`` (for a sandbox started as
``hsmd sandbox`` in another process); both share the ``FaultControl`` methods.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from hsmd.errors import InvalidArgument
from hsmd.sandbox.status import StatusError

_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
            410: "Expired", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable",
            504: "Timeout"}


@dataclass
class FailRule:
    remaining: int
    status: int
    verb: str | None = None
    resource: str | None = None
    retry_after: int | None = None
    message: str | None = None


@dataclass
class LatencyRule:
    seconds: float
    verb: str | None = None
    resource: str | None = None
    remaining: int | None = None  # None: until cleared


def _matches(rule_verb: str | None, rule_resource: str | None, verb: str, resource: str) -> bool:
    if rule_verb and rule_verb != verb:
        return False
    if rule_resource:
        plural = resource.split("/")[0].split(".")[0]
        if rule_resource not in (resource, plural, resource.split("/")[0]):
            return False
    return True


class FaultInjector:
    """Thread-safe fault state consulted by every API request (admin requests excepted)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fail: list[FailRule] = []
        self._latency: list[LatencyRule] = []
        self._expire_watches = 0
        self._running = threading.Event()
        self._running.set()
        self.close_watches_hook: Callable[[], int] = lambda: 0

    # --- control (the FaultControl surface) ----------------------------------------------

    def fail_next(self, n: int = 1, *, verb: str | None = None, resource: str | None = None, status: int = 500,
                  retry_after: int | None = None, message: str | None = None) -> None:
        """Fail the next ``n`` requests matching verb/resource (plural, or plural/subresource)."""
        if n < 1 or not 400 <= status <= 599:
            raise InvalidArgument("fail_next needs n >= 1 and an HTTP error status (400-599)")
        if status == 429 and retry_after is None:
            retry_after = 1
        with self._lock:
            self._fail.append(FailRule(n, status, verb, resource, retry_after, message))

    def add_latency(self, seconds: float, *, verb: str | None = None, resource: str | None = None,
                    count: int | None = None) -> None:
        if seconds < 0:
            raise InvalidArgument("latency must be >= 0 seconds")
        with self._lock:
            self._latency.append(LatencyRule(seconds, verb, resource, count))

    def close_watches(self) -> int:
        """End every open watch stream now (clients see the stream close and must re-watch)."""
        return self.close_watches_hook()

    def expire_next_watch(self, n: int = 1) -> None:
        """The next ``n`` watch requests get a 410 Gone (Expired) ERROR event, as after compaction."""
        with self._lock:
            self._expire_watches += n

    def pause(self) -> None:
        """Hold every API request (and watch delivery) until ``resume``."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def clear(self) -> None:
        with self._lock:
            self._fail.clear()
            self._latency.clear()
            self._expire_watches = 0
        self._running.set()

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"fail": [asdict(r) for r in self._fail], "latency": [asdict(r) for r in self._latency],
                    "expireWatches": self._expire_watches, "paused": not self._running.is_set()}

    # --- server side ---------------------------------------------------------------------

    def wait_running(self, timeout: float | None = None) -> bool:
        return self._running.wait(timeout)

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def before(self, verb: str, resource: str) -> None:
        """Apply pause, latency and failures for one request; raises the injected error."""
        if not self._running.is_set():
            self._running.wait()
        delay = 0.0
        error: StatusError | None = None
        with self._lock:
            if not self._latency and not self._fail:
                return
            for rule in list(self._latency):
                if _matches(rule.verb, rule.resource, verb, resource):
                    delay += rule.seconds
                    if rule.remaining is not None:
                        rule.remaining -= 1
                        if rule.remaining <= 0:
                            self._latency.remove(rule)
            for fail in self._fail:
                if _matches(fail.verb, fail.resource, verb, resource):
                    fail.remaining -= 1
                    if fail.remaining <= 0:
                        self._fail.remove(fail)
                    reason = _REASONS.get(fail.status, "InternalError")
                    message = fail.message or f"injected fault: {fail.status} {reason}"
                    error = StatusError(fail.status, reason, message, retry_after=fail.retry_after)
                    break
        if delay:
            time.sleep(delay)
        if error is not None:
            raise error

    def take_watch_expiry(self) -> bool:
        with self._lock:
            if self._expire_watches > 0:
                self._expire_watches -= 1
                return True
            return False

    def apply_command(self, command: dict[str, Any]) -> dict[str, Any]:
        """The admin endpoint's body: {"action": "fail_next", ...keyword arguments}."""
        action = command.get("action")
        args = {k: v for k, v in command.items() if k != "action"}
        try:
            if action == "fail_next":
                self.fail_next(**args)
            elif action == "add_latency":
                self.add_latency(**args)
            elif action == "close_watches":
                return {"closed": self.close_watches()}
            elif action == "expire_next_watch":
                self.expire_next_watch(**args)
            elif action == "pause":
                self.pause()
            elif action == "resume":
                self.resume()
            elif action == "clear":
                self.clear()
            else:
                raise InvalidArgument(f"unknown fault action {action!r}")
        except TypeError as exc:
            raise InvalidArgument(f"bad arguments for {action}: {exc}") from None
        return self.state()


class RemoteFaults:
    """The same controls over HTTP, for a sandbox running in another process."""

    def __init__(self, url: str, token: str | None = None, *, context: Any = None) -> None:
        self.url = url.rstrip("/") + "/sandbox/faults"
        self.token = token
        self.context = context

    def _call(self, action: str, **args: Any) -> dict[str, Any]:
        body = json.dumps({"action": action, **{k: v for k, v in args.items() if v is not None}}).encode()
        req = urllib.request.Request(self.url, data=body, method="POST",  # noqa: S310 (http(s) only)
                                     headers={"Content-Type": "application/json"})
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=10, context=self.context) as resp:  # noqa: S310
            result: dict[str, Any] = json.loads(resp.read())
            return result

    def fail_next(self, n: int = 1, *, verb: str | None = None, resource: str | None = None, status: int = 500,
                  retry_after: int | None = None, message: str | None = None) -> None:
        self._call("fail_next", n=n, verb=verb, resource=resource, status=status, retry_after=retry_after,
                   message=message)

    def add_latency(self, seconds: float, *, verb: str | None = None, resource: str | None = None,
                    count: int | None = None) -> None:
        self._call("add_latency", seconds=seconds, verb=verb, resource=resource, count=count)

    def close_watches(self) -> int:
        return int(self._call("close_watches").get("closed", 0))

    def expire_next_watch(self, n: int = 1) -> None:
        self._call("expire_next_watch", n=n)

    def pause(self) -> None:
        self._call("pause")

    def resume(self) -> None:
        self._call("resume")

    def clear(self) -> None:
        self._call("clear")

    def state(self) -> dict[str, Any]:
        req = urllib.request.Request(self.url, method="GET")  # noqa: S310
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=10, context=self.context) as resp:  # noqa: S310
            result: dict[str, Any] = json.loads(resp.read())
            return result
