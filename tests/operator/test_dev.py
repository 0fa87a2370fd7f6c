"""`make run` (hsmd dev) to completion: sandbox, SoftHSM agent, operator, broker and the examples come
up, the demo Secrets sync, kubectl works against the sandbox, and SIGTERM stops every process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.operator.stack import ROOT, wait_until

pytestmark = pytest.mark.slow


def dev_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def child_pids(state: Path) -> dict[str, int]:
    out = {}
    for ready in state.glob("*.ready"):
        out[ready.stem] = int(json.loads(ready.read_text())["pid"])
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_dev_check_syncs_the_examples(tmp_path: Path) -> None:
    state = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "hsmd", "dev", "--state-dir", str(state), "--check"],
                          cwd=ROOT, env=dev_env(), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    assert "All demo Secrets synced" in out
    for name in ("database-credentials", "api-key", "web-tls", "payments-stripe"):
        assert name in out
    assert "Forbidden" in out
    assert f"kubectl --kubeconfig {state / 'kubeconfig'} get hsmsecrets,secrets" in out
    assert (state / "pin").stat().st_mode & 0o077 == 0
    pids = child_pids(state)
    assert {"sandbox", "agent", "operator"} <= set(pids)
    assert not [name for name, pid in pids.items() if alive(pid)]
    # demo values never reach the logs
    for log in (state / "logs").iterdir():
        assert b"demo-database-password" not in log.read_bytes(), log


def test_dev_runs_until_sigterm_and_leaves_no_process(tmp_path: Path) -> None:
    state = tmp_path / "run"
    log = tmp_path / "dev.out"
    with open(log, "wb") as out:
        dev = subprocess.Popen([sys.executable, "-m", "hsmd", "dev", "--state-dir", str(state)], cwd=ROOT,
                               env=dev_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: b"press Ctrl-C" in log.read_bytes() or dev.poll() is not None, 400, "hsmd dev to be up",
                   interval=0.5)
        assert dev.poll() is None, log.read_text()
        assert b"All demo Secrets synced" in log.read_bytes(), log.read_text()
        kubectl = shutil.which("kubectl")
        assert kubectl, "kubectl is part of the development environment"
        got = subprocess.run([kubectl, "--kubeconfig", str(state / "kubeconfig"), "get", "hsmsecrets,secrets",
                              "-n", "default"], capture_output=True, text=True, timeout=60)
        assert got.returncode == 0, got.stderr
        assert "database-credentials" in got.stdout and "secret/api-key" in got.stdout
        pids = child_pids(state)
        assert {"sandbox", "agent", "operator"} <= set(pids)
        dev.send_signal(signal.SIGTERM)
        assert dev.wait(60) == 0, log.read_text()[-3000:]
        time.sleep(0.5)
        assert not [name for name, pid in pids.items() if alive(pid)]
    finally:
        if dev.poll() is None:
            dev.kill()
            dev.wait(10)
