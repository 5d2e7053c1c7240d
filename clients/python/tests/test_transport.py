"""TLS and bearer tokens reach the server.

These tests stand up their own gRPC server (grpcio, over loopback TLS with a
throwaway certificate from the openssl CLI) that implements GetTask and records
each call's metadata, so they see exactly what the client sends. The real
broker with TLS and auth on is the secure pass (see conftest.py, test_auth.py).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from concurrent import futures

import grpc
import pytest
from conftest import SECURE

from taskbroker import TLS, AsyncClient, Client, Unavailable
from taskbroker.v1 import producer_pb2, task_pb2

pytestmark = pytest.mark.skipif(
    SECURE, reason="plain pass only: these tests use their own gRPC server (TLS and tokens under test), no broker"
)


@pytest.fixture
def certificate(tmp_path):
    if shutil.which("openssl") is None:
        pytest.fail("the openssl CLI is needed: apt-get install openssl", pytrace=False)
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=broker.test",
         "-addext", "subjectAltName=DNS:broker.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return key, cert


class Recorder:
    """A ProducerService with only GetTask, remembering each call's metadata."""

    def __init__(self) -> None:
        self.metadata = []

    def get_task(self, request, context):
        self.metadata.append(dict(context.invocation_metadata()))
        return producer_pb2.GetTaskResponse(task=task_pb2.Task(id=request.task_id, kind="seen"))

    def serve(self, credentials=None):
        server = grpc.server(futures.ThreadPoolExecutor(2))
        handler = grpc.unary_unary_rpc_method_handler(
            self.get_task,
            request_deserializer=producer_pb2.GetTaskRequest.FromString,
            response_serializer=producer_pb2.GetTaskResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("taskbroker.v1.ProducerService", {"GetTask": handler}),)
        )
        if credentials is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            port = server.add_secure_port("127.0.0.1:0", credentials)
        server.start()
        return server, port


def test_token_is_sent_as_a_bearer_header():
    rec = Recorder()
    server, port = rec.serve()
    try:
        with Client(f"127.0.0.1:{port}", token="s3cret") as client:
            assert client.get("t1").kind == "seen"

        async def via_asyncio():
            async with AsyncClient(f"127.0.0.1:{port}", token="s3cret") as client:
                return await client.get("t2")

        assert asyncio.run(via_asyncio()).id == "t2"
    finally:
        server.stop(None)
    assert [m.get("authorization") for m in rec.metadata] == ["Bearer s3cret", "Bearer s3cret"]


def test_tls_with_a_custom_ca_and_server_name(certificate):
    key, cert = certificate
    rec = Recorder()
    creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
    server, port = rec.serve(creds)
    try:
        tls = TLS(ca=str(cert), server_name="broker.test")
        with Client(f"127.0.0.1:{port}", tls=tls, token="t") as client:
            assert client.get("over-tls").id == "over-tls"
        # PEM bytes work as well as paths.
        with Client(f"127.0.0.1:{port}", tls=TLS(ca=cert.read_bytes(), server_name="broker.test")) as client:
            assert client.get("again").id == "again"
        # Without the CA the handshake fails: TLS is really on.
        with Client(f"https://127.0.0.1:{port}", retry_for=0, timeout=5) as client:
            with pytest.raises(Unavailable):
                client.get("untrusted")
    finally:
        server.stop(None)
    assert [m.get("authorization") for m in rec.metadata] == ["Bearer t", None]
