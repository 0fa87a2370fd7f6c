"""``hsmd proxy``: run the REST secrets broker.

hsmd proxy --listen HOST:PORT (--agent HOST:PORT ... | --pool NAMESPACE/NAME) [--kubeconfig F]
           [--policy FILE | --policy-configmap NAMESPACE/NAME] [--audience AUD] [--audit-log FILE|-]
           [--quorum majority|all|one] [--max-body BYTES] [--tls-cert F --tls-key F]
           [--agent-ca F [--agent-cert F --agent-key F] [--agent-server-name N]] [--threads N]
           [--no-read-coalescing] [--read-cache-ttl SECONDS] [--read-cache-entries N] [--read-cache-mib MIB]
           [--ready-file F]
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
import threading
from collections.abc import Sequence
from typing import Any

from hsmd import kube, readcache
from hsmd.errors import HsmdError, InvalidArgument
from hsmd.fanout import QUORUMS, AgentSet, agents_from_pool
from hsmd.policy import POLICY_CONFIGMAP, Policy, PolicyFile
from hsmd.proxy.app import DEFAULT_MAX_BODY, ProxyConfig, create_app
from hsmd.proxy.audit import AuditLog
from hsmd.proxy.auth import TokenReviewAuthenticator
from hsmd.proxy.policy_source import ConfigMapPolicy, PolicySource, StaticPolicy
from hsmd.proxy.server import start_server
from hsmd.service import setup_logging, shutdown_event, write_ready_file

log = logging.getLogger("hsmd.proxy")


def parse_hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgument(f"{what} must be HOST:PORT, got {text!r}")
    return host, int(port)


def parse_ref(text: str, what: str) -> tuple[str, str]:
    namespace, sep, name = text.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise InvalidArgument(f"{what} must be NAMESPACE/NAME, got {text!r}")
    return namespace, name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hsmd proxy", description="The REST secrets broker (see docs/proxy.md).")
    p.add_argument("--listen", default="127.0.0.1:8090", help="HOST:PORT to serve on (port 0: any free port)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--agent", action="append", metavar="HOST:PORT", help="an agent's gRPC address (repeatable)")
    src.add_argument("--pool", metavar="NAMESPACE/NAME", help="follow the agents of this HSMPool")
    p.add_argument(
        "--kubeconfig", help="kubeconfig for TokenReview, --pool and --policy-configmap (default: in-cluster)"
    )
    pol = p.add_mutually_exclusive_group()
    pol.add_argument("--policy", metavar="FILE", help="access policy file, re-read when it changes")
    pol.add_argument(
        "--policy-configmap",
        metavar="NAMESPACE/NAME",
        help=f"access policy from this ConfigMap (key policy.yaml; usually {POLICY_CONFIGMAP})",
    )
    p.add_argument("--audience", default="hsmd", help="the token audience the broker accepts (default hsmd)")
    p.add_argument("--audit-log", metavar="FILE|-", help="append one JSON line per request ('-' = stdout)")
    p.add_argument("--quorum", choices=QUORUMS, default="majority", help="write acknowledgements needed")
    p.add_argument("--max-body", type=int, default=DEFAULT_MAX_BODY, metavar="BYTES", help="request body limit")
    p.add_argument("--tls-cert", help="serve HTTPS with this certificate chain (PEM)")
    p.add_argument("--tls-key", help="the certificate's private key (PEM)")
    p.add_argument("--agent-ca", help="CA bundle for mTLS to the agents")
    p.add_argument("--agent-cert", help="client certificate for mTLS to the agents")
    p.add_argument("--agent-key", help="client key for mTLS to the agents")
    p.add_argument("--agent-server-name", help="TLS name to expect from agents (when addresses are pod IPs)")
    p.add_argument("--agent-timeout", type=float, default=10.0, help="seconds per agent call")
    p.add_argument("--pool-refresh", type=float, default=10.0, help="seconds between HSMPool agent lookups")
    p.add_argument("--threads", type=int, default=8, help="request worker threads")
    p.add_argument(
        "--no-read-coalescing",
        action="store_true",
        help="send every read on its own instead of sharing agent calls between concurrent reads",
    )
    readcache.add_flags(
        p, "keep each agent's answers this long; a change through an agent drops them at once (its change "
        "stream); bounds changes made behind the agents' backs", scope=" per agent",
        entries_aliases=("--read-cache-size",),
    )
    p.add_argument("--ready-file", help="write the bound address here as JSON once serving")
    p.add_argument("--log-level", default="info")
    return p


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging("proxy", args.log_level)
    try:
        return run(args)
    except HsmdError as exc:
        log.error("cannot start the proxy", extra={"error": exc.code, "reason": exc.message})
        print(f"hsmd proxy: {exc.message}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    host, port = parse_hostport(args.listen, "--listen")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise InvalidArgument("--tls-cert and --tls-key go together")
    if (args.agent_cert or args.agent_key) and not args.agent_ca:
        raise InvalidArgument("--agent-cert/--agent-key need --agent-ca")
    if args.max_body < 1024:
        raise InvalidArgument("--max-body must be at least 1024 bytes")
    read_cache = readcache.settings_from_args(args)
    addresses: list[str] = []
    if args.agent:
        addresses = [
            f"{h}:{p}" if ":" not in h else f"[{h}]:{p}" for h, p in (parse_hostport(a, "--agent") for a in args.agent)
        ]
    api = kube.api_client(args.kubeconfig)
    stop = shutdown_event()

    tls: Any = None
    if args.agent_ca:
        from hsmd.agent.client import ClientTLS

        tls = ClientTLS(args.agent_ca, args.agent_cert, args.agent_key, args.agent_server_name)

    if not args.agent:
        pool_ns, pool_name = parse_ref(args.pool, "--pool")
        addresses = agents_from_pool(api, pool_ns, pool_name)
        if not addresses:
            log.warning("the pool has no ready agents yet", extra={"pool": args.pool})
    agents = AgentSet.from_addresses(
        addresses,
        quorum=args.quorum,
        tls=tls,
        timeout=args.agent_timeout,
        coalesce_reads=not args.no_read_coalescing,
        read_cache=read_cache,
    )

    policy: PolicySource
    configmap: ConfigMapPolicy | None = None
    if args.policy:
        policy = PolicyFile(args.policy)
    elif args.policy_configmap:
        cm_ns, cm_name = parse_ref(args.policy_configmap, "--policy-configmap")
        configmap = ConfigMapPolicy(api, cm_ns, cm_name)
        configmap.start()
        policy = configmap
    else:
        log.warning("no access policy configured: every request will be denied")
        policy = StaticPolicy(Policy.deny_all())

    audit = AuditLog(args.audit_log)
    config = ProxyConfig(
        agents=agents,
        authenticator=TokenReviewAuthenticator(api, args.audience),
        policy=policy,
        audit=audit,
        max_body=args.max_body,
        pin_transport_ok=bool(args.tls_cert) or _is_loopback(host),
    )
    app = create_app(config)
    agents.start()
    pool_thread = None
    if args.pool:
        pool_thread = threading.Thread(
            target=_follow_pool,
            args=(api, args.pool, agents, args.pool_refresh, stop),
            name="pool-refresh",
            daemon=True,
        )
        pool_thread.start()
    server = start_server(
        app, host, port, threads=args.threads, max_body=args.max_body, tls_cert=args.tls_cert, tls_key=args.tls_key
    )
    log.info(
        "proxy serving",
        extra={"url": server.url, "agents": agents.addresses, "quorum": args.quorum, "audience": args.audience,
               "read_cache_ttl": read_cache.ttl if read_cache.enabled else 0},
    )
    write_ready_file(args.ready_file, {"http": server.address, "url": server.url})
    stop.wait()
    log.info("proxy stopping")
    server.close()
    if configmap is not None:
        configmap.stop()
    agents.close()
    audit.close()
    return 0


def _follow_pool(api: Any, pool: str, agents: AgentSet, interval: float, stop: threading.Event) -> None:
    namespace, name = parse_ref(pool, "--pool")
    while not stop.wait(interval):
        try:
            agents.set_addresses(agents_from_pool(api, namespace, name))
        except HsmdError as exc:
            log.warning(
                "pool lookup failed; keeping the current agents", extra={"error": exc.code, "reason": exc.message}
            )
        except Exception as exc:
            log.warning("pool lookup failed; keeping the current agents", extra={"error_type": type(exc).__name__})
