"""HTTP-layer unit tests of the broker: routing, validation, error mapping, policy filtering,
audit format, OpenAPI shape. Agents and identity are in-test fakes here (tests/proxy/fakes.py);
the same behaviours against real agents and the sandbox's TokenReview are in test_e2e.py."""

from __future__ import annotations

import base64
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from hsmd.fanout import AgentSet
from hsmd.policy import Policy
from hsmd.proxy import ProxyConfig, create_app
from hsmd.proxy.audit import AuditLog
from hsmd.proxy.auth import Identity
from hsmd.proxy.openapi import document
from hsmd.proxy.policy_source import StaticPolicy
from tests.proxy.fakes import FakeAgent, TableAuthenticator

POLICY = """
rules:
  - namespaces: [team-a]
    serviceAccounts: [app]
    paths: ["team-a/**"]
    verbs: [get, list, create, update, delete, import, export]
  - namespaces: [team-a]
    serviceAccounts: [reader]
    paths: ["team-a/**"]
    verbs: [get, list]
  - namespaces: [team-b]
    paths: ["team-b/**"]
    verbs: [get, list, create, update, delete]
  - namespaces: [ops]
    paths: ["**"]
    verbs: ["*"]
"""
TOKENS = {
    "tok-a": Identity("team-a", "app", "uid-a", "system:serviceaccount:team-a:app"),
    "tok-reader": Identity("team-a", "reader", "uid-r", "system:serviceaccount:team-a:reader"),
    "tok-b": Identity("team-b", "app", "uid-b", "system:serviceaccount:team-b:app"),
    "tok-ops": Identity("ops", "admin", "uid-o", "system:serviceaccount:ops:admin"),
}
SECRET_VALUE = b"s3cr3t-value-\x00\xff-do-not-log"


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def auth(token: str = "tok-a") -> dict[str, str]:  # noqa: S107
    return {"Authorization": f"Bearer {token}"}


class Env:
    def __init__(self, tmp_path: Path, *, agents: int = 3, pin_ok: bool = True) -> None:
        self.agents = [FakeAgent(f"10.0.0.{i + 1}:9090") for i in range(agents)]
        self.agent_set = AgentSet(self.agents)
        self.audit_path = tmp_path / "audit.log"
        self.config = ProxyConfig(
            agents=self.agent_set,
            authenticator=TableAuthenticator(TOKENS),
            policy=StaticPolicy(Policy.parse(POLICY)),
            audit=AuditLog(str(self.audit_path)),
            pin_transport_ok=pin_ok,
            health_cache_seconds=0,
        )
        self.app: Flask = create_app(self.config)
        self.client: FlaskClient = self.app.test_client()

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]

    def snapshot(self) -> list[dict[str, Any]]:
        return [dict(a.store) for a in self.agents]

    def create(self, path: str, data: dict[str, bytes], token: str = "tok-a") -> Any:  # noqa: S107
        return self.client.post(f"/api/v1/hsm/secrets/{path}", json={"data": {k: b64(v) for k, v in data.items()}},
                                headers=auth(token))


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.agent_set.close()


def assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body["error"]) >= {"code", "message", "requestId"}
    assert body["error"]["code"] == code
    assert response.headers["X-Request-Id"] == body["error"]["requestId"]
    return body


# --- CRUD ----------------------------------------------------------------------------------------


def test_crud_round_trip_with_nested_paths_and_binary_values(env: Env) -> None:
    binary = bytes(range(256))
    r = env.create("team-a/db/password", {"password": SECRET_VALUE, "blob": binary})
    assert r.status_code == 201, r.get_json()
    created = r.get_json()
    assert created["created"] is True and created["quorum"] == {"mode": "majority", "required": 2,
                                                                "acknowledged": 3, "agents": 3}
    assert [a["ok"] for a in created["agents"]] == [True, True, True]

    r = env.client.get("/api/v1/hsm/secrets/team-a/db/password", headers=auth())
    assert r.status_code == 200
    doc = r.get_json()
    assert base64.b64decode(doc["data"]["blob"]) == binary
    assert base64.b64decode(doc["data"]["password"]) == SECRET_VALUE
    assert doc["checksum"] == created["checksum"] and r.headers["ETag"] == f'"{doc["checksum"]}"'
    assert doc["metadata"]["createdAt"]
    assert "disagreement" not in doc

    assert_error(env.create("team-a/db/password", {"x": b"y"}), 409, "already_exists")

    r = env.client.put("/api/v1/hsm/secrets/team-a/db/password", json={"data": {"only": b64(b"one")},
                       "metadata": {"description": "rotated"}}, headers=auth())
    assert r.status_code == 200 and r.get_json()["created"] is False
    r = env.client.patch("/api/v1/hsm/secrets/team-a/db/password",
                         json={"data": {"added": b64(b"two"), "only": None}}, headers=auth())
    assert r.status_code == 200, r.get_json()
    doc = env.client.get("/api/v1/hsm/secrets/team-a/db/password", headers=auth()).get_json()
    assert {k: base64.b64decode(v) for k, v in doc["data"].items()} == {"added": b"two"}
    assert doc["metadata"]["description"] == "rotated"

    cs = env.client.get("/api/v1/hsm/checksum/team-a/db/password", headers=auth()).get_json()
    assert cs["checksum"] == doc["checksum"]

    env.client.patch("/api/v1/hsm/secrets/team-a/db/password", json={"data": {"b": b64(b"3")}}, headers=auth())
    r = env.client.delete("/api/v1/hsm/secrets/team-a/db/password?key=added", headers=auth())
    assert r.status_code == 200 and r.get_json()["key"] == "added"
    r = env.client.delete("/api/v1/hsm/secrets/team-a/db/password", headers=auth())
    assert r.status_code == 200 and r.get_json()["deleted"] is True
    assert_error(env.client.get("/api/v1/hsm/secrets/team-a/db/password", headers=auth()), 404, "not_found")
    assert_error(env.client.delete("/api/v1/hsm/secrets/team-a/db/password", headers=auth()), 404, "not_found")
    assert all(not a.store for a in env.agents)


def test_put_creates_only_with_the_create_verb_and_supports_if_match(env: Env) -> None:
    r = env.client.put("/api/v1/hsm/secrets/team-a/new", json={"data": {"k": b64(b"v")}}, headers=auth())
    assert r.status_code == 200 and r.get_json()["created"] is True
    checksum = r.get_json()["checksum"]
    stale = "sha256:" + "0" * 64
    r = env.client.put("/api/v1/hsm/secrets/team-a/new", json={"data": {"k": b64(b"w")}},
                       headers={**auth(), "If-Match": f'"{stale}"'})
    assert_error(r, 409, "conflict")
    r = env.client.put("/api/v1/hsm/secrets/team-a/new", json={"data": {"k": b64(b"w")}, "expectedChecksum": checksum},
                       headers=auth())
    assert r.status_code == 200 and r.get_json()["changed"] is True
    # reader may get but not write
    r = env.client.put("/api/v1/hsm/secrets/team-a/new", json={"data": {"k": b64(b"x")}}, headers=auth("tok-reader"))
    assert_error(r, 403, "forbidden")


def test_patch_compare_and_swap_and_concurrent_patches_lose_nothing(env: Env) -> None:
    assert env.create("team-a/counter", {"seed": b"0"}).status_code == 201
    r = env.client.patch("/api/v1/hsm/secrets/team-a/counter",
                         json={"data": {"x": b64(b"1")}, "expectedChecksum": "sha256:" + "1" * 64}, headers=auth())
    assert_error(r, 409, "conflict")

    statuses: list[int] = []

    def patch(i: int) -> None:
        client = env.app.test_client()
        resp = client.patch("/api/v1/hsm/secrets/team-a/counter", json={"data": {f"k{i}": b64(str(i).encode())}},
                            headers=auth())
        statuses.append(resp.status_code)

    threads = [threading.Thread(target=patch, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 12
    doc = env.client.get("/api/v1/hsm/secrets/team-a/counter", headers=auth()).get_json()
    assert set(doc["data"]) == {"seed"} | {f"k{i}" for i in range(12)}


def test_patch_may_not_remove_every_key(env: Env) -> None:
    env.create("team-a/one", {"k": b"v"})
    r = env.client.patch("/api/v1/hsm/secrets/team-a/one", json={"data": {"k": None}}, headers=auth())
    assert_error(r, 400, "invalid_argument")
    assert env.agents[0].store["team-a/one"][0] == {"k": b"v"}


# --- policy: default deny, filtering, tenants ---------------------------------------------------------


def test_list_and_export_are_filtered_by_policy(env: Env) -> None:
    env.create("team-a/x", {"k": b"1"})
    env.create("team-a/y/z", {"k": b"2"})
    env.create("team-b/x", {"k": b"3"}, token="tok-b")
    assert env.client.get("/api/v1/hsm/secrets", headers=auth()).get_json()["paths"] == ["team-a/x", "team-a/y/z"]
    assert env.client.get("/api/v1/hsm/secrets?prefix=team-a/y", headers=auth()).get_json()["paths"] == ["team-a/y/z"]
    assert env.client.get("/api/v1/hsm/secrets", headers=auth("tok-b")).get_json()["paths"] == ["team-b/x"]
    assert len(env.client.get("/api/v1/hsm/secrets", headers=auth("tok-ops")).get_json()["paths"]) == 3

    export = env.client.get("/api/v1/hsm/export", headers=auth()).get_json()
    assert [s["path"] for s in export["secrets"]] == ["team-a/x", "team-a/y/z"]
    # reader may list but not export; team-b has no export verb at all
    assert env.client.get("/api/v1/hsm/export", headers=auth("tok-reader")).get_json()["secrets"] == []
    assert env.client.get("/api/v1/hsm/export", headers=auth("tok-b")).get_json()["count"] == 0
    lines = env.audit()
    assert lines[-1]["decision"] == "filtered" and lines[-1]["hidden"] == 3


def test_other_tenant_is_forbidden_and_nothing_is_written(env: Env) -> None:
    env.create("team-a/x", {"k": b"1"})
    before = env.snapshot()
    assert_error(env.client.get("/api/v1/hsm/secrets/team-a/x", headers=auth("tok-b")), 403, "forbidden")
    assert_error(env.create("team-a/y", {"k": b"v"}, token="tok-b"), 403, "forbidden")
    assert_error(env.client.delete("/api/v1/hsm/secrets/team-a/x", headers=auth("tok-b")), 403, "forbidden")
    assert env.snapshot() == before
    assert env.audit()[-1]["decision"] == "deny"


def test_health_paths_are_the_only_public_ones(env: Env) -> None:
    for path in ("/healthz", "/readyz", "/api/v1/health"):
        assert env.client.get(path).status_code == 200, path
    assert env.client.get("/api/v1/health").get_json()["status"] == "healthy"
    # an ordinary secret path that happens to be called "health", and near misses
    for path in ("/api/v1/hsm/secrets/health", "/api/v1/health/", "/healthz/x", "/api/v1/openapi.json",
                 "/api/v1/hsm/info", "/nope"):
        assert_error(env.client.get(path), 401, "unauthenticated")
    r = env.client.get("/api/v1/hsm/secrets/health", headers=auth("tok-ops"))
    assert_error(r, 404, "not_found")


def test_import_reports_per_item_results(env: Env) -> None:
    body = {"secrets": [
        {"path": "team-a/i1", "data": {"k": b64(b"1")}, "metadata": {"description": "first"}},
        {"path": "team-b/i2", "data": {"k": b64(b"2")}},
        {"path": "team-a/i3", "data": {"k": b64(b"3")}},
    ]}
    env.create("team-a/i3", {"k": b"old"})
    r = env.client.post("/api/v1/hsm/import", json=body, headers=auth())
    assert r.status_code == 207
    results = {i["path"]: i for i in r.get_json()["results"]}
    assert results["team-a/i1"]["status"] == "created"
    assert results["team-b/i2"]["error"]["code"] == "forbidden"
    assert results["team-a/i3"]["error"]["code"] == "already_exists"
    r = env.client.post("/api/v1/hsm/import", json={**body, "secrets": [body["secrets"][2]], "overwrite": True},
                        headers=auth())
    assert r.status_code == 200 and r.get_json()["results"][0]["status"] == "updated"
    export = env.client.get("/api/v1/hsm/export?prefix=team-a", headers=auth()).get_json()
    # an export document imports as is
    r = env.client.post("/api/v1/hsm/import", json={"secrets": export["secrets"], "overwrite": True}, headers=auth())
    assert r.status_code == 200 and {i["status"] for i in r.get_json()["results"]} == {"unchanged"}
    assert [i["path"] for i in env.audit()[-1]["items"]] == ["team-a/i1", "team-a/i3"]


# --- bad input: each gets a clear 4xx, nothing is written, the app keeps serving -------------------


BAD_PATHS = [
    ("team-a/../team-b/x", "dot-dot"),
    ("team-a/%2e%2e/x", "encoded dot-dot"),
    ("team-a//x", "double slash"),
    ("team-a/x%00", "NUL"),
    ("team-a/x%0Ay", "newline"),
    ("team-a/x%1b", "escape"),
    ("team-a/" + "a" * 300, "overlong"),
    ("team-a/./x", "dot"),
    ("team-a/x/", "trailing slash"),
    ("team-a/sp%20ace", "space"),
]


@pytest.mark.parametrize(("path", "why"), BAD_PATHS, ids=[w for _, w in BAD_PATHS])
def test_bad_paths_are_refused(env: Env, path: str, why: str) -> None:
    before = env.snapshot()
    r = env.client.post(f"/api/v1/hsm/secrets/{path}", json={"data": {"k": b64(b"v")}}, headers=auth())
    assert r.status_code in (400, 404), why
    assert r.get_json()["error"]["code"] in ("invalid_argument", "not_found")
    assert_error(env.client.get(f"/api/v1/hsm/secrets/{path}", headers=auth("tok-ops")), r.status_code,
                 r.get_json()["error"]["code"])
    assert env.snapshot() == before
    assert env.create("team-a/still-serving", {"k": b"v"}).status_code in (201, 409)


BAD_BODIES: list[tuple[str, Any, str, int, str]] = [
    ("invalid key with space", {"data": {"bad key": b64(b"v")}}, "application/json", 400, "invalid_argument"),
    ("reserved metadata key", {"data": {"_metadata": b64(b"v")}}, "application/json", 400, "invalid_argument"),
    ("key with slash", {"data": {"a/b": b64(b"v")}}, "application/json", 400, "invalid_argument"),
    ("invalid base64", {"data": {"k": "not base64!!"}}, "application/json", 400, "invalid_argument"),
    ("base64 wrong padding", {"data": {"k": "YWJj="}}, "application/json", 400, "invalid_argument"),
    ("value not a string", {"data": {"k": 5}}, "application/json", 400, "invalid_argument"),
    ("empty data", {"data": {}}, "application/json", 400, "invalid_argument"),
    ("data missing", {"metadata": {}}, "application/json", 400, "invalid_argument"),
    ("unknown field", {"data": {"k": b64(b"v")}, "owner": "me"}, "application/json", 400, "invalid_argument"),
    ("unknown metadata field", {"data": {"k": b64(b"v")}, "metadata": {"createdAt": "x"}}, "application/json",
     400, "invalid_argument"),
    ("bad dataType", {"data": {"k": b64(b"v")}, "metadata": {"dataType": "weird"}}, "application/json",
     400, "invalid_argument"),
    ("not an object", [1, 2], "application/json", 400, "invalid_argument"),
    ("malformed JSON", '{"data": {"k": ', "application/json", 400, "invalid_argument"),
    ("wrong content type", '{"data": {"k": "dg=="}}', "text/plain", 415, "unsupported_media_type"),
    ("form content type", "data=x", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ("no content type", '{"data": {"k": "dg=="}}', None, 415, "unsupported_media_type"),
    ("2 MiB body", {"data": {"k": b64(b"x" * (2 * 1024 * 1024))}}, "application/json", 413, "payload_too_large"),
]


@pytest.mark.parametrize(("why", "body", "ctype", "status", "code"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_bodies_are_refused(env: Env, why: str, body: Any, ctype: str | None, status: int, code: str) -> None:
    before = env.snapshot()
    raw = body if isinstance(body, str) else json.dumps(body)
    headers = auth()
    if ctype:
        headers["Content-Type"] = ctype
    for method in ("POST", "PUT"):
        r = env.client.open("/api/v1/hsm/secrets/team-a/bad", method=method, data=raw, headers=headers)
        body_json = assert_error(r, status, code)
        assert "s3cr3t" not in json.dumps(body_json)
    assert env.snapshot() == before
    assert env.create("team-a/still-serving", {"k": b"v"}).status_code in (201, 409)


def test_unknown_query_parameters_and_bad_prefixes(env: Env) -> None:
    assert_error(env.client.get("/api/v1/hsm/secrets?prefx=a", headers=auth()), 400, "invalid_argument")
    assert_error(env.client.get("/api/v1/hsm/secrets?prefix=../x", headers=auth()), 400, "invalid_argument")
    assert_error(env.client.get("/api/v1/hsm/export?prefix=a//b", headers=auth()), 400, "invalid_argument")
    assert_error(env.client.delete("/api/v1/hsm/secrets/team-a/x?key=bad%20key", headers=auth()), 400,
                 "invalid_argument")


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic dXNlcjpwdw==", "Bearer unknown-token",
                                    "Bearer a b"])
def test_missing_or_bad_tokens_are_401(env: Env, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    r = env.client.post("/api/v1/hsm/secrets/team-a/x", json={"data": {"k": b64(b"v")}}, headers=headers)
    assert_error(r, 401, "unauthenticated")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert all(not a.store for a in env.agents)
    assert env.audit()[-1]["decision"] == "unauthenticated"


def test_unknown_routes_and_methods_are_json(env: Env) -> None:
    assert_error(env.client.get("/api/v1/nothing", headers=auth()), 404, "not_found")
    r = env.client.open("/api/v1/hsm/secrets", method="POST", json={}, headers=auth())
    assert_error(r, 405, "method_not_allowed")
    assert "GET" in r.headers["Allow"]


# --- fan-out failures ------------------------------------------------------------------------------


def test_minority_down_still_writes_and_queues_a_repair(env: Env) -> None:
    env.agents[2].down = True
    r = env.create("team-a/r", {"k": b"v"})
    assert r.status_code == 201
    doc = r.get_json()
    assert doc["repairQueued"] == ["10.0.0.3:9090"]
    assert doc["agents"][2]["error"]["code"] == "unavailable"
    info = env.client.get("/api/v1/hsm/info", headers=auth("tok-ops")).get_json()
    assert info["repair"]["pending"] == 1 and info["repair"]["items"][0]["path"] == "team-a/r"
    assert env.client.get("/api/v1/health").get_json()["status"] == "degraded"
    env.agents[2].down = False
    assert env.agent_set.run_repairs() == 1
    assert env.agents[2].store["team-a/r"][0] == {"k": b"v"}
    assert env.client.get("/api/v1/hsm/info", headers=auth("tok-ops")).get_json()["repair"]["pending"] == 0


def test_majority_down_is_503_never_success(env: Env) -> None:
    env.agents[1].down = env.agents[2].down = True
    r = env.create("team-a/q", {"k": b"v"})
    body = assert_error(r, 503, "unavailable")
    assert r.headers["Retry-After"]
    assert [a["ok"] for a in body["agents"]] == [True, False, False]
    assert env.agent_set.pending_repairs() == []
    assert env.client.get("/readyz").status_code == 503
    assert env.client.get("/api/v1/health").status_code == 503
    for agent in env.agents:
        agent.down = True
    assert_error(env.client.get("/api/v1/hsm/secrets/team-a/q", headers=auth()), 503, "unavailable")
    assert_error(env.client.get("/api/v1/hsm/secrets", headers=auth()), 503, "unavailable")


def test_reads_report_disagreement(env: Env) -> None:
    env.create("team-a/d", {"k": b"v1"})
    from hsmd.model import SecretMetadata

    env.agents[0].write("team-a/d", {"k": b"stray"}, SecretMetadata(created_at="2999-01-01T00:00:00Z"))
    doc = env.client.get("/api/v1/hsm/secrets/team-a/d", headers=auth()).get_json()
    assert base64.b64decode(doc["data"]["k"]) == b"v1"  # majority of three beats the newest
    assert doc["disagreement"]["resolvedBy"] == "majority"
    env.agents[2].down = True  # two answers left: the newest wins
    doc = env.client.get("/api/v1/hsm/secrets/team-a/d", headers=auth()).get_json()
    assert base64.b64decode(doc["data"]["k"]) == b"stray"
    assert doc["disagreement"]["resolvedBy"] == "newest"


# --- device level ----------------------------------------------------------------------------------


def test_info_needs_the_devices_grant(env: Env) -> None:
    assert_error(env.client.get("/api/v1/hsm/info", headers=auth()), 403, "forbidden")
    info = env.client.get("/api/v1/hsm/info", headers=auth("tok-ops")).get_json()
    assert [d["token"]["serial"] for d in info["devices"]] == [a.address for a in env.agents]
    assert info["devices"][0]["token"]["freeMemory"] == 1000
    assert set(info["devices"][0]["token"]["pin"]) == {"countLow", "finalTry", "locked", "toBeChanged"}


def test_rotate_pin(env: Env, tmp_path: Path) -> None:
    # PINs that cannot turn up by chance in a request id or a duration (a 4-digit one once did)
    old, new, wrong = "old-pin-1234", "new-pin-5678", "wrong-pin-9999"
    assert_error(env.client.post("/api/v1/hsm/pin", json={"oldPin": old, "newPin": new}, headers=auth()),
                 403, "forbidden")
    r = env.client.post("/api/v1/hsm/pin", json={"oldPin": wrong, "newPin": new}, headers=auth("tok-ops"))
    assert_error(r, 403, "permission_denied")
    r = env.client.post("/api/v1/hsm/pin", json={"oldPin": old, "newPin": new}, headers=auth("tok-ops"))
    assert r.status_code == 200 and r.get_json()["changed"] == 3
    assert all(a.pin == new for a in env.agents)
    audit = env.audit_path.read_text()
    assert new not in audit and old not in audit and wrong not in audit
    (tmp_path / "plain").mkdir()
    plain = Env(tmp_path / "plain", pin_ok=False)
    r = plain.client.post("/api/v1/hsm/pin", json={"oldPin": old, "newPin": new}, headers=auth("tok-ops"))
    assert_error(r, 409, "failed_precondition")
    assert all(a.pin == old for a in plain.agents)


# --- request ids and audit ------------------------------------------------------------------------


def test_request_ids_and_audit_lines_never_hold_values_or_tokens(env: Env) -> None:
    r = env.create("team-a/audited", {"password": SECRET_VALUE})
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-Id"])
    r = env.client.get("/api/v1/hsm/secrets/team-a/audited", headers={**auth(), "X-Request-Id": "trace-42"})
    assert r.headers["X-Request-Id"] == "trace-42"
    r = env.client.get("/api/v1/hsm/secrets/team-a/audited", headers={**auth(), "X-Request-Id": "bad id"})
    assert r.headers["X-Request-Id"] != "bad id"
    assert r.headers["Cache-Control"] == "no-store"
    lines = env.audit()
    create, read = lines[0], lines[1]
    assert create["caller"] == {"namespace": "team-a", "serviceAccount": "app", "uid": "uid-a"}
    assert (create["verb"], create["path"], create["decision"], create["status"]) == (
        "create", "team-a/audited", "allow", 201)
    assert [a["result"] for a in create["agents"]] == ["ok", "ok", "ok"]
    assert read["requestId"] == "trace-42" and read["verb"] == "get"
    text = env.audit_path.read_text()
    for needle in (SECRET_VALUE.decode("latin-1"), b64(SECRET_VALUE), "tok-a", "s3cr3t"):
        assert needle not in text


# --- OpenAPI -------------------------------------------------------------------------------------


def _flask_routes(app: Flask) -> dict[str, set[str]]:
    routes: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        template = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        routes.setdefault(template, set()).update(m.lower() for m in rule.methods or () if m not in ("HEAD", "OPTIONS"))
    return routes


def test_openapi_matches_the_routes(env: Env) -> None:
    r = env.client.get("/api/v1/openapi.json", headers=auth("tok-reader"))
    assert r.status_code == 200
    doc = r.get_json()
    documented = {path: {m for m in ops if m in HTTP_METHODS} for path, ops in doc["paths"].items()}
    assert documented == _flask_routes(env.app)


HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        assert part in node, f"unresolved $ref {ref}"
        node = node[part]
    return node


def _walk_refs(doc: dict[str, Any], node: Any) -> None:
    if isinstance(node, dict):
        if "$ref" in node:
            _resolve(doc, node["$ref"])
        for value in node.values():
            _walk_refs(doc, value)
    elif isinstance(node, list):
        for value in node:
            _walk_refs(doc, value)


def test_openapi_document_is_structurally_valid() -> None:
    doc = document()
    assert re.fullmatch(r"3\.0\.\d", doc["openapi"])
    assert doc["info"]["title"] and doc["info"]["version"]
    assert set(doc) <= {"openapi", "info", "servers", "paths", "components", "security", "tags", "externalDocs"}
    schemes = doc["components"]["securitySchemes"]
    for requirement in doc["security"]:
        assert set(requirement) <= set(schemes)
    operation_ids = []
    for template, item in doc["paths"].items():
        assert template.startswith("/")
        params_in_template = set(re.findall(r"{([^}]+)}", template))
        path_level = item.get("parameters", [])
        for method, op in item.items():
            if method == "parameters":
                continue
            assert method in HTTP_METHODS, (template, method)
            operation_ids.append(op["operationId"])
            assert op["responses"], (template, method)
            for status, response in op["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d|default", status)
                response = _resolve(doc, response["$ref"]) if "$ref" in response else response
                assert response["description"]
            params = path_level + op.get("parameters", [])
            for p in params:
                assert p["in"] in ("path", "query", "header", "cookie") and p["name"] and "schema" in p
                if p["in"] == "path":
                    assert p["required"] is True
            declared = {p["name"] for p in params if p["in"] == "path"}
            assert declared == params_in_template, (template, method)
            if "requestBody" in op:
                assert op["requestBody"]["content"]
            for requirement in op.get("security", []):
                assert set(requirement) <= set(schemes)
    assert len(operation_ids) == len(set(operation_ids))
    _walk_refs(doc, doc)
    for name, schema in doc["components"]["schemas"].items():
        assert schema.get("type") == "object", name
        for req in schema.get("required", []):
            assert req in schema["properties"], (name, req)
    # the public operations are exactly the health probes
    public = {t for t, item in doc["paths"].items() for m, op in item.items()
              if m in HTTP_METHODS and op.get("security") == []}
    assert public == {"/healthz", "/readyz", "/api/v1/health"}


def test_policy_file_changes_apply_without_restart(tmp_path: Path) -> None:
    from hsmd.policy import PolicyFile

    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(POLICY)
    env = Env(tmp_path)
    env.config.policy = PolicyFile(str(policy_path))
    env.create("team-a/x", {"k": b"1"})
    assert_error(env.client.get("/api/v1/hsm/secrets/team-a/x", headers=auth("tok-b")), 403, "forbidden")
    policy_path.write_text(POLICY + '  - {namespaces: [team-b], paths: ["team-a/x"], verbs: [get]}\n')
    assert env.client.get("/api/v1/hsm/secrets/team-a/x", headers=auth("tok-b")).status_code == 200
    policy_path.write_text("rules: [{oops")  # invalid: the last good policy stays in force
    assert env.client.get("/api/v1/hsm/secrets/team-a/x", headers=auth("tok-b")).status_code == 200
    assert "not valid YAML" in env.client.get("/api/v1/hsm/info", headers=auth("tok-ops")).get_json()["policy"][
        "lastError"]
    env.agent_set.close()
