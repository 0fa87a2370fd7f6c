# -*- coding: utf-8 -*-
# Copyright: hsmd contributors
# Apache License 2.0 (see https://www.apache.org/licenses/LICENSE-2.0)
"""The one door from the hsm.secrets modules into the installed ``hsmd`` package.

Modules are thin adapters (argspec + a short main); every decision lives in ``hsmd``. This file
imports it once, guarded, so a controller without hsmd gets ``missing_required_lib`` instead of
a traceback, and translates hsmd's error model to ``fail_json`` in one place.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import traceback

from ansible.module_utils.basic import missing_required_lib

HSMD_IMPORT_ERROR = None
try:
    import hsmd  # noqa: F401
    from hsmd import errors as hsmd_errors
except ImportError:  # pragma: no cover - exercised only where hsmd is absent
    HSMD_IMPORT_ERROR = traceback.format_exc()
    hsmd_errors = None


def require_hsmd(module):
    """Fail the module cleanly when hsmd is not importable by the module's interpreter."""
    if HSMD_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("hsmd"), exception=HSMD_IMPORT_ERROR)


def fail_from_error(module, error, **extra):
    """hsmd error -> fail_json: the stable code, whether it is temporary, a message without values."""
    module.fail_json(
        msg=str(error),
        error_code=getattr(error, "code", "internal"),
        temporary=bool(getattr(error, "temporary", False)),
        **extra
    )


def run(module, action, *args, **kwargs):
    """Call ``action`` and translate any HsmdError to fail_json; return its result otherwise."""
    require_hsmd(module)
    try:
        return action(*args, **kwargs)
    except hsmd_errors.HsmdError as error:
        fail_from_error(module, error)


# --- added for the secrets modules (hsm_secret, hsm_secret_info, hsm_secret_sync) -------------

def import_hsmd(name):
    """An hsmd submodule by name (``import_hsmd("secret_state")``), through this one door."""
    import importlib

    return importlib.import_module("hsmd." + name)


def backend_argument_spec():
    """Options choosing where secrets are read and written: an agent (gRPC, optional mTLS) or a
    PKCS#11 token opened directly (on the node that has the device). See doc fragment
    hsm.secrets.backend."""

    return dict(
        # HSMD_AGENT applies only when neither agent nor agents is given (see backend_from_params)
        agent=dict(type="str"),
        agent_ca_file=dict(type="path"),
        agent_cert_file=dict(type="path"),
        agent_key_file=dict(type="path", no_log=False),
        agent_server_name=dict(type="str"),
        agent_timeout=dict(type="float", default=10.0),
        pkcs11_library=dict(type="path"),
        token_label=dict(type="str"),
        token_serial=dict(type="str"),
        slot=dict(type="int"),
        pin_file=dict(type="path", no_log=False),
        pin_env=dict(type="str", no_log=False),
        device_profile=dict(type="str", default="generic"),
    )


BACKEND_MUTUALLY_EXCLUSIVE = [("agent", "pkcs11_library"), ("token_label", "slot"), ("pin_file", "pin_env")]
BACKEND_REQUIRED_ONE_OF = [("agent", "pkcs11_library")]


class _Closing(object):
    """Context manager that closes whatever backend it holds."""

    def __init__(self, backend):
        self.backend = backend

    def __enter__(self):
        return self.backend

    def __exit__(self, *exc):
        self.backend.close()
        return False


def backend_from_params(module):
    """An AgentClient (``agent``) or an opened Token (``pkcs11_library``), as a context manager.

    Token selection and PIN options are checked here with hsmd's own messages; a PIN is read from
    its file or environment variable by the token layer, never from module arguments."""
    require_hsmd(module)
    p = module.params
    try:
        # ``agents`` (several agents mirroring one pool) exists only in modules that declare it
        agent = p.get("agent") or (None if p.get("agents") else os.environ.get("HSMD_AGENT"))
        addresses = ([agent] if agent else []) + list(p.get("agents") or [])
        if addresses:
            client = import_hsmd("agent.client")
            tls = None
            if p.get("agent_ca_file") or p.get("agent_cert_file") or p.get("agent_key_file"):
                if not p.get("agent_ca_file"):
                    raise hsmd_errors.InvalidArgument("agent_cert_file/agent_key_file need agent_ca_file (mTLS)")
                tls = client.ClientTLS(
                    ca_file=p["agent_ca_file"],
                    cert_file=p.get("agent_cert_file"),
                    key_file=p.get("agent_key_file"),
                    server_name=p.get("agent_server_name"),
                )
            timeout = p.get("agent_timeout") or 10.0
            if p.get("agents"):
                return _Closing(import_hsmd("fanout").AgentSet.from_addresses(addresses, tls=tls, timeout=timeout))
            return _Closing(client.AgentClient(addresses[0], tls=tls, timeout=timeout))
        if not (p.get("token_label") or p.get("token_serial") or p.get("slot") is not None):
            raise hsmd_errors.InvalidArgument("pkcs11_library needs token_label, token_serial or slot")
        if not (p.get("pin_file") or p.get("pin_env")):
            raise hsmd_errors.InvalidArgument("pkcs11_library needs pin_file or pin_env (never the PIN itself)")
        pkcs11 = import_hsmd("pkcs11")
        config = pkcs11.TokenConfig(
            library=p["pkcs11_library"],
            token_label=p.get("token_label"),
            token_serial=p.get("token_serial"),
            slot=p.get("slot"),
            pin_file=p.get("pin_file"),
            pin_env=p.get("pin_env"),
            profile=p.get("device_profile") or "generic",
            sessions=1,
        )
        return _Closing(pkcs11.Token.open(config))
    except hsmd_errors.HsmdError as error:
        fail_from_error(module, error)


def device_profile_from_params(module):
    """The hsmd.model.DeviceProfile named by ``device_profile`` (fails the module when unknown)."""
    return run(module, import_hsmd("model").profile, module.params.get("device_profile") or "generic")


def kube_argument_spec():
    """Kubernetes connection options, named and defaulted like kubernetes.core's (K8S_AUTH_* env)."""
    from ansible.module_utils.basic import env_fallback

    return dict(
        kubeconfig=dict(type="path", fallback=(env_fallback, ["K8S_AUTH_KUBECONFIG"])),
        context=dict(type="str", fallback=(env_fallback, ["K8S_AUTH_CONTEXT"])),
        host=dict(type="str", fallback=(env_fallback, ["K8S_AUTH_HOST"])),
        api_key=dict(type="str", no_log=True, fallback=(env_fallback, ["K8S_AUTH_API_KEY"])),
        validate_certs=dict(type="bool", aliases=["verify_ssl"], fallback=(env_fallback, ["K8S_AUTH_VERIFY_SSL"])),
        ca_cert=dict(type="path", aliases=["ssl_ca_cert"], fallback=(env_fallback, ["K8S_AUTH_SSL_CA_CERT"])),
        client_cert=dict(type="path", aliases=["cert_file"], fallback=(env_fallback, ["K8S_AUTH_CERT_FILE"])),
        client_key=dict(type="path", aliases=["key_file"], no_log=False,
                        fallback=(env_fallback, ["K8S_AUTH_KEY_FILE"])),
    )


def kube_client_from_params(module):
    """A kubernetes ApiClient from the kube options (hsmd.kube.api_client: kubeconfig or in-cluster)."""
    p = module.params
    return run(
        module,
        import_hsmd("kube").api_client,
        p.get("kubeconfig"),
        p.get("context"),
        host=p.get("host"),
        api_key=p.get("api_key"),
        validate_certs=p.get("validate_certs"),
        ca_cert=p.get("ca_cert"),
        client_cert=p.get("client_cert"),
        client_key=p.get("client_key"),
    )
