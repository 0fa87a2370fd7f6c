"""hsmd: HSM-backed secrets for Kubernetes, driven by Ansible.

Layers (enforced by tests/test_layers.py): ``hsmd.model``, ``hsmd.errors``, ``hsmd.policy`` and the
other pure decision modules import no third-party I/O library; PyKCS11 lives only in
``hsmd.pkcs11``, grpc only in ``hsmd.agent`` and ``hsmd.proto``, Flask only in ``hsmd.proxy``,
pyudev only in ``hsmd.discovery``, ansible_runner only in ``hsmd.operator``.
"""

__version__ = "0.1.0"
