"""make bench-sandbox: how fast is the sandbox API server on this machine?

Measured in one run, each against a baseline taken in the same run:
- GETs per second over loopback (keep-alive ``requests.Session`` clients in worker processes)
  against a trivial stdlib ThreadingHTTPServer answering a fixed JSON body of the same size:
  the ratio reads as "x% of what Python HTTP can do here". Also through the kubernetes client.
- LIST latency with 10,000 Secrets (1 KiB each) stored: all namespaces, one namespace, a selector.
- Watch delivery latency to 20 watchers (write -> event received), p50/p95.
- Resident memory of the sandbox process at 10,000 Secrets of 1 KiB.
Goals: >= 1,500 GET/s, <= 200 MiB.

Usage: python benchmarks/bench_sandbox.py [--secrets 10000] [--seconds 5] [--clients 4]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import multiprocessing as mp
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hsmd.service import wait_for_ready_file  # noqa: E402

GET_GOAL = 1500.0
RSS_GOAL_MIB = 200.0


# --- baseline server ---------------------------------------------------------------------


def _baseline_server(port_q: Any, body: bytes) -> None:
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # else headers and body as two writes meet delayed ACKs (40 ms)

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    class S(ThreadingHTTPServer):
        daemon_threads = True

    srv = S(("127.0.0.1", 0), H)
    port_q.put(srv.server_address[1])
    srv.serve_forever()


# --- load generation ---------------------------------------------------------------------


def _get_worker(url: str, paths: list[str], token: str, seconds: float, threads: int, out_q: Any,
                kind: str) -> None:
    stop_at = time.monotonic() + seconds
    counts = [0] * threads
    errors = [0] * threads

    def run_requests(i: int) -> None:
        s = requests.Session()
        s.trust_env = False  # else requests scans the environment for proxies on every request (~2 ms here)
        s.headers["Authorization"] = f"Bearer {token}"
        s.headers["Accept"] = "application/json"
        rnd = random.Random(i)
        while time.monotonic() < stop_at:
            r = s.get(url + rnd.choice(paths))
            if r.status_code == 200:
                counts[i] += 1
            else:
                errors[i] += 1
        s.close()

    def run_http_client(i: int) -> None:
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port))
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        rnd = random.Random(i)
        while time.monotonic() < stop_at:
            conn.request("GET", rnd.choice(paths), headers=headers)
            r = conn.getresponse()
            r.read()
            if r.status == 200:
                counts[i] += 1
            else:
                errors[i] += 1
        conn.close()

    run = run_requests if kind == "requests" else run_http_client

    ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out_q.put((sum(counts), sum(errors)))


def gets_per_second(url: str, paths: list[str], token: str, seconds: float, processes: int, threads: int,
                    kind: str) -> tuple[float, int]:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_get_worker, args=(url, paths, token, seconds, threads, q, kind))
             for _ in range(processes)]
    started = time.monotonic()
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.monotonic() - started
    total = sum(r[0] for r in results)
    return total / max(elapsed, seconds), sum(r[1] for r in results)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--secrets", type=int, default=10000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=2, help="client processes")
    ap.add_argument("--threads", type=int, default=2, help="keep-alive sessions per client process")
    ap.add_argument("--watchers", type=int, default=20)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    ready = tmp / "ready.json"
    kubeconfig = tmp / "kubeconfig"
    log = open(tmp / "sandbox.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "hsmd", "sandbox", "--listen", "127.0.0.1:0",
                             "--kubeconfig-out", str(kubeconfig), "--ready-file", str(ready),
                             "--log-level", "warning"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    baseline_proc = None
    try:
        info = wait_for_ready_file(ready, timeout=30, process=proc)
        url = info["url"]
        token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
        rss_empty = rss_mib(proc.pid)
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {token}"

        # --- load 10,000 Secrets of 1 KiB in 10 namespaces --------------------------------
        namespaces = [f"bench-{i}" for i in range(10)]
        for ns in namespaces:
            s.post(f"{url}/api/v1/namespaces", json={"metadata": {"name": ns}}).raise_for_status()
        value = base64.b64encode(os.urandom(1024)).decode()

        def create(i: int, sess: dict[int, requests.Session] = {}) -> None:  # noqa: B006 (per-thread cache)
            tid = threading.get_ident()
            c = sess.get(tid)
            if c is None:
                c = sess[tid] = requests.Session()
                c.trust_env = False
                c.headers["Authorization"] = f"Bearer {token}"
            ns = namespaces[i % len(namespaces)]
            labels = {"app": "bench", "shard": str(i % 100)}
            r = c.post(f"{url}/api/v1/namespaces/{ns}/secrets",
                       json={"metadata": {"name": f"secret-{i:05d}", "labels": labels}, "data": {"value": value}})
            r.raise_for_status()

        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(create, range(args.secrets)))
        create_rate = args.secrets / (time.monotonic() - started)
        rss_loaded = rss_mib(proc.pid)
        paths = [f"/api/v1/namespaces/{namespaces[i % len(namespaces)]}/secrets/secret-{i:05d}"
                 for i in range(args.secrets)]
        sample = s.get(url + paths[0]).content

        # --- baseline server (same body size) ------------------------------------------------
        ctx = mp.get_context("fork")
        port_q = ctx.Queue()
        baseline_proc = ctx.Process(target=_baseline_server, args=(port_q, sample), daemon=True)
        baseline_proc.start()
        base_url = f"http://127.0.0.1:{port_q.get(timeout=10)}"
        time.sleep(0.2)

        rates = {}
        cpu_per_get = {}
        for kind in ("http.client", "requests"):
            base_rate, _ = gets_per_second(base_url, paths[:100], token, args.seconds, args.clients, args.threads,
                                           kind)
            cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
            sb_rate, sb_errors = gets_per_second(url, paths, token, args.seconds, args.clients, args.threads, kind)
            cpu_per_get[kind] = (cpu_seconds(proc.pid) - cpu0) / max(1.0, sb_rate * (time.monotonic() - wall0))
            rates[kind] = (base_rate, sb_rate, sb_errors)

        # --- kubernetes client (single thread, typed deserialization) --------------------------
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        api = client.ApiClient(configuration)
        core = client.CoreV1Api(api)
        core.read_namespaced_secret("secret-00000", "bench-0")
        n = 0
        stop_at = time.monotonic() + args.seconds / 2
        while time.monotonic() < stop_at:
            i = random.randrange(args.secrets)
            core.read_namespaced_secret(f"secret-{i:05d}", namespaces[i % len(namespaces)])
            n += 1
        k8s_rate = n / (args.seconds / 2)
        n = 0
        stop_at = time.monotonic() + args.seconds / 2
        while time.monotonic() < stop_at:
            i = random.randrange(args.secrets)
            core.read_namespaced_secret(f"secret-{i:05d}", namespaces[i % len(namespaces)],
                                        _preload_content=False).read()
            n += 1
        k8s_raw_rate = n / (args.seconds / 2)

        # --- list latency ------------------------------------------------------------------------
        def timed(path: str, runs: int = 8) -> tuple[float, float, int]:
            times = []
            size = 0
            for _ in range(runs):
                t0 = time.perf_counter()
                r = s.get(url + path)
                r.raise_for_status()
                body = r.content
                times.append(time.perf_counter() - t0)
                size = len(body)
            return statistics.median(times) * 1000, max(times) * 1000, size

        list_all = timed("/api/v1/secrets")
        list_ns = timed("/api/v1/namespaces/bench-3/secrets")
        list_sel = timed("/api/v1/secrets?labelSelector=shard%3D7")
        list_page = timed("/api/v1/secrets?limit=500")
        rss_after_lists = rss_mib(proc.pid)

        # --- watch delivery latency to N watchers -------------------------------------------------
        s.post(f"{url}/api/v1/namespaces/default/configmaps",
               json={"metadata": {"name": "tick"}, "data": {"t": "0"}}).raise_for_status()
        rv = s.get(f"{url}/api/v1/namespaces/default/configmaps").json()["metadata"]["resourceVersion"]
        latencies: list[float] = []
        lat_lock = threading.Lock()
        writes = 100
        ready_count = threading.Semaphore(0)
        sent: dict[str, float] = {}

        def watcher() -> None:
            ws = requests.Session()
            ws.trust_env = False
            ws.headers["Authorization"] = f"Bearer {token}"
            r = ws.get(f"{url}/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}"
                       f"&timeoutSeconds=60", stream=True)
            ready_count.release()
            got = 0
            for line in r.iter_lines():
                if not line:
                    continue
                now = time.perf_counter()
                ev = json.loads(line)
                seq = ev["object"].get("data", {}).get("t")
                if seq in sent:
                    with lat_lock:
                        latencies.append((now - sent[seq]) * 1000)
                    got += 1
                    if got >= writes:
                        break
            r.close()

        wthreads = [threading.Thread(target=watcher, daemon=True) for _ in range(args.watchers)]
        for t in wthreads:
            t.start()
        for _ in wthreads:
            ready_count.acquire(timeout=10)
        time.sleep(0.3)
        for i in range(1, writes + 1):
            sent[str(i)] = time.perf_counter()
            s.patch(f"{url}/api/v1/namespaces/default/configmaps/tick", data=json.dumps({"data": {"t": str(i)}}),
                    headers={"Content-Type": "application/merge-patch+json"}).raise_for_status()
            time.sleep(0.01)
        for t in wthreads:
            t.join(timeout=30)
        rss_final = rss_mib(proc.pid)

        # --- report ------------------------------------------------------------------------------
        print(f"hsmd sandbox benchmark ({os.cpu_count()} CPUs, {args.clients} client processes x {args.threads} "
              f"keep-alive sessions, {args.secrets} Secrets of 1 KiB)")
        print()
        print(f"  CREATE Secret (4 threads, requests.Session)                       {create_rate:8.0f} /s")
        base_rate, sb_rate, sb_errors = rates["http.client"]
        print(f"  GET baseline (stdlib server, fixed body), http.client keep-alive  {base_rate:8.0f} /s")
        print(f"  GET sandbox, http.client keep-alive                               {sb_rate:8.0f} /s   "
              f"= {sb_rate / base_rate:6.1%} of baseline; goal >= {GET_GOAL:.0f}/s: "
              f"{'MET' if sb_rate >= GET_GOAL else 'MISSED'}{f' ({sb_errors} errors)' if sb_errors else ''}")
        us = cpu_per_get["http.client"] * 1e6
        print(f"  sandbox CPU per GET                                               {us:8.0f} us  "
              f"(= {1e6 / us:.0f} GET/s per core)")
        base_rate, sb_rate, _ = rates["requests"]
        print(f"  GET baseline, requests.Session                                    {base_rate:8.0f} /s")
        print(f"  GET sandbox, requests.Session                                     {sb_rate:8.0f} /s   "
              f"= {sb_rate / base_rate:6.1%} of baseline (client-bound: requests costs ~ms per call here)")
        print(f"  GET via kubernetes client, typed models (1 thread)                {k8s_rate:8.0f} /s   (client-bound)")
        print(f"  GET via kubernetes client, _preload_content=False (1 thread)      {k8s_raw_rate:8.0f} /s")
        print()
        for label, (p50, worst, size) in (("LIST all namespaces (10,000)", list_all),
                                          ("LIST one namespace (1,000)", list_ns),
                                          ("LIST labelSelector (100)", list_sel),
                                          ("LIST limit=500 (first page)", list_page)):
            print(f"  {label:36} p50 {p50:7.1f} ms   max {worst:7.1f} ms   {size / 1024:8.0f} KiB")
        print()
        if latencies:
            print(f"  watch delivery to {args.watchers} watchers            p50 {pct(latencies, 50):7.2f} ms   "
                  f"p95 {pct(latencies, 95):7.2f} ms   ({len(latencies)} of {writes * args.watchers} events)")
        else:
            print("  watch delivery: no events received")
        print()
        print(f"  RSS empty                            {rss_empty:10.1f} MiB")
        print(f"  RSS with {args.secrets} Secrets            {rss_loaded:10.1f} MiB   goal <= {RSS_GOAL_MIB:.0f} MiB: "
              f"{'MET' if rss_loaded <= RSS_GOAL_MIB else 'MISSED'}")
        print(f"  RSS after lists / watches            {max(rss_after_lists, rss_final):10.1f} MiB")
        api.close()
        return 0
    finally:
        if baseline_proc is not None:
            baseline_proc.terminate()
            baseline_proc.join(5)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
