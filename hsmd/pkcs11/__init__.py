"""The token layer: secrets as PKCS#11 data objects (DESIGN.md contract 2).

The only package that imports PyKCS11 (tests/test_layers.py). Everything else uses ``Token``
(in-process) or the agent client (over gRPC).
"""

from __future__ import annotations

from hsmd.model import WriteResult
from hsmd.pkcs11.token import Token, TokenConfig

__all__ = ["Token", "TokenConfig", "WriteResult"]
