"""The committed gRPC code matches proto/, and proto/ keeps the Go agent's wire contract."""

from __future__ import annotations

import filecmp
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor

from hsmd.proto.generate import GENERATED, generate
from hsmd.proto.hsm.v1 import hsm_pb2

ROOT = Path(__file__).resolve().parents[1]
WIRE_CONTRACT = ROOT.parent / "shared" / "contracts" / "hsm_v1_wire.proto"


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    generate(tmp_path)
    for name in GENERATED:
        fresh = tmp_path / "hsmd/proto/hsm/v1" / name
        committed = ROOT / "hsmd/proto/hsm/v1" / name
        assert filecmp.cmp(fresh, committed, shallow=False), (
            f"{committed.relative_to(ROOT)} is stale: run 'make proto' and commit the result"
        )


def _contract_descriptor(tmp_path: Path) -> FileDescriptor:
    """Compile the wire contract into a private descriptor pool (it shares names with ours)."""
    from grpc_tools import protoc

    work = tmp_path / "contract"
    work.mkdir()
    (work / "wire.proto").write_text(WIRE_CONTRACT.read_text())
    out = work / "wire.pb"
    assert protoc.main(["protoc", f"-I{work}", f"--descriptor_set_out={out}", "wire.proto"]) == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for proto in files.file:
        pool.Add(proto)
    return pool.FindFileByName("wire.proto")


@pytest.mark.skipif(not WIRE_CONTRACT.exists(), reason="shared/contracts is not beside the checkout")
def test_wire_contract_is_kept(tmp_path: Path) -> None:
    contract_file = _contract_descriptor(tmp_path)
    ours_file = hsm_pb2.DESCRIPTOR
    assert contract_file.package == ours_file.package == "hsm.v1"
    theirs_service = contract_file.services_by_name["HSMAgent"]
    ours_service = ours_file.services_by_name["HSMAgent"]
    for method in theirs_service.methods:
        mine = ours_service.methods_by_name[method.name]
        assert mine.input_type.name == method.input_type.name
        assert mine.output_type.name == method.output_type.name
        assert not mine.server_streaming and not mine.client_streaming
    for name, message in contract_file.message_types_by_name.items():
        mine = ours_file.message_types_by_name[name]
        for field in message.fields:
            ours_field = mine.fields_by_name[field.name]
            assert ours_field.number == field.number, f"{name}.{field.name} number changed"
            assert ours_field.type == field.type, f"{name}.{field.name} type changed"
            assert ours_field.is_repeated == field.is_repeated, f"{name}.{field.name} cardinality changed"
            if field.message_type is not None:
                assert ours_field.message_type.name == field.message_type.name
