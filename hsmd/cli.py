"""The ``hsmd`` console script: one binary, one mode per subcommand.

Each mode lives in its own package and exposes ``main(argv) -> int``; it is imported only when
chosen, so ``hsmd sandbox`` never pays for PyKCS11 or grpc and ``hsmd agent`` never for Flask.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

MODES: dict[str, tuple[str, str]] = {
    "agent": ("hsmd.agent.cli", "serve one PKCS#11 token over gRPC (hsm.v1.HSMAgent)"),
    "operator": ("hsmd.operator.cli", "watch HSMSecret/HSMDevice/HSMPool and reconcile through ansible-runner"),
    "proxy": ("hsmd.proxy.cli", "the REST secrets broker (Kubernetes identity, policy, audit)"),
    "discovery": ("hsmd.discovery.cli", "find USB HSMs on this node and report them in the pod annotation"),
    "sandbox": ("hsmd.sandbox.cli", "a local Kubernetes API server for tests, demos and development"),
    "softhsm": ("hsmd.pkcs11.softhsm_cli", "create or inspect a SoftHSM2 development token"),
    "dev": ("hsmd.dev", "run the whole system locally on the sandbox and a SoftHSM token (make run)"),
}


def _usage() -> str:
    width = max(len(m) for m in MODES)
    lines = ["usage: hsmd MODE [options]", "", "modes:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in MODES.items()]
    lines += ["", "Run 'hsmd MODE --help' for the options of a mode."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if args[0] == "--version":
        from hsmd import __version__

        print(__version__)
        return 0
    mode = args[0]
    if mode not in MODES:
        print(f"hsmd: unknown mode {mode!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(MODES[mode][0])
    entry: Callable[[list[str]], int] = module.main
    return entry(args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
