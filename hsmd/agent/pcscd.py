"""Supervise pcscd for smart-card tokens (``hsmd agent --pcscd``).

Starts ``pcscd --foreground`` (plus ``--disable-polkit`` when this pcscd build knows the flag:
Debian's pcsc-lite 1.9.9 does not), waits for its socket, forwards its output to our JSON log,
restarts it with backoff when it dies, and stops it with SIGTERM, then SIGKILL after a grace period.
pcsc-lite 1.9.9's daemon has a fixed socket path (/run/pcscd/pcscd.comm); a pcscd that already
answers there (the host's, say) is reported instead of fought with. pcscd gets SIGTERM from the
kernel when the agent dies without stopping it (PR_SET_PDEATHSIG, Linux): a SIGKILLed agent leaves no
pcscd behind holding the reader. It is started only from threads that live as long as the
supervisor (the kernel signals the child when the thread that forked it exits).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence

from hsmd.errors import FailedPrecondition

log = logging.getLogger("hsmd.agent.pcscd")

DEFAULT_SOCKET = "/run/pcscd/pcscd.comm"
_PR_SET_PDEATHSIG = 1

try:  # loaded here: the child between fork and exec must not load anything
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # not Linux/glibc: no parent-death signal, stop() still stops pcscd
    _libc = None


def _die_with_parent(parent: int) -> None:
    """preexec_fn: ask for SIGTERM when the agent dies; exit if it already has."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)


def _socket_answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        try:
            probe.connect(path)
        except OSError:
            return False
        return True


def pcscd_flags(binary: str) -> list[str]:
    """``--foreground`` and, when supported by this build, ``--disable-polkit``."""
    flags = ["--foreground"]
    try:
        out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return flags
    if "--disable-polkit" in (out.stdout + out.stderr):
        flags.append("--disable-polkit")
    return flags


class PcscdSupervisor:
    def __init__(
        self,
        binary: str = "pcscd",
        *,
        socket_path: str = DEFAULT_SOCKET,
        extra_args: Sequence[str] = (),
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        restart_backoff: tuple[float, float] = (0.5, 10.0),
    ) -> None:
        found = shutil.which(binary)
        if found is None:
            raise FailedPrecondition(f"--pcscd was given but {binary!r} is not installed (install pcscd)")
        self.binary = found
        self.socket_path = socket_path
        self.args = [self.binary, *pcscd_flags(self.binary), *extra_args]
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.restart_backoff = restart_backoff
        self.restarts = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process and process.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None and _socket_answers(self.socket_path)

    def start(self) -> None:
        if _socket_answers(self.socket_path):
            raise FailedPrecondition(
                f"a pcscd already answers on {self.socket_path}; run the agent without --pcscd to use it"
            )
        self._stopping.clear()
        self._launch()
        self._monitor = threading.Thread(target=self._watch, name="pcscd-monitor", daemon=True)
        self._monitor.start()

    def _launch(self) -> None:
        # A socket nobody answers on is left over from a pcscd that died; it would stop the new one.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        parent = os.getpid()
        process = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=lambda: _die_with_parent(parent),  # only a prctl: libc is loaded already
        )
        with self._lock:
            self._process = process
        threading.Thread(target=self._forward, args=(process,), name="pcscd-log", daemon=True).start()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if _socket_answers(self.socket_path):
                log.info("pcscd is up", extra={"pcscd_pid": process.pid, "socket": self.socket_path})
                return
            if process.poll() is not None:
                raise FailedPrecondition(f"pcscd exited with code {process.returncode} while starting")
            time.sleep(0.05)
        self._terminate(process)
        raise FailedPrecondition(f"pcscd did not open {self.socket_path} within {self.start_timeout:g} s")

    @staticmethod
    def _forward(process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                log.info("pcscd: %s", line, extra={"pcscd_pid": process.pid})

    def _watch(self) -> None:
        delay, limit = self.restart_backoff
        while not self._stopping.is_set():
            process = self._process
            assert process is not None
            code = process.wait()
            if self._stopping.is_set():
                return
            log.error("pcscd exited; restarting it", extra={"exit_code": code, "pcscd_pid": process.pid})
            while not self._stopping.wait(delay):
                try:
                    self._launch()
                except (FailedPrecondition, OSError) as exc:
                    log.error("pcscd restart failed", extra={"error": str(exc)})
                    delay = min(delay * 2, limit)
                    continue
                self.restarts += 1
                delay = self.restart_backoff[0]
                break

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout`` seconds."""
        self._stopping.set()
        with self._lock:
            process = self._process
        if process is not None:
            self._terminate(process)
        if self._monitor is not None:
            self._monitor.join(self.start_timeout + self.stop_timeout)
        with self._lock:
            last = self._process
        if last is not None and last is not process:  # a restart raced with stop
            self._terminate(last)

    def _terminate(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("pcscd ignored SIGTERM; killing it", extra={"pcscd_pid": process.pid})
            process.kill()
            process.wait()
        log.info("pcscd stopped", extra={"pcscd_pid": process.pid, "exit_code": process.returncode})
