"""hsmd.pool: duration parsing, device-report parsing and HSMPool aggregation (pure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hsmd.errors import InvalidArgument
from hsmd.pool import (
    DEVICE_REPORT_ANNOTATION,
    agent_name,
    agent_plan,
    aggregate,
    build_device_report,
    format_duration,
    parse_device_report,
    parse_duration,
)

NOW = datetime(2025, 8, 19, 10, 0, 0, tzinfo=UTC)


def ts(delta_seconds: float = 0) -> str:
    return (NOW + timedelta(seconds=delta_seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(name: str, node: str, devices: list[dict[str, Any]] | None = None, *, age: float = 0,
        raw: str | None = None, device_name: str = "pico", status: str = "completed") -> dict[str, Any]:
    annotations: dict[str, str] = {}
    if raw is not None:
        annotations[DEVICE_REPORT_ANNOTATION] = raw
    elif devices is not None:
        annotations[DEVICE_REPORT_ANNOTATION] = json.dumps({
            "hsmDeviceName": device_name,
            "reportingNode": node,
            "discoveredDevices": devices,
            "lastReportTime": ts(-age),
            "discoveryStatus": status,
        })
    return {"metadata": {"name": name, "annotations": annotations}, "spec": {"nodeName": node}}


def dev(serial: str, path: str = "/dev/bus/usb/001/015", seen_age: float = 0) -> dict[str, Any]:
    return {"devicePath": path, "serialNumber": serial, "lastSeen": ts(-seen_age)}


@pytest.mark.parametrize(("text", "seconds"), [
    ("5m", 300), ("30s", 30), ("1h30m", 5400), ("1.5h", 5400), ("250ms", 0.25), ("2h0m0s", 7200),
    ("0", 0), ("90", 90), (45, 45), (1.5, 1.5), ("1m30s", 90), ("10us", 1e-5), ("1µs", 1e-6),
])
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "m", "5 m", "5x", "-5m", "1h-30m", "h1", "5m3", True, -1])
def test_parse_duration_rejects(text: Any) -> None:
    with pytest.raises(InvalidArgument):
        parse_duration(text)


def test_format_duration_round_trips() -> None:
    for text in ("5m", "1h30m", "45s", "2h"):
        assert format_duration(parse_duration(text)) == text
    assert format_duration(timedelta(0)) == "0s"


def test_parse_seed_annotation() -> None:
    report = parse_device_report("""
      {
        "hsmDeviceName": "my-pico-hsm",
        "reportingNode": "worker-1",
        "discoveredDevices": [
          {"devicePath": "/dev/bus/usb/001/015", "serialNumber": "DC6A33145E23A42A", "lastSeen": "2025-08-19T10:00:00Z"}
        ],
        "lastReportTime": "2025-08-19T10:00:00Z",
        "discoveryStatus": "completed"
      }""")
    assert report.hsm_device_name == "my-pico-hsm"
    assert report.reporting_node == "worker-1"
    assert report.last_report_time == NOW
    assert report.devices[0]["serialNumber"] == "DC6A33145E23A42A"


@pytest.mark.parametrize("raw", [
    "{not json", "[]", "null", '"x"', '{"discoveredDevices": {}}', '{"discoveredDevices": [1]}',
    '{"discoveredDevices": [{"lastSeen": "2025-08-19T10:00:00Z"}]}', '{"lastReportTime": "yesterday"}',
])
def test_parse_rejects_bad_reports(raw: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_device_report(raw)


def test_build_report_round_trips() -> None:
    text = build_device_report("pico", "worker-1", [{"devicePath": "/dev/bus/usb/001/002", "serialNumber": "S1"}], NOW)
    report = parse_device_report(text)
    assert report.last_report_time == NOW and report.devices[0]["lastSeen"] == ts()
    assert report.discovery_status == "completed"


def test_all_pods_fresh_is_ready_and_dedupes_by_serial() -> None:
    pods = [
        pod("disc-a", "worker-1", [dev("S1"), dev("S2", "/dev/bus/usb/001/016")]),
        pod("disc-b", "worker-2", [dev("S3", "/dev/bus/usb/002/003")]),
        # the same device reported twice (e.g. a re-plug seen by a restarted pod): latest wins
        pod("disc-c", "worker-3", [dev("S1", "/dev/bus/usb/003/004", seen_age=30)], age=30),
    ]
    status = aggregate(pods, expected_pods=3, grace_period="5m", now=NOW)
    assert status["phase"] == "Ready"
    assert status["totalDevices"] == 3 and status["availableDevices"] == 3
    s1 = next(d for d in status["aggregatedDevices"] if d["serialNumber"] == "S1")
    assert s1["nodeName"] == "worker-1" and s1["devicePath"] == "/dev/bus/usb/001/015"
    assert s1["deviceInfo"]["hsmDeviceName"] == "pico"
    assert [p["podName"] for p in status["reportingPods"]] == ["disc-a", "disc-b", "disc-c"]
    assert all(p["fresh"] for p in status["reportingPods"])
    assert status["reportingPods"][0]["devicesFound"] == 2
    assert status["lastAggregationTime"] == ts()
    ready = status["conditions"][0]
    assert ready["type"] == "Ready" and ready["status"] == "True" and ready["lastTransitionTime"] == ts()


def test_pending_without_reports_and_aggregating_when_some_missing() -> None:
    assert aggregate([], 2, "5m", NOW)["phase"] == "Pending"
    assert aggregate([pod("disc-a", "w1")], 2, "5m", NOW)["phase"] == "Pending"  # pod without annotation
    status = aggregate([pod("disc-a", "w1", [dev("S1")]), pod("disc-b", "w2")], 2, "5m", NOW)
    assert status["phase"] == "Aggregating" and status["availableDevices"] == 1
    assert status["conditions"][0]["status"] == "False"


def test_stale_report_is_partial_and_its_device_unavailable() -> None:
    pods = [pod("disc-a", "w1", [dev("S1")]), pod("disc-b", "w2", [dev("S2", seen_age=600)], age=600)]
    status = aggregate(pods, 2, "5m", NOW)
    assert status["phase"] == "Partial"
    fresh = {p["podName"]: p["fresh"] for p in status["reportingPods"]}
    assert fresh == {"disc-a": True, "disc-b": False}
    avail = {d["serialNumber"]: d["available"] for d in status["aggregatedDevices"]}
    assert avail == {"S1": True, "S2": False}
    assert status["availableDevices"] == 1 and status["totalDevices"] == 2


def test_bad_annotation_is_reported_as_error_not_a_crash() -> None:
    pods = [pod("disc-a", "w1", [dev("S1")]), pod("disc-b", "w2", raw="{oops")]
    status = aggregate(pods, 2, "5m", NOW)
    bad = next(p for p in status["reportingPods"] if p["podName"] == "disc-b")
    assert bad["discoveryStatus"] == "error" and bad["fresh"] is False and "JSON" in bad["error"]
    assert status["phase"] == "Partial" and status["availableDevices"] == 1
    only_bad = aggregate([pod("disc-b", "w2", raw="[1,2]")], 1, "5m", NOW)
    assert only_bad["phase"] == "Error" and only_bad["conditions"][0]["reason"] == "DiscoveryFailed"


def test_device_missing_from_report_stays_available_within_grace() -> None:
    first = aggregate([pod("disc-a", "w1", [dev("S1"), dev("S2", "/dev/bus/usb/001/016")])], 1, "5m", NOW)
    later = NOW + timedelta(minutes=2)
    # S2 unplugged (or a USB hiccup): the new report lacks it
    report = json.dumps({"hsmDeviceName": "pico", "discoveredDevices": [
        {"devicePath": "/dev/bus/usb/001/015", "serialNumber": "S1", "lastSeen": later.isoformat()}],
        "lastReportTime": later.isoformat(), "discoveryStatus": "completed"})
    pods = [pod("disc-a", "w1", raw=report)]
    second = aggregate(pods, 1, "5m", later, previous_status=first)
    s2 = next(d for d in second["aggregatedDevices"] if d["serialNumber"] == "S2")
    assert s2["available"] is True and s2["lastSeen"] == ts()
    assert second["availableDevices"] == 2
    # past the grace period the device is gone from the pool (and its agent is planned away)
    third = aggregate(pods, 1, "5m", NOW + timedelta(minutes=6), previous_status=second)
    assert [d["serialNumber"] for d in third["aggregatedDevices"]] == ["S1"]
    assert [a["serialNumber"] for a in agent_plan("pool", third)] == ["S1"]


def test_filter_by_hsm_device_refs() -> None:
    pods = [pod("disc-a", "w1", [dev("S1")], device_name="pico"),
            pod("disc-b", "w2", [dev("Y1")], device_name="yubi")]
    status = aggregate(pods, 2, "5m", NOW, hsm_devices=["pico"])
    assert [d["serialNumber"] for d in status["aggregatedDevices"]] == ["S1"]
    assert {p["podName"]: p["devicesFound"] for p in status["reportingPods"]} == {"disc-a": 1, "disc-b": 0}


def test_filter_by_pool_namespace() -> None:
    report = json.dumps({"hsmDeviceName": "pico", "lastReportTime": ts(), "discoveredDevices": [
        dict(dev("S1"), hsmDeviceName="pico", hsmDeviceNamespace="team-a"),
        dict(dev("S2", "/dev/bus/usb/001/016"), hsmDeviceName="pico", hsmDeviceNamespace="team-b")]})
    status = aggregate([pod("disc-a", "w1", raw=report)], 1, "5m", NOW, hsm_devices=["pico"], namespace="team-a")
    assert [d["serialNumber"] for d in status["aggregatedDevices"]] == ["S1"]
    assert status["aggregatedDevices"][0]["deviceInfo"]["hsmDeviceNamespace"] == "team-a"


def test_reaggregation_of_unchanged_reports_is_identical() -> None:
    pods = [pod("disc-a", "w1", [dev("S1")])]
    first = aggregate(pods, 1, "5m", NOW, generation=3)
    second = aggregate(pods, 1, "5m", NOW + timedelta(seconds=30), previous_status=first, generation=3)
    assert second == first
    assert first["observedGeneration"] == 3 and first["conditions"][0]["observedGeneration"] == 3


def test_transition_time_moves_only_on_status_change() -> None:
    pods = [pod("disc-a", "w1", [dev("S1")])]
    ready = aggregate(pods, 2, "5m", NOW)  # Aggregating
    later = NOW + timedelta(seconds=10)
    pods.append(pod("disc-b", "w2", [dev("S2")], age=-10))
    again = aggregate(pods, 2, "5m", later, previous_status=ready)
    assert again["phase"] == "Ready"
    assert again["conditions"][0]["lastTransitionTime"] == later.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert again["lastAggregationTime"] == later.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_aggregate_rejects_bad_arguments() -> None:
    with pytest.raises(InvalidArgument):
        aggregate([], -1, "5m", NOW)
    with pytest.raises(InvalidArgument):
        aggregate([], 1, "five minutes", NOW)


def test_now_as_string_and_naive_datetime() -> None:
    assert aggregate([pod("a", "w", [dev("S1")])], 1, "5m", ts())["phase"] == "Ready"
    assert aggregate([pod("a", "w", [dev("S1")])], 1, "5m", NOW.replace(tzinfo=None))["phase"] == "Ready"


def test_agent_names_are_dns_labels() -> None:
    assert agent_name("pico-pool", "DC6A33145E23A42A") == "hsm-agent-pico-pool-dc6a33145e23a42a"
    long = agent_name("p" * 40, "S/N:" + "X" * 40)
    assert len(long) <= 63 and long.replace("-", "").isalnum() and long == long.lower()
    assert agent_name("p" * 40, "S/N:" + "X" * 40) == long
    assert agent_name("p" * 40, "S/N:" + "X" * 39 + "Y") != long


def test_agent_plan_skips_unavailable_and_serialless() -> None:
    status = {"aggregatedDevices": [
        {"serialNumber": "B", "available": True, "nodeName": "w2", "devicePath": "/d/2",
         "deviceInfo": {"hsmDeviceName": "pico"}},
        {"serialNumber": "A", "available": True, "nodeName": "w1", "devicePath": "/d/1"},
        {"serialNumber": "C", "available": False, "nodeName": "w1", "devicePath": "/d/3"},
        {"available": True, "nodeName": "w1", "devicePath": "/d/4"},
    ]}
    plan = agent_plan("pool", status)
    assert [(a["serialNumber"], a["nodeName"]) for a in plan] == [("A", "w1"), ("B", "w2")]
    assert plan[1]["hsmDeviceName"] == "pico" and plan[0]["name"] == "hsm-agent-pool-a"


def test_agent_container_args() -> None:
    from hsmd.pool import agent_container_args

    spec = {"deviceType": "SmartCard-HSM", "pkcs11": {"libraryPath": "/usr/lib/opensc-pkcs11.so", "tokenLabel": "HSM1",
                                                      "pinSecret": {"name": "hsm-pin", "key": "pin"}}}
    args = agent_container_args(spec)
    assert args[:5] == ["agent", "--pkcs11-library", "/usr/lib/opensc-pkcs11.so", "--token-label", "HSM1"]
    assert args[args.index("--pin-file") + 1] == "/var/run/hsmd/pin/pin"
    assert args[args.index("--device-profile") + 1] == "smartcard-hsm" and args[-1] == "--pcscd"
    soft = agent_container_args({"deviceType": "SoftHSM", "pkcs11": {"libraryPath": "/l.so", "slotId": 3,
                                                                      "pinSecret": {"name": "p", "key": "k"}}})
    assert "--slot" in soft and soft[soft.index("--slot") + 1] == "3" and "--pcscd" not in soft
    with pytest.raises(InvalidArgument):
        agent_container_args({"deviceType": "PicoHSM", "pkcs11": {"libraryPath": "/l.so"}})
    with pytest.raises(InvalidArgument):
        agent_container_args({"deviceType": "PicoHSM", "pkcs11": {"pinSecret": {"name": "p", "key": "k"}}})


def test_plan_agents_reports_problems_without_agents() -> None:
    from hsmd.pool import plan_agents

    status = {"aggregatedDevices": [
        {"serialNumber": "A", "available": True, "nodeName": "w1", "devicePath": "/d/1",
         "deviceInfo": {"hsmDeviceName": "good"}},
        {"serialNumber": "B", "available": True, "nodeName": "w2", "devicePath": "/d/2",
         "deviceInfo": {"hsmDeviceName": "nopin"}},
        {"serialNumber": "C", "available": True, "nodeName": "w2", "devicePath": "/d/3",
         "deviceInfo": {"hsmDeviceName": "gone"}},
        {"serialNumber": "D", "available": True, "nodeName": "w3", "devicePath": "/d/4",
         "deviceInfo": {"hsmDeviceName": "elsewhere"}},
    ]}
    pin = {"name": "hsm-pin", "key": "pin"}
    devices = {
        "good": {"spec": {"deviceType": "PicoHSM", "pkcs11": {"libraryPath": "/l.so", "pinSecret": pin}}},
        "nopin": {"spec": {"deviceType": "PicoHSM", "pkcs11": {"libraryPath": "/l.so"}}},
        "elsewhere": {"spec": {"deviceType": "PicoHSM", "pkcs11": {"libraryPath": "/l.so",
                                                                    "pinSecret": dict(pin, namespace="other")}}},
    }
    agents, problems = plan_agents("pool", "hsm", status, devices)
    assert [(a["serialNumber"], a["pinSecretName"], a["usb"]) for a in agents] == [("A", "hsm-pin", True)]
    assert [p["hsmDeviceName"] for p in problems] == ["elsewhere", "gone", "nopin"]
    assert "pinSecret" in problems[2]["message"]
