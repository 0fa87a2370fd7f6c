#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hsmd contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""k8s_status: operator-sdk's operator_sdk.util.k8s_status, argument-compatible (adapter over hsmd.status/kube)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: k8s_status
short_description: Set the status and conditions of a Kubernetes resource
version_added: "0.1.0"
description:
  - Sets fields of the C(status) subresource of any resource that has one, typically a custom resource
    reconciled by an Ansible role. Argument-compatible with operator-sdk's C(operator_sdk.util.k8s_status), so
    ansible-operator roles run unchanged (use C(hsm.secrets.k8s_status) or a C(collections:) search path).
  - O(status) is merged into the current status like a JSON merge patch (a V(null) value removes a key);
    O(conditions) are merged by C(type).
  - C(lastTransitionTime) of a condition changes only when its C(status) changes (unless given explicitly).
  - Nothing is written when the result equals the current status (RV(changed) is V(false)); a concurrent
    update (HTTP 409) is retried on the fresh object.
author:
  - hsmd contributors
options:
  api_version:
    description:
      - API version of the resource, e.g. C(hsm.j5t.io/v1alpha1).
    type: str
    required: true
    aliases: [version]
  kind:
    description:
      - Kind of the resource (its plural, singular or short name also work).
    type: str
    required: true
  name:
    description:
      - Name of the resource.
    type: str
    required: true
  namespace:
    description:
      - Namespace of the resource (required for namespaced kinds).
    type: str
  status:
    description:
      - Key/value pairs to set on the status. One of O(status) and O(conditions) is required.
      - May contain C(conditions) when O(conditions) is not given.
    type: dict
  conditions:
    description:
      - Conditions to set on C(status.conditions), merged with the existing ones by C(type)
        (replacing the list with O(replace_lists) or O(replace)).
      - Validated like the Kubernetes API conventions - C(type) and C(status) required, C(reason) one CamelCase word,
        times in RFC 3339.
    type: list
    elements: dict
    suboptions:
      type:
        description: Condition type, e.g. C(Ready).
        type: str
        required: true
      status:
        description: Condition status.
        type: str
        required: true
        choices: ["True", "False", "Unknown"]
      reason:
        description: One CamelCase word saying why.
        type: str
      message:
        description: Human-readable details (never put secret values here).
        type: str
      lastHeartbeatTime:
        description: RFC 3339 time of the last probe.
        type: str
      lastTransitionTime:
        description: RFC 3339 time of the last status change; by default kept while the status is unchanged.
        type: str
      observedGeneration:
        description: C(metadata.generation) this condition describes.
        type: int
  replace:
    description:
      - Replace the whole status by O(status) and O(conditions) instead of merging.
    type: bool
    default: false
    aliases: [force]
  replace_lists:
    description:
      - Replace C(status.conditions) by O(conditions) instead of merging by C(type). Other lists always
        replace (JSON merge patch semantics).
    type: bool
    default: false
extends_documentation_fragment:
  - hsm.secrets.k8s_auth
requirements:
  - hsmd (the Python package of this project)
  - kubernetes (the Python client)
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
seealso:
  - module: kubernetes.core.k8s
"""

EXAMPLES = r"""
- name: Report the pool's phase and a Ready condition
  hsm.secrets.k8s_status:
    api_version: hsm.j5t.io/v1alpha1
    kind: HSMPool
    name: "{{ ansible_operator_meta.name }}"
    namespace: "{{ ansible_operator_meta.namespace }}"
    status:
      phase: Ready
    conditions:
      - type: Ready
        status: "True"
        reason: AllReported
        message: 2 discovery pods reported
        observedGeneration: "{{ _hsm_j5t_io_hsmpool.metadata.generation }}"

- name: Remove a status field
  hsm.secrets.k8s_status:
    api_version: hsm.j5t.io/v1alpha1
    kind: HSMSecret
    name: db
    namespace: team-a
    status:
      lastError: null

- name: Replace the status entirely
  hsm.secrets.k8s_status:
    api_version: apps.example.com/v1alpha1
    kind: TestCR
    name: my-test
    namespace: testing
    force: true
    status:
      hello: world
"""

RETURN = r"""
result:
  description: The object after the update (or as it would be, in check mode; unchanged otherwise).
  returned: success
  type: complex
  contains:
    apiVersion:
      description: API version of the object.
      type: str
    kind:
      description: Kind of the object.
      type: str
    metadata:
      description: Object metadata.
      type: dict
    spec:
      description: Object spec.
      type: dict
    status:
      description: Object status.
      type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hsm.secrets.plugins.module_utils._hsmd import (
    import_hsmd,
    kube_argument_spec,
    kube_client_from_params,
    require_hsmd,
    run,
)

CONDITION_OPTIONS = dict(
    type=dict(type="str", required=True),
    status=dict(type="str", required=True, choices=["True", "False", "Unknown"]),
    reason=dict(type="str"),
    message=dict(type="str"),
    lastHeartbeatTime=dict(type="str"),
    lastTransitionTime=dict(type="str"),
    observedGeneration=dict(type="int"),
)


def main():
    argument_spec = dict(
        api_version=dict(type="str", required=True, aliases=["version"]),
        kind=dict(type="str", required=True),
        name=dict(type="str", required=True),
        namespace=dict(type="str"),
        status=dict(type="dict"),
        conditions=dict(type="list", elements="dict", options=CONDITION_OPTIONS),
        replace=dict(type="bool", default=False, aliases=["force"]),
        replace_lists=dict(type="bool", default=False),
    )
    argument_spec.update(kube_argument_spec())
    module = AnsibleModule(
        argument_spec=argument_spec,
        supports_check_mode=True,
        required_one_of=[("status", "conditions")],
    )
    require_hsmd(module)
    p = module.params
    kube = import_hsmd("kube")
    conditions = [{k: v for k, v in c.items() if v is not None} for c in p["conditions"] or []]
    api = kube_client_from_params(module)
    update = run(
        module, kube.update_status, api, p["api_version"], p["kind"], p["name"], p["namespace"],
        status=p["status"], conditions=conditions or None, replace=p["replace"],
        replace_lists=p["replace_lists"], check_mode=module.check_mode,
    )
    result = dict(changed=update.changed, result=update.after)
    if module._diff:
        result["diff"] = dict(before=dict(status=update.before.get("status") or {}),
                              after=dict(status=update.after.get("status") or {}))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
