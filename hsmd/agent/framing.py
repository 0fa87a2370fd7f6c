"""The wire between the agent and its device worker: length-prefixed pickles over a socketpair.

Both ends are our own code in processes we started, so pickle is safe here and cheap (no schema
work per call). A frame is a 4-byte big-endian length followed by that many bytes of pickle.
Messages are plain tuples of builtins and hsmd.model dataclasses only, so the agent process can
unpickle them without importing the PKCS#11 layer.

Parent -> worker: ("open", {TokenConfig fields}), then ("call", id, method, args), ("close",).
Worker -> parent: ("ready", TokenInfo) or ("failed", code, message); then ("ok", id, result) or
("err", id, code, message, path). Secrets and metadata, the hot path, travel as plain tuples
(pack_secret / unpack_secret): unpickling a dataclass costs ten times more.
"""

from __future__ import annotations

import pickle
import socket
import struct
from typing import Any

from hsmd.model import Secret, SecretMetadata

_HEADER = struct.Struct("!I")
MAX_FRAME = 512 * 1024 * 1024


def encode(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


def send(sock: socket.socket, message: Any) -> None:
    sock.sendall(encode(message))


def _recv_exact(sock: socket.socket, size: int) -> bytes | bytearray | None:
    first = sock.recv(size, socket.MSG_WAITALL)  # one syscall in the usual case
    if len(first) == size or not first:
        return first if first else None
    buf = bytearray(first)
    while len(buf) < size:
        more = sock.recv(size - len(buf))
        if not more:
            return None
        buf += more
    return buf


def recv(sock: socket.socket) -> Any:
    """The next message, or None at end of stream (the other side exited or closed)."""
    header = _recv_exact(sock, _HEADER.size)
    if header is None:
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes exceeds the limit")
    body = _recv_exact(sock, size)
    if body is None:
        return None
    return pickle.loads(body)  # noqa: S301 - our own child process, see module docstring


MetadataTuple = tuple[str, dict[str, str], str, str, str, str]
SecretTuple = tuple[str, dict[str, bytes], MetadataTuple, str]


def pack_metadata(meta: SecretMetadata) -> MetadataTuple:
    return (meta.description, dict(meta.labels), meta.format, meta.data_type, meta.created_at, meta.source)


def unpack_metadata(packed: MetadataTuple) -> SecretMetadata:
    description, labels, format_, data_type, created_at, source = packed
    return SecretMetadata(description, labels, format_, data_type, created_at, source)


def pack_secret(secret: Secret) -> SecretTuple:
    data = {k: bytes(v) for k, v in secret.data.items()}
    return (secret.path, data, pack_metadata(secret.metadata), secret.checksum)


def unpack_secret(packed: SecretTuple) -> Secret:
    path, data, meta, checksum = packed
    return Secret(path, data, unpack_metadata(meta), checksum)
