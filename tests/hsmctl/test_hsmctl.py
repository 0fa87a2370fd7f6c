"""hsmctl against the real broker (TLS), a real SoftHSM agent and the sandbox's TokenReview."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import stat
import sys
from pathlib import Path

import yaml

from hsmd.agent.client import AgentClient
from tests.hsmctl.conftest import Cli


def out(result: object) -> str:
    return result.stdout.decode()  # type: ignore[attr-defined]


def test_create_get_list_delete(cli: Cli, tmp_path: Path) -> None:
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)))
    env_file = tmp_path / "app.env"
    env_file.write_text("# comment\nexport DB_USER=app\nDB_HOST='db.local'\n\n")
    r = cli.run_process("create", "team-a/app/config", "--from-literal", "password=p@ss=word", "--from-file",
                f"cert={blob}", "--from-env-file", str(env_file), "--description", "app config",
                "--label", "team=a")
    assert r.returncode == 0, r.stderr
    assert "created" in out(r) and "1/1 device(s)" in out(r)
    with AgentClient(cli.agent.address) as direct:
        assert dict(direct.read("team-a/app/config").data) == {
            "password": b"p@ss=word", "cert": bytes(range(256)), "DB_USER": b"app", "DB_HOST": b"db.local"}

    r = cli.run("get", "team-a/app/config")
    assert r.returncode == 0, r.stderr
    text = out(r)
    assert "password: p@ss=word" in text and "cert: <binary, 256 bytes" in text and "about:     app config" in text
    r = cli.run_process("get", "team-a/app/config", "--key", "cert")
    assert r.returncode == 0 and r.stdout == bytes(range(256))
    doc = json.loads(out(cli.run("-o", "json", "get", "team-a/app/config")))
    assert doc["metadata"]["labels"] == {"team": "a"} and doc["checksum"].startswith("sha256:")
    assert yaml.safe_load(out(cli.run("-o", "yaml", "list", "--prefix", "team-a/app")))["paths"] == [
        "team-a/app/config"]
    assert out(cli.run("list")).splitlines() == ["team-a/app/config"]

    r = cli.run("create", "team-a/app/config", "--from-literal", "x=y")
    assert r.returncode == 5 and "already exists" in r.stderr.decode()
    r = cli.run("create", "team-a/app/config", "--from-literal", "x=y", "--overwrite")
    assert r.returncode == 0 and "updated" in out(r)
    assert cli.run("delete", "team-a/app/config", "--key", "nope").returncode == 4
    r = cli.run("create", "team-a/app/config", "--from-literal", "x=y", "--from-literal", "z=w", "--overwrite")
    r = cli.run("delete", "team-a/app/config", "--key", "x")
    assert r.returncode == 0 and "key x of secret team-a/app/config deleted" in out(r)
    assert cli.run("delete", "team-a/app/config").returncode == 0
    r = cli.run("get", "team-a/app/config")
    assert r.returncode == 4 and "not found" in r.stderr.decode()


def test_errors_and_exit_codes(cli: Cli, tmp_path: Path) -> None:
    r = cli.run("get", "team-b/secret")
    assert r.returncode == 3 and "may not get" in r.stderr.decode()
    r = cli.run("list", who=None)
    assert r.returncode == 3 and "no token" in r.stderr.decode()
    r = cli.run("create", "team-a/x")
    assert r.returncode == 2 and "no values" in r.stderr.decode()
    r = cli.run("create", "team-a/x", "--from-literal", "bad key=v")
    assert r.returncode == 2 and "invalid_argument" in r.stderr.decode()
    r = cli.run("create", "team-a/../x", "--from-literal", "k=v")
    assert r.returncode == 2
    r = cli.run_process("nonsense")
    assert r.returncode == 2
    r = cli.run("list", env=cli.env(HSMCTL_SERVER="https://127.0.0.1:9"))
    assert r.returncode == 6 and "cannot reach the broker" in r.stderr.decode()
    r = cli.run("list", env=cli.env(HSMCTL_CACERT=""))  # the broker's CA is not trusted by default
    assert r.returncode == 6 and "TLS" in r.stderr.decode()
    r = cli.run("-o", "json", "get", "team-a/missing")
    assert r.returncode == 4 and json.loads(out(r))["error"]["code"] == "not_found"


def test_edit_with_editor(cli: Cli, tmp_path: Path) -> None:
    assert cli.run("create", "team-a/edit", "--from-literal", "user=alice", "--from-literal", "pw=old").returncode == 0
    editor = tmp_path / "editor.py"
    editor.write_text(
        "import sys, yaml, os, stat\n"
        "path = sys.argv[1]\n"
        "assert stat.S_IMODE(os.stat(path).st_mode) == 0o600\n"
        "doc = yaml.safe_load(open(path))\n"
        "assert doc['data'] == {'pw': 'old', 'user': 'alice'}, doc\n"
        "doc['data']['pw'] = 'new'\n"
        "doc['data']['bin'] = b'\\x00\\x01'\n"
        "doc['metadata'] = {'description': 'edited'}\n"
        "open(path, 'w').write(yaml.safe_dump(doc))\n")
    r = cli.run_process("edit", "team-a/edit", env=cli.env(EDITOR=f"{sys.executable} {editor}"))
    assert r.returncode == 0, r.stderr
    assert "updated" in out(r)
    with AgentClient(cli.agent.address) as direct:
        secret = direct.read("team-a/edit")
    assert dict(secret.data) == {"user": b"alice", "pw": b"new", "bin": b"\x00\x01"}
    assert secret.metadata.description == "edited"

    r = cli.run("edit", "team-a/edit", env=cli.env(EDITOR="true"))  # saved unchanged
    assert r.returncode == 0 and "cancelled" in r.stderr.decode()

    racer = tmp_path / "racer.py"  # someone else writes while the editor is open
    racer.write_text(
        "import subprocess, sys, yaml\n"
        "subprocess.run([sys.executable, '-m', 'hsmd.hsmctl.cli', 'create', 'team-a/edit', '--overwrite',\n"
        "                '--from-literal', 'pw=theirs'], check=True, capture_output=True)\n"
        "doc = yaml.safe_load(open(sys.argv[1])); doc['data']['pw'] = 'mine'\n"
        "open(sys.argv[1], 'w').write(yaml.safe_dump(doc))\n")
    r = cli.run("edit", "team-a/edit", env=cli.env(EDITOR=f"{sys.executable} {racer}"))
    assert r.returncode == 5 and "changed by someone else" in r.stderr.decode()
    with AgentClient(cli.agent.address) as direct:
        assert dict(direct.read("team-a/edit").data) == {"pw": b"theirs"}


def test_export_import_round_trip(cli: Cli, tmp_path: Path) -> None:
    for i in range(3):
        assert cli.run("create", f"team-a/bulk/s{i}", "--from-literal", f"k=v{i}").returncode == 0
    dump = tmp_path / "export.json"
    r = cli.run("export", "--prefix", "team-a/bulk", "--output-file", str(dump))
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(dump).st_mode) == 0o600
    assert [s["path"] for s in json.loads(dump.read_text())["secrets"]] == [f"team-a/bulk/s{i}" for i in range(3)]
    for i in range(3):
        assert cli.run("delete", f"team-a/bulk/s{i}").returncode == 0
    r = cli.run("import", str(dump))
    assert r.returncode == 0 and "3 of 3 imported" in out(r)
    assert out(cli.run("get", "team-a/bulk/s2", "--key", "k")) == "v2"
    r = cli.run("import", str(dump))  # they exist now: per-item failures, exit 7
    assert r.returncode == 7 and "0 of 3 imported, 3 failed" in out(r)
    assert cli.run("import", "--overwrite", str(dump)).returncode == 0
    yaml_dump = out(cli.run("-o", "yaml", "export", "--prefix", "team-a/bulk"))
    r = cli.run("import", "-", "--overwrite", stdin=yaml_dump.encode())
    assert r.returncode == 0, r.stderr


def test_devices_health_and_minted_token(cli: Cli) -> None:
    r = cli.run("devices", who="ops")
    assert r.returncode == 0, r.stderr
    assert cli.agent.address in out(r) and "SERIAL" in out(r)
    assert cli.run("devices").returncode == 3  # team-a has no grant on @devices
    r = cli.run("health", who=None)
    assert r.returncode == 0 and out(r).startswith("healthy (1/1")
    # no token file: mint one through TokenRequest with the kubeconfig
    env = cli.env(who=None, HSMCTL_SERVICE_ACCOUNT="team-a/cli", KUBECONFIG=cli.kubeconfig)
    assert cli.run("list", env=env).returncode == 0
    env = cli.env(who=None)
    r = cli.run("--service-account", "team-a/cli", "--kubeconfig", cli.kubeconfig, "--audience", "other", "list",
                env=env)
    assert r.returncode == 3 and "audience" in r.stderr.decode()


def test_rotate_pin_over_tls(cli: Cli, tmp_path: Path) -> None:
    old, new, wrong = tmp_path / "old", tmp_path / "new", tmp_path / "wrong"
    pin = Path(cli.agent.pin_file).read_text()
    old.write_text(pin)
    new.write_text("2468-new-pin\n")
    wrong.write_text("0000-wrong\n")
    r = cli.run("rotate-pin", "--old-pin-file", str(wrong), "--new-pin-file", str(new), who="ops")
    assert r.returncode == 3 and "permission_denied" in r.stderr.decode()
    r = cli.run("rotate-pin", "--old-pin-file", str(old), "--new-pin-file", str(new))
    assert r.returncode == 3  # team-a may not rotate PINs
    r = cli.run("rotate-pin", "--old-pin-file", str(old), "--new-pin-file", str(new), who="ops")
    assert r.returncode == 0 and "PIN changed on 1 device(s)" in out(r), r.stderr
    # and back, with the PINs from environment variables
    env = cli.env("ops", OLD_PIN="2468-new-pin", NEW_PIN=pin.strip())
    r = cli.run("rotate-pin", "--old-pin-env", "OLD_PIN", "--new-pin-env", "NEW_PIN", env=env)
    assert r.returncode == 0, r.stderr
    text = cli.proxy.audit() + cli.proxy.logs()
    assert "2468-new-pin" not in text and "0000-wrong" not in text


def test_audit_names_the_tls_client_not_the_front(cli: Cli) -> None:
    """Behind the TLS front, waitress sees only the front's Unix socket; the audit still names the
    client's address, for every request of a keep-alive connection."""
    host, port = cli.proxy.address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=cli.cacert)
    token = Path(cli.tokens["a"]).read_text().strip()
    conn = http.client.HTTPSConnection(host, int(port), context=context, source_address=("127.0.0.2", 0), timeout=30)
    try:
        for n in range(2):
            conn.request("GET", "/api/v1/hsm/secrets/team-a/nothing-here",
                         headers={"Authorization": f"Bearer {token}", "X-Request-Id": f"remote-check-{n}"})
            response = conn.getresponse()
            response.read()
            assert response.status == 404
    finally:
        conn.close()
    lines = [json.loads(line) for line in cli.proxy.audit().splitlines() if '"remote-check-' in line]
    assert [(line["requestId"], line["remote"]) for line in lines] == [
        ("remote-check-0", "127.0.0.2"), ("remote-check-1", "127.0.0.2")]
