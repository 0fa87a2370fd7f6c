"""Who is calling: Kubernetes ServiceAccount tokens validated by TokenReview.

Every request but the health probes carries ``Authorization: Bearer <token>``. The token is sent
to the API server in a TokenReview with the broker's audience; only authenticated ServiceAccount
tokens whose review confirms that audience are accepted, so a token minted for another service
is refused. Results are cached (keyed by a hash of the token, never the token) for at most
``ttl`` seconds and never past the token's own ``exp`` claim, which is read from the JWT payload
without verifying it: the signature is the API server's business, expiry only bounds the cache.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from hsmd.errors import HsmdError, Unauthenticated, Unavailable

log = logging.getLogger("hsmd.proxy.auth")

SA_PREFIX = "system:serviceaccount:"


@dataclass(frozen=True)
class Identity:
    namespace: str
    service_account: str
    uid: str
    username: str
    pod: str | None = None

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"namespace": self.namespace, "serviceAccount": self.service_account, "uid": self.uid}
        if self.pod:
            out["pod"] = self.pod
        return out


class Authenticator(Protocol):
    def authenticate(self, token: str) -> Identity: ...


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header, or Unauthenticated."""
    if not header:
        raise Unauthenticated("missing Authorization header; send 'Authorization: Bearer <ServiceAccount token>'")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("the Authorization header must be 'Bearer <ServiceAccount token>'")
    if len(token) > 16384 or len(token.split()) != 1:  # split(): whitespace exactly as str.isspace
        raise Unauthenticated("malformed bearer token")
    return token


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim (epoch seconds) of a JWT, read without verification; None if absent."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, UnicodeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def identity_from_username(username: str, uid: str, extra: dict[str, Any] | None = None) -> Identity:
    if not username.startswith(SA_PREFIX):
        raise Unauthenticated("only Kubernetes ServiceAccount tokens are accepted")
    namespace, sep, name = username[len(SA_PREFIX) :].partition(":")
    if not sep or not namespace or not name or ":" in name:
        raise Unauthenticated("the token's ServiceAccount name is malformed")
    pod = None
    if extra:
        pods = extra.get("authentication.kubernetes.io/pod-name") or []
        pod = str(pods[0]) if pods else None
    return Identity(namespace, name, uid, username, pod)


class TokenReviewAuthenticator:
    """TokenReview against ``audience`` with a bounded cache."""

    def __init__(
        self,
        api_client: Any,
        audience: str,
        *,
        ttl: float = 60.0,
        negative_ttl: float = 5.0,
        max_entries: int = 10000,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.audience = audience
        self.ttl = min(ttl, 60.0)
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self.timeout = timeout
        self._clock = clock
        self._api = k8s.AuthenticationV1Api(api_client)
        self._cache: collections.OrderedDict[bytes, tuple[float, Identity | HsmdError]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.reviews = 0  # TokenReviews sent (observability and tests)

    def authenticate(self, token: str) -> Identity:
        now = self._clock()
        key = hashlib.sha256(token.encode()).digest()
        # A cached entry never outlives the token's exp (see below), so a hit needs no JWT parsing.
        hit = self._cache.get(key)  # a dict read is atomic; the lock guards the updates below
        if hit is not None and hit[0] > now:
            result = hit[1]
            if isinstance(result, HsmdError):
                raise type(result)(result.message)
            return result
        exp = jwt_expiry(token)
        if exp is not None and exp <= now:
            raise Unauthenticated("the token has expired")
        try:
            identity: Identity | HsmdError = self._review(token)
        except Unauthenticated as exc:
            identity = exc
        # Unavailable (API server down) is not cached: the next request asks again.
        expires = now + (self.ttl if isinstance(identity, Identity) else self.negative_ttl)
        if exp is not None:
            expires = min(expires, exp)
        with self._lock:
            self._cache[key] = (expires, identity)
            self._cache.move_to_end(key)
            if len(self._cache) > self.max_entries:
                for stale in [k for k, (t, _) in self._cache.items() if t <= now]:
                    del self._cache[stale]
                while len(self._cache) > self.max_entries:
                    self._cache.popitem(last=False)
        if isinstance(identity, HsmdError):
            raise identity
        return identity

    def _review(self, token: str) -> Identity:
        body = k8s.V1TokenReview(
            api_version="authentication.k8s.io/v1",
            kind="TokenReview",
            spec=k8s.V1TokenReviewSpec(token=token, audiences=[self.audience]),
        )
        self.reviews += 1
        try:
            review = self._api.create_token_review(body, _request_timeout=self.timeout)
        except ApiException as exc:
            raise Unavailable(f"cannot validate tokens: TokenReview failed with HTTP {exc.status}") from None
        except Exception as exc:  # connection refused, timeouts, TLS errors
            raise Unavailable(
                f"cannot validate tokens: the Kubernetes API is unreachable ({type(exc).__name__})"
            ) from None
        status = review.status
        if status is None or not status.authenticated:
            reason = (status.error if status is not None else None) or "token not authenticated"
            # The API server's reason is about the token (expired, wrong audience, unknown key), never its content.
            raise Unauthenticated(f"token rejected: {_short(reason)}")
        if self.audience not in (status.audiences or []):
            raise Unauthenticated(f"token rejected: not valid for audience {self.audience!r}")
        user = status.user
        if user is None or not user.username:
            raise Unauthenticated("token rejected: no user in the TokenReview")
        return identity_from_username(user.username, user.uid or "", user.extra)


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."
