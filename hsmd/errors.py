"""The one error model of hsmd.

Every failure the system can report is an ``HsmdError``. Each class says two things once:
whether retrying later can help (``temporary``) and a stable machine ``code`` that every
boundary translates in one place: gRPC status (hsmd.agent), HTTP JSON (hsmd.proxy),
``fail_json`` (the collection's module_utils), CR conditions (hsmd.sync). Messages never carry
secret values or PINs; raise with ``from`` so the cause stays in the chain for operators.
"""

from __future__ import annotations


class HsmdError(Exception):
    """Root of all hsmd errors."""

    code: str = "internal"
    temporary: bool = False

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return self.message


# --- permanent: the request itself is wrong, retrying it unchanged cannot help -------------


class InvalidArgument(HsmdError):
    """Bad input: a malformed path, key, value size, document or flag."""

    code = "invalid_argument"


class NotFound(HsmdError):
    """The secret (or key, or object) does not exist."""

    code = "not_found"


class AlreadyExists(HsmdError):
    """A create found the secret already there."""

    code = "already_exists"


class Conflict(HsmdError):
    """The state changed under the caller (compare-and-swap failed, or an object is not ours)."""

    code = "conflict"


class FailedPrecondition(HsmdError):
    """The system is not in a state that allows the operation (e.g. wrong token, production guard)."""

    code = "failed_precondition"


class PermissionDenied(HsmdError):
    """The token refused the PIN, or the PIN is locked. Never retried automatically: retries lock
    real tokens."""

    code = "permission_denied"


class Unauthenticated(HsmdError):
    """The caller has no valid identity (missing, expired or wrong-audience token)."""

    code = "unauthenticated"


class Forbidden(HsmdError):
    """The caller's identity is known but the access policy does not grant the operation."""

    code = "forbidden"


class ResourceExhausted(HsmdError):
    """The token is full, or a value exceeds the device's object size limit."""

    code = "resource_exhausted"


class Internal(HsmdError):
    """A bug or an unexpected device answer."""

    code = "internal"


class IntegrityError(HsmdError):
    """What the device stored is not what was written (read-back mismatch). The previous version
    of the secret is kept."""

    code = "data_loss"


# --- temporary: the device or a peer is unavailable, retrying with backoff can help ----------


class Unavailable(HsmdError):
    """The token, agent or API server cannot be reached right now."""

    code = "unavailable"
    temporary = True


class DeadlineExceeded(HsmdError):
    """The operation did not finish in time."""

    code = "deadline_exceeded"
    temporary = True


class Busy(HsmdError):
    """The device or a lock is busy; try again shortly."""

    code = "busy"
    temporary = True


ERRORS_BY_CODE: dict[str, type[HsmdError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        Conflict,
        FailedPrecondition,
        PermissionDenied,
        Unauthenticated,
        Forbidden,
        ResourceExhausted,
        IntegrityError,
        Unavailable,
        DeadlineExceeded,
        Busy,
        Internal,
    )
}


def error_from_code(code: str, message: str, *, path: str | None = None) -> HsmdError:
    """Rebuild a domain error from its stable code (the inverse of ``err.code``)."""
    return ERRORS_BY_CODE.get(code, Internal)(message, path=path)
