"""The domain vocabulary every layer shares: secret paths and keys, their validation, the
unambiguous checksum, secret metadata, data types and device profiles.

Pure functions and frozen dataclasses only; no I/O. The token layer, the agent, the broker and
the Ansible modules all validate through these so a path that one of them accepts every other
one accepts too.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from hsmd.errors import InvalidArgument, ResourceExhausted

METADATA_KEY = "_metadata"
APPLICATION = "hsm-secrets-operator"

MAX_PATH_LENGTH = 255
MAX_KEY_LENGTH = 253
# A Kubernetes Secret holds at most 1 MiB; a secret that cannot be replicated is refused up front.
MAX_SECRET_BYTES = 1024 * 1024

_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_PREFIX = re.compile(r"[A-Za-z0-9._/-]*")


def validate_path(path: str) -> str:
    """Return ``path`` if it is a valid secret path, else raise InvalidArgument saying why.

    A path is one or more segments of ``[A-Za-z0-9._-]+`` joined by single ``/``; no segment may
    be empty, ``.`` or ``..``; at most MAX_PATH_LENGTH characters.
    """
    if not isinstance(path, str) or not path:
        raise InvalidArgument("secret path is empty")
    if len(path) > MAX_PATH_LENGTH:
        raise InvalidArgument(f"secret path is {len(path)} characters long; the limit is {MAX_PATH_LENGTH}")
    for index, segment in enumerate(path.split("/")):
        if segment == "":
            raise InvalidArgument(
                f"secret path {_show(path)} has an empty segment at position {index + 1} "
                "(leading, trailing or doubled '/')"
            )
        if segment in (".", ".."):
            raise InvalidArgument(f"secret path {_show(path)} contains a '{segment}' segment")
        if not _SEGMENT.fullmatch(segment):
            raise InvalidArgument(
                f"secret path segment {_show(segment)} may contain only letters, digits, '.', '_' and '-'"
            )
    return path


def validate_prefix(prefix: str) -> str:
    """A list prefix: empty, or a path-like string (a trailing '/' is allowed)."""
    if prefix == "":
        return prefix
    if len(prefix) > MAX_PATH_LENGTH or not _PREFIX.fullmatch(prefix):
        raise InvalidArgument(
            f"list prefix {_show(prefix)} may contain only letters, digits, '.', '_', '-' and '/'"
        )
    if "//" in prefix or prefix.startswith("/"):
        raise InvalidArgument(f"list prefix {_show(prefix)} has an empty segment")
    if any(seg in (".", "..") for seg in prefix.split("/")):
        raise InvalidArgument(f"list prefix {_show(prefix)} contains a '.' or '..' segment")
    return prefix


def path_matches_prefix(path: str, prefix: str) -> bool:
    """List semantics: ``prefix`` selects ``path`` when it is empty, equal to the path, a whole-segment
    ancestor of it (``team`` selects ``team/db`` but not ``team2``), or ends with '/' and starts it."""
    if prefix == "" or path == prefix:
        return True
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path.startswith(prefix + "/")


def validate_key(key: str) -> str:
    """Keys follow Kubernetes Secret key rules and are never the reserved metadata key."""
    if not isinstance(key, str) or not key:
        raise InvalidArgument("secret key is empty")
    if key == METADATA_KEY:
        raise InvalidArgument(f"secret key {METADATA_KEY!r} is reserved for metadata")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidArgument(f"secret key is {len(key)} characters long; the limit is {MAX_KEY_LENGTH}")
    if key in (".", "..") or not _KEY.fullmatch(key):
        raise InvalidArgument(
            f"secret key {_show(key)} is not a valid Kubernetes Secret key "
            "(letters, digits, '-', '_' and '.'; not '.' or '..')"
        )
    return key


def validate_data(data: Mapping[str, bytes], profile: DeviceProfile | None = None) -> dict[str, bytes]:
    """Validate every key and value of a secret, and sizes against the device profile."""
    if not isinstance(data, Mapping):
        raise InvalidArgument("secret data must be a mapping of key to bytes")
    if not data:
        raise InvalidArgument("secret data is empty; a secret needs at least one key")
    profile = profile or PROFILES["generic"]
    total = 0
    out: dict[str, bytes] = {}
    for key, value in data.items():
        validate_key(key)
        if isinstance(value, str):
            raise InvalidArgument(f"value of key {_show(key)} must be bytes, not text")
        if not isinstance(value, bytes | bytearray | memoryview):
            raise InvalidArgument(f"value of key {_show(key)} must be bytes")
        raw = bytes(value)
        if len(raw) > profile.max_object_bytes:
            raise ResourceExhausted(
                f"value of key {_show(key)} is {len(raw)} bytes; device profile {profile.name!r} "
                f"holds at most {profile.max_object_bytes} bytes per object"
            )
        total += len(raw) + len(key)
        out[key] = raw
    if total > MAX_SECRET_BYTES:
        raise ResourceExhausted(
            f"secret is {total} bytes in all; a Kubernetes Secret holds at most {MAX_SECRET_BYTES}"
        )
    return out


def checksum(data: Mapping[str, bytes]) -> str:
    """``sha256:<hex>`` over an unambiguous encoding of the secret.

    Keys are sorted; each key and each value is preceded by its length as 8 big-endian bytes,
    so ``{"a": b"bc"}`` and ``{"ab": b"c"}`` never collide, and neither do key/value boundaries.
    """
    digest = hashlib.sha256()
    for key in sorted(data):
        k = key.encode("utf-8")
        v = bytes(data[key])
        digest.update(len(k).to_bytes(8, "big"))
        digest.update(k)
        digest.update(len(v).to_bytes(8, "big"))
        digest.update(v)
    return "sha256:" + digest.hexdigest()


def value_digest(value: bytes) -> str:
    """Hex sha256 of one value (names a generation of one on-token object)."""
    return hashlib.sha256(value).hexdigest()


# --- data types: CKA_OBJECT_ID is the DER OID 1.3.6.1.4.1.99999.1.N --------------------------

DATA_TYPES: dict[str, int] = {
    "plaintext": 1,
    "json": 2,
    "pem": 3,
    "binary": 4,
    "base64": 5,
    "x509-cert": 6,
    "private-key": 7,
    "docker-config": 8,
}
_DATA_TYPE_NAMES = {number: name for name, number in DATA_TYPES.items()}
_OID_PREFIX = (1, 3, 6, 1, 4, 1, 99999, 1)


def _base128(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def data_type_oid(data_type: str) -> bytes:
    """DER encoding of the OID for a data type name (unknown names are plaintext)."""
    number = DATA_TYPES.get(data_type, DATA_TYPES["plaintext"])
    arcs = (*_OID_PREFIX, number)
    body = bytes([arcs[0] * 40 + arcs[1]]) + b"".join(_base128(a) for a in arcs[2:])
    return bytes([0x06, len(body)]) + body


def data_type_from_oid(der: bytes) -> str | None:
    """Inverse of data_type_oid; None for an OID that is not ours."""
    for name in DATA_TYPES:
        if data_type_oid(name) == bytes(der):
            return name
    return None


def data_type_name(number: int) -> str:
    return _DATA_TYPE_NAMES.get(number, "plaintext")


@dataclass(frozen=True)
class SecretMetadata:
    """The Go operator's metadata fields, stored as JSON in ``<path>/_metadata``."""

    description: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    format: str = ""
    data_type: str = ""
    created_at: str = ""
    source: str = ""

    def to_json_dict(self) -> dict[str, object]:
        return {
            "description": self.description,
            "labels": dict(self.labels),
            "format": self.format,
            "dataType": self.data_type,
            "createdAt": self.created_at,
            "source": self.source,
        }

    @classmethod
    def from_json_dict(cls, raw: Mapping[str, object]) -> SecretMetadata:
        labels = raw.get("labels") or {}
        if not isinstance(labels, Mapping):
            labels = {}
        return cls(
            description=str(raw.get("description") or ""),
            labels={str(k): str(v) for k, v in labels.items()},
            format=str(raw.get("format") or ""),
            data_type=str(raw.get("dataType") or ""),
            created_at=str(raw.get("createdAt") or ""),
            source=str(raw.get("source") or ""),
        )


@dataclass(frozen=True)
class Secret:
    """One secret as read: its data, metadata and checksum."""

    path: str
    data: Mapping[str, bytes]
    metadata: SecretMetadata
    checksum: str

    def approx_size(self) -> int:
        """Bytes this secret holds in memory, roughly (the read caches' byte bound)."""
        meta = self.metadata
        return (
            200 + len(self.path) + len(self.checksum)
            + sum(len(k) + len(v) for k, v in self.data.items())
            + len(meta.description) + len(meta.format) + len(meta.data_type) + len(meta.created_at)
            + len(meta.source) + sum(len(k) + len(v) for k, v in meta.labels.items())
        )


@dataclass(frozen=True)
class WriteResult:
    """What a write did: the checksum now stored, and whether anything changed (an identical
    write stores nothing)."""

    checksum: str
    changed: bool


@dataclass(frozen=True)
class PinStatus:
    """PIN state flags as the token reports them (CKF_USER_PIN_*)."""

    count_low: bool = False
    final_try: bool = False
    locked: bool = False
    to_be_changed: bool = False


@dataclass(frozen=True)
class TokenInfo:
    label: str
    manufacturer: str
    model: str
    serial: str
    firmware: str
    free_memory: int | None = None  # bytes of free private memory, when the token reports it
    total_memory: int | None = None
    pin: PinStatus = field(default_factory=PinStatus)
    profile: str = "generic"
    library: str = ""
    slot: int | None = None


@dataclass(frozen=True)
class DeviceProfile:
    """Per-device limits checked before anything is written."""

    name: str
    max_object_bytes: int
    description: str = ""


PROFILES: dict[str, DeviceProfile] = {
    "generic": DeviceProfile("generic", 64 * 1024, "any PKCS#11 token"),
    "softhsm": DeviceProfile("softhsm", MAX_SECRET_BYTES, "SoftHSM2, development and tests"),
    "picohsm": DeviceProfile("picohsm", 4096, "Pico HSM: 4096 bytes per data object"),
    "smartcard-hsm": DeviceProfile("smartcard-hsm", 4096, "SmartCard-HSM / Nitrokey HSM 2"),
    "yubihsm": DeviceProfile("yubihsm", 1975, "YubiHSM 2 through yubihsm_pkcs11: ~1975 bytes per opaque"),
}


def profile(name: str) -> DeviceProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise InvalidArgument(
            f"unknown device profile {name!r}; known: {', '.join(sorted(PROFILES))}"
        ) from None


def _show(text: str, limit: int = 64) -> str:
    """Quote user input for an error message: printable, bounded (paths and keys are not secret)."""
    shown = text if len(text) <= limit else text[:limit] + "..."
    return repr(shown)
