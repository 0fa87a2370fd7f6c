"""``hsmd sandbox``: run the local Kubernetes API server as a process.

    hsmd sandbox --listen 127.0.0.1:0 --kubeconfig-out .run/kubeconfig [--state-dir DIR]
                 [--tokens FILE] [--require-auth] [--tls] [--history-window N]
                 [--bookmark-interval S] [--ready-file F]

Writes the kubeconfig (admin user with a bearer token) once serving, then the ready file with
{"url", "kubeconfig", "faults"}; stops on SIGTERM/SIGINT. Fault injection from another process:
``hsmd.sandbox.RemoteFaults(url, admin_token)`` or POST /sandbox/faults.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hsmd.errors import HsmdError
from hsmd.service import setup_logging, shutdown_event, write_ready_file


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hsmd sandbox", description="A local Kubernetes API server for tests, "
                                "demos and development (no cluster needed).")
    p.add_argument("--listen", type=_listen, default=("127.0.0.1", 0), metavar="HOST:PORT",
                   help="address to serve on (port 0: any free port; default 127.0.0.1:0)")
    p.add_argument("--kubeconfig-out", required=True, metavar="PATH",
                   help="write a kubeconfig for the admin user here once serving")
    p.add_argument("--state-dir", metavar="DIR", help="keep objects here across restarts (resourceVersions continue)")
    p.add_argument("--tokens", metavar="FILE",
                   help="static bearer tokens, kube-apiserver format: token,user,uid,\"group1,group2\"")
    p.add_argument("--require-auth", action="store_true",
                   help="reject requests without a valid bearer token (401) instead of treating them as anonymous")
    p.add_argument("--tls", action="store_true", help="serve HTTPS with a generated CA (in the kubeconfig)")
    p.add_argument("--history-window", type=int, default=10000, metavar="N",
                   help="events kept for watches; older resourceVersions get 410 Gone (default 10000)")
    p.add_argument("--bookmark-interval", type=float, default=60.0, metavar="SECONDS",
                   help="how often watches with allowWatchBookmarks get a BOOKMARK (default 60)")
    p.add_argument("--ready-file", metavar="PATH", help="write {url, kubeconfig} as JSON here once serving")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    log = setup_logging("sandbox", args.log_level)
    from hsmd.sandbox import Sandbox

    try:
        sandbox = Sandbox(host=args.listen[0], port=args.listen[1], state_dir=args.state_dir,
                          tokens_file=args.tokens, require_auth=args.require_auth, tls=args.tls,
                          history_window=args.history_window, bookmark_interval=args.bookmark_interval,
                          kubeconfig_path=args.kubeconfig_out)
    except HsmdError as exc:
        print(f"hsmd sandbox: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"hsmd sandbox: cannot listen on {args.listen[0]}:{args.listen[1]}: {exc.strerror}", file=sys.stderr)
        return 1
    stop = shutdown_event()
    log.info("sandbox serving", extra={"url": sandbox.url, "kubeconfig": sandbox.kubeconfig,
                                      "state_dir": args.state_dir, "require_auth": args.require_auth})
    write_ready_file(args.ready_file, {"url": sandbox.url, "kubeconfig": sandbox.kubeconfig,
                                       "faults": sandbox.url + "/sandbox/faults", "ca_file": sandbox.ca_file})
    try:
        stop.wait()
    finally:
        sandbox.stop()
        log.info("sandbox stopped")
    return 0
