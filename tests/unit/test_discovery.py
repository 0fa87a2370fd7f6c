"""hsmd.discovery: the sysfs walk, selection rules, well-known table and libccid allowlist."""

from __future__ import annotations

import plistlib
from pathlib import Path

import pytest

from hsmd.discovery.known import known_matches, libccid_ids, normalise_id
from hsmd.discovery.usb import Selection, discover, scan, scan_sysfs, selection_from_options
from hsmd.errors import FailedPrecondition, InvalidArgument
from tests.fixtures.sysfs import FakeUsb, build_sysfs, standard_tree


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    return standard_tree(tmp_path / "sys")


def serials(devices: list[dict[str, object]]) -> list[object]:
    return [d["serialNumber"] for d in devices]


def test_walk_reads_devices_not_interfaces(sysfs: Path) -> None:
    devices = {d.sys_name: d for d in scan_sysfs(sysfs)}
    assert set(devices) == {"usb1", "1-1", "1-1.2", "1-1.3", "1-1.4", "1-2", "usb2", "2-1"}
    pico = devices["1-1.2"]
    assert (pico.vendor_id, pico.product_id, pico.serial_number) == ("2e8a", "10fd", "PICO0001")
    assert (pico.manufacturer, pico.product, pico.busnum, pico.devnum) == ("Pol Henarejos", "Pico Key", 1, 5)
    assert pico.device_path == "/dev/bus/usb/001/005"
    assert pico.sys_path.endswith("usb1/1-1/1-1.2") and "pci0000:00" in pico.sys_path
    assert devices["1-1"].is_hub and devices["usb1"].is_hub and not pico.is_hub


def test_listing_without_criteria_skips_hubs(sysfs: Path) -> None:
    listed = discover(Selection(), sysfs)
    assert [d["sysName"] for d in listed] == ["1-2", "1-1.2", "1-1.3", "1-1.4", "2-1"]  # by device path
    keys = {"vendorId", "productId", "serialNumber", "manufacturer", "product", "busnum", "devnum", "devicePath"}
    assert keys <= set(listed[0])
    with_hubs = discover(Selection(include_hubs=True), sysfs)
    assert len(with_hubs) == 8


def test_vendor_product_filter(sysfs: Path) -> None:
    assert serials(discover(selection_from_options(vendor_id="04E6", product_id="0x5816"), sysfs)) == ["DENK0102345"]
    assert serials(discover(selection_from_options(vendor_id="1050"), sysfs)) == ["0012345678"]
    assert discover(selection_from_options(vendor_id="dead"), sysfs) == []
    # a hub is returned when asked for by id
    assert [d["sysName"] for d in discover(selection_from_options(vendor_id="05e3"), sysfs)] == ["1-1"]


def test_serial_filter_narrows(sysfs: Path) -> None:
    assert serials(discover(selection_from_options(serial_number="PICO0001"), sysfs)) == ["PICO0001"]
    assert discover(selection_from_options(vendor_id="04e6", serial_number="PICO0001"), sysfs) == []


def test_auto_discovery_by_device_type(sysfs: Path) -> None:
    auto = discover(selection_from_options(auto_discovery=True), sysfs)
    assert sorted(serials(auto)) == ["0012345678", "DENK0102345", "DENK0200001", "PICO0001"]
    assert all(d["matchedBy"].startswith("well-known") for d in auto)
    pico = discover(selection_from_options(auto_discovery=True, device_type="PicoHSM"), sysfs)
    assert sorted(serials(pico)) == ["DENK0200001", "PICO0001"]
    yubi = discover(selection_from_options(auto_discovery=True, device_type="YubiHSM"), sysfs)
    assert serials(yubi) == ["0012345678"]
    assert discover(selection_from_options(auto_discovery=True, device_type="SoftHSM"), sysfs) == []


def test_libccid_allowlist_extends_auto_discovery(tmp_path: Path) -> None:
    root = build_sysfs(tmp_path / "sys", [FakeUsb("1", "1234", "abcd", "READER1", devnum=2)])
    plist = tmp_path / "Info.plist"
    plist.write_bytes(plistlib.dumps({"ifdVendorID": ["0x1234", "0x04E6"], "ifdProductID": ["0xABCD", "0x5816"],
                                      "ifdFriendlyName": ["Test reader", "SCM"]}))
    found = discover(selection_from_options(auto_discovery=True, device_type="Generic"), root, ccid_plist=str(plist))
    assert serials(found) == ["READER1"] and found[0]["matchedBy"] == "libccid supported reader"
    # not for non-CCID device types, and not without the plist
    assert discover(selection_from_options(auto_discovery=True, device_type="YubiHSM"), root,
                    ccid_plist=str(plist)) == []
    assert discover(selection_from_options(auto_discovery=True), root, ccid_plist=str(tmp_path / "none")) == []


def test_installed_libccid_plist_is_parsed() -> None:
    ids = libccid_ids()
    if not Path("/usr/lib/pcsc/drivers/ifd-ccid.bundle/Contents/Info.plist").exists():
        assert ids == frozenset()
        return
    assert len(ids) > 100 and ("04e6", "5816") in ids


def test_broken_plist_is_ignored(tmp_path: Path) -> None:
    bad = tmp_path / "Info.plist"
    bad.write_text("<plist>not really")
    assert libccid_ids(str(bad)) == frozenset()
    mismatched = tmp_path / "m.plist"
    mismatched.write_bytes(plistlib.dumps({"ifdVendorID": ["0x1"], "ifdProductID": []}))
    assert libccid_ids(str(mismatched)) == frozenset()


def test_device_path_globs(sysfs: Path, tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    (dev / "bus" / "usb" / "001").mkdir(parents=True)
    (dev / "bus" / "usb" / "001" / "005").touch()
    (dev / "ttyUSB0").touch()
    found = discover(selection_from_options(device_path=["/dev/bus/usb/001/00[57]", "/dev/ttyUSB*"]), sysfs,
                     dev_root=str(dev))
    by_path = {d["devicePath"]: d for d in found}
    assert set(by_path) == {"/dev/bus/usb/001/005", "/dev/bus/usb/001/007", "/dev/ttyUSB0"}
    assert by_path["/dev/bus/usb/001/005"]["serialNumber"] == "PICO0001"
    assert by_path["/dev/ttyUSB0"] == {"devicePath": "/dev/ttyUSB0", "serialNumber": "", "matchedBy": "device path"}
    with pytest.raises(InvalidArgument):
        discover(selection_from_options(device_path="ttyUSB*"), sysfs, dev_root=str(dev))


def test_selection_from_hsm_device_spec(sysfs: Path) -> None:
    spec = {"deviceType": "SmartCard-HSM", "discovery": {"usb": {"vendorId": "04e6", "productId": "5816"}}}
    assert serials(discover(Selection.from_hsm_device(spec), sysfs)) == ["DENK0102345"]
    legacy = {"deviceType": "PicoHSM", "usb": {"vendorId": "2e8a", "productId": "10fd", "serialNumber": "PICO0001"}}
    assert serials(discover(Selection.from_hsm_device(legacy), sysfs)) == ["PICO0001"]
    auto = {"deviceType": "YubiHSM", "discovery": {"autoDiscovery": True}}
    assert serials(discover(Selection.from_hsm_device(auto), sysfs)) == ["0012345678"]


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition):
        scan_sysfs(tmp_path / "missing")
    assert scan_sysfs(tmp_path) == []  # a sysfs without USB
    with pytest.raises(InvalidArgument):
        discover(selection_from_options(vendor_id="xyz1"), tmp_path)
    with pytest.raises(InvalidArgument):
        scan(tmp_path, use_udev=True)


def test_live_sys_pyudev_agrees_with_walk() -> None:
    """On the live /sys, pyudev and the native walk see the same devices (often none in a container)."""
    if not Path("/sys").is_dir():
        pytest.skip("no /sys on this host")
    walked = [d.to_dict() for d in scan_sysfs("/sys")]
    udev = [d.to_dict() for d in scan("/sys", use_udev=True)]
    assert sorted(walked, key=lambda d: d["sysName"]) == sorted(udev, key=lambda d: d["sysName"])


def test_known_matches_and_ids() -> None:
    assert normalise_id("0x20A0") == "20a0" and normalise_id(8352) == "20a0" and normalise_id("30") == "0030"
    assert known_matches("20a0", "4230", "SmartCard-HSM") == "well-known Nitrokey HSM 2"
    assert known_matches("1050", "0030", "PicoHSM", ccid_plist=None) is None


def test_devices_for_node_applies_node_selector_and_max(sysfs: Path) -> None:
    from hsmd.discovery.cli import devices_for_node, node_matches

    usb = scan_sysfs(sysfs)
    hsm_devices = [
        {"metadata": {"name": "pico", "namespace": "hsm"},
         "spec": {"deviceType": "PicoHSM", "discovery": {"autoDiscovery": True}, "maxDevices": 1}},
        {"metadata": {"name": "yubi", "namespace": "hsm"},
         "spec": {"deviceType": "YubiHSM", "discovery": {"usb": {"vendorId": "1050", "productId": "0030"}},
                  "nodeSelector": {"hsm": "yubi"}}},
        {"metadata": {"name": "dev", "namespace": "hsm"},
         "spec": {"deviceType": "SoftHSM", "pkcs11": {"tokenLabel": "hsmd-dev"}}},
        {"metadata": {"name": "empty", "namespace": "hsm"}, "spec": {"deviceType": "Generic"}},
    ]
    names, entries = devices_for_node(hsm_devices, {"kubernetes.io/hostname": "n1"}, usb)
    assert names == ["dev", "empty", "pico"]
    assert [(e["hsmDeviceName"], e["serialNumber"]) for e in entries] == [
        ("dev", "softhsm-hsmd-dev"), ("pico", "PICO0001")]
    assert entries[1]["hsmDeviceNamespace"] == "hsm" and entries[1]["deviceType"] == "PicoHSM"
    assert "busnum" not in entries[1] and entries[1]["devicePath"] == "/dev/bus/usb/001/005"
    names, entries = devices_for_node(hsm_devices[1:2], {"hsm": "yubi"}, usb)
    assert names == ["yubi"] and [e["serialNumber"] for e in entries] == ["0012345678"]
    assert node_matches(None, {}) and not node_matches({"a": "b"}, {"a": "c"})
