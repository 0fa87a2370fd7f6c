"""The Flask application factory of the broker: ``create_app(ProxyConfig) -> Flask``.

Request flow, the same for every endpoint: a request record with its id (``X-Request-Id``, taken
from the client when well-formed), authentication of the bearer token (all paths but the exact
health paths), the view (an adapter: validation in hsmd.proxy.codec and hsmd.model, policy through
``authorize``/``filter_allowed``, fan-out through hsmd.fanout.AgentSet), errors mapped in
hsmd.proxy.errors, and one audit line in ``after_request``.

The steps live on ``ProxyState`` (``new_record``, ``authenticate``, ``authorize``, ``audit``) and
take the request record explicitly, so the one other adapter, hsmd.proxy.fastpath (plain GETs of
one secret, the hot path, without Flask's request machinery), runs exactly the same code.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, current_app, g, request

from hsmd.errors import Forbidden, HsmdError
from hsmd.fanout import AgentOutcome, AgentSet, required_acks
from hsmd.proxy import errors as http_errors
from hsmd.proxy.audit import AuditLog, RequestRecord
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
    # Serve plain GETs of one secret through hsmd.proxy.fastpath (same code, without Flask's
    # request machinery). Off only to compare both adapters in tests.
    fast_reads: bool = True


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

    # -- the steps of every request (Flask hooks and hsmd.proxy.fastpath both call these) --------

    def new_record(self, environ: Mapping[str, Any], method: str) -> RequestRecord:
        given = environ.get("HTTP_X_REQUEST_ID", "")
        request_id = given if _REQUEST_ID.fullmatch(given) else os.urandom(16).hex()
        return RequestRecord(request_id, time.perf_counter(), method, environ.get("REMOTE_ADDR") or None)

    def authenticate(self, rec: RequestRecord, path: str, authorization: str | None) -> None:
        """Note the caller's identity in ``rec``; Unauthenticated unless ``path`` is a health path."""
        if path in PUBLIC_PATHS:
            rec.decision = "public"
            return
        try:
            rec.identity = self.config.authenticator.authenticate(bearer_token(authorization))
        except HsmdError:
            rec.decision = "unauthenticated"
            raise

    def authorize(self, rec: RequestRecord, verb: str, path: str) -> None:
        """Raise Forbidden unless the policy grants ``verb`` on ``path`` to the caller."""
        ident = rec.identity
        assert ident is not None, "authenticated endpoint without an identity"
        rec.verb = verb
        rec.target = path
        if self.config.policy.current().allows(ident.namespace, verb, path, ident.service_account):
            rec.decision = "allow"
            return
        rec.decision = "deny"
        raise Forbidden(
            f"ServiceAccount {ident.namespace}/{ident.service_account} may not {verb} {path!r}", path=path
        )

    def audit(self, rec: RequestRecord, path: str, endpoint: str | None, status: int) -> None:
        if not self.config.audit.enabled or path == "/healthz" or path == "/readyz":
            return  # probes every few seconds would drown the log; they carry no caller
        self.config.audit.write(rec.audit_entry(endpoint, status))


def state() -> ProxyState:
    st: ProxyState = current_app.extensions["hsmd.proxy"]
    return st


def current_record() -> RequestRecord:
    """This request's record (created first thing in ``_before``)."""
    rec: RequestRecord = g.hsmd_record
    return rec


def identity() -> Identity:
    ident = current_record().identity
    assert ident is not None, "authenticated endpoint without an identity"
    return ident


def authorize(verb: str, path: str) -> None:
    """Raise Forbidden unless the policy grants ``verb`` on ``path`` to the caller."""
    state().authorize(current_record(), verb, path)


def filter_allowed(verb: str, paths: Iterable[str]) -> list[str]:
    """The paths the caller may ``verb``; the audit line records how many were hidden."""
    rec = current_record()
    ident = identity()
    paths = list(paths)
    allowed = state().config.policy.current().filter_paths(ident.namespace, verb, paths, ident.service_account)
    rec.verb = verb
    rec.decision = "allow" if len(allowed) == len(paths) else "filtered"
    rec.hidden = len(paths) - len(allowed)
    return allowed


def record(outcomes: Iterable[AgentOutcome]) -> None:
    """Per-agent results for the audit line (and for an error body)."""
    current_record().agent_outcomes = tuple(outcomes)


def _before() -> None:
    environ = request.environ
    st = state()
    rec = g.hsmd_record = st.new_record(environ, request.method)
    st.authenticate(rec, request.path, environ.get("HTTP_AUTHORIZATION"))


def _after(response: Response) -> Response:
    rec: RequestRecord | None = g.get("hsmd_record")
    headers = response.headers
    headers["X-Request-Id"] = rec.request_id if rec is not None else ""
    if "Cache-Control" not in headers:
        headers["Cache-Control"] = "no-store"
    st: ProxyState | None = current_app.extensions.get("hsmd.proxy")
    if rec is not None and st is not None:
        rule = request.url_rule
        st.audit(rec, request.path, rule.rule if rule is not None else None, response.status_code)
    return response


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
    if config.fast_reads:
        from hsmd.proxy.fastpath import FastReads

        app.wsgi_app = FastReads(app.wsgi_app, app.extensions["hsmd.proxy"])  # type: ignore[method-assign]
    return app
