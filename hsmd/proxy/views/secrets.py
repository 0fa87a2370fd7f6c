"""Secret CRUD: /api/v1/hsm/secrets[/{path}] and /api/v1/hsm/checksum/{path}.

Views are adapters: they validate through hsmd.proxy.codec / hsmd.model, ask the policy through
``authorize``, and fan out through the AgentSet. PATCH is a read-merge-write guarded by the
checksum it read, retried on a concurrent change unless the client pinned its own checksum, so
concurrent PATCHes never lose an update. The reads that a write decides on (PUT's "does it exist",
PATCH's base) ask the agents, never the broker's read cache; plain GETs are served from it.
"""

from __future__ import annotations

import random
import time
from typing import Any

from flask import Blueprint, Response, jsonify, request

from hsmd.errors import Conflict, InvalidArgument, NotFound
from hsmd.fanout import ReadOutcome, WriteOutcome
from hsmd.model import (
    MAX_SECRET_BYTES,
    DeviceProfile,
    validate_data,
    validate_key,
    validate_path,
    validate_prefix,
)
from hsmd.proxy import codec
from hsmd.proxy.app import ProxyState, authorize, current_record, filter_allowed, record, state
from hsmd.proxy.audit import RequestRecord

bp = Blueprint("secrets", __name__)

ITEM_RULE = "/api/v1/hsm/secrets/<path:path>"  # one secret: GET, POST, PUT, PATCH, DELETE

# The broker checks keys and the Kubernetes size limit; each agent applies its device's own limit.
BROKER_PROFILE = DeviceProfile("broker", MAX_SECRET_BYTES, "broker pre-check")
PATCH_ATTEMPTS = 8


def query_args(allowed: set[str]) -> dict[str, str]:
    unknown = sorted(set(request.args) - allowed)
    if unknown:
        raise InvalidArgument(f"unknown query parameter(s) {', '.join(map(repr, unknown))}")
    out = {}
    for name in allowed:
        values = request.args.getlist(name)
        if len(values) > 1:
            raise InvalidArgument(f"query parameter {name!r} given more than once")
        if values:
            out[name] = values[0]
    return out


def expected_checksum(body: dict[str, Any]) -> str | None:
    """A compare-and-swap checksum from the body (``expectedChecksum``) or ``If-Match``."""
    from_body = body.get("expectedChecksum")
    if from_body is not None and not isinstance(from_body, str):
        raise InvalidArgument("expectedChecksum must be a string")
    header = request.headers.get("If-Match")
    from_header = header.strip().strip('"') if header else None
    if from_body and from_header and from_body != from_header:
        raise InvalidArgument("expectedChecksum and If-Match disagree")
    value = from_body or from_header
    if value is not None and not value.startswith("sha256:"):
        raise InvalidArgument("expectedChecksum must look like 'sha256:<hex>'")
    return value


def read_json(outcome: ReadOutcome) -> dict[str, object]:
    doc = codec.secret_json(outcome.require())
    report = outcome.report()
    if report:
        doc["disagreement"] = report
    return doc


def write_json(outcome: WriteOutcome, **extra: object) -> dict[str, object]:
    doc: dict[str, object] = {"path": outcome.path, **extra}
    if outcome.checksum is not None:
        doc["checksum"] = outcome.checksum
    doc["changed"] = outcome.changed
    doc["quorum"] = outcome.quorum_json()
    doc["agents"] = [o.to_json() for o in outcome.agents]
    if outcome.repair_queued:
        doc["repairQueued"] = list(outcome.repair_queued)
    return doc


def finish(outcome: WriteOutcome) -> None:
    record(outcome.agents)
    outcome.raise_for_error()


@bp.get("/api/v1/hsm/secrets")
def list_secrets() -> Response:
    prefix = validate_prefix(query_args({"prefix"}).get("prefix", ""))
    current_record().target = prefix
    listing = state().agents.list_paths(prefix)
    record(listing.agents)
    paths = filter_allowed("list", listing.paths)
    doc: dict[str, object] = {"prefix": prefix, "paths": paths, "count": len(paths)}
    disagreeing = [p for p in listing.disagreeing_paths if p in set(paths)]
    if disagreeing:
        doc["disagreement"] = disagreeing
    return jsonify(doc)


def read_secret(st: ProxyState, rec: RequestRecord, path: str) -> tuple[dict[str, object], str]:
    """GET of one secret, for both adapters (this blueprint and hsmd.proxy.fastpath): the response
    document and its checksum (the ETag)."""
    validate_path(path)
    st.authorize(rec, "get", path)
    outcome = st.agents.read(path)
    rec.agent_outcomes = outcome.agents
    return read_json(outcome), outcome.require().checksum


@bp.get(ITEM_RULE)
def get_secret(path: str) -> Response:
    query_args(set())
    doc, checksum = read_secret(state(), current_record(), path)
    response = jsonify(doc)
    response.headers["ETag"] = f'"{checksum}"'
    return response


@bp.post(ITEM_RULE)
def create_secret(path: str) -> Response:
    query_args(set())
    validate_path(path)
    body = codec.json_body(request, {"data", "metadata"}, required={"data"})
    data = validate_data(codec.decode_data(body["data"]), BROKER_PROFILE)
    metadata = codec.decode_metadata(body.get("metadata"))
    authorize("create", path)
    outcome = state().agents.write(path, data, metadata, create_only=True)
    finish(outcome)
    response = jsonify(write_json(outcome, created=True))
    response.status_code = 201
    return response


@bp.put(ITEM_RULE)
def replace_secret(path: str) -> Response:
    query_args(set())
    validate_path(path)
    body = codec.json_body(request, {"data", "metadata", "expectedChecksum"}, required={"data"})
    data = validate_data(codec.decode_data(body["data"]), BROKER_PROFILE)
    expected = expected_checksum(body)
    agents = state().agents
    existing: ReadOutcome | None = None
    if expected is None:
        # Like Vault: replacing needs `update`, creating through PUT needs `create`.
        authorize("update", path)
        try:
            existing = agents.read(path, fresh=True)
            existing.require()
        except NotFound:
            existing = None
        if existing is None:
            authorize("create", path)
    else:
        authorize("update", path)
        existing = agents.read(path, fresh=True)
        existing.require()
    base = existing.secret.metadata if existing is not None and existing.secret is not None else None
    metadata = codec.decode_metadata(body.get("metadata"), base)
    outcome = agents.write(
        path, data, metadata, create_only=existing is None and expected is None, expected_checksum=expected
    )
    finish(outcome)
    return jsonify(write_json(outcome, created=existing is None))


@bp.patch(ITEM_RULE)
def patch_secret(path: str) -> Response:
    query_args(set())
    validate_path(path)
    body = codec.json_body(request, {"data", "metadata", "expectedChecksum"})
    changes = codec.decode_patch_data(body.get("data", {}))
    expected = expected_checksum(body)
    authorize("update", path)
    agents = state().agents
    for attempt in range(PATCH_ATTEMPTS):
        if attempt:
            time.sleep(random.uniform(0, 0.01 * 2**attempt))  # another writer won the race: back off
        with agents.path_lock(path):
            current = agents.read(path, fresh=True).require()
            if expected is not None and current.checksum != expected:
                raise Conflict(
                    f"secret {path!r} changed: checksum is {current.checksum}, expected {expected}", path=path
                )
            merged = dict(current.data)
            for key, value in changes.items():
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
            if not merged:
                raise InvalidArgument("the patch would remove every key; DELETE the secret instead", path=path)
            data = validate_data(merged, BROKER_PROFILE)
            metadata = codec.decode_metadata(body.get("metadata"), current.metadata)
            outcome = agents.write(path, data, metadata, expected_checksum=current.checksum)
        if outcome.ok or expected is not None or not isinstance(outcome.error, Conflict):
            finish(outcome)
            return jsonify(write_json(outcome, attempts=attempt + 1))
    record(outcome.agents)
    raise Conflict(f"secret {path!r} kept changing; gave up after {PATCH_ATTEMPTS} attempts", path=path)


@bp.delete(ITEM_RULE)
def delete_secret(path: str) -> Response:
    key = query_args({"key"}).get("key")
    validate_path(path)
    if key is not None:
        validate_key(key)
    authorize("delete", path)
    outcome = state().agents.delete(path, key)
    finish(outcome)
    doc = write_json(outcome, deleted=True)
    if key is not None:
        doc["key"] = key
    return jsonify(doc)


@bp.get("/api/v1/hsm/checksum/<path:path>")
def get_checksum(path: str) -> Response:
    query_args(set())
    validate_path(path)
    authorize("get", path)
    checksum, resolved, outcomes = state().agents.checksum(path)
    record(outcomes)
    doc: dict[str, object] = {"path": path, "checksum": checksum}
    report = resolved.report() if resolved is not None else None
    if report:
        doc["disagreement"] = report
    response = jsonify(doc)
    response.headers["ETag"] = f'"{checksum}"'
    return response
