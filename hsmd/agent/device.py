"""The agent's side of the device worker: start it, pipeline calls to it, probe it, restart it.

Calls from any number of gRPC threads are written to the worker's socket as they come (pipelined)
and matched to their answers by id on one reader thread; the worker answers them in order. This
module never imports the PKCS#11 layer: the worker process (hsmd.agent.worker) does.

Health: a token is *responsive* when a device call is in flight and younger than the probe timeout,
or, when the worker is idle, when a ``ping`` answers within that timeout. A worker that exits is
restarted with backoff and reported unavailable until it is back; a worker that cannot open the
token for a permanent reason (a wrong or locked PIN above all: retries lock real tokens) is not
restarted.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from hsmd.agent import framing
from hsmd.errors import Busy, DeadlineExceeded, FailedPrecondition, HsmdError, Unavailable, error_from_code
from hsmd.model import TokenInfo

log = logging.getLogger("hsmd.agent.device")

STARTING = "starting"
READY = "ready"
RESTARTING = "restarting"
FAILED = "failed"
STOPPED = "stopped"


@dataclass(frozen=True)
class WorkerConfig:
    """What the worker needs to open the token (the fields of hsmd.pkcs11.token.TokenConfig).
    The PIN itself is read by the worker from ``pin_file``/``pin_env``: it never crosses argv."""

    library: str
    token_label: str | None = None
    token_serial: str | None = None
    slot: int | None = None
    pin_file: str | None = None
    pin_env: str | None = None
    profile: str = "generic"
    sessions: int = 2
    env: Mapping[str, str] = field(default_factory=dict)

    def token_config(self) -> dict[str, Any]:
        fields = asdict(self)
        fields.pop("env")
        return fields


@dataclass
class _Call:
    method: str
    started: float
    future: Future[Any]
    on_result: Callable[[Any], None] | None = None


class _Child:
    """One worker process and its socket.

    Answers are read by whoever holds ``recv_lock``: a caller waiting for its own answer reads the
    socket itself when nobody else does (one thread wake-up fewer per call than handing the answer
    over from a reader thread), and the reader thread takes over, when ``need_reader`` is set, for
    callers that cannot lead (timeouts) or that found the lock taken. Whoever reads dispatches the
    answers in order, so result hooks still run in device order.
    """

    def __init__(self, process: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.process = process
        self.sock = sock
        self.send_lock = threading.Lock()
        self.recv_lock = threading.Lock()
        self.need_reader = threading.Event()
        self.pending: dict[int, _Call] = {}
        self.closed = False
        self.gone = False


class DeviceWorker:
    def __init__(
        self,
        config: WorkerConfig,
        *,
        log_level: str = "info",
        restart_backoff: tuple[float, float] = (0.5, 10.0),
        open_timeout: float = 60.0,
        max_queued: int = 0,
    ) -> None:
        self.config = config
        self.max_queued = max_queued  # 0: unlimited
        # called (outside our lock) with the new state after every transition
        self.on_state: Callable[[str], None] | None = None
        self.log_level = log_level
        self.restart_backoff = restart_backoff
        self.open_timeout = open_timeout
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._child: _Child | None = None
        self._state = STOPPED
        self._reason = "not started"
        self._stopping = threading.Event()
        self._ping: _Call | None = None
        self._restarts = 0
        self.token_info: TokenInfo | None = None
        self._supervisor: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.process.pid if child else None

    @property
    def restarts(self) -> int:
        return self._restarts

    def start(self) -> TokenInfo:
        """Start the worker and open the token; raise the worker's error if it cannot."""
        self._stopping.clear()
        self._state = STARTING
        try:
            info = self._spawn()
        except HsmdError as err:
            self._state = FAILED
            self._reason = err.message
            raise
        if self.config.token_serial is None and info.serial:
            # A restarted worker must open this very token, not whatever now carries the label/slot.
            self.config = replace(self.config, token_serial=info.serial)
        return info

    def _spawn(self) -> TokenInfo:
        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ)
        env.update(self.config.env)
        env.pop("GRPC_SSL_CIPHER_SUITES", None)
        cmd = [sys.executable, "-m", "hsmd.agent.worker", "--fd", str(child_sock.fileno()),
               "--log-level", self.log_level]
        try:
            process = subprocess.Popen(cmd, pass_fds=(child_sock.fileno(),), env=env, stdin=subprocess.DEVNULL)
        finally:
            child_sock.close()
        child = _Child(process, parent_sock)
        try:
            framing.send(parent_sock, ("open", self.config.token_config()))
            parent_sock.settimeout(self.open_timeout)
            answer = framing.recv(parent_sock)
            parent_sock.settimeout(None)
        except (OSError, TimeoutError) as exc:
            self._kill(child)
            raise Unavailable(f"the device worker did not open the token: {exc}") from None
        if answer is None or answer[0] != "ready":
            self._kill(child)
            if answer and answer[0] == "failed":
                raise error_from_code(answer[1], answer[2])
            raise Unavailable(f"the device worker exited while opening the token (code {process.poll()})")
        info: TokenInfo = answer[1]
        with self._lock:
            if self._stopping.is_set():  # stop() ran while we were opening: do not leave a worker behind
                child.closed = True
        if child.closed:
            self._close_child(child, timeout=5.0)
            child.sock.close()
            raise Unavailable("the agent is shutting down")
        with self._lock:
            self._child = child
            self.token_info = info
            self._state = READY
            self._reason = "token open"
        self._notify()
        threading.Thread(target=self._read_loop, args=(child,), name="device-reader", daemon=True).start()
        threading.Thread(target=self._watch_process, args=(child,), name="device-watch", daemon=True).start()
        log.info("device worker ready", extra={"worker_pid": process.pid, "token_serial": info.serial})
        return info

    def _notify(self) -> None:
        if self.on_state is not None:
            try:
                self.on_state(self._state)
            except Exception:
                log.exception("state listener failed")

    def _kill(self, child: _Child) -> None:
        child.closed = True
        try:
            child.sock.close()
        finally:
            if child.process.poll() is None:
                child.process.kill()
            child.process.wait()

    def _read_loop(self, child: _Child) -> None:
        """The reader of last resort: reads while calls are pending and no caller reads for itself."""
        while not child.gone:
            child.need_reader.wait()
            child.need_reader.clear()
            with child.recv_lock:
                while not child.gone:
                    with self._lock:
                        if not child.pending:
                            break
                    self._read_one(child)
        with child.recv_lock:  # nobody is reading it now, nobody will again
            child.sock.close()

    def _watch_process(self, child: _Child) -> None:
        child.process.wait()
        self._child_gone(child)

    def _read_one(self, child: _Child) -> bool:
        """Read and dispatch one answer (caller holds recv_lock); False when the worker is gone."""
        try:
            message = framing.recv(child.sock)
        except (OSError, ValueError, EOFError) as exc:
            if not child.gone:
                log.warning("lost the device worker's socket", extra={"error": str(exc)})
            message = None
        if message is None:
            self._child_gone(child)
            return False
        kind, call_id = message[0], message[1]
        with self._lock:
            call = child.pending.pop(call_id, None)
        if call is None:
            return True
        if kind == "ok":
            if call.on_result is not None:
                # Runs while recv_lock is held, in the order the worker answered: that is the order
                # the device performed the calls (the change log relies on it).
                try:
                    call.on_result(message[2])
                except Exception:
                    log.exception("result hook failed", extra={"call": call.method})
            call.future.set_result(message[2])
        else:
            call.future.set_exception(error_from_code(message[2], message[3], path=message[4]))
        return True

    def _child_gone(self, child: _Child) -> None:
        with self._lock:
            if child.gone:
                return
            child.gone = True
            child.closed = True
        try:
            code = child.process.wait(5.0)
        except subprocess.TimeoutExpired:
            child.process.kill()
            code = child.process.wait()
        with self._lock:
            pending = list(child.pending.values())
            child.pending.clear()
            current = self._child is child
            if current:
                self._child = None
        with contextlib.suppress(OSError):
            child.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it
        child.need_reader.set()  # lets the reader thread see `gone` and end
        if self._stopping.is_set() or not current:
            for call in pending:
                call.future.set_exception(Unavailable("the agent is shutting down"))
            return
        reason = f"the device worker exited (code {code}); restarting it"
        log.error("device worker exited", extra={"worker_pid": child.process.pid, "exit_code": code,
                                                 "failed_calls": len(pending)})
        for call in pending:
            call.future.set_exception(Unavailable(f"the device worker exited (code {code}) during {call.method}"))
        with self._lock:
            self._state = RESTARTING
            self._reason = reason
        self._notify()
        self._supervisor = threading.Thread(target=self._restart_loop, name="device-restart", daemon=True)
        self._supervisor.start()

    def _restart_loop(self) -> None:
        delay, limit = self.restart_backoff
        while not self._stopping.is_set():
            if self._stopping.wait(delay):
                return
            try:
                self._spawn()
            except HsmdError as err:
                if not err.temporary:
                    with self._lock:
                        self._state = FAILED
                        self._reason = f"the device worker cannot open the token: {err.message}"
                    self._notify()
                    log.error("device worker cannot reopen the token; not retrying",
                              extra={"code": err.code, "reason": err.message})
                    return
                log.warning("device worker restart failed", extra={"code": err.code, "reason": err.message})
                with self._lock:
                    self._reason = f"restarting the device worker: {err.message}"
                delay = min(delay * 2, limit)
                continue
            self._restarts += 1
            log.info("device worker restarted", extra={"restarts": self._restarts})
            return

    def stop(self, timeout: float = 10.0) -> None:
        """Close the token's sessions (the worker finishes its current call first) and end the worker."""
        self._stopping.set()
        with self._lock:
            child = self._child
            self._state = STOPPED
            self._reason = "stopped"
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(self.open_timeout)
        if child is None:
            return
        self._close_child(child, timeout)
        with self._lock:
            if self._child is child:
                self._child = None

    def _close_child(self, child: _Child, timeout: float) -> None:
        try:
            with child.send_lock:
                framing.send(child.sock, ("close",))
        except OSError:
            pass
        try:
            child.process.wait(timeout)
        except subprocess.TimeoutExpired:
            # It ignores SIGTERM while we live (see hsmd.agent.worker); writes are crash-safe.
            log.warning("device worker did not stop in time; killing it", extra={"worker_pid": child.process.pid})
            child.process.kill()
            child.process.wait()

    # --- calls ---------------------------------------------------------------------------------

    def submit(self, method: str, *args: Any, on_result: Callable[[Any], None] | None = None) -> Future[Any]:
        """Send a call to the worker; ``on_result`` runs before the future resolves, in device order.
        The answer is read by the reader thread (or a caller reading for itself)."""
        future, child = self._send(method, args, on_result)
        if child is not None:
            child.need_reader.set()
        return future

    def _send(
        self, method: str, args: tuple[Any, ...], on_result: Callable[[Any], None] | None
    ) -> tuple[Future[Any], _Child | None]:
        future: Future[Any] = Future()
        with self._lock:
            child = self._child
            if child is None or child.closed:
                future.set_exception(self._not_ready())
                return future, None
            if self.max_queued and len(child.pending) >= self.max_queued and method != "ping":
                future.set_exception(
                    Busy(f"the device has {len(child.pending)} calls queued (the limit); try again shortly")
                )
                return future, None
            call_id = next(self._ids)
            call = _Call(method, time.monotonic(), future, on_result)
            child.pending[call_id] = call
        try:
            with child.send_lock:
                framing.send(child.sock, ("call", call_id, method, args))
        except OSError:
            with self._lock:
                child.pending.pop(call_id, None)
            if not future.done():
                future.set_exception(Unavailable("the device worker is not reachable"))
            return future, None
        return future, child

    def call(
        self, method: str, *args: Any, timeout: float | None = None, on_result: Callable[[Any], None] | None = None
    ) -> Any:
        """Run ``method`` in the worker and return its result (or raise its hsmd error).

        Without a timeout the caller reads the answer itself when nobody else is reading."""
        if timeout is not None:
            future = self.submit(method, *args, on_result=on_result)
        else:
            future, child = self._send(method, args, on_result)
            if child is not None:
                self._lead(child, future)
        try:
            return future.result(timeout)
        except FutureTimeout:
            raise DeadlineExceeded(f"the device did not answer {method} within {timeout} s") from None

    def _lead(self, child: _Child, future: Future[Any]) -> None:
        if not child.recv_lock.acquire(blocking=False):
            # Someone else reads; if they leave before our answer comes, the reader thread takes over.
            child.need_reader.set()
            return
        try:
            while not future.done():
                if not self._read_one(child):
                    break
        finally:
            child.recv_lock.release()
        with self._lock:
            more = bool(child.pending)
        if more:
            child.need_reader.set()

    def _not_ready(self) -> HsmdError:
        if self._state == FAILED:
            return FailedPrecondition(self._reason)
        return Unavailable(f"the token is not available: {self._reason}")

    # --- health --------------------------------------------------------------------------------

    def in_flight(self) -> tuple[int, float]:
        """(number of device calls in flight other than pings, age in seconds of the oldest)."""
        now = time.monotonic()
        with self._lock:
            child = self._child
            calls = [c for c in (child.pending.values() if child else ()) if c.method != "ping"]
        if not calls:
            return 0, 0.0
        return len(calls), now - min(c.started for c in calls)

    def probe(self, timeout: float) -> tuple[bool, str]:
        """Is the token responsive? Never blocks longer than ``timeout``; see the module docstring."""
        if self._state != READY:
            return False, self._reason
        count, age = self.in_flight()
        if count:
            return self._judge_busy(count, age, timeout)
        with self._lock:
            ping = self._ping
            if ping is None or ping.future.done():
                ping = None
        if ping is None:
            future = self.submit("ping")
            ping = _Call("ping", time.monotonic(), future)
            with self._lock:
                self._ping = ping
        remaining = max(0.0, timeout - (time.monotonic() - ping.started))
        try:
            ping.future.result(remaining)
        except FutureTimeout:
            count, age = self.in_flight()
            if count and age < timeout:
                return True, f"token busy: {count} device call(s) in flight, oldest {age:.2f} s"
            return False, f"the token did not answer a ping within {timeout:g} s"
        except HsmdError as err:
            return False, err.message
        return True, "token responsive"

    @staticmethod
    def _judge_busy(count: int, age: float, timeout: float) -> tuple[bool, str]:
        if age < timeout:
            return True, f"token busy: {count} device call(s) in flight, oldest {age:.2f} s"
        return False, f"a device call has been running for {age:.1f} s (limit {timeout:g} s)"
