#!/usr/bin/env python3
"""Regenerates the committed protobuf/gRPC stubs in src/taskbroker/v1/ from ../../proto.

The stubs are generated with an old grpcio-tools on purpose: generated code
demands a protobuf runtime at least as new as the protoc that wrote it (and the
_grpc modules a grpcio at least as new as grpcio-tools), so old tools keep the
package installable on every Python it supports (>= 3.9). Run it in a venv of
its own:

    python3 -m venv /tmp/tbgen && /tmp/tbgen/bin/pip install grpcio-tools==1.66.2
    /tmp/tbgen/bin/python clients/python/tools/gen_stubs.py

tests/test_stubs.py fails when the committed stubs no longer describe proto/.
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE_ROOT = HERE.parent / "src"
PROTO_ROOT = HERE.parents[2] / "proto"
#: The grpcio-tools release the committed stubs come from.
GRPCIO_TOOLS_VERSION = "1.66.2"


def proto_files():
    """The .proto files the package ships stubs for, relative to PROTO_ROOT."""
    return sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "taskbroker" / "v1").glob("*.proto"))


def main():
    try:
        import grpc_tools
        from importlib.metadata import version
    except ImportError:
        sys.exit(f"grpcio-tools is missing: pip install grpcio-tools=={GRPCIO_TOOLS_VERSION}")
    found = version("grpcio-tools")
    if found != GRPCIO_TOOLS_VERSION:
        sys.exit(f"grpcio-tools {found} found; the stubs are generated with {GRPCIO_TOOLS_VERSION}")
    del grpc_tools
    out = PACKAGE_ROOT / "taskbroker" / "v1"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}",
            f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}",
            *proto_files(),
        ]
        subprocess.run(cmd, check=True)
        for old in out.glob("*_pb2*.py*"):
            old.unlink()
        for new in sorted((Path(tmp) / "taskbroker" / "v1").iterdir()):
            shutil.copy(new, out / new.name)
            print(f"wrote {out / new.name}")


if __name__ == "__main__":
    main()
