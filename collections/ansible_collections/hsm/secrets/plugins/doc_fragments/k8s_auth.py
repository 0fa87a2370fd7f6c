# -*- coding: utf-8 -*-
# Copyright: hsmd contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""Kubernetes connection options, named like kubernetes.core's (and read from the same K8S_AUTH_* variables)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r"""
options:
  kubeconfig:
    description:
      - Path to a kubeconfig file. Without it, E(KUBECONFIG) or C(~/.kube/config) is used, and inside a pod
        the pod's ServiceAccount.
      - The environment variable E(K8S_AUTH_KUBECONFIG) is used when this is not set.
    type: path
  context:
    description:
      - Context of the kubeconfig to use (E(K8S_AUTH_CONTEXT)).
    type: str
  host:
    description:
      - URL of the API server; overrides the kubeconfig (E(K8S_AUTH_HOST)).
    type: str
  api_key:
    description:
      - Bearer token for the API server (E(K8S_AUTH_API_KEY)).
    type: str
  validate_certs:
    description:
      - Whether to verify the API server's certificate (E(K8S_AUTH_VERIFY_SSL)).
    type: bool
    aliases: [verify_ssl]
  ca_cert:
    description:
      - CA bundle of the API server (E(K8S_AUTH_SSL_CA_CERT)).
    type: path
    aliases: [ssl_ca_cert]
  client_cert:
    description:
      - Client certificate for the API server (E(K8S_AUTH_CERT_FILE)).
    type: path
    aliases: [cert_file]
  client_key:
    description:
      - Key of O(client_cert) (E(K8S_AUTH_KEY_FILE)).
    type: path
    aliases: [key_file]
requirements:
  - kubernetes (the Python client)
"""
