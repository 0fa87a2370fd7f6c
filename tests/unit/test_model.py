"""hsmd.model: path/key rules, the unambiguous checksum, OIDs, profiles."""

from __future__ import annotations

import pytest

from hsmd import model
from hsmd.errors import InvalidArgument, ResourceExhausted


@pytest.mark.parametrize("path", ["db", "team-a/db", "a/b/c.d_e-f", "x" * model.MAX_PATH_LENGTH])
def test_valid_paths(path: str) -> None:
    assert model.validate_path(path) == path


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("", "empty"),
        ("/db", "empty segment"),
        ("db/", "empty segment"),
        ("a//b", "empty segment"),
        ("a/../b", "'..' segment"),
        ("./a", "'.' segment"),
        ("a b", "may contain only"),
        ("a/\x00b", "may contain only"),
        ("a/\nb", "may contain only"),
        ("ключ", "may contain only"),
        ("x" * (model.MAX_PATH_LENGTH + 1), "limit"),
    ],
)
def test_invalid_paths_say_why(path: str, fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        model.validate_path(path)


def test_invalid_path_message_is_bounded_and_printable() -> None:
    with pytest.raises(InvalidArgument) as info:
        model.validate_path("bad path " * 10)
    assert len(str(info.value)) < 200
    with pytest.raises(InvalidArgument) as info:
        model.validate_path("a/\x1b[31m")
    assert "\x1b" not in str(info.value)


@pytest.mark.parametrize("key", ["password", "tls.crt", "A_b-1", ".dotfile", "x" * 253])
def test_valid_keys(key: str) -> None:
    assert model.validate_key(key) == key


@pytest.mark.parametrize("key", ["", ".", "..", "_metadata", "a/b", "a b", "é", "x" * 254])
def test_invalid_keys(key: str) -> None:
    with pytest.raises(InvalidArgument):
        model.validate_key(key)


def test_prefix_selects_whole_segments() -> None:
    assert model.path_matches_prefix("team/db", "team")
    assert model.path_matches_prefix("team", "team")
    assert not model.path_matches_prefix("team2/db", "team")
    assert model.path_matches_prefix("team2/db", "")
    assert model.path_matches_prefix("team/db", "team/")
    assert not model.path_matches_prefix("team", "team/")


@pytest.mark.parametrize("prefix", ["/a", "a//b", "../x", "a b"])
def test_invalid_prefixes(prefix: str) -> None:
    with pytest.raises(InvalidArgument):
        model.validate_prefix(prefix)


def test_checksum_is_unambiguous() -> None:
    assert model.checksum({"a": b"bc"}) != model.checksum({"ab": b"c"})
    assert model.checksum({"a": b"", "b": b"c"}) != model.checksum({"a": b"b", "": b"c"})
    assert model.checksum({"a": b"1", "b": b"2"}) == model.checksum({"b": b"2", "a": b"1"})
    assert model.checksum({"k": b"v"}).startswith("sha256:")
    assert len(model.checksum({"k": b"v"})) == len("sha256:") + 64


def test_validate_data_checks_profile_limits_before_anything() -> None:
    pico = model.profile("picohsm")
    model.validate_data({"k": b"x" * 4096}, pico)
    with pytest.raises(ResourceExhausted, match="4096"):
        model.validate_data({"k": b"x" * 4097}, pico)
    with pytest.raises(ResourceExhausted, match="1975"):
        model.validate_data({"k": b"x" * 1976}, model.profile("yubihsm"))
    with pytest.raises(InvalidArgument, match="empty"):
        model.validate_data({})
    with pytest.raises(InvalidArgument, match="bytes"):
        model.validate_data({"k": "text"})  # type: ignore[dict-item]
    with pytest.raises(InvalidArgument, match="reserved"):
        model.validate_data({"_metadata": b"x"})
    with pytest.raises(InvalidArgument, match="unknown device profile"):
        model.profile("nope")


def test_total_size_is_bounded_by_the_kubernetes_secret_limit() -> None:
    soft = model.profile("softhsm")
    with pytest.raises(ResourceExhausted, match="Kubernetes Secret"):
        model.validate_data({"a": b"x" * (600 * 1024), "b": b"x" * (600 * 1024)}, soft)


def test_data_type_oids_roundtrip_and_match_the_go_encoding() -> None:
    # 1.3.6.1.4.1.99999.1.1 in DER: 06 0a 2b 06 01 04 01 86 8d 1f 01 01
    assert model.data_type_oid("plaintext") == bytes.fromhex("060a2b060104018 68d1f0101".replace(" ", ""))
    for name, number in model.DATA_TYPES.items():
        der = model.data_type_oid(name)
        assert der[-1] == number
        assert model.data_type_from_oid(der) == name
    assert model.data_type_from_oid(b"\x06\x03\x2a\x03\x04") is None


def test_metadata_json_uses_go_field_names() -> None:
    meta = model.SecretMetadata(description="d", labels={"a": "b"}, format="json", data_type="json",
                                created_at="2025-01-01T00:00:00Z", source="api")
    raw = meta.to_json_dict()
    assert set(raw) == {"description", "labels", "format", "dataType", "createdAt", "source"}
    assert model.SecretMetadata.from_json_dict(raw) == meta
    assert model.SecretMetadata.from_json_dict({"labels": "garbage"}).labels == {}
