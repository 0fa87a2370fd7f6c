#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: hsmd contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: hsm_secret_info
short_description: List secrets on an HSM with their checksums, key names and metadata
version_added: "0.1.0"
description:
  - Lists the secrets under a prefix, or describes the given paths, through an hsmd agent or directly on a token.
  - Values are returned only with O(return_content=true).
extends_documentation_fragment:
  - hsm.secrets.backend
options:
  path:
    description:
      - Describe this one secret. Mutually exclusive with O(paths) and O(prefix).
    type: str
  paths:
    description:
      - Describe exactly these secrets; one that does not exist is returned with RV(secrets[].exists=false).
    type: list
    elements: str
  prefix:
    description:
      - List every secret under this prefix (whole segments; C(team) selects C(team/db) but not C(team2)).
        Empty lists everything.
    type: str
    default: ""
  return_content:
    description:
      - Also return the values (RV(secrets[].data) where they are UTF-8 text, RV(secrets[].data_b64) always).
      - Ansible cannot mark return values as secret. Set C(no_log) to V(true) on a task that uses this, and do not
        register its result where it could be printed or logged.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Read-only; runs the same in check mode.
  diff_mode:
    support: none
author:
  - hsmd contributors
"""

EXAMPLES = r"""
- name: What is stored for team-a?
  hsm.secrets.hsm_secret_info:
    agent: 127.0.0.1:9090
    prefix: team-a
  register: team_a

- name: Show the checksums
  ansible.builtin.debug:
    msg: "{{ team_a.secrets | items2dict(key_name='path', value_name='checksum') }}"

- name: Read one value (never printed)
  hsm.secrets.hsm_secret_info:
    agent: 127.0.0.1:9090
    path: team-a/db
    return_content: true
  register: db
  no_log: true
"""

RETURN = r"""
paths:
  description: The paths described, sorted as listed.
  returned: always
  type: list
  elements: str
  sample: [team-a/api, team-a/db]
secrets:
  description: One entry per path.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: Path of the secret.
      type: str
      sample: team-a/db
    exists:
      description: Whether the secret exists.
      type: bool
    checksum:
      description: C(sha256:<hex>) checksum of the data (length-prefixed keys and values).
      type: str
      returned: when it exists
      sample: sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    keys:
      description: Key names.
      type: list
      elements: str
      returned: when it exists
    metadata:
      description: Metadata (description, labels, format, dataType, createdAt, source).
      type: dict
      returned: when it exists
    data:
      description: Values that are UTF-8 text, by key.
      type: dict
      returned: with O(return_content=true)
    data_b64:
      description: Every value, base64-encoded, by key.
      type: dict
      returned: with O(return_content=true)
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hsm.secrets.plugins.module_utils._hsmd import (
    BACKEND_MUTUALLY_EXCLUSIVE,
    BACKEND_REQUIRED_ONE_OF,
    backend_argument_spec,
    backend_from_params,
    import_hsmd,
    require_hsmd,
    run,
)


def main():
    spec = backend_argument_spec()
    spec.update(
        path=dict(type="str"),
        paths=dict(type="list", elements="str"),
        prefix=dict(type="str", default=""),
        return_content=dict(type="bool", default=False),
    )
    module = AnsibleModule(
        argument_spec=spec,
        mutually_exclusive=[*BACKEND_MUTUALLY_EXCLUSIVE, ("path", "paths")],
        required_one_of=BACKEND_REQUIRED_ONE_OF,
        supports_check_mode=True,
    )
    require_hsmd(module)
    p = module.params
    paths = [p["path"]] if p["path"] else p["paths"]
    with backend_from_params(module) as backend:
        secrets = run(
            module,
            import_hsmd("secret_state").describe,
            backend,
            paths=paths,
            prefix=p["prefix"],
            return_content=p["return_content"],
        )
    module.exit_json(changed=False, paths=[s["path"] for s in secrets], secrets=secrets)


if __name__ == "__main__":
    main()
