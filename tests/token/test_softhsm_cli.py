"""``hsmd softhsm``: dev tokens created without PINs in argv, idempotently; production refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.token.helpers import ROOT


def hsmd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(env or os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "hsmd", "softhsm", *args], capture_output=True, text=True,
                          env=env, timeout=120, check=False)


def test_init_is_idempotent_and_the_token_works(tmp_path: Path) -> None:
    pin = tmp_path / "pin"
    pin.write_text("4711-secret\n")
    so_pin = tmp_path / "so-pin"
    so_pin.write_text("so-secret-1\n")
    first = hsmd("init", "--dir", str(tmp_path / "dev"), "--label", "dev", "--pin-file", str(pin),
                 "--so-pin-file", str(so_pin))
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert set(out) == {"conf", "library", "label", "serial"} and out["label"] == "dev" and out["serial"]
    assert Path(out["conf"]).exists()
    again = hsmd("init", "--dir", str(tmp_path / "dev"), "--label", "dev", "--pin-file", str(pin))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == out
    listed = hsmd("list", "--dir", str(tmp_path / "dev"))
    assert listed.returncode == 0 and [t["serial"] for t in json.loads(listed.stdout)] == [out["serial"]]
    # the PIN from the file opens the token (read back through a Token in a process that sees it)
    code = (
        "from hsmd.pkcs11 import Token, TokenConfig\n"
        f"t = Token.open(TokenConfig(library={out['library']!r}, token_serial={out['serial']!r}, pin_file={str(pin)!r}))\n"
        "t.write('x', {'k': b'v'}); print(t.read('x')['k'].decode())\n"
    )
    env = dict(os.environ, SOFTHSM2_CONF=out["conf"], PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "v", done.stderr
    for text in (first.stdout, first.stderr, again.stdout, again.stderr):
        assert "4711-secret" not in text and "so-secret-1" not in text


def test_production_profile_is_refused(tmp_path: Path) -> None:
    pin = tmp_path / "pin"
    pin.write_text("1234")
    done = hsmd("init", "--dir", str(tmp_path / "prod"), "--label", "p", "--pin-file", str(pin), "--profile", "production")
    assert done.returncode != 0 and "production" in done.stderr
    assert not (tmp_path / "prod").exists()


def test_missing_pin_file_is_a_clear_error(tmp_path: Path) -> None:
    done = hsmd("init", "--dir", str(tmp_path / "d"), "--label", "x", "--pin-file", str(tmp_path / "nope"))
    assert done.returncode != 0 and "cannot read the user PIN file" in done.stderr
