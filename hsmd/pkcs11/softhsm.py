"""SoftHSM2 development tokens, created without a PIN ever reaching argv.

``softhsm2-util --init-token`` takes its PINs on the command line, where every user of the
machine can read them, so tokens are initialized through PyKCS11 instead (C_InitToken, log in
as SO, C_InitPIN). SoftHSM2 reads SOFTHSM2_CONF once per process, when the library is first
initialized, so a token in a directory this process cannot see is created by a child Python
process that gets the PINs on stdin.

Each token directory gets its own ``softhsm2.conf``; give ``softhsm_env(conf)`` to any process
(agent, pkcs11-tool) that should see the token. SoftHSM2 is for development and tests only:
``hsmd softhsm init --profile production`` refuses (hsmd.pkcs11.softhsm_cli).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import PyKCS11

from hsmd.errors import FailedPrecondition, HsmdError, InvalidArgument, error_from_code
from hsmd.pkcs11 import ckr
from hsmd.pkcs11.device import list_tokens, load_library, loaded_conf, pad_label

CANDIDATE_LIBRARIES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)
CONF_NAME = "softhsm2.conf"


@dataclass(frozen=True)
class SoftHSMToken:
    directory: str
    conf: str
    library: str
    label: str
    serial: str

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        return softhsm_env(self.conf, base)


def softhsm_library() -> str:
    """Path of libsofthsm2.so: $HSMD_SOFTHSM_LIBRARY, else the usual install locations."""
    override = os.environ.get("HSMD_SOFTHSM_LIBRARY")
    if override:
        return override
    for candidate in CANDIDATE_LIBRARIES:
        if os.path.exists(candidate):
            return candidate
    raise FailedPrecondition(
        "SoftHSM2 is not installed (libsofthsm2.so not found); install the softhsm2 package "
        "or set HSMD_SOFTHSM_LIBRARY"
    )


def softhsm_env(conf: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a process that should see the token(s) configured by ``conf``."""
    env = dict(os.environ if base is None else base)
    env["SOFTHSM2_CONF"] = str(conf)
    return env


def write_conf(directory: str | Path) -> str:
    """Create ``directory/tokens`` and ``directory/softhsm2.conf`` (kept if it exists)."""
    root = Path(directory).resolve()
    tokens = root / "tokens"
    tokens.mkdir(parents=True, exist_ok=True)
    conf = root / CONF_NAME
    if not conf.exists():
        conf.write_text(
            f"# SoftHSM2 development token(s) made by hsmd\n"
            f"directories.tokendir = {tokens}\n"
            "objectstore.backend = file\n"
            "log.level = ERROR\n"
            "slots.removable = false\n"
        )
    return str(conf)


def create_softhsm_token(
    directory: str | Path,
    label: str,
    pin: str,
    so_pin: str | None = None,
    *,
    library: str | None = None,
) -> SoftHSMToken:
    """Initialize a SoftHSM2 token labelled ``label`` in ``directory`` (idempotent: an existing
    token of that label is returned as it is). Without ``so_pin`` a random one is used and
    forgotten. PINs never appear in argv, logs or errors."""
    if not label or len(label.encode("utf-8")) > 32:
        raise InvalidArgument("a SoftHSM token label is 1 to 32 bytes")
    if not pin:
        raise InvalidArgument("the token PIN is empty")
    library = library or softhsm_library()
    conf = write_conf(directory)
    so_pin = so_pin or secrets.token_hex(16)
    if _visible_here(conf, library):
        return _init_here(conf, library, label, pin, so_pin)
    return _init_in_child(conf, library, label, pin, so_pin)


def _init_here(conf: str, library: str, label: str, pin: str, so_pin: str) -> SoftHSMToken:
    lib = load_library(library)
    directory = str(Path(conf).parent)
    existing = [t for t in list_tokens(lib) if t.label == label and t.flags & PyKCS11.CKF_TOKEN_INITIALIZED]
    try:
        if existing:
            token = existing[0]
            if not token.flags & PyKCS11.CKF_USER_PIN_INITIALIZED:
                _init_pin(lib, token.slot, pin, so_pin)
            return SoftHSMToken(directory, conf, library, label, token.serial)
        free = [t for t in list_tokens(lib) if not t.flags & PyKCS11.CKF_TOKEN_INITIALIZED]
        if not free:
            raise FailedPrecondition("SoftHSM offers no free slot to initialize a token in")
        lib.initToken(free[0].slot, so_pin, pad_label(label))
        made = [t for t in list_tokens(lib) if t.label == label and t.flags & PyKCS11.CKF_TOKEN_INITIALIZED]
        if not made:
            raise FailedPrecondition(f"SoftHSM did not show the new token {label!r}")
        _init_pin(lib, made[0].slot, pin, so_pin)
        return SoftHSMToken(directory, conf, library, label, made[0].serial)
    except PyKCS11.PyKCS11Error as exc:
        raise ckr.translate(exc, f"initialize SoftHSM token {label!r}") from exc


def _init_pin(lib: PyKCS11.PyKCS11Lib, slot: int, pin: str, so_pin: str) -> None:
    session = lib.openSession(slot, PyKCS11.CKF_RW_SESSION)
    try:
        session.login(so_pin, PyKCS11.CKU_SO)
        session.initPin(pin)
        session.logout()
    finally:
        session.closeSession()


def list_softhsm_tokens(directory: str | Path, *, library: str | None = None) -> list[SoftHSMToken]:
    """The initialized tokens of a SoftHSM token directory."""
    library = library or softhsm_library()
    conf = write_conf(directory)
    if _visible_here(conf, library):
        return _list_here(conf, library)
    answer = _in_child({"op": "list", "conf": conf, "library": library}, conf)
    return [SoftHSMToken(**t) for t in answer["tokens"]]


def _visible_here(conf: str, library: str) -> bool:
    """Whether this process sees (or will see, once it loads the library) the tokens of ``conf``."""
    loaded, loaded_with = loaded_conf(library)
    return loaded_with == conf if loaded else os.environ.get("SOFTHSM2_CONF") == conf


def _list_here(conf: str, library: str) -> list[SoftHSMToken]:
    lib = load_library(library)
    directory = str(Path(conf).parent)
    return [
        SoftHSMToken(directory, conf, library, t.label, t.serial)
        for t in list_tokens(lib)
        if t.flags & PyKCS11.CKF_TOKEN_INITIALIZED
    ]


def _init_in_child(conf: str, library: str, label: str, pin: str, so_pin: str) -> SoftHSMToken:
    request = {"op": "init", "conf": conf, "library": library, "label": label, "pin": pin, "so_pin": so_pin}
    return SoftHSMToken(**_in_child(request, conf)["token"])


def _in_child(request: Mapping[str, str], conf: str) -> dict[str, Any]:
    """Run one request in ``python -m hsmd.pkcs11.softhsm`` with SOFTHSM2_CONF=conf; PINs go on stdin."""
    proc = subprocess.run(
        [sys.executable, "-m", "hsmd.pkcs11.softhsm"],
        input=json.dumps(dict(request)),
        capture_output=True,
        text=True,
        env=_child_env(conf),
        timeout=120,
        check=False,
    )
    try:
        answer: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise FailedPrecondition(
            f"the SoftHSM helper process failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}"
        ) from None
    if "error" in answer:
        raise error_from_code(answer["error"]["code"], answer["error"]["message"])
    return answer


def _child_env(conf: str) -> dict[str, str]:
    """The child must import this very hsmd, installed or not."""
    env = softhsm_env(conf)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _child_main() -> int:
    """``python -m hsmd.pkcs11.softhsm``: one JSON request on stdin (PINs included), one JSON answer."""
    request = json.loads(sys.stdin.read())
    try:
        if request["op"] == "list":
            tokens = _list_here(request["conf"], request["library"])
            print(json.dumps({"tokens": [asdict(t) for t in tokens]}))
            return 0
        token = _init_here(request["conf"], request["library"], request["label"], request["pin"], request["so_pin"])
    except HsmdError as err:
        print(json.dumps({"error": {"code": err.code, "message": err.message}}))
        return 1
    print(json.dumps({"token": asdict(token)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(_child_main())
