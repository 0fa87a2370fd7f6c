"""Token: secrets on one PKCS#11 token, in the layout of DESIGN.md contract 2.

This is the API the agent (and in-process tools) use: read / write / delete / list / checksums /
info / change_pin. It owns the crash-safe replace protocol (see hsmd.pkcs11.layout for the reader
rule it relies on and docs/token.md for the whole story):

1. remove leftovers of earlier interrupted writes of the path (they are invisible);
2. a secret still in the Go operator's layout is first described as a generation of its own
   (a metadata object naming the existing objects; it is complete at once);
3. create the metadata object of the new generation G (naming the sha256 of every value) and
   read it back;
4. create an object for every key whose value is not already on the token under that label and
   read each back: when the last one is stored generation G is complete, which is the commit
   point; a crash or a full token before that leaves the previous version visible;
5. destroy the older metadata objects, then the key objects G does not name.

A delete removes leftovers, then the visible generation's values (the first one removed makes it
incomplete, so the secret is gone), then its metadata: no new object is needed, so a full token can
still delete. A secret in the Go layout is hidden by a tombstone generation first.

Finding objects on a token costs time proportional to the number of objects on it (SoftHSM2
rescans its directory on every C_FindObjectsInit: ~25 ms at 1,000 objects), so the token keeps an
index of handle -> label (and value digest) of our application's objects and trusts it for
``index_ttl`` seconds, which bounds how late a change made by another process (e.g. pkcs11-tool)
becomes visible; an object destroyed behind our back is noticed on first touch and makes that
read rebuild the index at once (so a secret replaced by another process reads as its new version). Changes made
through this Token are visible at once. The agent is the only writer of its token (it holds a
lock), so the index is authoritative there; ``index_ttl=0`` looks at the token on every call.
"""

from __future__ import annotations

import builtins
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import PyKCS11

from hsmd.errors import (
    AlreadyExists,
    Conflict,
    HsmdError,
    IntegrityError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from hsmd.model import (
    APPLICATION,
    DATA_TYPES,
    METADATA_KEY,
    DeviceProfile,
    PinStatus,
    Secret,
    SecretMetadata,
    TokenInfo,
    WriteResult,
    checksum,
    data_type_oid,
    path_matches_prefix,
    profile,
    validate_data,
    validate_key,
    validate_path,
    validate_prefix,
    value_digest,
)
from hsmd.pkcs11.device import Device, Session, clean
from hsmd.pkcs11.layout import (
    Generation,
    MetadataDoc,
    ObjectRecord,
    Version,
    choose_version,
    decode_metadata,
    encode_metadata,
    label_for,
    max_generation,
    split_label,
)
from hsmd.service import read_secret_input

log = logging.getLogger("hsmd.pkcs11")

_APP_TEMPLATE = ((PyKCS11.CKA_CLASS, PyKCS11.CKO_DATA), (PyKCS11.CKA_APPLICATION, APPLICATION))

# Test hook: called with "create" or "destroy" before every object mutation of a write or delete.
# The kill-during-write tests set it in a child process to SIGKILL the writer at each step.
mutation_hook: Callable[[str], None] | None = None


@dataclass(frozen=True)
class TokenConfig:
    library: str
    token_label: str | None = None
    token_serial: str | None = None  # verified after opening, also when a label or slot selects the token
    slot: int | None = None
    pin_file: str | None = None
    pin_env: str | None = None  # exactly one of pin_file / pin_env (hsmd.service.read_secret_input)
    profile: str = "generic"
    sessions: int = 4
    index_ttl: float = 2.0  # seconds reads trust the object index (see the module docstring)


@dataclass
class _Entry:
    path: str
    key: str
    digest: str | None = None
    doc: MetadataDoc | None = None


class _RWLock:
    """Many readers or one writer (writers first, so a busy path cannot starve a write)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class Token:
    """Secrets on one logged-in PKCS#11 token. Thread-safe; one instance per process and token."""

    def __init__(self, config: TokenConfig, device: Device, device_profile: DeviceProfile) -> None:
        self.config = config
        self.profile = device_profile
        self._device = device
        self._index: dict[int, _Entry] = {}
        self._by_path: dict[str, set[int]] = {}
        self._foreign: set[int] = set()
        # path -> has a visible version, while the index entries of that path stay as they were
        # (list() would otherwise choose a version of every secret on every call)
        self._visible_memo: dict[str, bool] = {}
        self._index_serial = 0  # bumped by every change of the index
        self._index_time = -1.0
        self._index_epoch = -1
        self._index_lock = threading.RLock()
        self._locks: dict[str, _RWLock] = {}
        self._locks_lock = threading.Lock()

    # --- opening ----------------------------------------------------------------------------

    @classmethod
    def open(cls, config: TokenConfig) -> Token:
        """Load the library, find the token, verify its serial, open sessions and log in once."""
        device_profile = profile(config.profile)
        if config.token_label is None and config.token_serial is None and config.slot is None:
            raise InvalidArgument("select the token with one of a label, serial or slot")
        if config.sessions < 1:
            raise InvalidArgument("the session pool needs at least one session")
        pin = read_secret_input(file=config.pin_file, env=config.pin_env, what="token PIN")
        device = Device(
            config.library,
            label=config.token_label,
            serial=config.token_serial,
            slot=config.slot,
            pin=pin,
            sessions=config.sessions,
        )
        assert device.slot is not None
        log.info(
            "token opened",
            extra={"token_label": device.slot.label, "serial": device.slot.serial, "slot": device.slot.slot},
        )
        return cls(config, device, device_profile)

    def close(self) -> None:
        self._device.close()

    def __enter__(self) -> Token:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- reading ----------------------------------------------------------------------------

    def read(self, path: str) -> dict[str, bytes]:
        return dict(self.read_secret(path).data)

    def read_secret(self, path: str) -> Secret:
        validate_path(path)
        with self._lock_for(path).read(), self._device.session("read secret", path=path) as s:
            self._ensure_index(s, self.config.index_ttl)
            secret = self._read_locked(s, path)
        if secret is None:
            raise NotFound(f"secret {path!r} not found", path=path)
        return secret

    def metadata(self, path: str) -> SecretMetadata:
        return self.read_secret(path).metadata

    def checksum(self, path: str) -> str:
        return self.read_secret(path).checksum

    def read_many(self, paths: Sequence[str]) -> dict[str, Secret | HsmdError]:
        """Several secrets in one pass (one index check); a missing or bad path maps to its error."""
        out: dict[str, Secret | HsmdError] = {}
        with self._device.session("read secrets") as s:
            self._ensure_index(s, self.config.index_ttl)
        for path in paths:
            try:
                validate_path(path)
                # path lock before session, everywhere: a writer holding a path lock never waits
                # for a session held by a reader waiting for that path
                with self._lock_for(path).read(), self._device.session("read secret", path=path) as s:
                    secret = self._read_locked(s, path)
                out[path] = secret if secret is not None else NotFound(f"secret {path!r} not found", path=path)
            except HsmdError as err:
                if err.temporary:
                    raise
                out[path] = err
        return out

    def checksums(self, paths: Sequence[str] | None = None, prefix: str = "") -> dict[str, str]:
        """Checksums of the given paths (or of every secret under ``prefix``); missing ones are absent."""
        if paths is None:
            paths = self.list(prefix)
        found = self.read_many(list(paths))
        return {p: s.checksum for p, s in found.items() if isinstance(s, Secret)}

    def list(self, prefix: str = "") -> builtins.list[str]:
        """Every secret path selected by ``prefix`` (hsmd.model.path_matches_prefix), sorted."""
        validate_prefix(prefix)
        out: builtins.list[str] = []
        with self._device.session("list secrets") as s:
            self._ensure_index(s, self.config.index_ttl)
            with self._index_lock:
                candidates = sorted(p for p in self._by_path if path_matches_prefix(p, prefix))
            for path in candidates:
                if self._visible(s, path):
                    out.append(path)
        return out

    # --- writing ----------------------------------------------------------------------------

    def write(
        self,
        path: str,
        data: Mapping[str, bytes],
        metadata: SecretMetadata | None = None,
        *,
        create_only: bool = False,
        expected_checksum: str | None = None,
    ) -> WriteResult:
        """Replace the whole secret atomically. ``metadata=None`` keeps the current metadata;
        an empty ``created_at`` keeps the current one (or is set to now for a new secret)."""
        validate_path(path)
        clean_data = validate_data(data, self.profile)
        if metadata is not None:
            self._validate_metadata(metadata)
        with self._lock_for(path).write(), self._device.session("write secret", path=path) as s:
            self._ensure_index(s, self.config.index_ttl)
            records, values = self._load(s, path)
            current = choose_version(path, records)
            current_data = self._data_of(current, values)
            if create_only and current is not None:
                raise AlreadyExists(f"secret {path!r} already exists", path=path)
            if expected_checksum is not None:
                actual = checksum(current_data) if current is not None else None
                if actual != expected_checksum:
                    what = "does not exist" if actual is None else "has changed"
                    raise Conflict(f"secret {path!r} {what} (expected checksum {expected_checksum})", path=path)
            new_meta = self._effective_metadata(metadata, current)
            return self._replace(s, path, clean_data, new_meta, records, values, current, current_data)

    def delete(self, path: str, key: str | None = None) -> None:
        """Delete a secret, or one key of it (an atomic replace without that key; deleting the last
        key deletes the secret). NotFound when the secret or key does not exist."""
        validate_path(path)
        if key is not None:
            validate_key(key)
        with self._lock_for(path).write(), self._device.session("delete secret", path=path) as s:
            self._ensure_index(s, self.config.index_ttl)
            records, values = self._load(s, path)
            current = choose_version(path, records)
            if current is None:
                raise NotFound(f"secret {path!r} not found", path=path)
            current_data = self._data_of(current, values)
            if key is not None and key not in current_data:
                raise NotFound(f"secret {path!r} has no key {key!r}", path=path)
            if key is not None and len(current_data) > 1:
                remaining = {k: v for k, v in current_data.items() if k != key}
                self._replace(s, path, remaining, current.metadata, records, values, current, current_data)
                return
            self._delete_all(s, path, records, current)

    # --- token ------------------------------------------------------------------------------

    def info(self) -> TokenInfo:
        raw = self._device.token_info()
        flags = int(raw.flags)
        free = int(raw.ulFreePrivateMemory)
        total = int(raw.ulTotalPrivateMemory)
        assert self._device.slot is not None
        return TokenInfo(
            label=clean(raw.label),
            manufacturer=clean(raw.manufacturerID),
            model=clean(raw.model),
            serial=clean(raw.serialNumber),
            firmware=f"{raw.firmwareVersion[0]}.{raw.firmwareVersion[1]}",
            free_memory=free if free >= 0 else None,
            total_memory=total if total >= 0 else None,
            pin=PinStatus(
                count_low=bool(flags & PyKCS11.CKF_USER_PIN_COUNT_LOW),
                final_try=bool(flags & PyKCS11.CKF_USER_PIN_FINAL_TRY),
                locked=bool(flags & PyKCS11.CKF_USER_PIN_LOCKED),
                to_be_changed=bool(flags & PyKCS11.CKF_USER_PIN_TO_BE_CHANGED),
            ),
            profile=self.profile.name,
            library=self.config.library,
            slot=self._device.slot.slot,
        )

    def ping(self) -> None:
        """A cheap device touch: session info and token info. Unavailable when the token is gone."""
        with self._device.session("reach the token") as s:
            s.info()
        self._device.token_info()

    def change_pin(self, old_pin: str, new_pin: str) -> None:
        if not old_pin or not new_pin:
            raise InvalidArgument("the old and the new PIN must not be empty")
        with self._device.session("change the PIN") as s:
            s.set_pin(old_pin, new_pin)
        self._device.pin_changed(new_pin)
        log.info("token PIN changed")

    # --- internals: index -------------------------------------------------------------------

    def _lock_for(self, path: str) -> _RWLock:
        with self._locks_lock:
            lock = self._locks.get(path)
            if lock is None:
                lock = self._locks[path] = _RWLock()
            return lock

    def _ensure_index(self, s: Session, max_age: float) -> None:
        with self._index_lock:
            if s.epoch > self._index_epoch:
                # a reconnect: after a device was removed and re-inserted, handles may name other objects
                self._index.clear()
                self._by_path.clear()
                self._visible_memo.clear()
                self._index_serial += 1
                self._foreign.clear()
                self._index_time = -1.0
                self._index_epoch = s.epoch
            if self._index_time >= 0 and time.monotonic() - self._index_time <= max_age:
                return
            started = time.monotonic()
            handles = set(s.find(_APP_TEMPLATE))
            for gone in [h for h in self._index if h not in handles]:
                self._forget(gone)
            self._foreign &= handles
            for handle in handles:
                if handle in self._index or handle in self._foreign:
                    continue
                label = s.attributes(handle, [PyKCS11.CKA_LABEL])[0]
                parts = split_label(label.decode("utf-8", "replace")) if label is not None else None
                if parts is None:
                    self._foreign.add(handle)
                    continue
                self._remember(handle, _Entry(parts[0], parts[1]))
            self._index_time = started

    def _remember(self, handle: int, entry: _Entry) -> None:
        with self._index_lock:
            self._forget(handle)
            self._index[handle] = entry
            self._by_path.setdefault(entry.path, set()).add(handle)
            self._visible_memo.pop(entry.path, None)
            self._index_serial += 1

    def _forget(self, handle: int) -> None:
        with self._index_lock:
            entry = self._index.pop(handle, None)
            if entry is not None:
                self._visible_memo.pop(entry.path, None)
                self._index_serial += 1
                handles = self._by_path.get(entry.path)
                if handles is not None:
                    handles.discard(handle)
                    if not handles:
                        del self._by_path[entry.path]

    def _snapshot(self, path: str) -> builtins.list[tuple[int, _Entry]]:
        with self._index_lock:
            return [(h, self._index[h]) for h in sorted(self._by_path.get(path, ()))]

    def _record(self, handle: int, entry: _Entry) -> ObjectRecord:
        return ObjectRecord(handle=handle, path=entry.path, key=entry.key, digest=entry.digest, doc=entry.doc)

    def _fill(self, entry: _Entry, value: bytes) -> None:
        entry.digest = value_digest(value)
        if entry.key == METADATA_KEY:
            entry.doc = decode_metadata(value)

    def _load(self, s: Session, path: str) -> tuple[builtins.list[ObjectRecord], dict[int, bytes]]:
        """Every object of ``path`` with its value read from the token now.

        An object destroyed behind our back means another process changed this secret (it replaced
        it, most likely, with objects the index does not know yet): the index is rebuilt at once and
        the secret loaded again, so the caller sees the new version, never a secret gone missing."""
        for attempt in range(2):
            records: builtins.list[ObjectRecord] = []
            values: dict[int, bytes] = {}
            stale = False
            for handle, entry in self._snapshot(path):
                try:
                    value = s.attributes(handle, [PyKCS11.CKA_VALUE])[0]
                except PyKCS11.PyKCS11Error as exc:
                    if int(exc.value) != PyKCS11.CKR_OBJECT_HANDLE_INVALID:
                        raise
                    self._forget(handle)
                    stale = True
                    continue
                value = value or b""
                self._fill(entry, value)
                values[handle] = value
                records.append(self._record(handle, entry))
            if not stale:
                break
            self._index_time = -1.0
            if attempt == 0:
                self._ensure_index(s, 0)
        return records, values

    def _visible(self, s: Session, path: str) -> bool:
        """Whether ``path`` has a visible version, from the index (values read only once per object;
        the answer is kept until an index entry of ``path`` changes)."""
        with self._index_lock:
            known = self._visible_memo.get(path)
            serial = self._index_serial
        if known is not None:
            return known
        records = []
        for handle, entry in self._snapshot(path):
            if entry.digest is None:
                try:
                    value = s.attributes(handle, [PyKCS11.CKA_VALUE])[0] or b""
                except PyKCS11.PyKCS11Error as exc:
                    if int(exc.value) != PyKCS11.CKR_OBJECT_HANDLE_INVALID:
                        raise
                    self._forget(handle)
                    continue
                self._fill(entry, value)
            records.append(self._record(handle, entry))
        visible = choose_version(path, records) is not None
        with self._index_lock:
            if self._index_serial == serial:  # nothing changed meanwhile: the answer still holds
                self._visible_memo[path] = visible
        return visible

    def _read_locked(self, s: Session, path: str) -> Secret | None:
        records, values = self._load(s, path)
        version = choose_version(path, records)
        if version is None:
            return None
        data = self._data_of(version, values)
        return Secret(path=path, data=data, metadata=version.metadata, checksum=checksum(data))

    @staticmethod
    def _data_of(version: Version | None, values: Mapping[int, bytes]) -> dict[str, bytes]:
        if version is None:
            return {}
        return {key: values[handle] for key, handle in version.objects.items()}

    # --- internals: the replace protocol ----------------------------------------------------

    def _validate_metadata(self, metadata: SecretMetadata) -> None:
        if metadata.data_type and metadata.data_type not in DATA_TYPES:
            raise InvalidArgument(
                f"unknown data type {metadata.data_type!r}; known: {', '.join(sorted(DATA_TYPES))}"
            )

    @staticmethod
    def _effective_metadata(metadata: SecretMetadata | None, current: Version | None) -> SecretMetadata:
        if metadata is None:
            if current is not None:
                return current.metadata
            metadata = SecretMetadata()
        if not metadata.created_at:
            created = current.metadata.created_at if current is not None and current.metadata.created_at else ""
            created = created or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            metadata = replace(metadata, created_at=created)
        return metadata

    def _replace(
        self,
        s: Session,
        path: str,
        data: Mapping[str, bytes],
        metadata: SecretMetadata,
        records: builtins.list[ObjectRecord],
        values: Mapping[int, bytes],
        current: Version | None,
        current_data: Mapping[str, bytes],
    ) -> WriteResult:
        new_checksum = checksum(data)
        if current is not None and dict(current_data) == dict(data) and current.metadata == metadata:
            return WriteResult(checksum=new_checksum, changed=False)
        next_gen = max_generation(records) + 1
        generation = Generation(next_gen, {k: value_digest(v) for k, v in data.items()}, new_checksum)
        meta_bytes = encode_metadata(metadata, generation)
        if len(meta_bytes) > self.profile.max_object_bytes:
            raise ResourceExhausted(
                f"the metadata of secret {path!r} is {len(meta_bytes)} bytes; device profile "
                f"{self.profile.name!r} holds at most {self.profile.max_object_bytes} bytes per object",
                path=path,
            )
        # 1. leftovers of interrupted writes are invisible: removing them changes nothing a reader sees
        keep = set() if current is None else set(current.objects.values())
        if current is not None and current.metadata_handle is not None:
            keep.add(current.metadata_handle)
        for rec in records:
            if rec.handle not in keep:
                self._destroy(s, rec.handle, path)
        live = [r for r in records if r.handle in keep]
        # 2. a secret in the Go operator's layout becomes a generation of its own first
        if current is not None and current.generation is None:
            legacy = Generation(
                next_gen,
                {k: value_digest(v) for k, v in current_data.items()},
                checksum(current_data),
            )
            self._create_verified(s, path, METADATA_KEY, encode_metadata(current.metadata, legacy), "json")
            next_gen += 1
            generation = replace(generation, number=next_gen)
            meta_bytes = encode_metadata(metadata, generation)
        # 3. the new generation's metadata: names every value by digest; incomplete until step 4 ends
        created: builtins.list[int] = []
        try:
            created.append(self._create_verified(s, path, METADATA_KEY, meta_bytes, "json"))
            # 4. values not already on the token under their label; the last one commits
            have = {(r.key, r.digest) for r in live if not r.is_metadata}
            data_type = metadata.data_type or "plaintext"
            for key in sorted(data):
                if (key, generation.keys[key]) not in have:
                    created.append(self._create_verified(s, path, key, data[key], data_type))
        except (HsmdError, PyKCS11.PyKCS11Error):
            # the previous version is still the visible one; drop what this attempt stored
            for handle in reversed(created):
                try:
                    self._destroy(s, handle, path)
                except (HsmdError, PyKCS11.PyKCS11Error):
                    log.warning("could not remove an object of a failed write", extra={"path": path})
            raise
        # 5. retire the previous version: metadata first, then values the new generation does not name
        records_now, _ = self._load(s, path)
        winner = choose_version(path, records_now)
        if winner is None or winner.generation is None or winner.generation.number != generation.number:
            raise IntegrityError(f"secret {path!r}: the new version did not read back complete", path=path)
        for rec in sorted(records_now, key=lambda r: not r.is_metadata):
            if rec.handle in winner.leftovers:
                self._destroy(s, rec.handle, path)
        log.info("secret written", extra={"path": path, "generation": generation.number, "keys": len(data)})
        return WriteResult(checksum=new_checksum, changed=True)

    def _delete_all(self, s: Session, path: str, records: builtins.list[ObjectRecord], current: Version) -> None:
        if current.generation is not None:
            # Leftovers first (invisible). Then the visible generation's values: once the first is
            # gone the generation is incomplete and, with no other generation left, the secret does
            # not exist. No new object is needed, so a full token can still delete.
            live = set(current.objects.values())
            for rec in records:
                if rec.handle not in live and rec.handle != current.metadata_handle:
                    self._destroy(s, rec.handle, path)
            for handle in sorted(live):
                self._destroy(s, handle, path)
            if current.metadata_handle is not None:
                self._destroy(s, current.metadata_handle, path)
        else:
            # Go operator layout: every key object is visible on its own, so a tombstone generation
            # hides them all at once before they are removed one by one; the tombstone goes last.
            tombstone = Generation(max_generation(records) + 1, {}, "", deleted=True)
            marker = self._create_verified(
                s, path, METADATA_KEY, encode_metadata(SecretMetadata(), tombstone), "json"
            )
            for rec in sorted(records, key=lambda r: r.is_metadata):
                self._destroy(s, rec.handle, path)
            self._destroy(s, marker, path)
        log.info("secret deleted", extra={"path": path})

    def _create_verified(self, s: Session, path: str, key: str, value: bytes, data_type: str) -> int:
        """Create one object and read it back: a token that answers CKR_OK but stores something
        else (or nothing, as SoftHSM2 does on a full disk) is an IntegrityError."""
        label = label_for(path, key)
        template = [
            (PyKCS11.CKA_CLASS, PyKCS11.CKO_DATA),
            (PyKCS11.CKA_TOKEN, PyKCS11.CK_TRUE),
            (PyKCS11.CKA_PRIVATE, PyKCS11.CK_TRUE),
            (PyKCS11.CKA_MODIFIABLE, PyKCS11.CK_TRUE),
            (PyKCS11.CKA_APPLICATION, APPLICATION),
            (PyKCS11.CKA_LABEL, label),
            (PyKCS11.CKA_OBJECT_ID, data_type_oid(data_type)),
            (PyKCS11.CKA_VALUE, value),
        ]
        if mutation_hook is not None:
            mutation_hook("create")
        with self._index_lock:
            handle = s.create(template)
            self._remember(handle, _Entry(path, key))
        try:
            got_value, got_label, got_app = s.attributes(
                handle, [PyKCS11.CKA_VALUE, PyKCS11.CKA_LABEL, PyKCS11.CKA_APPLICATION]
            )
        except PyKCS11.PyKCS11Error as exc:
            if int(exc.value) == PyKCS11.CKR_OBJECT_HANDLE_INVALID:
                self._forget(handle)
                raise IntegrityError(
                    f"secret {path!r}: the token accepted an object but does not have it (token full?)",
                    path=path,
                ) from exc
            raise
        if (got_value or b"") != value or got_label != label.encode() or got_app != APPLICATION.encode():
            self._destroy(s, handle, path)
            raise IntegrityError(
                f"secret {path!r}: an object did not read back as written (token full or failing?)", path=path
            )
        with self._index_lock:
            entry = self._index.get(handle)
            if entry is not None:
                self._fill(entry, value)
        return handle

    def _destroy(self, s: Session, handle: int, path: str) -> None:
        if mutation_hook is not None:
            mutation_hook("destroy")
        with self._index_lock:
            try:
                s.destroy(handle)
            except PyKCS11.PyKCS11Error as exc:
                if int(exc.value) != PyKCS11.CKR_OBJECT_HANDLE_INVALID:
                    raise
            self._forget(handle)


def open_token(config: TokenConfig) -> Token:
    return Token.open(config)
