"""make bench-proxy: reads per second and p50/p99 latency through the broker vs calling the agent
directly (AgentClient), on the same SoftHSM2 token and agent, in one run.

Setup: one real ``hsmd agent`` (its defaults, read cache included) on a fresh SoftHSM token, a
sandbox API server (subprocess) for TokenRequest/TokenReview, and two real ``hsmd proxy`` processes
(waitress, policy file, audit log on) in front of the agent: one with its default configuration
(read cache on) and one with ``--read-cache-ttl 0``, so both are reported. All arms read the same
pre-written secrets with the same number of client threads: the direct arm with one AgentClient
(gRPC channel) per thread, the broker arms with one keep-alive HTTP/1.1 connection per thread and
the same ServiceAccount token for every request (TokenReview is cached, so steady state measures
the broker, not the API server). Every reader warms up first. The arms alternate ABBA (direct,
broker, broker without cache, then the reverse, ...) for ``--rounds`` rounds so drifting machine
load hits all alike, and each round's figures are printed as well as the totals, with the broker's
read cache hit rate (from ``GET /api/v1/hsm/info``).

Besides wall-clock figures it reports the CPU each process spent per read (agent, broker, this
client) from /proc: on a shared, noisy machine that is the steadier measure of the broker's cost.

    python benchmarks/bench_proxy.py [--secrets 50] [--threads 4] [--seconds 4] [--rounds 4]

Goal (issue #6): p50 overhead <= 2 ms and throughput >= 0.7x direct.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

POLICY = """
rules:
  - namespaces: [bench]
    serviceAccounts: [reader]
    paths: ["bench/**", "@devices"]
    verbs: [get, list]
"""


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Arm:
    rate: float  # reads/s
    latencies: list[float]  # seconds
    cpu: dict[str, float]  # CPU seconds per read, by process


def run_arm(
    threads: int, seconds: float, make_reader: Callable[[], Callable[[int], None]], pids: dict[str, int]
) -> Arm:
    """``threads`` workers call their reader in a loop for ``seconds``."""
    readers = [make_reader() for _ in range(threads)]
    for reader in readers:  # warm-up: connections, caches
        for i in range(20):
            reader(i)
    latencies: list[list[float]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)
    stop_at = [0.0]

    def work(index: int) -> None:
        reader, mine = readers[index], latencies[index]
        start.wait()
        i = index
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at[0]:
                return
            reader(i)
            mine.append(time.perf_counter() - t0)
            i += threads

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    cpu_before = {name: process_cpu(pid) for name, pid in pids.items()}
    client_before = time.process_time()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    start.wait()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - began
    flat = [x for per in latencies for x in per]
    reads = max(1, len(flat))
    cpu = {name: (process_cpu(pid) - cpu_before[name]) / reads for name, pid in pids.items()}
    cpu["client"] = (time.process_time() - client_before) / reads
    return Arm(len(flat) / elapsed, flat, cpu)


ARMS = ("direct", "broker", "nocache")
LABELS = {
    "direct": "direct (AgentClient, gRPC)",
    "broker": "broker, defaults (read cache on)",
    "nocache": "broker, --read-cache-ttl 0",
}


def cache_counts(host: str, port: int, headers: dict[str, str]) -> tuple[int, int]:
    """(hits, lookups) of the broker's read cache so far, summed over its agents."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request("GET", "/api/v1/hsm/info", headers=headers)
        doc = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    agents = doc["readCache"].get("agents", [])
    hits = sum(int(a["hits"]) for a in agents)
    return hits, hits + sum(int(a["misses"]) + int(a["bypassed"]) for a in agents)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secrets", type=int, default=50)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=4, help="rounds of every arm, in ABBA order")
    parser.add_argument("--proxy-threads", type=int, default=4, help="the brokers' waitress threads")
    parser.add_argument("--no-read-coalescing", action="store_true",
                        help="start the brokers with --no-read-coalescing (every read its own agent call)")
    args = parser.parse_args()

    from hsmd import kube
    from hsmd.agent.client import AgentClient
    from hsmd.service import wait_for_ready_file
    from tests.fixtures.agent import make_agent_token, start_agent
    from tests.proxy.helpers import mint, start_proxy

    work = Path(tempfile.mkdtemp(prefix="hsmd-bench-proxy-"))
    policy = work / "policy.yaml"
    policy.write_text(POLICY)
    sandbox_ready = work / "sandbox.ready"
    sandbox = subprocess.Popen(
        [sys.executable, "-m", "hsmd", "sandbox", "--listen", "127.0.0.1:0", "--kubeconfig-out",
         str(work / "kubeconfig"), "--ready-file", str(sandbox_ready), "--log-level", "warning"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    broker_flags = ["--policy", str(policy), "--threads", str(args.proxy_threads),
                    *(["--no-read-coalescing"] if args.no_read_coalescing else [])]
    hit_rates: list[float] = []
    try:
        wait_for_ready_file(sandbox_ready, 60, process=sandbox)
        api = kube.api_client(str(work / "kubeconfig"))
        bearer = mint(api, "bench", "reader")
        headers = {"Authorization": f"Bearer {bearer}"}
        tok = make_agent_token(work / "token")
        with start_agent(tok.token, pin_file=tok.pin_file, workdir=work / "agent") as agent, \
                start_proxy(work / "proxy", agents=[agent.address], kubeconfig=str(work / "kubeconfig"),
                            extra=broker_flags) as proxy, \
                start_proxy(work / "proxy-nocache", agents=[agent.address], kubeconfig=str(work / "kubeconfig"),
                            extra=[*broker_flags, "--read-cache-ttl", "0"]) as nocache:
            seed = AgentClient(agent.address, timeout=30)
            paths = [f"bench/app{i:03d}/creds" for i in range(args.secrets)]
            for i, path in enumerate(paths):
                seed.write(path, {"username": f"user{i}".encode(), "password": f"pw-{i}-".encode() * 4})
            seed.close()

            clients: list[AgentClient] = []

            def direct_reader() -> Callable[[int], None]:
                client = AgentClient(agent.address, timeout=30)
                clients.append(client)

                def read(i: int) -> None:
                    client.read(paths[i % len(paths)])

                return read

            sessions: list[http.client.HTTPConnection] = []

            def broker_reader(address: str) -> Callable[[], Callable[[int], None]]:
                host, port = address.rsplit(":", 1)

                def make() -> Callable[[int], None]:
                    # one persistent (keep-alive) HTTP/1.1 connection per thread, as the gRPC arm has
                    # one channel per thread; http.client keeps the client's own cost small
                    session = http.client.HTTPConnection(host, int(port), timeout=30)
                    sessions.append(session)

                    def read(i: int) -> None:
                        session.request("GET", "/api/v1/hsm/secrets/" + paths[i % len(paths)], headers=headers)
                        r = session.getresponse()
                        body = r.read()
                        if r.status != 200:
                            raise RuntimeError(f"proxy answered {r.status}: {body[:200]!r}")
                        json.loads(body)

                    return read

                return make

            cached_host, cached_port = proxy.address.rsplit(":", 1)

            def counts() -> tuple[int, int]:
                return cache_counts(cached_host, int(cached_port), headers)

            # the broker trusts its cache only once it follows the agent's change stream
            probe = broker_reader(proxy.address)()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                probe(0)
                probe(0)
                if counts()[0]:
                    break
                time.sleep(0.05)

            load_before = os.getloadavg()
            results: dict[str, list[Arm]] = {arm: [] for arm in ARMS}
            arms = {
                "direct": (direct_reader, {"agent": agent.process.pid}),
                "broker": (broker_reader(proxy.address), {"agent": agent.process.pid, "broker": proxy.process.pid}),
                "nocache": (broker_reader(nocache.address),
                            {"agent": agent.process.pid, "broker": nocache.process.pid}),
            }
            for index in range(args.rounds):
                for arm in ARMS if index % 2 == 0 else tuple(reversed(ARMS)):
                    reader, pids = arms[arm]
                    before = counts() if arm == "broker" else (0, 0)
                    results[arm].append(run_arm(args.threads, args.seconds, reader, pids))
                    if arm == "broker":
                        after = counts()
                        hit_rates.append((after[0] - before[0]) / max(1, after[1] - before[1]))
            load_after = os.getloadavg()
            for client in clients:
                client.close()
            for session in sessions:
                session.close()
    finally:
        sandbox.terminate()
        sandbox.wait(15)
        shutil.rmtree(work, ignore_errors=True)

    def summary(arm: str) -> tuple[float, float, float, int, dict[str, float]]:
        runs = results[arm]
        lat = [x for run in runs for x in run.latencies]
        cpu = {name: statistics.mean(run.cpu[name] for run in runs) * 1000 for name in runs[0].cpu}
        return statistics.mean(r.rate for r in runs), percentile(lat, 0.50) * 1000, percentile(lat, 0.99) * 1000, \
            len(lat), cpu

    figures = {arm: summary(arm) for arm in ARMS}
    print(f"\nhsmd proxy benchmark: SoftHSM2 token, 1 agent (defaults), {args.secrets} secrets of 2 keys, "
          f"{args.threads} client threads (keep-alive), brokers with {args.proxy_threads} threads, read coalescing "
          f"{'off' if args.no_read_coalescing else 'on'}; {args.rounds} rounds x {args.seconds:g} s "
          f"per arm, ABBA order; load average {load_before[0]:.1f} -> {load_after[0]:.1f} ({os.cpu_count()} CPUs)")
    print("\nper round (reads/s, p50 ms, ratio to direct):")
    for index in range(args.rounds):
        d, b, n = (results[arm][index] for arm in ARMS)
        print(f"  round {index + 1}: direct {d.rate:7.1f} {percentile(d.latencies, 0.5) * 1000:5.2f}   "
              f"broker {b.rate:7.1f} {percentile(b.latencies, 0.5) * 1000:5.2f} {b.rate / d.rate:.2f}x "
              f"(cache hits {hit_rates[index]:.1%})   "
              f"no cache {n.rate:7.1f} {percentile(n.latencies, 0.5) * 1000:5.2f} {n.rate / d.rate:.2f}x")
    print(f"\n{'arm':<36}{'reads/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'reads':>8}   CPU ms per read")
    for arm in ARMS:
        rate, p50, p99, n, cpu = figures[arm]
        print(f"{LABELS[arm]:<36}{rate:>9.1f}{p50:>9.2f}{p99:>9.2f}{n:>8}   "
              + "  ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
    d_rate, d_p50, d_p99, _, _ = figures["direct"]
    print(f"\nbroker read cache hit rate: {statistics.mean(hit_rates):.1%}")
    for arm in ("broker", "nocache"):
        rate, p50, p99, _, cpu = figures[arm]
        ratio = rate / d_rate if d_rate else 0.0
        overhead = p50 - d_p50
        print(f"\n{LABELS[arm]}:")
        print(f"  throughput ratio broker/direct: {ratio:.2f}x  (goal >= 0.70x: {'met' if ratio >= 0.7 else 'NOT met'})")
        print(f"  p50 overhead: {overhead:+.2f} ms  (goal <= 2 ms: {'met' if overhead <= 2 else 'NOT met'})")
        print(f"  p99 overhead: {p99 - d_p99:+.2f} ms")
        print(f"  broker CPU per read: {cpu['broker']:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
