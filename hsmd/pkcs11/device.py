"""The thin PyKCS11 wrapper under hsmd.pkcs11.token: load a library, find a slot, log in once,
keep a pool of sessions, and do the handful of object calls the token layer needs.

Every PyKCS11 failure leaves this module as an hsmd error (hsmd.pkcs11.ckr.translate). A session
is borrowed by one caller for a whole sequence of calls, so a C_FindObjectsInit/C_FindObjects/
C_FindObjectsFinal triple never interleaves with another caller's (CKR_OPERATION_ACTIVE).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import PyKCS11
from PyKCS11 import LowLevel

from hsmd.errors import FailedPrecondition, HsmdError, InvalidArgument, PermissionDenied, Unavailable
from hsmd.pkcs11 import ckr

log = logging.getLogger("hsmd.pkcs11")

FIND_BATCH = 256
SESSION_WAIT = 60.0  # seconds a caller waits for a free session of the pool

# SoftHSM2 reads SOFTHSM2_CONF once per process, when the library is first initialized. Remember
# which configuration each library was first loaded with, so helpers can tell whether this
# process can see a given SoftHSM token directory (hsmd.pkcs11.softhsm).
_loaded_with_conf: dict[str, str | None] = {}
_load_lock = threading.Lock()


def loaded_conf(library: str) -> tuple[bool, str | None]:
    """(loaded in this process?, SOFTHSM2_CONF at that time)."""
    with _load_lock:
        if library in _loaded_with_conf and library in getattr(PyKCS11.PyKCS11Lib, "_loaded_libs", {}):
            return True, _loaded_with_conf[library]
        return False, None


def load_library(library: str) -> Any:
    if not os.path.exists(library):
        raise FailedPrecondition(f"PKCS#11 library {library} does not exist")
    with _load_lock:
        # PyKCS11 shares one initialized library between its users and finalizes it with the last
        # one; a fresh initialization reads SOFTHSM2_CONF again.
        fresh = library not in getattr(PyKCS11.PyKCS11Lib, "_loaded_libs", {})
        lib = PyKCS11.PyKCS11Lib()
        try:
            lib.load(library)
        except PyKCS11.PyKCS11Error as exc:
            raise ckr.translate(exc, f"load the PKCS#11 library {library}") from exc
        if fresh or library not in _loaded_with_conf:
            _loaded_with_conf[library] = os.environ.get("SOFTHSM2_CONF")
        return lib


def pad_label(label: str) -> str:
    """Token labels are 32 bytes, blank padded (C_InitToken takes them that way)."""
    if len(label.encode("utf-8")) > 32:
        raise InvalidArgument(f"token label {label!r} is longer than 32 bytes")
    return label + " " * (32 - len(label.encode("utf-8")))


def clean(text: str) -> str:
    return text.replace("\x00", " ").strip()


@dataclass(frozen=True)
class SlotToken:
    slot: int
    label: str
    serial: str
    flags: int


def list_tokens(lib: Any) -> list[SlotToken]:
    try:
        slots = lib.getSlotList(tokenPresent=True)
        out = []
        for slot in slots:
            info = lib.getTokenInfo(slot)
            out.append(SlotToken(int(slot), clean(info.label), clean(info.serialNumber), int(info.flags)))
        return out
    except PyKCS11.PyKCS11Error as exc:
        raise ckr.translate(exc, "list the token slots") from exc


def find_slot(lib: Any, *, label: str | None, serial: str | None, slot: int | None) -> SlotToken:
    """The token selected by slot, label or serial; every selector given must match it."""
    if slot is None and label is None and serial is None:
        raise InvalidArgument("give one of a token label, serial or slot")
    tokens = list_tokens(lib)
    match = [
        t
        for t in tokens
        if (slot is None or t.slot == slot)
        and (label is None or t.label == label)
        and (serial is None or t.serial == serial)
        and (slot is not None or t.flags & PyKCS11.CKF_TOKEN_INITIALIZED)
    ]
    wanted = ", ".join(
        part
        for part in (
            f"slot {slot}" if slot is not None else "",
            f"label {label!r}" if label is not None else "",
            f"serial {serial!r}" if serial is not None else "",
        )
        if part
    )
    if not match:
        known = ", ".join(
            f"{t.label or '<uninitialized>'!r} (serial {t.serial or '-'}, slot {t.slot})" for t in tokens
        )
        raise Unavailable(f"no token with {wanted} is present; present: {known or 'none'}")
    if len(match) > 1:
        raise FailedPrecondition(f"{len(match)} tokens match {wanted}; select one by serial or slot")
    return match[0]


class Session:
    """One PKCS#11 session. Not thread-safe: a caller holds it for a whole sequence of calls."""

    def __init__(self, raw: Any, epoch: int) -> None:
        self.raw = raw
        self.epoch = epoch

    def _handle(self, handle: int) -> Any:
        h = LowLevel.CK_OBJECT_HANDLE()
        h.assign(handle)
        return h

    def find(self, template: Sequence[tuple[int, Any]]) -> list[int]:
        """All matching handles: C_FindObjects in batches until it returns none (no ceiling)."""
        lib = self.raw.lib
        attrs = self.raw._template2ckattrlist(template)
        rv = lib.C_FindObjectsInit(self.raw.session, attrs)
        if rv != PyKCS11.CKR_OK:
            raise PyKCS11.PyKCS11Error(rv)
        out: list[int] = []
        try:
            batch = LowLevel.ckulonglist(FIND_BATCH)
            while True:
                rv = lib.C_FindObjects(self.raw.session, batch)
                if rv != PyKCS11.CKR_OK:
                    raise PyKCS11.PyKCS11Error(rv)
                if len(batch) == 0:
                    break
                out.extend(int(h) for h in batch)
        finally:
            rv = lib.C_FindObjectsFinal(self.raw.session)
        if rv != PyKCS11.CKR_OK:
            raise PyKCS11.PyKCS11Error(rv)
        return out

    def attributes(self, handle: int, types: Sequence[int]) -> list[bytes | None]:
        """Raw attribute values (None for an attribute the object does not have)."""
        values = self.raw.getAttributeValue(self._handle(handle), list(types), allAsBinary=True)
        return [None if v is None else bytes(v) for v in values]

    def create(self, template: Sequence[tuple[int, Any]]) -> int:
        handle = self.raw.createObject(list(template))
        return int(handle.value())

    def destroy(self, handle: int) -> None:
        self.raw.destroyObject(self._handle(handle))

    def info(self) -> Any:
        return self.raw.getSessionInfo()

    def set_pin(self, old: str, new: str) -> None:
        self.raw.setPin(old, new)

    def close(self) -> None:
        with suppress(PyKCS11.PyKCS11Error):
            self.raw.closeSession()


class Device:
    """A logged-in token: library + slot + a pool of R/W sessions.

    Logs in once per (re)connection. A refused PIN is remembered and re-raised on every later
    call without touching the token again: retrying a login automatically locks real tokens."""

    def __init__(
        self,
        library: str,
        *,
        label: str | None,
        serial: str | None,
        slot: int | None,
        pin: str,
        sessions: int,
    ) -> None:
        self.library = library
        self._want = (label, serial, slot)
        self._pin = pin
        self._size = max(1, sessions)
        self._lib = load_library(library)
        self._lock = threading.Lock()
        self._pool: queue.LifoQueue[Session] = queue.LifoQueue()
        self._epoch = 0
        self._connected = False
        self._refused: HsmdError | None = None
        self.slot: SlotToken | None = None
        self.connect()

    # --- connection -------------------------------------------------------------------------

    def connect(self) -> None:
        """(Re)open the sessions and log in once. Called at open and after the device went away."""
        with self._lock:
            if self._refused is not None:
                raise type(self._refused)(self._refused.message)
            if self._connected:
                return
            self._drop_locked()
            label, serial, slot = self._want
            found = find_slot(self._lib, label=label, serial=serial, slot=slot)
            if not found.flags & PyKCS11.CKF_TOKEN_INITIALIZED:
                raise FailedPrecondition(f"the token in slot {found.slot} is not initialized")
            opened: list[Session] = []
            try:
                for _ in range(self._size):
                    raw = self._lib.openSession(found.slot, PyKCS11.CKF_RW_SESSION)
                    opened.append(Session(raw, self._epoch))
                try:
                    opened[0].raw.login(self._pin)
                except PyKCS11.PyKCS11Error as exc:
                    if ckr.ckr_name(int(exc.value)) != "CKR_USER_ALREADY_LOGGED_IN":
                        raise
            except PyKCS11.PyKCS11Error as exc:
                for s in opened:
                    s.close()
                err = ckr.translate(exc, "log in to the token" if opened else "open a session")
                if isinstance(err, PermissionDenied):
                    self._refused = err
                raise err from exc
            for s in opened:
                self._pool.put(s)
            self.slot = found
            self._connected = True
            log.info("token sessions opened", extra={"slot": found.slot, "sessions": len(opened), "epoch": self._epoch})

    def _drop_locked(self) -> None:
        # Only our own sessions: C_CloseAllSessions would also close those of another Token of this
        # process on the same slot. Sessions borrowed right now are closed when they come back.
        self._epoch += 1
        while True:
            try:
                self._pool.get_nowait().close()
            except queue.Empty:
                break

    def mark_broken(self) -> None:
        """The device went away: drop every session; the next call reconnects (and logs in)."""
        with self._lock:
            if self._connected:
                self._connected = False
                self._drop_locked()

    def pin_changed(self, pin: str) -> None:
        """Log in with the new PIN after a later reconnect."""
        with self._lock:
            self._pin = pin

    @property
    def connected(self) -> bool:
        return self._connected

    def close(self) -> None:
        with self._lock:
            self._connected = False
            self._drop_locked()
            self._refused = self._refused or FailedPrecondition("the token is closed")

    # --- sessions ---------------------------------------------------------------------------

    @contextmanager
    def session(self, action: str, *, path: str | None = None) -> Iterator[Session]:
        """Borrow a session for a sequence of calls; PyKCS11 errors leave as hsmd errors."""
        deadline = time.monotonic() + SESSION_WAIT
        while True:
            if not self._connected:
                self.connect()  # after the device went away: new sessions, one login
            try:
                sess = self._pool.get(timeout=0.2)
                break
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise Unavailable(f"no token session became free within {SESSION_WAIT:.0f} s") from None
        broken = False
        try:
            yield sess
        except PyKCS11.PyKCS11Error as exc:
            err = ckr.translate(exc, action, path=path)
            if ckr.needs_reconnect(exc):
                broken = True
                name = ckr.ckr_name(int(exc.value))
                log.warning("token connection lost; the next call reconnects", extra={"ckr": name})
            raise err from exc
        finally:
            if broken:
                self.mark_broken()
            elif sess.epoch == self._epoch:
                self._pool.put(sess)
            else:
                sess.close()

    def token_info(self) -> Any:
        if not self._connected:
            self.connect()
        assert self.slot is not None
        try:
            return self._lib.getTokenInfo(self.slot.slot)
        except PyKCS11.PyKCS11Error as exc:
            if ckr.needs_reconnect(exc):
                self.mark_broken()
            raise ckr.translate(exc, "read the token info") from exc
