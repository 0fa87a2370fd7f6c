# -*- coding: utf-8 -*-
# Copyright: hsmd contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Options that choose the HSM backend: an hsmd agent over gRPC, or a PKCS#11 token opened directly."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r"""
options:
  agent:
    description:
      - Address C(HOST:PORT) of an hsmd agent (gRPC, C(hsm.v1.HSMAgent)).
      - Exactly one of O(agent) and O(pkcs11_library) is required.
      - The environment variable E(HSMD_AGENT) is used when neither this nor O(agents) (where a module has it) is set.
    type: str
  agent_ca_file:
    description:
      - CA bundle (PEM) that issued the agent's certificate. Setting it enables TLS.
    type: path
  agent_cert_file:
    description:
      - Client certificate (PEM) for mutual TLS with the agent. Needs O(agent_ca_file).
    type: path
  agent_key_file:
    description:
      - Private key (PEM) of O(agent_cert_file).
    type: path
  agent_server_name:
    description:
      - Name expected in the agent's certificate when it differs from the host of O(agent).
    type: str
  agent_timeout:
    description:
      - Seconds one agent call may take.
    type: float
    default: 10.0
  pkcs11_library:
    description:
      - PKCS#11 module (C(.so)) to open the token directly, on the host that has the device
        (for example C(/usr/lib/softhsm/libsofthsm2.so) or OpenSC's C(opensc-pkcs11.so)).
      - Needs one of O(token_label), O(token_serial) or O(slot), and one of O(pin_file) or O(pin_env).
    type: path
  token_label:
    description:
      - Label of the token to open.
    type: str
  token_serial:
    description:
      - Serial number of the token to open (also verified when O(token_label) or O(slot) selects it).
    type: str
  slot:
    description:
      - Slot number of the token to open.
    type: int
  pin_file:
    description:
      - File holding the user PIN. The PIN itself is never a module argument.
    type: path
  pin_env:
    description:
      - Name of an environment variable (of the module's process) holding the user PIN.
    type: str
  device_profile:
    description:
      - Device limits checked before anything is written (for example C(picohsm) allows 4096 bytes per value).
      - One of C(generic), C(softhsm), C(picohsm), C(smartcard-hsm), C(yubihsm).
    type: str
    default: generic
requirements:
  - hsmd (the Python package, importable by the module's interpreter)
notes:
  - Set C(ansible_python_interpreter) to the Python that has hsmd installed (for example
    C("{{ ansible_playbook_python }}") on the controller).
"""
