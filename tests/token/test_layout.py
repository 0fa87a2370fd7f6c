"""The reader rule of the on-token layout and the CKR table, as pure functions (no token)."""

from __future__ import annotations

import PyKCS11
import pytest

from hsmd.errors import Internal, NotFound, PermissionDenied, ResourceExhausted, Unavailable
from hsmd.model import SecretMetadata, value_digest
from hsmd.pkcs11 import ckr
from hsmd.pkcs11.layout import (
    Generation,
    MetadataDoc,
    ObjectRecord,
    choose_version,
    decode_metadata,
    encode_metadata,
    split_label,
)


def key(handle: int, k: str, value: bytes, path: str = "p") -> ObjectRecord:
    return ObjectRecord(handle, path, k, value_digest(value))


def meta(handle: int, number: int | None, keys: dict[str, bytes], *, deleted: bool = False, path: str = "p") -> ObjectRecord:
    gen = None if number is None else Generation(number, {k: value_digest(v) for k, v in keys.items()}, deleted=deleted)
    return ObjectRecord(handle, path, "_metadata", None, MetadataDoc(SecretMetadata(description=f"g{number}"), gen))


def test_split_label_is_exact() -> None:
    assert split_label("db/password") == ("db", "password")
    assert split_label("db/x/password") == ("db/x", "password")
    assert split_label("db2/_metadata") == ("db2", "_metadata")
    for bad in ("nolabel", "db/", "/k", "a//b/k", "a/../k", "sp ace/k"):
        assert split_label(bad) is None


def test_go_layout_reads_every_key_object_and_its_metadata() -> None:
    v = choose_version("p", [key(1, "a", b"1"), key(2, "b", b"2"), meta(3, None, {}), key(4, "a", b"dup")])
    assert v is not None and v.generation is None
    assert dict(v.objects) == {"a": 1, "b": 2}  # a duplicate label resolves to the lowest handle
    assert v.metadata.description == "gNone" and v.leftovers == (4,)
    assert choose_version("p", [meta(3, None, {})]) is None  # metadata alone is no secret


def test_highest_complete_generation_wins() -> None:
    old = [meta(1, 1, {"a": b"1", "b": b"2"}), key(2, "a", b"1"), key(3, "b", b"2")]
    # generation 2 announced, its new value for b not stored yet: generation 1 is still visible
    pending = [*old, meta(4, 2, {"a": b"1", "b": b"3"})]
    v = choose_version("p", pending)
    assert v is not None and v.generation is not None and v.generation.number == 1
    assert dict(v.objects) == {"a": 2, "b": 3} and v.leftovers == (4,)
    # once b=3 is stored generation 2 is complete and wins; b=2 becomes a leftover
    v = choose_version("p", [*pending, key(5, "b", b"3")])
    assert v is not None and v.generation is not None and v.generation.number == 2
    assert dict(v.objects) == {"a": 2, "b": 5} and set(v.leftovers) == {1, 3}
    # an object whose bytes differ from the digest (a failing token) does not complete a generation
    corrupt = [*pending, ObjectRecord(5, "p", "b", value_digest(b"3!"))]
    v = choose_version("p", corrupt)
    assert v is not None and v.generation is not None and v.generation.number == 1


def test_incomplete_first_generation_and_tombstones_mean_not_found() -> None:
    assert choose_version("p", [meta(1, 1, {"a": b"1", "b": b"2"}), key(2, "a", b"1")]) is None
    assert choose_version("p", [meta(1, 1, {"a": b"1"}), key(2, "a", b"1"), meta(3, 2, {}, deleted=True)]) is None
    # a tombstone hides Go-layout keys too
    assert choose_version("p", [key(1, "a", b"1"), meta(2, 1, {}, deleted=True)]) is None


def test_objects_of_other_paths_never_count() -> None:
    records = [key(1, "k", b"db", path="db"), key(2, "k", b"db2", path="db2"), key(3, "k", b"x", path="db/x")]
    v = choose_version("db", records)
    assert v is not None and dict(v.objects) == {"k": 1}


def test_metadata_round_trip_keeps_go_fields() -> None:
    md = SecretMetadata(description="d", labels={"a": "b"}, format="f", data_type="json", created_at="t", source="s")
    gen = Generation(7, {"k": "00" * 32}, "sha256:x")
    raw = encode_metadata(md, gen)
    doc = decode_metadata(raw)
    assert doc is not None and doc.metadata == md and doc.generation == gen
    assert decode_metadata(b"\xff\xfe") is None and decode_metadata(b"[1]") is None
    legacy = decode_metadata(b'{"description": "go", "hsmd": {"generation": "x"}}')
    assert legacy is not None and legacy.generation is None and legacy.metadata.description == "go"


@pytest.mark.parametrize(
    ("code", "error", "temporary", "reconnect"),
    [
        (PyKCS11.CKR_DEVICE_REMOVED, Unavailable, True, True),
        (PyKCS11.CKR_TOKEN_NOT_PRESENT, Unavailable, True, True),
        (PyKCS11.CKR_SESSION_HANDLE_INVALID, Unavailable, True, True),
        (PyKCS11.CKR_DEVICE_ERROR, Unavailable, True, True),
        (PyKCS11.CKR_PIN_INCORRECT, PermissionDenied, False, False),
        (PyKCS11.CKR_PIN_LOCKED, PermissionDenied, False, False),
        (PyKCS11.CKR_PIN_EXPIRED, PermissionDenied, False, False),
        (PyKCS11.CKR_DEVICE_MEMORY, ResourceExhausted, False, False),
        (PyKCS11.CKR_HOST_MEMORY, ResourceExhausted, False, False),
        (PyKCS11.CKR_ARGUMENTS_BAD, Internal, False, False),
        (PyKCS11.CKR_OBJECT_HANDLE_INVALID, NotFound, False, False),
        (0x8000_1234, Internal, False, False),  # vendor-defined: unexpected
    ],
)
def test_ckr_table(code: int, error: type, temporary: bool, reconnect: bool) -> None:
    exc = PyKCS11.PyKCS11Error(code)
    err = ckr.translate(exc, "read secret", path="team/db")
    assert type(err) is error and err.temporary is temporary
    assert ckr.needs_reconnect(exc) is reconnect
    assert "read secret" in err.message and "team/db" in err.message and err.path == "team/db"
