"""make bench-proxy: reads per second and p50/p99 latency through the broker vs calling the agent
directly (AgentClient), on the same SoftHSM2 token and agent, in one run.

Setup: one real ``hsmd agent`` on a fresh SoftHSM token, a sandbox API server (subprocess) for
TokenRequest/TokenReview, and a real ``hsmd proxy`` (waitress, policy file, audit log on) in front
of the agent. Both arms read the same pre-written secrets with the same number of client threads:
the direct arm with one AgentClient (gRPC channel) per thread, the broker arm with one keep-alive
HTTP/1.1 connection per thread and the same ServiceAccount token for every request (TokenReview is
cached, so steady state measures the broker, not the API server). Every reader warms up first.
The arms alternate ABBA (direct, proxy, proxy, direct, ...) for ``--rounds`` rounds so drifting
machine load hits both alike, and each round's figures are printed as well as the totals.

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
    paths: ["bench/**"]
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--secrets", type=int, default=50)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=4, help="rounds of both arms, in ABBA order")
    parser.add_argument("--proxy-threads", type=int, default=4, help="the broker's waitress threads")
    parser.add_argument("--no-read-coalescing", action="store_true",
                        help="start the broker with --no-read-coalescing (every read its own agent call)")
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
    try:
        wait_for_ready_file(sandbox_ready, 60, process=sandbox)
        api = kube.api_client(str(work / "kubeconfig"))
        bearer = mint(api, "bench", "reader")
        tok = make_agent_token(work / "token")
        with start_agent(tok.token, pin_file=tok.pin_file, workdir=work / "agent") as agent, \
                start_proxy(work / "proxy", agents=[agent.address], kubeconfig=str(work / "kubeconfig"),
                            extra=["--policy", str(policy), "--threads", str(args.proxy_threads),
                                   *(["--no-read-coalescing"] if args.no_read_coalescing else [])]) as proxy:
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
            host, port = proxy.address.rsplit(":", 1)
            headers = {"Authorization": f"Bearer {bearer}"}

            def proxy_reader() -> Callable[[int], None]:
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

            load_before = os.getloadavg()
            results: dict[str, list[Arm]] = {"direct": [], "proxy": []}
            arms = {
                "direct": (direct_reader, {"agent": agent.process.pid}),
                "proxy": (proxy_reader, {"agent": agent.process.pid, "broker": proxy.process.pid}),
            }
            for index in range(args.rounds):
                order = ("direct", "proxy") if index % 2 == 0 else ("proxy", "direct")
                for arm in order:
                    reader, pids = arms[arm]
                    results[arm].append(run_arm(args.threads, args.seconds, reader, pids))
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

    d_rate, d_p50, d_p99, d_n, d_cpu = summary("direct")
    p_rate, p_p50, p_p99, p_n, p_cpu = summary("proxy")
    print(f"\nhsmd proxy benchmark: SoftHSM2 token, 1 agent, {args.secrets} secrets of 2 keys, {args.threads} client "
          f"threads (keep-alive), broker with {args.proxy_threads} threads, read coalescing "
          f"{'off' if args.no_read_coalescing else 'on'}; {args.rounds} rounds x {args.seconds:g} s "
          f"per arm, ABBA order; load average {load_before[0]:.1f} -> {load_after[0]:.1f} ({os.cpu_count()} CPUs)")
    print("\nper round (reads/s, p50 ms):")
    for index, (d, p) in enumerate(zip(results["direct"], results["proxy"], strict=True)):
        print(f"  round {index + 1}: direct {d.rate:7.1f} {percentile(d.latencies, 0.5) * 1000:6.2f}   "
              f"broker {p.rate:7.1f} {percentile(p.latencies, 0.5) * 1000:6.2f}   ratio {p.rate / d.rate:.2f}x")
    print(f"\n{'arm':<38}{'reads/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'reads':>8}   CPU ms per read")
    print(f"{'direct (AgentClient, gRPC)':<38}{d_rate:>9.1f}{d_p50:>9.2f}{d_p99:>9.2f}{d_n:>8}   "
          + "  ".join(f"{k} {v:.2f}" for k, v in d_cpu.items()))
    print(f"{'through the broker (HTTP+auth+audit)':<38}{p_rate:>9.1f}{p_p50:>9.2f}{p_p99:>9.2f}{p_n:>8}   "
          + "  ".join(f"{k} {v:.2f}" for k, v in p_cpu.items()))
    ratio = p_rate / d_rate if d_rate else 0.0
    overhead = p_p50 - d_p50
    print(f"\nthroughput ratio broker/direct: {ratio:.2f}x  (goal >= 0.70x: {'met' if ratio >= 0.7 else 'NOT met'})")
    print(f"p50 overhead: {overhead:+.2f} ms  (goal <= 2 ms: {'met' if overhead <= 2 else 'NOT met'})")
    print(f"p99 overhead: {p_p99 - d_p99:+.2f} ms")
    print(f"broker CPU per read: {p_cpu['broker']:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
