"""hsmd.errors <-> gRPC status, both directions, in one place.

The server aborts an RPC with the status code of the table below and puts the exact hsmd error
code (and the secret path, when there is one) in trailing metadata, so our client rebuilds the very
same error class even where two codes share a status (``permission_denied`` and ``forbidden`` both
travel as PERMISSION_DENIED). A peer that sends no metadata (the Go agent, or grpc itself when the
agent is unreachable) is mapped from the status code alone.

Messages are the domain error's message, which by contract never carries values or PINs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NoReturn

import grpc  # type: ignore[import-untyped]

from hsmd import errors
from hsmd.errors import HsmdError

CODE_KEY = "hsmd-error-code"
PATH_KEY = "hsmd-error-path"

# hsmd error code -> the status code a generic gRPC peer understands.
STATUS_BY_CODE: dict[str, Any] = {
    errors.InvalidArgument.code: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound.code: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists.code: grpc.StatusCode.ALREADY_EXISTS,
    errors.Conflict.code: grpc.StatusCode.ABORTED,
    errors.FailedPrecondition.code: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PermissionDenied.code: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated.code: grpc.StatusCode.UNAUTHENTICATED,
    errors.Forbidden.code: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted.code: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.IntegrityError.code: grpc.StatusCode.DATA_LOSS,
    errors.Internal.code: grpc.StatusCode.INTERNAL,
    errors.Unavailable.code: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded.code: grpc.StatusCode.DEADLINE_EXCEEDED,
    # Busy is temporary: UNAVAILABLE is the status generic gRPC clients retry.
    errors.Busy.code: grpc.StatusCode.UNAVAILABLE,
}

# status code -> hsmd error class, for peers that send no hsmd metadata.
CLASS_BY_STATUS: dict[Any, type[HsmdError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.ABORTED: errors.Conflict,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.DATA_LOSS: errors.IntegrityError,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.DeadlineExceeded,
    grpc.StatusCode.CANCELLED: errors.Unavailable,
    grpc.StatusCode.UNIMPLEMENTED: errors.FailedPrecondition,
    grpc.StatusCode.INTERNAL: errors.Internal,
    grpc.StatusCode.UNKNOWN: errors.Internal,
}


def status_for(err: HsmdError) -> Any:
    """The gRPC status code an hsmd error travels as."""
    return STATUS_BY_CODE.get(err.code, grpc.StatusCode.INTERNAL)


def trailing_metadata(err: HsmdError) -> tuple[tuple[str, str], ...]:
    """Metadata that lets our client rebuild ``err`` exactly."""
    meta: tuple[tuple[str, str], ...] = ((CODE_KEY, err.code),)
    if err.path:
        meta += ((PATH_KEY, err.path),)
    return meta


def abort(context: Any, err: HsmdError) -> NoReturn:
    """End the current RPC with ``err`` (servicer side). ``context.abort`` raises."""
    context.set_trailing_metadata(trailing_metadata(err))
    context.abort(status_for(err), err.message)
    raise AssertionError("grpc context.abort returned")  # pragma: no cover - abort always raises


def _metadata_value(metadata: Iterable[Any] | None, key: str) -> str | None:
    for k, v in metadata or ():  # grpc gives (key, value) named tuples
        if k == key:
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    return None


def error_from_rpc(exc: Any, *, address: str = "") -> HsmdError:
    """Rebuild the hsmd error a failed RPC (a ``grpc.RpcError``) stands for (client side)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else None) or ""
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    hsmd_code = _metadata_value(trailers, CODE_KEY)
    path = _metadata_value(trailers, PATH_KEY)
    if hsmd_code is not None:
        return errors.error_from_code(hsmd_code, details or hsmd_code, path=path)
    cls = CLASS_BY_STATUS.get(code, errors.Internal)
    where = f"agent {address}" if address else "agent"
    if code == grpc.StatusCode.UNAVAILABLE:
        message = f"{where} is unavailable: {details or 'no connection'}"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"{where} did not answer in time"
    elif code == grpc.StatusCode.UNIMPLEMENTED:
        message = f"{where} does not implement this call: {details or 'unimplemented'}"
    else:
        message = details or f"{where} answered {code.name}"
    return cls(message, path=path)


def is_unimplemented(exc: Any) -> bool:
    return hasattr(exc, "code") and exc.code() == grpc.StatusCode.UNIMPLEMENTED


def item_error(err: HsmdError) -> tuple[str, str]:
    """(code, message) of a per-item error in a batch response (hsm.v1.ItemError)."""
    return err.code, err.message
