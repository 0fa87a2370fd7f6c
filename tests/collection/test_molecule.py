"""`molecule test` on molecule/default: create (sandbox + SoftHSM agent), converge (the roles),
idempotence, verify, destroy — the same command `make molecule` runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def test_molecule_default_scenario() -> None:
    venv_bin = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=venv_bin + os.pathsep + os.environ.get("PATH", ""), ANSIBLE_NOCOLOR="1",
               NO_COLOR="1", PY_COLORS="0", ANSIBLE_FORCE_COLOR="0")
    molecule = [os.path.join(venv_bin, "molecule")]
    try:
        proc = subprocess.run([*molecule, "test"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        subprocess.run([*molecule, "destroy"], cwd=ROOT, env=env, capture_output=True, timeout=120)
        raise
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        subprocess.run([*molecule, "destroy"], cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, output[-6000:]
    for step in ("create", "converge", "idempotence", "verify", "destroy"):
        assert f"{step}: Executed: Successful" in output, step
