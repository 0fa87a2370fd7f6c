"""The broker's REST API from the user's side, and where hsmctl gets its server and token.

Token sources, first match wins: ``--token-file``, ``$HSMCTL_TOKEN_FILE``, ``$HSMCTL_TOKEN``, or a
ServiceAccount token minted through TokenRequest (``--service-account NS/NAME`` with the
kubeconfig) for the broker's audience. Tokens never come from argv. Every failure is an
``HsmctlError`` carrying the exit code documented in docs/hsmctl.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

DEFAULT_SERVER = "http://127.0.0.1:8090"
DEFAULT_AUDIENCE = "hsmd"

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_NOT_FOUND = 4
EXIT_CONFLICT = 5
EXIT_UNAVAILABLE = 6
EXIT_PARTIAL = 7

_EXIT_BY_STATUS = {
    400: EXIT_USAGE,
    401: EXIT_AUTH,
    403: EXIT_AUTH,
    404: EXIT_NOT_FOUND,
    405: EXIT_USAGE,
    409: EXIT_CONFLICT,
    412: EXIT_CONFLICT,
    413: EXIT_USAGE,
    415: EXIT_USAGE,
    503: EXIT_UNAVAILABLE,
    504: EXIT_UNAVAILABLE,
}


class HsmctlError(Exception):
    def __init__(
        self,
        message: str,
        exit_code: int = EXIT_ERROR,
        *,
        code: str | None = None,
        request_id: str | None = None,
        body: Any = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.code = code
        self.request_id = request_id
        self.body = body

    def __str__(self) -> str:
        extra = ", ".join(
            x
            for x in (f"code {self.code}" if self.code else "", f"request {self.request_id}" if self.request_id else "")
            if x
        )
        return f"{self.message} ({extra})" if extra else self.message


@dataclass(frozen=True)
class Response:
    status: int
    body: Any


def token_from_sources(
    *,
    token_file: str | None = None,
    service_account: str | None = None,
    kubeconfig: str | None = None,
    audience: str = DEFAULT_AUDIENCE,
    env: Mapping[str, str] | None = None,
) -> str:
    env = os.environ if env is None else env
    path = token_file or env.get("HSMCTL_TOKEN_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise HsmctlError(f"cannot read the token file {path}: {exc.strerror}", EXIT_USAGE) from None
        if not token:
            raise HsmctlError(f"the token file {path} is empty", EXIT_USAGE)
        return token
    if env.get("HSMCTL_TOKEN"):
        return env["HSMCTL_TOKEN"].strip()
    service_account = service_account or env.get("HSMCTL_SERVICE_ACCOUNT")
    if service_account:
        return mint_token(service_account, audience, kubeconfig)
    raise HsmctlError(
        "no token: give --token-file, set HSMCTL_TOKEN_FILE or HSMCTL_TOKEN, or mint one with "
        "--service-account NAMESPACE/NAME (uses your kubeconfig)",
        EXIT_AUTH,
    )


def mint_token(service_account: str, audience: str, kubeconfig: str | None, seconds: int = 600) -> str:
    """A short-lived token of ServiceAccount NS/NAME for ``audience`` through TokenRequest."""
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    from hsmd import kube
    from hsmd.errors import HsmdError

    namespace, sep, name = service_account.partition("/")
    if not sep or not namespace or not name:
        raise HsmctlError(f"--service-account must be NAMESPACE/NAME, got {service_account!r}", EXIT_USAGE)
    # read $KUBECONFIG now: the kubernetes library reads it once, at import time
    kubeconfig = kubeconfig or (os.environ.get("KUBECONFIG") or "").split(os.pathsep)[0] or None
    try:
        api = kube.api_client(kubeconfig)
    except HsmdError as exc:
        raise HsmctlError(f"cannot mint a token: {exc.message}", EXIT_USAGE) from None
    body = k8s.AuthenticationV1TokenRequest(
        spec=k8s.V1TokenRequestSpec(audiences=[audience], expiration_seconds=seconds)
    )
    try:
        answer = k8s.CoreV1Api(api).create_namespaced_service_account_token(name, namespace, body, _request_timeout=15)
    except ApiException as exc:
        err = kube.api_error(exc, f"TokenRequest for ServiceAccount {service_account}")
        exit_code = {"not_found": EXIT_NOT_FOUND, "unauthenticated": EXIT_AUTH, "forbidden": EXIT_AUTH}.get(
            err.code, EXIT_UNAVAILABLE if err.temporary else EXIT_ERROR
        )
        raise HsmctlError(err.message, exit_code, code=err.code) from None
    except Exception as exc:
        raise HsmctlError(
            f"cannot reach the Kubernetes API to mint a token ({type(exc).__name__})", EXIT_UNAVAILABLE
        ) from None
    finally:
        api.close()  # type: ignore[no-untyped-call]
    token = answer.status.token if answer.status is not None else None
    if not token:
        raise HsmctlError("TokenRequest returned no token", EXIT_ERROR)
    return str(token)


class BrokerClient:
    """One keep-alive session to the broker."""

    def __init__(self, server: str, token: str | None, *, cacert: str | None = None, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        if not self.server.startswith(("http://", "https://")):
            raise HsmctlError(f"--server must start with http:// or https://, got {server!r}", EXIT_USAGE)
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "hsmctl"
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.verify: bool | str = cacert or True

    def close(self) -> None:
        self.session.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201),
    ) -> Response:
        url = self.server + path
        try:
            r = self.session.request(
                method, url, json=json, params=params, headers=headers, timeout=self.timeout, verify=self.verify
            )
        except requests.exceptions.SSLError as exc:
            raise HsmctlError(
                f"TLS to {self.server} failed: {exc.__class__.__name__} (check --cacert)", EXIT_UNAVAILABLE
            ) from None
        except requests.exceptions.RequestException as exc:
            raise HsmctlError(
                f"cannot reach the broker at {self.server} ({exc.__class__.__name__})", EXIT_UNAVAILABLE
            ) from None
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code in ok:
            return Response(r.status_code, body)
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message") or r.reason)
            code, request_id = error.get("code"), error.get("requestId")
        else:
            message, code, request_id = f"HTTP {r.status_code} {r.reason}", None, r.headers.get("X-Request-Id")
        exit_code = _EXIT_BY_STATUS.get(r.status_code, EXIT_ERROR)
        raise HsmctlError(message, exit_code, code=code, request_id=request_id, body=body)

    # -- endpoints --------------------------------------------------------------------------------

    @staticmethod
    def secret_path(path: str) -> str:
        """The URL path of a secret. Checked here first: HTTP clients remove '..' segments from
        URLs, so 'team-a/../x' would otherwise silently become 'x'."""
        from hsmd.errors import InvalidArgument
        from hsmd.model import validate_path

        try:
            validate_path(path)
        except InvalidArgument as exc:
            raise HsmctlError(exc.message, EXIT_USAGE, code=exc.code) from None
        return "/api/v1/hsm/secrets/" + quote(path, safe="/")

    def list_secrets(self, prefix: str = "") -> Any:
        return self.request("GET", "/api/v1/hsm/secrets", params={"prefix": prefix} if prefix else None).body

    def get(self, path: str) -> Any:
        return self.request("GET", self.secret_path(path)).body

    def create(self, path: str, data: Mapping[str, str], metadata: Mapping[str, Any] | None) -> Any:
        body: dict[str, Any] = {"data": dict(data)}
        if metadata:
            body["metadata"] = dict(metadata)
        return self.request("POST", self.secret_path(path), json=body).body

    def replace(
        self,
        path: str,
        data: Mapping[str, str],
        metadata: Mapping[str, Any] | None,
        expected_checksum: str | None = None,
    ) -> Any:
        body: dict[str, Any] = {"data": dict(data)}
        if metadata:
            body["metadata"] = dict(metadata)
        if expected_checksum:
            body["expectedChecksum"] = expected_checksum
        return self.request("PUT", self.secret_path(path), json=body).body

    def delete(self, path: str, key: str | None = None) -> Any:
        return self.request("DELETE", self.secret_path(path), params={"key": key} if key else None).body

    def import_(self, secrets: list[Any], overwrite: bool) -> Response:
        return self.request(
            "POST", "/api/v1/hsm/import", json={"secrets": secrets, "overwrite": overwrite}, ok=(200, 207)
        )

    def export(self, prefix: str = "") -> Response:
        return self.request("GET", "/api/v1/hsm/export", params={"prefix": prefix} if prefix else None, ok=(200, 207))

    def info(self) -> Any:
        return self.request("GET", "/api/v1/hsm/info").body

    def health(self) -> Response:
        return self.request("GET", "/api/v1/health", ok=(200, 503))

    def rotate_pin(self, old_pin: str, new_pin: str, agents: list[str] | None) -> Response:
        body: dict[str, Any] = {"oldPin": old_pin, "newPin": new_pin}
        if agents:
            body["agents"] = agents
        return self.request("POST", "/api/v1/hsm/pin", json=body, ok=(200, 207))
