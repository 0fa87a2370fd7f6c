#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hsmd contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: hsm_secret
short_description: Create, update or delete secrets on an HSM
version_added: "0.1.0"
description:
  - Ensures one secret (O(path)) or a batch of secrets (O(secrets)) is present with exactly the given keys
    and values, or absent, on a PKCS#11 token — through an hsmd agent (O(agent)) or directly (O(pkcs11_library)).
  - A secret whose checksum and metadata already match is not written (idempotent). Updates are
    compare-and-swap against the checksum just read, so a concurrent change fails the task instead of
    being overwritten. Every item is validated before the first write.
  - Values are never logged or shown. The diff and the results carry key names, checksums and metadata only.
  - The decisions live in the C(hsmd.secret_state) Python module; this module is its Ansible adapter.
extends_documentation_fragment:
  - hsm.secrets.backend
options:
  path:
    description:
      - Path of the secret (segments of C([A-Za-z0-9._-]) joined by C(/)). Mutually exclusive with O(secrets).
    type: str
  state:
    description:
      - V(present) stores exactly O(data) and O(data_b64) (all keys; keys not given are removed);
        V(absent) deletes the secret.
    type: str
    choices: [present, absent]
    default: present
  data:
    description:
      - Keys and text values (stored as UTF-8).
    type: dict
  data_b64:
    description:
      - Keys and base64-encoded values, for binary data. May be combined with O(data) (no key in both).
    type: dict
  metadata:
    description:
      - Secret metadata stored next to the data (the Go operator's fields), a mapping with any of
        C(description) (text), C(labels) (mapping of strings), C(format) (text), C(dataType) (also
        C(data_type); one of C(plaintext), C(json), C(pem), C(binary), C(base64), C(x509-cert),
        C(private-key), C(docker-config)) and C(source) (text).
      - Fields not given keep their stored value; C(createdAt) is set when the secret is created.
        Unknown fields are an error.
    type: dict
  secrets:
    description:
      - A batch of secrets, each with the options above (C(path), C(state), C(data), C(data_b64), C(metadata)).
        Read in one call, validated together before anything is written.
    type: list
    elements: dict
    suboptions:
      path:
        description: Path of the secret.
        type: str
        required: true
      state:
        description: V(present) or V(absent).
        type: str
        choices: [present, absent]
        default: present
      data:
        description: Keys and text values.
        type: dict
      data_b64:
        description: Keys and base64-encoded values.
        type: dict
      metadata:
        description: Metadata, as O(metadata).
        type: dict
attributes:
  check_mode:
    support: full
    description: Reads the current state and reports what would change; writes nothing.
  diff_mode:
    support: full
    description: Before/after with key names, checksum and metadata per secret; never values.
author:
  - hsmd contributors
"""

EXAMPLES = r"""
- name: Store database credentials through the agent
  hsm.secrets.hsm_secret:
    agent: hsmd-agent.hsm-system.svc:9090
    agent_ca_file: /etc/hsmd/ca.pem
    agent_cert_file: /etc/hsmd/tls.crt
    agent_key_file: /etc/hsmd/tls.key
    path: team-a/db
    data:
      username: app
      password: "{{ vault_db_password }}"
    metadata:
      description: database login of the app
      labels:
        team: a

- name: Store a binary value directly on a token (on the node with the device)
  hsm.secrets.hsm_secret:
    pkcs11_library: /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so
    token_label: PicoHSM
    pin_file: /run/secrets/hsm-pin
    device_profile: picohsm
    path: team-a/keystore
    data_b64:
      keystore.p12: "{{ lookup('file', 'keystore.p12.b64') }}"

- name: Several secrets in one call
  hsm.secrets.hsm_secret:
    agent: 127.0.0.1:9090
    secrets:
      - path: team-a/api
        data:
          token: "{{ api_token }}"
      - path: team-a/old
        state: absent
"""

RETURN = r"""
secrets:
  description: One entry per secret, in the order given. No values.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: Path of the secret.
      type: str
      sample: team-a/db
    state:
      description: The requested state.
      type: str
      sample: present
    action:
      description: What was (or in check mode would be) done.
      type: str
      sample: updated
      choices: [created, updated, deleted, unchanged]
    changed:
      description: Whether this secret changed.
      type: bool
    checksum:
      description: C(sha256:<hex>) checksum of the secret's data afterwards (null when absent).
      type: str
      sample: sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    keys:
      description: Key names afterwards.
      type: list
      elements: str
      sample: [password, username]
path:
  description: Path of the secret (single-secret form only).
  returned: when O(path) is used
  type: str
  sample: team-a/db
action:
  description: What was done to the secret (single-secret form only).
  returned: when O(path) is used
  type: str
  sample: created
checksum:
  description: Checksum of the secret afterwards (single-secret form only).
  returned: when O(path) is used
  type: str
  sample: sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
keys:
  description: Key names afterwards (single-secret form only).
  returned: when O(path) is used
  type: list
  elements: str
  sample: [password, username]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hsm.secrets.plugins.module_utils._hsmd import (
    BACKEND_MUTUALLY_EXCLUSIVE,
    BACKEND_REQUIRED_ONE_OF,
    backend_argument_spec,
    backend_from_params,
    device_profile_from_params,
    fail_from_error,
    import_hsmd,
    require_hsmd,
    run,
)

def argument_spec():
    spec = backend_argument_spec()
    spec.update(
        path=dict(type="str"),
        state=dict(type="str", choices=["present", "absent"], default="present"),
        data=dict(type="dict", no_log=True),
        data_b64=dict(type="dict", no_log=True),
        metadata=dict(type="dict"),
        secrets=dict(
            type="list",
            elements="dict",
            options=dict(
                path=dict(type="str", required=True),
                state=dict(type="str", choices=["present", "absent"], default="present"),
                data=dict(type="dict", no_log=True),
                data_b64=dict(type="dict", no_log=True),
                metadata=dict(type="dict"),
            ),
        ),
    )
    return spec


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        mutually_exclusive=[*BACKEND_MUTUALLY_EXCLUSIVE, ("path", "secrets")],
        required_one_of=[*BACKEND_REQUIRED_ONE_OF, ("path", "secrets")],
        supports_check_mode=True,
    )
    require_hsmd(module)
    state = import_hsmd("secret_state")
    single = module.params["secrets"] is None
    entries = [module.params] if single else module.params["secrets"]
    items = run(module, state.desired_from_params, entries)
    profile = device_profile_from_params(module)
    with backend_from_params(module) as backend:
        try:
            results = run(module, state.apply, backend, items, check_mode=module.check_mode, profile=profile)
        except state.BatchFailed as failed:
            done = [r.to_dict() for r in failed.results]
            changed = any(r["changed"] for r in done)
            fail_from_error(module, failed.error, path=failed.path, secrets=done, changed=changed)
    result = dict(changed=any(r.changed for r in results), secrets=[r.to_dict() for r in results])
    if single:
        result.update({k: results[0].to_dict()[k] for k in ("path", "action", "checksum", "keys")})
    if module._diff:
        diffs = [r.diff for r in results]
        result["diff"] = diffs[0] if single else diffs
    module.exit_json(**result)


if __name__ == "__main__":
    main()
