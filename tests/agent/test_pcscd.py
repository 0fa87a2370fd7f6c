"""``hsmd agent --pcscd`` with the real pcscd binary: started, restarted when it dies, stopped with
the agent. pcsc-lite 1.9.9's daemon has a fixed socket, /run/pcscd/pcscd.comm."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from hsmd import errors
from hsmd.agent.pcscd import DEFAULT_SOCKET, PcscdSupervisor, pcscd_flags
from tests.fixtures.agent import make_agent_token, start_agent


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
        return True


def _children_named(parent: int, name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if comm == name and ppid == parent:
            found.append(int(entry.name))
    return found


def _wait(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) counts as gone
    return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"


pytestmark = pytest.mark.skipif(shutil.which("pcscd") is None, reason="pcscd is not installed (make setup)")


def test_flags_match_this_pcscd() -> None:
    flags = pcscd_flags("pcscd")
    assert flags[0] == "--foreground"
    # Debian's 1.9.9 rejects --disable-polkit ("unrecognized option"); pass it only where it exists
    help_text = os.popen("pcscd --help 2>&1").read()  # noqa: S605 - fixed command, test only
    assert ("--disable-polkit" in flags) == ("--disable-polkit" in help_text)


def test_agent_supervises_pcscd(tmp_path: Path) -> None:
    if _answers(DEFAULT_SOCKET):
        pytest.fail(f"a pcscd not started by this test already answers on {DEFAULT_SOCKET}; stop it first")
    tok = make_agent_token(tmp_path / "token")
    with start_agent(tok.token, pin_file=tok.pin_file, workdir=tmp_path / "agent", pcscd=True) as agent:
        pids = _children_named(agent.process.pid, "pcscd")
        assert len(pids) == 1 and _answers(DEFAULT_SOCKET)
        first = pids[0]

        os.kill(first, signal.SIGKILL)
        assert _wait(lambda: (p := _children_named(agent.process.pid, "pcscd")) and p[0] != first
                     and _answers(DEFAULT_SOCKET)), agent.logs()[-2000:]
        second = _children_named(agent.process.pid, "pcscd")[0]
        assert "pcscd exited; restarting it" in agent.logs()
        assert agent.client().is_connected()

        assert agent.terminate() == 0
        assert not _alive(second)
        assert not _answers(DEFAULT_SOCKET)
        assert "pcscd stopped" in agent.logs()


def test_pcscd_does_not_outlive_a_killed_agent(tmp_path: Path) -> None:
    """SIGKILL gives the agent no chance to stop pcscd: the kernel's parent-death signal does."""
    if _answers(DEFAULT_SOCKET):
        pytest.fail(f"a pcscd not started by this test already answers on {DEFAULT_SOCKET}; stop it first")
    tok = make_agent_token(tmp_path / "token")
    with start_agent(tok.token, pin_file=tok.pin_file, workdir=tmp_path / "agent", pcscd=True) as agent:
        (pcscd,) = _children_named(agent.process.pid, "pcscd")
        agent.process.kill()
        agent.process.wait()
        assert _wait(lambda: not _alive(pcscd)), "pcscd outlived its SIGKILLed agent"
        assert _wait(lambda: not _answers(DEFAULT_SOCKET))


def test_a_running_pcscd_is_not_fought_with(tmp_path: Path) -> None:
    sock_path = str(tmp_path / "pcscd.comm")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(sock_path)
        listener.listen()
        with pytest.raises(errors.FailedPrecondition, match="already answers"):
            PcscdSupervisor("pcscd", socket_path=sock_path).start()


STUBBORN = """
import signal, socket, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[-1]); s.listen()
while True:
    time.sleep(1)
"""


def test_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    """The SIGKILL fallback, with a stand-in daemon that ignores SIGTERM (real pcscd honours it)."""
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    launcher = tmp_path / "stubborn"
    launcher.write_text(f"#!/bin/sh\nexec {sys.executable} {script} \"$@\"\n")
    launcher.chmod(0o755)
    sock_path = str(tmp_path / "stub.comm")
    sup = PcscdSupervisor(str(launcher), socket_path=sock_path, extra_args=[sock_path], stop_timeout=0.5)
    sup.start()
    pid = sup.pid
    assert pid is not None and _answers(sock_path)
    started = time.monotonic()
    sup.stop()
    assert 0.4 < time.monotonic() - started < 5
    assert not _alive(pid)
