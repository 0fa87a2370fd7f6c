#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hsmd contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""hsm_device_info: find USB HSMs on the target host (adapter over hsmd.discovery.usb)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: hsm_device_info
short_description: Find USB hardware security modules on a host
version_added: "0.1.0"
description:
  - Lists the USB devices of the host that match a selection, the way the C(hsmd discovery) DaemonSet
    does for an HSMDevice.
  - Reads sysfs under O(sysfs_root). On the live C(/sys) it uses pyudev (libudev); for any other root
    (for example C(/host/sys) on Talos Linux, or a copy of a sysfs tree) it walks
    C(bus/usb/devices) itself.
  - Without any selection option every USB device that is not a hub is returned.
  - Selection options are alternatives (a device matching the USB ids, O(auto_discovery) or a
    O(device_path) glob is returned); O(serial_number) then narrows the result.
author:
  - hsmd contributors
options:
  sysfs_root:
    description:
      - Where the host's sysfs is mounted.
    type: path
    default: /sys
  vendor_id:
    description:
      - USB vendor id, four hexadecimal digits (C(20a0), C(0x20A0)).
    type: str
  product_id:
    description:
      - USB product id, four hexadecimal digits.
    type: str
  serial_number:
    description:
      - Return only the device with this USB serial number.
    type: str
  auto_discovery:
    description:
      - Match the built-in table of well-known HSMs (Pico HSM C(2e8a:10fd) and C(20a0:4230),
        SmartCard-HSM / Nitrokey HSM C(04e6:5816) and C(20a0:4230), YubiHSM 2 C(1050:0030)), and for
        CCID device types the readers listed in libccid's C(Info.plist) (O(ccid_plist)).
    type: bool
    default: false
  device_type:
    description:
      - Restrict O(auto_discovery) to the devices of one HSMDevice type.
      - V(SmartCard-HSM) and V(Generic) (or no type) also accept every libccid-supported reader.
    type: str
    choices: [PicoHSM, SmartCard-HSM, YubiHSM, Generic, SoftHSM]
  device_path:
    description:
      - Device node globs such as C(/dev/bus/usb/001/*) or C(/dev/ttyUSB*). USB devices whose
        C(/dev/bus/usb/BBB/DDD) node matches are returned with their USB details; other existing
        nodes matching a glob are returned with only RV(devices[].devicePath).
    type: list
    elements: str
    default: []
  dev_root:
    description:
      - Where the host's C(/dev) is mounted, for O(device_path) globs (C(/host/dev) in a pod).
    type: path
    default: /dev
  include_hubs:
    description:
      - Also list USB hubs when no selection option is given.
    type: bool
    default: false
  ccid_plist:
    description:
      - libccid's reader list. An empty string disables it.
    type: str
    default: /usr/lib/pcsc/drivers/ifd-ccid.bundle/Contents/Info.plist
  use_udev:
    description:
      - Force (V(true)) or forbid (V(false)) pyudev. By default pyudev is used exactly when O(sysfs_root)
        is the live C(/sys).
    type: bool
requirements:
  - hsmd (the Python package of this project) on the managed host
  - pyudev (only for the live C(/sys))
attributes:
  check_mode:
    support: full
notes:
  - The module reads only; it never changes the host.
seealso:
  - module: hsm.secrets.hsm_pool
"""

EXAMPLES = r"""
- name: List every USB device that is not a hub
  hsm.secrets.hsm_device_info:
  register: usb

- name: Find Pico HSMs on a Talos node (host sysfs mounted at /host/sys)
  hsm.secrets.hsm_device_info:
    sysfs_root: /host/sys
    auto_discovery: true
    device_type: PicoHSM
  register: picos

- name: Find one SmartCard-HSM by serial
  hsm.secrets.hsm_device_info:
    vendor_id: "04e6"
    product_id: "5816"
    serial_number: DENK0102345
  register: hsm

- name: Fail when no HSM is plugged in
  ansible.builtin.assert:
    that: hsm.devices | length == 1
"""

RETURN = r"""
devices:
  description: The matching devices, sorted by device node.
  returned: always
  type: list
  elements: dict
  contains:
    vendorId:
      description: USB vendor id (lower-case hex).
      type: str
      sample: 20a0
    productId:
      description: USB product id (lower-case hex).
      type: str
      sample: "4230"
    serialNumber:
      description: USB serial number (empty when the device has none).
      type: str
      sample: DC6A33145E23A42A
    manufacturer:
      description: USB manufacturer string.
      type: str
      sample: Nitrokey
    product:
      description: USB product string.
      type: str
      sample: Nitrokey HSM
    busnum:
      description: USB bus number.
      type: int
      sample: 1
    devnum:
      description: Device number on the bus.
      type: int
      sample: 15
    devicePath:
      description: Device node, C(/dev/bus/usb/BBB/DDD) for USB devices.
      type: str
      sample: /dev/bus/usb/001/015
    sysName:
      description: Kernel name of the device (sysfs directory).
      type: str
      sample: 1-1.2
    matchedBy:
      description: Why the device was selected (C(usb id), C(well-known ...), C(libccid supported reader),
        C(device path) or C(any)).
      type: str
      sample: well-known Nitrokey HSM 2
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hsm.secrets.plugins.module_utils._hsmd import import_hsmd, require_hsmd, run


def main():
    module = AnsibleModule(
        argument_spec=dict(
            sysfs_root=dict(type="path", default="/sys"),
            vendor_id=dict(type="str"),
            product_id=dict(type="str"),
            serial_number=dict(type="str"),
            auto_discovery=dict(type="bool", default=False),
            device_type=dict(type="str", choices=["PicoHSM", "SmartCard-HSM", "YubiHSM", "Generic", "SoftHSM"]),
            device_path=dict(type="list", elements="str", default=[]),
            dev_root=dict(type="path", default="/dev"),
            include_hubs=dict(type="bool", default=False),
            ccid_plist=dict(type="str", default="/usr/lib/pcsc/drivers/ifd-ccid.bundle/Contents/Info.plist"),
            use_udev=dict(type="bool"),
        ),
        supports_check_mode=True,
    )
    require_hsmd(module)
    usb = import_hsmd("discovery.usb")
    p = module.params
    selection = run(
        module, usb.selection_from_options,
        vendor_id=p["vendor_id"], product_id=p["product_id"], serial_number=p["serial_number"],
        auto_discovery=p["auto_discovery"], device_type=p["device_type"], device_path=p["device_path"],
        include_hubs=p["include_hubs"],
    )
    devices = run(
        module, usb.discover, selection, p["sysfs_root"],
        dev_root=p["dev_root"], ccid_plist=p["ccid_plist"] or None, use_udev=p["use_udev"],
    )
    module.exit_json(changed=False, devices=devices)


if __name__ == "__main__":
    main()
