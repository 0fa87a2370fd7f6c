"""USB HSM discovery: the sysfs/pyudev scan and selection (``usb``), the well-known device table
(``known``) and the ``hsmd discovery`` daemon that reports into its pod annotation (``cli``)."""

from __future__ import annotations

from hsmd.discovery.usb import Selection, UsbDevice, discover, scan, scan_sysfs, selection_from_options

__all__ = ["Selection", "UsbDevice", "discover", "scan", "scan_sysfs", "selection_from_options"]
