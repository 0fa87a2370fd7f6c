"""mTLS: a client certificate from the configured CA is required and verified, and only TLS 1.3 is
negotiated (grpcio has no minimum-version knob; see hsmd.agent.tlsconfig for how it is enforced)."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from hsmd import errors
from hsmd.agent.client import AgentClient, ClientTLS
from tests.fixtures.agent import RunningAgent, make_agent_token, make_pki, start_agent


def handshake(address: str, pki_ca: str, *, max_version: ssl.TLSVersion, cert: tuple[str, str] | None) -> str:
    """A raw TLS handshake + HTTP/2 preface; returns the negotiated version or raises."""
    host, port = address.rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=pki_ca)
    ctx.maximum_version = max_version
    ctx.set_alpn_protocols(["h2"])
    if cert:
        ctx.load_cert_chain(*cert)
    with socket.create_connection((host, int(port)), timeout=5) as raw, ctx.wrap_socket(
        raw, server_hostname="localhost"
    ) as tls:
        tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000"))
        if not tls.recv(9):  # in TLS 1.3 a refused client certificate shows up after the handshake
            raise ConnectionError("the server closed the connection")
        return str(tls.version())


def _refused(address: str, tls: ClientTLS | None) -> errors.HsmdError:
    with AgentClient(address, tls=tls, timeout=3) as client, pytest.raises(errors.Unavailable) as info:
        client.health()
    return info.value


def test_client_certificate_required_and_verified(mtls_agent: RunningAgent) -> None:
    pki = mtls_agent.tls
    assert pki is not None
    assert mtls_agent.client().health()[0] == "healthy"
    _refused(mtls_agent.address, ClientTLS(ca_file=pki.ca))  # no client certificate
    _refused(mtls_agent.address, pki.rogue_tls())  # a certificate from another CA
    _refused(mtls_agent.address, None)  # plaintext
    # the client verifies the agent too: a name the certificate does not carry is refused
    _refused(mtls_agent.address, ClientTLS(pki.ca, pki.client_cert, pki.client_key, server_name="not-the-agent"))


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_only_tls13_is_negotiated(key_type: str, tmp_path: Path) -> None:
    tok = make_agent_token(tmp_path / "token")
    pki = make_pki(tmp_path / "pki", server_key_type=key_type)
    with start_agent(tok.token, pin_file=tok.pin_file, workdir=tmp_path / "agent", tls=pki) as agent:
        client_cert = (pki.client_cert, pki.client_key)
        assert handshake(agent.address, pki.ca, max_version=ssl.TLSVersion.TLSv1_3, cert=client_cert) == "TLSv1.3"
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            handshake(agent.address, pki.ca, max_version=ssl.TLSVersion.TLSv1_2, cert=client_cert)
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            handshake(agent.address, pki.ca, max_version=ssl.TLSVersion.TLSv1_3, cert=None)
        assert agent.client().is_connected()
