"""GET /api/v1/openapi.json: the OpenAPI 3 document (hsmd.proxy.openapi)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from hsmd.proxy.openapi import document

bp = Blueprint("docs", __name__)


@bp.get("/api/v1/openapi.json")
def openapi() -> Response:
    return jsonify(document())
