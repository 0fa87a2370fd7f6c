"""A WSGI-level fast path for the broker's hottest request: ``GET /api/v1/hsm/secrets/{path}``.

It is an adapter like the Flask view it stands in for, and runs the same code in the same order:
``ProxyState.new_record`` / ``authenticate`` (TokenReview), ``views.secrets.read_secret``
(validation, policy, fan-out read), ``errors.hsmd_error_parts`` / ``unexpected_error_parts`` and
``ProxyState.audit``. What it skips is Flask's per-request machinery (request context, URL
routing, request/response objects, hook dispatch), which cost more than the broker's own work.
The answer is byte-for-byte what the Flask route gives (tests/proxy compare the two).

It takes only the plain case: method GET, no query string, and a path of plain segments. Anything
else (other methods, a query, ``//`` which werkzeug redirects, characters werkzeug would not route)
goes to Flask unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from werkzeug.http import HTTP_STATUS_CODES

from hsmd.errors import HsmdError
from hsmd.proxy.errors import hsmd_error_parts, unexpected_error_parts
from hsmd.proxy.views.secrets import ITEM_RULE, read_secret

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from hsmd.proxy.app import ProxyState

PREFIX = ITEM_RULE.partition("<")[0]  # "/api/v1/hsm/secrets/"
# Segments of path characters joined by single slashes: the only paths served here.
_PLAIN_PATH = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")
# Flask's jsonify in production mode: compact separators, ASCII, keys in insertion order, a newline.
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode
_STATUS_LINES = {code: f"{code} {reason.upper()}" for code, reason in HTTP_STATUS_CODES.items()}


class FastReads:
    """WSGI middleware in front of the Flask app (``app.wsgi_app``)."""

    def __init__(self, app: WSGIApplication, state: ProxyState) -> None:
        self.app = app
        self.state = state

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path_info = environ.get("PATH_INFO", "")
        if (
            environ.get("REQUEST_METHOD") != "GET"
            or environ.get("QUERY_STRING")
            or environ.get("SCRIPT_NAME")
            or not path_info.startswith(PREFIX)
            or _PLAIN_PATH.fullmatch(path_info, len(PREFIX)) is None
        ):
            return self.app(environ, start_response)
        return self._read(environ, start_response, path_info)

    def _read(self, environ: WSGIEnvironment, start_response: StartResponse, path_info: str) -> Iterable[bytes]:
        st = self.state
        rec = st.new_record(environ, "GET")
        headers: list[tuple[str, str]]
        try:
            st.authenticate(rec, path_info, environ.get("HTTP_AUTHORIZATION"))
            doc, checksum = read_secret(st, rec, path_info[len(PREFIX) :])
            status, headers = 200, [("ETag", f'"{checksum}"')]
        except HsmdError as err:
            status, doc, headers = hsmd_error_parts(err, rec)
        except Exception as err:  # a bug: the same 500 the Flask error handler gives
            status, doc = unexpected_error_parts(err, rec)
            headers = []
        body = (_encode(doc) + "\n").encode("ascii")
        st.audit(rec, path_info, ITEM_RULE, status)  # before anything leaves
        start_response(
            _STATUS_LINES[status],
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                *headers,
                ("X-Request-Id", rec.request_id),
                ("Cache-Control", "no-store"),
            ],
        )
        return [body]
