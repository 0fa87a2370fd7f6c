"""Helpers for the token tests: run Python or OpenSC's pkcs11-tool against a test token in a
separate process (SoftHSM2 reads SOFTHSM2_CONF once per process, and the crash tests need a
process they can kill)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from tests.fixtures.softhsm import TestToken

ROOT = Path(__file__).resolve().parents[2]
PIN_ENV = "HSMD_TEST_PIN"


def child_env(token: TestToken, **extra: str) -> dict[str, str]:
    env = token.env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def run_python(token: TestToken, code: str, *, timeout: float = 60, **extra: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter that sees ``token``; ``TOKEN_CONFIG`` (a dict) is predefined."""
    prelude = f"import json\nTOKEN_CONFIG = json.loads({json.dumps(json.dumps(token.config().__dict__))})\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        env=child_env(token, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def pkcs11_tool(token: TestToken, *args: str, input_file: str | None = None) -> subprocess.CompletedProcess[bytes]:
    """OpenSC's pkcs11-tool on the token, logged in with the PIN from an environment variable
    (``--pin env:VAR``: the PIN never reaches argv)."""
    cmd = [
        "pkcs11-tool",
        "--module",
        token.library,
        "--token-label",
        token.label,
        "--login",
        "--pin",
        f"env:{PIN_ENV}",
        *args,
    ]
    return subprocess.run(cmd, env=child_env(token, **{PIN_ENV: token.pin}), capture_output=True, timeout=60, check=False)


def parse_json_line(stdout: str) -> Any:
    return json.loads(stdout.strip().splitlines()[-1])
