"""The device worker: the one process of an agent that loads the PKCS#11 library.

PyKCS11 holds the GIL for the whole of a device call, so a slow token would freeze every thread
of a process that calls it. The agent therefore runs ``Token`` here, in a child process started as
``python -m hsmd.agent.worker --fd N``, and talks to it over a socketpair (hsmd.agent.framing).
Requests are answered one at a time, in order; the device serialises them anyway. The agent's
gRPC threads, health endpoints and pcscd supervisor live in the parent and stay responsive.

Test hook (documented in docs/agent.md): ``HSMD_AGENT_TEST_SLOW_CALLS="list=2,read_secret=1.5"``
makes the named calls take that long by calling ``Token.ping()`` (a real PKCS#11 call that holds
this process's GIL) in a loop before doing the real work. It simulates a slow device from the
agent's point of view; it does not slow the PKCS#11 library itself.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hsmd.agent import framing
from hsmd.errors import HsmdError, Internal, NotFound
from hsmd.model import SecretMetadata
from hsmd.service import setup_logging

SLOW_CALLS_ENV = "HSMD_AGENT_TEST_SLOW_CALLS"

log = logging.getLogger("hsmd.agent.worker")


def _slow_calls() -> dict[str, float]:
    spec = os.environ.get(SLOW_CALLS_ENV, "")
    out: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, seconds = item.partition("=")
        out[name.strip()] = float(seconds or "1")
    return out


class Handler:
    """The calls the agent may make, each returning builtins or hsmd.model values only."""

    def __init__(self, token: Any, slow: Mapping[str, float]) -> None:
        self.token = token
        self.slow = dict(slow)

    def dispatch(self, method: str, args: Sequence[Any]) -> Any:
        fn: Callable[..., Any] | None = getattr(self, "do_" + method, None)
        if fn is None:
            raise Internal(f"the device worker has no call {method!r}")
        delay = self.slow.get(method)
        if delay:
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                self.token.ping()
        return fn(*args)

    def do_ping(self) -> None:
        self.token.ping()

    def do_info(self) -> Any:
        return self.token.info()

    def do_summary(self) -> tuple[Any, int]:
        return self.token.info(), len(self.token.list(""))

    def do_read_secret(self, path: str) -> framing.SecretTuple:
        return framing.pack_secret(self.token.read_secret(path))

    def do_read_many(self, paths: Sequence[str]) -> list[tuple[str, bool, Any]]:
        """(path, True, packed secret) or (path, False, (code, message)) per path, in order."""
        # Token.read_many raises temporary errors (the device went away) for the whole batch.
        found = self.token.read_many(list(paths))
        out: list[tuple[str, bool, Any]] = []
        for path in paths:
            outcome = found[path]
            if isinstance(outcome, HsmdError):
                out.append((path, False, (outcome.code, outcome.message)))
            else:
                out.append((path, True, framing.pack_secret(outcome)))
        return out

    def do_metadata(self, path: str) -> framing.MetadataTuple:
        return framing.pack_metadata(self.token.metadata(path))

    def do_checksum(self, path: str) -> str:
        return str(self.token.checksum(path))

    def do_checksums(self, paths: Sequence[str] | None, prefix: str) -> dict[str, str]:
        return dict(self.token.checksums(paths, prefix=prefix))

    def do_write(
        self,
        path: str,
        data: Mapping[str, bytes],
        metadata: SecretMetadata | None,
        create_only: bool,
        expected_checksum: str | None,
    ) -> tuple[str, bool]:
        result = self.token.write(
            path, data, metadata, create_only=create_only, expected_checksum=expected_checksum
        )
        return str(result.checksum), bool(result.changed)

    def do_delete(self, path: str, key: str | None) -> str | None:
        """Delete; return the secret's checksum afterwards (None when it is gone), for the change log."""
        self.token.delete(path, key)
        if key is None:
            return None
        try:
            return str(self.token.checksum(path))
        except NotFound:
            return None

    def do_list(self, prefix: str) -> list[str]:
        return list(self.token.list(prefix))

    def do_change_pin(self, old_pin: str, new_pin: str) -> None:
        self.token.change_pin(old_pin, new_pin)


def _error_tuple(err: BaseException) -> tuple[str, str, str | None]:
    if isinstance(err, HsmdError):
        return err.code, err.message, err.path
    return Internal.code, f"unexpected {type(err).__name__} in the device worker (see its log)", None


def _follow_parent() -> None:
    """Stop when the agent stops, and only then.

    Linux sends us SIGTERM when the agent dies (PR_SET_PDEATHSIG), so no worker outlives it holding
    the token. A SIGTERM or Ctrl-C sent to the whole process group while the agent lives is ignored:
    the agent drains its RPCs first and then sends "close".
    """
    parent = os.getppid()

    def on_term(_signum: int, _frame: object) -> None:
        if os.getppid() != parent:
            raise SystemExit(0)  # unwinds through serve(), which closes the token's sessions

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the agent died before the prctl took effect
        raise SystemExit(0)


def serve(sock: socket.socket) -> int:
    from hsmd.pkcs11.token import Token, TokenConfig  # only this process loads PyKCS11

    first = framing.recv(sock)
    if not first or first[0] != "open":
        return 2
    config = TokenConfig(**first[1])
    try:
        token = Token.open(config)
    except BaseException as exc:  # report why, then exit: the parent decides whether to retry
        code, message, _ = _error_tuple(exc)
        if not isinstance(exc, HsmdError):
            log.error("opening the token failed", exc_info=True)
        framing.send(sock, ("failed", code, message))
        return 1
    handler = Handler(token, _slow_calls())
    try:
        framing.send(sock, ("ready", token.info()))
        while True:
            message = framing.recv(sock)
            if message is None or message[0] == "close":
                break
            _, call_id, method, args = message
            try:
                result = handler.dispatch(method, args)
            except BaseException as exc:
                if not isinstance(exc, HsmdError):
                    log.error("device call failed", extra={"call": method}, exc_info=True)
                elif not isinstance(exc, NotFound):
                    log.info("device call refused", extra={"call": method, "code": exc.code})
                framing.send(sock, ("err", call_id, *_error_tuple(exc)))
                continue
            framing.send(sock, ("ok", call_id, result))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the agent went away; close the sessions below
    finally:
        token.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hsmd.agent.worker")
    parser.add_argument("--fd", type=int, required=True, help="inherited socket to the agent")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    setup_logging("agent-worker", args.log_level)
    _follow_parent()
    sock = socket.socket(fileno=args.fd)
    try:
        return serve(sock)
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
