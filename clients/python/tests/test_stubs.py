"""The committed stubs in src/taskbroker/v1 describe exactly what proto/ says.

grpcio-tools compiles proto/ again; each committed *_pb2 module's file
descriptor must equal the fresh one, and every .proto must have its module.
Descriptors (not bytes) are compared, so any grpcio-tools version can check
stubs generated with the pinned one. Regenerate with tools/gen_stubs.py.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[1]
PROTO = ROOT.parents[1] / "proto"
STUBS = ROOT / "src" / "taskbroker" / "v1"
FIX = "regenerate them: see clients/python/tools/gen_stubs.py"


def fresh_descriptors(tmp_path: Path) -> dict:
    try:
        import grpc_tools  # noqa: F401
    except ImportError:
        pytest.fail("grpcio-tools is missing: pip install -e 'clients/python[test]'", pytrace=False)
    protos = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "taskbroker" / "v1").glob("*.proto"))
    out = tmp_path / "set.pb"
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}", f"--descriptor_set_out={out}", *protos]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"protoc failed: {proc.stderr}"
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return {f.name: without_json_names(f) for f in fds.file}


def without_json_names(f: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """A descriptor set carries each field's json_name; the descriptors embedded in _pb2 modules do not."""
    def clear(messages):
        for m in messages:
            for field in m.field:
                field.ClearField("json_name")
            clear(m.nested_type)

    clear(f.message_type)
    return f


def test_committed_stubs_match_proto(tmp_path):
    fresh = fresh_descriptors(tmp_path)
    committed = {f"taskbroker/v1/{p.name[: -len('_pb2.py')]}.proto" for p in STUBS.glob("*_pb2.py")}
    assert committed == set(fresh), f"stubs exist for {sorted(committed)}, proto/ has {sorted(fresh)}: {FIX}"
    for name, want in fresh.items():
        module = importlib.import_module("taskbroker.v1." + Path(name).stem + "_pb2")
        have = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        assert have == want, f"{name} changed since its stubs were generated: {FIX}"
        for suffix in ("_pb2.pyi", "_pb2_grpc.py"):
            assert (STUBS / (Path(name).stem + suffix)).exists(), f"{Path(name).stem}{suffix} missing: {FIX}"


def test_service_stubs_have_every_method():
    from taskbroker.v1 import producer_pb2, producer_pb2_grpc, worker_pb2, worker_pb2_grpc

    for pb2, grpc_mod in ((producer_pb2, producer_pb2_grpc), (worker_pb2, worker_pb2_grpc)):
        for service in pb2.DESCRIPTOR.services_by_name.values():
            stub = getattr(grpc_mod, service.name + "Stub")
            source = Path(grpc_mod.__file__).read_text()
            for method in service.methods:
                assert f"/{service.full_name}/{method.name}" in source, f"{stub.__name__} lacks {method.name}: {FIX}"
