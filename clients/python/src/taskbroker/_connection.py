"""Channels: the target, TLS, the bearer token, transport options and backoff."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import grpc
import grpc.aio

PemSource = Union[bytes, str, "os.PathLike[str]"]

#: The broker's default max_message_bytes.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_OPTIONS: List[Tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Notice a dead connection under a quiet worker stream.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    # gRPC's own reconnect backoff grows to 120 s by default: a broker that
    # restarts must be found again within seconds.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


@dataclass(frozen=True)
class TLS:
    """TLS settings. Each PEM is bytes (the PEM itself) or a path to a file.

    ``ca``: root certificates to trust (default: the system's); ``cert`` and
    ``key``: a client certificate for mutual TLS; ``server_name``: the name to
    check the server's certificate against, when it differs from the target's host.
    """

    ca: Optional[PemSource] = None
    cert: Optional[PemSource] = None
    key: Optional[PemSource] = None
    server_name: Optional[str] = None


TLSOption = Union[None, bool, TLS, grpc.ChannelCredentials]


def _pem(src: Optional[PemSource]) -> Optional[bytes]:
    if src is None or isinstance(src, bytes):
        return src
    with open(src, "rb") as f:
        return f.read()


@dataclass(frozen=True)
class Endpoint:
    """Everything needed to open a channel to the broker, and the call metadata."""

    target: str
    credentials: Optional[grpc.ChannelCredentials]
    options: Sequence[Tuple[str, object]]
    metadata: Tuple[Tuple[str, str], ...]

    def channel(self) -> grpc.Channel:
        if self.credentials is None:
            return grpc.insecure_channel(self.target, options=list(self.options))
        return grpc.secure_channel(self.target, self.credentials, options=list(self.options))

    def aio_channel(self) -> grpc.aio.Channel:
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.target, options=list(self.options))
        return grpc.aio.secure_channel(self.target, self.credentials, options=list(self.options))


def endpoint(
    target: str,
    token: Optional[str] = None,
    tls: TLSOption = None,
    options: Optional[Sequence[Tuple[str, object]]] = None,
) -> Endpoint:
    """``target`` is ``host:port``; ``http://`` and ``https://`` prefixes are accepted
    (``https://`` turns TLS on). ``token`` is sent as ``authorization: Bearer <token>``
    on every call."""
    if target.startswith("https://"):
        target = target[len("https://"):]
        if tls is None:
            tls = True
    elif target.startswith("http://"):
        target = target[len("http://"):]
    target = target.rstrip("/")
    opts: List[Tuple[str, object]] = list(_OPTIONS)
    credentials: Optional[grpc.ChannelCredentials] = None
    if isinstance(tls, grpc.ChannelCredentials):
        credentials = tls
    elif tls is True:
        credentials = grpc.ssl_channel_credentials()
    elif isinstance(tls, TLS):
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_pem(tls.ca),
            private_key=_pem(tls.key),
            certificate_chain=_pem(tls.cert),
        )
        if tls.server_name:
            opts.append(("grpc.ssl_target_name_override", tls.server_name))
    elif tls not in (None, False):
        raise TypeError(f"tls must be None, a bool, taskbroker.TLS or grpc.ChannelCredentials, not {tls!r}")
    if options:
        given = {k for k, _ in options}
        opts = [(k, v) for k, v in opts if k not in given] + list(options)
    metadata: Tuple[Tuple[str, str], ...] = ()
    if token:
        metadata = (("authorization", f"Bearer {token}"),)
    return Endpoint(target, credentials, tuple(opts), metadata)


class Backoff:
    """Exponential backoff with jitter: ``initial``, doubling up to ``maximum``."""

    def __init__(self, initial: float = 0.1, maximum: float = 5.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self._next = initial

    def next(self, at_least: float = 0.0) -> float:
        """The next delay (never less than ``at_least``, e.g. a RetryInfo delay)."""
        base = self._next
        self._next = min(self._next * 2, self.maximum)
        return max(at_least, base * random.uniform(0.8, 1.2))

    def reset(self) -> None:
        self._next = self.initial
