"""The one table that turns PKCS#11 return codes (CKR_*) into hsmd domain errors.

Every PyKCS11 failure in hsmd.pkcs11 goes through ``translate`` so the decision "is this the
device going away (temporary, reconnect later), the PIN (permanent, never retried), the token
being full, or a bug" is made once. ``reconnect`` says whether the session pool is no longer
usable and the Token must re-open its sessions (and log in once more) on a later call.

Messages name the operation and the CKR code, never a value or a PIN.
"""

from __future__ import annotations

from dataclasses import dataclass

import PyKCS11

from hsmd.errors import (
    Busy,
    FailedPrecondition,
    HsmdError,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)


@dataclass(frozen=True)
class CkrRule:
    error: type[HsmdError]
    reconnect: bool = False  # the sessions (and the login) are gone: re-open them on a later call
    hint: str = ""


_RULES: dict[str, CkrRule] = {
    # the device or its sessions went away: temporary; the Token re-opens sessions later
    "CKR_DEVICE_REMOVED": CkrRule(Unavailable, True, "the token was removed"),
    "CKR_TOKEN_NOT_PRESENT": CkrRule(Unavailable, True, "the token is not present"),
    "CKR_TOKEN_NOT_RECOGNIZED": CkrRule(Unavailable, True, "the token is not recognized"),
    "CKR_DEVICE_ERROR": CkrRule(Unavailable, True, "the device reported an error"),
    "CKR_SESSION_HANDLE_INVALID": CkrRule(Unavailable, True, "the session is no longer valid"),
    "CKR_SESSION_CLOSED": CkrRule(Unavailable, True, "the session was closed"),
    "CKR_SLOT_ID_INVALID": CkrRule(Unavailable, True, "the slot disappeared"),
    "CKR_CRYPTOKI_NOT_INITIALIZED": CkrRule(Unavailable, True, "the PKCS#11 library is not initialized"),
    "CKR_USER_NOT_LOGGED_IN": CkrRule(Unavailable, True, "the login was lost"),
    "CKR_FUNCTION_FAILED": CkrRule(Unavailable, False, "the device could not complete the call"),
    "CKR_GENERAL_ERROR": CkrRule(Unavailable, True, "the device reported a general error"),
    "CKR_FUNCTION_CANCELED": CkrRule(Unavailable, False, "the call was cancelled"),
    "CKR_SESSION_COUNT": CkrRule(Busy, False, "the token has no free session"),
    "CKR_CANT_LOCK": CkrRule(Busy, False, "the library cannot lock"),
    "CKR_OPERATION_ACTIVE": CkrRule(Busy, False, "another operation is active on the session"),
    # the PIN: permanent, and never retried automatically (retries lock real tokens)
    "CKR_PIN_INCORRECT": CkrRule(PermissionDenied, False, "the PIN is incorrect"),
    "CKR_PIN_LOCKED": CkrRule(PermissionDenied, False, "the PIN is locked"),
    "CKR_PIN_EXPIRED": CkrRule(PermissionDenied, False, "the PIN has expired and must be changed"),
    "CKR_PIN_INVALID": CkrRule(InvalidArgument, False, "the PIN contains invalid characters"),
    "CKR_PIN_LEN_RANGE": CkrRule(InvalidArgument, False, "the PIN length is out of the token's range"),
    "CKR_PIN_TOO_WEAK": CkrRule(InvalidArgument, False, "the new PIN is too weak"),
    "CKR_USER_PIN_NOT_INITIALIZED": CkrRule(FailedPrecondition, False, "the user PIN is not initialized"),
    "CKR_USER_ANOTHER_ALREADY_LOGGED_IN": CkrRule(FailedPrecondition, False, "another user is logged in"),
    "CKR_USER_TYPE_INVALID": CkrRule(Internal, False, "invalid user type"),
    "CKR_TOKEN_NOT_INITIALIZED": CkrRule(FailedPrecondition, False, "the token is not initialized"),
    "CKR_TOKEN_WRITE_PROTECTED": CkrRule(FailedPrecondition, False, "the token is write-protected"),
    "CKR_SESSION_READ_ONLY": CkrRule(FailedPrecondition, False, "the session is read-only"),
    "CKR_ACTION_PROHIBITED": CkrRule(FailedPrecondition, False, "the token prohibits this action"),
    # the token is full
    "CKR_DEVICE_MEMORY": CkrRule(ResourceExhausted, False, "the token is out of memory"),
    "CKR_HOST_MEMORY": CkrRule(ResourceExhausted, False, "the host is out of memory"),
    "CKR_TOKEN_RESOURCE_EXCEEDED": CkrRule(ResourceExhausted, False, "the token is out of resources"),
    # the request does not fit this token
    "CKR_ATTRIBUTE_VALUE_INVALID": CkrRule(InvalidArgument, False, "the token rejected an attribute value"),
    "CKR_DATA_LEN_RANGE": CkrRule(ResourceExhausted, False, "the value is too large for the token"),
    "CKR_TEMPLATE_INCOMPLETE": CkrRule(Internal, False, "incomplete object template"),
    "CKR_TEMPLATE_INCONSISTENT": CkrRule(Internal, False, "inconsistent object template"),
    "CKR_ATTRIBUTE_TYPE_INVALID": CkrRule(Internal, False, "the token does not know an attribute"),
    "CKR_ATTRIBUTE_READ_ONLY": CkrRule(Internal, False, "an attribute is read-only"),
    "CKR_ATTRIBUTE_SENSITIVE": CkrRule(Internal, False, "an attribute is sensitive"),
    "CKR_ARGUMENTS_BAD": CkrRule(Internal, False, "bad arguments"),
    "CKR_BUFFER_TOO_SMALL": CkrRule(Internal, False, "buffer too small"),
    "CKR_FUNCTION_NOT_SUPPORTED": CkrRule(FailedPrecondition, False, "the library does not support the call"),
    "CKR_OPERATION_NOT_INITIALIZED": CkrRule(Internal, False, "operation not initialized"),
    "CKR_OBJECT_HANDLE_INVALID": CkrRule(NotFound, False, "the object no longer exists"),
    "CKR_CRYPTOKI_ALREADY_INITIALIZED": CkrRule(Internal, False, "the library is already initialized"),
    "CKR_USER_ALREADY_LOGGED_IN": CkrRule(Internal, False, "already logged in"),
    "CKR_SESSION_EXISTS": CkrRule(FailedPrecondition, False, "a session exists"),
    "CKR_SESSION_READ_WRITE_SO_EXISTS": CkrRule(FailedPrecondition, False, "a security officer session exists"),
    "CKR_SESSION_READ_ONLY_EXISTS": CkrRule(FailedPrecondition, False, "a read-only session exists"),
}

# codes PyKCS11 uses for its own failures (library load), not CKR values
_LOAD_FAILED = -1


def ckr_name(code: int) -> str:
    name = PyKCS11.CKR.get(code)
    return name if isinstance(name, str) else f"0x{code:08X}"


def rule_for(code: int) -> CkrRule:
    if code == _LOAD_FAILED:
        return CkrRule(FailedPrecondition, False, "the PKCS#11 library could not be loaded")
    return _RULES.get(ckr_name(code), CkrRule(Internal, False, "unexpected answer from the token"))


def ckr_code(exc: BaseException) -> int | None:
    """The CKR value carried by a PyKCS11Error, None for anything else."""
    if isinstance(exc, PyKCS11.PyKCS11Error):
        return int(exc.value)
    return None


def needs_reconnect(exc: BaseException) -> bool:
    code = ckr_code(exc)
    return code is not None and rule_for(code).reconnect


def translate(exc: PyKCS11.PyKCS11Error, action: str, *, path: str | None = None) -> HsmdError:
    """The domain error for a failed PKCS#11 call; raise it ``from exc``.

    ``action`` says what hsmd was doing ("read secret", "log in", ...). The message never holds
    a value or PIN: only the action, the hint and the CKR name."""
    code = int(exc.value)
    rule = rule_for(code)
    where = f" {path!r}" if path else ""
    name = ckr_name(code) if code != _LOAD_FAILED else "load failed"
    return rule.error(f"cannot {action}{where}: {rule.hint} ({name})", path=path)
