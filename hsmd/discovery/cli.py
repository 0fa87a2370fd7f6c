"""``hsmd discovery``: the per-node daemon (a DaemonSet pod) that reports the HSMs on its node.

Every interval it lists the HSMDevices, keeps those whose nodeSelector matches its node, scans
USB once (sysfs walk under --sysfs-root, /host/sys on Talos; pyudev on the live /sys) and writes
the result into its OWN pod's ``hsm.j5t.io/device-report`` annotation (merge patch). Pods never
write a shared object, so discovery pods cannot race each other; the hsm_pool role aggregates
the annotations into the HSMPool status. Without a pod name (a local run) the report goes to
stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes.client.exceptions import ApiException

from hsmd import kube
from hsmd.discovery.known import LIBCCID_PLIST
from hsmd.discovery.usb import LIVE_SYSFS, Selection, UsbDevice, discover, scan
from hsmd.errors import HsmdError
from hsmd.pool import DEVICE_REPORT_ANNOTATION, build_device_report
from hsmd.service import setup_logging, shutdown_event, write_ready_file

log = logging.getLogger("hsmd.discovery")


def node_matches(node_selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """An HSMDevice's nodeSelector (all labels equal) against this node's labels."""
    return all(labels.get(key) == value for key, value in (node_selector or {}).items())


def devices_for_node(
    hsm_devices: Sequence[Mapping[str, Any]],
    node_labels: Mapping[str, str],
    usb_devices: Sequence[UsbDevice],
    *,
    dev_root: str = "/dev",
    ccid_plist: str | None = LIBCCID_PLIST,
) -> tuple[list[str], list[dict[str, Any]]]:
    """(names of the HSMDevices this node serves, report entries for the devices found for them)."""
    names: list[str] = []
    entries: list[dict[str, Any]] = []
    for hsm_device in sorted(hsm_devices, key=lambda d: (d["metadata"].get("namespace", ""), d["metadata"]["name"])):
        meta, spec = hsm_device["metadata"], hsm_device.get("spec") or {}
        if not node_matches(spec.get("nodeSelector"), node_labels):
            continue
        names.append(meta["name"])
        found: list[dict[str, Any]]
        if spec.get("deviceType") == "SoftHSM":
            # A development token has no USB device: report the configured token as one virtual device.
            label = (spec.get("pkcs11") or {}).get("tokenLabel") or meta["name"]
            found = [{"devicePath": "", "serialNumber": f"softhsm-{label}", "product": "SoftHSM2 token"}]
        else:
            selection = Selection.from_hsm_device(spec)
            if not selection.has_criteria:
                log.warning("HSMDevice has no discovery criteria", extra={"hsmDevice": meta["name"]})
                continue
            found = discover(selection, dev_root=dev_root, ccid_plist=ccid_plist, devices=usb_devices)
        limit = int(spec.get("maxDevices") or 10)
        for device in found[:limit]:
            entry = {k: v for k, v in device.items() if k not in ("busnum", "devnum", "sysName", "matchedBy")}
            entry.update(hsmDeviceName=meta["name"], hsmDeviceNamespace=meta.get("namespace", ""),
                         deviceType=spec.get("deviceType", ""))
            entries.append(entry)
    return names, entries


def _list_hsm_devices(api: Any, namespaces: Sequence[str]) -> list[dict[str, Any]]:
    paths = [f"/apis/{kube.API_VERSION}/namespaces/{ns}/hsmdevices" for ns in namespaces] or [
        f"/apis/{kube.API_VERSION}/hsmdevices"
    ]
    items: list[dict[str, Any]] = []
    for path in paths:
        try:
            items.extend(kube.request(api, "GET", path).get("items", []))
        except ApiException as exc:
            raise kube.api_error(exc, "list HSMDevices") from exc
    return items


def _node_labels(api: Any, node: str) -> dict[str, str]:
    try:
        found = kube.request(api, "GET", f"/api/v1/nodes/{node}")
    except ApiException as exc:
        # Without access to the Node object only HSMDevices without a nodeSelector match.
        log.warning("cannot read node labels", extra={"node": node, "status": exc.status})
        return {"kubernetes.io/hostname": node}
    labels = dict((found.get("metadata") or {}).get("labels") or {})
    labels.setdefault("kubernetes.io/hostname", node)
    return labels


def report_once(args: argparse.Namespace, api: Any) -> bool:
    """One scan and one annotation write; False when something failed (reported in the annotation)."""
    node = args.node_name
    names: list[str] = []
    entries: list[dict[str, Any]] = []
    status, error = "completed", ""
    try:
        hsm_devices = _list_hsm_devices(api, args.namespace) if api is not None else []
        labels = _node_labels(api, node) if api is not None else {"kubernetes.io/hostname": node}
        usb = scan(args.sysfs_root)
        names, entries = devices_for_node(hsm_devices, labels, usb, dev_root=args.dev_root)
    except HsmdError as exc:
        status, error = "error", str(exc)
        log.error("discovery failed", extra={"code": exc.code, "reason": str(exc)})
    report = build_device_report(",".join(names), node, entries, status=status, error=error)
    if not args.pod_name:
        print(json.dumps(json.loads(report), indent=2, sort_keys=True), flush=True)
        return status == "completed"
    try:
        kube.patch_pod_annotations(api, args.pod_namespace, args.pod_name, {DEVICE_REPORT_ANNOTATION: report})
    except HsmdError as exc:
        log.error("cannot write the device report", extra={"code": exc.code, "reason": str(exc)})
        return False
    log.info("reported", extra={"devices": len(entries), "hsmDevices": names, "status": status})
    return status == "completed"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hsmd discovery", description=__doc__.split("\n\n")[0])
    parser.add_argument("--once", action="store_true", help="scan and report once, then exit (1 on failure)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between reports (default 30)")
    parser.add_argument("--sysfs-root", default=os.environ.get("HSMD_SYSFS_ROOT", LIVE_SYSFS),
                        help="sysfs mount to scan (default /sys; /host/sys on Talos)")
    parser.add_argument("--dev-root", default=os.environ.get("HSMD_DEV_ROOT", "/dev"),
                        help="where the host's /dev is mounted, for devicePath globs (default /dev)")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    parser.add_argument("--namespace", action="append", default=[],
                        help="namespace of the HSMDevices to serve (repeatable; default all namespaces)")
    parser.add_argument("--node-name", default=os.environ.get("NODE_NAME") or socket.gethostname())
    parser.add_argument("--pod-name", default=os.environ.get("POD_NAME", ""),
                        help="this pod (default $POD_NAME); without it the report is printed")
    parser.add_argument("--pod-namespace", default=os.environ.get("POD_NAMESPACE", ""))
    parser.add_argument("--no-kubernetes", action="store_true",
                        help="scan without the API: report every USB device (local diagnostics)")
    parser.add_argument("--ready-file", help="write a JSON ready file after the first report")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    if args.interval <= 0:
        parser.error("--interval must be positive")
    if args.pod_name and not args.pod_namespace:
        parser.error("--pod-namespace (or $POD_NAMESPACE) is required with a pod name")
    if args.pod_name and args.no_kubernetes:
        parser.error("--no-kubernetes cannot write a pod annotation")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    setup_logging("discovery", args.log_level)
    if args.no_kubernetes:
        # Diagnostics: list what the node has, without HSMDevices.
        try:
            print(json.dumps([d.to_dict() for d in scan(args.sysfs_root)], indent=2), flush=True)
        except HsmdError as exc:
            log.error("scan failed", extra={"code": exc.code, "reason": str(exc)})
            return 1
        return 0
    try:
        api = kube.api_client(args.kubeconfig)
    except HsmdError as exc:
        log.error("no Kubernetes API", extra={"reason": str(exc)})
        return 2
    stop = shutdown_event()
    first = True
    try:
        while True:
            ok = report_once(args, api)
            if first:
                write_ready_file(args.ready_file, {"node": args.node_name, "pod": args.pod_name})
                first = False
            if args.once:
                return 0 if ok else 1
            if stop.wait(args.interval):
                return 0
    finally:
        api.close()  # type: ignore[no-untyped-call]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
