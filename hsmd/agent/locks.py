"""One agent per token: an exclusive lock taken before the token is served.

Two processes on one SoftHSM2 token directory slow each other badly and can interleave writes
(measured), so for SoftHSM the lock file lives in the token directory itself, read from the
SOFTHSM2_CONF file's ``directories.tokendir``; every agent pointed at that directory, whatever
token label it asks for, meets the same lock. For other PKCS#11 libraries the lock is per
(library, token serial) under a runtime directory.

The lock is ``flock`` on an open file: the kernel releases it when the agent dies, however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from hsmd.errors import FailedPrecondition, InvalidArgument

LOCK_NAME = ".hsmd-agent.lock"
DEFAULT_SOFTHSM_CONF = "/etc/softhsm/softhsm2.conf"


def is_softhsm(library: str) -> bool:
    return "softhsm" in Path(library).name.lower()


def softhsm_token_dir(env: Mapping[str, str] | None = None) -> Path:
    """The ``directories.tokendir`` of the SoftHSM2 configuration this process would use."""
    env = os.environ if env is None else env
    conf = env.get("SOFTHSM2_CONF") or DEFAULT_SOFTHSM_CONF
    try:
        text = Path(conf).read_text()
    except OSError as exc:
        raise InvalidArgument(f"cannot read the SoftHSM2 configuration {conf}: {exc.strerror}") from None
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        key, sep, value = line.partition("=")
        if sep and key.strip() == "directories.tokendir":
            return Path(value.strip())
    raise InvalidArgument(f"the SoftHSM2 configuration {conf} sets no directories.tokendir")


def runtime_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("HSMD_RUNTIME_DIR"):
        return Path(env["HSMD_RUNTIME_DIR"])
    run = Path("/run/hsmd")
    with contextlib.suppress(OSError):
        run.mkdir(mode=0o700, exist_ok=True)
        if os.access(run, os.W_OK):
            return run
    return Path(tempfile.gettempdir()) / f"hsmd-{os.getuid()}"


def token_lock_path(library: str, serial: str, directory: Path) -> Path:
    key = hashlib.sha256(f"{os.path.realpath(library)}\0{serial}".encode()).hexdigest()[:24]
    return directory / f"agent-{key}.lock"


class AgentLock:
    """An exclusive, non-blocking lock on ``path``; ``what`` names the token for the error."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> AgentLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise FailedPrecondition(f"cannot create the agent lock file {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FailedPrecondition(
                f"another hsmd agent (pid {holder}) already serves {self.what}; "
                f"only one agent may use it at a time (lock file {self.path})"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def softhsm_lock(env: Mapping[str, str] | None = None) -> AgentLock:
    directory = softhsm_token_dir(env)
    if not directory.is_dir():
        raise FailedPrecondition(f"the SoftHSM2 token directory {directory} does not exist")
    return AgentLock(directory / LOCK_NAME, f"the SoftHSM2 token directory {directory}")


def token_lock(library: str, serial: str, env: Mapping[str, str] | None = None) -> AgentLock:
    return AgentLock(token_lock_path(library, serial, runtime_dir(env)), f"token {serial!r} of {library}")
