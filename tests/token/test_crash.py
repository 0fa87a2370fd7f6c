"""Kill the writer at every step of a replace or delete: a fresh reader sees the old secret or the
new one, never neither, never a mix; the next write cleans up what the dead writer left.

The writer runs in a child process with ``hsmd.pkcs11.token.mutation_hook`` set to SIGKILL itself
before its k-th object creation/destruction, for every k (a real SIGKILL: no cleanup, no finally).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from hsmd.errors import NotFound
from hsmd.pkcs11 import Token
from tests.fixtures.softhsm import TestToken
from tests.token.helpers import pkcs11_tool, run_python

Factory = Callable[..., tuple[Token, TestToken]]

CHILD = """
import os, signal
from hsmd.pkcs11 import Token, TokenConfig
from hsmd.pkcs11 import token as token_module
from hsmd.model import SecretMetadata

kill_at = int(os.environ["KILL_AT"])
done = 0

def hook(op):
    global done
    if done == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    done += 1

tok = Token.open(TokenConfig(**TOKEN_CONFIG))
token_module.mutation_hook = hook
action, path, arg = json.loads(os.environ["ACTION"])
if action == "write":
    tok.write(path, {k: v.encode() for k, v in arg.items()}, SecretMetadata(description="new"))
elif action == "delete":
    tok.delete(path, arg)
print(json.dumps({"ops": done}))
"""


def seed_go_layout(info: TestToken, tmp: Path, path: str, data: dict[str, bytes]) -> None:
    for key, value in data.items():
        src = tmp / "v.bin"
        src.write_bytes(value)
        done = pkcs11_tool(info, "--write-object", str(src), "--type", "data", "--private", "--label",
                           f"{path}/{key}", "--application-label", "hsm-secrets-operator")
        assert done.returncode == 0, done.stderr.decode()


def observe(info: TestToken, path: str) -> dict[str, bytes] | None:
    """What a fresh reader (a new Token, fresh index) sees; list() must agree with read()."""
    with Token.open(info.config(index_ttl=0.0)) as fresh:
        listed = path in fresh.list()
        try:
            data = fresh.read(path)
        except NotFound:
            data = None
    assert listed == (data is not None)
    return data


def objects_of(tok: Token, path: str) -> int:
    tok.list()  # index_ttl=0: refresh
    return len(tok._snapshot(path))


OLD = {"a": b"1", "b": b"2"}
NEW = {"a": b"1", "b": b"3", "c": b"4"}
SCENARIOS = {
    # name: (how the old state is made, action, old visible data, new visible data)
    "replace": ("ours", ("write", {k: v.decode() for k, v in NEW.items()}), OLD, NEW),
    "first-write": (None, ("write", {k: v.decode() for k, v in NEW.items()}), None, NEW),
    "replace-go-layout": ("go", ("write", {k: v.decode() for k, v in NEW.items()}), OLD, NEW),
    "delete": ("ours", ("delete", None), OLD, None),
    "delete-go-layout": ("go", ("delete", None), OLD, None),
    "delete-key": ("ours", ("delete", "b"), OLD, {"a": b"1"}),
}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_kill_at_every_step(scenario: str, hsm_token_factory: Factory, tmp_path: Path) -> None:
    seed, (action, arg), old, new = SCENARIOS[scenario]
    tok, info = hsm_token_factory(index_ttl=0.0)
    k = 0
    while True:
        path = f"s/{k}"
        if seed == "ours":
            tok.write(path, OLD)
        elif seed == "go":
            seed_go_layout(info, tmp_path, path, OLD)
        assert observe(info, path) == old
        proc = run_python(info, CHILD, KILL_AT=str(k), ACTION=json.dumps([action, path, arg]))
        seen = observe(info, path)
        if proc.returncode == -signal.SIGKILL:
            assert seen in (old, new), f"killed before step {k}: reader saw {seen!r}"
        else:
            assert proc.returncode == 0, proc.stderr
            assert seen == new
            ops = json.loads(proc.stdout.strip().splitlines()[-1])["ops"]
            assert ops == k, "the writer finished exactly when no kill point was left"
        # the next write of the path succeeds and leaves exactly one object per key + metadata
        tok.write(path, {"z": b"after"})
        assert tok.read(path) == {"z": b"after"}
        assert objects_of(tok, path) == 2
        if proc.returncode != -signal.SIGKILL:
            break
        k += 1
    assert k >= 3, f"{scenario}: expected several kill points, got {k}"
