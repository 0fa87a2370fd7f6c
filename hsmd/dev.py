"""``hsmd dev`` (``make run``): the whole system on this machine, no cluster needed.

Starts, as child processes with their logs in ``.run/logs/``:

1. the sandbox API server (``hsmd sandbox``), kubeconfig in ``.run/kubeconfig``;
2. a SoftHSM2 development token in ``.run/softhsm`` (``hsmd softhsm init``; PIN in ``.run/pin``, 0600)
   and an agent on it (``hsmd agent``);
3. the operator (``hsmd operator`` with ``watches.yaml``, the agent, ``examples/policy.yaml``);
4. the broker (``hsmd proxy``) when that mode is installed.

Then it installs the CRDs, writes demo secrets into the HSM through the agent, applies
``examples/`` (an HSMDevice for the token, a few HSMSecrets), waits for the Secrets, prints them,
and stays up until Ctrl-C / SIGTERM, when it stops every process it started (children also die
with it if it is killed: PR_SET_PDEATHSIG). ``--exit-after SECONDS`` and ``--check`` (verify the
synced Secrets, exit 0/1) let tests run it to completion.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hsmd import errors, kube
from hsmd.service import wait_for_ready_file

ROOT = Path(__file__).resolve().parents[1]
TOKEN_LABEL = "hsmd-dev"  # noqa: S105 - a token label, not a password

# The HSM side of examples/hsmsecrets.yaml, written through the agent. Demo values only.
DEMO_SECRETS: dict[str, dict[str, bytes]] = {
    "default/database": {"username": b"app", "password": b"demo-" + b"database-password"},
    "default/api-key": {"key": b"demo-api-key-0123456789"},
    "default/tls": {"tls.crt": b"-----BEGIN CERTIFICATE-----\ndemo\n-----END CERTIFICATE-----\n",
                    "tls.key": b"-----BEGIN PRIVATE KEY-----\ndemo\n-----END PRIVATE KEY-----\n"},
    "payments/stripe": {"secret-key": b"demo-never-synced"},
}
EXPECTED: dict[str, tuple[str, str | None]] = {  # HSMSecret -> (Ready reason, HSM path of its Secret)
    "database-credentials": ("Synced", "default/database"),
    "api-key": ("Synced", "default/api-key"),
    "web-tls": ("Synced", "default/tls"),
    "payments-stripe": ("Forbidden", None),
}


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when hsmd dev goes away, however it goes."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    info: dict[str, Any] = field(default_factory=dict)


class Dev:
    def __init__(self, state: Path, *, quiet: bool = False) -> None:
        self.state = state
        self.logs = state / "logs"
        self.children: list[Child] = []
        self.quiet = quiet
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)

    # --- processes -------------------------------------------------------------------------

    def start(self, name: str, args: list[str], *, env: dict[str, str] | None = None, timeout: float = 60) -> Child:
        ready = self.state / f"{name}.ready"
        ready.unlink(missing_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        with open(log, "ab") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "hsmd", *args, "--ready-file", str(ready)],
                stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env or self.env, cwd=ROOT, preexec_fn=_die_with_parent,
            )
        child = Child(name, process, log)
        self.children.append(child)
        try:
            child.info = wait_for_ready_file(ready, timeout, process=process)
        except (RuntimeError, TimeoutError) as exc:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise errors.Unavailable(f"{name} did not start: {exc}\n--- {log} (last lines) ---\n{tail}") from None
        return child

    def stop_all(self) -> None:
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + 20
        for child in reversed(self.children):
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait(5)
        self.children.clear()

    def died(self) -> list[Child]:
        return [c for c in self.children if c.process.poll() is not None]

    # --- the steps -------------------------------------------------------------------------

    def token(self) -> dict[str, Any]:
        pin_file = self.state / "pin"
        if not pin_file.exists():
            fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(8) + "\n")
        result = subprocess.run(
            [sys.executable, "-m", "hsmd", "softhsm", "init", "--dir", str(self.state / "softhsm"),
             "--label", TOKEN_LABEL, "--pin-file", str(pin_file)],
            env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
        if result.returncode != 0:
            raise errors.FailedPrecondition(f"hsmd softhsm init failed: {result.stderr.strip()[-500:]}")
        info: dict[str, Any] = json.loads(result.stdout)
        info["pin_file"] = str(pin_file)
        return info

    def apply(self, api: Any, path: Path) -> list[str]:
        """Create the objects of a YAML file (existing ones are left as they are)."""
        done = []
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict):
                continue
            resource = kube.resolve_resource(api, doc["apiVersion"], doc["kind"])
            namespace = doc["metadata"].get("namespace", "default") if resource.namespaced else None
            try:
                kube.request(api, "POST", resource.collection_path(namespace), body=doc)
                done.append(f"{doc['kind']} {doc['metadata']['name']} created")
            except Exception as exc:
                if getattr(exc, "status", None) != 409:
                    raise kube.api_error(exc, f"create {doc['kind']} {doc['metadata']['name']}") from exc  # type: ignore[arg-type]
                done.append(f"{doc['kind']} {doc['metadata']['name']} exists")
        return done


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)


def secrets_table(api: Any) -> tuple[str, dict[str, dict[str, Any]]]:
    """The HSMSecrets of the demo namespace with their Secrets' keys (never values)."""
    listing = kube.request(api, "GET", f"/apis/{kube.API_VERSION}/namespaces/default/hsmsecrets")
    rows = [["HSMSECRET", "HSM PATH", "SECRET", "READY", "REASON", "KEYS"]]
    state: dict[str, dict[str, Any]] = {}
    for obj in sorted(listing.get("items") or [], key=lambda o: o["metadata"]["name"]):
        name = obj["metadata"]["name"]
        spec = obj.get("spec") or {}
        conditions = (obj.get("status") or {}).get("conditions") or []
        cond: dict[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
        secret_name = spec.get("secretName") or name
        keys = "-"
        secret = None
        try:
            secret = kube.request(api, "GET", f"/api/v1/namespaces/default/secrets/{secret_name}")
            keys = ",".join(sorted(secret.get("data") or {}))
        except Exception:
            secret_name = f"({secret_name}: none)"
        rows.append([name, spec.get("hsmPath") or name, secret_name, cond.get("status", "-"),
                     cond.get("reason", "-"), keys])
        state[name] = {"reason": cond.get("reason"), "secret": secret}
    return _table(rows), state


def verify(state: dict[str, dict[str, Any]]) -> list[str]:
    """What is wrong with the demo, if anything (empty: everything synced as expected)."""
    problems = []
    for name, (reason, path) in EXPECTED.items():
        got = state.get(name)
        if got is None:
            problems.append(f"HSMSecret {name} is missing")
            continue
        if got["reason"] != reason:
            problems.append(f"HSMSecret {name}: Ready reason {got['reason']!r}, expected {reason!r}")
        if path is None:
            if got["secret"] is not None:
                problems.append(f"HSMSecret {name}: a Secret exists but should not")
            continue
        secret = got["secret"]
        if secret is None:
            problems.append(f"HSMSecret {name}: no Secret")
            continue
        data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
        if data != DEMO_SECRETS[path]:
            problems.append(f"HSMSecret {name}: the Secret's data differs from HSM path {path}")
    return problems


def wait_for(predicate: Callable[[], bool], timeout: float, stop: threading.Event) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        if predicate():
            return True
        stop.wait(0.5)
    return predicate()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hsmd dev", description="Run sandbox + SoftHSM agent + operator (+ broker) "
                                "locally with sample resources; Ctrl-C stops everything.")
    p.add_argument("--state-dir", default=str(ROOT / ".run"), help="where state and logs go (default: .run)")
    p.add_argument("--exit-after", type=float, metavar="SECONDS",
                   help="stop everything this long after the demo is up (default: run until Ctrl-C)")
    p.add_argument("--check", action="store_true",
                   help="verify the demo Secrets and exit: 0 when everything synced as expected, 1 otherwise")
    p.add_argument("--timeout", type=float, default=180, help="how long to wait for the Secrets; default %(default)s")
    p.add_argument("--no-operator", action="store_true", help="do not start the operator")
    p.add_argument("--no-proxy", action="store_true", help="do not start the broker")
    p.add_argument("--fresh", action="store_true", help="remove the state dir first (new token, new cluster)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    state = Path(args.state_dir).resolve()
    if args.fresh and state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True, exist_ok=True)
    dev = Dev(state)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = 0
    try:
        kubeconfig = state / "kubeconfig"
        dev.say("hsmd dev: starting the sandbox API server ...")
        sandbox = dev.start("sandbox", ["sandbox", "--listen", "127.0.0.1:0", "--kubeconfig-out", str(kubeconfig)])
        dev.say(f"  sandbox   {sandbox.info.get('url')}  (kubeconfig {kubeconfig})")

        token = dev.token()
        agent_env = dict(dev.env, SOFTHSM2_CONF=token["conf"])
        agent = dev.start("agent", [
            "agent", "--pkcs11-library", token["library"], "--token-label", TOKEN_LABEL,
            "--pin-file", token["pin_file"], "--listen", "127.0.0.1:0", "--health-listen", "127.0.0.1:0",
            "--device-profile", "softhsm"], env=agent_env)
        agent_address = str(agent.info["grpc"])
        dev.say(f"  agent     {agent_address}  (SoftHSM token {TOKEN_LABEL!r} serial {token['serial']}, "
                f"health http://{agent.info.get('health')}/healthz)")

        api = kube.api_client(str(kubeconfig))
        kube.install_crds(api)
        dev.say("  CRDs      HSMSecret, HSMDevice, HSMPool installed")

        from hsmd.agent.client import AgentClient

        with AgentClient(agent_address) as client:
            for path, data in DEMO_SECRETS.items():
                result = client.write(path, data)
                check = client.read(path)
                assert check.checksum == result.checksum
            dev.say(f"  HSM       wrote and read back {len(DEMO_SECRETS)} demo secrets through the agent: "
                    f"{', '.join(DEMO_SECRETS)}")

        policy = ROOT / "examples" / "policy.yaml"
        if not args.no_operator:
            operator = dev.start("operator", [
                "operator", "--watches", str(ROOT / "watches.yaml"), "--kubeconfig", str(kubeconfig),
                "--agent", agent_address, "--policy", str(policy), "--metrics-listen", "127.0.0.1:0",
                "--runner-dir", str(state / "runner"), "--resync-tick", "5", "--backoff-cap", "30"], timeout=120)
            dev.say(f"  operator  metrics http://{operator.info.get('metrics')}/metrics")

        proxy_url = None
        if not args.no_proxy and importlib.util.find_spec("hsmd.proxy.cli") is not None:
            try:
                proxy = dev.start("proxy", ["proxy", "--listen", "127.0.0.1:0", "--agent", agent_address,
                                            "--kubeconfig", str(kubeconfig), "--policy", str(policy)])
                proxy_url = str(proxy.info.get("url") or f"http://{proxy.info.get('http')}")
                dev.say(f"  proxy     {proxy_url}")
            except errors.HsmdError as exc:
                dev.say(f"  proxy     did not start ({str(exc).splitlines()[0]}); continuing without it")
        elif not args.no_proxy:
            dev.say("  proxy     not installed in this checkout; skipped")

        for doc in ("hsmdevice-softhsm.yaml", "hsmsecrets.yaml"):
            for line in dev.apply(api, ROOT / "examples" / doc):
                dev.say(f"  applied   {line}")
        with contextlib.suppress(Exception):  # exists already
            kube.request(api, "POST", "/api/v1/namespaces/default/serviceaccounts",
                         body={"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "hsmctl"}})

        if args.no_operator:
            dev.say("\nThe operator is off (--no-operator): the secrets above live in the HSM only.")
            table, current = secrets_table(api)
        else:
            dev.say("\nWaiting for the operator to sync the Secrets ...")
            started = time.monotonic()

            def synced() -> bool:
                _table_text, now = secrets_table(api)
                return not verify(now)

            ok = wait_for(synced, args.timeout, stop)
            table, current = secrets_table(api)
            dev.say(f"\n{table}\n")
            if ok:
                dev.say(f"All demo Secrets synced in {time.monotonic() - started:.1f} s "
                        "(payments-stripe is Forbidden by examples/policy.yaml, on purpose).")
            else:
                for problem in verify(current):
                    dev.say(f"  NOT YET: {problem}")
                if args.check:
                    code = 1
        dev.say(f"\nTry:\n  kubectl --kubeconfig {kubeconfig} get hsmsecrets,secrets\n"
                f"  kubectl --kubeconfig {kubeconfig} describe hsmsecret database-credentials")
        if proxy_url:
            dev.say(f"  {Path(sys.executable).parent / 'hsmctl'} --server {proxy_url} --service-account default/hsmctl "
                    f"--kubeconfig {kubeconfig} list")
        dev.say(f"Logs: {dev.logs}/")

        if args.check:
            return code
        dev.say("\nRunning; press Ctrl-C to stop everything." if args.exit_after is None
                else f"\nStopping in {args.exit_after:g} s.")
        deadline = None if args.exit_after is None else time.monotonic() + args.exit_after
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            dead = dev.died()
            if dead:
                for child in dead:
                    dev.say(f"{child.name} exited with code {child.process.returncode}; see {child.log}")
                code = 1
                break
            stop.wait(0.5)
        return code
    except errors.HsmdError as exc:
        print(f"hsmd dev: {exc}", file=sys.stderr)
        return 1
    finally:
        dev.say("hsmd dev: stopping ...")
        dev.stop_all()
        dev.say("hsmd dev: stopped.")


if __name__ == "__main__":
    raise SystemExit(main())
