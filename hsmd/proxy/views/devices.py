"""Device level: GET /api/v1/hsm/info and POST /api/v1/hsm/pin (rotate the user PIN).

``info`` also shows the broker's own state: the repair queue, the read cache's counters per agent
(hits, misses, fills, whether the agent's change stream is live) and the policy's last error.

Both are checked against the pseudo path ``@devices`` (``get`` and ``rotate-pin``). PINs arrive in
the JSON body, only over TLS or on a loopback-only broker, and never reach a log or the audit."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from hsmd.errors import FailedPrecondition, HsmdError, InvalidArgument
from hsmd.model import TokenInfo
from hsmd.proxy import codec
from hsmd.proxy.app import DEVICES_PATH, authorize, record, state
from hsmd.proxy.views.secrets import query_args

bp = Blueprint("devices", __name__)


def token_json(info: TokenInfo) -> dict[str, object]:
    return {
        "label": info.label,
        "manufacturer": info.manufacturer,
        "model": info.model,
        "serial": info.serial,
        "firmware": info.firmware,
        "freeMemory": info.free_memory,
        "totalMemory": info.total_memory,
        "pin": {
            "countLow": info.pin.count_low,
            "finalTry": info.pin.final_try,
            "locked": info.pin.locked,
            "toBeChanged": info.pin.to_be_changed,
        },
        "profile": info.profile,
        "library": info.library,
        "slot": info.slot,
    }


@bp.get("/api/v1/hsm/info")
def info() -> Response:
    query_args(set())
    authorize("get", DEVICES_PATH)
    agents = state().agents
    devices: list[dict[str, object]] = []
    for address, result in agents.info():
        if isinstance(result, HsmdError):
            devices.append({"agent": address, "ok": False, "error": {"code": result.code, "message": result.message}})
        else:
            devices.append({"agent": address, "ok": True, "token": token_json(result)})
    policy_source = state().config.policy
    return jsonify(
        {
            "devices": devices,
            "quorum": {"mode": agents.quorum, "agents": len(devices)},
            "repair": agents.repair_stats(),
            "readCache": agents.read_cache_stats() or {"enabled": False},
            "policy": {"lastError": policy_source.last_error},
        }
    )


@bp.post("/api/v1/hsm/pin")
def rotate_pin() -> Response:
    query_args(set())
    if not state().config.pin_transport_ok and not request.is_secure:
        raise FailedPrecondition("PIN changes need TLS (start the proxy with --tls-cert/--tls-key)")
    body = codec.json_body(request, {"oldPin", "newPin", "agents"}, required={"oldPin", "newPin"})
    old_pin, new_pin, only = body["oldPin"], body["newPin"], body.get("agents")
    for name, value in (("oldPin", old_pin), ("newPin", new_pin)):
        if not isinstance(value, str) or not value or len(value) > 256:
            raise InvalidArgument(f"{name} must be a non-empty string of at most 256 characters")
    if old_pin == new_pin:
        raise InvalidArgument("newPin must differ from oldPin")
    if only is not None and (not isinstance(only, list) or not all(isinstance(a, str) for a in only)):
        raise InvalidArgument("agents must be a list of agent addresses")
    authorize("rotate-pin", DEVICES_PATH)
    outcomes = state().agents.change_pin(old_pin, new_pin, only)
    record(outcomes)
    failed = [o for o in outcomes if not o.ok]
    if failed and len(failed) == len(outcomes):
        codes = {o.error.code for o in failed if o.error is not None}
        first = failed[0].error
        if len(codes) == 1 and first is not None:
            raise first
    response = jsonify(
        {"changed": len(outcomes) - len(failed), "failed": len(failed), "agents": [o.to_json() for o in outcomes]}
    )
    response.status_code = 200 if not failed else 207
    return response
