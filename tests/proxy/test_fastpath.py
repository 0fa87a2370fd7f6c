"""The WSGI fast path for GET of one secret (hsmd.proxy.fastpath) against the Flask route it stands
in for: the same requests through an app with and without it give the same status, headers, body
bytes and audit line. Agents and identity are the in-test fakes of test_http (HTTP-layer only);
test_e2e and the hsmctl tests cover the fast path against real agents and TokenReview."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from hsmd.model import SecretMetadata
from hsmd.proxy import create_app
from hsmd.proxy.fastpath import FastReads
from tests.proxy.test_http import SECRET_VALUE, Env, auth, b64

COMPARED_HEADERS = ("Content-Type", "Content-Length", "ETag", "X-Request-Id", "Cache-Control", "Retry-After",
                    "WWW-Authenticate", "Allow", "Location")


class Twin:
    """One set of agents, policy and audit log behind two apps: with the fast path and without."""

    def __init__(self, tmp_path: Path) -> None:
        self.env = Env(tmp_path)
        self.fast: Flask = self.env.app
        self.flask: Flask = create_app(dataclasses.replace(self.env.config, fast_reads=False))
        assert isinstance(self.fast.wsgi_app, FastReads)
        assert not isinstance(self.flask.wsgi_app, FastReads)

    def both(self, url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[Any, Any]:
        answers = []
        for app in (self.fast, self.flask):
            response = app.test_client().open(url, method=method, headers=headers or {})
            answers.append((response, self.env.audit()[-1] if self.env.audit_path.exists() else None))
        (fast, fast_audit), (slow, slow_audit) = answers
        assert fast.status == slow.status, (url, fast.get_data(), slow.get_data())
        assert fast.get_data() == slow.get_data(), url
        for name in COMPARED_HEADERS:
            assert fast.headers.get(name) == slow.headers.get(name), (url, name)
        for line in (fast_audit, slow_audit):
            line.pop("time")
            line.pop("durationMs")
        assert fast_audit == slow_audit, url
        return fast, fast_audit


@pytest.fixture
def twin(tmp_path: Path) -> Iterator[Twin]:
    t = Twin(tmp_path)
    yield t
    t.env.agent_set.close()


def rid(value: str = "req-1", token: str | None = "tok-a") -> dict[str, str]:  # noqa: S107
    headers = {"X-Request-Id": value}
    if token:
        headers.update(auth(token))
    return headers


def test_fast_path_answers_reads_without_the_flask_view(twin: Twin) -> None:
    assert twin.env.create("team-a/db/password", {"password": SECRET_VALUE, "blob": bytes(range(256))}).status_code \
        == 201

    def view_must_not_run(path: str) -> Any:
        raise AssertionError("the Flask view answered a plain GET")

    twin.fast.view_functions["secrets.get_secret"] = view_must_not_run
    r = twin.fast.test_client().get("/api/v1/hsm/secrets/team-a/db/password", headers=auth())
    assert r.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", r.headers["X-Request-Id"])
    assert r.headers["Cache-Control"] == "no-store" and r.headers["ETag"] == f'"{json.loads(r.get_data())["checksum"]}"'
    assert json.loads(r.get_data())["data"]["password"] == b64(SECRET_VALUE)
    line = twin.env.audit()[-1]
    assert (line["endpoint"], line["verb"], line["path"], line["decision"], line["status"]) == (
        "/api/v1/hsm/secrets/<path:path>", "get", "team-a/db/password", "allow", 200)
    assert line["caller"] == {"namespace": "team-a", "serviceAccount": "app", "uid": "uid-a"}
    assert SECRET_VALUE.decode(errors="replace") not in twin.env.audit_path.read_text()


def test_fast_path_and_flask_route_give_the_same_answers(twin: Twin, monkeypatch: pytest.MonkeyPatch) -> None:
    assert twin.env.create("team-a/app/creds", {"user": b"u", "password": SECRET_VALUE}).status_code == 201
    assert twin.env.client.put("/api/v1/hsm/secrets/team-a/app/meta", headers=auth(), json={
        "data": {"k": b64(b"v")}, "metadata": {"description": "d\u00e9j\u00e0 vu", "labels": {"a": "b"},
                                              "dataType": "json"}}).status_code == 200

    r, _ = twin.both("/api/v1/hsm/secrets/team-a/app/creds", headers=rid())
    assert r.status_code == 200 and r.headers["ETag"].startswith('"sha256:')
    twin.both("/api/v1/hsm/secrets/team-a/app/meta", headers=rid())  # non-ASCII metadata
    twin.both("/api/v1/hsm/secrets/team-a/missing", headers=rid())  # 404
    r, line = twin.both("/api/v1/hsm/secrets/team-a/app/creds", headers=rid(token="tok-b"))  # 403
    assert r.status_code == 403 and line["decision"] == "deny"
    r, line = twin.both("/api/v1/hsm/secrets/team-a/app/creds", headers=rid(token=None))  # no token
    assert r.status_code == 401 and line["decision"] == "unauthenticated" and r.headers["WWW-Authenticate"]
    twin.both("/api/v1/hsm/secrets/team-a/app/creds", headers={**rid(token=None), "Authorization": "Basic x"})
    twin.both("/api/v1/hsm/secrets/team-a/app/creds", headers=rid(token="unknown"))
    for bad in ("team-a/..", "team-a/./x", "team-a/" + "a" * 300, "-", "team-a/x%20y", "team-a//x", "team-a/x/",
                "team-a/x%0Ay", "team-a/caf%C3%A9"):
        twin.both(f"/api/v1/hsm/secrets/{bad}", headers=rid())
    twin.both("/api/v1/hsm/secrets/team-a/app/creds?x=1", headers=rid())  # queries go to Flask
    twin.both("/api/v1/hsm/secrets/team-a/app/creds", method="HEAD", headers=rid())

    # disagreement between agents: the report travels the same way
    data, meta = twin.env.agents[2].store["team-a/app/creds"]
    twin.env.agents[2].store["team-a/app/creds"] = ({**data, "user": b"other"}, meta)
    r, _ = twin.both("/api/v1/hsm/secrets/team-a/app/creds", headers=rid())
    assert json.loads(r.get_data())["disagreement"]["resolvedBy"] == "majority"

    # agents down: 503 with Retry-After
    for agent in twin.env.agents:
        agent.down = True
    r, line = twin.both("/api/v1/hsm/secrets/team-a/app/creds", headers=rid())
    assert r.status_code == 503 and r.headers["Retry-After"] and line["error"] == "unavailable"
    for agent in twin.env.agents:
        agent.down = False

    # a bug below the view: the same logged 500, nothing of the request in the answer
    def broken(self: Any, path: str) -> Any:
        raise RuntimeError(f"boom {path}")

    monkeypatch.setattr(type(twin.env.agents[0]), "read", broken)
    r, line = twin.both("/api/v1/hsm/secrets/team-a/app/creds", headers=rid())
    assert r.status_code == 500 and json.loads(r.get_data())["error"]["code"] == "internal"
    assert "boom" not in r.get_data(as_text=True) and line["error"] == "internal"


def test_fast_path_unexpected_error_is_a_json_500(twin: Twin, monkeypatch: pytest.MonkeyPatch) -> None:
    import hsmd.proxy.views.secrets as secrets_view

    def broken(*args: object) -> Any:
        raise RuntimeError("boom team-a/x")

    monkeypatch.setattr(secrets_view.ReadOutcome, "require", broken)
    twin.env.agents[0].write("team-a/x", {"k": b"v"}, SecretMetadata())
    r, line = twin.both("/api/v1/hsm/secrets/team-a/x", headers=rid())
    assert r.status_code == 500 and json.loads(r.get_data())["error"]["code"] == "internal"
    assert "boom" not in r.get_data(as_text=True) and line["error"] == "internal"


def test_waitress_queue_warnings_are_rate_limited() -> None:
    import logging

    from hsmd.proxy.server import RateLimit

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("hsmd-test-rate-limit")
    logger.propagate = False
    limit = RateLimit(60.0)
    logger.addFilter(limit)
    logger.addHandler(Keep())
    for depth in range(5):
        logger.warning("Task queue depth is %d", depth)
    assert records == ["Task queue depth is 0"]
    limit._next = 0.0  # the minute is over
    logger.warning("Task queue depth is %d", 9)
    assert records[-1] == "Task queue depth is 9 (and 4 more such messages)"
