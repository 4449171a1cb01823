"""A doorbell from the leader to its followers: an idle follower sleeps instead of spinning.

A follower waiting for the next step sits in a collective, and MLX's ring backend spins while
it waits: an idle TP replica's followers each burned a whole core. After an idle step both sides
"park": the follower blocks on a TCP socket until the leader rings (one byte) right before its
next exchange. While steps follow one another nothing is rung, so decoding pays nothing.

The leader listens on its interconnect address (rank 0's in the MLX hostfile, or JACCL's
coordinator); the port and a nonce reach the followers over MLX itself, and a connection that
does not present the nonce is refused. Without an address (e.g. MPI) the followers spin as before.
"""

import json
import logging
import os
import secrets
import socket
import time

log = logging.getLogger(__name__)
ACCEPT_SECONDS = 30.0
"""How long the leader waits for every follower to connect at start-up."""


def leader_host() -> str | None:
    """Rank 0's interconnect address, from what `init_group` gave MLX; None when unknown."""
    if coordinator := os.environ.get("MLX_JACCL_COORDINATOR"):
        return coordinator.rsplit(":", 1)[0].strip("[]")
    path = os.environ.get("MLX_HOSTFILE")
    if not path:
        return None
    try:
        with open(path) as f:
            hosts = json.load(f)
        return str(hosts[0][0]).rsplit(":", 1)[0].strip("[]")  # "[::1]:5000" -> "::1"
    except (OSError, ValueError, LookupError):
        return None


class LeaderBell:
    """The leader's end: one connection per follower."""

    def __init__(self, host: str | None, followers: int):
        self.followers: list[socket.socket] = []
        self.nonce = secrets.token_hex(16)
        self._listener = None
        self._expected = followers
        if followers == 0:
            return
        if host is None:
            log.warning("no interconnect address for a doorbell: idle followers will spin")
            return
        try:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            self._listener = socket.create_server((host, 0), family=family)
        except OSError as e:
            log.warning("doorbell: cannot listen on %s (%s): idle followers will spin", host, e)
            return
        self.address = f"{host}:{self._listener.getsockname()[1]}"

    def hello(self) -> dict:
        """What the followers need to connect (sent to them over MLX)."""
        if self._listener is None:
            return {"doorbell": None}
        return {"doorbell": self.address, "nonce": self.nonce}

    def accept(self) -> None:
        """Take the followers' connections (after they had the hello), then stop listening."""
        if self._listener is None:
            return
        deadline = time.monotonic() + ACCEPT_SECONDS
        with self._listener:
            while len(self.followers) < self._expected and time.monotonic() < deadline:
                self._listener.settimeout(max(deadline - time.monotonic(), 0.01))
                try:
                    conn, _ = self._listener.accept()
                except TimeoutError:
                    break
                conn.settimeout(5)
                try:
                    ok = _read_line(conn) == self.nonce
                except OSError:
                    ok = False
                if not ok:
                    conn.close()
                    continue
                conn.settimeout(None)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.followers.append(conn)
        self._listener = None
        if len(self.followers) < self._expected:
            log.warning("doorbell: %d of %d followers connected; the others will spin when idle",
                        len(self.followers), self._expected)  # fmt: skip

    def ring(self) -> None:
        for conn in list(self.followers):
            try:
                conn.sendall(b"\x01")
            except OSError:  # that follower is gone: the next collective reports it
                self.followers.remove(conn)


class FollowerBell:
    """A follower's end: waits for the leader's ring; None-safe when there is no doorbell."""

    def __init__(self, hello: dict):
        self.conn: socket.socket | None = None
        if not hello.get("doorbell"):
            return
        host, port = hello["doorbell"].rsplit(":", 1)
        try:
            conn = socket.create_connection((host, int(port)), timeout=10)
            conn.sendall(hello["nonce"].encode() + b"\n")
        except OSError as e:
            log.warning("doorbell: cannot reach the leader at %s (%s): spinning when idle",
                        hello["doorbell"], e)  # fmt: skip
            return
        conn.settimeout(None)
        self.conn = conn

    def wait(self) -> bool:
        """Block until the leader rings; False when the leader closed the connection."""
        if self.conn is None:
            return True
        try:
            return self.conn.recv(1) == b"\x01"
        except OSError:
            return False


def _read_line(conn: socket.socket, limit: int = 64) -> str:
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = conn.recv(limit - len(data))
        if not chunk:
            break
        data += chunk
    return data.strip().decode(errors="replace")
