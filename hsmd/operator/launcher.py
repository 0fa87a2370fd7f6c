"""Starts ansible-playbook for the operator and takes the whole run down with it.

ansible-runner starts ``python -m hsmd.operator.launcher ansible-playbook <playbook> <args>``. The
launcher runs ansible-playbook as its child and, when told to stop, kills every process of the run.
"Every" matters: ansible's worker processes start sessions of their own, so killing the process
group (what ansible-runner does on cancel) leaves them behind, blocked forever on a pipe to the
dead ansible-playbook. So the launcher

- is a child subreaper (PR_SET_CHILD_SUBREAPER): orphaned workers and modules become its children;
- asks for SIGTERM when the operator dies (PR_SET_PDEATHSIG) - a SIGKILLed operator must not leave
  a batch running on its own, writing Secrets and status after it is gone;
- on SIGTERM or SIGHUP kills all its descendants, found through /proc, then itself;
- writes its pid to ``$HSMD_LAUNCHER_PIDFILE`` so the operator can stop a run this way (cancel on
  shutdown, run timeout) instead of ansible-runner's process-group kill.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from pathlib import Path
from types import FrameType

PARENT_ENV = "HSMD_OPERATOR_PID"
PIDFILE_ENV = "HSMD_LAUNCHER_PIDFILE"
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (by parent pid), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_descendants() -> None:
    for pid in descendants(os.getpid()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _take_down(_signum: int, _frame: FrameType | None) -> None:
    kill_descendants()
    with contextlib.suppress(OSError):
        os.killpg(0, signal.SIGKILL)  # ourselves included
    os._exit(137)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m hsmd.operator.launcher PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    with contextlib.suppress(OSError):  # not Linux: no parent-death signal; SIGHUP still works
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1)
    parent = int(os.environ.get(PARENT_ENV, "0") or 0)
    if parent and os.getppid() != parent:
        return 1  # the operator died before we could ask to follow it
    signal.signal(signal.SIGTERM, _take_down)
    signal.signal(signal.SIGHUP, _take_down)
    pidfile = os.environ.get(PIDFILE_ENV)
    if pidfile:
        Path(pidfile).write_text(str(os.getpid()))
    child = os.fork()
    if child == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        try:
            os.execvp(args[0], args)  # noqa: S606 - ansible-playbook, argv from ansible-runner
        except OSError as exc:
            print(f"hsmd launcher: cannot run {args[0]}: {exc.strerror}", file=sys.stderr)
        os._exit(127)
    status = 0
    while True:
        try:
            pid, wstatus = os.wait()  # our child, or an orphan handed to us as subreaper
        except ChildProcessError:
            break
        if pid == child:
            status = wstatus
            kill_descendants()  # a finished run leaves nothing behind
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    raise SystemExit(main())
