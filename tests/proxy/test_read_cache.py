"""The broker's read cache end to end: a real ``hsmd proxy`` (its default read cache, and one with
``--read-cache-ttl 0``) in front of a real SoftHSM agent, identities from the sandbox. The cached
brokers run with a 30 s TTL, so anything seen sooner was the agent's change stream at work, not
expiry. The cache logic under races is in test_read_cache_logic.py."""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from hsmd.agent.client import AgentClient
from tests.fixtures.agent import RunningAgent, make_agent_token, start_agent
from tests.proxy.conftest import one_agent
from tests.proxy.helpers import ROOT, RunningProxy, mint, start_proxy, wait_until

POLICY = """
rules:
  - namespaces: [cache]
    serviceAccounts: [app]
    paths: ["**"]
    verbs: ["*"]
"""
TTL = "30"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class Broker:
    def __init__(self, proxy: RunningProxy, token: str) -> None:
        self.proxy = proxy
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.session.request(method, self.proxy.url + path, timeout=30, **kwargs)

    def get(self, path: str) -> requests.Response:
        return self.call("GET", "/api/v1/hsm/secrets/" + path)

    def value(self, path: str) -> bytes | int:
        """The secret's value of key ``k``, or the HTTP status when it could not be read."""
        r = self.get(path)
        return base64.b64decode(r.json()["data"]["k"]) if r.status_code == 200 else r.status_code

    def put(self, path: str, value: bytes) -> None:
        r = self.call("PUT", "/api/v1/hsm/secrets/" + path, json={"data": {"k": b64(value)}})
        assert r.status_code == 200, r.text

    def cache(self) -> dict[str, Any]:
        r = self.call("GET", "/api/v1/hsm/info")
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()["readCache"]
        return doc

    def agent_cache(self) -> dict[str, Any]:
        (only,) = self.cache()["agents"]
        return dict(only)

    def wait_live(self, live: bool = True, timeout: float = 30.0) -> None:
        wait_until(lambda: self.agent_cache()["live"] is live, timeout, 0.1)


def agent_lookups(agent: RunningAgent) -> int:
    """Reads that reached the agent: its own read cache counts every one (hits and misses)."""
    stats = requests.get(agent.health_url + "/healthz", timeout=10).json()["read_cache"]
    return int(stats["hits"]) + int(stats["misses"])


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    with one_agent(tmp_path_factory.mktemp("cache-agent")) as running:
        yield running


@pytest.fixture(scope="module")
def token(broker_sandbox: Any) -> str:
    return mint(broker_sandbox.api_client(), "cache", "app")


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("cache-policy") / "policy.yaml"
    path.write_text(POLICY)
    return str(path)


def broker_on(workdir: Path, agent: RunningAgent, kubeconfig: str, policy: str, *flags: str) -> Any:
    return start_proxy(workdir, agents=[agent.address], kubeconfig=kubeconfig, extra=["--policy", policy, *flags])


@pytest.fixture(scope="module")
def cached(agent: RunningAgent, broker_sandbox: Any, policy_file: str, token: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with broker_on(tmp_path_factory.mktemp("cached"), agent, broker_sandbox.kubeconfig, policy_file,
                   "--read-cache-ttl", TTL) as proxy:
        broker = Broker(proxy, token)
        broker.wait_live()
        yield broker


@pytest.fixture(scope="module")
def uncached(agent: RunningAgent, broker_sandbox: Any, policy_file: str, token: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with broker_on(tmp_path_factory.mktemp("uncached"), agent, broker_sandbox.kubeconfig, policy_file,
                   "--read-cache-ttl", "0") as proxy:
        yield Broker(proxy, token)


@pytest.fixture
def direct(agent: RunningAgent) -> AgentClient:
    return agent.client()


def test_a_cached_read_is_served_without_an_agent_call(cached: Broker, uncached: Broker,
                                                        agent: RunningAgent) -> None:
    cached.put("cache/a", b"v1")
    first = cached.get("cache/a")
    assert first.status_code == 200
    before, hits = agent_lookups(agent), cached.agent_cache()["hits"]
    again = [cached.get("cache/a") for _ in range(3)]
    assert agent_lookups(agent) == before  # not one read reached the agent
    assert cached.agent_cache()["hits"] == hits + 3
    plain = uncached.get("cache/a")
    for answer in [first, *again]:
        assert answer.status_code == 200 and answer.content == plain.content  # byte for byte
        assert answer.headers["ETag"] == plain.headers["ETag"]
    audit = [line for line in cached.proxy.audit().splitlines() if '"path":"cache/a"' in line]
    assert sum('"verb":"get"' in line and '"decision":"allow"' in line for line in audit) == 4  # every request


def test_policy_still_decides_every_cached_read(cached: Broker, broker_sandbox: Any) -> None:
    cached.put("cache/policy", b"v")
    assert cached.get("cache/policy").status_code == 200
    stranger = Broker(cached.proxy, mint(broker_sandbox.api_client(), "other", "app"))
    r = stranger.get("cache/policy")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert stranger.call("GET", "/api/v1/hsm/secrets/cache/policy",
                         headers={"Authorization": "Bearer nope"}).status_code == 401


def test_writes_through_the_broker_are_read_back_at_once(cached: Broker) -> None:
    cached.put("cache/b", b"v1")
    assert cached.value("cache/b") == b"v1" and cached.value("cache/b") == b"v1"  # cached now
    cached.put("cache/b", b"v2")
    assert cached.value("cache/b") == b"v2"
    r = cached.call("PATCH", "/api/v1/hsm/secrets/cache/b", json={"data": {"k": b64(b"v3")}})
    assert r.status_code == 200, r.text
    assert cached.value("cache/b") == b"v3"
    assert cached.call("DELETE", "/api/v1/hsm/secrets/cache/b").status_code == 200
    assert cached.value("cache/b") == 404


def test_a_write_through_the_agent_is_seen_by_its_change_event(cached: Broker, direct: AgentClient) -> None:
    cached.put("cache/c", b"v1")
    assert cached.value("cache/c") == b"v1" and cached.value("cache/c") == b"v1"
    hits = cached.agent_cache()["hits"]
    assert hits >= 1
    direct.write("cache/c", {"k": b"v2"})  # another broker replica, the operator, hsmctl elsewhere
    began = time.monotonic()
    wait_until(lambda: cached.value("cache/c") == b"v2", 5.0, 0.01)
    assert time.monotonic() - began < 5.0 < float(TTL)


def test_a_delete_through_the_agent_is_seen_by_its_change_event(cached: Broker, direct: AgentClient) -> None:
    cached.put("cache/d", b"v1")
    assert cached.value("cache/d") == b"v1" and cached.value("cache/d") == b"v1"
    direct.delete("cache/d")
    began = time.monotonic()
    wait_until(lambda: cached.value("cache/d") == 404, 5.0, 0.01)
    assert time.monotonic() - began < 5.0


def test_read_cache_ttl_zero_turns_it_off(uncached: Broker, direct: AgentClient) -> None:
    assert uncached.cache() == {"enabled": False}
    uncached.put("cache/f", b"v1")
    assert uncached.value("cache/f") == b"v1"
    direct.write("cache/f", {"k": b"v2"})
    assert uncached.value("cache/f") == b"v2"  # no change event needed: nothing was kept


def test_a_negative_read_cache_setting_is_refused() -> None:
    for flag, value in (("--read-cache-ttl", "-1"), ("--read-cache-entries", "-1"), ("--read-cache-mib", "-1")):
        done = subprocess.run([sys.executable, "-m", "hsmd", "proxy", "--agent", "127.0.0.1:1", flag, value],
                              cwd=ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert done.returncode == 2 and f"{flag} must be 0 (off) or a positive number" in done.stderr


def test_an_agent_restart_clears_the_cache(broker_sandbox: Any, policy_file: str, token: str,
                                           tmp_path: Path) -> None:
    """The stream breaks (agent down: nothing is served from the cache), the token changes while
    no agent of this broker could report it, and the restarted agent (new epoch) is read afresh."""
    tok = make_agent_token(tmp_path / "token")
    with start_agent(tok.token, pin_file=tok.pin_file, workdir=tmp_path / "agent") as first:
        address = first.address
        with broker_on(tmp_path / "proxy", first, broker_sandbox.kubeconfig, policy_file,
                       "--read-cache-ttl", TTL) as proxy:
            broker = Broker(proxy, token)
            broker.wait_live()
            broker.put("cache/e", b"before")
            assert broker.value("cache/e") == b"before" and broker.value("cache/e") == b"before"
            clears = broker.agent_cache()["clears"]
            assert first.terminate() == 0
            broker.wait_live(False)
            assert broker.value("cache/e") == 503  # the cached value is not served while the stream is down
            with start_agent(tok.token, pin_file=tok.pin_file, workdir=tmp_path / "other") as other, \
                    AgentClient(other.address, timeout=10) as client:
                client.write("cache/e", {"k": b"while down"})  # the broker's agent never hears of it
            with start_agent(tok.token, pin_file=tok.pin_file, workdir=tmp_path / "again", listen=address):
                broker.wait_live(True, timeout=60)
                assert broker.value("cache/e") == b"while down"
            assert broker.agent_cache()["clears"] > clears
