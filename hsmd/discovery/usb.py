"""Find USB HSMs on this host: a sysfs walk (any root, e.g. /host/sys on Talos) or pyudev on the live /sys.

``scan()`` lists USB devices (not interfaces) with their ids, strings and /dev/bus/usb node;
``discover()`` applies an HSMDevice-style selection (vendor/product/serial, autoDiscovery via the
well-known table and libccid's list, device path globs). The ``hsm_device_info`` module and the
``hsmd discovery`` daemon both call ``discover()``; nothing else reads sysfs.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsmd.discovery.known import LIBCCID_PLIST, known_matches, normalise_id
from hsmd.errors import FailedPrecondition, InvalidArgument

log = logging.getLogger("hsmd.discovery")

HUB_CLASS = "09"
LIVE_SYSFS = "/sys"


@dataclass(frozen=True)
class UsbDevice:
    """One USB device as the kernel describes it."""

    sys_name: str  # e.g. 1-1.2
    vendor_id: str
    product_id: str
    serial_number: str = ""
    manufacturer: str = ""
    product: str = ""
    busnum: int = 0
    devnum: int = 0
    device_class: str = "00"
    sys_path: str = ""
    matched_by: str = ""

    @property
    def device_path(self) -> str:
        if not self.busnum or not self.devnum:
            return ""
        return f"/dev/bus/usb/{self.busnum:03d}/{self.devnum:03d}"

    @property
    def is_hub(self) -> bool:
        return self.device_class == HUB_CLASS

    def to_dict(self) -> dict[str, Any]:
        """The shape modules return and discovery reports (camelCase, like the CRDs)."""
        result: dict[str, Any] = {
            "vendorId": self.vendor_id,
            "productId": self.product_id,
            "serialNumber": self.serial_number,
            "manufacturer": self.manufacturer,
            "product": self.product,
            "busnum": self.busnum,
            "devnum": self.devnum,
            "devicePath": self.device_path,
            "sysName": self.sys_name,
        }
        if self.matched_by:
            result["matchedBy"] = self.matched_by
        return result


@dataclass(frozen=True)
class Selection:
    """Which devices count (an HSMDevice spec.discovery, or hsm_device_info options)."""

    vendor_id: str | None = None
    product_id: str | None = None
    serial_number: str | None = None
    auto_discovery: bool = False
    device_type: str | None = None
    device_paths: tuple[str, ...] = ()
    include_hubs: bool = False

    @property
    def has_criteria(self) -> bool:
        return bool(self.vendor_id or self.product_id or self.auto_discovery or self.device_paths)

    @classmethod
    def from_hsm_device(cls, spec: dict[str, Any]) -> Selection:
        """From an HSMDevice spec (discovery.usb/devicePath/autoDiscovery, plus the deprecated top-level usb)."""
        discovery = spec.get("discovery") or {}
        usb = discovery.get("usb") or spec.get("usb") or {}
        if isinstance(usb, list):  # tolerate a list of selectors: the first one wins here
            usb = usb[0] if usb else {}
        path = discovery.get("devicePath") or spec.get("devicePath") or {}
        return cls(
            vendor_id=usb.get("vendorId") or None,
            product_id=usb.get("productId") or None,
            serial_number=usb.get("serialNumber") or None,
            auto_discovery=bool(discovery.get("autoDiscovery")),
            device_type=spec.get("deviceType") or None,
            device_paths=(str(path["path"]),) if isinstance(path, dict) and path.get("path") else (),
        )


def _read(directory: Path, name: str) -> str:
    try:
        return (directory / name).read_text(errors="replace").strip()
    except OSError:
        return ""


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def scan_sysfs(sysfs_root: str | os.PathLike[str] = LIVE_SYSFS) -> list[UsbDevice]:
    """USB devices under ``sysfs_root``/bus/usb/devices (symlinks to the real device directories)."""
    root = Path(sysfs_root)
    if not root.is_dir():
        raise FailedPrecondition(f"sysfs root {root} does not exist or is not a directory")
    devices_dir = root / "bus" / "usb" / "devices"
    if not devices_dir.is_dir():
        return []  # no USB subsystem on this host
    found: list[UsbDevice] = []
    for entry in sorted(devices_dir.iterdir(), key=lambda p: p.name):
        if ":" in entry.name:
            continue  # an interface (1-1.2:1.0), not a device
        real = entry.resolve()
        vendor = _read(real, "idVendor")
        product = _read(real, "idProduct")
        if not vendor or not product:
            continue
        found.append(
            UsbDevice(
                sys_name=entry.name,
                vendor_id=normalise_id(vendor),
                product_id=normalise_id(product),
                serial_number=_read(real, "serial"),
                manufacturer=_read(real, "manufacturer"),
                product=_read(real, "product"),
                busnum=_int(_read(real, "busnum")),
                devnum=_int(_read(real, "devnum")),
                device_class=_read(real, "bDeviceClass").lower() or "00",
                sys_path=str(real),
            )
        )
    return found


def scan_udev() -> list[UsbDevice]:
    """USB devices of the live system through libudev (same shape as ``scan_sysfs``)."""
    import pyudev

    found: list[UsbDevice] = []
    for device in pyudev.Context().list_devices(subsystem="usb", DEVTYPE="usb_device"):
        attributes = device.attributes

        def attr(name: str, attributes: Any = attributes) -> str:
            try:
                return str(attributes.asstring(name)).strip()
            except (KeyError, UnicodeDecodeError):
                return ""

        vendor, product = attr("idVendor"), attr("idProduct")
        if not vendor or not product:
            continue
        found.append(
            UsbDevice(
                sys_name=str(device.sys_name),
                vendor_id=normalise_id(vendor),
                product_id=normalise_id(product),
                serial_number=attr("serial"),
                manufacturer=attr("manufacturer"),
                product=attr("product"),
                busnum=_int(attr("busnum")),
                devnum=_int(attr("devnum")),
                device_class=attr("bDeviceClass").lower() or "00",
                sys_path=str(device.sys_path),
            )
        )
    return sorted(found, key=lambda d: d.sys_name)


def scan(sysfs_root: str | os.PathLike[str] = LIVE_SYSFS, *, use_udev: bool | None = None) -> list[UsbDevice]:
    """pyudev when ``sysfs_root`` is the live /sys (and pyudev/libudev work), the native walk otherwise."""
    live = os.path.realpath(sysfs_root) == LIVE_SYSFS
    if use_udev is None:
        use_udev = live
    if use_udev:
        if not live:
            raise InvalidArgument("pyudev can only scan the live /sys; use the sysfs walk for another root")
        try:
            return scan_udev()
        except (ImportError, OSError) as exc:
            log.info("pyudev unavailable, walking sysfs", extra={"reason": str(exc)})
    return scan_sysfs(sysfs_root)


def _normalised(value: str | None, what: str) -> str | None:
    if not value:
        return None
    text = value.strip().lower()
    text = text[2:] if text.startswith("0x") else text
    if len(text) > 4 or any(c not in "0123456789abcdef" for c in text):
        raise InvalidArgument(f"{what} {value!r} is not a 4-digit hexadecimal USB id")
    return text.zfill(4)


def _match_reason(
    device: UsbDevice, selection: Selection, vendor: str | None, product: str | None, ccid_plist: str | None
) -> str:
    """Why ``device`` is selected ("" when it is not). Hubs only when asked for by id or include_hubs."""
    ids_given = bool(vendor or product)
    if ids_given and vendor in (None, device.vendor_id) and product in (None, device.product_id):
        return "usb id"
    if device.is_hub and not selection.include_hubs:
        return ""
    if selection.auto_discovery:
        known = known_matches(device.vendor_id, device.product_id, selection.device_type, ccid_plist=ccid_plist)
        if known:
            return known
    paths = selection.device_paths
    if paths and device.device_path and any(fnmatch.fnmatchcase(device.device_path, p) for p in paths):
        return "device path"
    return "" if selection.has_criteria else "any"


def _path_glob(pattern: str, dev_root: str) -> list[str]:
    """Filesystem matches of a /dev glob, reported as /dev paths even when /dev is mounted elsewhere."""
    if not pattern.startswith("/"):
        raise InvalidArgument(f"device path {pattern!r} must be absolute")
    if dev_root.rstrip("/") != "/dev" and pattern.startswith("/dev/"):
        base = dev_root.rstrip("/")
        return sorted("/dev" + hit[len(base):] for hit in glob.glob(base + pattern[4:]))
    return sorted(glob.glob(pattern))


def discover(
    selection: Selection,
    sysfs_root: str | os.PathLike[str] = LIVE_SYSFS,
    *,
    dev_root: str = "/dev",
    ccid_plist: str | None = LIBCCID_PLIST,
    use_udev: bool | None = None,
    devices: Sequence[UsbDevice] | None = None,
) -> list[dict[str, Any]]:
    """Devices matching ``selection`` as dicts (``UsbDevice.to_dict`` shape), sorted by device path.

    Without any criteria every non-hub USB device is listed. Criteria are alternatives (a device
    matching the USB ids, the well-known/libccid lists or a path glob is in); ``serial_number``
    then narrows the result."""
    vendor = _normalised(selection.vendor_id, "vendor_id")
    product = _normalised(selection.product_id, "product_id")
    all_devices = list(devices) if devices is not None else scan(sysfs_root, use_udev=use_udev)
    results: dict[str, dict[str, Any]] = {}
    for device in all_devices:
        reason = _match_reason(device, selection, vendor, product, ccid_plist)
        if not reason:
            continue
        entry = device.to_dict()
        entry["matchedBy"] = reason
        results[device.device_path or device.sys_name] = entry
    for pattern in selection.device_paths:
        for path in _path_glob(pattern, dev_root):
            results.setdefault(path, {"devicePath": path, "serialNumber": "", "matchedBy": "device path"})
    chosen = list(results.values())
    if selection.serial_number:
        chosen = [d for d in chosen if d.get("serialNumber") == selection.serial_number]
    return sorted(chosen, key=lambda d: (d.get("devicePath", ""), d.get("sysName", "")))


def selection_from_options(
    vendor_id: str | None = None,
    product_id: str | None = None,
    serial_number: str | None = None,
    auto_discovery: bool = False,
    device_type: str | None = None,
    device_path: Iterable[str] | str | None = None,
    include_hubs: bool = False,
) -> Selection:
    """A Selection from flat options (the hsm_device_info module's arguments)."""
    paths: tuple[str, ...]
    if device_path is None:
        paths = ()
    elif isinstance(device_path, str):
        paths = (device_path,)
    else:
        paths = tuple(device_path)
    return Selection(
        vendor_id=vendor_id,
        product_id=product_id,
        serial_number=serial_number,
        auto_discovery=auto_discovery,
        device_type=device_type,
        device_paths=paths,
        include_hubs=include_hubs,
    )
