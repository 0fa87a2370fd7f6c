"""hsm.secrets.hsm_secret and hsm_secret_info against a real SoftHSM token through a real agent.

Each state: check mode, real, check again, real again, asserting ``changed`` every time, and that
neither results, diffs, stdout nor the runner's artifacts carry a value. All module calls of a
test run in one playbook (ansible-playbook start-up dominates the cost).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hsmd import model
from tests.collection.playbook import PlaybookRun, dump, localhost_play, run_playbook
from tests.fixtures.agent import RunningAgent, make_agent_token, start_agent

pytestmark = pytest.mark.slow

PASSWORD_1 = "first-password-Vt9q2xk"
PASSWORD_2 = "second-password-Lm4r8zp"
BLOB = b"\x00\x01binary-value-Qw7e\xff"
TOKEN_VALUE = "api-token-Zx3c5vb"
VALUES = [PASSWORD_1, PASSWORD_2, BLOB, TOKEN_VALUE]


@pytest.fixture(scope="module")
def module_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    root = tmp_path_factory.mktemp("secret-agent")
    token = make_agent_token(root / "token")
    with start_agent(token.token, pin_file=token.pin_file, workdir=root / "agent", device_profile="softhsm") as agent:
        yield agent


def task(name: str, module: str, args: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, module: args, **extra}


def secret(agent: RunningAgent, **args: Any) -> dict[str, Any]:
    return {"agent": agent.address, **args}


def test_hsm_secret_lifecycle_through_the_agent(module_agent: RunningAgent, tmp_path: Path) -> None:
    a = module_agent
    db_v1 = {"username": "app-user-7Yt", "password": PASSWORD_1}
    db_v2 = {"username": "app-user-7Yt", "password": PASSWORD_2}
    meta = {"description": "db login", "labels": {"team": "a"}}
    m = "hsm.secrets.hsm_secret"
    info = "hsm.secrets.hsm_secret_info"
    batch = [
        {"path": "team-a/api", "data": {"token": TOKEN_VALUE}, "data_b64": {"blob": base64.b64encode(BLOB).decode()}},
        {"path": "team-a/db", "data": db_v2, "metadata": meta},
        {"path": "team-a/never", "state": "absent"},
    ]
    tasks = [
        task("create check", m, secret(a, path="team-a/db", data=db_v1, metadata=meta), check_mode=True, diff=True),
        task("create", m, secret(a, path="team-a/db", data=db_v1, metadata=meta), diff=True),
        task("create again check", m, secret(a, path="team-a/db", data=db_v1, metadata=meta), check_mode=True),
        task("create again", m, secret(a, path="team-a/db", data=db_v1, metadata=meta)),
        task("update check", m, secret(a, path="team-a/db", data=db_v2, metadata=meta), check_mode=True, diff=True),
        task("update", m, secret(a, path="team-a/db", data=db_v2, metadata=meta), diff=True),
        task("update again check", m, secret(a, path="team-a/db", data=db_v2, metadata=meta), check_mode=True),
        task("update again", m, secret(a, path="team-a/db", data=db_v2, metadata=meta)),
        task("metadata only", m, secret(a, path="team-a/db", data=db_v2, metadata={"description": "renamed"})),
        task("batch check", m, secret(a, secrets=batch), check_mode=True, diff=True),
        task("batch", m, secret(a, secrets=batch), diff=True),
        task("batch again check", m, secret(a, secrets=batch), check_mode=True),
        task("batch again", m, secret(a, secrets=batch)),
        task("list", info, secret(a, prefix="team-a")),
        task("read values", info, secret(a, path="team-a/db", return_content=True), no_log=True, register="db_values"),
        {"name": "values are returned on request", "no_log": True, "ansible.builtin.assert": {"that": [
            # compared by digest: the playbook itself must not hold a value (errors print its lines)
            f"(db_values.secrets[0].data.password | hash('sha256')) == '{hashlib.sha256(PASSWORD_2.encode()).hexdigest()}'",
            "(db_values.secrets[0].data_b64.password | b64decode | hash('sha256')) == "
            f"'{hashlib.sha256(PASSWORD_2.encode()).hexdigest()}'",
        ]}},
        task("bad batch", m, secret(a, secrets=[{"path": "team-a/new", "data": {"k": "v-Ok9"}},
                                                {"path": "bad//path", "data": {"k": "value-Pq2"}}]), ignore_errors=True),
        task("absent check", m, secret(a, path="team-a/db", state="absent"), check_mode=True, diff=True),
        task("absent", m, secret(a, path="team-a/db", state="absent"), diff=True),
        task("absent again check", m, secret(a, path="team-a/db", state="absent"), check_mode=True),
        task("absent again", m, secret(a, path="team-a/db", state="absent")),
        task("after", info, secret(a, paths=["team-a/db", "team-a/api", "team-a/new"])),
    ]
    run = run_playbook(tmp_path / "run", [localhost_play(tasks)])
    assert run.rc == 0, run.stdout[-4000:]

    def changed(name: str) -> bool:
        return bool(run.result(name)["changed"])

    for state in ("create", "update", "batch", "absent"):
        assert changed(f"{state} check") and changed(state), state
        assert not changed(f"{state} again check") and not changed(f"{state} again"), state
    assert changed("metadata only")

    created = run.result("create")
    assert created["action"] == "created" and created["keys"] == ["password", "username"]
    assert created["checksum"] == model.checksum({k: v.encode() for k, v in db_v1.items()})
    assert run.result("create check")["diff"]["after"]["keys"] == ["password", "username"]
    update_diff = run.result("update")["diff"]
    assert update_diff["before"]["checksum"] == created["checksum"]
    assert update_diff["after"]["checksum"] == model.checksum({k: v.encode() for k, v in db_v2.items()})
    assert update_diff["after"]["metadata"]["labels"] == {"team": "a"}
    # "metadata only" renamed the description; the batch sets it back
    assert [r["action"] for r in run.result("batch check")["secrets"]] == ["created", "updated", "unchanged"]
    assert [r["action"] for r in run.result("batch")["secrets"]] == ["created", "updated", "unchanged"]
    assert [r["changed"] for r in run.result("batch again")["secrets"]] == [False, False, False]

    listed = {s["path"]: s for s in run.result("list")["secrets"]}
    assert sorted(listed) == ["team-a/api", "team-a/db"]
    assert listed["team-a/api"]["keys"] == ["blob", "token"]
    assert listed["team-a/db"]["metadata"]["description"] == "db login"
    assert "data" not in listed["team-a/db"] and "data_b64" not in listed["team-a/db"]

    assert "bad batch" in run.results and run.result("bad batch")["failed"]
    assert "bad//path" in run.result("bad batch")["msg"]
    assert run.result("absent")["diff"]["after"] == {}
    after = {s["path"]: s["exists"] for s in run.result("after")["secrets"]}
    # nothing of the bad batch was written, the deleted secret is gone, the batch's is there
    assert after == {"team-a/db": False, "team-a/api": True, "team-a/new": False}

    assert_no_values(run)


def assert_no_values(run: PlaybookRun) -> None:
    text = dump({name: results for name, results in run.results.items()})
    for value in VALUES:
        raw = value.encode() if isinstance(value, str) else value
        assert raw.decode(errors="replace") not in text and base64.b64encode(raw).decode() not in text
    run.assert_never_wrote(VALUES)


def test_hsm_secret_directly_on_the_token(softhsm_token: Any, tmp_path: Path) -> None:
    """The hardware-node form: pkcs11_library + token label + PIN file, no agent."""
    args = {
        "pkcs11_library": softhsm_token.library,
        "token_label": softhsm_token.label,
        "pin_file": softhsm_token.pin_file,
        "device_profile": "softhsm",
    }
    m = "hsm.secrets.hsm_secret"
    tasks = [
        task("create", m, {**args, "path": "node/key", "data": {"k": PASSWORD_1}}),
        task("create again", m, {**args, "path": "node/key", "data": {"k": PASSWORD_1}}),
        task("list", "hsm.secrets.hsm_secret_info", {**args, "prefix": "node"}),
        task("wrong pin source", m, {**args, "pin_file": str(tmp_path / "missing"), "path": "node/x",
                                     "data": {"k": "value-Hj6"}}, ignore_errors=True),
    ]
    run = run_playbook(tmp_path / "run", [localhost_play(tasks)], env={"SOFTHSM2_CONF": softhsm_token.conf})
    assert run.rc == 0, run.stdout[-4000:]
    assert run.result("create")["changed"] and not run.result("create again")["changed"]
    assert [s["path"] for s in run.result("list")["secrets"]] == ["node/key"]
    failed = run.result("wrong pin source")
    assert failed["failed"] and "PIN" in failed["msg"] and failed["error_code"] == "invalid_argument"
    run.assert_never_wrote([PASSWORD_1, softhsm_token.pin])
