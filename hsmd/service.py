"""What every long-running hsmd mode shares: JSON logs, a ready file, shutdown on signals,
and reading PINs/tokens from files or environment variables (never argv).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hsmd.errors import InvalidArgument

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra=`` fields."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "component": self.component,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return json.dumps(entry, default=str, separators=(",", ":"))


def setup_logging(component: str, level: str | int = "info", *, stream: Any = None) -> logging.Logger:
    """JSON logs to stderr for ``component``; returns the component's logger."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return logging.getLogger(f"hsmd.{component}")


def write_ready_file(path: str | None, info: Mapping[str, Any]) -> None:
    """Atomically write ``info`` as JSON to ``path`` once the service is serving.

    Tests and ``hsmd dev`` start services on port 0 and learn the bound addresses from here."""
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".ready-")
    with os.fdopen(fd, "w") as handle:
        json.dump(dict(info, pid=os.getpid()), handle)
    os.replace(tmp, target)


def wait_for_ready_file(path: str | Path, timeout: float = 30.0, *, process: Any = None) -> dict[str, Any]:
    """Wait for a ready file written by ``write_ready_file``; fail early if ``process`` exits."""
    deadline = time.monotonic() + timeout
    target = Path(path)
    while time.monotonic() < deadline:
        if target.exists():
            try:
                data: dict[str, Any] = json.loads(target.read_text())
                return data
            except json.JSONDecodeError:
                pass
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with code {process.returncode} before it was ready")
        time.sleep(0.02)
    raise TimeoutError(f"{target} did not appear within {timeout} s")


def backoff_delay(failures: int, base: float, cap: float, *, jitter: bool = False) -> float:
    """Seconds to wait after the ``failures``-th failure in a row: base, 2*base, 4*base ... capped at
    ``cap``; with ``jitter`` a random 50-100% of that, so many clients do not retry in step."""
    delay = float(min(cap, base * 2.0 ** min(max(failures, 1) - 1, 62)))
    return delay * (0.5 + random.random() / 2) if jitter else delay


def stop_process(process: subprocess.Popen[Any], timeout: float = 20.0, sig: int = signal.SIGTERM) -> int:
    """Ask a child process to stop (``sig``), give it ``timeout`` seconds, then SIGKILL it; its exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


def shutdown_event() -> threading.Event:
    """An Event set on SIGTERM or SIGINT (the caller drains and exits)."""
    event = threading.Event()

    def _handler(signum: int, _frame: object) -> None:
        logging.getLogger("hsmd").info("shutdown requested", extra={"signal": signal.Signals(signum).name})
        event.set()

    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
    return event


def read_secret_input(*, file: str | None = None, env: str | None = None, what: str = "PIN") -> str:
    """Read a PIN or token from a file or an environment variable; exactly one must be given.

    The value is stripped of one trailing newline; errors name the source, never the value."""
    if bool(file) == bool(env):
        raise InvalidArgument(f"give the {what} with exactly one of a file or an environment variable")
    if file:
        try:
            with open(file, encoding="utf-8") as handle:
                value = handle.read()
        except OSError as exc:
            raise InvalidArgument(f"cannot read the {what} file {file}: {exc.strerror}") from None
        value = value[:-1] if value.endswith("\n") else value
        source = f"file {file}"
    else:
        assert env is not None
        if env not in os.environ:
            raise InvalidArgument(f"environment variable {env} (the {what}) is not set")
        value = os.environ[env]
        source = f"environment variable {env}"
    if not value:
        raise InvalidArgument(f"the {what} from {source} is empty")
    return value
