"""The broker end to end: a real ``hsmd proxy`` subprocess (waitress) in front of three real
SoftHSM agents, identities from the sandbox's TokenRequest validated by its TokenReview, the
policy from the ``hsm-access-policy`` ConfigMap (hot reload), the audit log on disk."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from hsmd.agent.client import AgentClient
from hsmd.errors import NotFound, Unauthenticated
from hsmd.proxy.auth import TokenReviewAuthenticator
from tests.fixtures.agent import RunningAgent
from tests.proxy.helpers import RunningProxy, mint, set_policy, start_proxy, wait_until

POLICY = """
rules:
  - namespaces: [team-a]
    serviceAccounts: [app]
    paths: ["team-a/**"]
    verbs: [get, list, create, update, delete, import, export]
  - namespaces: [ops]
    paths: ["**"]
    verbs: ["*"]
"""
SECRET = b"e2e-\x00\xfe-value-never-logged"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class Broker:
    def __init__(self, proxy: RunningProxy, api: Any, agents: list[RunningAgent]) -> None:
        self.proxy = proxy
        self.api = api
        self.agents = agents
        self.tokens = {
            "a": mint(api, "team-a", "app"),
            "b": mint(api, "team-b", "app"),
            "ops": mint(api, "ops", "admin"),
            "a-other-audience": mint(api, "team-a", "app", audience="vault"),
        }
        self.session = requests.Session()

    def call(self, method: str, path: str, who: str | None = "a", **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if who:
            headers["Authorization"] = f"Bearer {self.tokens.get(who, who)}"
        return self.session.request(method, self.proxy.url + path, headers=headers, timeout=30, **kwargs)

    def on_devices(self, path: str) -> list[dict[str, bytes] | None]:
        out: list[dict[str, bytes] | None] = []
        for agent in self.agents:
            with AgentClient(agent.address, timeout=5) as client:
                try:
                    out.append(dict(client.read(path).data))
                except NotFound:
                    out.append(None)
        return out


@pytest.fixture(scope="module")
def broker(three_agents: list[RunningAgent], broker_sandbox: Any, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Broker]:
    api = broker_sandbox.api_client()
    set_policy(api, POLICY)
    with start_proxy(tmp_path_factory.mktemp("proxy"), agents=[a.address for a in three_agents],
                     kubeconfig=broker_sandbox.kubeconfig,
                     extra=["--policy-configmap", "hsm-system/hsm-access-policy"]) as proxy:
        yield Broker(proxy, api, three_agents)


def error(r: requests.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["code"] == code and body["error"]["message"]
    assert body["error"]["requestId"] == r.headers["X-Request-Id"]
    return body


def test_crud_through_the_broker_reaches_every_device(broker: Broker) -> None:
    binary = bytes(range(256)) * 4
    r = broker.call("POST", "/api/v1/hsm/secrets/team-a/db/creds",
                    json={"data": {"password": b64(SECRET), "blob": b64(binary)}, "metadata": {"description": "db"}})
    assert r.status_code == 201, r.text
    assert r.json()["quorum"]["acknowledged"] == 3
    assert broker.on_devices("team-a/db/creds") == [{"password": SECRET, "blob": binary}] * 3

    doc = broker.call("GET", "/api/v1/hsm/secrets/team-a/db/creds").json()
    assert base64.b64decode(doc["data"]["blob"]) == binary and doc["metadata"]["description"] == "db"
    error(broker.call("POST", "/api/v1/hsm/secrets/team-a/db/creds", json={"data": {"x": b64(b"y")}}),
          409, "already_exists")
    r = broker.call("PATCH", "/api/v1/hsm/secrets/team-a/db/creds", json={"data": {"blob": None, "user": b64(b"u")}})
    assert r.status_code == 200, r.text
    assert broker.on_devices("team-a/db/creds") == [{"password": SECRET, "user": b"u"}] * 3
    r = broker.call("PUT", "/api/v1/hsm/secrets/team-a/db/creds", json={"data": {"only": b64(b"1")}},
                    headers={"If-Match": doc["checksum"]})
    error(r, 409, "conflict")  # the PATCH changed it since that checksum
    assert broker.call("GET", "/api/v1/hsm/checksum/team-a/db/creds").json()["checksum"].startswith("sha256:")
    assert broker.call("GET", "/api/v1/hsm/secrets?prefix=team-a/db").json()["paths"] == ["team-a/db/creds"]
    assert broker.call("DELETE", "/api/v1/hsm/secrets/team-a/db/creds?key=user").status_code == 200
    assert broker.call("DELETE", "/api/v1/hsm/secrets/team-a/db/creds").status_code == 200
    assert broker.on_devices("team-a/db/creds") == [None] * 3


def test_import_and_export(broker: Broker) -> None:
    items = [{"path": f"team-a/bulk/s{i}", "data": {"k": b64(f"v{i}".encode())}} for i in range(20)]
    r = broker.call("POST", "/api/v1/hsm/import", json={"secrets": [*items, {"path": "ops/x", "data": {"k": "dg=="}}]})
    assert r.status_code == 207, r.text
    summary = r.json()["summary"]
    assert summary == {"total": 21, "succeeded": 20, "failed": 1}
    export = broker.call("GET", "/api/v1/hsm/export?prefix=team-a/bulk").json()
    assert [s["path"] for s in export["secrets"]] == sorted(i["path"] for i in items)
    assert base64.b64decode(export["secrets"][0]["data"]["k"]) == b"v0"
    assert broker.on_devices("ops/x") == [None] * 3


def test_identity_is_the_service_account_token(broker: Broker) -> None:
    path = "/api/v1/hsm/secrets/team-a/ident"
    body = {"data": {"k": b64(b"v")}}
    error(broker.call("POST", path, who=None, json=body), 401, "unauthenticated")
    r = error(broker.call("POST", path, who="a-other-audience", json=body), 401, "unauthenticated")
    assert "audience" in r["error"]["message"]
    error(broker.call("POST", path, who="not-a-jwt", json=body), 401, "unauthenticated")
    header = base64.urlsafe_b64encode(b'{"alg":"ES256"}').rstrip(b"=").decode()
    claims = base64.urlsafe_b64encode(json.dumps({"exp": int(time.time()) - 60, "aud": ["hsmd"],
                                                  "sub": "system:serviceaccount:team-a:app"}).encode())
    expired = f"{header}.{claims.rstrip(b'=').decode()}.c2ln"
    error(broker.call("POST", path, who=expired, json=body), 401, "unauthenticated")
    error(broker.call("POST", path, who="b", json=body), 403, "forbidden")
    assert broker.on_devices("team-a/ident") == [None] * 3
    assert broker.call("POST", path, who="a", json=body).status_code == 201


def test_health_paths_are_public_and_nothing_else(broker: Broker) -> None:
    for path in ("/healthz", "/readyz", "/api/v1/health"):
        assert broker.call("GET", path, who=None).status_code == 200
    assert broker.call("GET", "/api/v1/health", who=None).json()["status"] == "healthy"
    error(broker.call("GET", "/api/v1/hsm/secrets/health", who=None), 401, "unauthenticated")
    error(broker.call("GET", "/api/v1/openapi.json", who=None), 401, "unauthenticated")
    assert broker.call("GET", "/api/v1/openapi.json", who="b").json()["openapi"].startswith("3.")


def raw_request(proxy: RunningProxy, method: str, target: str, token: str, body: bytes = b"",
                content_type: str = "application/json") -> tuple[int, dict[str, Any]]:
    host, port = proxy.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest(method, target, skip_accept_encoding=True)  # sent exactly as written: no normalisation
    conn.putheader("Authorization", f"Bearer {token}")
    conn.putheader("Content-Type", content_type)
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders(body)
    response = conn.getresponse()
    payload = json.loads(response.read() or b"{}")
    conn.close()
    return response.status, payload


@pytest.mark.parametrize(("target", "body", "ctype", "status", "code"), [
    ("/api/v1/hsm/secrets/team-a/../ops/x", b'{"data":{"k":"dg=="}}', "application/json", 400, "invalid_argument"),
    ("/api/v1/hsm/secrets/team-a/%2e%2e/ops/x", b'{"data":{"k":"dg=="}}', "application/json", 400,
     "invalid_argument"),
    ("/api/v1/hsm/secrets/team-a//x", b'{"data":{"k":"dg=="}}', "application/json", 400, "invalid_argument"),
    ("/api/v1/hsm/secrets/team-a/x%07", b'{"data":{"k":"dg=="}}', "application/json", 400, "invalid_argument"),
    ("/api/v1/hsm/secrets/team-a/" + "x" * 400, b'{"data":{"k":"dg=="}}', "application/json", 400,
     "invalid_argument"),
    ("/api/v1/hsm/secrets/team-a/x", b'{"data":{"bad key":"dg=="}}', "application/json", 400, "invalid_argument"),
    ("/api/v1/hsm/secrets/team-a/x", b'{"data":{"k":"%%%"}}', "application/json", 400, "invalid_argument"),
    ("/api/v1/hsm/secrets/team-a/x", b'{"data":{"k":"dg=="},"extra":1}', "application/json", 400,
     "invalid_argument"),
    ("/api/v1/hsm/secrets/team-a/x", b'{"data":', "application/json", 400, "invalid_argument"),
    ("/api/v1/hsm/secrets/team-a/x", b'{"data":{"k":"dg=="}}', "text/plain", 415, "unsupported_media_type"),
    ("/api/v1/hsm/secrets/team-a/x", b'{"data":{"k":"' + b"A" * (2 * 1024 * 1024) + b'"}}', "application/json", 413,
     "payload_too_large"),
], ids=["dotdot", "encoded-dotdot", "double-slash", "control-char", "overlong", "bad-key", "bad-base64",
        "unknown-field", "malformed-json", "content-type", "2MiB"])
def test_bad_input_writes_nothing_and_the_broker_keeps_serving(
        broker: Broker, target: str, body: bytes, ctype: str, status: int, code: str) -> None:
    got_status, payload = raw_request(broker.proxy, "POST", target, broker.tokens["ops"], body, ctype)
    assert (got_status, payload["error"]["code"]) == (status, code), payload
    assert broker.on_devices("team-a/x") == [None] * 3
    assert broker.on_devices("ops/x") == [None] * 3
    assert broker.call("GET", "/api/v1/hsm/secrets", who="ops").status_code == 200


def test_policy_configmap_changes_apply_without_restart(broker: Broker) -> None:
    broker.call("PUT", "/api/v1/hsm/secrets/team-a/shared", json={"data": {"k": b64(b"v")}}).raise_for_status()
    error(broker.call("GET", "/api/v1/hsm/secrets/team-a/shared", who="b"), 403, "forbidden")
    set_policy(broker.api, POLICY + """
  - namespaces: [team-b]
    paths: ["team-a/shared"]
    verbs: [get]
""")
    wait_until(lambda: broker.call("GET", "/api/v1/hsm/secrets/team-a/shared", who="b").status_code == 200)
    set_policy(broker.api, POLICY)
    wait_until(lambda: broker.call("GET", "/api/v1/hsm/secrets/team-a/shared", who="b").status_code == 403)
    set_policy(broker.api, "rules: [{broken")  # invalid: the last good policy stays
    time.sleep(0.5)
    assert broker.call("GET", "/api/v1/hsm/secrets/team-a/shared", who="a").status_code == 200
    info = broker.call("GET", "/api/v1/hsm/info", who="ops").json()
    assert "not valid YAML" in info["policy"]["lastError"]
    set_policy(broker.api, POLICY)


def test_info_lists_every_device(broker: Broker) -> None:
    info = broker.call("GET", "/api/v1/hsm/info", who="ops").json()
    assert [d["agent"] for d in info["devices"]] == [a.address for a in broker.agents]
    token = info["devices"][0]["token"]
    assert token["serial"] and token["model"] and set(token["pin"]) == {"countLow", "finalTry", "locked",
                                                                        "toBeChanged"}
    assert info["repair"]["pending"] == 0
    error(broker.call("GET", "/api/v1/hsm/info", who="a"), 403, "forbidden")


def test_unreachable_agents_give_503_and_a_minority_is_repaired(broker: Broker) -> None:
    stopped = broker.agents[1:]
    for agent in stopped:
        os.kill(agent.process.pid, signal.SIGSTOP)
    try:
        r = broker.call("POST", "/api/v1/hsm/secrets/team-a/down", json={"data": {"k": b64(b"v")}})
        body = error(r, 503, "unavailable")
        assert r.headers["Retry-After"]
        assert [a["ok"] for a in body["agents"]] == [True, False, False]
        assert broker.call("GET", "/readyz", who=None).status_code == 503
    finally:
        for agent in stopped:
            os.kill(agent.process.pid, signal.SIGCONT)
    os.kill(broker.agents[2].process.pid, signal.SIGSTOP)
    try:
        r = broker.call("PUT", "/api/v1/hsm/secrets/team-a/minority", json={"data": {"k": b64(b"v")}})
        assert r.status_code == 200 and r.json()["repairQueued"] == [broker.agents[2].address]
    finally:
        os.kill(broker.agents[2].process.pid, signal.SIGCONT)
    wait_until(lambda: broker.call("GET", "/api/v1/hsm/info", who="ops").json()["repair"]["pending"] == 0, 20)
    assert broker.on_devices("team-a/minority") == [{"k": b"v"}] * 3


def test_audit_log_names_callers_and_holds_no_secrets(broker: Broker) -> None:
    broker.call("PUT", "/api/v1/hsm/secrets/team-a/audit", json={"data": {"k": b64(SECRET)}},
                headers={"X-Request-Id": "audit-e2e-1"}).raise_for_status()
    broker.call("GET", "/api/v1/hsm/secrets/team-a/audit", who="b")
    lines = [json.loads(line) for line in broker.proxy.audit().splitlines()]
    put = next(line for line in lines if line["requestId"] == "audit-e2e-1")
    assert put["caller"]["namespace"] == "team-a" and put["caller"]["serviceAccount"] == "app"
    # a PUT that creates needs `create` as well as `update`; the line names the deciding verb
    assert put["caller"]["uid"] and put["method"] == "PUT" and put["verb"] == "create" and put["decision"] == "allow"
    assert len(put["agents"]) == 3
    denied = [line for line in lines if line["decision"] == "deny" and line["path"] == "team-a/audit"]
    assert denied and denied[-1]["status"] == 403 and denied[-1]["caller"]["namespace"] == "team-b"
    text = broker.proxy.audit() + broker.proxy.logs()
    for needle in [b64(SECRET), "never-logged", *broker.tokens.values()]:
        assert needle not in text


def test_token_review_cache_is_bounded_by_ttl_and_expiry(broker_sandbox: Any) -> None:
    api = broker_sandbox.api_client()
    token = mint(api, "team-a", "cache")
    now = [time.time()]
    auth = TokenReviewAuthenticator(api, "hsmd", clock=lambda: now[0])
    assert auth.authenticate(token).service_account == "cache"
    auth.authenticate(token)
    assert auth.reviews == 1  # cached
    now[0] += 61
    auth.authenticate(token)
    assert auth.reviews == 2  # the 60 s cap
    from hsmd.proxy.auth import jwt_expiry

    exp = jwt_expiry(token)
    assert exp is not None
    now[0] = exp - 5  # cached for at most the 5 s the token has left
    auth.authenticate(token)
    reviews = auth.reviews
    now[0] = exp + 1
    with pytest.raises(Unauthenticated, match="expired"):
        auth.authenticate(token)
    assert auth.reviews == reviews
    with pytest.raises(Unauthenticated):
        TokenReviewAuthenticator(api, "other-audience").authenticate(token)


def test_the_process_keeps_serving_after_all_that(broker: Broker, tmp_path: Path) -> None:
    assert broker.proxy.process.poll() is None
    assert broker.call("GET", "/healthz", who=None).status_code == 200
    assert "Traceback" not in broker.proxy.logs()
