"""TLS 1.3 only for the agent's mTLS listener, with the knobs grpcio 1.85 has.

grpcio's Python API cannot set a server's minimum TLS version (``ssl_server_credentials`` has no
such argument; grpc/grpc#43080 adds one). Its BoringSSL negotiates TLS 1.2 or 1.3. TLS 1.3 cipher
suites do not depend on the certificate's key type, but every TLS 1.2 ECDHE suite does (ECDSA or
RSA). So we restrict the TLS 1.2 suites, through gRPC's ``GRPC_SSL_CIPHER_SUITES``, to suites for
the key type the server certificate does *not* have: a TLS 1.2 handshake then finds no shared
cipher and fails, a TLS 1.3 handshake is unaffected. tests/agent/test_tls.py checks both with a
plain ``ssl`` client. The variable is read when grpc initialises, so this runs before grpc loads.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hsmd.errors import InvalidArgument

_ECDSA_ONLY = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384"
_RSA_ONLY = "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-GCM-SHA384"


def restrict_to_tls13(key_file: str) -> str:
    """Set GRPC_SSL_CIPHER_SUITES so that TLS 1.2 cannot be negotiated with ``key_file``'s key."""
    try:
        with open(key_file, "rb") as handle:
            key = serialization.load_pem_private_key(handle.read(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidArgument(f"cannot load the TLS private key {key_file}: {exc}") from None
    suites = _ECDSA_ONLY if isinstance(key, rsa.RSAPrivateKey) else _RSA_ONLY
    os.environ["GRPC_SSL_CIPHER_SUITES"] = suites
    return suites
