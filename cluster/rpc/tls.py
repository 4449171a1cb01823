"""Optional mutual TLS on the gRPC link between the coordinator and the leader ranks.

Every node gets the cluster's CA and a certificate it signed; leaders require a client
certificate from that CA, and the coordinator verifies the leader's. The cluster token is
checked on top. Configured by environment (launchers and deployed services pass it on).
"""

import os
from dataclasses import dataclass

import grpc

CA_ENV, CERT_ENV, KEY_ENV = "CLUSTER_TLS_CA", "CLUSTER_TLS_CERT", "CLUSTER_TLS_KEY"
SERVER_NAME_ENV = "CLUSTER_TLS_SERVER_NAME"
TLS_ENVS = (CA_ENV, CERT_ENV, KEY_ENV, SERVER_NAME_ENV)


@dataclass(frozen=True)
class TlsFiles:
    ca: bytes
    cert: bytes
    key: bytes
    server_name: str | None = None
    """Name to check the leader's certificate against, when not its address."""

    @classmethod
    def from_env(cls) -> "TlsFiles | None":
        paths = {name: os.environ.get(name) for name in (CA_ENV, CERT_ENV, KEY_ENV)}
        if not any(paths.values()):
            return None
        if missing := [name for name, path in paths.items() if not path]:
            raise ValueError(
                f"gRPC TLS needs {CA_ENV}, {CERT_ENV} and {KEY_ENV} together; "
                f"{', '.join(missing)} not set"
            )
        data = {}
        for name, path in paths.items():
            try:
                with open(path, "rb") as f:
                    data[name] = f.read()
            except OSError as e:
                raise ValueError(f"{name}={path}: cannot read it ({e.strerror})") from None
        return cls(data[CA_ENV], data[CERT_ENV], data[KEY_ENV], os.environ.get(SERVER_NAME_ENV))

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel(self, address: str) -> grpc.aio.Channel:
        credentials = grpc.ssl_channel_credentials(self.ca, self.key, self.cert)
        options = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        options += MESSAGE_LIMITS + KEEPALIVE + RECONNECT
        return grpc.aio.secure_channel(address, credentials, options=options)


KEEPALIVE = [
    ("grpc.keepalive_time_ms", 15_000),
    ("grpc.keepalive_timeout_ms", 15_000),
    ("grpc.http2.ping_timeout_ms", 15_000),  # what ends an unanswered ping here (default 60 s)
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]
"""The coordinator pings each leader every 15 s, even through a long silent prefill: a leader
that stops answering (a node asleep or unplugged, a stopped process) ends its calls within
30 s instead of leaving them waiting on a socket nobody closes."""
RECONNECT = [
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
"""A channel to a leader still loading (or restarting) retries its connection at least every
2 s: gRPC's default backoff grows to 120 s, and a replica was reported ready 17-20 s after its
leader served once a load had stalled for half a minute."""
ACCEPT_PINGS = [("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.http2.max_ping_strikes", 0)]  # fmt: skip
"""The leader's side: those pings are welcome (gRPC's defaults refuse pings more often than
every 5 minutes without data and close the connection)."""
LEADER = ACCEPT_PINGS + [
    ("grpc.keepalive_time_ms", 15_000),
    ("grpc.keepalive_timeout_ms", 15_000),
    ("grpc.so_reuseport", 0),
]
"""The leader pings the coordinator too: cut off from it (a cable pulled, the coordinator's
node asleep), its streams end within 30 s and their requests are aborted (it went on
generating them to max_tokens). And its port is its own: with gRPC's default SO_REUSEPORT a
second leader bound the port of one still running (a restarted coordinator that could not
reach the leader it had attached to started another), and connections went to either."""

MAX_MESSAGE_BYTES = 512 << 20
"""gRPC's default refuses messages over 4 MB; an echoed 200K-token prompt's logprobs with 20
alternatives each come in one message of about 35 MB."""
MESSAGE_LIMITS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                  ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]  # fmt: skip


def open_channel(address: str) -> grpc.aio.Channel:
    """A channel to a leader: TLS when configured, plaintext on a trusted link otherwise."""
    tls = TlsFiles.from_env()
    if tls:
        return tls.channel(address)
    return grpc.aio.insecure_channel(address, MESSAGE_LIMITS + KEEPALIVE + RECONNECT)


def bind(server: grpc.aio.Server, address: str) -> int:
    tls = TlsFiles.from_env()
    if tls:
        return server.add_secure_port(address, tls.server_credentials())
    return server.add_insecure_port(address)
