"""make bench-agent: secret operations per second through the gRPC agent vs in-process Token, on the same
SoftHSM2 token in one run, plus health latency while a slow device call runs.

The in-process side opens the token in this process (hsmd.pkcs11.token.Token) and measures
sequential ReadSecret / WriteSecret / ListSecrets / batch reads (and, for reference, ReadSecret
from 8 threads at once), then closes it; the agent side starts
a real ``hsmd agent`` on the same token (its device worker is then the only process using the token,
as this process was before) and measures the same operations through AgentClient, twice: with the
agent's defaults (its read cache on, hsmd.agent.reads) and with ``--read-cache-ttl 0``, where every
read goes to the device. Every side reads each secret once before the reads are timed (that warms
the token layer's object index in-process and the read cache in the agent): the timed reads are
repeat reads of 200 hot secrets, the workload of applications and brokers polling their secrets;
the cache-off column is what a read of a secret nobody read in the last second costs. The sides
alternate for ``--rounds`` rounds so drifting machine load hits them alike. Writes replace the same
pre-created secrets on both sides, so the token holds the same objects throughout. Finally
restarts the agent with a simulated slow device (HSMD_AGENT_TEST_SLOW_CALLS, see hsmd.agent.worker)
and measures Health, IsConnected and /healthz latency while a 3 s device call is in flight, against
the same latencies on an idle agent.

    python benchmarks/bench_agent.py [--secrets 200] [--reads 2400] [--writes 240] [--lists 240] [--rounds 6]

Besides the totals it prints the ReadSecret ratio of every round and their median: the in-process
figure swings by a third between runs on a shared machine, and the median of rounds that each
measured both sides back to back is the steadier comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PIN = "bench-pin-1234"


def rate(n: int, fn: Callable[[int], object]) -> float:
    for i in range(min(10, n)):  # warm-up
        fn(i)
    started = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - started)


def concurrent_rate(n: int, threads: int, fn: Callable[[int], object]) -> float:
    """Operations per second with ``threads`` callers doing ``n`` operations in all."""
    per = max(1, n // threads)
    for i in range(min(10, n)):
        fn(i)

    def loop(base: int) -> None:
        for i in range(per):
            fn(base + i)

    workers = [threading.Thread(target=loop, args=(t * per,)) for t in range(threads)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return per * threads / (time.perf_counter() - started)


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secrets", type=int, default=200)
    parser.add_argument("--reads", type=int, default=2400)
    parser.add_argument("--writes", type=int, default=240)
    parser.add_argument("--lists", type=int, default=240)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hsmd-bench-agent-"))
    token_dir = work / "softhsm"
    # The token layer reads SOFTHSM2_CONF when the library loads; set it before anything loads it.
    from hsmd.pkcs11.softhsm import create_softhsm_token, write_conf

    os.environ["SOFTHSM2_CONF"] = write_conf(token_dir)
    token = create_softhsm_token(str(token_dir), "bench", PIN, "bench-so-pin")
    pin_file = work / "pin"
    pin_file.write_text(PIN)
    pin_file.chmod(0o600)

    from hsmd.pkcs11.token import Token, TokenConfig

    reads = [f"bench/r/{i:04d}" for i in range(args.secrets)]
    writes = [f"bench/w/{i:04d}" for i in range(50)]
    value = os.urandom(256)

    from hsmd.agent.client import AgentClient
    from tests.fixtures.agent import start_agent

    local = Token.open(TokenConfig(library=token.library, token_label=token.label, pin_file=str(pin_file)))
    for path in reads:
        local.write(path, {"username": b"app", "password": value})
    for path in writes:
        local.write(path, {"v": b"initial"})
    local.close()

    batch_paths = reads[: args.batch]
    batches = max(3, args.reads // args.batch // args.rounds)
    ops = ("ReadSecret", "WriteSecret", "ListSecrets", "ReadSecrets", "ReadSecret x8")
    counts = {"ReadSecret": args.reads // args.rounds, "ReadSecret x8": args.reads // args.rounds,
              "WriteSecret": args.writes // args.rounds,
              "ListSecrets": args.lists // args.rounds, "ReadSecrets": batches}
    # (operations, seconds) per side; the sides alternate so drift in machine load hits both alike
    sides = ("in-process", "agent", "agent, cache off")
    totals = {side: {op: [0, 0.0] for op in ops} for side in sides}

    round_reads: dict[str, list[float]] = {side: [] for side in sides}  # ReadSecret/s of each round

    def measure(side: str, op: str, fn: Callable[[int], object]) -> None:
        n = counts[op]
        per_second = rate(n, fn)
        if op == "ReadSecret":
            round_reads[side].append(per_second)
        totals[side][op][0] += n
        totals[side][op][1] += n / per_second

    def side(name: str, rnd: int, read: Callable[[str], object], write: Callable[..., object],
             list_: Callable[[str], object], read_many: Callable[[list[str]], object]) -> None:
        for path in reads:
            read(path)
        measure(name, "ReadSecret", lambda i: read(reads[i % len(reads)]))
        tag = sides.index(name)  # every side writes values of its own, so no write is a no-op
        measure(name, "WriteSecret", lambda i: write(writes[i % len(writes)], {"v": b"%d-%d-%d" % (tag, rnd, i)}))
        measure(name, "ListSecrets", lambda i: list_("bench/r"))
        measure(name, "ReadSecrets", lambda i: read_many(batch_paths))
        measure(name, "ReadSecret x8", lambda i: read(reads[i % len(reads)]))

    idle: dict[str, list[float]] = {}
    for rnd in range(args.rounds):
        # in-process: this process is the only one using the token
        local = Token.open(TokenConfig(library=token.library, token_label=token.label, pin_file=str(pin_file)))
        side("in-process", rnd, local.read_secret, local.write, local.list, local.read_many)
        local.close()
        # through the agent: its device worker is the only process using the token
        for name, ttl in (("agent", None), ("agent, cache off", 0)):
            # read_cache_ttl=None passes no flag: the agent's default
            with start_agent(token, pin_file=str(pin_file), workdir=work / f"agent{rnd}", read_cache_ttl=ttl) as agent:
                client: AgentClient = agent.client(timeout=30)
                assert len(client.list("bench/r")) == len(reads)
                side(name, rnd, client.read, client.write, client.list, client.read_many)
                if rnd == 0 and ttl is None:
                    idle = health_latencies(agent.health_url, client, 1.0)

    def per_second(side: str, op: str) -> float:
        n, seconds = totals[side][op]
        return n / seconds * (len(batch_paths) if op == "ReadSecrets" else 1)

    # --- phase 3: health while the device is slow ------------------------------------------
    env = {"HSMD_AGENT_TEST_SLOW_CALLS": "list=3"}
    with start_agent(token, pin_file=str(pin_file), workdir=work / "slow", env=env, health_timeout=5) as agent:
        client = agent.client(timeout=30)
        slow = threading.Thread(target=client.list)
        slow.start()
        time.sleep(0.2)
        busy = health_latencies(agent.health_url, client, 2.5)
        slow.join()

    print(f"\nhsmd agent benchmark: SoftHSM2 token, {args.secrets} secrets of 2 keys, sequential calls, one run")
    print(f"({args.rounds} alternating rounds per side; in-process = hsmd.pkcs11.token.Token in this process;")
    print(" agent = hsmd agent with its defaults (read cache on, 1 s); cache off = --read-cache-ttl 0)")
    print(f"{'operation':<28}{'in-process/s':>14}{'agent/s':>10}{'ratio':>7}{'cache off/s':>13}{'ratio':>7}")
    for op in ops:
        inproc, viagrpc, uncached = (per_second(side, op) for side in sides)
        label = {"ReadSecrets": f"ReadSecrets x{len(batch_paths)} (secrets/s)",
                 "ReadSecret x8": "ReadSecret, 8 threads"}.get(op, op)
        goal = "  (goal >= 0.8)" if op == "ReadSecret" else ""
        print(f"{label:<28}{inproc:>14.1f}{viagrpc:>10.1f}{viagrpc / inproc:>7.2f}"
              f"{uncached:>13.1f}{uncached / inproc:>7.2f}{goal}")
    for name in sides[1:]:
        ratios = [a / b for a, b in zip(round_reads[name], round_reads["in-process"], strict=True)]
        print(f"ReadSecret ratio per round, {name}: {' '.join(f'{r:.2f}' for r in ratios)}  "
              f"median {statistics.median(ratios):.2f}")
    print(f"batch vs single ReadSecret through the agent, cache off: "
          f"{per_second(sides[2], 'ReadSecrets') / per_second(sides[2], 'ReadSecret'):.2f}x secrets/s")
    print("\nhealth latency p99 in ms (n samples): idle agent | during a 3 s device call")
    for name in ("Health", "IsConnected", "/healthz"):
        print(f"  {name:<12} {p99(idle[name]) * 1000:6.2f} ({len(idle[name])}) | "
              f"{p99(busy[name]) * 1000:6.2f} ({len(busy[name])})   median busy "
              f"{statistics.median(busy[name]) * 1000:.2f}   goal p99 < 100")
    return 0


def health_latencies(health_url: str, client: object, seconds: float) -> dict[str, list[float]]:
    from hsmd.agent.client import AgentClient

    assert isinstance(client, AgentClient)
    out: dict[str, list[float]] = {"Health": [], "IsConnected": [], "/healthz": []}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        client.health()
        out["Health"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        client.is_connected()
        out["IsConnected"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with urllib.request.urlopen(health_url + "/healthz", timeout=5) as response:  # noqa: S310 - loopback
            response.read()
        out["/healthz"].append(time.perf_counter() - t0)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
