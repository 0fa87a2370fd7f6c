"""The agent's read cache (hsmd.agent.reads) on a real agent and SoftHSM token: repeat reads skip the
device, every change made through the agent is seen by the next read, concurrent writers never let
a stale value back in, changes behind the agent's back show within the TTL, a worker restart drops
everything, and ``--read-cache-ttl 0`` turns it off."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hsmd import errors
from tests.fixtures.agent import RunningAgent, start_agent
from tests.token.helpers import run_python


def healthz(agent: RunningAgent) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(agent.health_url + "/healthz", timeout=5) as response:  # noqa: S310 - loopback
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def cache_stats(agent: RunningAgent) -> dict[str, int]:
    stats: dict[str, int] = healthz(agent)[1]["read_cache"]
    return stats


def test_repeat_reads_are_served_from_the_cache(agent: RunningAgent) -> None:
    client = agent.client()
    client.write("app/db", {"password": b"s3cret", "user": b"app"})
    first = client.read("app/db")
    before = cache_stats(agent)
    for _ in range(20):
        assert client.read("app/db") == first
    assert client.read_many(["app/db"])["app/db"] == first
    assert client.checksum("app/db") == first.checksum
    assert client.metadata("app/db") == first.metadata
    after = cache_stats(agent)
    assert after["hits"] - before["hits"] == 23
    assert after["entries"] == 1 and after["bytes"] > len(b"s3cretapp")


def test_changes_through_the_agent_are_seen_at_once(agent: RunningAgent) -> None:
    client = agent.client()
    client.write("app/db", {"password": b"v1"})
    client.write("app/db2", {"password": b"other"})
    assert client.read("app/db").data == {"password": b"v1"}
    client.write("app/db", {"password": b"v2", "user": b"app"})
    assert client.read("app/db").data == {"password": b"v2", "user": b"app"}
    assert client.read_many(["app/db"])["app/db"].data == {"password": b"v2", "user": b"app"}
    client.delete("app/db", "user")
    assert client.read("app/db").data == {"password": b"v2"}
    client.delete("app/db")
    with pytest.raises(errors.NotFound):
        client.read("app/db")
    with pytest.raises(errors.NotFound):
        client.checksum("app/db")
    assert isinstance(client.read_many(["app/db"])["app/db"], errors.NotFound)
    # exact paths: db2 kept its value throughout
    assert client.read("app/db2").data == {"password": b"other"}


def test_a_failed_conditional_write_keeps_reads_right(agent: RunningAgent) -> None:
    client = agent.client()
    client.write("app/cas", {"v": b"1"})
    assert client.read("app/cas").data == {"v": b"1"}
    with pytest.raises(errors.HsmdError):
        client.write("app/cas", {"v": b"2"}, expected_checksum="sha256:" + "0" * 64)
    assert client.read("app/cas").data == {"v": b"1"}


def test_concurrent_readers_never_see_a_value_older_than_the_last_finished_write(agent: RunningAgent) -> None:
    writer, readers = agent.client(), [agent.client() for _ in range(4)]
    writer.write("race/x", {"n": b"0"})
    done = {"n": 0}  # the last version whose write returned
    stop = threading.Event()
    stale: list[tuple[int, int]] = []

    def read_loop(client: Any) -> None:
        while not stop.is_set():
            floor = done["n"]  # any read starting now must see at least this version
            seen = int(client.read("race/x").data["n"])
            if seen < floor:
                stale.append((seen, floor))

    threads = [threading.Thread(target=read_loop, args=(c,)) for c in readers]
    for t in threads:
        t.start()
    try:
        for n in range(1, 41):
            writer.write("race/x", {"n": str(n).encode()})
            done["n"] = n
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not stale, stale[:5]
    assert writer.read("race/x").data == {"n": b"40"}


def test_changes_behind_the_agents_back_show_within_the_ttl(
    softhsm_factory: Callable[..., Any], tmp_path: Path
) -> None:
    token = softhsm_factory()
    with start_agent(token, workdir=tmp_path / "agent", read_cache_ttl=0.5) as agent:
        client = agent.client()
        client.write("oob/x", {"v": b"agent"})
        assert client.read("oob/x").data == {"v": b"agent"}
        # another process writes the same token directly (pkcs11-tool, a second application)
        done = run_python(token, """
            from hsmd.pkcs11.token import Token, TokenConfig
            tok = Token.open(TokenConfig(**TOKEN_CONFIG))
            tok.write("oob/x", {"v": b"direct"})
            tok.close()
        """)
        assert done.returncode == 0, done.stderr
        # the bound is the cache TTL plus the token layer's object index TTL (2 s)
        deadline = time.monotonic() + 0.5 + 2.0 + 2.0
        while client.read("oob/x").data != {"v": b"direct"}:
            assert time.monotonic() < deadline, "an out-of-band write stayed hidden past the TTL bound"
            time.sleep(0.1)


def test_a_worker_restart_drops_the_cache(agent: RunningAgent) -> None:
    client = agent.client()
    client.write("keep/x", {"v": b"1"})
    client.read("keep/x")
    clears = cache_stats(agent)["clears"]
    os.kill(agent.worker_pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while True:
        status, body = healthz(agent)
        if status == 200 and body["restarts"] == 1:
            break
        assert time.monotonic() < deadline, body
        time.sleep(0.1)
    # the worker's exit and its restart each dropped the cache: the next read goes to the new worker
    assert body["read_cache"]["clears"] > clears
    assert body["read_cache"]["entries"] == 0
    assert client.read("keep/x").data == {"v": b"1"}


def test_ttl_zero_turns_the_cache_off(softhsm_factory: Callable[..., Any], tmp_path: Path) -> None:
    with start_agent(softhsm_factory(), workdir=tmp_path / "agent", read_cache_ttl=0) as agent:
        client = agent.client()
        client.write("off/x", {"v": b"1"})
        for _ in range(5):
            assert client.read("off/x").data == {"v": b"1"}
        stats = cache_stats(agent)
        assert stats["hits"] == 0 and stats["entries"] == 0 and stats["fills"] == 0


@pytest.mark.parametrize("flag", ["--read-cache-ttl=-1", "--read-cache-entries=-5", "--read-cache-mib=-1"])
def test_negative_cache_settings_are_refused(flag: str, softhsm_factory: Callable[..., Any]) -> None:
    token = softhsm_factory()
    done = subprocess.run(
        [sys.executable, "-m", "hsmd", "agent", "--pkcs11-library", token.library, "--token-label", token.label,
         "--pin-file", token.pin_file, "--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0", flag],
        capture_output=True, text=True, timeout=60, env={**os.environ, "SOFTHSM2_CONF": token.conf}, check=False,
    )
    assert done.returncode == 2
    assert "must not be negative" in done.stderr


def test_a_subscriber_reading_on_each_change_event_never_gets_the_replaced_value(agent: RunningAgent) -> None:
    """The operator reads a secret when the agent announces a change of it; readers keep the cache
    warm meanwhile. The read must return the announced version or a newer one."""
    from hsmd.model import checksum

    writer, subscriber, readers = agent.client(), agent.client(), [agent.client() for _ in range(3)]
    writer.write("ev/x", {"n": b"0"})
    version_of = {checksum({"n": str(n).encode()}): n for n in range(41)}
    stream = subscriber.watch_changes(prefix="ev")
    stop = threading.Event()
    late: list[tuple[int, int]] = []
    seen: list[int] = []

    def keep_reading(client: Any) -> None:
        while not stop.is_set():
            client.read("ev/x")

    def follow() -> None:
        reader = agent.client()
        for change in stream:
            if change.kind != "written":
                continue
            announced = version_of[change.checksum]
            got = version_of[reader.read("ev/x").checksum]
            seen.append(announced)
            if got < announced:
                late.append((got, announced))
            if announced == 40:
                return

    threads = [threading.Thread(target=keep_reading, args=(c,)) for c in readers]
    follower = threading.Thread(target=follow)
    for t in [*threads, follower]:
        t.start()
    try:
        for n in range(1, 41):
            writer.write("ev/x", {"n": str(n).encode()})
        follower.join(30)
    finally:
        stop.set()
        stream.stop()
        for t in threads:
            t.join()
    assert seen and seen[-1] == 40
    assert not late, late[:5]
