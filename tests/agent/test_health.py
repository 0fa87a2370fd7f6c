"""Health: /healthz, /readyz, Health, IsConnected and grpc.health.v1 stay fast while the device is
slow (the token runs in a worker process), report a stuck device, and follow a worker restart.

The slow device is simulated with HSMD_AGENT_TEST_SLOW_CALLS (see hsmd.agent.worker): the worker
spends the given time making real PKCS#11 calls (Token.ping) before the named call, so it is busy
in the device layer exactly as with a slow token; the agent process is what is under test.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hsmd import errors
from tests.fixtures.agent import RunningAgent, make_agent_token, start_agent


def get(url: str, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http://127.0.0.1 only
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_endpoints_and_process_split(agent: RunningAgent) -> None:
    assert get(agent.health_url + "/healthz") == (
        200, {"status": "ok", "message": "token responsive", "worker": "ready", "worker_pid": agent.worker_pid,
              "in_flight": 0, "restarts": 0, "read_cache": get(agent.health_url + "/healthz")[1]["read_cache"]},
    )
    status, body = get(agent.health_url + "/readyz")
    assert status == 200 and body["status"] == "ok"
    assert get(agent.health_url + "/nope")[0] == 404
    with grpc.insecure_channel(agent.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "hsm.v1.HSMAgent"):
            deadline = time.monotonic() + 5
            while True:  # the monitor flips NOT_SERVING -> SERVING after its first probe
                answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                if answer.status == health_pb2.HealthCheckResponse.SERVING or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
    # the gRPC process never loads PyKCS11 or the PKCS#11 module; the worker does
    assert "libsofthsm2" not in _maps(agent.process.pid) and "PyKCS11" not in _maps(agent.process.pid)
    assert "libsofthsm2" in _maps(agent.worker_pid)


def test_health_p99_under_100ms_while_a_slow_device_call_runs(tmp_path: Path) -> None:
    tok = make_agent_token(tmp_path / "token")
    env = {"HSMD_AGENT_TEST_SLOW_CALLS": "list=3"}
    with start_agent(tok.token, pin_file=tok.pin_file, workdir=tmp_path / "agent", env=env, health_timeout=5) as agent:
        client = agent.client()
        slow_done: dict[str, float] = {}

        def slow() -> None:
            started = time.monotonic()
            client.list()
            slow_done["seconds"] = time.monotonic() - started

        worker = threading.Thread(target=slow)
        worker.start()
        time.sleep(0.2)  # the list is now in the device worker
        samples: dict[str, list[float]] = {"healthz": [], "Health": [], "IsConnected": []}
        in_flight_seen = 0
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            status, body = get(agent.health_url + "/healthz")
            samples["healthz"].append(time.perf_counter() - t0)
            assert status == 200, body
            in_flight_seen = max(in_flight_seen, body["in_flight"])
            t0 = time.perf_counter()
            assert client.health()[0] == "healthy"
            samples["Health"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            assert client.is_connected() is True
            samples["IsConnected"].append(time.perf_counter() - t0)
        assert "seconds" not in slow_done, "the slow call finished before the measurement ended"
        worker.join(10)
        assert slow_done["seconds"] >= 3.0
        assert in_flight_seen == 1
        for name, values in samples.items():
            assert len(values) >= 20, name
            assert p99(values) < 0.100, f"{name} p99 {p99(values) * 1000:.1f} ms"


def test_a_device_call_older_than_the_timeout_is_unhealthy(tmp_path: Path) -> None:
    tok = make_agent_token(tmp_path / "token")
    env = {"HSMD_AGENT_TEST_SLOW_CALLS": "list=2.5"}
    with start_agent(tok.token, pin_file=tok.pin_file, workdir=tmp_path / "agent", env=env, health_timeout=1) as agent:
        client = agent.client()
        worker = threading.Thread(target=client.list)
        worker.start()
        time.sleep(0.3)
        assert get(agent.health_url + "/healthz")[0] == 200  # busy but younger than the timeout
        time.sleep(1.2)
        t0 = time.perf_counter()
        status, body = get(agent.health_url + "/healthz")
        assert time.perf_counter() - t0 < 0.1
        assert status == 503 and "running for" in body["message"]
        assert get(agent.health_url + "/readyz")[0] == 503
        assert client.health()[0] == "unhealthy" and client.is_connected() is False
        worker.join(10)
        assert get(agent.health_url + "/healthz")[0] == 200


def test_a_dead_worker_is_restarted(tmp_path: Path) -> None:
    tok = make_agent_token(tmp_path / "token")
    env = {"HSMD_AGENT_TEST_SLOW_CALLS": "list=5"}
    with start_agent(tok.token, pin_file=tok.pin_file, workdir=tmp_path / "agent", env=env) as agent:
        client = agent.client()
        client.write("keep/me", {"k": b"v"})
        outcome: list[object] = []

        def slow() -> None:
            try:
                outcome.append(client.list())
            except errors.HsmdError as exc:
                outcome.append(exc)

        caller = threading.Thread(target=slow)
        caller.start()
        time.sleep(0.3)
        old = agent.worker_pid
        os.kill(old, signal.SIGKILL)
        caller.join(3)
        assert len(outcome) == 1 and isinstance(outcome[0], errors.Unavailable), outcome  # failed, not hung
        assert "exited" in str(outcome[0])
        status, body = get(agent.health_url + "/healthz")
        if status == 503:  # unless the restart already happened
            assert body["worker"] in ("restarting", "ready")
        with grpc.insecure_channel(agent.address) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                status, body = get(agent.health_url + "/healthz")
                serving = check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
                if status == 200 and serving == health_pb2.HealthCheckResponse.SERVING:
                    break
                time.sleep(0.1)
        assert status == 200 and body["worker_pid"] != old and body["restarts"] == 1
        assert dict(client.read("keep/me").data) == {"k": b"v"}
        logs = agent.logs()
        assert "device worker exited" in logs and "device worker restarted" in logs


def test_a_full_device_queue_refuses_calls_and_health_stays_fast(tmp_path: Path) -> None:
    tok = make_agent_token(tmp_path / "token")
    env = {"HSMD_AGENT_TEST_SLOW_CALLS": "list=1.5"}
    with start_agent(tok.token, pin_file=tok.pin_file, workdir=tmp_path / "agent", env=env, max_queued=3) as agent:
        client = agent.client()
        outcomes: list[object] = []

        def call() -> None:
            try:
                outcomes.append(client.list())
            except errors.HsmdError as exc:
                outcomes.append(exc)

        callers = [threading.Thread(target=call) for _ in range(8)]
        for t in callers:
            t.start()
        time.sleep(0.3)
        latencies = []
        for _ in range(20):
            t0 = time.perf_counter()
            assert client.health()[0] == "healthy"
            latencies.append(time.perf_counter() - t0)
        for t in callers:
            t.join(15)
        busy = [o for o in outcomes if isinstance(o, errors.Busy)]
        assert len(busy) == 5 and all(o.temporary for o in busy)  # 3 ran, 5 were refused at once
        assert sum(1 for o in outcomes if o == []) == 3
        assert p99(latencies) < 0.100
