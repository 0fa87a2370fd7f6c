"""``hsmd operator``: watch the kinds of a watches.yaml and reconcile them through ansible-runner.

    hsmd operator --watches watches.yaml [--kubeconfig F] [--namespace NS ...] [--agent HOST:PORT ...]
                  [--agent-ca F --agent-cert F --agent-key F] [--policy FILE] [--metrics-listen HOST:PORT]
                  [--leader-elect [--lease-namespace NS]] [--ready-file F] [--runner-dir DIR]

Exit codes: 0 after SIGTERM/SIGINT, 1 when leadership was lost (the Deployment restarts us, as
controller-runtime managers do), 2 for bad flags or a bad watches.yaml.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path

from hsmd import errors, kube
from hsmd.agent.client import ClientTLS
from hsmd.operator.agents import Agents
from hsmd.operator.controller import Operator, OperatorSettings
from hsmd.operator.cpu import default_concurrency
from hsmd.operator.leader import LeaderElector
from hsmd.operator.metrics import Metrics
from hsmd.operator.watches import DEFAULT_ANSIBLE_VERBOSITY, load_watches
from hsmd.service import setup_logging, shutdown_event, write_ready_file

_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hsmd operator", description=__doc__.split("\n\n")[0])
    p.add_argument("--watches", default="watches.yaml", help="watches.yaml (operator-sdk format); default %(default)s")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    p.add_argument("--context", help="kubeconfig context")
    p.add_argument("--namespace", action="append", default=[], metavar="NS",
                   help="watch only this namespace (repeatable; default: $WATCH_NAMESPACE or all namespaces)")
    p.add_argument("--agent", action="append", default=[], metavar="HOST:PORT",
                   help="static agent (repeatable; several = mirrors of one pool). Default: the agents of "
                        "each HSMSecret's HSMPool")
    p.add_argument("--agent-ca", help="CA bundle of the agents' certificates (enables TLS)")
    p.add_argument("--agent-cert", help="client certificate for mTLS to the agents")
    p.add_argument("--agent-key", help="client key for mTLS to the agents")
    p.add_argument("--agent-server-name", help="name in the agents' certificates, if not the address host")
    p.add_argument("--policy", help="access policy file (re-read on change); default: namespace N may sync N/**")
    p.add_argument("--metrics-listen", default="0.0.0.0:8080", metavar="HOST:PORT",
                   help="Prometheus /metrics address (port 0: any free port; empty: off); default %(default)s")
    p.add_argument("--leader-elect", action="store_true", help="elect a leader on a Lease; only it reconciles")
    p.add_argument("--lease-namespace", help="namespace of the Lease (default: the pod's namespace or 'default')")
    p.add_argument("--lease-name", default="hsmd-operator", help="name of the Lease; default %(default)s")
    p.add_argument("--identity", help="this replica's name in the Lease (default: hostname_pid)")
    p.add_argument("--lease-duration", type=float, default=15.0, help="seconds; default %(default)s")
    p.add_argument("--renew-deadline", type=float, default=10.0, help="seconds; default %(default)s")
    p.add_argument("--retry-period", type=float, default=2.0, help="seconds; default %(default)s")
    p.add_argument("--ready-file", help="write {metrics, leader, pid} here once serving")
    p.add_argument("--runner-dir", help="ansible-runner private data dirs and artifacts (default: a temp dir)")
    p.add_argument("--max-concurrent-runs", type=int, default=0,
                   help="ansible runs at once (default: the container's CPU quota)")
    p.add_argument("--max-concurrent-reconciles", type=int, default=0,
                   help="workers per kind unless MAX_CONCURRENT_RECONCILES_<KIND>_<GROUP> says otherwise "
                        "(default: the CPU quota)")
    p.add_argument("--ansible-verbosity", type=int, default=DEFAULT_ANSIBLE_VERBOSITY,
                   help="default -v level of runs (ANSIBLE_VERBOSITY_<KIND>_<GROUP> overrides); default %(default)s")
    p.add_argument("--ansible-config", help="ansible.cfg for runs (default: the one next to watches.yaml, if any)")
    p.add_argument("--resync-tick", type=float, default=5.0,
                   help="seconds between checks for HSMSecrets due a resync (each has its syncInterval); "
                        "default %(default)s")
    p.add_argument("--backoff-base", type=float, default=1.0, help="first retry delay, seconds; default %(default)s")
    p.add_argument("--backoff-cap", type=float, default=300.0, help="longest retry delay, seconds; default %(default)s")
    p.add_argument("--watch-timeout", type=int, default=300, help="seconds per watch request; default %(default)s")
    p.add_argument("--run-timeout", type=float, default=0,
                   help="kill an ansible run after this many seconds (0: never)")
    p.add_argument("--no-fast-path", action="store_true",
                   help="sync HSMSecret data through the role only (no in-process sync; slower)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def _lease_namespace(args: argparse.Namespace) -> str:
    if args.lease_namespace:
        return str(args.lease_namespace)
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return _SA_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    log = setup_logging("operator", args.log_level)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    namespaces = args.namespace or [n for n in os.environ.get("WATCH_NAMESPACE", "").split(",") if n]
    concurrency = default_concurrency()
    watches_path = Path(args.watches).resolve()
    repo_collections = watches_path.parent / "collections"
    collections = [str(repo_collections)] if repo_collections.is_dir() else []
    try:
        watches = load_watches(
            watches_path,
            default_max_concurrent=args.max_concurrent_reconciles or concurrency,
            default_verbosity=args.ansible_verbosity,
            collection_paths=[Path(c) for c in collections],
        )
        tls = None
        if args.agent_ca or args.agent_cert or args.agent_key:
            if not args.agent_ca:
                raise errors.InvalidArgument("--agent-cert/--agent-key need --agent-ca")
            if bool(args.agent_cert) != bool(args.agent_key):
                raise errors.InvalidArgument("give --agent-cert and --agent-key together")
            tls = ClientTLS(args.agent_ca, args.agent_cert, args.agent_key, args.agent_server_name)
        # one long-lived connection per watch plus parallel writers: more than urllib3's default 10
        api = kube.api_client(args.kubeconfig, args.context, connection_pool_maxsize=64)
    except errors.HsmdError as exc:
        log.error("cannot start", extra={"error": str(exc)})
        print(f"hsmd operator: {exc}", file=sys.stderr)
        return 2

    own_runner_dir = args.runner_dir is None
    runner_dir = Path(args.runner_dir or tempfile.mkdtemp(prefix="hsmd-operator-"))
    ansible_cfg = args.ansible_config or (
        str(watches_path.parent / "ansible.cfg") if (watches_path.parent / "ansible.cfg").exists() else None
    )
    tls_vars: dict[str, str] = {}
    if tls is not None:
        tls_vars = {"hsm_secret_agent_ca_file": tls.ca_file}
        if tls.cert_file and tls.key_file:
            tls_vars.update(hsm_secret_agent_cert_file=tls.cert_file, hsm_secret_agent_key_file=tls.key_file)
        if tls.server_name:
            tls_vars["hsm_secret_agent_server_name"] = tls.server_name
    settings = OperatorSettings(
        namespaces=namespaces,
        kubeconfig=str(Path(args.kubeconfig).resolve()) if args.kubeconfig else None,
        runner_dir=runner_dir,
        max_concurrent_runs=args.max_concurrent_runs or concurrency,
        fast_path=not args.no_fast_path,
        resync_tick=args.resync_tick,
        backoff_base=args.backoff_base,
        backoff_cap=args.backoff_cap,
        watch_timeout=args.watch_timeout,
        policy_file=str(Path(args.policy).resolve()) if args.policy else None,
        agent_tls_files=tls_vars,
        ansible_config=ansible_cfg,
        collections_paths=collections,
        roles_paths=[str(watches_path.parent / "roles")] if (watches_path.parent / "roles").is_dir() else [],
        run_timeout=args.run_timeout or None,
    )
    metrics = Metrics()
    agents = Agents(args.agent, tls=tls, api=None if args.agent else api)
    try:
        operator = Operator(api, watches, settings, agents=agents, metrics=metrics)
    except errors.HsmdError as exc:
        print(f"hsmd operator: {exc}", file=sys.stderr)
        return 2
    stop = shutdown_event()
    info: dict[str, object] = {"leader": False, "watches": [w.kind for w in watches], "runner_dir": str(runner_dir)}
    if args.metrics_listen:
        info["metrics"] = metrics.serve(args.metrics_listen)
    signal.signal(signal.SIGUSR1, lambda *_: operator.request_resync())  # "resync everything now"
    log.info("operator starting", extra={
        "watches": [w.gvk for w in watches], "namespaces": namespaces or "all", "agents": args.agent or "from pools",
        "max_concurrent_runs": settings.max_concurrent_runs, "fast_path": settings.fast_path,
        "leader_elect": args.leader_elect})

    def started() -> None:
        operator.start_leading()

        def announce() -> None:  # off the elector's thread: it must keep renewing meanwhile
            synced = operator.wait_synced(60)
            info["leader"] = True
            info["synced"] = synced
            write_ready_file(args.ready_file, info)
            log.info("reconciling", extra={"synced": synced})

        threading.Thread(target=announce, name="announce", daemon=True).start()

    lost = threading.Event()

    def stopped() -> None:
        operator.stop_leading()
        if not stop.is_set():
            lost.set()

    code = 0
    try:
        if args.leader_elect:
            identity = args.identity or f"{socket.gethostname()}_{os.getpid()}"
            info["identity"] = identity
            write_ready_file(args.ready_file, info)  # serving (metrics), not leading yet
            elector = LeaderElector(
                api,
                namespace=_lease_namespace(args),
                name=args.lease_name,
                identity=identity,
                lease_duration=args.lease_duration,
                renew_deadline=args.renew_deadline,
                retry_period=args.retry_period,
                on_started_leading=started,
                on_stopped_leading=stopped,
            )
            if not elector.run(stop) or lost.is_set():
                log.error("leadership lost; exiting so that a fresh process can compete again")
                code = 1
        else:
            started()
            stop.wait()
    finally:
        operator.stop()
        metrics.close()
        if own_runner_dir:
            shutil.rmtree(runner_dir, ignore_errors=True)
        logging.getLogger("hsmd").info("operator stopped", extra={"code": code})
    return code


if __name__ == "__main__":
    raise SystemExit(main())
