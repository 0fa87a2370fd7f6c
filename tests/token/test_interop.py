"""Interop with OpenSC's pkcs11-tool both ways, and with objects in the Go operator's layout.

pkcs11-tool writes data objects exactly as the Go operator lays them out (CKO_DATA, application
"hsm-secrets-operator", label "<path>/<key>", private, CKA_OBJECT_ID the data type OID, no hsmd
generation info), so it stands in for the Go operator. It gets the PIN with ``--pin env:VAR``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from hsmd.errors import NotFound
from hsmd.model import SecretMetadata, checksum
from hsmd.pkcs11 import Token
from tests.fixtures.softhsm import TestToken
from tests.token.helpers import pkcs11_tool

Factory = Callable[..., tuple[Token, TestToken]]
GO_APP = "hsm-secrets-operator"
PLAINTEXT_OID = "1.3.6.1.4.1.99999.1.1"


def go_write(info: TestToken, tmp: Path, label: str, value: bytes, *, application: str = GO_APP) -> None:
    source = tmp / "value.bin"
    source.write_bytes(value)
    done = pkcs11_tool(
        info,
        "--write-object",
        str(source),
        "--type",
        "data",
        "--private",
        "--label",
        label,
        "--application-label",
        application,
        "--application-id",
        PLAINTEXT_OID,
    )
    assert done.returncode == 0, done.stderr.decode()


def tool_read(info: TestToken, label: str) -> bytes:
    done = pkcs11_tool(info, "--read-object", "--type", "data", "--label", label)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


@pytest.fixture
def pair(hsm_token_factory: Factory) -> tuple[Token, TestToken]:
    return hsm_token_factory(index_ttl=0.0)


def test_go_layout_objects_read_correctly(pair: tuple[Token, TestToken], tmp_path: Path) -> None:
    tok, info = pair
    go_write(info, tmp_path, "db/password", b"hunter2\x00\xff")
    go_write(info, tmp_path, "db/username", b"admin")
    go_write(info, tmp_path, "db2/password", b"other")
    go_write(info, tmp_path, "db/x/password", b"nested")
    meta = {"description": "from go", "labels": {"env": "prod"}, "format": "", "dataType": "plaintext",
            "createdAt": "2024-01-02T03:04:05Z", "source": "go"}
    go_write(info, tmp_path, "db/_metadata", json.dumps(meta).encode())
    assert tok.read("db") == {"password": b"hunter2\x00\xff", "username": b"admin"}
    assert tok.read("db2") == {"password": b"other"}
    assert tok.read("db/x") == {"password": b"nested"}
    md = tok.metadata("db")
    assert md.description == "from go" and md.created_at == "2024-01-02T03:04:05Z" and dict(md.labels) == {"env": "prod"}
    assert tok.list() == ["db", "db/x", "db2"]
    assert tok.checksum("db") == checksum({"password": b"hunter2\x00\xff", "username": b"admin"})
    # no metadata object at all is fine too
    assert tok.metadata("db2") == SecretMetadata()


def test_go_layout_secret_is_replaced_and_deleted_atomically(pair: tuple[Token, TestToken], tmp_path: Path) -> None:
    tok, info = pair
    go_write(info, tmp_path, "legacy/a", b"1")
    go_write(info, tmp_path, "legacy/b", b"2")
    go_write(info, tmp_path, "legacy/_metadata", json.dumps({"description": "old"}).encode())
    assert tok.write("legacy", {"a": b"1", "b": b"2"}, SecretMetadata(description="old")).changed is True  # createdAt
    assert tok.write("legacy", {"a": b"1", "c": b"3"}).changed
    assert tok.read("legacy") == {"a": b"1", "c": b"3"}
    assert tok.metadata("legacy").description == "old"
    # pkcs11-tool (the Go operator) now sees exactly one object per key plus one metadata object
    assert tool_read(info, "legacy/a") == b"1"
    assert tool_read(info, "legacy/c") == b"3"
    listing = pkcs11_tool(info, "--list-objects", "--type", "data").stdout.decode()
    assert listing.count("'legacy/") == 3 and "'legacy/b'" not in listing
    tok.delete("legacy", "a")
    assert tok.read("legacy") == {"c": b"3"}
    tok.delete("legacy")
    with pytest.raises(NotFound):
        tok.read("legacy")
    assert "'legacy/" not in pkcs11_tool(info, "--list-objects", "--type", "data").stdout.decode()


def test_objects_we_write_read_back_identically_with_pkcs11_tool(pair: tuple[Token, TestToken]) -> None:
    tok, info = pair
    binary = bytes(range(256)) * 4
    tok.write("team/app", {"bin": binary, "text": b"hello", "empty": b"x"}, SecretMetadata(description="d"))
    tok.write("team/app", {"bin": binary, "text": b"hello again", "empty": b"x"})
    assert tool_read(info, "team/app/bin") == binary
    assert tool_read(info, "team/app/text") == b"hello again"
    meta = json.loads(tool_read(info, "team/app/_metadata"))
    assert meta["description"] == "d" and "createdAt" in meta and meta["hsmd"]["generation"] >= 2
    listing = pkcs11_tool(info, "--list-objects", "--type", "data").stdout.decode()
    assert listing.count("label:          'team/app/text'") == 1  # the old generation is gone
    assert "application:    'hsm-secrets-operator'" in listing


def test_other_applications_objects_are_ignored(pair: tuple[Token, TestToken], tmp_path: Path) -> None:
    tok, info = pair
    go_write(info, tmp_path, "db/password", b"not ours", application="some-other-app")
    go_write(info, tmp_path, "plain-label-without-slash", b"ours but not a secret")
    assert tok.list() == []
    with pytest.raises(NotFound):
        tok.read("db")
    tok.write("db", {"password": b"ours"})
    assert tok.read("db") == {"password": b"ours"}
    tok.delete("db")
    # the foreign object survived our write and delete
    done = pkcs11_tool(info, "--read-object", "--type", "data", "--label", "db/password",
                       "--application-label", "some-other-app")
    assert done.returncode == 0 and done.stdout == b"not ours"
