"""GET /api/v1/openapi.json: the OpenAPI 3 document (hsmd.proxy.openapi), built once per process."""

from __future__ import annotations

import functools
from typing import Any

from flask import Blueprint, Response, jsonify

from hsmd.proxy.openapi import document

bp = Blueprint("docs", __name__)


@functools.cache
def _document() -> dict[str, Any]:
    return document()  # constant: it describes the routes, not the request


@bp.get("/api/v1/openapi.json")
def openapi() -> Response:
    return jsonify(_document())
