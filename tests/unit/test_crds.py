"""The CRD YAML (charts/hsm-secrets-operator/crds, the only copy): names, defaults, enums, columns,
validation of seed-shaped objects, and that everything an object may carry is in the schema."""

from __future__ import annotations

from functools import cache
from typing import Any

import jsonschema
import pytest

from hsmd.kube import crd_documents


@cache
def crds() -> dict[str, dict[str, Any]]:
    return {d["spec"]["names"]["kind"]: d for d in crd_documents()}


def schema(kind: str) -> dict[str, Any]:
    return crds()[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def columns(kind: str) -> dict[str, str]:
    return {c["name"]: c["jsonPath"] for c in crds()[kind]["spec"]["versions"][0]["additionalPrinterColumns"]}


def validate(kind: str, obj: dict[str, Any]) -> None:
    jsonschema.Draft7Validator(schema(kind)).validate(obj)


def test_names_group_and_status_subresource() -> None:
    docs = crds()
    assert set(docs) == {"HSMSecret", "HSMDevice", "HSMPool"}
    assert docs["HSMSecret"]["spec"]["names"]["shortNames"] == ["hsmsec"]
    assert docs["HSMDevice"]["spec"]["names"]["shortNames"] == ["hsmdev"]
    for kind, doc in docs.items():
        assert doc["metadata"]["name"] == f"{doc['spec']['names']['plural']}.hsm.j5t.io"
        assert doc["spec"]["group"] == "hsm.j5t.io" and doc["spec"]["scope"] == "Namespaced"
        (version,) = doc["spec"]["versions"]
        assert version["name"] == "v1alpha1" and version["served"] and version["storage"], kind
        assert version["subresources"] == {"status": {}}
        jsonschema.Draft7Validator.check_schema(version["schema"]["openAPIV3Schema"])


def test_hsmsecret_defaults_enums_and_patterns() -> None:
    spec = schema("HSMSecret")["properties"]["spec"]["properties"]
    assert spec["autoSync"]["default"] is True
    assert spec["secretType"]["default"] == "Opaque" and "kubernetes.io/tls" in spec["secretType"]["enum"]
    assert spec["syncInterval"]["default"] == 300 and spec["syncInterval"]["minimum"] >= 1
    assert spec["deletionPolicy"] == {**spec["deletionPolicy"], "default": "Retain", "enum": ["Retain", "Delete"]}
    validate("HSMSecret", {"spec": {"hsmPath": "secrets/appnamespace/appname-secret", "secretName": "appname-secret",
                                    "autoSync": True, "secretType": "Opaque", "syncInterval": 300},
                           "status": {"syncStatus": "InSync", "hsmChecksum": "sha256:ab", "secretRef": {"name": "x"}}})
    for bad in ({"hsmPath": "/abs"}, {"hsmPath": "a//b"}, {"secretName": "Upper"}, {"syncInterval": 1},
                {"secretType": "Bogus"}, {"deletionPolicy": "Orphan"}):
        with pytest.raises(jsonschema.ValidationError):
            validate("HSMSecret", {"spec": bad})
    with pytest.raises(jsonschema.ValidationError):
        validate("HSMSecret", {"status": {"syncStatus": "Synced"}})


def test_hsmdevice_seed_shape_validates() -> None:
    seed = {"spec": {
        "deviceType": "PicoHSM",
        "discovery": {"usb": {"vendorId": "20a0", "productId": "4230"}},
        "pkcs11": {"libraryPath": "/usr/lib/libsc-hsm-pkcs11.so", "slotId": 0,
                   "pinSecret": {"name": "pico-hsm-pin", "key": "pin", "namespace": "secrets"}, "tokenLabel": "MyHSM"},
        "nodeSelector": {"hsm-type": "pico"},
        "maxDevices": 1,
    }}
    validate("HSMDevice", seed)
    validate("HSMDevice", {"spec": {"deviceType": "Generic",
                                    "discovery": {"devicePath": {"path": "/dev/ttyUSB*", "permissions": "0666"}}}})
    spec = schema("HSMDevice")["properties"]["spec"]
    assert spec["required"] == ["deviceType"]
    assert spec["properties"]["deviceType"]["enum"] == ["PicoHSM", "SmartCard-HSM", "YubiHSM", "Generic", "SoftHSM"]
    for bad in ({"deviceType": "Nope"}, {"deviceType": "PicoHSM", "discovery": {"usb": {"vendorId": "20a0"}}},
                {"deviceType": "PicoHSM", "discovery": {"usb": {"vendorId": "xyz", "productId": "4230"}}},
                {"deviceType": "PicoHSM", "pkcs11": {"pinSecret": {"name": "p"}}}):
        with pytest.raises(jsonschema.ValidationError):
            validate("HSMDevice", {"spec": bad})


def test_hsmpool_seed_status_validates() -> None:
    pool = {
        "spec": {"hsmDeviceRefs": ["pico-hsm"], "gracePeriod": "5m",
                 "mirroring": {"enabled": True, "primaryRole": "primary"}},
        "status": {
            "phase": "Ready", "totalDevices": 2, "availableDevices": 2, "expectedPods": 2,
            "reportingPods": [{"podName": "discovery-node1", "nodeName": "worker-1", "devicesFound": 1,
                               "lastReportTime": "2025-08-19T10:00:00Z", "discoveryStatus": "completed",
                               "fresh": True}],
            "aggregatedDevices": [{"devicePath": "/dev/bus/usb/001/015", "nodeName": "worker-1",
                                   "serialNumber": "DC6A33145E23A42A", "available": True,
                                   "lastSeen": "2025-08-19T10:00:00Z"}],
            "lastAggregationTime": "2025-08-19T10:00:00Z",
            "conditions": [{"type": "Ready", "status": "True", "reason": "AllReported", "message": "",
                            "lastTransitionTime": "2025-08-19T10:00:00Z", "observedGeneration": 1}],
        },
    }
    validate("HSMPool", pool)
    spec = schema("HSMPool")["properties"]["spec"]["properties"]
    assert spec["gracePeriod"]["default"] == "5m"
    for bad in ({"hsmDeviceRefs": []}, {"hsmDeviceRefs": ["a"], "gracePeriod": "5 minutes"}, {}):
        with pytest.raises(jsonschema.ValidationError):
            validate("HSMPool", {"spec": bad})
    with pytest.raises(jsonschema.ValidationError):
        validate("HSMPool", {"status": {"phase": "Done"}})


def test_aggregate_output_fits_the_schema() -> None:
    """What hsmd.pool.aggregate writes is exactly what the schema accepts (nothing pruned)."""
    from datetime import UTC, datetime

    from hsmd.pool import aggregate, build_device_report, plan_agents

    now = datetime(2025, 8, 19, 10, 0, tzinfo=UTC)
    report = build_device_report("pico", "w1", [{"devicePath": "/dev/bus/usb/001/002", "serialNumber": "S1",
                                                 "vendorId": "20a0", "productId": "4230", "hsmDeviceName": "pico"}],
                                 now)
    pods = [{"metadata": {"name": "d1", "annotations": {"hsm.j5t.io/device-report": report}},
             "spec": {"nodeName": "w1"}},
            {"metadata": {"name": "d2", "annotations": {"hsm.j5t.io/device-report": "{bad"}},
             "spec": {"nodeName": "w2"}}]
    status = aggregate(pods, 2, "5m", now, generation=4)
    plan_agents("p", "ns", status, {})
    validate("HSMPool", {"spec": {"hsmDeviceRefs": ["pico"]}, "status": status})
    _assert_known_fields(schema("HSMPool")["properties"]["status"], status)


def _assert_known_fields(node: dict[str, Any], value: Any, where: str = "status") -> None:
    if isinstance(value, dict) and "properties" in node:
        for key, item in value.items():
            assert key in node["properties"], f"{where}.{key} is not in the schema (the API server would prune it)"
            _assert_known_fields(node["properties"][key], item, f"{where}.{key}")
    elif isinstance(value, list) and "items" in node:
        for item in value:
            _assert_known_fields(node["items"], item, f"{where}[]")


def test_printer_columns() -> None:
    assert list(columns("HSMSecret")) == ["Path", "Secret", "Sync Status", "Ready", "Last Sync", "Age"]
    assert columns("HSMSecret")["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    pool = columns("HSMPool")
    assert [c for c in pool if c in ("Phase", "Total", "Available", "Reporting", "Age")] == [
        "Phase", "Total", "Available", "Reporting", "Age"]
    assert pool["Total"] == ".status.totalDevices" and pool["Reporting"] == ".status.reportingPods[*].podName"
    assert {"Type", "Age"} <= set(columns("HSMDevice"))


def test_conditions_schema_is_standard_everywhere() -> None:
    for kind in ("HSMSecret", "HSMDevice", "HSMPool"):
        cond = schema(kind)["properties"]["status"]["properties"]["conditions"]
        assert cond["x-kubernetes-list-type"] == "map" and cond["x-kubernetes-list-map-keys"] == ["type"]
        item = cond["items"]
        assert set(item["properties"]) == {"type", "status", "reason", "message", "lastTransitionTime",
                                           "observedGeneration"}
        assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
