"""Token on a real SoftHSM2 token: round trips, exact matching, compare-and-swap, deletes,
validation, token info, PINs and reconnects."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from hsmd.errors import (
    AlreadyExists,
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)
from hsmd.model import SecretMetadata, checksum
from hsmd.pkcs11 import Token, TokenConfig
from tests.fixtures.softhsm import TestToken

Factory = Callable[..., tuple[Token, TestToken]]

ALL_BYTES = bytes(range(256))


def test_roundtrip_text_binary_and_metadata(hsm_token: Token) -> None:
    data = {"password": b"s3cret", "blob": ALL_BYTES * 3, "empty": b"", "tls.crt": b"-----BEGIN\n\x00\xff"}
    meta = SecretMetadata(description="db creds", labels={"team": "a"}, format="raw", data_type="binary")
    result = hsm_token.write("team-a/db", data, meta)
    assert result.changed and result.checksum == checksum(data)
    secret = hsm_token.read_secret("team-a/db")
    assert dict(secret.data) == data
    assert secret.checksum == checksum(data) == hsm_token.checksum("team-a/db")
    assert secret.metadata.description == "db creds"
    assert dict(secret.metadata.labels) == {"team": "a"}
    assert secret.metadata.data_type == "binary"
    assert secret.metadata.created_at  # filled in on first write
    assert hsm_token.metadata("team-a/db") == secret.metadata
    assert hsm_token.read("team-a/db") == data


def test_replace_is_full_and_unchanged_write_is_a_no_op(hsm_token: Token) -> None:
    hsm_token.write("app", {"a": b"1", "b": b"2"}, SecretMetadata(description="x"))
    created = hsm_token.metadata("app").created_at
    again = hsm_token.write("app", {"a": b"1", "b": b"2"}, SecretMetadata(description="x"))
    assert again.changed is False and again.checksum == checksum({"a": b"1", "b": b"2"})
    assert hsm_token.write("app", {"b": b"2"}, None).changed  # metadata=None keeps the metadata
    assert hsm_token.read("app") == {"b": b"2"}
    meta = hsm_token.metadata("app")
    assert meta.description == "x" and meta.created_at == created
    hsm_token.write("app", {"b": b"3", "c": b"4"}, SecretMetadata(description="y"))
    assert hsm_token.read("app") == {"b": b"3", "c": b"4"}
    assert hsm_token.metadata("app").description == "y"
    assert hsm_token.metadata("app").created_at == created
    assert hsm_token.write("app", {"b": b"3", "c": b"4"}, SecretMetadata(description="y")).changed is False


def test_exact_matching_db_db2_db_x(hsm_token: Token) -> None:
    hsm_token.write("db", {"k": b"db"})
    hsm_token.write("db2", {"k": b"db2"})
    hsm_token.write("db/x", {"k": b"dbx"})
    assert hsm_token.read("db") == {"k": b"db"}
    assert hsm_token.read("db2") == {"k": b"db2"}
    assert hsm_token.read("db/x") == {"k": b"dbx"}
    hsm_token.write("db", {"other": b"1"})
    assert hsm_token.read("db2") == {"k": b"db2"} and hsm_token.read("db/x") == {"k": b"dbx"}
    hsm_token.delete("db")
    with pytest.raises(NotFound):
        hsm_token.read("db")
    assert hsm_token.read("db2") == {"k": b"db2"} and hsm_token.read("db/x") == {"k": b"dbx"}
    assert hsm_token.list() == ["db/x", "db2"]
    hsm_token.write("db", {"k": b"back"})
    assert hsm_token.list("db") == ["db", "db/x"]
    assert hsm_token.list("db/") == ["db/x"]
    assert hsm_token.list("d") == []
    assert hsm_token.list("db2") == ["db2"]


def test_list_prefix_and_checksums(hsm_token: Token) -> None:
    paths = ["team-a/db", "team-a/api/key", "team-b/db", "shared/tls"]
    for i, path in enumerate(paths):
        hsm_token.write(path, {"v": str(i).encode()})
    assert hsm_token.list() == sorted(paths)
    assert hsm_token.list("team-a") == ["team-a/api/key", "team-a/db"]
    sums = hsm_token.checksums(prefix="team-a")
    assert sums == {p: checksum({"v": str(paths.index(p)).encode()}) for p in ("team-a/api/key", "team-a/db")}
    picked = hsm_token.checksums(["team-b/db", "missing/path", "shared/tls"])
    assert set(picked) == {"team-b/db", "shared/tls"}
    assert picked["shared/tls"] == hsm_token.checksum("shared/tls")
    many = hsm_token.read_many(["team-b/db", "nope", "bad//path"])
    assert isinstance(many["nope"], NotFound) and isinstance(many["bad//path"], InvalidArgument)
    assert dict(many["team-b/db"].data) == {"v": b"2"}  # type: ignore[union-attr]


def test_checksum_is_unambiguous(hsm_token: Token) -> None:
    hsm_token.write("x", {"a": b"bc"})
    hsm_token.write("y", {"ab": b"c"})
    assert hsm_token.checksum("x") != hsm_token.checksum("y")
    assert hsm_token.checksum("x") == checksum({"a": b"bc"})
    assert hsm_token.checksum("x").startswith("sha256:")


def test_create_only_and_expected_checksum(hsm_token: Token) -> None:
    first = hsm_token.write("cas", {"v": b"1"}, create_only=True)
    with pytest.raises(AlreadyExists):
        hsm_token.write("cas", {"v": b"2"}, create_only=True)
    with pytest.raises(Conflict):
        hsm_token.write("cas", {"v": b"2"}, expected_checksum=checksum({"v": b"other"}))
    assert hsm_token.read("cas") == {"v": b"1"}
    second = hsm_token.write("cas", {"v": b"2"}, expected_checksum=first.checksum)
    assert second.changed and hsm_token.read("cas") == {"v": b"2"}
    with pytest.raises(Conflict):
        hsm_token.write("cas", {"v": b"3"}, expected_checksum=first.checksum)
    with pytest.raises(Conflict):
        hsm_token.write("never", {"v": b"3"}, expected_checksum=first.checksum)
    assert hsm_token.list() == ["cas"]


def test_delete_key_and_path(hsm_token: Token) -> None:
    hsm_token.write("d", {"a": b"1", "b": b"2"}, SecretMetadata(description="keep me"))
    hsm_token.delete("d", "a")
    assert hsm_token.read("d") == {"b": b"2"}
    assert hsm_token.metadata("d").description == "keep me"
    with pytest.raises(NotFound):
        hsm_token.delete("d", "a")
    hsm_token.delete("d", "b")  # the last key deletes the secret
    with pytest.raises(NotFound):
        hsm_token.read("d")
    with pytest.raises(NotFound):
        hsm_token.delete("d")
    assert hsm_token.list() == []
    hsm_token.write("d", {"a": b"again"})
    assert hsm_token.read("d") == {"a": b"again"}
    hsm_token.delete("d")
    assert hsm_token.list() == []


@pytest.mark.parametrize(
    ("path", "data", "message"),
    [
        ("", {"k": b"v"}, "empty"),
        ("/abs", {"k": b"v"}, "empty segment"),
        ("a//b", {"k": b"v"}, "empty segment"),
        ("a/../b", {"k": b"v"}, "'..'"),
        ("a/./b", {"k": b"v"}, "'.'"),
        ("sp ace", {"k": b"v"}, "may contain only"),
        ("x" * 300, {"k": b"v"}, "limit"),
        ("ok", {}, "empty"),
        ("ok", {"_metadata": b"v"}, "reserved"),
        ("ok", {"a/b": b"v"}, "not a valid Kubernetes Secret key"),
        ("ok", {"..": b"v"}, "not a valid Kubernetes Secret key"),
        ("ok", {"k": "text"}, "must be bytes"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(hsm_token: Token, path: str, data: dict, message: str) -> None:
    hsm_token.write("ok", {"k": b"original"})
    with pytest.raises(InvalidArgument) as err:
        hsm_token.write(path, data)
    assert message in str(err.value)
    assert hsm_token.list() == ["ok"] and hsm_token.read("ok") == {"k": b"original"}


def test_sizes_are_checked_against_the_device_profile(hsm_token_factory: Factory) -> None:
    pico, _ = hsm_token_factory(profile="picohsm", index_ttl=0.0)
    pico.write("p", {"k": b"x" * 4096})
    with pytest.raises(ResourceExhausted) as err:
        pico.write("p", {"k": b"x" * 4097})
    assert "4096" in str(err.value) and "picohsm" in str(err.value)
    assert pico.read("p") == {"k": b"x" * 4096}
    yubi, _ = hsm_token_factory(profile="yubihsm", index_ttl=0.0)
    with pytest.raises(ResourceExhausted):
        yubi.write("y", {"k": b"x" * 1976})
    # the metadata object is an object too: a description that does not fit is refused up front
    with pytest.raises(ResourceExhausted) as err:
        yubi.write("y", {"k": b"v"}, SecretMetadata(description="d" * 2000))
    assert "metadata" in str(err.value)
    assert yubi.list() == []
    with pytest.raises(InvalidArgument):
        yubi.write("y", {"k": b"v"}, SecretMetadata(data_type="no-such-type"))


def test_token_info(hsm_token_factory: Factory) -> None:
    tok, info = hsm_token_factory()
    ti = tok.info()
    assert ti.label == info.label
    assert ti.serial == info.serial
    assert ti.manufacturer == "SoftHSM project"
    assert ti.model.startswith("SoftHSM")
    assert ti.firmware.count(".") == 1
    assert ti.free_memory is None  # SoftHSM2 does not report memory
    assert not (ti.pin.locked or ti.pin.final_try or ti.pin.count_low or ti.pin.to_be_changed)
    assert ti.profile == "softhsm" and ti.library == info.library and ti.slot is not None
    tok.ping()


def test_open_selects_by_label_serial_or_slot_and_verifies_the_serial(hsm_token_factory: Factory) -> None:
    tok, info = hsm_token_factory()
    slot = tok.info().slot
    tok.write("s", {"k": b"v"})
    for cfg in (
        info.config(token_serial=None),
        info.config(token_label=None),
        info.config(token_label=None, token_serial=None, slot=slot),
    ):
        with Token.open(cfg) as other:
            assert other.read("s") == {"k": b"v"}
    with pytest.raises((Unavailable, FailedPrecondition)) as err:
        Token.open(info.config(token_serial="0000000000000000"))
    assert "0000000000000000" in str(err.value)
    with pytest.raises(InvalidArgument):
        Token.open(info.config(token_label=None, token_serial=None))
    with pytest.raises(InvalidArgument):
        Token.open(TokenConfig(library=info.library, token_label=info.label))  # no PIN source
    with pytest.raises(InvalidArgument):
        Token.open(info.config(profile="nope"))


def test_wrong_pin_is_permission_denied_and_never_in_the_message(hsm_token_factory: Factory, tmp_path) -> None:
    tok, info = hsm_token_factory()
    # PKCS#11 login state is per process: close the fixture's Token so the PIN is really checked
    tok.close()
    wrong = tmp_path / "wrong-pin"
    wrong.write_text("99999999\n")
    with pytest.raises(PermissionDenied) as err:
        Token.open(info.config(pin_file=str(wrong)))
    assert "99999999" not in str(err.value) and info.pin not in str(err.value)
    assert "CKR_PIN_INCORRECT" in str(err.value)


def test_pin_from_env(hsm_token_factory: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    _, info = hsm_token_factory()
    monkeypatch.setenv("HSMD_TEST_TOKEN_PIN", info.pin)
    with Token.open(info.config(pin_file=None, pin_env="HSMD_TEST_TOKEN_PIN")) as tok:
        tok.write("e", {"k": b"v"})
        assert tok.read("e") == {"k": b"v"}


def test_change_pin(hsm_token_factory: Factory, tmp_path) -> None:
    tok, info = hsm_token_factory()
    tok.write("c", {"k": b"v"})
    with pytest.raises(PermissionDenied):
        tok.change_pin("wrong-old", "abcd1234")
    tok.change_pin(info.pin, "abcd1234")
    new_pin = tmp_path / "new-pin"
    new_pin.write_text("abcd1234")
    tok.close()
    with Token.open(info.config(pin_file=str(new_pin))) as again:
        assert again.read("c") == {"k": b"v"}
        again.change_pin("abcd1234", info.pin)
    with pytest.raises(InvalidArgument):
        again.change_pin("", "x")


def _drop_sessions(tok: Token) -> None:
    """What a removed and re-inserted device does to a process: every session (and the login) is gone."""
    slot = tok.info().slot
    tok._device._lib.closeAllSessions(slot)


def test_lost_sessions_are_unavailable_then_reconnect_with_one_login(hsm_token_factory: Factory) -> None:
    tok, _ = hsm_token_factory(index_ttl=0.0, sessions=2)
    tok.write("r", {"k": b"v"})
    _drop_sessions(tok)
    with pytest.raises(Unavailable) as err:
        tok.read("r")
    assert err.value.temporary
    assert tok.read("r") == {"k": b"v"}  # re-opened sessions, logged in again
    tok.write("r", {"k": b"w"})
    assert tok.list() == ["r"]
    tok.ping()


def test_a_refused_login_after_reconnect_is_never_retried(hsm_token_factory: Factory, tmp_path) -> None:
    tok, info = hsm_token_factory(index_ttl=0.0)
    tok.write("r", {"k": b"v"})
    with Token.open(info.config()) as admin:
        admin.change_pin(info.pin, "changed-1")
    _drop_sessions(tok)  # also logs admin out; tok reconnects first, with the old PIN
    with pytest.raises(Unavailable):
        tok.read("r")
    with pytest.raises(PermissionDenied):
        tok.read("r")
    # put the old PIN back: a Token that retried its login would now succeed; ours must not try
    changed = tmp_path / "changed"
    changed.write_text("changed-1")
    with Token.open(info.config(pin_file=str(changed))) as admin:
        admin.change_pin("changed-1", info.pin)
        _drop_sessions(admin)
    for _ in range(3):
        with pytest.raises(PermissionDenied):
            tok.read("r")
    with Token.open(info.config()) as fresh:  # a new Token (an operator's decision) logs in again
        assert fresh.read("r") == {"k": b"v"}


def test_metadata_json_has_the_go_fields_and_generation(hsm_token: Token) -> None:
    hsm_token.write("m", {"k": b"v"}, SecretMetadata(description="d", source="test", format="env"))
    # read the raw metadata object through a second Token's view of the layout
    records, values = hsm_token._load(hsm_token._device._pool.queue[0], "m")
    meta_values = [values[r.handle] for r in records if r.is_metadata]
    assert len(meta_values) == 1
    doc = json.loads(meta_values[0])
    for field in ("description", "labels", "format", "dataType", "createdAt", "source"):
        assert field in doc
    assert doc["hsmd"]["generation"] >= 1 and set(doc["hsmd"]["keys"]) == {"k"}


def test_objects_carry_exactly_the_contract_attributes(hsm_token: Token) -> None:
    import PyKCS11

    from hsmd.model import data_type_oid

    hsm_token.write("attrs", {"k": b"value"}, SecretMetadata(data_type="pem"))
    wanted = [PyKCS11.CKA_CLASS, PyKCS11.CKA_TOKEN, PyKCS11.CKA_PRIVATE, PyKCS11.CKA_MODIFIABLE,
              PyKCS11.CKA_APPLICATION, PyKCS11.CKA_LABEL, PyKCS11.CKA_OBJECT_ID, PyKCS11.CKA_VALUE]
    seen = {}
    with hsm_token._device.session("inspect") as s:
        for handle, entry in hsm_token._snapshot("attrs"):
            seen[entry.key] = s.attributes(handle, wanted)
    cko_data = PyKCS11.CKO_DATA.to_bytes(8, "little")
    assert seen["k"] == [cko_data, b"\x01", b"\x01", b"\x01", b"hsm-secrets-operator", b"attrs/k",
                         data_type_oid("pem"), b"value"]
    meta = seen["_metadata"]
    assert meta[:6] == [cko_data, b"\x01", b"\x01", b"\x01", b"hsm-secrets-operator", b"attrs/_metadata"]
    assert meta[6] == data_type_oid("json") and json.loads(meta[7])["dataType"] == "pem"


def test_a_secret_replaced_by_another_writer_reads_as_its_new_version_at_once(hsm_token_factory: Factory) -> None:
    """Another Token (another process, pkcs11-tool) replaces a secret: our index still names the old
    objects, which are gone. The read notices, rebuilds the index and answers the new version; it
    never answers NotFound for a secret that exists, and our next write builds on the new version."""
    ours, info = hsm_token_factory(index_ttl=3600.0)  # trust the index as long as possible
    ours.write("app/db", {"password": b"v1"})
    assert ours.read("app/db") == {"password": b"v1"}
    with Token.open(info.config(index_ttl=0.0)) as other:
        other.write("app/db", {"password": b"v2", "user": b"app"})
        assert ours.read("app/db") == {"password": b"v2", "user": b"app"}
        ours.write("app/db", {"password": b"v3"})
        assert other.read("app/db") == {"password": b"v3"}
        other.delete("app/db")
        with pytest.raises(NotFound):
            ours.read("app/db")


def test_list_follows_every_change_of_the_index(hsm_token_factory: Factory) -> None:
    """list() keeps each path's visibility until an index entry of that path changes: changes made
    here, and (on the next index refresh) changes made by another writer, show at once."""
    ours, info = hsm_token_factory(index_ttl=0.0)
    ours.write("l/a", {"k": b"1"})
    ours.write("l/b", {"k": b"1", "j": b"2"})
    assert ours.list("l") == ["l/a", "l/b"]
    assert ours.list("l") == ["l/a", "l/b"]  # answered from the kept visibility
    ours.write("l/b", {"k": b"3"})
    ours.delete("l/a")
    assert ours.list("l") == ["l/b"]
    with Token.open(info.config(index_ttl=0.0)) as other:
        other.write("l/c", {"k": b"1"})
        other.write("l/b", {"k": b"4"})
        assert ours.list("l") == ["l/b", "l/c"]
        other.delete("l/b")
        assert ours.list("l") == ["l/c"]
        assert ours.read("l/c") == {"k": b"1"}
