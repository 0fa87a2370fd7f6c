"""The agent <-> device worker wire (hsmd.agent.framing): frames survive split reads and EOF."""

from __future__ import annotations

import socket
import threading

from hsmd.agent import framing
from hsmd.model import Secret, SecretMetadata


def test_frames_round_trip_even_when_split() -> None:
    a, b = socket.socketpair()
    with a, b:
        big = ("ok", 7, {"k": b"\x00" * 300_000})
        raw = framing.encode(big) + framing.encode(("ok", 8, None))

        def dribble() -> None:  # deliver the bytes in awkward pieces
            for start in range(0, len(raw), 65_537):
                a.sendall(raw[start : start + 65_537])
            a.shutdown(socket.SHUT_WR)

        writer = threading.Thread(target=dribble)
        writer.start()
        assert framing.recv(b) == big
        assert framing.recv(b) == ("ok", 8, None)
        assert framing.recv(b) is None  # end of stream
        writer.join()


def test_secret_tuples_round_trip() -> None:
    secret = Secret("a/b", {"k": b"v"}, SecretMetadata("d", {"x": "y"}, "f", "json", "2026-01-01T00:00:00Z", "s"),
                    "sha256:00")
    assert framing.unpack_secret(framing.pack_secret(secret)) == secret
