"""make bench-modules: one hsm_secret_sync invocation over N HSMSecrets vs the ansible-operator pattern.

Set-up (not timed): an ``hsmd sandbox`` process with the project CRDs, a SoftHSM token served by an
``hsmd agent`` process holding N secrets, and N HSMSecrets in one namespace.

Measured in the same run, each as a real ``ansible-playbook`` process with this checkout's ansible.cfg:

- the batch: ONE play with ONE ``hsm.secrets.hsm_secret_sync`` task over all N objects (passed as
  extravars, as the operator passes ``hsm_batch``), creating N Secrets; then the same run again with
  nothing to change; then once more with ``write_status: true`` (status + Events);
- the baseline, the naive role: a loop of SAMPLE items, each reading its secret from the agent
  (``hsm.secrets.hsm_secret_info`` with ``return_content``, ``no_log``) and writing one Secret with
  ``kubernetes.core.k8s``; its per-item cost, measured above the cost of an empty play, is
  extrapolated to N and printed as a ratio to the batch.

    python benchmarks/bench_modules.py [--n 1000] [--sample 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hsmd import kube, render  # noqa: E402
from hsmd.agent.client import AgentClient  # noqa: E402
from hsmd.pkcs11.softhsm import create_softhsm_token  # noqa: E402
from hsmd.service import stop_process, wait_for_ready_file  # noqa: E402

PIN = "bench-modules-pin"
NS = "bench-batch"
NAIVE_NS = "bench-naive"
VENV_BIN = str(Path(sys.executable).parent)


def start(cmd: list[str], log: Path, ready: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})))
    return proc, wait_for_ready_file(ready, 60, process=proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    stop_process(proc, 20)


def playbook(work: Path, name: str, tasks: list[dict[str, Any]], extravars: dict[str, Any]) -> float:
    """Run one play; returns wall seconds (ansible-playbook start included)."""
    play = work / f"{name}.yml"
    play.write_text(json.dumps([{"name": name, "hosts": "localhost", "gather_facts": False, "tasks": tasks}]))
    varfile = work / f"{name}.vars.json"
    varfile.write_text(json.dumps(extravars))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), PYTHONPATH=str(ROOT),
               PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""), ANSIBLE_NOCOLOR="1")
    started = time.perf_counter()
    proc = subprocess.run([os.path.join(VENV_BIN, "ansible-playbook"), str(play), "-e", f"@{varfile}"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--sample", type=int, default=20)
    args = parser.parse_args()
    n, sample = args.n, args.sample
    work = Path(tempfile.mkdtemp(prefix="hsmd-bench-modules-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sandbox, _ = start([sys.executable, "-m", "hsmd", "sandbox", "--listen", "127.0.0.1:0",
                                 "--kubeconfig-out", str(work / "kubeconfig"), "--ready-file", str(work / "sandbox.ready")],
                                work / "sandbox.log", work / "sandbox.ready")
        procs.append(sandbox)
        (work / "pin").write_text(PIN + "\n")
        token = create_softhsm_token(work / "softhsm", "bench-modules", PIN)
        agent, aready = start([sys.executable, "-m", "hsmd", "agent", "--pkcs11-library", token.library,
                               "--token-label", token.label, "--pin-file", str(work / "pin"),
                               "--device-profile", "softhsm", "--listen", "127.0.0.1:0",
                               "--health-listen", "127.0.0.1:0", "--ready-file", str(work / "agent.ready")],
                              work / "agent.log", work / "agent.ready", env={"SOFTHSM2_CONF": token.conf})
        procs.append(agent)
        address = aready["grpc"]
        kubeconfig = str(work / "kubeconfig")

        print(f"bench-modules: N={n} HSMSecrets, sample of {sample} for the baseline "
              f"(sandbox API + SoftHSM agent, {os.cpu_count()} CPUs)")
        t0 = time.perf_counter()
        with AgentClient(address) as client:
            for i in range(n):
                client.write(f"{NS}/s{i}", {"username": f"user{i}".encode(), "password": os.urandom(24).hex().encode()})
        print(f"  set-up: {n} HSM secrets written through the agent in {time.perf_counter() - t0:.1f} s")

        api = kube.api_client(kubeconfig)
        kube.install_crds(api)
        for ns in (NS, NAIVE_NS):
            kube.request(api, "POST", "/api/v1/namespaces", body={"metadata": {"name": ns}})

        def create(i: int) -> dict[str, Any]:
            body = {"apiVersion": render.API_VERSION, "kind": render.KIND, "metadata": {"name": f"s{i}"},
                    "spec": {"hsmPath": f"{NS}/s{i}"}}
            obj: dict[str, Any] = kube.request(api, "POST", f"/apis/{render.API_VERSION}/namespaces/{NS}/hsmsecrets",
                                               body=body)
            return obj

        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as pool:
            objects = list(pool.map(create, range(n)))
        print(f"  set-up: {n} HSMSecrets created in {time.perf_counter() - t0:.1f} s")

        common = {"agent": address, "kubeconfig": kubeconfig}
        empty = playbook(work, "empty", [{"name": "nothing", "ansible.builtin.meta": "noop"}], {})
        batch = playbook(work, "batch", [{"name": "sync", "hsm.secrets.hsm_secret_sync": {
            "hsmsecrets": "{{ hsm_batch }}", **common}}], {"hsm_batch": objects})
        again = playbook(work, "batch-again", [{"name": "sync", "hsm.secrets.hsm_secret_sync": {
            "hsmsecrets": "{{ hsm_batch }}", **common}}], {"hsm_batch": objects})
        status = playbook(work, "batch-status", [{"name": "sync", "hsm.secrets.hsm_secret_sync": {
            "hsmsecrets": "{{ hsm_batch }}", "write_status": True, **common}}], {"hsm_batch": objects})
        listed = kube.request(api, "GET", f"/api/v1/namespaces/{NS}/secrets")
        made = len(listed.get("items", []))
        if made != n:
            raise SystemExit(f"the batch made {made} Secrets, expected {n}")

        naive_items = [{"name": f"s{i}", "path": f"{NS}/s{i}"} for i in range(sample)]
        naive = playbook(work, "naive", [
            {"name": "read from the agent", "hsm.secrets.hsm_secret_info": {
                "agent": address, "path": "{{ item.path }}", "return_content": True},
             "loop": "{{ naive_items }}", "register": "naive_read", "no_log": True},
            {"name": "one Secret per item", "kubernetes.core.k8s": {
                "kubeconfig": kubeconfig, "state": "present",
                "definition": {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                               "metadata": {"name": "{{ item.item.name }}", "namespace": NAIVE_NS},
                               "data": "{{ item.secrets[0].data_b64 }}"}},
             "loop": "{{ naive_read.results }}", "no_log": True},
        ], {"naive_items": naive_items})
        per_item = max(naive - empty, 0.0) / sample
        extrapolated = empty + per_item * n

        print(f"  ansible-playbook start (empty play)                  {empty:7.2f} s")
        print(f"  hsm_secret_sync, {n} objects, one invocation (create) {batch:7.2f} s   "
              f"({n / batch:.0f} objects/s incl. start)")
        print(f"  the same again, nothing to change                    {again:7.2f} s")
        print(f"  the same with write_status (status + Events)         {status:7.2f} s")
        print(f"  naive role, {sample} loop items (read + k8s each)        {naive:7.2f} s   "
              f"({per_item:.2f} s per item above start)")
        print(f"  naive role extrapolated to {n}                       {extrapolated:7.1f} s")
        print(f"  ratio naive / batch (create)                          {extrapolated / batch:7.1f}x")
        print(f"  ratio naive / batch (nothing to change)               {extrapolated / again:7.1f}x")
        return 0
    finally:
        for proc in reversed(procs):
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
