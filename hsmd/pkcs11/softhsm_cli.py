"""``hsmd softhsm``: create and inspect SoftHSM2 development tokens (PINs from files, never argv).

    hsmd softhsm init --dir D --label L --pin-file F [--so-pin-file F] [--profile dev|production]
    hsmd softhsm list --dir D

``init`` is idempotent (an existing token with that label is reported as it is) and prints
``{"conf", "library", "label", "serial"}`` as JSON; export ``SOFTHSM2_CONF=<conf>`` for any process
that should see the token. ``--profile production`` is refused: SoftHSM2 keeps keys in files.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from hsmd.errors import FailedPrecondition, HsmdError
from hsmd.service import read_secret_input


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsmd softhsm", description="SoftHSM2 development tokens")
    sub = parser.add_subparsers(dest="command", required=True)
    init = sub.add_parser("init", help="create a token (idempotent) and print its JSON description")
    init.add_argument("--dir", required=True, help="directory for the token and its softhsm2.conf")
    init.add_argument("--label", required=True, help="token label (1 to 32 bytes)")
    init.add_argument("--pin-file", help="file holding the user PIN")
    init.add_argument("--pin-env", help="environment variable holding the user PIN")
    init.add_argument("--so-pin-file", help="file holding the SO PIN (default: random, not kept)")
    init.add_argument("--library", help="libsofthsm2.so (default: found in the usual places)")
    init.add_argument("--profile", choices=("dev", "production"), default="dev", help="deployment profile")
    show = sub.add_parser("list", help="list the tokens in a directory as JSON")
    show.add_argument("--dir", required=True)
    show.add_argument("--library")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "init":
            return _init(args)
        return _list(args)
    except HsmdError as err:
        print(f"hsmd softhsm: {err.message}", file=sys.stderr)
        return 1


def _init(args: argparse.Namespace) -> int:
    from hsmd.pkcs11.softhsm import create_softhsm_token

    if args.profile == "production":
        raise FailedPrecondition(
            "SoftHSM2 is for development and tests only; refusing to create a token for the production profile"
        )
    pin = read_secret_input(file=args.pin_file, env=args.pin_env, what="user PIN")
    so_pin = read_secret_input(file=args.so_pin_file, what="SO PIN") if args.so_pin_file else None
    token = create_softhsm_token(args.dir, args.label, pin, so_pin, library=args.library)
    print(json.dumps({"conf": token.conf, "library": token.library, "label": token.label, "serial": token.serial}))
    return 0


def _list(args: argparse.Namespace) -> int:
    from hsmd.pkcs11.softhsm import list_softhsm_tokens

    tokens = list_softhsm_tokens(args.dir, library=args.library)
    print(json.dumps([{"label": t.label, "serial": t.serial, "conf": t.conf} for t in tokens]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
