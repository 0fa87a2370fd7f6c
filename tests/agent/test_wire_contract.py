"""Go-wire compatibility: a client generated from shared/contracts/hsm_v1_wire.proto alone (what the Go
manager is built from) calls the ten RPCs against our agent.

The contract shares its names with our hsm.proto, so it is compiled into a temp dir and used from a
separate Python process that never imports hsmd (its own descriptor pool).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hsmd import model
from tests.fixtures.agent import ROOT, RunningAgent

WIRE_CONTRACT = ROOT.parent / "shared" / "contracts" / "hsm_v1_wire.proto"

GO_CLIENT = textwrap.dedent(
    """
    import json, sys
    import grpc
    import wire_pb2 as pb, wire_pb2_grpc as rpc

    address, pin = sys.argv[1], sys.argv[2]
    stub = rpc.HSMAgentStub(grpc.insecure_channel(address))
    out = {}
    out["info"] = stub.GetInfo(pb.GetInfoRequest(), timeout=10).hsm_info.serial_number
    stub.WriteSecret(pb.WriteSecretRequest(
        path="go/db", secret_data=pb.SecretData(data={"user": b"go", "pass": b"\\x00\\x01"}),
        metadata=pb.SecretMetadata(description="from go", labels={"a": "b"}, data_type="json")), timeout=10)
    stub.WriteSecret(pb.WriteSecretRequest(path="go/nometa", secret_data=pb.SecretData(data={"k": b"v"})), timeout=10)
    read = stub.ReadSecret(pb.ReadSecretRequest(path="go/db"), timeout=10)
    out["read"] = {k: v.hex() for k, v in read.secret_data.data.items()}
    meta = stub.ReadMetadata(pb.ReadMetadataRequest(path="go/db"), timeout=10).metadata
    out["meta"] = [meta.description, dict(meta.labels), meta.data_type]
    out["list"] = list(stub.ListSecrets(pb.ListSecretsRequest(prefix="go"), timeout=10).paths)
    out["checksum"] = stub.GetChecksum(pb.GetChecksumRequest(path="go/db"), timeout=10).checksum
    out["connected"] = stub.IsConnected(pb.IsConnectedRequest(), timeout=10).connected
    health = stub.Health(pb.HealthRequest(), timeout=10)
    out["health"] = [health.status, health.message]
    stub.ChangePIN(pb.ChangePINRequest(old_pin=pin, new_pin="go-new-pin"), timeout=10)
    stub.ChangePIN(pb.ChangePINRequest(old_pin="go-new-pin", new_pin=pin), timeout=10)
    stub.DeleteSecret(pb.DeleteSecretRequest(path="go/db", key="pass"), timeout=10)
    out["after_key_delete"] = sorted(stub.ReadSecret(pb.ReadSecretRequest(path="go/db"), timeout=10).secret_data.data)
    stub.DeleteSecret(pb.DeleteSecretRequest(path="go/db"), timeout=10)
    try:
        stub.ReadSecret(pb.ReadSecretRequest(path="go/db"), timeout=10)
        out["after_delete"] = "still there"
    except grpc.RpcError as exc:
        out["after_delete"] = exc.code().name
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(not WIRE_CONTRACT.exists(), reason="shared/contracts is not beside the checkout")
def test_go_wire_client_calls_the_ten_rpcs(agent: RunningAgent, tmp_path: Path) -> None:
    from grpc_tools import protoc

    work = tmp_path / "wire"
    work.mkdir()
    (work / "wire.proto").write_text(WIRE_CONTRACT.read_text())
    assert protoc.main(["protoc", f"-I{work}", f"--python_out={work}", f"--grpc_python_out={work}", "wire.proto"]) == 0
    (work / "go_client.py").write_text(GO_CLIENT)
    proc = subprocess.run(
        [sys.executable, "go_client.py", agent.address, agent.pin],
        cwd=work, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["info"] == agent.token.serial
    assert out["read"] == {"user": b"go".hex(), "pass": "0001"}
    assert out["meta"] == ["from go", {"a": "b"}, "json"]
    assert out["list"] == ["go/db", "go/nometa"]
    assert out["checksum"] == model.checksum({"user": b"go", "pass": b"\x00\x01"})
    assert out["connected"] is True
    assert out["health"][0] == "healthy"
    assert out["after_key_delete"] == ["user"]
    assert out["after_delete"] == "NOT_FOUND"
    # and what the Go client wrote reads the same through our client
    assert dict(agent.client().read("go/nometa").data) == {"k": b"v"}
