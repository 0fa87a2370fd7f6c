"""The committed gRPC code matches proto/, and proto/ keeps the Go agent's wire contract."""

from __future__ import annotations

import filecmp
import importlib.util
import sys
from pathlib import Path

import pytest

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


def _compile_contract(tmp_path: Path):  # type: ignore[no-untyped-def]
    from grpc_tools import protoc

    work = tmp_path / "contract"
    work.mkdir()
    (work / "wire.proto").write_text(WIRE_CONTRACT.read_text())
    assert protoc.main(["protoc", f"-I{work}", f"--python_out={work}", "wire.proto"]) == 0
    spec = importlib.util.spec_from_file_location("wire_pb2", work / "wire_pb2.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["wire_pb2"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not WIRE_CONTRACT.exists(), reason="shared/contracts is not beside the checkout")
def test_wire_contract_is_kept(tmp_path: Path) -> None:
    from google.protobuf import descriptor_pool

    wire = _compile_contract(tmp_path)
    contract_file = wire.DESCRIPTOR
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
            assert ours_field.label == field.label, f"{name}.{field.name} label changed"
            if field.message_type is not None:
                assert ours_field.message_type.name == field.message_type.name
    assert descriptor_pool is not None
