#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hsmd contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: hsm_secret_sync
short_description: Replicate HSM secrets into Kubernetes Secrets for a batch of HSMSecret objects
version_added: "0.1.0"
description:
  - The hot path of the operator, one invocation per batch. For each HSMSecret in O(hsmsecrets) it checks the
    HSM path against the access policy, reads the HSM data through the agent (batch RPCs for the whole
    batch), builds the Secret (labels, annotations, controller ownerReference to the HSMSecret) and creates
    or patches only the Secrets that differ.
  - A Secret that the HSMSecret does not control is never changed or deleted (Ready=False, reason C(Conflict)).
    A path the policy does not grant gets no Secret (reason C(Forbidden)). A missing HSM source keeps the
    Secret (reason C(SourceMissing)) unless C(spec.deletionPolicy=Delete). An unreachable agent never deletes
    anything (reason C(Unavailable)).
  - With O(state=absent) it is the finalizer. It deletes the Secrets each HSMSecret controls and nothing else;
    HSM data is never touched, and no agent is needed.
  - One agent connection and one Kubernetes client per invocation; the decisions live in C(hsmd.render) and
    C(hsmd.sync), which the operator also calls directly.
extends_documentation_fragment:
  - hsm.secrets.backend
  - hsm.secrets.k8s_auth
options:
  hsmsecrets:
    description:
      - HSMSecret objects as the API returns them (with C(metadata.uid), C(metadata.generation), C(spec) and
        the current C(status)), for example the operator's C(hsm_batch) or C([_hsm_j5t_io_hsmsecret]).
      - Objects that are being deleted are skipped by O(state=present).
    type: list
    elements: dict
    required: true
    aliases: [hsm_batch]
  agents:
    description:
      - Several agents that mirror one pool (each device of an HSMPool has its own). Every path is read from
        all of them and the answers are resolved (majority with three or more, else the newest version).
        May be combined with O(agent). A secret reported absent while some agent did not answer counts as
        C(Unavailable), never as C(SourceMissing).
    type: list
    elements: str
  state:
    description:
      - V(present) syncs; V(absent) removes the Secrets the objects control (finalizer).
    type: str
    choices: [present, absent]
    default: present
  policy_file:
    description:
      - Access policy file (rules of namespaces, paths and verbs; see the hsmd documentation). Without
        O(policy_file) and O(policy), an HSMSecret in namespace N may sync only paths C(N/**).
    type: path
  policy:
    description:
      - The access policy inline, as a mapping with a C(rules) list. Mutually exclusive with O(policy_file).
    type: dict
  write_status:
    description:
      - Write each object's status (C(syncStatus), checksums, C(lastSyncTime), C(lastError), C(secretRef),
        C(Ready) condition) through the status subresource. Unchanged statuses are not written.
    type: bool
    default: false
  emit_events:
    description:
      - Create Events (C(Synced), C(SyncFailed), C(Forbidden), C(Conflict), C(SourceMissing)) on the objects.
        Only changes and transitions produce Events. Defaults to the value of O(write_status).
    type: bool
  fail_on_temporary:
    description:
      - Fail the task when an object could not be synced for a reason that a retry may fix (C(Unavailable),
        C(SyncFailed)), after statuses are written, so a runner that retries failed runs retries it.
        Permanent reasons (C(Forbidden), C(Conflict), C(InvalidSpec), C(SourceMissing)) never fail the task.
    type: bool
    default: false
  max_workers:
    description:
      - Kubernetes requests in flight at once.
    type: int
    default: 8
notes:
  - O(agent), O(agents) or O(pkcs11_library) is needed for O(state=present).
attributes:
  check_mode:
    support: full
    description: Decides everything (reading Secrets that exist) and reports it; writes nothing.
  diff_mode:
    support: full
    description: Per changed Secret, its key names and checksum before and after; never values.
author:
  - hsmd contributors
"""

EXAMPLES = r"""
- name: Sync the batch the operator passed (or the one CR of an ansible-operator run)
  hsm.secrets.hsm_secret_sync:
    hsmsecrets: "{{ hsm_batch | default([_hsm_j5t_io_hsmsecret]) }}"
    agent: hsmd-agent.hsm-system.svc:9090
    agent_ca_file: /etc/hsmd/ca.pem
    agent_cert_file: /etc/hsmd/tls.crt
    agent_key_file: /etc/hsmd/tls.key
    policy_file: /etc/hsmd/policy.yaml
    write_status: true

- name: Finalizer - remove the Secrets of deleted HSMSecrets (HSM data untouched)
  hsm.secrets.hsm_secret_sync:
    hsmsecrets: "{{ hsm_batch }}"
    state: absent
"""

RETURN = r"""
results:
  description: One entry per object, in the order given. No values anywhere.
  returned: always
  type: list
  elements: dict
  contains:
    namespace:
      description: Namespace of the HSMSecret.
      type: str
    name:
      description: Name of the HSMSecret.
      type: str
    path:
      description: HSM path synced (state=present).
      type: str
    secretName:
      description: Name of the Secret (state=present).
      type: str
    reason:
      description: Reason of the Ready condition (state=present).
      type: str
      choices: [Synced, Forbidden, Conflict, SourceMissing, Unavailable, InvalidSpec, SyncFailed]
    ready:
      description: Whether the object is in sync (state=present).
      type: bool
    temporary:
      description: Whether a retry may fix the failure.
      type: bool
    message:
      description: What happened (names, paths and key names only).
      type: str
    action:
      description: What was done to the Secret (state=present).
      type: str
      choices: [created, updated, replaced, deleted, unchanged, conflict, none, skipped]
    secretChanged:
      description: Whether the Secret was changed (state=present).
      type: bool
    statusChanged:
      description: Whether the status differs from the object's current one (state=present).
      type: bool
    status:
      description: The object's new status (state=present).
      type: dict
    events:
      description: Events for this object (written when O(emit_events)).
      type: list
      elements: dict
    deleted:
      description: Secrets deleted (state=absent).
      type: list
      elements: str
    kept:
      description: Secrets with the target name that the object does not control, left alone (state=absent).
      type: list
      elements: str
summary:
  description: Number of objects per reason (state=present) and per action.
  returned: always
  type: dict
  sample: {"reasons": {"Synced": 998, "Forbidden": 2}, "actions": {"created": 10, "unchanged": 988, "none": 2}}
status_errors:
  description: Objects whose status could not be written, with the error.
  returned: when O(write_status=true)
  type: dict
events_created:
  description: Number of Events created.
  returned: when O(emit_events=true)
  type: int
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hsm.secrets.plugins.module_utils._hsmd import (
    backend_argument_spec,
    backend_from_params,
    import_hsmd,
    kube_argument_spec,
    kube_client_from_params,
    require_hsmd,
    run,
)


def main():
    spec = backend_argument_spec()
    spec.update(kube_argument_spec())
    spec.update(
        hsmsecrets=dict(type="list", elements="dict", required=True, aliases=["hsm_batch"]),
        agents=dict(type="list", elements="str"),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        policy_file=dict(type="path"),
        policy=dict(type="dict"),
        write_status=dict(type="bool", default=False),
        emit_events=dict(type="bool"),
        fail_on_temporary=dict(type="bool", default=False),
        max_workers=dict(type="int", default=8),
    )
    module = AnsibleModule(
        argument_spec=spec,
        mutually_exclusive=[("agent", "pkcs11_library"), ("agents", "pkcs11_library"), ("policy_file", "policy")],
        required_if=[("state", "present", ("agent", "agents", "pkcs11_library"), True)],
        supports_check_mode=True,
    )
    require_hsmd(module)
    p = module.params
    sync = import_hsmd("sync")
    api = kube_client_from_params(module)
    if p["state"] == "absent":
        outcomes = sync.finalize_batch(p["hsmsecrets"], api_client=api, dry_run=module.check_mode,
                                       max_workers=p["max_workers"])
        results = [o.to_dict() for o in outcomes]
        failed = [r for r in results if r["error"]]
        summary = dict(actions=dict(deleted=sum(len(r["deleted"]) for r in results)))
        if failed:
            module.fail_json(msg="; ".join(r["error"] for r in failed), results=results, summary=summary,
                             changed=any(o.changed for o in outcomes))
        module.exit_json(changed=any(o.changed for o in outcomes), results=results, summary=summary)

    policy = run(module, sync.load_policy, p["policy_file"], p["policy"])
    with backend_from_params(module) as backend:
        outcomes = sync.sync_batch(p["hsmsecrets"], agent=backend, api_client=api, policy=policy,
                                   dry_run=module.check_mode, max_workers=p["max_workers"])
    result = dict(results=[o.to_dict() for o in outcomes], summary=sync.summarize(outcomes))
    changed = any(o.secret_changed for o in outcomes)
    if p["write_status"] and not module.check_mode:
        errors = sync.write_status(api, outcomes, max_workers=p["max_workers"])
        result["status_errors"] = dict(("%s/%s" % key, str(err)) for key, err in errors.items() if err)
        changed = changed or any(o.status_changed for o in outcomes)
    emit = p["write_status"] if p["emit_events"] is None else p["emit_events"]
    if emit and not module.check_mode:
        result["events_created"] = sync.emit_events(api, outcomes, max_workers=p["max_workers"])
    if module._diff:
        result["diff"] = [o.diff for o in outcomes if o.diff and o.secret_changed]
    temporary = [o for o in outcomes if o.temporary]
    if p["fail_on_temporary"] and temporary:
        module.fail_json(msg="%d object(s) could not be synced and will be retried: %s" % (
            len(temporary), "; ".join("%s/%s: %s" % (o.namespace, o.name, o.message) for o in temporary[:5])),
            changed=changed, **result)
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
