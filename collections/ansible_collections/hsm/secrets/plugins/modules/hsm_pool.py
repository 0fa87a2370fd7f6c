#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hsmd contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""hsm_pool: aggregate discovery reports into HSMPool status (adapter over hsmd.pool / hsmd.pool_status)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: hsm_pool
short_description: Aggregate HSM discovery reports into an HSMPool status
version_added: "0.1.0"
description:
  - Computes the status of an C(HSMPool) (C(hsm.j5t.io/v1alpha1)) from the discovery pods' C(hsm.j5t.io/device-report)
    annotations - phase C(Pending), C(Aggregating), C(Ready), C(Partial) or C(Error), totals, the reporting
    pods with C(fresh) (report younger than the grace period), and the devices across the cluster de-duplicated
    by serial number. A device seen within the grace period stays available even when the latest report lacks it.
  - A pod whose annotation is not valid JSON is listed with C(discoveryStatus=error); it never fails the module.
  - Pure mode (no O(namespace)) - give O(pods) and optionally O(previous_status); nothing is read or written and
    RV(changed) is V(false). O(name), if given, only names the agents in RV(agents).
  - Pool mode (O(name) and O(namespace)) - reads the HSMPool (its C(hsmDeviceRefs), C(gracePeriod) and
    previous status), lists the discovery pods unless O(pods) is given, and writes the status subresource when it
    differs (RV(changed)). Re-aggregating unchanged reports changes nothing.
author:
  - hsmd contributors
options:
  pods:
    description:
      - Discovery pods as returned by M(kubernetes.core.k8s_info) (C(metadata.name), C(metadata.annotations),
        C(spec.nodeName)). Pods without the annotation have not reported yet.
      - Required without O(name); in pool mode the pods are listed with O(discovery_label_selector) when omitted.
    type: list
    elements: dict
  expected_pods:
    description:
      - How many discovery pods should report. Defaults to the C(desiredNumberScheduled) of
        O(discovery_daemonset) when that exists, else to the number of pods.
    type: int
  discovery_daemonset:
    description:
      - Name of the discovery DaemonSet (in O(discovery_namespace)), for the default of O(expected_pods).
    type: str
  grace_period:
    description:
      - How long a report or a device stays valid, as a Go duration (C(30s), C(5m), C(1h30m)).
      - In pool mode defaults to the pool's C(spec.gracePeriod); otherwise C(5m).
    type: str
  now:
    description:
      - The current time (RFC 3339). For reproducible runs and tests; defaults to the clock.
    type: str
  previous_status:
    description:
      - The pool's current status (pure mode). Devices in it stay available within the grace period.
    type: dict
  hsm_devices:
    description:
      - Keep only devices reported for these HSMDevice names (pure mode; pool mode uses C(spec.hsmDeviceRefs)).
    type: list
    elements: str
  name:
    description:
      - Name of the HSMPool to aggregate and update (pool mode, with O(namespace)).
    type: str
  namespace:
    description:
      - Namespace of the HSMPool. Giving it selects pool mode; it also filters devices by HSMDevice namespace.
    type: str
  discovery_namespace:
    description:
      - Namespace of the discovery pods; defaults to O(namespace).
    type: str
  discovery_label_selector:
    description:
      - Label selector of the discovery pods.
    type: str
    default: app.kubernetes.io/component=discovery
extends_documentation_fragment:
  - hsm.secrets.k8s_auth
requirements:
  - hsmd (the Python package of this project)
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
seealso:
  - module: hsm.secrets.hsm_device_info
  - module: hsm.secrets.k8s_status
"""

EXAMPLES = r"""
- name: Aggregate and write the pool status (the hsm_pool role does this)
  hsm.secrets.hsm_pool:
    name: pico-hsm-pool
    namespace: hsm-system
    discovery_namespace: hsm-system
    expected_pods: 3
  register: pool

- name: Ensure one agent per available device
  ansible.builtin.debug:
    msg: "{{ item.name }} on {{ item.nodeName }}"
  loop: "{{ pool.agents }}"

- name: Pure aggregation of pods fetched elsewhere
  hsm.secrets.hsm_pool:
    pods: "{{ discovery.resources }}"
    expected_pods: 2
    grace_period: 5m
    previous_status: "{{ current_pool.status | default({}) }}"
  register: computed
"""

RETURN = r"""
status:
  description: The HSMPool status (the same shape as the CRD's C(status)).
  returned: always
  type: dict
  contains:
    phase:
      description: C(Pending), C(Aggregating), C(Ready), C(Partial) or C(Error).
      type: str
      sample: Ready
    totalDevices:
      description: Devices known (unique serial numbers).
      type: int
      sample: 2
    availableDevices:
      description: Devices seen within the grace period.
      type: int
      sample: 2
    expectedPods:
      description: Discovery pods expected to report.
      type: int
      sample: 2
    reportingPods:
      description: One entry per reporting pod (podName, nodeName, devicesFound, lastReportTime, discoveryStatus,
        fresh, error).
      type: list
      elements: dict
    aggregatedDevices:
      description: Devices across all reports (devicePath, nodeName, serialNumber, available, lastSeen, deviceInfo).
      type: list
      elements: dict
    lastAggregationTime:
      description: When the result last changed.
      type: str
      sample: "2025-08-19T10:00:00Z"
    conditions:
      description: The C(Ready) condition (True only in phase Ready).
      type: list
      elements: dict
agents:
  description:
    - One agent per available device serial, pinned to its node - what the hsm_pool role deploys.
    - In pool mode each entry also carries the agent's container C(args), C(deviceType), C(pinSecretName),
      C(pinSecretKey) and C(usb) (whether C(/dev/bus/usb) must be mounted), from the device's HSMDevice.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Deployment name (a DNS label, stable per pool and serial).
      type: str
      sample: hsm-agent-pico-hsm-pool-dc6a33145e23a42a
    serialNumber:
      description: Device serial number.
      type: str
    nodeName:
      description: Node the device is attached to.
      type: str
    devicePath:
      description: Device node on that node.
      type: str
    hsmDeviceName:
      description: HSMDevice the device was discovered for.
      type: str
stale_agents:
  description: Agent Deployments of the pool (label C(hsm.j5t.io/pool)) whose device is no longer available;
    the hsm_pool role deletes them. Empty in pure mode.
  returned: always
  type: list
  elements: str
pool_uid:
  description: UID of the HSMPool (for ownerReferences of the agents).
  returned: pool mode
  type: str
problems:
  description: HSMDevices whose devices get no agent, and why (also in the pool's C(AgentsPlanned) condition).
  returned: always
  type: list
  elements: dict
  sample: [{"hsmDeviceName": "pico", "message": "spec.pkcs11.pinSecret (name, key) is not set"}]
pods:
  description: Number of discovery pods considered.
  returned: always
  type: int
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hsm.secrets.plugins.module_utils._hsmd import (
    import_hsmd,
    kube_argument_spec,
    kube_client_from_params,
    require_hsmd,
    run,
)


def main():
    argument_spec = dict(
        pods=dict(type="list", elements="dict"),
        expected_pods=dict(type="int"),
        discovery_daemonset=dict(type="str"),
        grace_period=dict(type="str"),
        now=dict(type="str"),
        previous_status=dict(type="dict"),
        hsm_devices=dict(type="list", elements="str"),
        name=dict(type="str"),
        namespace=dict(type="str"),
        discovery_namespace=dict(type="str"),
        discovery_label_selector=dict(type="str", default="app.kubernetes.io/component=discovery"),
    )
    argument_spec.update(kube_argument_spec())
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        required_by={"namespace": ("name",)},
        required_one_of=[("pods", "namespace")],
        mutually_exclusive=[("previous_status", "namespace"), ("hsm_devices", "namespace")],
    )
    require_hsmd(module)
    p = module.params
    if p["namespace"]:
        pool_status = import_hsmd("pool_status")
        api = kube_client_from_params(module)
        result = run(
            module, pool_status.refresh, api, p["namespace"], p["name"],
            pods=p["pods"], discovery_namespace=p["discovery_namespace"],
            label_selector=p["discovery_label_selector"], expected_pods=p["expected_pods"],
            daemonset=p["discovery_daemonset"],
            grace_period=p["grace_period"], now=p["now"], check_mode=module.check_mode,
        )
        module.exit_json(changed=result.changed, status=result.status, agents=result.agents,
                         stale_agents=result.stale_agents, problems=result.problems, pods=result.pods,
                         pool_uid=result.uid)
    pool = import_hsmd("pool")
    pods = p["pods"] or []
    status = run(
        module, pool.aggregate, pods,
        len(pods) if p["expected_pods"] is None else p["expected_pods"],
        p["grace_period"] or pool.DEFAULT_GRACE_PERIOD, p["now"], p["previous_status"],
        hsm_devices=p["hsm_devices"],
    )
    agents = pool.agent_plan(p["name"] or "pool", status)
    module.exit_json(changed=False, status=status, agents=agents, stale_agents=[], problems=[], pods=len(pods))


if __name__ == "__main__":
    main()
