"""HSMPool aggregation: discovery pod reports -> HSMPool status (pure, no I/O).

Discovery pods (``hsmd discovery``) write what they find into their own pod's
``hsm.j5t.io/device-report`` annotation (the Go operator's race-free format, seed 001). The
``hsm_pool`` module/role reads those pods and calls ``aggregate()`` to compute the pool status:
which pods reported and whether their report is fresh, the devices across the cluster
de-duplicated by serial number, and which devices are available. A device seen within the grace
period stays available even when the latest report lacks it (``previous_status`` carries its
lastSeen), so a restarting discovery pod or a USB hiccup does not churn the agents.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hsmd.errors import InvalidArgument
from hsmd.status import merge_conditions, parse_time, rfc3339

DEVICE_REPORT_ANNOTATION = "hsm.j5t.io/device-report"
PHASES = ("Pending", "Aggregating", "Ready", "Partial", "Error")
DEFAULT_GRACE_PERIOD = "5m"

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DEVICE_INFO_KEYS = (
    "vendorId", "productId", "manufacturer", "product", "hsmDeviceName", "hsmDeviceNamespace", "deviceType"
)


def parse_duration(value: str | int | float | timedelta) -> timedelta:
    """Go duration ("30s", "5m", "1h30m", "1.5h", "250ms") or plain seconds -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise InvalidArgument(f"duration {value!r} is not a number or a Go duration")
    if isinstance(value, int | float):
        if value < 0:
            raise InvalidArgument(f"duration {value!r} is negative")
        return timedelta(seconds=value)
    text = str(value).strip()
    if not text:
        raise InvalidArgument("duration is empty")
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return timedelta(seconds=float(text))
    position, seconds = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position != len(text) or position == 0:
        raise InvalidArgument(f"duration {text!r} is not a Go duration like 30s, 5m or 1h30m")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta) -> str:
    """timedelta -> the shortest Go-style duration ("1h30m", "5m", "45s")."""
    total = int(delta.total_seconds())
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{seconds}s" if seconds else "")
    return text or "0s"


@dataclass(frozen=True)
class DeviceReport:
    """One discovery pod's parsed annotation."""

    hsm_device_name: str = ""
    reporting_node: str = ""
    devices: tuple[dict[str, Any], ...] = ()
    last_report_time: datetime | None = None
    discovery_status: str = "completed"
    error: str = ""
    raw_keys: frozenset[str] = field(default_factory=frozenset)


def parse_device_report(text: str | Mapping[str, Any]) -> DeviceReport:
    """The annotation's JSON -> DeviceReport; InvalidArgument (with a short reason) when unusable."""
    if isinstance(text, Mapping):
        data: Any = dict(text)
    else:
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"device report is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidArgument("device report must be a JSON object")
    devices_raw = data.get("discoveredDevices")
    devices_raw = [] if devices_raw is None else devices_raw
    if not isinstance(devices_raw, list):
        raise InvalidArgument("device report discoveredDevices must be a list")
    devices: list[dict[str, Any]] = []
    for index, device in enumerate(devices_raw):
        if not isinstance(device, dict):
            raise InvalidArgument(f"device report discoveredDevices[{index}] must be an object")
        path = device.get("devicePath")
        serial = device.get("serialNumber")
        if not (isinstance(path, str) and path) and not (isinstance(serial, str) and serial):
            raise InvalidArgument(f"device report discoveredDevices[{index}] has neither devicePath nor serialNumber")
        devices.append(device)
    last: datetime | None = None
    if data.get("lastReportTime"):
        last = parse_time(str(data["lastReportTime"]))
    status = str(data.get("discoveryStatus") or "completed")
    return DeviceReport(
        hsm_device_name=str(data.get("hsmDeviceName") or ""),
        reporting_node=str(data.get("reportingNode") or ""),
        devices=tuple(devices),
        last_report_time=last,
        discovery_status=status,
        error=str(data.get("error") or ""),
        raw_keys=frozenset(data),
    )


def build_device_report(
    hsm_device_name: str,
    node_name: str,
    devices: Sequence[Mapping[str, Any]],
    now: datetime | None = None,
    *,
    status: str = "completed",
    error: str = "",
) -> str:
    """The annotation value a discovery pod writes (seed 001 format; extra fields are additive)."""
    stamp = rfc3339(now)
    report: dict[str, Any] = {
        "hsmDeviceName": hsm_device_name,
        "reportingNode": node_name,
        "discoveredDevices": [dict(d, lastSeen=d.get("lastSeen") or stamp) for d in devices],
        "lastReportTime": stamp,
        "discoveryStatus": status,
    }
    if error:
        report["error"] = error
    return json.dumps(report, sort_keys=True, separators=(",", ":"))


def _device_key(device: Mapping[str, Any]) -> str:
    serial = device.get("serialNumber")
    if isinstance(serial, str) and serial:
        return f"serial:{serial}"
    return f"path:{device.get('nodeName', '')}:{device.get('devicePath', '')}"


def _time_or_none(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return parse_time(str(value))
    except InvalidArgument:
        return None


def _pod_field(pod: Mapping[str, Any], *path: str) -> Any:
    current: Any = pod
    for key in path:
        if not isinstance(current, Mapping):
            return None
        current = current.get(key)
    return current


def _wanted(
    device: Mapping[str, Any], report: DeviceReport, hsm_devices: frozenset[str] | None, namespace: str | None
) -> bool:
    device_namespace = device.get("hsmDeviceNamespace")
    if namespace and device_namespace and device_namespace != namespace:
        return False
    if hsm_devices is None:
        return True
    name = device.get("hsmDeviceName") or report.hsm_device_name
    return not name or name in hsm_devices


def aggregate(
    pods: Iterable[Mapping[str, Any]],
    expected_pods: int,
    grace_period: str | int | float | timedelta = DEFAULT_GRACE_PERIOD,
    now: datetime | str | None = None,
    previous_status: Mapping[str, Any] | None = None,
    *,
    hsm_devices: Iterable[str] | None = None,
    namespace: str | None = None,
    generation: int | None = None,
) -> dict[str, Any]:
    """HSMPool status from discovery pods (Pod objects as dicts) and the previous status.

    ``hsm_devices`` (the pool's hsmDeviceRefs) keeps only devices reported for those HSMDevices, and
    ``namespace`` (the pool's) only those whose report names that HSMDevice namespace, if any.
    ``lastAggregationTime`` and the Ready condition's ``lastTransitionTime`` only move when the
    result changes, so re-aggregating unchanged reports yields an identical status."""
    grace = parse_duration(grace_period)
    if isinstance(expected_pods, bool) or not isinstance(expected_pods, int) or expected_pods < 0:
        raise InvalidArgument("expected_pods must be a non-negative integer")
    moment = parse_time(now) if isinstance(now, str) else (now or datetime.now(UTC))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    wanted = frozenset(hsm_devices) if hsm_devices is not None else None
    previous = dict(previous_status or {})

    reporting: list[dict[str, Any]] = []
    devices: dict[str, dict[str, Any]] = {}
    seen_at: dict[str, datetime] = {}
    errors_count = stale_count = 0

    for pod in pods:
        name = str(_pod_field(pod, "metadata", "name") or "")
        annotation = (_pod_field(pod, "metadata", "annotations") or {}).get(DEVICE_REPORT_ANNOTATION)
        if not name or annotation is None:
            continue  # not reported yet
        node = str(_pod_field(pod, "spec", "nodeName") or "")
        entry: dict[str, Any] = {"podName": name, "nodeName": node, "devicesFound": 0}
        try:
            report = parse_device_report(annotation)
        except InvalidArgument as exc:
            errors_count += 1
            reporting.append(dict(entry, discoveryStatus="error", error=str(exc), fresh=False))
            continue
        node = node or report.reporting_node
        entry["nodeName"] = node
        fresh = report.last_report_time is not None and moment - report.last_report_time <= grace
        if report.last_report_time is not None:
            entry["lastReportTime"] = rfc3339(report.last_report_time)
        entry["discoveryStatus"] = report.discovery_status
        if report.error:
            entry["error"] = report.error
        mine = [d for d in report.devices if _wanted(d, report, wanted, namespace)]
        entry["devicesFound"] = len(mine)
        entry["fresh"] = fresh
        reporting.append(entry)
        if report.discovery_status == "error":
            errors_count += 1
        elif not fresh:
            stale_count += 1
        for raw in mine:
            last_seen = _time_or_none(raw.get("lastSeen")) or report.last_report_time
            if last_seen is None:
                continue
            device = _aggregated_device(raw, node or str(raw.get("nodeName") or ""), report, last_seen)
            key = _device_key(device)
            if key not in seen_at or last_seen > seen_at[key]:
                devices[key], seen_at[key] = device, last_seen

    # Devices missing from the current reports stay while their lastSeen is within the grace period.
    for old in previous.get("aggregatedDevices") or []:
        if not isinstance(old, Mapping):
            continue
        key = _device_key(old)
        last_seen = _time_or_none(old.get("lastSeen"))
        if key in devices or last_seen is None or moment - last_seen > grace:
            continue
        devices[key], seen_at[key] = dict(old), last_seen

    aggregated = []
    for key, device in devices.items():
        device["available"] = moment - seen_at[key] <= grace
        aggregated.append(device)
    aggregated.sort(key=lambda d: (d.get("nodeName", ""), d.get("serialNumber", ""), d.get("devicePath", "")))
    reporting.sort(key=lambda r: r["podName"])

    valid_reports = len(reporting) - errors_count
    if not reporting and not aggregated:
        phase, reason, message = "Pending", "NoReports", "no discovery pod has reported yet"
    elif reporting and valid_reports == 0:
        phase, reason, message = "Error", "DiscoveryFailed", f"all {errors_count} discovery report(s) are unusable"
    elif len(reporting) < expected_pods:
        phase, reason = "Aggregating", "Aggregating"
        message = f"{len(reporting)} of {expected_pods} discovery pods reported"
    elif stale_count or errors_count:
        phase, reason = "Partial", "StaleReports"
        message = f"{stale_count} stale and {errors_count} failed of {len(reporting)} discovery reports"
    else:
        phase, reason, message = "Ready", "AllReported", f"{len(reporting)} discovery pod(s) reported"
    available = sum(1 for d in aggregated if d["available"])
    message += f"; {available} of {len(aggregated)} device(s) available"

    status: dict[str, Any] = {
        "phase": phase,
        "totalDevices": len(aggregated),
        "availableDevices": available,
        "expectedPods": expected_pods,
        "reportingPods": reporting,
        "aggregatedDevices": aggregated,
    }
    if generation is not None:
        status["observedGeneration"] = generation
    comparable = {k: previous.get(k) for k in status}
    stamp = rfc3339(moment)
    unchanged = comparable == status and previous.get("lastAggregationTime")
    status["lastAggregationTime"] = previous["lastAggregationTime"] if unchanged else stamp
    condition: dict[str, Any] = {
        "type": "Ready",
        "status": "True" if phase == "Ready" else "False",
        "reason": reason,
        "message": message,
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    status["conditions"] = merge_conditions(previous.get("conditions") or [], [condition], now=stamp)
    if "mirroring" in previous:
        status["mirroring"] = previous["mirroring"]
    return status


def _aggregated_device(
    raw: Mapping[str, Any], node: str, report: DeviceReport, last_seen: datetime
) -> dict[str, Any]:
    device: dict[str, Any] = {
        "devicePath": str(raw.get("devicePath") or ""),
        "nodeName": node,
        "lastSeen": rfc3339(last_seen),
        "available": True,
    }
    if raw.get("serialNumber"):
        device["serialNumber"] = str(raw["serialNumber"])
    info = {k: str(v) for k, v in (raw.get("deviceInfo") or {}).items() if v is not None} if isinstance(
        raw.get("deviceInfo"), Mapping
    ) else {}
    for key in _DEVICE_INFO_KEYS:
        if raw.get(key) not in (None, ""):
            info[key] = str(raw[key])
    if report.hsm_device_name and "hsmDeviceName" not in info:
        info["hsmDeviceName"] = report.hsm_device_name
    if info:
        device["deviceInfo"] = info
    return device


def agent_name(pool_name: str, serial: str) -> str:
    """Deployment name of the agent for one device: a DNS label, stable per (pool, serial)."""
    raw = f"hsm-agent-{pool_name}-{serial}".lower()
    name = re.sub(r"[^a-z0-9-]+", "-", raw).strip("-")
    name = re.sub(r"-{2,}", "-", name)
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    return f"{name[:54].rstrip('-')}-{digest}"


def agent_plan(pool_name: str, status: Mapping[str, Any]) -> list[dict[str, str]]:
    """One agent per available device serial, pinned to its node: what the hsm_pool role deploys.

    Devices without a serial number cannot be told apart across reboots and get no agent; devices
    past the grace period are not available and their agents are removed."""
    plan: dict[str, dict[str, str]] = {}
    for device in status.get("aggregatedDevices") or []:
        if not isinstance(device, Mapping) or not device.get("available") or not device.get("serialNumber"):
            continue
        serial = str(device["serialNumber"])
        info = device.get("deviceInfo") if isinstance(device.get("deviceInfo"), Mapping) else {}
        plan[serial] = {
            "name": agent_name(pool_name, serial),
            "serialNumber": serial,
            "nodeName": str(device.get("nodeName") or ""),
            "devicePath": str(device.get("devicePath") or ""),
            "hsmDeviceName": str((info or {}).get("hsmDeviceName") or ""),
        }
    return [plan[s] for s in sorted(plan)]


AGENT_PIN_DIR = "/var/run/hsmd/pin"
AGENT_GRPC_PORT = 9090
AGENT_HEALTH_PORT = 8093
CCID_DEVICE_TYPES = frozenset({"PicoHSM", "SmartCard-HSM", "Generic"})


def agent_container_args(hsm_device_spec: Mapping[str, Any]) -> list[str]:
    """``hsmd agent`` arguments for an HSMDevice (the PIN comes from the mounted pinSecret file).

    InvalidArgument when the HSMDevice cannot be served (no PKCS#11 library or no pinSecret)."""
    pkcs11 = hsm_device_spec.get("pkcs11") or {}
    library = pkcs11.get("libraryPath") or hsm_device_spec.get("pkcs11LibraryPath")
    if not library:
        raise InvalidArgument("spec.pkcs11.libraryPath is not set")
    pin = pkcs11.get("pinSecret") or {}
    if not pin.get("name") or not pin.get("key"):
        raise InvalidArgument("spec.pkcs11.pinSecret (name, key) is not set")
    device_type = str(hsm_device_spec.get("deviceType") or "Generic")
    args = ["agent", "--pkcs11-library", str(library)]
    if pkcs11.get("tokenLabel"):
        args += ["--token-label", str(pkcs11["tokenLabel"])]
    else:
        args += ["--slot", str(int(pkcs11.get("slotId") or 0))]
    args += [
        "--pin-file", f"{AGENT_PIN_DIR}/{pin['key']}",
        "--listen", f"0.0.0.0:{AGENT_GRPC_PORT}",
        "--health-listen", f"0.0.0.0:{AGENT_HEALTH_PORT}",
        "--device-profile", device_type.lower(),
    ]
    if device_type in CCID_DEVICE_TYPES:
        args.append("--pcscd")
    return args


def plan_agents(
    pool_name: str, pool_namespace: str, status: Mapping[str, Any], hsm_devices: Mapping[str, Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """(agents to deploy with their container args and PIN secret, problems per HSMDevice).

    ``hsm_devices`` maps HSMDevice name -> object. A device whose HSMDevice is gone or cannot be
    served gets no agent; the reason is returned once per HSMDevice (never a PIN, only names)."""
    agents: list[dict[str, Any]] = []
    problems: dict[str, str] = {}
    refs = sorted(hsm_devices)
    for entry in agent_plan(pool_name, status):
        device_name = entry["hsmDeviceName"] or (refs[0] if len(refs) == 1 else "")
        obj = hsm_devices.get(device_name)
        if obj is None:
            problems.setdefault(device_name or "?", "HSMDevice not found")
            continue
        spec = obj.get("spec") or {}
        try:
            args = agent_container_args(spec)
        except InvalidArgument as exc:
            problems.setdefault(device_name, str(exc))
            continue
        pin = (spec.get("pkcs11") or {}).get("pinSecret") or {}
        if pin.get("namespace") and pin["namespace"] != pool_namespace:
            problems.setdefault(device_name, f"pinSecret must be in the pool's namespace {pool_namespace}")
            continue
        device_type = str(spec.get("deviceType") or "Generic")
        agents.append(dict(
            entry,
            hsmDeviceName=device_name,
            deviceType=device_type,
            args=args,
            pinSecretName=str(pin["name"]),
            pinSecretKey=str(pin["key"]),
            usb=device_type != "SoftHSM",
        ))
    return agents, [{"hsmDeviceName": k, "message": v} for k, v in sorted(problems.items())]
