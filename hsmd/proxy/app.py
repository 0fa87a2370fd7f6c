"""The Flask application factory of the broker: ``create_app(ProxyConfig) -> Flask``.

Request flow, the same for every endpoint: a request id (``X-Request-Id``, taken from the client
when well-formed), authentication of the bearer token (all paths but the exact health paths),
the view (an adapter: validation in hsmd.proxy.codec and hsmd.model, policy through
``authorize``/``filter_allowed``, fan-out through hsmd.fanout.AgentSet), errors mapped in
hsmd.proxy.errors, and one audit line in ``after_request``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, current_app, g, request

from hsmd.errors import Forbidden, HsmdError
from hsmd.fanout import AgentOutcome, AgentSet, required_acks
from hsmd.proxy import errors as http_errors
from hsmd.proxy.audit import AuditLog
from hsmd.proxy.auth import Authenticator, Identity, bearer_token
from hsmd.proxy.policy_source import PolicySource

log = logging.getLogger("hsmd.proxy")

# The only unauthenticated paths: exact matches, so /api/v1/hsm/secrets/health is a secret path.
PUBLIC_PATHS = frozenset({"/api/v1/health", "/healthz", "/readyz"})
# Device-level operations are checked against this pseudo path (it can never be a secret path).
DEVICES_PATH = "@devices"
DEFAULT_MAX_BODY = 1024 * 1024
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass
class ProxyConfig:
    agents: AgentSet
    authenticator: Authenticator
    policy: PolicySource
    audit: AuditLog = field(default_factory=lambda: AuditLog(None))
    max_body: int = DEFAULT_MAX_BODY
    # PINs travel only over TLS, or to a broker that listens on loopback only.
    pin_transport_ok: bool = False
    health_cache_seconds: float = 1.0


@dataclass
class HealthSnapshot:
    taken: float
    agents: list[dict[str, object]]
    healthy: int
    total: int
    required: int

    @property
    def ready(self) -> bool:
        return self.total > 0 and self.healthy >= self.required


class ProxyState:
    """What the views share, stored in ``app.extensions["hsmd.proxy"]``."""

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self.agents = config.agents
        self._health: HealthSnapshot | None = None
        self._health_lock = threading.Lock()

    def health(self) -> HealthSnapshot:
        with self._health_lock:
            snap = self._health
            if snap is not None and time.monotonic() - snap.taken < self.config.health_cache_seconds:
                return snap
            rows: list[dict[str, object]] = []
            healthy = 0
            for address, result in self.agents.health():
                if isinstance(result, HsmdError):
                    rows.append({"agent": address, "healthy": False, "error": result.code})
                    continue
                status, _message = result
                ok = str(status).strip().lower() in ("healthy", "serving", "ok")
                healthy += ok
                rows.append({"agent": address, "healthy": ok, "status": str(status)})
            total = len(rows)
            snap = HealthSnapshot(time.monotonic(), rows, healthy, total, required_acks(self.agents.quorum, total))
            self._health = snap
            return snap


def state() -> ProxyState:
    st: ProxyState = current_app.extensions["hsmd.proxy"]
    return st


def identity() -> Identity:
    ident: Identity | None = g.get("identity")
    assert ident is not None, "authenticated endpoint without an identity"
    return ident


def authorize(verb: str, path: str) -> None:
    """Raise Forbidden unless the policy grants ``verb`` on ``path`` to the caller."""
    ident = identity()
    g.verb = verb
    g.target = path
    if state().config.policy.current().allows(ident.namespace, verb, path, ident.service_account):
        g.decision = "allow"
        return
    g.decision = "deny"
    raise Forbidden(f"ServiceAccount {ident.namespace}/{ident.service_account} may not {verb} {path!r}", path=path)


def filter_allowed(verb: str, paths: Iterable[str]) -> list[str]:
    """The paths the caller may ``verb``; the audit line records how many were hidden."""
    ident = identity()
    paths = list(paths)
    allowed = state().config.policy.current().filter_paths(ident.namespace, verb, paths, ident.service_account)
    g.verb = verb
    g.decision = "allow" if len(allowed) == len(paths) else "filtered"
    g.hidden = len(paths) - len(allowed)
    return allowed


def record(outcomes: Iterable[AgentOutcome]) -> None:
    """Per-agent results for the audit line (and for an error body)."""
    g.agent_outcomes = tuple(outcomes)


def _request_id() -> str:
    given = request.headers.get("X-Request-Id", "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def _before() -> None:
    g.request_id = _request_id()
    g.started = time.perf_counter()
    g.identity = None
    g.decision = None
    if request.path in PUBLIC_PATHS:
        g.decision = "public"
        return
    try:
        token = bearer_token(request.headers.get("Authorization"))
        g.identity = state().config.authenticator.authenticate(token)
    except HsmdError:
        g.decision = "unauthenticated"
        raise


def _after(response: Response) -> Response:
    response.headers["X-Request-Id"] = g.get("request_id", "")
    response.headers.setdefault("Cache-Control", "no-store")
    _audit(response.status_code)
    return response


def _audit(status: int) -> None:
    st = current_app.extensions.get("hsmd.proxy")
    if st is None or request.path in ("/healthz", "/readyz"):
        return  # probes every few seconds would drown the log; they carry no caller
    ident: Identity | None = g.get("identity")
    started = g.get("started")
    entry: dict[str, Any] = {
        "time": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "requestId": g.get("request_id"),
        "remote": request.remote_addr,
        "caller": ident.to_json() if ident else None,
        "method": request.method,
        "endpoint": request.url_rule.rule if request.url_rule else None,
        "verb": g.get("verb"),
        "path": g.get("target"),
        "decision": g.get("decision") or ("allow" if ident else None),
        "status": status,
    }
    if g.get("hidden"):
        entry["hidden"] = g.hidden
    if g.get("error_code"):
        entry["error"] = g.error_code
    outcomes = g.get("agent_outcomes")
    if outcomes:
        entry["agents"] = [{"agent": o.agent, "result": o.result} for o in outcomes]
    if g.get("items"):
        entry["items"] = g.items
    if started is not None:
        entry["durationMs"] = round((time.perf_counter() - started) * 1000, 3)
    st.config.audit.write(entry)


def create_app(config: ProxyConfig) -> Flask:
    from hsmd.proxy.views import bulk, devices, docs, health, secrets

    app = Flask("hsmd.proxy")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["hsmd.proxy"] = ProxyState(config)
    app.before_request(_before)
    app.after_request(_after)
    http_errors.register(app)
    for blueprint in (health.bp, secrets.bp, bulk.bp, devices.bp, docs.bp):
        app.register_blueprint(blueprint)
    return app
