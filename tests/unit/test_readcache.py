"""hsmd.readcache: hits, expiry, bounds, and the ticket rule that keeps raced reads out."""

from __future__ import annotations

import threading

import pytest

from hsmd.readcache import ReadCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def filled(cache: ReadCache[bytes], path: str, value: bytes) -> bool:
    return cache.put(path, value, cache.ticket())


def test_hit_after_fill_and_miss_before() -> None:
    cache: ReadCache[bytes] = ReadCache(1.0)
    assert cache.get("db") is None
    assert filled(cache, "db", b"v1")
    assert cache.get("db") == b"v1"
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.fills, stats.entries) == (1, 1, 1, 1)


def test_exact_paths_only() -> None:
    cache: ReadCache[bytes] = ReadCache(1.0)
    filled(cache, "db", b"a")
    filled(cache, "db2", b"b")
    filled(cache, "db/x", b"c")
    cache.invalidate("db")
    assert cache.get("db") is None
    assert cache.get("db2") == b"b"
    assert cache.get("db/x") == b"c"


def test_entries_expire_ttl_after_the_read_started() -> None:
    clock = Clock()
    cache: ReadCache[bytes] = ReadCache(1.0, clock=clock)
    ticket = cache.ticket()
    clock.now += 0.6  # a slow read
    assert cache.put("db", b"v", ticket)
    clock.now += 0.3
    assert cache.get("db") == b"v"
    clock.now += 0.2  # 1.1 s after the read started
    assert cache.get("db") is None
    assert cache.stats().entries == 0


def test_a_read_slower_than_the_ttl_is_not_stored() -> None:
    clock = Clock()
    cache: ReadCache[bytes] = ReadCache(1.0, clock=clock)
    ticket = cache.ticket()
    clock.now += 1.5
    assert not cache.put("db", b"v", ticket)
    assert cache.get("db") is None


def test_a_read_that_raced_an_invalidation_is_refused() -> None:
    cache: ReadCache[bytes] = ReadCache(1.0)
    ticket = cache.ticket()  # the read starts and sees the old value ...
    cache.invalidate("db")  # ... while a write of db finishes
    assert not cache.put("db", b"old", ticket)
    assert cache.get("db") is None
    assert cache.stats().refused == 1
    # other paths read under the same ticket are unaffected
    assert cache.put("other", b"x", ticket)
    # a read that started after the invalidation may fill
    assert filled(cache, "db", b"new")
    assert cache.get("db") == b"new"


def test_clear_refuses_every_read_started_before_it() -> None:
    cache: ReadCache[bytes] = ReadCache(1.0)
    filled(cache, "a", b"1")
    ticket = cache.ticket()
    cache.clear()
    assert cache.get("a") is None
    assert not cache.put("b", b"2", ticket)
    assert filled(cache, "b", b"2")


def test_forgotten_invalidations_refuse_older_tickets() -> None:
    cache: ReadCache[bytes] = ReadCache(1.0)
    ticket = cache.ticket()
    for i in range(5000):  # more than the cache remembers
        cache.invalidate(f"p{i}")
    assert not cache.put("p1", b"old", ticket)
    assert not cache.put("never-invalidated", b"x", ticket)  # conservative: refused too
    assert filled(cache, "p1", b"new")


def test_bounds_evict_least_recently_used() -> None:
    cache: ReadCache[bytes] = ReadCache(10.0, max_entries=2, max_bytes=10, size_of=len)
    filled(cache, "a", b"1234")
    filled(cache, "b", b"1234")
    assert cache.get("a") == b"1234"  # a is now the most recently used
    filled(cache, "c", b"1234")  # three entries: b goes
    assert cache.get("b") is None
    assert cache.get("a") == b"1234"
    filled(cache, "d", b"1234567")  # 4 + 4 + 7 bytes > 10: the two oldest go
    assert cache.stats().bytes <= 10
    assert cache.get("d") == b"1234567"
    assert not filled(cache, "big", b"x" * 11)  # larger than the whole cache
    assert cache.stats().evictions >= 2


def test_disabled_cache_stores_nothing() -> None:
    cache: ReadCache[bytes] = ReadCache(0)
    assert not cache.enabled
    assert not filled(cache, "a", b"1")
    assert cache.get("a") is None


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        ReadCache(-1)


def test_concurrent_readers_and_writers_never_keep_a_stale_value() -> None:
    """Writers bump a version then invalidate (before and after, as the agent does); readers fill
    with the version they read. After all writers finish, a hit is never older than the last write."""
    cache: ReadCache[int] = ReadCache(60.0)
    version = {"v": 0}
    lock = threading.Lock()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            if cache.get("p") is None:
                ticket = cache.ticket()
                with lock:
                    seen = version["v"]
                cache.put("p", seen, ticket)

    def writer() -> None:
        for _ in range(2000):
            cache.invalidate("p")
            with lock:
                version["v"] += 1
            cache.invalidate("p")

    readers = [threading.Thread(target=reader) for _ in range(4)]
    for t in readers:
        t.start()
    writer()
    stop.set()
    for t in readers:
        t.join()
    hit = cache.get("p")
    assert hit is None or hit == version["v"]
