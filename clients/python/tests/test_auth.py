"""Auth is really on in the secure pass: no token is UNAUTHENTICATED, a missing grant PERMISSION_DENIED."""

from __future__ import annotations

import secrets

import pytest
from conftest import SECURE, Principal

from taskbroker import Client
from taskbroker.errors import PermissionDenied, Unauthenticated

pytestmark = pytest.mark.skipif(
    not SECURE, reason="secure pass only (TASKBROKER_TEST_SECURE=1): the plain pass's brokers have auth off"
)


def test_a_client_without_the_token_is_unauthenticated(broker):
    tls = broker.conn["tls"]
    for token in (None, "not-a-known-token"):
        with Client(broker.addr, tls=tls, token=token, retry_for=0) as client:
            with pytest.raises(Unauthenticated) as e:
                client.enqueue("k", queue="anything")
            assert e.value.reason == "UNAUTHENTICATED"
    # The suite's own client, on the same broker, is let in.
    with Client(broker.addr, **broker.conn) as client:
        assert client.enqueue("k", queue="anything").queue == "anything"


def test_a_principal_without_the_grant_is_denied_naming_action_and_queue(make_broker):
    token = secrets.token_hex(32)
    producer = Principal("producer", token, '[{ actions = ["enqueue"], queues = ["granted"] }]')
    b = make_broker(principals=[producer]).start()
    with Client(b.addr, **{**b.conn, "token": token}, retry_for=0) as client:
        task = client.enqueue("k", queue="granted")
        with pytest.raises(PermissionDenied) as e:
            client.enqueue("k", queue="elsewhere")
        assert (e.value.reason, e.value.metadata) == ("PERMISSION_DENIED", {"action": "enqueue", "queue": "elsewhere"})
        # Its grant covers what it enqueued: the denial above was the queue, not the token.
        assert client.get(task.id).queue == "granted"
