"""Bulk: POST /api/v1/hsm/import and GET /api/v1/hsm/export.

Import validates the whole document first (a malformed item writes nothing), then writes item by
item with per-item results: policy (`import` verb per path) and agent errors fail only their item.
Export lists, keeps the paths the caller may `export`, and reads them in batches (one ReadSecrets
RPC per agent per batch). The response is 200 when every item succeeded, 207 otherwise.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from hsmd.errors import HsmdError, InvalidArgument
from hsmd.model import validate_data, validate_path, validate_prefix
from hsmd.proxy import codec
from hsmd.proxy.app import current_record, filter_allowed, identity, record, state
from hsmd.proxy.views.secrets import BROKER_PROFILE, query_args

bp = Blueprint("bulk", __name__)

MAX_IMPORT_ITEMS = 1000
EXPORT_BATCH = 100


@bp.post("/api/v1/hsm/import")
def import_secrets() -> Response:
    query_args(set())
    body = codec.json_body(request, {"secrets", "overwrite"}, required={"secrets"})
    overwrite = body.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise InvalidArgument("overwrite must be true or false")
    raw_items = body["secrets"]
    if not isinstance(raw_items, list):
        raise InvalidArgument("secrets must be a list")
    if len(raw_items) > MAX_IMPORT_ITEMS:
        raise InvalidArgument(f"at most {MAX_IMPORT_ITEMS} secrets per import; split the file")
    items: list[tuple[str, dict[str, bytes], Any]] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_items):
        where = f"secrets[{index}]"
        if not isinstance(raw, dict):
            raise InvalidArgument(f"{where} must be an object")
        # export documents carry checksum, createdAt and disagreement: ignored, the agents decide those
        codec.check_fields(
            raw, {"path", "data", "metadata", "checksum", "disagreement"}, where, required={"path", "data"}
        )
        path = raw["path"]
        if not isinstance(path, str):
            raise InvalidArgument(f"{where}.path must be a string")
        try:
            validate_path(path)
            data = validate_data(codec.decode_data(raw["data"], where=f"{where}.data"), BROKER_PROFILE)
            metadata = codec.decode_metadata(raw.get("metadata"), ignore_created_at=True)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{where}: {exc.message}") from None
        if path in seen:
            raise InvalidArgument(f"{where}: path {path!r} appears twice")
        seen.add(path)
        items.append((path, data, metadata))

    ident = identity()
    policy = state().config.policy.current()
    agents = state().agents
    results: list[dict[str, object]] = []
    audit_items: list[dict[str, object]] = []
    rec = current_record()
    rec.verb = "import"
    for path, data, metadata in items:
        if not policy.allows(ident.namespace, "import", path, ident.service_account):
            results.append(
                {
                    "path": path,
                    "status": "failed",
                    "error": {"code": "forbidden", "message": f"may not import {path!r}"},
                }
            )
            audit_items.append({"path": path, "decision": "deny", "result": "forbidden"})
            continue
        outcome = agents.write(path, data, metadata, create_only=not overwrite)
        item: dict[str, object] = {"path": path, "agents": [o.to_json() for o in outcome.agents]}
        if outcome.ok:
            item["status"] = "updated" if overwrite and outcome.changed else ("unchanged" if overwrite else "created")
            item["checksum"] = outcome.checksum
            if outcome.repair_queued:
                item["repairQueued"] = list(outcome.repair_queued)
        else:
            assert outcome.error is not None
            item["status"] = "failed"
            item["error"] = {"code": outcome.error.code, "message": outcome.error.message}
        results.append(item)
        audit_items.append(
            {
                "path": path,
                "decision": "allow",
                "result": "ok" if outcome.ok else outcome.error.code if outcome.error else "error",
            }
        )
    rec.items = audit_items
    failed = sum(1 for r in results if r["status"] == "failed")
    rec.decision = "allow" if not any(i["decision"] == "deny" for i in audit_items) else "partial"
    response = jsonify(
        {"results": results, "summary": {"total": len(results), "succeeded": len(results) - failed, "failed": failed}}
    )
    response.status_code = 200 if failed == 0 else 207
    return response


@bp.get("/api/v1/hsm/export")
def export_secrets() -> Response:
    prefix = validate_prefix(query_args({"prefix"}).get("prefix", ""))
    current_record().target = prefix
    agents = state().agents
    listing = agents.list_paths(prefix)
    paths = filter_allowed("export", listing.paths)
    secrets: list[dict[str, object]] = []
    failures: list[dict[str, object]] = []
    outcomes = list(listing.agents)
    for start in range(0, len(paths), EXPORT_BATCH):
        batch = paths[start : start + EXPORT_BATCH]
        for path, outcome in agents.read_many_outcomes(batch).items():
            try:
                secret = outcome.require()
            except HsmdError as exc:
                failures.append({"path": path, "error": {"code": exc.code, "message": exc.message}})
                continue
            doc = codec.secret_json(secret)
            report = outcome.report()
            if report:
                doc["disagreement"] = report
            secrets.append(doc)
    record(outcomes)
    response = jsonify({"prefix": prefix, "secrets": secrets, "count": len(secrets), "errors": failures})
    response.status_code = 200 if not failures else 207
    return response
