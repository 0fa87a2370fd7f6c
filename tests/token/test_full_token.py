"""A full token: the write fails (IntegrityError or ResourceExhausted) and the previous version
stays intact, in this process and for a fresh one.

The real thing: SoftHSM2 on a size-limited tmpfs answers CKR_OK to C_CreateObject and stores
nothing. Mounting needs root (CI runs as root); where mount is not allowed the test falls back to
a fault-injecting wrapper around Session.create with the same observable behaviour. A second test
always runs the fault injection (stored nothing, stored different bytes) in-process.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hsmd.errors import IntegrityError
from hsmd.model import checksum
from hsmd.pkcs11 import Token
from hsmd.pkcs11 import device as device_module
from tests.fixtures.softhsm import TestToken, make_test_token
from tests.token.helpers import parse_json_line, run_python

Factory = Callable[..., tuple[Token, TestToken]]

# Injected into the child when tmpfs cannot be mounted: after FILL_AFTER creates, C_CreateObject
# "succeeds" but the object is gone at once, like SoftHSM2 on a full disk.
INJECT = """
from hsmd.pkcs11 import device
_real_create = device.Session.create
_count = [0]
def _create(self, template):
    handle = _real_create(self, template)
    _count[0] += 1
    if _count[0] > int(os.environ["FILL_AFTER"]):
        device.Session.destroy(self, handle)
    return handle
device.Session.create = _create
"""

FILL = """
import os
from hsmd.errors import HsmdError
from hsmd.pkcs11 import Token, TokenConfig
if os.environ.get("FILL_AFTER"):
    exec(os.environ["INJECT"])
tok = Token.open(TokenConfig(**TOKEN_CONFIG))
tok.write("keep", {"k": b"old value", "j": b"kept"})
written, error = 0, None
while written < 2000:
    try:
        tok.write(f"fill/{written}", {"v": os.urandom(1500)})
        written += 1
    except HsmdError as err:
        error = (type(err).__name__, err.message)
        break
try:
    tok.write("keep", {"k": b"new value " * 50, "j": b"changed"})
    replaced = None
except HsmdError as err:
    replaced = (type(err).__name__, err.message)
print(json.dumps({"written": written, "error": error, "replace": replaced,
                  "keep": tok.read("keep")["k"].decode(), "listed": len(tok.list("fill"))}))
"""

CHECK = """
from hsmd.pkcs11 import Token, TokenConfig
tok = Token.open(TokenConfig(**TOKEN_CONFIG))
data = tok.read("keep")
listed = tok.list("fill")
readable = sum(1 for p in listed if tok.read(p))
tok.delete(listed[0])
tok.delete(listed[1])
tok.write("keep", {"k": b"after space was freed", "j": b"kept"})
print(json.dumps({"keep": {k: v.decode() for k, v in data.items()}, "listed": len(listed), "readable": readable,
                  "after": tok.read("keep")["k"].decode(), "checksum": tok.checksum("keep")}))
"""


@pytest.fixture
def small_token_dir(tmp_path: Path) -> Iterator[tuple[Path, bool]]:
    """A token directory on a 320 KiB tmpfs (True), or a plain directory when mount is refused."""
    target = tmp_path / "tiny"
    target.mkdir()
    mounted = (
        os.geteuid() == 0
        and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320k,mode=0700", "tmpfs", str(target)],
                           capture_output=True, check=False).returncode == 0
    )
    try:
        yield target, mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


@pytest.mark.slow
def test_full_token_keeps_the_previous_version(small_token_dir: tuple[Path, bool]) -> None:
    directory, mounted = small_token_dir
    info = make_test_token(directory, "tiny")
    extra = {} if mounted else {"FILL_AFTER": "60", "INJECT": INJECT}
    print("real tmpfs" if mounted else "fault injection")
    filled = run_python(info, FILL, timeout=120, **extra)
    assert filled.returncode == 0, filled.stderr
    out = parse_json_line(filled.stdout)
    assert out["written"] >= 5, out  # the token took some secrets before it filled up
    assert out["error"] is not None and out["error"][0] in ("IntegrityError", "ResourceExhausted"), out
    assert out["replace"] is not None and out["replace"][0] in ("IntegrityError", "ResourceExhausted"), out
    assert "new value" not in out["replace"][1]  # messages never carry values
    assert out["keep"] == "old value"
    assert out["listed"] == out["written"]  # the failed write is not visible
    # a fresh process sees the previous version, every listed secret reads, and once space is freed
    # the replace goes through
    checked = run_python(info, CHECK, timeout=120, **({} if mounted else {"FILL_AFTER": "100000", "INJECT": INJECT}))
    assert checked.returncode == 0, checked.stderr
    seen = parse_json_line(checked.stdout)
    assert seen["keep"] == {"k": "old value", "j": "kept"}
    assert seen["listed"] == seen["readable"] == out["written"]
    assert seen["after"] == "after space was freed"
    assert seen["checksum"] == checksum({"k": b"after space was freed", "j": b"kept"})


@pytest.mark.parametrize("fault", ["stores-nothing", "stores-other-bytes"])
def test_object_that_does_not_read_back_is_an_integrity_error(
    fault: str, hsm_token: Token, monkeypatch: pytest.MonkeyPatch
) -> None:
    hsm_token.write("s", {"a": b"old-a", "b": b"old-b"})
    real_create = device_module.Session.create

    def faulty(self: device_module.Session, template: list) -> int:
        values = dict(template)
        label = values[device_module.PyKCS11.CKA_LABEL]
        if label == "s/b":
            if fault == "stores-nothing":
                handle = real_create(self, template)
                self.destroy(handle)
                return handle
            template = [(t, v[:-1] if t == device_module.PyKCS11.CKA_VALUE else v) for t, v in template]
        return real_create(self, template)

    monkeypatch.setattr(device_module.Session, "create", faulty)
    with pytest.raises(IntegrityError) as err:
        hsm_token.write("s", {"a": b"new-a", "b": b"new-b"})
    assert "new-" not in str(err.value)
    monkeypatch.setattr(device_module.Session, "create", real_create)
    assert hsm_token.read("s") == {"a": b"old-a", "b": b"old-b"}
    assert len(hsm_token._snapshot("s")) == 3  # the failed attempt removed what it had stored
    hsm_token.write("s", {"a": b"new-a", "b": b"new-b"})
    assert hsm_token.read("s") == {"a": b"new-a", "b": b"new-b"}
