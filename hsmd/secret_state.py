"""Desired vs actual for HSM secrets: the core of the ``hsm.secrets.hsm_secret`` module.

Given a backend (an ``hsmd.agent.client.AgentClient`` or an open ``hsmd.pkcs11.token.Token`` —
both speak the same method names) and a list of desired secrets (path, data, metadata,
state present|absent), ``apply`` says for each whether it changes, builds a diff that carries
key names, checksums and metadata but never a value, and writes unless in check mode.

Idempotent by construction: a secret whose checksum and metadata already match is not written.
Updates are compare-and-swap (``expected_checksum`` = the checksum just read) and creates are
``create_only``, so a concurrent writer makes the item fail with Conflict instead of being
silently overwritten. All input is validated before the first write: bad input loses nothing.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from hsmd import model
from hsmd.errors import HsmdError, InvalidArgument, NotFound

PRESENT = "present"
ABSENT = "absent"
# Metadata fields a caller may set; createdAt is kept from the existing secret (set on create).
_METADATA_FIELDS = {
    "description": "description",
    "labels": "labels",
    "format": "format",
    "dataType": "data_type",
    "data_type": "data_type",
    "source": "source",
    "createdAt": "created_at",
    "created_at": "created_at",
}


class Backend(Protocol):
    def write(
        self,
        path: str,
        data: Mapping[str, bytes],
        metadata: model.SecretMetadata | None = None,
        *,
        create_only: bool = False,
        expected_checksum: str | None = None,
    ) -> Any: ...

    def delete(self, path: str, key: str | None = None) -> None: ...


@dataclass(frozen=True)
class Desired:
    """One desired secret, validated (see ``desired_from_dict``)."""

    path: str
    state: str = PRESENT
    data: Mapping[str, bytes] | None = None
    metadata: Mapping[str, Any] | None = None  # only the fields the caller sets (Go field names)


@dataclass
class ItemResult:
    path: str
    state: str
    action: str  # created | updated | deleted | unchanged
    changed: bool
    checksum: str | None  # after
    keys: list[str]  # after
    diff: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "state": self.state,
            "action": self.action,
            "changed": self.changed,
            "checksum": self.checksum,
            "keys": self.keys,
        }


class BatchFailed(Exception):
    """An item failed after earlier items were applied: ``results`` says what was done."""

    def __init__(self, error: HsmdError, results: list[ItemResult], path: str) -> None:
        super().__init__(f"{path}: {error}")
        self.error = error
        self.results = results
        self.path = path


def normalize_metadata(raw: Mapping[str, Any] | None, *, where: str = "metadata") -> dict[str, Any] | None:
    """User metadata (Go or snake_case field names) -> Go field names; InvalidArgument on unknown."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InvalidArgument(f"{where} must be a mapping")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _METADATA_FIELDS:
            raise InvalidArgument(
                f"{where}: unknown field {key!r}; known: description, labels, format, dataType, source"
            )
        name = _METADATA_FIELDS[key]
        if name == "labels":
            if not isinstance(value, Mapping):
                raise InvalidArgument(f"{where}.labels must be a mapping of strings")
            out["labels"] = {str(k): str(v) for k, v in value.items()}
        else:
            if value is not None and not isinstance(value, str):
                raise InvalidArgument(f"{where}.{key} must be a string")
            out[{"data_type": "dataType", "created_at": "createdAt"}.get(name, name)] = value or ""
    data_type = out.get("dataType")
    if data_type and data_type not in model.DATA_TYPES:
        raise InvalidArgument(f"{where}.dataType {data_type!r} is not one of {', '.join(model.DATA_TYPES)}")
    return out


def validate_items(items: Sequence[Desired], profile: model.DeviceProfile | None = None) -> list[Desired]:
    """Validate every item before anything is written; duplicate paths are an error."""
    seen: set[str] = set()
    out: list[Desired] = []
    for index, item in enumerate(items):
        where = f"secrets[{index}]" if len(items) > 1 else "secret"
        try:
            path = model.validate_path(item.path)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{where}: {exc}") from None
        if path in seen:
            raise InvalidArgument(f"{where}: path {path!r} appears more than once")
        seen.add(path)
        if item.state not in (PRESENT, ABSENT):
            raise InvalidArgument(f"{where}: state must be present or absent")
        data = item.data
        if item.state == PRESENT:
            if data is None:
                raise InvalidArgument(f"{where} ({path}): state present needs data")
            try:
                data = model.validate_data(data, profile)
            except HsmdError as exc:
                raise type(exc)(f"{where} ({path}): {exc}", path=path) from None
        metadata = normalize_metadata(item.metadata, where=f"{where}.metadata")
        out.append(replace(item, path=path, data=data, metadata=metadata))
    return out


def desired_metadata(
    current: model.SecretMetadata | None, wanted: Mapping[str, Any] | None, now: datetime | None = None
) -> model.SecretMetadata:
    """The metadata to store: the current one with the caller's fields applied; createdAt is kept
    (or set now for a new secret)."""
    base = current.to_json_dict() if current is not None else model.SecretMetadata().to_json_dict()
    if wanted:
        base.update(wanted)
    if not base.get("createdAt"):
        base["createdAt"] = (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return model.SecretMetadata.from_json_dict(base)


def _view(secret: model.Secret | None) -> dict[str, Any]:
    """What a diff may show about a secret: key names, checksum and metadata — no values."""
    if secret is None:
        return {}
    return {"keys": sorted(secret.data), "checksum": secret.checksum, "metadata": secret.metadata.to_json_dict()}


def read_current(backend: Any, paths: Sequence[str]) -> dict[str, model.Secret | None]:
    """Current secrets by path (None: absent); one batch RPC when the backend has ``read_many``."""
    out: dict[str, model.Secret | None] = {}
    if not paths:
        return out
    read_many = getattr(backend, "read_many", None)
    if read_many is not None:
        found: Mapping[str, model.Secret | HsmdError] = read_many(list(paths))
        for path in paths:
            got = found.get(path, NotFound("missing from the batch answer", path=path))
            if isinstance(got, NotFound):
                out[path] = None
            elif isinstance(got, HsmdError):
                raise got
            else:
                out[path] = got
        return out
    for path in paths:
        try:
            out[path] = backend.read_secret(path)
        except NotFound:
            out[path] = None
    return out


def plan(current: model.Secret | None, item: Desired, now: datetime | None = None) -> tuple[
    str, model.SecretMetadata | None, dict[str, Any]
]:
    """(action, metadata to write, diff) for one validated item against its current state."""
    if item.state == ABSENT:
        action = "deleted" if current is not None else "unchanged"
        return action, None, {"before": _view(current), "after": {}}
    assert item.data is not None
    new_checksum = model.checksum(item.data)
    metadata = desired_metadata(current.metadata if current is not None else None, item.metadata, now)
    after = {"keys": sorted(item.data), "checksum": new_checksum, "metadata": metadata.to_json_dict()}
    if current is None:
        return "created", metadata, {"before": {}, "after": after}
    if current.checksum == new_checksum and current.metadata == metadata:
        return "unchanged", None, {"before": _view(current), "after": _view(current)}
    return "updated", metadata, {"before": _view(current), "after": after}


def apply(
    backend: Any,
    items: Sequence[Desired],
    *,
    check_mode: bool = False,
    profile: model.DeviceProfile | None = None,
    now: datetime | None = None,
) -> list[ItemResult]:
    """Bring every item to its desired state (or say what would change, in check mode)."""
    valid = validate_items(items, profile)
    current = read_current(backend, [i.path for i in valid])
    results: list[ItemResult] = []
    for item in valid:
        before = current[item.path]
        action, metadata, diff = plan(before, item, now)
        diff["before_header"] = diff["after_header"] = item.path
        changed = action != "unchanged"
        if item.state == ABSENT:
            checksum, keys = None, []
        elif action == "unchanged":
            assert before is not None
            checksum, keys = before.checksum, sorted(before.data)
        else:
            assert item.data is not None
            checksum, keys = model.checksum(item.data), sorted(item.data)
        if changed and not check_mode:
            try:
                if action == "deleted":
                    with contextlib.suppress(NotFound):  # gone meanwhile: the desired state holds
                        backend.delete(item.path)
                else:
                    assert item.data is not None
                    written = backend.write(
                        item.path,
                        item.data,
                        metadata,
                        create_only=before is None,
                        expected_checksum=before.checksum if before is not None else None,
                    )
                    checksum = getattr(written, "checksum", None) or checksum
            except HsmdError as exc:
                raise BatchFailed(exc, results, item.path) from exc
        results.append(ItemResult(item.path, item.state, action, changed, checksum, keys, diff))
    return results


# --- module input and the info module's answer ---------------------------------------------------


def data_from_params(
    data: Mapping[str, Any] | None, data_b64: Mapping[str, Any] | None, *, where: str = "secret"
) -> dict[str, bytes] | None:
    """``data`` (text values, stored UTF-8) and/or ``data_b64`` (base64 values, for binary) -> bytes.

    A key given in both is an error; errors name the key, never the value."""
    if data is None and data_b64 is None:
        return None
    out: dict[str, bytes] = {}
    for key, value in (data or {}).items():
        if not isinstance(value, str):
            raise InvalidArgument(f"{where}: data.{key} must be a string (use data_b64 for binary values)")
        out[str(key)] = value.encode("utf-8")
    for key, value in (data_b64 or {}).items():
        if key in out:
            raise InvalidArgument(f"{where}: key {key!r} is given in both data and data_b64")
        try:
            out[str(key)] = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise InvalidArgument(f"{where}: data_b64.{key} is not valid base64") from None
    return out


def desired_from_params(entries: Sequence[Mapping[str, Any]]) -> list[Desired]:
    """Module parameters (one dict per secret: path, state, data, data_b64, metadata) -> Desired."""
    out: list[Desired] = []
    for index, entry in enumerate(entries):
        where = f"secrets[{index}]" if len(entries) > 1 else "secret"
        out.append(
            Desired(
                path=str(entry.get("path") or ""),
                state=str(entry.get("state") or PRESENT),
                data=data_from_params(entry.get("data"), entry.get("data_b64"), where=where),
                metadata=entry.get("metadata"),
            )
        )
    return out


def describe(
    backend: Any,
    *,
    paths: Sequence[str] | None = None,
    prefix: str = "",
    return_content: bool = False,
) -> list[dict[str, Any]]:
    """What ``hsm_secret_info`` returns: per secret its path, checksum, key names and metadata;
    values (``data`` as text where it is UTF-8, ``data_b64`` always) only with ``return_content``.

    ``paths`` given: exactly those (a missing one is reported with ``exists: false``);
    otherwise every secret under ``prefix``."""
    if paths is not None:
        wanted = [model.validate_path(p) for p in paths]
    else:
        wanted = list(backend.list(model.validate_prefix(prefix)))
    current = read_current(backend, wanted)
    out: list[dict[str, Any]] = []
    for path in wanted:
        secret = current[path]
        if secret is None:
            out.append({"path": path, "exists": False})
            continue
        entry: dict[str, Any] = {
            "path": path,
            "exists": True,
            "checksum": secret.checksum,
            "keys": sorted(secret.data),
            "metadata": secret.metadata.to_json_dict(),
        }
        if return_content:
            text: dict[str, str] = {}
            for key, value in secret.data.items():
                try:
                    text[key] = bytes(value).decode("utf-8")
                except UnicodeDecodeError:
                    continue
            entry["data"] = text
            entry["data_b64"] = {k: base64.b64encode(bytes(v)).decode("ascii") for k, v in secret.data.items()}
        out.append(entry)
    return out
