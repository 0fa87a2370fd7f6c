"""Generate hsmd/proto/hsm/v1/*_pb2*.py(i) from proto/ with the pinned grpcio-tools.

``python -m hsmd.proto.generate [OUT_ROOT]`` writes into OUT_ROOT (default: the repository root);
tests/test_proto.py generates into a temp dir and diffs against the committed files.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ["hsmd/proto/hsm/v1/hsm.proto"]
GENERATED = ["hsm_pb2.py", "hsm_pb2.pyi", "hsm_pb2_grpc.py"]


def generate(out_root: Path) -> list[Path]:
    from grpc_tools import protoc  # dev dependency, only needed here

    bin_dir = Path(sys.executable).parent
    plugin = shutil.which("protoc-gen-mypy", path=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    if plugin is None:
        raise SystemExit("protoc-gen-mypy not found: install the dev extras (make setup)")
    (out_root / "hsmd/proto/hsm/v1").mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"--proto_path=hsmd/proto={ROOT / 'proto'}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"--mypy_out={out_root}",
        *PROTOS,
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    return [out_root / "hsmd/proto/hsm/v1" / name for name in GENERATED]


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    for path in generate(target):
        print(f"wrote {path.relative_to(target)}")
