"""hsm.v1 messages <-> hsmd.model values, and the channel options, shared by servicer and client."""

from __future__ import annotations

from typing import Any

from hsmd.model import SecretMetadata, TokenInfo
from hsmd.proto.hsm.v1 import hsm_pb2

# Batch answers can be large (a secret may be up to 1 MiB); both ends allow this much.
MAX_MESSAGE_BYTES = 128 * 1024 * 1024
GRPC_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def metadata_to_proto(meta: SecretMetadata | None) -> Any:
    meta = meta or SecretMetadata()
    return hsm_pb2.SecretMetadata(
        description=meta.description,
        labels=dict(meta.labels),
        format=meta.format,
        data_type=meta.data_type,
        created_at=meta.created_at,
        source=meta.source,
    )


def metadata_from_proto(message: Any) -> SecretMetadata:
    return SecretMetadata(
        description=message.description,
        labels=dict(message.labels),
        format=message.format,
        data_type=message.data_type,
        created_at=message.created_at,
        source=message.source,
    )


def hsm_info_to_proto(info: TokenInfo) -> Any:
    return hsm_pb2.HSMInfo(
        label=info.label,
        manufacturer=info.manufacturer,
        model=info.model,
        serial_number=info.serial,
        firmware_version=info.firmware,
    )


def data_from_proto(secret_data: Any) -> dict[str, bytes]:
    return {key: bytes(value) for key, value in secret_data.data.items()}
