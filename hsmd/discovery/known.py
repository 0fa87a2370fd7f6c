"""What counts as an HSM when a user asks for ``autoDiscovery``.

Two sources: a small built-in table of HSMs we know by USB id (with the HSMDevice deviceType
they belong to), and, for CCID-class tokens, the reader list that libccid ships in its
Info.plist (parallel arrays ifdVendorID / ifdProductID / ifdFriendlyName), read when present.
"""

from __future__ import annotations

import logging
import plistlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from xml.parsers.expat import ExpatError

LIBCCID_PLIST = "/usr/lib/pcsc/drivers/ifd-ccid.bundle/Contents/Info.plist"

log = logging.getLogger("hsmd.discovery")


@dataclass(frozen=True)
class KnownDevice:
    vendor_id: str
    product_id: str
    name: str
    device_type: str  # HSMDevice spec.deviceType
    ccid: bool = True  # a CCID smart-card device (reached through pcscd)


WELL_KNOWN: tuple[KnownDevice, ...] = (
    KnownDevice("2e8a", "10fd", "Pico HSM", "PicoHSM"),
    KnownDevice("20a0", "4230", "Pico HSM (Nitrokey HSM id)", "PicoHSM"),
    KnownDevice("20a0", "4230", "Nitrokey HSM 2", "SmartCard-HSM"),
    KnownDevice("04e6", "5816", "SmartCard-HSM (Identiv uTrust token)", "SmartCard-HSM"),
    KnownDevice("1050", "0030", "YubiHSM 2", "YubiHSM", ccid=False),
)

# Device types for which any CCID device libccid supports is a candidate (a PicoHSM or YubiHSM
# request stays with the exact ids of the table).
CCID_DEVICE_TYPES = frozenset({"SmartCard-HSM", "Generic"})


def normalise_id(value: str | int) -> str:
    """'0x20A0', '20a0', 8352 -> '20a0'."""
    if isinstance(value, int):
        return f"{value:04x}"
    text = value.strip().lower()
    text = text[2:] if text.startswith("0x") else text
    return text.zfill(4)


@lru_cache(maxsize=8)
def libccid_ids(plist_path: str = LIBCCID_PLIST) -> frozenset[tuple[str, str]]:
    """(vendor, product) pairs libccid supports; empty when the file is absent or unreadable."""
    path = Path(plist_path)
    if not path.exists():
        return frozenset()
    try:
        with path.open("rb") as handle:
            data = plistlib.load(handle)
        vendors, products = data["ifdVendorID"], data["ifdProductID"]
    except (OSError, ValueError, KeyError, TypeError, ExpatError, plistlib.InvalidFileException) as exc:
        log.warning("ignoring unreadable libccid Info.plist", extra={"path": plist_path, "reason": str(exc)})
        return frozenset()
    if not isinstance(vendors, list) or not isinstance(products, list) or len(vendors) != len(products):
        log.warning("ignoring libccid Info.plist with mismatched id arrays", extra={"path": plist_path})
        return frozenset()
    pairs = set()
    for vendor, product in zip(vendors, products, strict=True):
        try:
            pairs.add((normalise_id(str(vendor)), normalise_id(str(product))))
        except (TypeError, ValueError):
            continue
    return frozenset(pairs)


def known_matches(
    vendor_id: str, product_id: str, device_type: str | None = None, *, ccid_plist: str | None = LIBCCID_PLIST
) -> str | None:
    """Why (vendor, product) is an auto-discovered HSM for ``device_type`` (None: any type), or None."""
    vendor, product = normalise_id(vendor_id), normalise_id(product_id)
    for known in WELL_KNOWN:
        if (known.vendor_id, known.product_id) == (vendor, product) and device_type in (None, known.device_type):
            return f"well-known {known.name}"
    ccid_type = device_type is None or device_type in CCID_DEVICE_TYPES
    if ccid_plist and ccid_type and (vendor, product) in libccid_ids(ccid_plist):
        return "libccid supported reader"
    return None
