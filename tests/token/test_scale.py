"""No search ceiling (the Go operator stopped at 100 objects), and 50 concurrent threads mixing
reads, writes, lists and checksums without CKR_OPERATION_ACTIVE or a wrong answer."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import pytest

from hsmd.errors import HsmdError, NotFound
from hsmd.model import checksum
from hsmd.pkcs11 import Token
from tests.fixtures.softhsm import TestToken

Factory = Callable[..., tuple[Token, TestToken]]


@pytest.mark.slow
def test_list_is_complete_and_exact_beyond_1000_objects(hsm_token_factory: Factory) -> None:
    writer, info = hsm_token_factory(index_ttl=3600.0)
    paths = [f"ns-{i % 7}/app-{i}" for i in range(520)]  # 520 secrets = 1,040 objects (key + metadata)
    for path in paths:
        writer.write(path, {"v": path.encode()})
    # a fresh Token enumerates the token from scratch: nothing cut off at any search batch size
    with Token.open(info.config(index_ttl=0.0)) as fresh:
        started = time.monotonic()
        listed = fresh.list()
        first = time.monotonic() - started
        assert listed == sorted(paths)
        assert fresh.list("ns-3") == sorted(p for p in paths if p.startswith("ns-3/"))
        assert fresh.list("ns-3/app-10") == ["ns-3/app-10"]  # not app-101, app-1010...
        assert fresh.list("ns-3/app-1") == []
        sums = fresh.checksums(prefix="ns-5")
        assert sums == {p: checksum({"v": p.encode()}) for p in paths if p.startswith("ns-5/")}
        assert fresh.read(paths[-1]) == {"v": paths[-1].encode()}
        started = time.monotonic()
        assert len(fresh.checksums(paths)) == len(paths)
        bulk = time.monotonic() - started
    assert first < 10 and bulk < 10, (first, bulk)


@pytest.mark.slow
@pytest.mark.parametrize("index_ttl", [0.0, 2.0], ids=["index-every-call", "index-cached"])
def test_50_threads_mixing_reads_writes_lists(hsm_token_factory: Factory, index_ttl: float) -> None:
    tok, _ = hsm_token_factory(index_ttl=index_ttl, sessions=4)
    paths = [f"c/{i}" for i in range(10)]
    # every value of a path carries the path and a version; a reader can tell a torn or foreign answer
    for path in paths:
        tok.write(path, {"a": f"{path}:0".encode(), "b": f"{path}:0".encode()})
    errors: list[BaseException] = []
    counts = {"read": 0, "write": 0, "list": 0, "checksums": 0, "delete": 0}
    lock = threading.Lock()
    start = threading.Barrier(50)

    def worker(n: int) -> None:
        rnd = random.Random(n)
        start.wait()
        try:
            for i in range(12):
                path = rnd.choice(paths)
                op = rnd.choice(("read", "read", "write", "list", "checksums"))
                if op == "read":
                    try:
                        data = tok.read(path)
                    except NotFound:
                        data = None
                    if data is not None:
                        assert set(data) == {"a", "b"}, data
                        assert data["a"] == data["b"] and data["a"].startswith(f"{path}:".encode()), data
                elif op == "write":
                    version = f"{path}:{n}-{i}".encode()
                    result = tok.write(path, {"a": version, "b": version})
                    assert result.checksum == checksum({"a": version, "b": version})
                elif op == "list":
                    listed = tok.list("c")
                    assert set(listed) <= set(paths) and listed == sorted(listed)
                    assert len(listed) >= len(paths) - 1  # at most the one path being recreated is missing
                else:
                    sums = tok.checksums(prefix="c")
                    assert set(sums) <= set(paths)
                with lock:
                    counts[op] += 1
            if n == 0:  # one thread deletes and recreates a path while the others work
                tok.delete(paths[0])
                tok.write(paths[0], {"a": b"c/0:re", "b": b"c/0:re"})
                with lock:
                    counts["delete"] += 1
        except (AssertionError, HsmdError) as err:
            with lock:
                errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert not errors, errors[:5]
    assert sum(counts.values()) == 50 * 12 + 1
    # the final state is exactly one complete version per path (no leftovers, nothing torn)
    with Token.open(_fresh_config(tok)) as fresh:
        assert fresh.list("c") == sorted(paths)
        for path in paths:
            data = fresh.read(path)
            assert data["a"] == data["b"] and data == tok.read(path)
            assert len(fresh._snapshot(path)) == 3


def _fresh_config(tok: Token):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    return replace(tok.config, index_ttl=0.0)
