"""make bench-sync N=1000: the operator's sync against the ansible-operator pattern, same machine, same run.

Real components throughout: ``hsmd sandbox`` (API server), a SoftHSM2 token behind ``hsmd agent``,
``hsmd operator`` with the repository's watches.yaml (role hsm_secret through ansible-runner, the
in-process fast path for data changes). Figures:

1. time until N new HSMSecrets are all Ready (and how many ansible runs that took);
2. one full resync with nothing changed: wall time, operator CPU, ansible runs (must be 0);
3. change-to-Secret latency p50/p95 for writes through the agent (the Secret watch sees them);
4. operator RSS (now and peak);
5. baseline: the ansible-operator pattern - one ansible-runner run per object (hsm_secret_info +
   kubernetes.core.k8s for the Secret + k8s_status), on a sample of 20 with operator-sdk's default
   concurrency (the CPU count), extrapolated to N - printed as a ratio.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The baseline forks ansible-playbook while this process holds gRPC channels to the agent; gRPC's
# fork handlers would run in those children for nothing (and can break them).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import ansible_runner  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from hsmd import kube  # noqa: E402
from hsmd.agent.client import AgentClient  # noqa: E402
from hsmd.operator.cpu import default_concurrency  # noqa: E402
from hsmd.operator.informer import Informer  # noqa: E402
from hsmd.service import wait_for_ready_file  # noqa: E402

NS = "bench"
BASE_NS = "baseline"
GOALS = {"ready_s": 30.0, "ratio": 80.0, "resync_runs": 0, "resync_cpu_s": 2.0, "p95_s": 2.0, "rss_mib": 200.0}
CLK = os.sysconf("SC_CLK_TCK")


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), e.get("PYTHONPATH", "")) if p)
    return e


class Procs:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        ready = self.workdir / f"{name}.ready"
        with open(self.workdir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "hsmd", *args, "--ready-file", str(ready)], cwd=ROOT,
                                    env={**env(), **(extra_env or {})}, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc.pid, wait_for_ready_file(ready, 120, process=proc)

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def rss_mib(pid: int) -> tuple[float, float]:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def metric(url: str, name: str, **labels: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def ready_count(api: Any, n: int) -> int:
    items = kube.request(api, "GET", f"/apis/{kube.API_VERSION}/namespaces/{NS}/hsmsecrets", timeout=60)["items"]
    count = 0
    for obj in items:
        for cond in (obj.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Ready" and cond.get("status") == "True":
                count += 1
    return count


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[index]


BASELINE_PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: Read the HSM secret (the per-object module call of an ansible-operator role)
      hsm.secrets.hsm_secret_info:
        agent: "{{ agent }}"
        path: "{{ hsm_path }}"
        return_content: true
      register: source
      no_log: true
    - name: Create the Secret
      kubernetes.core.k8s:
        state: present
        definition:
          apiVersion: v1
          kind: Secret
          metadata:
            name: "{{ ansible_operator_meta.name }}"
            namespace: "{{ ansible_operator_meta.namespace }}"
          data: "{{ source.secrets[0].data_b64 }}"
      no_log: true
    - name: Write the status
      hsm.secrets.k8s_status:
        api_version: hsm.j5t.io/v1alpha1
        kind: HSMSecret
        name: "{{ ansible_operator_meta.name }}"
        namespace: "{{ ansible_operator_meta.namespace }}"
        status:
          syncStatus: InSync
          hsmChecksum: "{{ source.secrets[0].checksum }}"
"""


def baseline(api: Any, agent: str, kubeconfig: str, sample: int, workdir: Path) -> float:
    """Seconds for ``sample`` objects reconciled the ansible-operator way (one run each)."""
    client = AgentClient(agent)
    for i in range(sample):
        client.write(f"{BASE_NS}/b-{i}", {"user": b"u", "password": f"p-{i}".encode()})
        kube.request(api, "POST", f"/apis/{kube.API_VERSION}/namespaces/{BASE_NS}/hsmsecrets",
                     body={"apiVersion": kube.API_VERSION, "kind": "HSMSecret", "metadata": {"name": f"b-{i}"},
                           "spec": {"hsmPath": f"{BASE_NS}/b-{i}"}})
    client.close()
    project = workdir / "baseline"
    project.mkdir()
    (project / "reconcile.yml").write_text(BASELINE_PLAYBOOK)
    run_env = {
        "ANSIBLE_COLLECTIONS_PATH": str(ROOT / "collections"),
        "K8S_AUTH_KUBECONFIG": kubeconfig,
        "PYTHONPATH": env()["PYTHONPATH"],
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
    }

    def one(i: int) -> bool:
        private = project / f"run-{i}"
        private.mkdir()
        result = ansible_runner.run(
            private_data_dir=str(private), playbook=str(project / "reconcile.yml"), quiet=True,
            inventory=f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}",
            extravars={"agent": agent, "hsm_path": f"{BASE_NS}/b-{i}",
                       "ansible_operator_meta": {"name": f"b-{i}", "namespace": BASE_NS}},
            envvars=run_env,
        )
        return result.status == "successful"

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:  # operator-sdk: NumCPU workers
        ok = list(pool.map(one, range(sample)))
    elapsed = time.monotonic() - start
    if not all(ok):
        raise SystemExit(f"baseline: {ok.count(False)} of {sample} runs failed; see {project}")
    for i in range(sample):
        secret = kube.request(api, "GET", f"/api/v1/namespaces/{BASE_NS}/secrets/b-{i}")
        assert base64.b64decode(secret["data"]["password"]) == f"p-{i}".encode()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--sample", type=int, default=20, help="baseline objects (extrapolated to N)")
    parser.add_argument("--changes", type=int, default=40, help="changes for the latency figure")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--skip-baseline", action="store_true", help="no baseline (quick iterations)")
    parser.add_argument("--operator-log-level", default="warning")
    args = parser.parse_args()
    n = args.n
    workdir = Path(tempfile.mkdtemp(prefix="hsmd-bench-sync-"))
    procs = Procs(workdir)
    print(f"bench-sync: N={n}, CPU quota {default_concurrency()} (work dir {workdir})", flush=True)
    try:
        procs.start("sandbox", ["sandbox", "--listen", "127.0.0.1:0", "--kubeconfig-out",
                                             str(workdir / "kubeconfig"), "--log-level", "warning"])
        kubeconfig = str(workdir / "kubeconfig")
        api = kube.api_client(kubeconfig)
        kube.install_crds(api)
        for ns in (NS, BASE_NS):
            kube.request(api, "POST", "/api/v1/namespaces", body={"apiVersion": "v1", "kind": "Namespace",
                                                                  "metadata": {"name": ns}})
        (workdir / "pin").write_text("1234\n")
        init = subprocess.run([sys.executable, "-m", "hsmd", "softhsm", "init", "--dir", str(workdir / "token"),
                               "--label", "bench", "--pin-file", str(workdir / "pin")], env=env(), cwd=ROOT,
                              capture_output=True, text=True, check=True)
        token = json.loads(init.stdout)
        _, agent_info = procs.start("agent", ["agent", "--pkcs11-library", token["library"], "--token-label", "bench",
                                              "--pin-file", str(workdir / "pin"), "--listen", "127.0.0.1:0",
                                              "--health-listen", "127.0.0.1:0", "--device-profile", "softhsm",
                                              "--log-level", "warning"],
                                    {"SOFTHSM2_CONF": token["conf"]})
        agent = str(agent_info["grpc"])
        client = AgentClient(agent, timeout=30)
        t = time.monotonic()
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda i: client.write(f"{NS}/s-{i}", {"username": f"user-{i}".encode(),
                                                                 "password": os.urandom(24)}), range(n)))
        print(f"  setup: wrote {n} HSM secrets through the agent in {time.monotonic() - t:.1f} s", flush=True)

        op_pid, op_info = procs.start("operator", [
            "operator", "--watches", str(ROOT / "watches.yaml"), "--kubeconfig", kubeconfig, "--agent", agent,
            "--metrics-listen", "127.0.0.1:0", "--runner-dir", str(workdir / "runner"), "--ansible-verbosity", "0",
            "--log-level", args.operator_log_level, "--namespace", NS])
        metrics_url = f"http://{op_info['metrics']}/metrics"

        # 1. N new HSMSecrets until all Ready
        bodies = [{"apiVersion": kube.API_VERSION, "kind": "HSMSecret", "metadata": {"name": f"s-{i}"},
                   "spec": {"hsmPath": f"{NS}/s-{i}"}} for i in range(n)]
        creator = kube.api_client(kubeconfig)
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda b: kube.request(creator, "POST",
                                                 f"/apis/{kube.API_VERSION}/namespaces/{NS}/hsmsecrets", body=b),
                          bodies))
        created = time.monotonic() - start
        while ready_count(api, n) < n:
            if time.monotonic() - start > 600:
                raise SystemExit(f"only {ready_count(api, n)} of {n} Ready after 600 s; see {workdir}/operator.log")
            time.sleep(0.5)
        ready_s = time.monotonic() - start
        runs_create = metric(metrics_url, "hsmd_ansible_runs_total")
        print(f"  1. {n} new HSMSecrets all Ready in {ready_s:.1f} s (created in {created:.1f} s; "
              f"{n / ready_s:.0f}/s; {runs_create:.0f} ansible runs)", flush=True)

        # 2. one full resync with nothing changed
        time.sleep(3)  # let status echoes settle
        runs0 = metric(metrics_url, "hsmd_ansible_runs_total")
        checked0 = metric(metrics_url, "hsmd_resync_total", outcome="checked")
        syncs0 = metric(metrics_url, "hsmd_reconcile_total")
        stale0 = metric(metrics_url, "hsmd_resync_total", outcome="stale")
        cpu0 = cpu_seconds(op_pid)
        t = time.monotonic()
        os.kill(op_pid, signal.SIGUSR1)
        while metric(metrics_url, "hsmd_resync_total", outcome="checked") < checked0 + n:
            if time.monotonic() - t > 120:
                raise SystemExit("the resync did not check every object within 120 s")
            time.sleep(0.05)
        resync_wall = time.monotonic() - t
        resync_cpu = cpu_seconds(op_pid) - cpu0
        stale = metric(metrics_url, "hsmd_resync_total", outcome="stale") - stale0
        time.sleep(1)
        resync_runs = metric(metrics_url, "hsmd_ansible_runs_total") - runs0
        resync_syncs = metric(metrics_url, "hsmd_reconcile_total") - syncs0
        print(f"  2. unchanged resync of {n}: {resync_wall:.2f} s wall, {resync_cpu:.2f} s operator CPU, "
              f"{resync_runs:.0f} ansible runs, {resync_syncs:.0f} syncs, {stale:.0f} stale", flush=True)

        # 3. change-to-Secret latency, writes through the agent, seen through a Secret watch
        seen: dict[str, tuple[bytes, float]] = {}
        lock = threading.Condition()

        def on_secret(etype: str, old: Any, new: Any) -> None:
            if new is None:
                return
            value = base64.b64decode((new.get("data") or {}).get("password", ""))
            with lock:
                seen[new["metadata"]["name"]] = (value, time.monotonic())
                lock.notify_all()

        watcher = Informer(api, kube.Resource("v1", "Secret", "secrets", True, False), on_secret, namespaces=[NS])
        watcher.start()
        watcher.wait_synced(60)
        latencies = []
        for k in range(args.changes):
            name = f"s-{(k * 7919) % n}"
            value = os.urandom(24)
            t = time.monotonic()
            client.write(f"{NS}/{name}", {"username": name.encode(), "password": value})
            with lock:
                ok = lock.wait_for(lambda name=name, value=value: seen.get(name, (b"", 0))[0] == value, timeout=30)
            if not ok:
                raise SystemExit(f"change to {name} did not reach its Secret within 30 s")
            latencies.append(seen[name][1] - t)
            time.sleep(0.1)
        watcher.stop()
        p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
        print(f"  3. change-to-Secret latency over {len(latencies)} writes: p50 {p50 * 1000:.0f} ms, "
              f"p95 {p95 * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms", flush=True)

        # 4. operator memory
        rss, peak = rss_mib(op_pid)
        print(f"  4. operator RSS {rss:.0f} MiB (peak {peak:.0f} MiB)", flush=True)

        if args.skip_baseline:
            return 0
        # 5. baseline: the ansible-operator pattern on a sample, extrapolated
        procs.procs[-1].terminate()  # stop the operator so it does not compete for the CPUs
        procs.procs[-1].wait(30)
        sample_s = baseline(api, agent, kubeconfig, args.sample, workdir)
        baseline_n = sample_s / args.sample * n
        ratio = baseline_n / ready_s
        print(f"  5. baseline (one ansible-runner run per object, {os.cpu_count()} at once): {args.sample} objects in "
              f"{sample_s:.1f} s -> {baseline_n:.0f} s for {n} ({baseline_n / 60:.1f} min) extrapolated", flush=True)
        print(f"\n  speed-up vs the ansible-operator pattern: {ratio:.0f}x", flush=True)

        results = {
            "n": n, "ready_s": round(ready_s, 2), "ansible_runs_create": runs_create,
            "resync_wall_s": round(resync_wall, 3), "resync_cpu_s": round(resync_cpu, 3), "resync_runs": resync_runs,
            "latency_p50_s": round(p50, 3), "latency_p95_s": round(p95, 3), "rss_mib": round(rss, 1),
            "rss_peak_mib": round(peak, 1), "baseline_sample_s": round(sample_s, 2),
            "baseline_extrapolated_s": round(baseline_n, 1), "ratio": round(ratio, 1),
        }
        verdicts = {
            f"{n} Ready <= {GOALS['ready_s']:.0f} s": ready_s <= GOALS["ready_s"],
            f">= {GOALS['ratio']:.0f}x baseline": ratio >= GOALS["ratio"],
            "unchanged resync: 0 ansible runs": resync_runs == GOALS["resync_runs"],
            f"unchanged resync <= {GOALS['resync_cpu_s']:.0f} s CPU": resync_cpu <= GOALS["resync_cpu_s"],
            f"p95 change latency <= {GOALS['p95_s']:.0f} s": p95 <= GOALS["p95_s"],
            f"RSS <= {GOALS['rss_mib']:.0f} MiB": peak <= GOALS["rss_mib"],
        }
        print("\n  goals:")
        for goal, met in verdicts.items():
            print(f"    [{'ok' if met else 'MISSED'}] {goal}")
        print("\n" + json.dumps(results), flush=True)
        return 0
    finally:
        procs.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
