"""Unauthenticated probes: /healthz (the process serves), /readyz (enough agents answer for a
write quorum) and /api/v1/health (the same as JSON, without agent addresses)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from hsmd.proxy.app import state

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    snap = state().health()
    response = jsonify(
        {
            "status": "ready" if snap.ready else "not ready",
            "agents": {"healthy": snap.healthy, "total": snap.total},
            "required": snap.required,
        }
    )
    response.status_code = 200 if snap.ready else 503
    if not snap.ready:
        response.headers["Retry-After"] = "2"
    return response


@bp.get("/api/v1/health")
def health() -> Response:
    snap = state().health()
    if snap.total and snap.healthy == snap.total:
        status = "healthy"
    elif snap.ready:
        status = "degraded"
    else:
        status = "unavailable"
    response = jsonify(
        {
            "status": status,
            "agents": {"healthy": snap.healthy, "total": snap.total},
            "quorum": {"mode": state().agents.quorum, "required": snap.required},
            "repairPending": len(state().agents.pending_repairs()),
        }
    )
    response.status_code = 200 if snap.ready else 503
    return response
