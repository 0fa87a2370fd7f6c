"""Agent lifecycle: one agent per token directory, start-up failures that are clear and final, PINs
kept out of argv and logs, and SIGTERM draining in-flight calls before a clean exit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from hsmd import errors
from hsmd.agent import locks
from tests.agent.test_watch import Collector
from tests.fixtures.agent import (
    ROOT,
    AgentToken,
    RunningAgent,
    agent_command,
    agent_env,
    make_agent_token,
    start_agent,
)


def run_agent_once(token: object, pin_file: str, tmp_path: Path, **flags: object) -> subprocess.CompletedProcess[str]:
    cmd = agent_command(token, pin_file, tmp_path / "never-ready.json", **flags)
    return subprocess.run(cmd, cwd=ROOT, env=agent_env(token), capture_output=True, text=True, timeout=30, check=False)


def test_second_agent_on_the_same_token_dir_fails_fast(agent: RunningAgent, tmp_path: Path) -> None:
    started = time.monotonic()
    proc = run_agent_once(agent.token, agent.pin_file, tmp_path)
    assert proc.returncode == 1
    assert time.monotonic() - started < 10
    assert f"another hsmd agent (pid {agent.process.pid}) already serves the SoftHSM2 token directory" in proc.stderr
    assert agent.client().is_connected()  # the first one is untouched


def test_ports_in_use_fail_clearly(agent: RunningAgent, tmp_path: Path, config_token: AgentToken) -> None:
    for flag, taken in (("listen", agent.address), ("health_listen", agent.ready["health"])):
        proc = run_agent_once(config_token.token, config_token.pin_file, tmp_path, **{flag: taken})
        assert proc.returncode == 1, proc.stderr
        assert f"cannot listen on {taken}" in proc.stderr


def test_lock_per_token_for_other_libraries(tmp_path: Path) -> None:
    env = {"HSMD_RUNTIME_DIR": str(tmp_path)}
    first = locks.token_lock("/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so", "0123", env).acquire()
    try:
        with pytest.raises(errors.FailedPrecondition, match=f"pid {os.getpid()}"):
            locks.token_lock("/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so", "0123", env).acquire()
        other = locks.token_lock("/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so", "4567", env).acquire()
        other.release()
    finally:
        first.release()
    locks.token_lock("/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so", "0123", env).acquire().release()


def test_softhsm_token_dir_is_read_from_the_conf(tmp_path: Path) -> None:
    conf = tmp_path / "softhsm2.conf"
    conf.write_text("# comment\nlog.level = ERROR\ndirectories.tokendir = /some/where/tokens # trailing\n")
    assert locks.softhsm_token_dir({"SOFTHSM2_CONF": str(conf)}) == Path("/some/where/tokens")
    conf.write_text("log.level = ERROR\n")
    with pytest.raises(errors.InvalidArgument, match=r"sets no directories\.tokendir"):
        locks.softhsm_token_dir({"SOFTHSM2_CONF": str(conf)})


def test_wrong_pin_is_final_and_never_logged(tmp_path: Path) -> None:
    tok = make_agent_token(tmp_path / "token")
    bad = tmp_path / "bad-pin"
    bad.write_text("WRONG-PIN-31337")
    proc = run_agent_once(tok.token, str(bad), tmp_path)
    assert proc.returncode == 1
    assert "hsmd agent: cannot log in to the token: the PIN is incorrect" in proc.stderr
    assert '"code":"permission_denied"' in proc.stderr
    assert "WRONG-PIN-31337" not in proc.stderr + proc.stdout
    assert "restart" not in proc.stderr  # one login attempt, no retries: retries lock real tokens


@pytest.fixture(scope="module")
def config_token(tmp_path_factory: pytest.TempPathFactory) -> AgentToken:
    return make_agent_token(tmp_path_factory.mktemp("config-token"))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"pin_file": "/nonexistent/pin"}, "cannot read the PIN file /nonexistent/pin"),
        ({"pin_env": "HSMD_TEST_NO_SUCH_VAR"}, "HSMD_TEST_NO_SUCH_VAR"),
        ({"tls_cert": "/etc/hostname"}, "needs all three"),
        ({"listen": "nowhere"}, "--listen must be HOST:PORT"),
        ({"pkcs11_library": "/nonexistent/lib.so"}, "does not exist"),
    ],
)
def test_bad_configuration_exits_2_with_a_clear_message(
    flags: dict[str, str], message: str, tmp_path: Path, config_token: AgentToken
) -> None:
    flags = dict(flags)
    pin_file = flags.pop("pin_file", config_token.pin_file)
    proc = run_agent_once(config_token.token, pin_file, tmp_path, **flags)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_pin_from_env_and_never_in_argv(tmp_path: Path) -> None:
    tok = make_agent_token(tmp_path / "token")
    with start_agent(tok.token, pin_file=tok.pin_file, workdir=tmp_path / "agent", pin_env="HSMD_AGENT_PIN",
                     env={"HSMD_AGENT_PIN": tok.pin}) as agent:
        assert agent.client().is_connected()
        for pid in (agent.process.pid, agent.worker_pid):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
            assert tok.pin not in cmdline
        ready = json.loads(Path(next((tmp_path / "agent").glob("*.ready.json"))).read_text())
        assert set(ready) >= {"grpc", "health", "pid"}
    assert tok.pin not in agent.logs()


def test_sigterm_drains_in_flight_calls_then_exits_0(tmp_path: Path) -> None:
    tok = make_agent_token(tmp_path / "token")
    env = {"HSMD_AGENT_TEST_SLOW_CALLS": "list=2"}
    with start_agent(tok.token, pin_file=tok.pin_file, workdir=tmp_path / "agent", env=env, grace=10) as agent:
        client = agent.client()
        client.write("drain/a", {"k": b"v"})
        watch = Collector(client.watch_changes())
        watch.next(skip_heartbeats=False)
        result: dict[str, object] = {}

        def slow_list() -> None:
            try:
                result["paths"] = client.list()
            except errors.HsmdError as exc:
                result["error"] = exc

        caller = threading.Thread(target=slow_list)
        caller.start()
        time.sleep(0.5)  # the list is in flight in the worker
        sent = time.monotonic()
        agent.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(errors.Unavailable):  # no new calls once draining
            client.read("drain/a")
        caller.join(15)
        assert result == {"paths": ["drain/a"]}  # the in-flight call finished
        with pytest.raises(errors.Unavailable):  # the change stream was ended, not left hanging
            watch.next(timeout=5)
        assert agent.process.wait(15) == 0
        assert time.monotonic() - sent < 6  # the watch stream did not hold the 10 s grace
        with pytest.raises(ProcessLookupError):
            os.kill(agent.worker_pid, 0)  # the worker is gone too
        logs = agent.logs()
        assert "draining" in logs and "agent stopped" in logs
        for line in logs.splitlines():
            json.loads(line)  # every log line is JSON
