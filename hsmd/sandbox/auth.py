"""Authentication as kube-apiserver does it: bearer tokens from a static token file, ServiceAccount
tokens (JWTs minted by TokenRequest, signed with the sandbox's own ES256 key), and the sandbox's
admin token (written to the kubeconfig). TokenReview and request authentication share one
``authenticate``; audience handling follows the real server: ServiceAccount tokens are
audience-bound, static tokens are audience-agnostic and only valid for the API's own audiences.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from hsmd.errors import InvalidArgument

ISSUER = "https://kubernetes.default.svc.cluster.local"
API_AUDIENCES = (ISSUER,)
ADMIN_USER = "sandbox-admin"


@dataclass(frozen=True)
class UserInfo:
    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"username": self.username}
        if self.uid:
            out["uid"] = self.uid
        if self.groups:
            out["groups"] = list(self.groups)
        if self.extra:
            out["extra"] = self.extra
        return out


ANONYMOUS = UserInfo("system:anonymous", groups=("system:unauthenticated",))


class AuthFailure(Exception):
    """The token is not valid (the message is what TokenReview reports in status.error)."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def load_token_file(path: str) -> dict[str, UserInfo]:
    """kube-apiserver's --token-auth-file format: token,user,uid[,"group1,group2"] per line."""
    tokens: dict[str, UserInfo] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidArgument(f"cannot read the token file {path}: {exc.strerror}") from None
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) < 3:
            raise InvalidArgument(f"token file {path} line {lineno}: need at least 3 columns (token,user,uid)")
        token, user, uid = (c.strip() for c in row[:3])
        groups = tuple(g.strip() for g in row[3].split(",") if g.strip()) if len(row) > 3 else ()
        tokens[token] = UserInfo(user, uid, (*groups, "system:authenticated"))
    return tokens


class Authenticator:
    """Mints and checks tokens. ``lookup(kind, namespace, name)`` returns a live object's dict or None."""

    def __init__(self, *, key_pem: bytes | None = None, admin_token: str | None = None,
                 static_tokens: dict[str, UserInfo] | None = None,
                 lookup: Callable[[str, str, str], dict[str, Any] | None] | None = None) -> None:
        if key_pem:
            loaded = serialization.load_pem_private_key(key_pem, password=None)
            assert isinstance(loaded, ec.EllipticCurvePrivateKey)
            self._key = loaded
        else:
            self._key = ec.generate_private_key(ec.SECP256R1())
        pub = self._key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        self.kid = _b64url(hashlib.sha256(pub).digest())
        self.admin_token = admin_token or secrets.token_urlsafe(32)
        self.static: dict[str, UserInfo] = dict(static_tokens or {})
        self.static[self.admin_token] = UserInfo(ADMIN_USER, "sandbox-admin",
                                                 ("system:masters", "system:authenticated"))
        self.lookup = lookup or (lambda kind, ns, name: None)
        self._cache: dict[str, tuple[float, UserInfo, tuple[str, ...]]] = {}
        self._lock = threading.Lock()

    def key_pem(self) -> bytes:
        return self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())

    def jwks(self) -> dict[str, Any]:
        nums = self._key.public_key().public_numbers()
        return {"keys": [{"use": "sig", "kty": "EC", "kid": self.kid, "crv": "P-256", "alg": "ES256",
                          "x": _b64url(nums.x.to_bytes(32, "big")), "y": _b64url(nums.y.to_bytes(32, "big"))}]}

    # --- minting -------------------------------------------------------------------------

    def mint(self, sa: dict[str, Any], audiences: list[str], expiration_seconds: int,
             bound: dict[str, Any] | None = None) -> tuple[str, int]:
        """A ServiceAccount token (JWT, ES256) and its expiry (unix seconds)."""
        now = int(time.time())
        exp = now + expiration_seconds
        meta = sa["metadata"]
        claims_k8s: dict[str, Any] = {
            "namespace": meta["namespace"],
            "serviceaccount": {"name": meta["name"], "uid": meta["uid"]},
        }
        if bound:
            claims_k8s[bound["kind"].lower()] = {"name": bound["name"], "uid": bound["uid"]}
        payload = {
            "aud": list(audiences), "exp": exp, "iat": now, "iss": ISSUER, "jti": str(uuid.uuid4()),
            "kubernetes.io": claims_k8s, "nbf": now,
            "sub": f"system:serviceaccount:{meta['namespace']}:{meta['name']}",
        }
        header = {"alg": "ES256", "kid": self.kid}
        signing_input = (_b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                         + _b64url(json.dumps(payload, separators=(",", ":")).encode()))
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big")), exp

    # --- checking ------------------------------------------------------------------------

    def authenticate(self, token: str, audiences: tuple[str, ...] | None = None) -> tuple[UserInfo, tuple[str, ...]]:
        """(user, the audiences the token is valid for among those requested) or AuthFailure."""
        wanted = tuple(audiences) if audiences else API_AUDIENCES
        static = self.static.get(token)
        if static is not None:
            # audience-agnostic authenticators are implicitly bound to the API server's audiences
            common = tuple(a for a in wanted if a in API_AUDIENCES)
            if not common:
                raise AuthFailure(f"token audiences {list(API_AUDIENCES)} is invalid for the target audiences "
                                  f"{list(wanted)}")
            return static, common
        if token.count(".") != 2:
            raise AuthFailure("invalid bearer token")
        cache_key = token + "\x00" + ",".join(wanted)
        hit = self._cache.get(cache_key)
        now = time.time()
        if hit is not None and hit[0] > now:
            user, common = hit[1], hit[2]
            self._check_live(user)  # deletion of the ServiceAccount invalidates at once
            return user, common
        user, common, exp = self._verify_jwt(token, wanted, now)
        with self._lock:
            if len(self._cache) > 10000:
                self._cache.clear()
            self._cache[cache_key] = (min(exp, now + 10), user, common)
        return user, common

    def _verify_jwt(self, token: str, wanted: tuple[str, ...], now: float
                    ) -> tuple[UserInfo, tuple[str, ...], float]:
        head_b64, payload_b64, sig_b64 = token.split(".")
        try:
            header = json.loads(_b64url_decode(head_b64))
            payload = json.loads(_b64url_decode(payload_b64))
            sig = _b64url_decode(sig_b64)
        except ValueError:
            raise AuthFailure("invalid bearer token") from None
        if not isinstance(header, dict) or not isinstance(payload, dict) or header.get("alg") != "ES256":
            raise AuthFailure("invalid bearer token")
        if payload.get("iss") != ISSUER:
            raise AuthFailure("invalid bearer token")  # not ours: other authenticators would be tried
        if len(sig) != 64:
            raise AuthFailure("invalid bearer token, square/go-jose: error in cryptographic primitive")
        try:
            self._key.public_key().verify(
                encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")),
                f"{head_b64}.{payload_b64}".encode(), ec.ECDSA(hashes.SHA256()))
        except Exception:
            raise AuthFailure("invalid bearer token, square/go-jose: error in cryptographic primitive") from None
        exp = float(payload.get("exp", 0))
        if exp <= now:
            raise AuthFailure("invalid bearer token, service account token has expired")
        if float(payload.get("nbf", 0)) > now + 60:
            raise AuthFailure("invalid bearer token, service account token is not valid yet")
        aud = payload.get("aud") or []
        aud = [aud] if isinstance(aud, str) else list(aud)
        common = tuple(a for a in wanted if a in aud)
        if not common:
            raise AuthFailure(f"invalid bearer token, token audiences {json.dumps(aud)} is invalid for the "
                              f"target audiences {json.dumps(list(wanted))}")
        k8s = payload.get("kubernetes.io") or {}
        ns = k8s.get("namespace", "")
        sa = k8s.get("serviceaccount") or {}
        extra: dict[str, list[str]] = {"authentication.kubernetes.io/credential-id": [f"JTI={payload.get('jti')}"]}
        for kind in ("pod", "secret", "node"):
            ref = k8s.get(kind)
            if isinstance(ref, dict):
                extra[f"authentication.kubernetes.io/{kind}-name"] = [ref.get("name", "")]
                extra[f"authentication.kubernetes.io/{kind}-uid"] = [ref.get("uid", "")]
        user = UserInfo(f"system:serviceaccount:{ns}:{sa.get('name', '')}", sa.get("uid", ""),
                        ("system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"), extra)
        self._check_live(user)
        return user, common, exp

    def _check_live(self, user: UserInfo) -> None:
        """A ServiceAccount token is valid only while its account (and bound object) exists unchanged."""
        _, _, rest = user.username.partition("system:serviceaccount:")
        ns, _, name = rest.partition(":")
        live = self.lookup("serviceaccounts", ns, name)
        if live is None or live["metadata"].get("uid") != user.uid:
            raise AuthFailure(f'invalid bearer token, serviceaccounts "{name}" not found')
        if live["metadata"].get("deletionTimestamp"):
            raise AuthFailure(f"invalid bearer token, service account {ns}/{name} has been deleted")
        for kind, plural in (("pod", "pods"), ("secret", "secrets")):
            names = user.extra.get(f"authentication.kubernetes.io/{kind}-name")
            if names:
                obj = self.lookup(plural, ns, names[0])
                uid = user.extra.get(f"authentication.kubernetes.io/{kind}-uid", [""])[0]
                if obj is None or obj["metadata"].get("uid") != uid or obj["metadata"].get("deletionTimestamp"):
                    raise AuthFailure(f'invalid bearer token, {plural} "{names[0]}" not found')
