"""``hsmd agent``: serve one PKCS#11 token over gRPC (hsm.v1.HSMAgent) with HTTP health endpoints.

Start-up order: lock the token (one agent per token), start pcscd if asked, start the device
worker and open the token (a permanent failure such as a wrong PIN ends the agent with a clear
message and no retry), bind gRPC and health, write the ready file. On SIGTERM/SIGINT: report not
ready, refuse new RPCs, let in-flight ones finish (``--grace``), close the token's sessions, stop
pcscd, exit 0.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

from hsmd import model, readcache
from hsmd.errors import FailedPrecondition, HsmdError, InvalidArgument
from hsmd.service import read_secret_input, setup_logging, shutdown_event, write_ready_file

EXIT_CONFIG = 2
EXIT_START = 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hsmd agent",
        description="Serve one PKCS#11 token over gRPC (hsm.v1.HSMAgent) with /healthz and /readyz.",
    )
    p.add_argument("--pkcs11-library", required=True, metavar="PATH", help="PKCS#11 module (.so)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--token-label", metavar="LABEL")
    which.add_argument("--token-serial", metavar="SERIAL")
    which.add_argument("--slot", type=int, metavar="N")
    pin = p.add_mutually_exclusive_group(required=True)
    pin.add_argument("--pin-file", metavar="FILE", help="file holding the user PIN")
    pin.add_argument("--pin-env", metavar="VAR", help="environment variable holding the user PIN")
    p.add_argument("--listen", default="0.0.0.0:9090", metavar="HOST:PORT", help="gRPC address (port 0: any)")
    p.add_argument("--health-listen", default="0.0.0.0:8093", metavar="HOST:PORT", help="HTTP /healthz /readyz")
    p.add_argument("--tls-cert", metavar="FILE", help="server certificate (PEM); enables mTLS")
    p.add_argument("--tls-key", metavar="FILE", help="server private key (PEM)")
    p.add_argument("--tls-client-ca", metavar="FILE", help="CA bundle that client certificates must chain to")
    p.add_argument("--pcscd", action="store_true", help="start and supervise pcscd (smart-card tokens)")
    p.add_argument("--pcscd-binary", default="pcscd", metavar="PATH", help=argparse.SUPPRESS)
    p.add_argument("--device-profile", default="generic", choices=sorted(model.PROFILES),
                   help="per-device limits checked before writing")
    p.add_argument("--ready-file", metavar="FILE", help="write {grpc, health} addresses here once serving")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                   help="on SIGTERM, how long in-flight calls may take to finish")
    p.add_argument("--health-timeout", type=float, default=5.0, metavar="SECONDS",
                   help="how long a token ping may take before the token counts as unresponsive")
    p.add_argument("--heartbeat-interval", type=float, default=15.0, metavar="SECONDS",
                   help="WatchChanges heartbeat period on idle streams")
    p.add_argument("--watch-history", type=int, default=10000, metavar="N",
                   help="changes retained for WatchChanges resumption")
    p.add_argument("--max-watchers", type=int, default=32, metavar="N", help="concurrent WatchChanges streams")
    p.add_argument("--max-queued", type=int, default=48, metavar="N",
                   help="device calls queued or running before more are refused as busy (UNAVAILABLE)")
    readcache.add_flags(p, "keep secrets read for this long, dropped at once by every change through this "
                           "agent; bounds how long a change made behind its back stays unseen")
    p.add_argument("--sessions", type=int, default=2, metavar="N", help=argparse.SUPPRESS)
    return p


def _split_address(address: str, flag: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidArgument(f"{flag} must be HOST:PORT, got {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _check_args(args: argparse.Namespace) -> None:
    tls = [args.tls_cert, args.tls_key, args.tls_client_ca]
    if any(tls) and not all(tls):
        raise InvalidArgument("mTLS needs all three of --tls-cert, --tls-key and --tls-client-ca")
    for path in filter(None, tls):
        if not os.access(path, os.R_OK):
            raise InvalidArgument(f"cannot read {path}")
    if not os.path.exists(args.pkcs11_library):
        raise InvalidArgument(f"PKCS#11 library {args.pkcs11_library} does not exist")
    _split_address(args.listen, "--listen")
    _split_address(args.health_listen, "--health-listen")
    # Fail here, with the source named, rather than in the worker; the value is dropped at once.
    read_secret_input(file=args.pin_file, env=args.pin_env, what="PIN")
    if args.grace < 0 or args.health_timeout <= 0 or args.heartbeat_interval <= 0:
        raise InvalidArgument("--grace, --health-timeout and --heartbeat-interval must be positive")
    if args.max_queued < 1 or args.max_watchers < 0 or args.watch_history < 1:
        raise InvalidArgument("--max-queued and --watch-history must be at least 1, --max-watchers at least 0")
    readcache.settings_from_args(args)


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    log = setup_logging("agent", args.log_level)
    try:
        _check_args(args)
        if args.tls_cert:
            # Must happen before grpc loads (hsmd.agent.server is imported only below).
            from hsmd.agent.tlsconfig import restrict_to_tls13

            restrict_to_tls13(args.tls_key)
    except HsmdError as err:
        log.error("invalid configuration", extra={"reason": err.message})
        print(f"hsmd agent: {err.message}", file=sys.stderr)
        return EXIT_CONFIG
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    return Agent(args).run()


class Agent:
    """The running agent's parts and their start/stop order."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.log = setup_logging("agent", args.log_level)
        self.draining = False
        self.serving = False
        self._cleanup: list[Any] = []

    def run(self) -> int:
        stop = shutdown_event()
        try:
            self._start()
        except HsmdError as err:
            self.log.error("agent failed to start", extra={"code": err.code, "reason": err.message})
            print(f"hsmd agent: {err.message}", file=sys.stderr)
            self._stop()
            return EXIT_START
        except Exception as exc:  # still stop what did start (pcscd, the worker) before leaving
            self.log.exception("agent failed to start")
            print(f"hsmd agent: failed to start: {type(exc).__name__}: {exc}", file=sys.stderr)
            self._stop()
            return EXIT_START
        self.log.info("agent serving", extra={"grpc": self.grpc.address, "health": self.health.address,
                                              "tls": bool(self.args.tls_cert), "worker_pid": self.device.pid})
        monitor = threading.Thread(target=self._monitor, args=(stop,), name="health-monitor", daemon=True)
        monitor.start()
        while not stop.wait(0.5):
            pass
        self.log.info("draining", extra={"grace_s": self.args.grace})
        self._stop()
        self.log.info("agent stopped")
        return 0

    def _start(self) -> None:
        from hsmd.agent import locks
        from hsmd.agent.changes import ChangeLog
        from hsmd.agent.device import DeviceWorker, WorkerConfig
        from hsmd.agent.health import HealthServer
        from hsmd.agent.server import AgentOptions, AgentServer, ServerTLS

        args = self.args
        if locks.is_softhsm(args.pkcs11_library):
            lock = locks.softhsm_lock().acquire()
            self._cleanup.append(lock.release)
        if args.pcscd:
            from hsmd.agent.pcscd import PcscdSupervisor

            pcscd = PcscdSupervisor(args.pcscd_binary)
            pcscd.start()
            self._cleanup.append(pcscd.stop)
        self.device = DeviceWorker(
            WorkerConfig(
                library=args.pkcs11_library,
                token_label=args.token_label,
                token_serial=args.token_serial,
                slot=args.slot,
                pin_file=args.pin_file,
                pin_env=args.pin_env,
                profile=args.device_profile,
                sessions=args.sessions,
            ),
            log_level=args.log_level,
            max_queued=args.max_queued,
        )
        info = self.device.start()
        self._cleanup.append(lambda: self.device.stop(timeout=max(5.0, args.grace)))
        if not locks.is_softhsm(args.pkcs11_library):
            lock = locks.token_lock(args.pkcs11_library, info.serial).acquire()
            self._cleanup.append(lock.release)
        self.changes = ChangeLog(args.watch_history)
        tls = ServerTLS(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
        options = AgentOptions(
            profile=args.device_profile,
            probe_timeout=args.health_timeout,
            heartbeat_interval=args.heartbeat_interval,
            max_watchers=args.max_watchers,
            max_queued=args.max_queued,
            read_cache=readcache.settings_from_args(args),
        )
        self.grpc = AgentServer(self.device, self.changes, options, address=args.listen, tls=tls)
        # grpc.health follows the worker at once (the monitor below also follows the device)
        self.device.on_state = self._worker_state
        host, port = _split_address(args.health_listen, "--health-listen")
        try:
            self.health = HealthServer((host, port), self._liveness, self._readiness)
        except OSError as exc:
            raise FailedPrecondition(f"cannot listen on {args.health_listen} for health: {exc.strerror}") from None
        self._cleanup.append(self.health.stop)
        self._cleanup.append(self._stop_grpc)
        self.grpc.start()
        self.health.start()
        self.serving = True
        self.grpc.set_serving(self.device.probe(args.health_timeout)[0])
        write_ready_file(args.ready_file, {"grpc": self.grpc.address, "health": self.health.address,
                                           "worker_pid": self.device.pid, "token_serial": info.serial,
                                           "epoch": self.changes.epoch})

    def _worker_state(self, state: str) -> None:
        self.grpc.servicer.reads.clear()  # a restarted worker may face a changed token
        if not self.draining:
            self.grpc.set_serving(state == "ready")

    def _stop_grpc(self) -> None:
        self.draining = True
        self.changes.close()  # ends WatchChanges streams so they do not hold the grace period
        self.grpc.stop(self.args.grace)

    def _stop(self) -> None:
        # Reverse start order: gRPC drains first, then health, the worker, pcscd, the lock.
        while self._cleanup:
            step = self._cleanup.pop()
            try:
                step()
            except Exception:
                self.log.exception("shutdown step failed")

    def _details(self) -> dict[str, Any]:
        count, _ = self.device.in_flight()
        return {"worker": self.device.state, "worker_pid": self.device.pid, "in_flight": count,
                "restarts": self.device.restarts, "read_cache": self.grpc.servicer.reads.cache.stats().to_json()}

    def _liveness(self) -> tuple[bool, str, dict[str, Any]]:
        ok, message = self.device.probe(self.args.health_timeout)
        return ok, message, self._details()

    def _readiness(self) -> tuple[bool, str, dict[str, Any]]:
        if self.draining:
            return False, "the agent is shutting down", self._details()
        if not self.serving:
            return False, "the agent is starting", self._details()
        return self._liveness()

    def _monitor(self, stop: threading.Event) -> None:
        """Keep grpc.health.v1 in step with the token (it answers from this cached status)."""
        interval = min(5.0, self.args.health_timeout)
        last: bool | None = None
        while not stop.wait(interval if last else 0.5):
            if self.draining:
                return
            ok, message = self.device.probe(self.args.health_timeout)
            if ok != last:
                if not ok:
                    self.grpc.servicer.reads.clear()
                self.grpc.set_serving(ok)
                self.log.log(20 if ok else 30, "token %s", "responsive" if ok else "unavailable",
                             extra={"reason": message})
                last = ok
